//! The pipeline room: one request's way through the gateway after its endpoint has read
//! it: authenticate the virtual key, admit and reserve against its quotas
//! (`admission`), and pick a target and credential (`balance`). `State` is what every
//! request works with.

pub mod admission;
pub mod attempt;
pub mod attempts;
pub mod balance;
pub mod count_tokens;
pub mod embeddings;
pub mod keep_alive;
pub mod record;
pub mod response_ids;
pub mod responses;
pub mod route;
pub mod stages;
pub mod stream;
pub mod trail;

use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::base::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::base::upstream::Clients;
use crate::base::{Body, BoxError, now_unix};
use crate::config::model::Provider;
use crate::config::snapshot::Snapshot;
use crate::error::ApiError;

/// Bounds on a request translated to another format (see [`State::translation`]).
#[derive(Clone, Copy, Debug)]
pub struct TranslationLimits {
    pub max_bytes: usize,
    pub max_messages: u64,
}

impl TranslationLimits {
    /// Why a request with `bytes` and `messages` is not translated, if it is not.
    pub fn refuse(&self, bytes: usize, messages: u64) -> Option<ApiError> {
        if bytes > self.max_bytes {
            Some(ApiError::TooLargeToTranslate(format!(
                "its body has {bytes} bytes, and the most is {}",
                self.max_bytes
            )))
        } else if messages > self.max_messages {
            Some(ApiError::TooLargeToTranslate(format!(
                "it has {messages} messages, and the most is {}",
                self.max_messages
            )))
        } else {
            None
        }
    }
}

pub struct State {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub ready: watch::Receiver<bool>,
    /// The HTTP clients for providers, by the namespace the egress policy judges (for
    /// token exchanges; requests go through `transport`).
    pub upstream: crate::base::upstream::Clients,
    /// How an attempt's request reaches its provider: `upstream` in the gateway, a fake
    /// in tests of the attempt engine.
    pub transport: Arc<dyn Transport>,
    pub metrics: Metrics,
    /// Bounds on request bodies: size, minimum rate, and the bytes held at once.
    pub bodies: crate::base::bodies::Limits,
    /// Largest upstream answer read whole (answers that are not streamed, and error
    /// bodies); a larger one is a 502.
    pub max_upstream_body_bytes: usize,
    /// Largest request translated to another API's format: what translating builds grows
    /// with the body's bytes and its messages.
    pub translation: TranslationLimits,
    /// Health, latency and load of targets and credentials, kept across config changes.
    pub balance: balance::Registry,
    /// Budget, rate-limit and session quota, and the usage records.
    pub quotas: Arc<crate::metering::quota::Quotas>,
    /// What a request's worst case assumes where the request does not bound it.
    pub worst: admission::WorstCase,
    /// Where each request's audit record goes; `None` when audit is off.
    pub audit: Option<Arc<crate::base::audit::Auditor>>,
    /// OpenTelemetry export, when an OTLP endpoint is configured.
    pub telemetry: Option<Arc<tollgate_telemetry::Telemetry>>,
    /// The controller's sealing key: response ids (and MCP sessions) any replica opens.
    pub sealing: Arc<crate::config::session_keys::Keys>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// Authenticates the request's virtual key against the snapshot.
pub(crate) fn authenticate<'a>(
    snapshot: &'a Snapshot,
    headers: &http::HeaderMap,
) -> Result<&'a Arc<crate::config::model::VirtualKey>, ApiError> {
    // OpenAI SDKs send `Authorization: Bearer`, Anthropic's `x-api-key`, Azure's `api-key`.
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let presented = bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(ApiError::MissingKey)?;
    snapshot
        .authenticate(presented.as_bytes(), now_unix())
        .map_err(|refusal| match refusal {
            crate::config::snapshot::KeyRefusal::Unknown => ApiError::InvalidKey,
            crate::config::snapshot::KeyRefusal::Expired => ApiError::ExpiredKey,
            crate::config::snapshot::KeyRefusal::Disabled => ApiError::DisabledKey,
        })
}

/// The attempts of one request, as a future: the answer (or why none came) and the labels
/// the request ends with.
pub(crate) type PlanFuture = Pin<
    Box<
        dyn std::future::Future<Output = (Result<http::Response<Body>, ApiError>, record::Labels)>
            + Send,
    >,
>;

/// What a provider answered: its response, or why none came (no connection, reset).
pub type Upstreaming =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// How an attempt's request reaches its provider.
pub trait Transport: Send + Sync {
    fn send(&self, provider: &Provider, request: http::Request<Full<Bytes>>) -> Upstreaming;
}

/// The pooled HTTP clients: each provider's request goes through its namespace's client.
impl Transport for Clients {
    fn send(&self, provider: &Provider, request: http::Request<Full<Bytes>>) -> Upstreaming {
        let call = self.for_object(&provider.id).request(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|b| b.map_err(BoxError::from).boxed()))
        })
    }
}
