//! The client-facing HTTP server: OpenAI-compatible endpoints, dispatched by path.

pub mod admission;
pub mod chat;
pub mod count_tokens;
pub mod embeddings;
pub mod error;
pub mod models;
pub mod request;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use error::ApiError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The API a client called, which decides the format of its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

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
    /// The HTTP clients for providers, by the namespace the egress policy judges.
    pub upstream: crate::upstream::Clients,
    pub metrics: Metrics,
    /// Bounds on request bodies: size, minimum rate, and the bytes held at once.
    pub bodies: crate::bodies::Limits,
    /// Largest upstream answer read whole (answers that are not streamed, and error
    /// bodies); a larger one is a 502.
    pub max_upstream_body_bytes: usize,
    /// Largest request translated to another API's format: what translating builds grows
    /// with the body's bytes and its messages.
    pub translation: TranslationLimits,
    /// Health, latency and load of targets and credentials, kept across config changes.
    pub balance: crate::balance::Registry,
    /// Budget, rate-limit and session quota, and the usage records.
    pub quotas: Arc<crate::quota::Quotas>,
    /// What a request's worst case assumes where the request does not bound it.
    pub worst: admission::WorstCase,
    /// The MCP endpoint's upstream client, session keys and tool-call limits.
    pub mcp: crate::mcp::gateway::Gateway,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Authenticates the request's virtual key against the snapshot.
pub(crate) fn authenticate<'a>(
    snapshot: &'a Snapshot,
    headers: &http::HeaderMap,
) -> Result<&'a Arc<crate::runtime::VirtualKey>, ApiError> {
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
            crate::snapshot::KeyRefusal::Unknown => ApiError::InvalidKey,
            crate::snapshot::KeyRefusal::Expired => ApiError::ExpiredKey,
            crate::snapshot::KeyRefusal::Disabled => ApiError::DisabledKey,
        })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if !*state.ready.borrow() {
        return ApiError::NotReady.to_response();
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => chat::handle(&state, req, Api::OpenAi).await,
        (&Method::POST, "/v1/messages") => chat::handle(&state, req, Api::Anthropic).await,
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens::handle(&state, req).await,
        (&Method::POST, "/v1/embeddings") => embeddings::handle(&state, req).await,
        (&Method::GET, "/v1/models") => count(&state, models::list(&state, &req)),
        (_, "/mcp") => crate::mcp::gateway::handle(&state, req).await,
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            count(&state, models::get(&state, &req))
        }
        (method, path) => count(
            &state,
            ApiError::UnknownPath {
                method: method.to_string(),
                path: path.to_string(),
            }
            .to_response(),
        ),
    }
}

/// Counts a request that has no route, provider or model.
fn count(state: &State, response: Response<Body>) -> Response<Body> {
    state
        .metrics
        .requests
        .with_label_values(&["", "", "", response.status().as_str()])
        .inc();
    response
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves, then lets
/// open connections finish their requests for at most `drain`.
pub async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    limits: crate::server::Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: std::time::Duration,
) {
    let counters = state.metrics.listener("api");
    let handler = move |req| {
        let state = state.clone();
        handle(state, req)
    };
    crate::server::serve(listener, limits, counters, handler, shutdown, drain).await;
}
