//! A stream whose provider is slow to send its first byte: the response starts at once
//! and carries SSE comments until the attempts end.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::PlanFuture;
use super::attempt::Ctx;
use super::record::{Completion, Labels};
use crate::base::metrics::Metrics;
use crate::base::{Api, Body, BoxError};
use crate::error::ApiError;

/// The response of a stream whose provider has not sent a byte within the keep-alive
/// interval: 200 and SSE at once, comments while the attempts go on, then the answer's
/// stream, or an error event in the client's format.
pub(crate) fn keep_alive_response(ctx: &Ctx, run: PlanFuture, every: Duration) -> Response<Body> {
    let body = KeepAlive {
        run: Some(std::sync::Mutex::new(run)),
        ticker: tokio::time::interval_at(Instant::now() + every, every),
        then: None,
        api: ctx.api,
        started: ctx.started,
        metrics: ctx.state.metrics.clone(),
    };
    let mut out = Response::new(body.boxed());
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&ctx.route.id) {
        headers.insert(HeaderName::from_static("x-tollgate-route"), v);
    }
    out
}

/// The body of [`keep_alive_response`].
pub(crate) struct KeepAlive {
    /// The attempts (behind a mutex only to make the body `Sync`); `None` once done.
    pub(crate) run: Option<std::sync::Mutex<PlanFuture>>,
    pub(crate) ticker: tokio::time::Interval,
    /// The answer's stream.
    pub(crate) then: Option<Body>,
    pub(crate) api: Api,
    pub(crate) started: Instant,
    pub(crate) metrics: Metrics,
}

/// An SSE comment: ignored by clients, it keeps idle-timeouts along the way from firing.
pub(crate) const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

impl http_body::Body for KeepAlive {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(body) = this.then.as_mut() {
            return http_body::Body::poll_frame(Pin::new(body), cx);
        }
        let Some(run) = this.run.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match run.get_mut() {
            Ok(run) => run.as_mut().poll(cx),
            Err(_) => Poll::Ready((Err(ApiError::Internal), Labels::default())),
        };
        match polled {
            Poll::Ready((result, labels)) => {
                this.run = None;
                let message = match result {
                    Ok(response) if response.status().is_success() => {
                        let mut body = response.into_body();
                        let first = http_body::Body::poll_frame(Pin::new(&mut body), cx);
                        this.then = Some(body);
                        return first;
                    }
                    // The provider's own error; its record was made with it.
                    Ok(response) => format!(
                        "The upstream provider answered with status {}.",
                        response.status().as_u16()
                    ),
                    Err(e) => {
                        if let Some(t) = &labels.trail {
                            t.failed(&e);
                        }
                        Completion::unanswered(
                            this.metrics.clone(),
                            labels,
                            e.status(),
                            this.started,
                        )
                        .record();
                        e.to_string()
                    }
                };
                let event = crate::translate::stream_error_event(this.api, &message);
                Poll::Ready(Some(Ok(Frame::data(event.into()))))
            }
            Poll::Pending => match this.ticker.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    KEEP_ALIVE_COMMENT,
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
