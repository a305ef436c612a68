//! `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic): authenticate,
//! pick the route and target, then either pass the request through (same format at both
//! ends: only the model is rewritten) or translate it, call the provider, and forward its
//! answer (JSON or SSE) chunk by chunk as it arrives.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ApiError;
use super::request::ChatHead;
use super::{Api, Body, BoxError, State, authenticate, now_unix};
use crate::metrics::Metrics;
use crate::runtime::{Auth, Provider, ProviderKind, Route, Wire, pick_weighted};
use crate::translate::Usage;
use crate::translate::pipeline::{Chain, Plan};

/// Request headers passed on to the provider (trace context and request ids).
const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["traceparent", "tracestate", "x-request-id", "accept"];

/// Response headers never copied back (hop-by-hop, or describing the upstream connection).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "set-cookie"
    )
}

/// Metric labels: reference-counted, so a request allocates none.
#[derive(Clone, Default)]
pub(super) struct Labels {
    route: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
}

/// Records a finished request once: when its body ends, fails, or is dropped.
pub(super) struct Completion {
    pub metrics: Metrics,
    pub labels: Labels,
    pub status: StatusCode,
    pub started: Instant,
    pub usage: Option<Usage>,
}

impl Completion {
    pub fn record(self) {
        let l = &self.labels;
        self.metrics
            .requests
            .with_label_values(&[&l.route, &l.provider, &l.model, self.status.as_str()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[&l.route, &l.provider, &l.model])
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(u) = self.usage {
            for (kind, n) in [
                ("input", u.input),
                ("output", u.output),
                ("cached", u.cached),
                ("reasoning", u.reasoning),
            ] {
                if n > 0 {
                    self.metrics
                        .tokens
                        .with_label_values(&[&l.route, &l.provider, &l.model, kind])
                        .inc_by(n);
                }
            }
        }
    }
}

pub async fn handle(state: &State, req: Request<Incoming>, api: Api) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = forward(state, req, api, started, &mut labels).await;
    answer(state, result, api, started, labels)
}

/// The response for a request's outcome; a failure is logged (when it is the gateway's or
/// the provider's) and recorded in metrics here.
pub(super) fn answer(
    state: &State,
    result: Result<Response<Body>, ApiError>,
    api: Api,
    started: Instant,
    labels: Labels,
) -> Response<Body> {
    match result {
        Ok(response) => response,
        Err(e) => {
            if matches!(e, ApiError::Internal | ApiError::UpstreamUnreachable) {
                tracing::warn!(route = %labels.route, provider = %labels.provider, error = %e, "request failed");
            }
            let response = e.to_response_for(api);
            Completion {
                metrics: state.metrics.clone(),
                labels,
                status: response.status(),
                started,
                usage: None,
            }
            .record();
            response
        }
    }
}

/// Where a request goes: its route, the picked target's provider, and the model sent
/// upstream.
pub(super) struct Resolved {
    pub route: Arc<Route>,
    pub provider: Arc<Provider>,
    pub model: Arc<str>,
}

/// Authenticates the key, reads the body, and picks the route, target and model.
pub(super) async fn resolve(
    state: &State,
    parts: &http::request::Parts,
    body: Incoming,
    labels: &mut Labels,
) -> Result<(Bytes, ChatHead, Resolved), ApiError> {
    let snapshot = state.config.load_full();
    let key = authenticate(&snapshot, &parts.headers)?;
    let body = read_body(body, &parts.headers, state.max_body_bytes).await?;
    let head = ChatHead::parse(&body)?;
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?
        .clone();
    labels.route = route.id.clone();
    let target = pick_weighted(&route.targets, |t| {
        if snapshot.providers.contains_key(&t.provider) {
            t.weight
        } else {
            0
        }
    })
    .ok_or_else(|| ApiError::NoTarget(route.id.to_string()))?;
    let provider = snapshot
        .providers
        .get(&target.provider)
        .ok_or_else(|| ApiError::NoTarget(route.id.to_string()))?
        .clone();
    labels.provider = provider.id.clone();
    let model: Arc<str> = target
        .model
        .clone()
        .unwrap_or_else(|| head.model.as_str().into());
    labels.model = model.clone();
    Ok((
        body,
        head,
        Resolved {
            route,
            provider,
            model,
        },
    ))
}

