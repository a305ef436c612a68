//! The route stage: authenticate the key, read the body, find the route, and (for the
//! one-attempt operations) pick its target and credential.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::record::Labels;
use crate::config::model::{Credential, Provider, Route, VirtualKey};
use crate::config::snapshot::Snapshot;
use crate::error::ApiError;
use crate::pipeline::balance;
use crate::pipeline::{State, authenticate};
use crate::translate::head::ChatHead;

/// Where a request goes: its route, the picked target's provider and credential, the
/// model sent upstream, and how many attempts it took to get there.
pub(crate) struct Resolved {
    pub route: Arc<Route>,
    pub provider: Arc<Provider>,
    pub model: Arc<str>,
    /// Index into the provider's credentials.
    pub credential: Option<usize>,
    pub attempts: u32,
    /// The attempt's deadline (the target's own, or the route's).
    pub timeout: Duration,
}

impl Resolved {
    /// When the one attempt of a request that started at `started` must have its answer.
    pub fn deadline(&self, started: Instant) -> Instant {
        started + self.timeout.min(self.route.request_timeout)
    }

    pub fn credential(&self) -> Option<&Credential> {
        self.credential
            .and_then(|i| self.provider.credentials.get(i))
    }
}

/// What a request resolves to before it is admitted: body, head, route, the snapshot it
/// was resolved in, and the key.
pub(crate) type Routed = (Bytes, ChatHead, Arc<Route>, Arc<Snapshot>, Arc<VirtualKey>);

/// Authenticates the key, reads the body, and finds the route.
pub(crate) async fn resolve_route<B>(
    state: &State,
    parts: &http::request::Parts,
    body: B,
    labels: &mut Labels,
) -> Result<Routed, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let snapshot = state.config.load_full();
    let key = authenticate(&snapshot, &parts.headers)?;
    let body = read_body(body, &parts.headers, &state.bodies).await?;
    let head = ChatHead::parse(&body)?;
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?
        .clone();
    labels.route = route.id.clone();
    let key = key.clone();
    Ok((body, head, route, snapshot, key))
}

/// Authenticates the key, reads the body, and picks the route, target, credential and
/// model, for one attempt (the strategy applies, ejected targets are passed over).
pub(crate) async fn resolve(
    state: &State,
    parts: &http::request::Parts,
    body: Incoming,
    labels: &mut Labels,
) -> Result<(Bytes, ChatHead, Resolved, Arc<Snapshot>, Arc<VirtualKey>), ApiError> {
    let (body, head, route, snapshot, key) = resolve_route(state, parts, body, labels).await?;
    let plan = balance::Plan::new(route.clone(), &snapshot, &state.balance, &head.model);
    let now = Instant::now();
    let c = plan
        .peek_target(now)
        .ok_or_else(|| ApiError::NoTarget(route.id.to_string()))?;
    labels.provider = c.provider.id.clone();
    labels.model = c.label.clone();
    let credential = if c.provider.credentials.is_empty() {
        None
    } else {
        let (chosen, _) = balance::pick_credential(&c.provider, &state.balance, now)
            .ok_or_else(|| ApiError::NoCredential(c.provider.id.to_string()))?;
        c.provider
            .credentials
            .iter()
            .position(|x| std::ptr::eq(x, chosen))
    };
    let resolved = Resolved {
        route: route.clone(),
        provider: c.provider,
        model: c.model,
        credential,
        attempts: 1,
        timeout: c.timeout,
    };
    Ok((body, head, resolved, snapshot, key))
}

pub(crate) async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limits: &crate::base::bodies::Limits,
) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    use crate::base::bodies::Refused;
    crate::base::bodies::read_request(body, headers, limits)
        .await
        .map_err(|refused| match refused {
            Refused::TooLarge(limit) => ApiError::BodyTooLarge(limit),
            Refused::TooSlow => ApiError::BodyTooSlow,
            Refused::Busy => ApiError::Overloaded,
            Refused::Broken => ApiError::BadRequest("The request body could not be read.".into()),
        })
}
