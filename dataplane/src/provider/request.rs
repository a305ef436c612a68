//! The request to a provider: its body, the client headers passed on, version headers,
//! and the credential (a header, a Google access token, or a SigV4 signature).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::Full;

use crate::base::{Api, now_unix};
use crate::config::model::{Auth, Credential, Provider, ProviderKind};
use crate::error::ApiError;

/// Request headers passed on to the provider (trace context and request ids).
pub(crate) const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["traceparent", "tracestate", "x-request-id", "accept"];

/// Bedrock's error type (`x-amzn-ErrorType`), which its error bodies lack.
pub(crate) fn aws_error_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
}

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
pub(crate) async fn build_upstream(
    upstream_client: &crate::base::upstream::Upstream,
    provider: &Provider,
    credential: Option<&Credential>,
    client_headers: &HeaderMap,
    api: Api,
    uri: http::Uri,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let wire_is_anthropic = provider.kind == ProviderKind::Anthropic;
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
    for (name, value) in &provider.compat.headers {
        headers.insert(name.clone(), value.clone());
    }
    if wire_is_anthropic {
        // The client's own version and beta flags win when it speaks Anthropic's API.
        let version = client_headers
            .get("anthropic-version")
            .filter(|_| api == Api::Anthropic)
            .unwrap_or(&provider.anthropic_version)
            .clone();
        headers.insert(HeaderName::from_static("anthropic-version"), version);
    }
    if (wire_is_anthropic || provider.kind == ProviderKind::VertexAi)
        && let Some(beta) = client_headers
            .get("anthropic-beta")
            .filter(|_| api == Api::Anthropic)
    {
        headers.insert(HeaderName::from_static("anthropic-beta"), beta.clone());
    }
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
        Auth::Aws(creds) => sign_aws(&mut upstream, &signed_body, creds, &provider.region)?,
    }
    Ok(upstream)
}

/// Signs a Bedrock request with SigV4 (service `bedrock`).
pub(crate) fn sign_aws(
    request: &mut Request<Full<Bytes>>,
    body: &[u8],
    creds: &crate::auth::sigv4::AwsCredentials,
    region: &str,
) -> Result<(), ApiError> {
    use crate::auth::sigv4;
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or(ApiError::Internal)?;
    let payload_hash = sigv4::sha256_hex(body);
    let date = sigv4::amz_date(now_unix());
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let mut signed: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-amz-date", &date),
        ("x-amz-content-sha256", &payload_hash),
        ("content-type", "application/json"),
    ];
    if let Some(token) = &creds.session_token {
        signed.push(("x-amz-security-token", token));
    }
    let authorization = sigv4::authorization(
        creds,
        region,
        "bedrock",
        &date,
        &sigv4::Request {
            method: "POST",
            path: &path,
            query: &query,
            headers: &signed,
            payload_sha256: &payload_hash,
        },
        true,
    );
    let headers = request.headers_mut();
    let mut set = |name: &'static str, value: &str, sensitive: bool| -> Result<(), ApiError> {
        let mut v = HeaderValue::from_str(value).map_err(|_| ApiError::Internal)?;
        v.set_sensitive(sensitive);
        headers.insert(HeaderName::from_static(name), v);
        Ok(())
    };
    set("x-amz-date", &date, false)?;
    set("x-amz-content-sha256", &payload_hash, false)?;
    if let Some(token) = &creds.session_token {
        set("x-amz-security-token", token, true)?;
    }
    set("authorization", &authorization, true)?;
    Ok(())
}
