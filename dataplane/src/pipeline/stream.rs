//! A provider's stream on its way to the client: translated frame by frame, cut at the
//! deadline or a silence, recorded once, and continued on the next target when it breaks
//! and the route asks for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;

use super::PlanFuture;
use super::record::{Completion, Labels};
use crate::base::{Api, Body, BoxError};
use crate::config::failure::HealthPolicy;
use crate::error::ApiError;
use crate::pipeline::balance;
use crate::provider::plan::Chain;
use crate::translate::head::ChatHead;

/// The provider's stream, translated (or, for same-format pairs, metered) frame by frame:
/// each frame is written to the client as soon as it completes an event, and the stream is
/// cut at the request deadline. A stream that ends before the answer is complete ends with
/// an error event, never with a false end. The request is recorded in metrics, with the
/// usage the stream carried, once: when the stream ends, fails, or is dropped.
pub(crate) struct Streamed {
    pub(crate) inner: Body,
    /// The provider's first bytes, read before the response was committed.
    pub(crate) first: Option<Bytes>,
    /// The request's deadline and the provider's silence since its last frame.
    pub(crate) timers: Timers,
    pub(crate) done: Option<Completion>,
    pub(crate) chain: Chain,
    /// The closing bytes have been written; the next poll ends the body.
    pub(crate) ended: bool,
    /// The provider ended the stream itself (rather than it breaking, going silent, being
    /// cut at the deadline, or the client going away).
    pub(crate) complete: bool,
    pub(crate) _inflight: balance::InFlight,
    /// Set when the route continues broken streams on the next target.
    pub(crate) resume: Option<ResumeSlot>,
    /// What the client has been sent (kept only when the stream may be continued).
    pub(crate) transcript: Option<Transcript>,
    /// The continuation, once the provider's stream broke.
    pub(crate) continuation: Option<Continuation>,
    /// The target's health record: a break after the first byte counts against it.
    pub(crate) target: Option<(Arc<balance::Endpoint>, HealthPolicy)>,
    /// What the client has been sent (shared, not copied), counted if the provider
    /// reports no usage; `None` once over [`crate::metering::tokens::MAX_KEPT_BYTES`].
    pub(crate) kept: Option<Vec<Bytes>>,
    pub(crate) kept_bytes: usize,
}

/// What a stream needs to continue on the next target: the original request body, and
/// the attempt loop's way to go on with a new body (`None` when no target is left).
pub(crate) struct Resume {
    pub(crate) body: Bytes,
    pub(crate) restart: Box<dyn FnOnce(Bytes, ChatHead) -> Option<PlanFuture> + Send>,
}

/// Filled by the attempt loop once the stream is the answer; taken by the stream if it
/// breaks.
#[derive(Clone, Default)]
pub(crate) struct ResumeSlot(Arc<std::sync::Mutex<Option<Resume>>>);

impl ResumeSlot {
    pub(crate) fn fill(&self, r: Resume) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(r);
        }
    }

    pub(crate) fn take(&self) -> Option<Resume> {
        self.0.lock().ok()?.take()
    }
}

/// The answer an OpenAI client has received so far.
#[derive(Debug, Default)]
pub(crate) struct Transcript {
    pub(crate) text: String,
    /// The stream's chunk id, which a continuation keeps.
    pub(crate) id: Option<String>,
    /// The answer ended (a finish reason, or `[DONE]`): nothing to continue.
    pub(crate) finished: bool,
    /// It holds tool calls, which a continuation cannot resume.
    pub(crate) tool_calls: bool,
    pub(crate) events: crate::base::sse::Parser,
}

impl Transcript {
    pub(crate) fn observe(&mut self, out: &[u8]) {
        // The gateway's own output: well-formed, and far below the event size limit.
        for event in self.events.feed(out).unwrap_or_default() {
            if event.data == "[DONE]" {
                self.finished = true;
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                continue;
            };
            if self.id.is_none() {
                self.id = chunk["id"].as_str().map(str::to_string);
            }
            let choice = &chunk["choices"][0];
            if let Some(text) = choice["delta"]["content"].as_str() {
                self.text.push_str(text);
            }
            if choice["delta"]
                .get("tool_calls")
                .is_some_and(|t| !t.is_null())
            {
                self.tool_calls = true;
            }
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.finished = true;
            }
        }
    }
}

