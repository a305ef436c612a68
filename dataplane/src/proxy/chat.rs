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
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ApiError;
use super::request::ChatHead;
use super::{Api, Body, BoxError, State, authenticate, now_unix};
use crate::metrics::Metrics;
use crate::runtime::{ProviderKind, pick_weighted};
use crate::sse;
use crate::translate::openai_to_anthropic;

/// How a request and its answer cross the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Same format at both ends.
    Pass,
    /// OpenAI client, Anthropic provider.
    OpenAiToAnthropic { include_usage: bool },
}

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
#[derive(Default)]
struct Labels {
    route: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
}

/// Records a finished request once: when its body ends, fails, or is dropped.
struct Completion {
    metrics: Metrics,
    labels: Labels,
    status: StatusCode,
    started: Instant,
}

impl Completion {
    fn record(self) {
        let l = &self.labels;
        self.metrics
            .requests
            .with_label_values(&[&l.route, &l.provider, &l.model, self.status.as_str()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[&l.route, &l.provider, &l.model])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

pub async fn handle(state: &State, req: Request<Incoming>, api: Api) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::default();
    match forward(state, req, api, started, &mut labels).await {
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
            }
            .record();
            response
        }
    }
}

async fn read_body(body: Incoming, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
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
    let snapshot = state.config.load_full();
    let (parts, body) = req.into_parts();
    let key = authenticate(&snapshot, &parts.headers)?;
    let body = read_body(body, &parts.headers, state.max_body_bytes).await?;
    let head = ChatHead::parse(&body)?;
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?;
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
        .ok_or_else(|| ApiError::NoTarget(route.id.to_string()))?;
    labels.provider = provider.id.clone();
    let model: Arc<str> = target
        .model
        .clone()
        .unwrap_or_else(|| head.model.as_str().into());
    labels.model = model.clone();
    let model: &str = &model;
    let (mode, uri, upstream_body) = match (api, provider.kind) {
        (
            Api::OpenAi,
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible | ProviderKind::AzureOpenAi,
        ) => (
            Mode::Pass,
            provider.chat_uri(model),
            head.with_model(body, model),
        ),
        (Api::OpenAi, ProviderKind::Anthropic) => (
            Mode::OpenAiToAnthropic {
                include_usage: head.include_usage,
            },
            provider.messages_uri(),
            openai_to_anthropic::request(&body, model)?.into(),
        ),
        (Api::Anthropic, ProviderKind::Anthropic) => (
            Mode::Pass,
            provider.messages_uri(),
            head.with_model(body, model),
        ),
        (_, kind) => return Err(ApiError::UnsupportedProvider(kind.as_str())),
    };
    let mut upstream = Request::builder()
        .method(Method::POST)
        .uri(uri.map_err(|_| ApiError::Internal)?)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Full::new(upstream_body))
        .map_err(|_| ApiError::Internal)?;
    let headers = upstream.headers_mut();
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if provider.kind == ProviderKind::Anthropic {
        // The client's own version and beta flags win when it speaks Anthropic's API.
        let version = parts
            .headers
            .get("anthropic-version")
            .filter(|_| api == Api::Anthropic)
            .unwrap_or(&provider.anthropic_version)
            .clone();
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        if let Some(beta) = parts
            .headers
            .get("anthropic-beta")
            .filter(|_| api == Api::Anthropic)
        {
            headers.insert(HeaderName::from_static("anthropic-beta"), beta.clone());
        }
    }
    if let Some(credential) = provider.credential() {
        headers.insert(credential.header.clone(), credential.value.clone());
    }

    let deadline = started + route.request_timeout;
    let before_upstream = started.elapsed();
    let response = match tokio::time::timeout_at(deadline, state.upstream.request(upstream)).await {
        Err(_) => return Err(ApiError::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(provider = %provider.id, error = %e, "upstream request failed");
            return Err(ApiError::UpstreamUnreachable);
        }
        Ok(Ok(r)) => r,
    };
    let got_response = Instant::now();
    let status = response.status();
    match status.as_u16() {
        401 | 403 => {
            tracing::warn!(provider = %provider.id, status = status.as_u16(), "provider rejected the gateway's credentials");
            return Err(ApiError::UpstreamAuth(status.as_u16()));
        }
        500..=599 => return Err(ApiError::UpstreamStatus(status.as_u16())),
        // 2xx, and the provider's own 4xx (the client's request was at fault), pass through.
        _ => {}
    }
    let (mut up_parts, up_body) = response.into_parts();
    let completion = Completion {
        metrics: state.metrics.clone(),
        labels: std::mem::take(labels),
        status,
        started,
    };
    let forwarded = Forwarded {
        inner: up_body,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        done: Some(completion),
    };
    let body = match mode {
        Mode::Pass => forwarded.boxed(),
        Mode::OpenAiToAnthropic { include_usage } => {
            up_parts.headers.remove(header::CONTENT_LENGTH);
            let streamed = up_parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if status.is_success() && streamed {
                SseToOpenAi {
                    inner: forwarded,
                    parser: sse::Parser::default(),
                    translator: openai_to_anthropic::StreamTranslator::new(
                        now_unix(),
                        include_usage,
                    ),
                }
                .boxed()
            } else {
                let bytes = forwarded
                    .collect()
                    .await
                    .map_err(|_| ApiError::UpstreamBody)?
                    .to_bytes();
                let translated = if status.is_success() {
                    openai_to_anthropic::response(&bytes, now_unix())?
                } else {
                    openai_to_anthropic::error(&bytes)
                };
                up_parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                super::full(Bytes::from(translated))
            }
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let out_headers = out.headers_mut();
    for (name, value) in &up_parts.headers {
        if !is_hop_by_hop(name) {
            out_headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in [
        ("x-tollgate-route", &*route.id),
        ("x-tollgate-provider", &*provider.id),
        ("x-tollgate-model", model),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            out_headers.insert(HeaderName::from_static(name), v);
        }
    }
    state
        .metrics
        .overhead
        .observe((before_upstream + got_response.elapsed()).as_secs_f64());
    Ok(out)
}

/// The provider's body, passed on frame by frame, cut at the request deadline; the
/// request is recorded in metrics when it ends either way.
struct Forwarded {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: Option<Completion>,
}

impl Forwarded {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done.record();
        }
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its timeout of {0:?} while streaming")]
struct StreamTimeout(Duration);

impl http_body::Body for Forwarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let elapsed = this
                        .done
                        .as_ref()
                        .map(|d| d.started.elapsed())
                        .unwrap_or_default();
                    this.finish();
                    return Poll::Ready(Some(Err(Box::new(StreamTimeout(elapsed)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An Anthropic event stream, re-emitted as OpenAI chunks frame by frame. A stream that
/// ends before `message_stop` ends with an error event, never with a false `[DONE]`.
struct SseToOpenAi {
    inner: Forwarded,
    parser: sse::Parser,
    translator: openai_to_anthropic::StreamTranslator,
}

impl http_body::Body for SseToOpenAi {
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
                    let Some(data) = frame.data_ref() else {
                        continue;
                    };
                    let events = match this.parser.feed(data) {
                        Ok(events) => events,
                        Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                    };
                    let mut out = String::new();
                    for event in &events {
                        out += &this.translator.event(event);
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let mut out = String::new();
                    if let Some(event) = this.parser.finish() {
                        out += &this.translator.event(&event);
                    }
                    if !this.translator.is_done() {
                        out += &this.translator.event(&sse::Event {
                            name: "error".into(),
                            data: r#"{"type":"error","error":{"type":"api_error","message":"The provider's stream ended before the answer was complete."}}"#.into(),
                        });
                    }
                    return if out.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
