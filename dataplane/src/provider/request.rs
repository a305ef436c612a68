//! The request to a provider: its body, the client headers passed on, version headers,
//! and the credential (a header, a Google access token, or a SigV4 signature).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::Full;

use crate::base::{Api, now_unix};
use crate::config::model::{Auth, Credential, Provider};
use crate::error::ApiError;

/// Request headers passed on to the provider (trace context and request ids).
pub(crate) const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["traceparent", "tracestate", "x-request-id", "accept"];

/// A process-unique id for answers whose provider gives none.
pub(crate) fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "tg{:x}{:06x}",
        now_unix(),
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}

/// The request to the provider: body, forwarded headers, version headers and credentials.
/// A traced request's attempt carries its own `traceparent` instead of the client's.
pub(crate) async fn build_upstream(
    upstream_client: &crate::base::upstream::Upstream,
    provider: &Provider,
    credential: Option<&Credential>,
    (client_headers, traceparent): (&HeaderMap, Option<HeaderValue>),
    api: Api,
    uri: http::Uri,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let signed_body = body.clone();
    let mut upstream = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Full::new(body))
        .map_err(|_| ApiError::Internal)?;
    let headers = upstream.headers_mut();
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = client_headers.get(name) {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Some(v) = traceparent {
        headers.insert(HeaderName::from_static("traceparent"), v);
    }
    for (name, value) in &provider.compat.headers {
        headers.insert(name.clone(), value.clone());
    }
    super::anthropic::version_headers(provider, client_headers, api, headers);
    let Some(credential) = credential else {
        return Ok(upstream);
    };
    match &credential.auth {
        Auth::Header { name, value } => {
            upstream.headers_mut().insert(name.clone(), value.clone());
        }
        Auth::Google(account) => {
            let value = account
                .authorization(upstream_client)
                .await
                .map_err(|e| {
                    tracing::warn!(provider = %provider.id, credential = %credential.id, error = %e, "no access token");
                    ApiError::UpstreamToken
                })?;
            upstream.headers_mut().insert(header::AUTHORIZATION, value);
        }
        Auth::Aws(creds) => {
            super::bedrock::sign(&mut upstream, &signed_body, creds, &provider.region)?
        }
    }
    Ok(upstream)
}
