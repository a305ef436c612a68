//! The Responses API's stored responses (`GET`/`DELETE /v1/responses/{id}`, its
//! `input_items`, `cancel`): sent to the provider account that stores the response, as
//! its id says ([`super::response_ids`]).

use super::response_ids::{Pin, Sealer, namespace_of, open};
use crate::config::model::{Credential, Provider, ProviderKind};
use crate::error::ApiError;

/// How long a stored response's request may take.
const STORED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A request to these endpoints, past its key: the config it was checked against, the
/// key, and its admission (one request against the key's rate and concurrency limits,
/// refused while a budget is spent), held until the answer is read.
struct Admitted {
    parts: http::request::Parts,
    snapshot: std::sync::Arc<crate::config::snapshot::Snapshot>,
    key: std::sync::Arc<crate::config::model::VirtualKey>,
    _reservation: crate::metering::quota::Reservation,
}

/// Authenticates and admits `parts`' key, as for every request that costs no tokens; the
/// refusal the client gets otherwise (a rate limit's with its headers).
async fn admitted(
    state: &super::State,
    parts: http::request::Parts,
) -> Result<Admitted, http::Response<crate::base::Body>> {
    let snapshot = state.config.load_full();
    let key = super::authenticate(&snapshot, &parts.headers)
        .map_err(|e| e.to_response())?
        .clone();
    let least = super::admission::LEAST;
    let reservation = match super::admission::admit_free(state, &key, &parts.headers, least).await {
        Ok(r) => r,
        Err(e) => {
            let rate_limited = matches!(e, ApiError::RateLimited(_));
            let mut refused = e.to_response();
            if rate_limited {
                super::record::rate_limited_headers(state, &key, refused.headers_mut());
            }
            return Err(refused);
        }
    };
    Ok(Admitted {
        parts,
        snapshot,
        key,
        _reservation: reservation,
    })
}

/// `GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` and
/// `POST /v1/responses/{id}/cancel`: sent to the account that stores the response (as its
/// id says), with that account's credential; the answer's ids are the client's.
pub(crate) async fn stored<B>(
    state: &super::State,
    req: http::Request<B>,
) -> Result<http::Response<crate::base::Body>, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let (parts, body) = req.into_parts();
    let Admitted {
        parts,
        snapshot,
        key,
        _reservation,
    } = match admitted(state, parts).await {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    let rest = parts
        .uri
        .path()
        .strip_prefix("/v1/responses/")
        .unwrap_or("");
    let (id, verb) = rest.split_once('/').unwrap_or((rest, ""));
    let known = matches!(
        (&parts.method, verb),
        (&http::Method::GET | &http::Method::DELETE, "")
            | (&http::Method::GET, "input_items")
            | (&http::Method::POST, "cancel")
    );
    if !known {
        return Err(ApiError::UnknownPath {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
        });
    }
    let stored = open(&state.sealing, id)
        .filter(|s| s.namespace == namespace_of(&key.attribution.key))
        .ok_or_else(|| ApiError::ResponseNotFound(crate::base::clip(id, 64).into()))?;
    let provider = snapshot
        .providers
        .get(&stored.provider)
        .filter(|p| matches!(p.kind, ProviderKind::OpenAi | ProviderKind::AzureOpenAi))
        .ok_or_else(|| ApiError::StoredAccountUnavailable(stored.provider.clone()))?;
    let credential = provider
        .credentials
        .iter()
        .find(|c| c.id == stored.credential);
    if credential.is_none() && !provider.credentials.is_empty() {
        return Err(ApiError::StoredAccountUnavailable(stored.provider.clone()));
    }
    let body = super::route::read_body(body, &parts.headers, &state.bodies).await?;
    let base = crate::provider::openai::responses_uri(provider).map_err(|_| ApiError::Internal)?;
    let mut uri = format!("{base}/{}", stored.id);
    if !verb.is_empty() {
        uri = format!("{uri}/{verb}");
    }
    if let Some(q) = parts.uri.query() {
        uri = format!("{uri}?{q}");
    }
    let call = (parts.method.clone(), uri, body);
    let (status, body) = forward(state, provider, credential, &parts.headers, call).await?;
    // The response's own id stays the one the client holds.
    let pin = Pin {
        sealed: id.to_string(),
        stored,
    };
    let sealer = Sealer::new(
        state.sealing.clone(),
        &key.attribution.key,
        provider,
        credential,
        Some(&pin),
    );
    let body = crate::translate::ids::rewrite(&body, &sealer).map_or(body, bytes::Bytes::from);
    Ok(json_answer(status, body))
}

