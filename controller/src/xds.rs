//! The config stream server: incremental xDS semantics over one bidirectional stream per
//! dataplane. Each stream remembers which version of each resource the dataplane holds and
//! sends only differences: on subscription (after the versions the dataplane says it
//! already has) and whenever the compiled config changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use imbl::ordmap::DiffItem;
use std::pin::Pin;
use std::sync::Arc;

use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::config_discovery_server::ConfigDiscovery;
use tollgate_proto::{DeltaConfigRequest, DeltaConfigResponse, type_url};
use tonic::{Request, Response, Status, Streaming};

use crate::compile::{Compiled, ResourceMap};
use crate::tracker::Tracker;

#[derive(Clone, Debug)]
pub struct XdsMetrics {
    pub resources_sent: IntCounterVec,
    pub responses: IntCounterVec,
    pub nacks: IntCounterVec,
    pub connected: IntGauge,
}

#[derive(Clone)]
pub struct XdsServer {
    pub snapshots: watch::Receiver<Arc<Compiled>>,
    /// True once the first config is compiled; streams wait for it so that a dataplane
    /// never mistakes an empty config for a complete one.
    pub ready: watch::Receiver<bool>,
    pub tracker: Arc<Tracker>,
    pub metrics: XdsMetrics,
    /// Sent on every response (see `crate::session_key`).
    pub session_key: Arc<crate::session_key::SessionKey>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaConfigResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for XdsServer {
    type DeltaConfigStream = ResponseStream;

    async fn delta_config(
        &self,
        request: Request<Streaming<DeltaConfigRequest>>,
    ) -> Result<Response<Self::DeltaConfigStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            id: self.tracker.connect(),
            node: String::new(),
            snapshots: self.snapshots.clone(),
            tracker: self.tracker.clone(),
            metrics: self.metrics.clone(),
            types: HashMap::new(),
            nonce: 0,
            session_key: self.session_key.clone(),
            tx,
        };
        let mut ready = self.ready.clone();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                session.run(inbound).await;
            } else {
                session.tracker.disconnect(session.id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What one response of a type carried, to resolve its ACK or NACK.
struct Pending {
    sent: Vec<(String, String)>,
    removed: Vec<String>,
    /// Version the dataplane held before this response, per sent resource.
    previous: HashMap<String, Option<String>>,
    /// The push's span, which ends when the dataplane answers (ACK or NACK).
    span: tracing::Span,
}

#[derive(Default)]
struct TypeState {
    /// Name -> version the dataplane holds (or will once it applies what was sent).
    held: HashMap<String, String>,
    pending: BTreeMap<String, Pending>,
    /// The map last compared with `held`: the next comparison walks only what differs
    /// from it (shared parts are skipped), plus `recheck`.
    compared: Option<ResourceMap>,
    /// Names whose held version was set back by a NACK since.
    recheck: HashSet<String>,
}

struct Session {
    id: u64,
    node: String,
    snapshots: watch::Receiver<Arc<Compiled>>,
    tracker: Arc<Tracker>,
    metrics: XdsMetrics,
    types: HashMap<&'static str, TypeState>,
    nonce: u64,
    session_key: Arc<crate::session_key::SessionKey>,
    tx: mpsc::Sender<Result<DeltaConfigResponse, Status>>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<DeltaConfigRequest>) {
        self.metrics.connected.inc();
        let mut snapshot = self.snapshots.borrow_and_update().clone();
        'session: loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if self.handle(request, &snapshot).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(dataplane = %self.node, %status, "config stream ended");
                        break;
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    snapshot = self.snapshots.borrow_and_update().clone();
                    let subscribed: Vec<&'static str> = self.types.keys().copied().collect();
                    for type_url in subscribed {
                        if self.send_delta(type_url, &snapshot, false).await.is_err() {
                            // The dataplane is gone: end the session, not just this round.
                            break 'session;
                        }
                    }
                }
            }
        }
        tracing::info!(dataplane = %self.node, "dataplane disconnected");
        self.metrics.connected.dec();
        self.tracker.disconnect(self.id);
    }

    async fn handle(&mut self, request: DeltaConfigRequest, snapshot: &Compiled) -> Result<(), ()> {
        if let Some(node) = &request.node
            && self.node.is_empty()
        {
            self.node = node.id.clone();
            self.tracker.identify(self.id, &node.id);
            tracing::info!(dataplane = %node.id, version = %node.version, "dataplane connected");
        }
        let Some(type_url) = type_url::ALL.into_iter().find(|t| *t == request.type_url) else {
            tracing::warn!(dataplane = %self.node, type_url = %request.type_url, "unknown resource type requested");
            return Ok(());
        };
        if request.response_nonce.is_empty() {
            // A subscription: resume from what the dataplane says it holds.
            let state = self.types.entry(type_url).or_default();
            state.held = request.initial_resource_versions.into_iter().collect();
            state.pending.clear();
            state.compared = None;
            state.recheck.clear();
            for (name, version) in &state.held {
                self.tracker.ack(self.id, type_url, name, version);
            }
            return self.send_delta(type_url, snapshot, true).await;
        }
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let Some(pending) = state.pending.remove(&request.response_nonce) else {
            tracing::debug!(dataplane = %self.node, nonce = %request.response_nonce, "reply to an unknown nonce");
            return Ok(());
        };
        let rejected: HashMap<&str, &str> = request
            .resource_errors
            .iter()
            .map(|e| (e.name.as_str(), e.message.as_str()))
            .collect();
        let nacked = !rejected.is_empty() || !request.error_detail.is_empty();
        pending
            .span
            .record("tollgate.reply", if nacked { "nack" } else { "ack" });
        if nacked {
            self.metrics.nacks.with_label_values(&[type_url]).inc();
            tracing::warn!(
                dataplane = %self.node,
                type_url,
                detail = %request.error_detail,
                rejected = ?rejected,
                "dataplane rejected resources"
            );
        }
        for (name, version) in &pending.sent {
            match rejected.get(name.as_str()) {
                Some(message) => {
                    self.tracker.nack(self.id, type_url, name, version, message);
                    // The dataplane keeps its previous version.
                    match pending.previous.get(name).cloned().flatten() {
                        Some(prev) => state.held.insert(name.clone(), prev),
                        None => state.held.remove(name),
                    };
                    state.recheck.insert(name.clone());
                }
                None => self.tracker.ack(self.id, type_url, name, version),
            }
        }
        for name in &pending.removed {
            self.tracker.removed(self.id, type_url, name);
        }
        Ok(())
    }

    async fn send_delta(
        &mut self,
        type_url: &'static str,
        snapshot: &Compiled,
        always: bool,
    ) -> Result<(), ()> {
        let state = self.types.entry(type_url).or_default();
        let empty = ResourceMap::new();
        let current = snapshot.resources_of(type_url).unwrap_or(&empty);
        // The names that may differ from what the dataplane holds.
        // A set: a name the diff gives may also be one to recheck.
        let candidates: BTreeSet<String> = match state.compared.take() {
            Some(before) => before
                .diff(current)
                .map(|item| match item {
                    DiffItem::Add(name, _)
                    | DiffItem::Update { new: (name, _), .. }
                    | DiffItem::Remove(name, _) => name.clone(),
                })
                .chain(state.recheck.drain())
                .collect(),
            None => {
                state.recheck.clear();
                current
                    .keys()
                    .chain(state.held.keys().filter(|n| !current.contains_key(*n)))
                    .cloned()
                    .collect()
            }
        };
        state.compared = Some(current.clone());
        let mut resources = Vec::new();
        let mut pending = Pending {
            sent: Vec::new(),
            removed: Vec::new(),
            previous: HashMap::new(),
            span: tracing::Span::none(),
        };
        for name in candidates {
            match current.get(&name) {
                Some(resource) => {
                    if state.held.get(&name) != Some(&resource.version) {
                        pending.sent.push((name.clone(), resource.version.clone()));
                        pending
                            .previous
                            .insert(name.clone(), state.held.get(&name).cloned());
                        resources.push(resource.as_ref().clone());
                    }
                }
                None => {
                    if state.held.contains_key(&name) {
                        pending.removed.push(name);
                    }
                }
            }
        }
        if resources.is_empty() && pending.removed.is_empty() && !always {
            return Ok(());
        }
        for (name, version) in &pending.sent {
            state.held.insert(name.clone(), version.clone());
        }
        for name in &pending.removed {
            state.held.remove(name);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        // A push of a traced compile is a span of its trace, until the dataplane answers;
        // its context goes with the response, so the dataplane's apply joins the trace.
        let traceparent = match &snapshot.trace {
            Some(parent) => {
                let span = tracing::info_span!(
                    target: tollgate_telemetry::TARGET,
                    "push",
                    "tollgate.dataplane" = %self.node,
                    "tollgate.type" = type_url,
                    "tollgate.version" = %snapshot.version,
                    "tollgate.sent" = pending.sent.len(),
                    "tollgate.removed" = pending.removed.len(),
                    "tollgate.reply" = tracing::field::Empty,
                );
                tollgate_telemetry::set_remote_parent(&span, parent);
                let traceparent = tollgate_telemetry::current_traceparent(&span);
                pending.span = span;
                traceparent.unwrap_or_default()
            }
            None => String::new(),
        };
        let response = DeltaConfigResponse {
            type_url: type_url.to_string(),
            system_version_info: snapshot.version.clone(),
            resources,
            removed_resources: pending.removed.clone(),
            nonce: nonce.clone(),
            mcp_session_key: self.session_key.to_vec(),
            traceparent,
        };
        self.metrics
            .resources_sent
            .with_label_values(&[type_url])
            .inc_by(pending.sent.len() as u64);
        self.metrics.responses.with_label_values(&[type_url]).inc();
        tracing::debug!(dataplane = %self.node, type_url, sent = pending.sent.len(), removed = pending.removed.len(), "config sent");
        state.pending.insert(nonce, pending);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }
}
