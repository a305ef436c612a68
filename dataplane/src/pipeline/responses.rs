//! The Responses API's stored responses (`GET`/`DELETE /v1/responses/{id}`, its
//! `input_items`, `cancel`): sent to the provider account that stores the response, as
//! its id says ([`super::response_ids`]).

use super::response_ids::{Pin, Sealer, namespace_of, open};
use crate::config::model::ProviderKind;
use crate::error::ApiError;

/// How long a stored response's request may take.
const STORED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
    let snapshot = state.config.load_full();
    let key = super::authenticate(&snapshot, &parts.headers)?;
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
        .ok_or_else(|| ApiError::UnknownResponseId(crate::base::clip(id, 64).into()))?;
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
    let uri: http::Uri = uri.parse().map_err(|_| ApiError::Internal)?;
    let mut upstream = crate::provider::request::build_upstream(
        state.upstream.for_object(&provider.id),
        provider,
        credential,
        (&parts.headers, None),
        crate::base::Api::Responses,
        uri,
        body,
    )
    .await?;
    *upstream.method_mut() = parts.method.clone();
    let deadline = tokio::time::Instant::now() + STORED_TIMEOUT;
    let response = super::attempt::send(state, provider, upstream, deadline).await?;
    let (up, body) = response.into_parts();
    let body = super::attempt::read_answer(state, body, deadline).await?;
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
    let mut out = http::Response::new(crate::base::full(body));
    *out.status_mut() = up.status;
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(out)
}