/// The original request with the partial answer as an assistant prefill.
pub(crate) fn continuation_body(body: &[u8], partial: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get_mut("messages")?
        .as_array_mut()?
        .push(serde_json::json!({"role": "assistant", "content": partial}));
    serde_json::to_vec(&v).ok().map(Into::into)
}

pub(crate) enum Continuation {
    /// The next target's attempt (behind a mutex only to make the body `Sync`).
    Starting(std::sync::Mutex<PlanFuture>),
    /// Its stream, passed on as part of the first.
    Streaming {
        body: Body,
        id: Option<String>,
        events: crate::base::sse::Parser,
    },
}

/// A continuation's events as part of the stream the client already has: the same chunk
/// id, and no second opening (role) chunk.
pub(crate) fn rejoin(
    events: &mut crate::base::sse::Parser,
    frame: &[u8],
    id: Option<&str>,
) -> Bytes {
    let mut out = String::new();
    for event in events.feed(frame).unwrap_or_default() {
        let Ok(mut chunk) = serde_json::from_str::<serde_json::Value>(&event.data) else {
            out.push_str("data: ");
            out.push_str(&event.data);
            out.push_str("\n\n");
            continue;
        };
        let delta = &chunk["choices"][0]["delta"];
        let opening = delta.get("role").is_some()
            && delta["content"].as_str().unwrap_or("").is_empty()
            && delta.get("tool_calls").is_none_or(|t| t.is_null())
            && chunk["choices"][0]["finish_reason"].is_null();
        if opening {
            continue;
        }
        if let Some(id) = id {
            use crate::base::json::SetKey;
            chunk.set_key("id", serde_json::Value::String(id.to_string()));
        }
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    }
    out.into()
}

impl Streamed {
    /// The provider's stream ended (`broke`: failed): the target's outcome, once, which
    /// may eject it or bring it back.
    pub(crate) fn settle(&mut self, broke: bool) {
        let Some((endpoint, policy)) = self.target.take() else {
            return;
        };
        let now = Instant::now();
        let t = if broke {
            endpoint.failure(&policy, now, Duration::ZERO)
        } else {
            endpoint.settled(now)
        };
        if let Some(d) = &self.done {
            d.metrics
                .health(t, &d.labels.provider, &d.labels.model, "target");
        }
    }

    /// A frame for the client, noted in the transcript when the stream may be continued.
    pub(crate) fn sent(&mut self, out: Bytes) -> Frame<Bytes> {
        if let Some(t) = self.transcript.as_mut() {
            t.observe(&out);
        }
        if let Some(t) = self.done.as_ref().and_then(|d| d.labels.trail.as_ref()) {
            t.streamed(&out);
        }
        if self.done.is_some()
            && let Some(kept) = self.kept.as_mut()
        {
            self.kept_bytes += out.len();
            if self.kept_bytes <= crate::metering::tokens::MAX_KEPT_BYTES {
                kept.push(out.clone());
            } else {
                self.kept = None;
            }
        }
        Frame::data(out)
    }