/// The provider's answer to `method` on `uri` with `body`, sent with `credential` and
/// the client's `headers` passed on as for any attempt, within [`STORED_TIMEOUT`].
async fn forward(
    state: &super::State,
    provider: &Provider,
    credential: Option<&Credential>,
    headers: &http::HeaderMap,
    (method, uri, body): (http::Method, String, bytes::Bytes),
) -> Result<(http::StatusCode, bytes::Bytes), ApiError> {
    let uri: http::Uri = uri.parse().map_err(|_| ApiError::Internal)?;
    let mut upstream = crate::provider::request::build_upstream(
        state.upstream.for_object(&provider.id),
        provider,
        credential,
        (headers, None),
        crate::base::Api::Responses,
        uri,
        body,
    )
    .await?;
    *upstream.method_mut() = method;
    let deadline = tokio::time::Instant::now() + STORED_TIMEOUT;
    let response = super::attempt::send(state, provider, upstream, deadline).await?;
    let (up, body) = response.into_parts();
    Ok((
        up.status,
        super::attempt::read_answer(state, body, deadline).await?,
    ))
}

/// A JSON answer with `status`.
fn json_answer(status: http::StatusCode, body: bytes::Bytes) -> http::Response<crate::base::Body> {
    let mut out = http::Response::new(crate::base::full(body));
    *out.status_mut() = status;
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    out
}

/// `POST /v1/responses/input_tokens`: the input tokens of a Responses request, counted
/// by the provider of the first target of the model's route that serves the API, as the
/// key may use it. Free at the provider: nothing is reserved or charged.
pub(crate) async fn input_tokens<B>(
    state: &super::State,
    req: http::Request<B>,
) -> Result<http::Response<crate::base::Body>, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let (parts, body) = req.into_parts();
    let Admitted {
        parts,
        snapshot,
        key,
        _reservation,
    } = match admitted(state, parts).await {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    let body = super::route::read_body(body, &parts.headers, &state.bodies).await?;
    let head = crate::translate::head::ChatHead::parse(&body)?;
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(&key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?;
    let targets = route
        .targets
        .iter()
        .chain(route.fallbacks.iter().map(|f| &f.target));
    let (provider, model) = targets
        .filter_map(|t| Some((snapshot.providers.get(&t.provider)?, t.model.clone())))
        .find(|(p, _)| matches!(p.kind, ProviderKind::OpenAi | ProviderKind::AzureOpenAi))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Route `{}` has no target on a provider that serves the Responses API.",
                route.id
            ))
        })?;
    let model = model.map_or_else(|| head.model.clone(), |m| m.to_string());
    let body = head.with_model(body, &model);
    let now = tokio::time::Instant::now();
    let credential = match provider.credentials.is_empty() {
        true => None,
        false => Some(
            super::balance::pick_credential(provider, &state.balance, now)
                .map(|(c, _)| c)
                .ok_or_else(|| ApiError::NoCredential(provider.id.to_string()))?,
        ),
    };
    let base = crate::provider::openai::responses_uri(provider).map_err(|_| ApiError::Internal)?;
    let call = (http::Method::POST, format!("{base}/input_tokens"), body);
    let (status, body) = forward(state, provider, credential, &parts.headers, call).await?;
    Ok(json_answer(status, body))
}