/// Sends a request to the provider within `deadline`. The provider refusing the gateway's
/// credentials and its 5xx answers are errors; everything else is its answer.
pub(super) async fn send(
    state: &State,
    provider: &Provider,
    upstream: Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<Response<Incoming>, ApiError> {
    let response = match tokio::time::timeout_at(deadline, state.upstream.request(upstream)).await {
        Err(_) => return Err(ApiError::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(provider = %provider.id, error = %e, "upstream request failed");
            return Err(ApiError::UpstreamUnreachable);
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    match status.as_u16() {
        401 | 403 => {
            tracing::warn!(provider = %provider.id, status = status.as_u16(), "provider rejected the gateway's credentials");
            Err(ApiError::UpstreamAuth(status.as_u16()))
        }
        500..=599 => Err(ApiError::UpstreamStatus(status.as_u16())),
        // 2xx, and the provider's own 4xx (the client's request was at fault), pass through.
        _ => Ok(response),
    }
}

/// The client's response: the provider's headers (less hop-by-hop ones) and the gateway's
/// own `x-tollgate-*` headers.
pub(super) fn respond(
    status: StatusCode,
    body: Body,
    upstream_headers: &HeaderMap,
    to: &Resolved,
) -> Response<Body> {
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let out_headers = out.headers_mut();
    for (name, value) in upstream_headers {
        if !is_hop_by_hop(name) {
            out_headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in [
        ("x-tollgate-route", &*to.route.id),
        ("x-tollgate-provider", &*to.provider.id),
        ("x-tollgate-model", &*to.model),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            out_headers.insert(HeaderName::from_static(name), v);
        }
    }
    out
}

pub(super) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge(limit)),
        Err(_) => Err(ApiError::BadRequest(
            "The request body could not be read.".into(),
        )),
    }
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    api: Api,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (body, head, to) = resolve(state, &parts, body, labels).await?;
    let (route, provider) = (&to.route, &to.provider);
    let model: &str = &to.model;
    let wire = provider.wire(model);
    let plan = Plan {
        client: api,
        wire,
        provider: provider.kind,
        model: labels.model.clone(),
        stream: head.stream,
        include_usage: head.include_usage,
        created: now_unix(),
        id: if wire == Wire::Bedrock {
            next_id()
        } else {
            String::new()
        },
        json_mode: api == Api::OpenAi && head.json_mode,
    };
    let mut upstream_body: Bytes = if plan.passes_request() {
        let body = head.with_model(body, model);
        if wire == Wire::OpenAi && provider.compat.stream_usage {
            head.with_usage_requested(body)
        } else {
            body
        }
    } else {
        plan.request(&body)?.into()
    };
    if wire == Wire::OpenAi {
        upstream_body = provider.compat.apply(upstream_body, !plan.passes_request());
    }
    let uri = match wire {
        Wire::OpenAi => provider.chat_uri(model),
        Wire::Anthropic => provider.messages_uri(),
        Wire::VertexAnthropic => provider.vertex_anthropic_uri(model, head.stream),
        Wire::Gemini => provider.gemini_uri(model, head.stream),
        Wire::Bedrock => provider.bedrock_uri(model, head.stream),
    }
    .map_err(|_| ApiError::Internal)?;
    let upstream = build_upstream(state, provider, &parts.headers, api, uri, upstream_body).await?;

    let deadline = started + route.request_timeout;
    let before_upstream = started.elapsed();
    let response = send(state, provider, upstream, deadline).await?;
    let got_response = Instant::now();
    let status = response.status();
    let (mut up_parts, up_body) = response.into_parts();
    let streamed = up_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("text/event-stream")
                || v.starts_with("application/vnd.amazon.eventstream")
        });
    let mut completion = Completion {
        metrics: state.metrics.clone(),
        // A clone (three reference counts): an error after this point is still recorded
        // with the request's labels.
        labels: labels.clone(),
        status,
        started,
        usage: None,
    };
    let body = if status.is_success() && streamed {
        up_parts.headers.remove(header::CONTENT_LENGTH);
        up_parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        Streamed {
            inner: up_body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            done: Some(completion),
            chain: plan.stream(),
        }
        .boxed()
    } else {
        let collected = tokio::time::timeout_at(deadline, up_body.collect())
            .await
            .map_err(|_| ApiError::UpstreamTimeout)?
            .map_err(|_| ApiError::UpstreamBody)?
            .to_bytes();
        let out = if status.is_success() {
            let (out, usage) = plan.response(collected)?;
            completion.usage = usage;
            out
        } else {
            plan.error(
                status.as_u16(),
                collected,
                aws_error_type(&up_parts.headers),
            )
        };
        if !plan.passes_response() {
            up_parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        up_parts.headers.remove(header::CONTENT_LENGTH);
        completion.record();
        super::full(out)
    };
    let out = respond(status, body, &up_parts.headers, &to);
    state
        .metrics
        .overhead
        .observe((before_upstream + got_response.elapsed()).as_secs_f64());
    Ok(out)
}

/// Bedrock's error type (`x-amzn-ErrorType`), which its error bodies lack.
pub(super) fn aws_error_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
}

/// A process-unique id for answers whose provider gives none.
fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "tg{:x}{:06x}",
        now_unix(),
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}

/// The request to the provider: body, forwarded headers, version headers and credentials.
pub(super) async fn build_upstream(
    state: &State,
    provider: &Provider,
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
    let Some(credential) = provider.credential() else {
        return Ok(upstream);
    };
    match &credential.auth {
        Auth::Header { name, value } => {
            upstream.headers_mut().insert(name.clone(), value.clone());
        }
        Auth::Google(account) => {
            let value = account
                .authorization(&state.upstream)
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
fn sign_aws(
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

/// The provider's stream, translated (or, for same-format pairs, metered) frame by frame:
/// each frame is written to the client as soon as it completes an event, and the stream is
/// cut at the request deadline. A stream that ends before the answer is complete ends with
/// an error event, never with a false end. The request is recorded in metrics, with the
/// usage the stream carried, once: when the stream ends, fails, or is dropped.
struct Streamed {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: Option<Completion>,
    chain: Chain,
}

impl Streamed {
    fn finish(&mut self) {
        if let Some(mut done) = self.done.take() {
            done.usage = self.chain.usage();
            done.record();
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finish();
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its timeout of {0:?} while streaming")]
struct StreamTimeout(Duration);

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match this.chain.feed_bytes(data) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => return this.fail(Box::new(e)),
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(Box::new(e)),
                Poll::Ready(None) => {
                    let out = this.chain.end_bytes();
                    this.finish();
                    return if out.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    };
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let elapsed = this
                            .done
                            .as_ref()
                            .map(|d| d.started.elapsed())
                            .unwrap_or_default();
                        return this.fail(Box::new(StreamTimeout(elapsed)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