    pub(crate) fn finish(&mut self) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        done.usage = self.chain.usage();
        if self.complete {
            let kept = self.kept.take();
            done.count_unreported(|model, api| {
                kept.map(|k| crate::metering::tokens::streamed(model, api, &k))
            });
            done.record();
            return;
        }
        // The provider was still producing when the stream ended here: it bills what it
        // produced, which the stream does not say, up to the output limit.
        let billed = done.reservation.clone();
        let (labels, status) = (done.labels.clone(), done.status.as_u16());
        done.record();
        if let Some(r) = billed {
            r.charge_worst(&labels.route, &labels.provider, &labels.model, status);
        }
    }

    /// Starts the continuation of a broken stream on the next target, when the route asks
    /// for it and the answer can be continued; false otherwise.
    pub(crate) fn try_resume(&mut self) -> bool {
        let Some(slot) = self.resume.take() else {
            return false;
        };
        let Some(t) = &self.transcript else {
            return false;
        };
        if t.finished || t.tool_calls {
            return false;
        }
        let Some(r) = slot.take() else {
            return false;
        };
        let Some(body) = continuation_body(&r.body, &t.text) else {
            return false;
        };
        let Ok(head) = ChatHead::parse(&body) else {
            return false;
        };
        let Some(run) = (r.restart)(body, head) else {
            return false;
        };
        self.finish();
        self.continuation = Some(Continuation::Starting(std::sync::Mutex::new(run)));
        true
    }

    pub(crate) fn poll_continuation(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(c) = self.continuation.as_mut() else {
                return Poll::Ready(None);
            };
            match c {
                Continuation::Starting(run) => {
                    let polled = match run.get_mut() {
                        Ok(run) => run.as_mut().poll(cx),
                        Err(_) => Poll::Ready((Err(ApiError::Internal), Labels::default())),
                    };
                    match polled {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready((Ok(response), _)) if response.status().is_success() => {
                            let id = self.transcript.as_ref().and_then(|t| t.id.clone());
                            *c = Continuation::Streaming {
                                body: response.into_body(),
                                id,
                                events: crate::base::sse::Parser::default(),
                            };
                        }
                        Poll::Ready(_) => {
                            self.continuation = None;
                            self.ended = true;
                            let error = crate::translate::stream_error_event(
                                Api::OpenAi,
                                crate::translate::STREAM_CUT,
                            );
                            return Poll::Ready(Some(Ok(Frame::data(error.into()))));
                        }
                    }
                }
                Continuation::Streaming { body, id, events } => {
                    return match http_body::Body::poll_frame(Pin::new(body), cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            let out = rejoin(events, &data, id.as_deref());
                            if out.is_empty() {
                                continue;
                            }
                            Poll::Ready(Some(Ok(Frame::data(out))))
                        }
                        Poll::Ready(None) => {
                            self.ended = true;
                            Poll::Ready(None)
                        }
                        other => other,
                    };
                }
            }
        }
    }

    /// The stream broke after the client had its first bytes: it ends with a
    /// well-formed error event in the client's format (and the stream's proper end).
    pub(crate) fn fail(
        &mut self,
        e: &dyn std::fmt::Display,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::debug!(error = %e, "upstream stream failed after the first byte");
        let out = self.chain.cut_bytes();
        self.finish();
        self.ended = true;
        if out.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(Frame::data(out))))
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its timeout of {0:?} while streaming")]
pub(crate) struct StreamTimeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("the provider sent nothing for {0:?} while streaming")]
pub(crate) struct StreamIdle(Duration);

/// A stream's two limits on one timer: the request's deadline, and the longest silence
/// between two frames. A frame only notes the time; the timer is moved when it fires
/// before either is due, so a stream costs one timer and one clock read per frame.
pub(crate) struct Timers {
    pub(crate) deadline: Instant,
    pub(crate) idle: Duration,
    pub(crate) last: Instant,
    pub(crate) sleep: Pin<Box<tokio::time::Sleep>>,
}

/// Which limit a stream reached.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    Deadline,
    Idle,
}

impl Timers {
    pub(crate) fn new(deadline: Instant, idle: Duration) -> Self {
        let last = Instant::now();
        Self {
            deadline,
            idle,
            last,
            sleep: Box::pin(tokio::time::sleep_until((last + idle).min(deadline))),
        }
    }

    pub(crate) fn frame(&mut self) {
        self.last = Instant::now();
    }

