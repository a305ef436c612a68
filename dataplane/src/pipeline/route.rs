//! The route stage: authenticate the key, read the body within its limits, read its
//! head, and find the route the key may use for its model.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use super::record::Labels;
use crate::config::model::{Provider, Route, VirtualKey};
use crate::config::snapshot::Snapshot;
use crate::error::ApiError;
use crate::pipeline::{State, authenticate};
use crate::translate::head::ChatHead;

/// Where a request went: its route, the target's provider, the model sent upstream, and
/// how many attempts it took to get there (the `x-tollgate-*` headers of its answer).
pub(crate) struct Resolved {
    pub route: Arc<Route>,
    pub provider: Arc<Provider>,
    pub model: Arc<str>,
    pub attempts: u32,
}

/// What a request resolves to before it is admitted.
pub(crate) struct Routed {
    pub body: Bytes,
    pub head: ChatHead,
    pub route: Arc<Route>,
    /// The snapshot the route was found in.
    pub snapshot: Arc<Snapshot>,
    pub key: Arc<VirtualKey>,
    /// A Responses follow-up's previous response (set after routing).
    pub pin: Option<Arc<super::response_ids::Pin>>,
}

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
    if let Some(t) = &labels.trail {
        t.authenticated(key);
    }
    let body = read_body(body, &parts.headers, &state.bodies).await?;
    let head = ChatHead::parse(&body)?;
    if let Some(t) = &labels.trail {
        t.read(&head);
    }
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?
        .clone();
    labels.route = route.id.clone();
    if let Some(t) = &labels.trail {
        match (key.record_messages, route.record_messages) {
            (true, _) => t.record_messages(&body, "key", &snapshot),
            (_, true) => t.record_messages(&body, "route", &snapshot),
            _ => {}
        }
    }
    let key = key.clone();
    Ok(Routed {
        body,
        head,
        route,
        snapshot,
        key,
        pin: None,
    })
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
