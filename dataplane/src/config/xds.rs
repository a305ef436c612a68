//! The config stream client: subscribes to every resource type (sending the versions it
//! holds, so a reconnect resends nothing unchanged), applies each response to the store,
//! publishes a new snapshot, and ACKs or NACKs. When the controller is away it keeps the
//! last snapshot and reconnects with capped, jittered backoff.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::config_discovery_client::ConfigDiscoveryClient;
use tollgate_proto::{DeltaConfigRequest, Node, type_url};

use crate::base::link::{self, StreamError};
use crate::base::metrics::Metrics;
use crate::config::snapshot::Snapshot;
use crate::config::store::Store;

/// Largest config message accepted (a full snapshot of a large config).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct Client {
    pub controller: Arc<crate::base::link::Controller>,
    pub node_id: String,
    pub store: Arc<Mutex<Store>>,
    pub config: Arc<ArcSwap<Snapshot>>,
    pub ready: watch::Sender<bool>,
    pub metrics: Metrics,
    /// The MCP session keys, updated from every response.
    pub session_keys: Arc<crate::config::session_keys::Keys>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("controller", &self.controller)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Runs forever, reconnecting as needed.
    pub async fn run(self) {
        link::run_forever(
            || self.stream_once(),
            |e| {
                tracing::warn!(controller = %self.controller, error = %e, "config stream lost; serving the last config");
                self.metrics.config_connected.set(0);
            },
        )
        .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        crate::base::lock(&self.store)
    }

    async fn stream_once(&self) -> Result<(), StreamError> {
        let mut client = ConfigDiscoveryClient::new(link::connect(&self.controller).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::channel(16);
        for (i, t) in type_url::ALL.into_iter().enumerate() {
            let initial = self.lock().versions(t);
            let request = DeltaConfigRequest {
                node: (i == 0).then(|| Node {
                    id: self.node_id.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                type_url: t.into(),
                initial_resource_versions: initial.into_iter().collect(),
                ..Default::default()
            };
            let _ = tx.send(request).await;
        }
        let mut inbound = client
            .delta_config(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tracing::info!(controller = %self.controller, "config stream connected");
        self.metrics.config_connected.set(1);
        let mut seen_types = std::collections::HashSet::new();
        while let Some(response) = inbound.message().await? {
            // The apply of a traced change joins the controller's trace of it.
            let span = if response.traceparent.is_empty() {
                tracing::Span::none()
            } else {
                let span = tracing::info_span!(
                    target: tollgate_telemetry::TARGET,
                    "apply",
                    "tollgate.type" = %response.type_url,
                    "tollgate.version" = %response.system_version_info,
                    "tollgate.resources" = response.resources.len(),
                    "tollgate.removed" = response.removed_resources.len(),
                    "tollgate.rejected" = tracing::field::Empty,
                );
                tollgate_telemetry::set_remote_parent(&span, &response.traceparent);
                span
            };
            self.session_keys.update(&response.mcp_session_key);
            let applied = {
                let mut store = self.lock();
                let applied = store.apply(&response);
                if applied.changed {
                    self.config.store(Arc::new(store.snapshot()));
                }
                for t in type_url::ALL {
                    self.metrics
                        .config_resources
                        .with_label_values(&[t])
                        .set(store.resource_count(t) as i64);
                }
                applied
            };
            self.metrics.config_updates.inc();
            self.metrics
                .config_applied_at
                .set(tollgate_proto::time::now_unix_ms() as f64 / 1e3);
            let mut reply = DeltaConfigRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            };
            if !applied.errors.is_empty() {
                self.metrics
                    .config_rejected
                    .inc_by(applied.errors.len() as u64);
                for e in &applied.errors {
                    tracing::warn!(resource = %e.name, version = %e.version, reason = %e.message, "resource rejected; keeping the previous version");
                }
                reply.error_detail = format!("{} resource(s) rejected", applied.errors.len());
                span.record("tollgate.rejected", applied.errors.len());
                reply.resource_errors = applied.errors;
            }
            tracing::debug!(
                type_url = %response.type_url,
                resources = response.resources.len(),
                removed = response.removed_resources.len(),
                "config applied"
            );
            seen_types.insert(response.type_url);
            if !*self.ready.borrow() && type_url::ALL.iter().all(|t| seen_types.contains(*t)) {
                tracing::info!("first complete config applied; ready");
                self.ready.send_replace(true);
            }
            if tx.send(reply).await.is_err() {
                break;
            }
            drop(span);
        }
        Err(StreamError::Closed)
    }
}