    /// Ready once the deadline has passed, or the provider has been silent for the whole
    /// idle limit (the deadline first, when both have).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Poll::Ready(Expired::Deadline);
            }
            let due = self.last + self.idle;
            if now >= due {
                return Poll::Ready(Expired::Idle);
            }
            self.sleep.as_mut().reset(due.min(self.deadline));
        }
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.continuation.is_some() {
            return this.poll_continuation(cx);
        }
        if let Some(first) = this.first.take() {
            match this.chain.feed_bytes(first) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(this.sent(out)))),
                Err(e) => return this.fail(&e),
            }
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.timers.frame();
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match this.chain.feed_bytes(data) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => return Poll::Ready(Some(Ok(this.sent(out)))),
                        Err(e) => return this.fail(&e),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.settle(true);
                    if this.try_resume() {
                        return this.poll_continuation(cx);
                    }
                    return this.fail(&e);
                }
                Poll::Ready(None) => {
                    this.settle(false);
                    this.complete = true;
                    let out = this.chain.end_bytes();
                    if let Some(t) = this.done.as_ref().and_then(|d| d.labels.trail.as_ref()) {
                        t.streamed(&out);
                    }
                    this.finish();
                    return if out.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    };
                }
                Poll::Pending => {
                    return match this.timers.poll_expired(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Expired::Deadline) => {
                            let elapsed = this
                                .done
                                .as_ref()
                                .map(|d| d.started.elapsed())
                                .unwrap_or_default();
                            this.fail(&StreamTimeout(elapsed))
                        }
                        Poll::Ready(Expired::Idle) => {
                            // A silent provider is a broken stream: continued elsewhere
                            // when the route asks for it, else ended with an error event.
                            this.settle(true);
                            if this.try_resume() {
                                return this.poll_continuation(cx);
                            }
                            this.fail(&StreamIdle(this.timers.idle))
                        }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames that keep coming more often than the idle limit keep a stream alive however
    /// long it runs; silence ends it one limit after the last frame; the deadline wins.
    #[tokio::test(start_paused = true)]
    async fn a_stream_expires_after_its_deadline_or_a_silence() {
        async fn poll(t: &mut Timers) -> Poll<Expired> {
            std::future::poll_fn(|cx| Poll::Ready(t.poll_expired(cx))).await
        }
        let start = Instant::now();
        let mut t = Timers::new(start + Duration::from_secs(10), Duration::from_millis(500));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.frame();
            assert!(poll(&mut t).await.is_pending(), "{:?}", start.elapsed());
        }
        let last = Instant::now();
        let expired = std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert_eq!(expired, Expired::Idle);
        assert_eq!(Instant::now() - last, Duration::from_millis(500));

        let start = Instant::now();
        let mut t = Timers::new(
            start + Duration::from_millis(200),
            Duration::from_millis(500),
        );
        let expired = std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert_eq!(expired, Expired::Deadline);
        assert_eq!(Instant::now() - start, Duration::from_millis(200));
    }

    #[test]
    fn a_continuation_joins_the_first_stream() {
        let mut t = Transcript::default();
        t.observe(b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n");
        t.observe(b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(t.text, "Hello");
        assert_eq!(t.id.as_deref(), Some("a"));
        assert!(!t.finished && !t.tool_calls);
        let joined = rejoin(
            &mut crate::base::sse::Parser::default(),
            b"data: {\"id\":\"b\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n",
            t.id.as_deref(),
        );
        let text = String::from_utf8(joined.to_vec()).unwrap();
        let data: Vec<String> = crate::base::sse::Parser::default()
            .feed(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(data.len(), 2, "{text}");
        let chunk: serde_json::Value = serde_json::from_str(&data[0]).unwrap();
        assert_eq!(chunk["id"], "a");
        assert_eq!(chunk["choices"][0]["delta"]["content"], " world");
        assert_eq!(data[1], "[DONE]");
        let body = continuation_body(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            &t.text,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["messages"][1],
            serde_json::json!({"role": "assistant", "content": "Hello"})
        );
        // A finished answer, or one with tool calls, is not continued. Events may come cut
        // across frames.
        t.observe(b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]},");
        assert!(!t.tool_calls);
        t.observe(b"\"finish_reason\":null}]}\n\n");
        assert!(t.tool_calls);
        t.observe(b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        assert!(t.finished);
    }
}
