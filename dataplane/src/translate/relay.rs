//! Same-format streams (the client and the provider speak one format): the provider's bytes
//! reach the client unchanged, cut only at event boundaries so that a whole event is
//! always forwarded at once. Only events that can carry usage are parsed, to meter them;
//! OpenAI's usage chunk is dropped when the gateway asked for it on the client's behalf.
//!
//! A frame that ends at an event boundary and holds no usage is forwarded as the same
//! buffer, without a copy: that is nearly every frame of a stream.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem::Finder;
use serde_json::Value;

use crate::base::sse;
use crate::metering::usage::{AnthropicUsage, Usage};

/// The format relayed, and what its meter needs.
#[derive(Debug)]
enum Meter {
    OpenAi {
        client_wants_usage: bool,
        usage: Option<Usage>,
    },
    Anthropic(AnthropicUsage),
    /// The Responses API: usage is in the response of its last event.
    Responses(Option<Usage>),
}

#[derive(Debug)]
pub struct Relay {
    meter: Meter,
    /// A Responses stream's ids, rewritten for the client.
    ids: Option<std::sync::Arc<dyn super::ids::IdSeal>>,
    /// Bytes of an event not complete yet.
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no event boundary.
    scanned: usize,
    /// The stream's last event so far is its proper end (`[DONE]`, `message_stop`).
    complete: bool,
    /// A Responses stream's last `sequence_number` so far: an error event the gateway
    /// writes follows it.
    sequence: Option<u64>,
}

/// Where the last complete event of `b` ends (after its blank line), scanning from `from`.
fn last_boundary(b: &[u8], from: usize) -> usize {
    let mut end = 0;
    let mut at = from;
    while let Some((i, sep)) = sse::find_blank_line(&b[at..]) {
        end = at + i + sep;
        at = end;
    }
    end
}

/// Searchers built once: every frame of a relayed stream is scanned with one of them.
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\":"));
static MESSAGE_EVENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"message_"));
/// The events that end a Responses stream, and carry the whole response with its usage.
static RESPONSE_ENDS: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"response.completed\""),
        Finder::new(b"\"response.incomplete\""),
        Finder::new(b"\"response.failed\""),
    ]
});

static SEQUENCE_KEY: LazyLock<memchr::memmem::FinderRev<'static>> =
    LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"sequence_number\":"));

/// The last `sequence_number` in `b` (whole Responses events), searched from the end, so
/// only the last event is read.
fn last_sequence_number(b: &[u8]) -> Option<u64> {
    let at = SEQUENCE_KEY.rfind(b)? + SEQUENCE_KEY.needle().len();
    let rest = &b[at..];
    let start = rest.iter().position(|c| !c.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    std::str::from_utf8(&rest[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// A Responses event that ends its stream.
fn has_response_end(b: &[u8]) -> bool {
    RESPONSE_ENDS.iter().any(|f| f.find(b).is_some())
}

/// An OpenAI chunk with a usage object (chunks without usage have none or `"usage":null`).
fn has_usage_object(b: &[u8]) -> bool {
    USAGE_KEY.find_iter(b).any(|at| {
        b[at + USAGE_KEY.needle().len()..]
            .iter()
            .find(|c| !c.is_ascii_whitespace())
            == Some(&b'{')
    })
}

/// An Anthropic event that carries usage: `message_start` or `message_delta`.
fn has_usage_event(b: &[u8]) -> bool {
    MESSAGE_EVENT.find_iter(b).any(|at| {
        let rest = &b[at + MESSAGE_EVENT.needle().len()..];
        rest.starts_with(b"start") || rest.starts_with(b"delta")
    })
}

impl Relay {
    pub fn openai(client_wants_usage: bool) -> Self {
        Self::with(Meter::OpenAi {
            client_wants_usage,
            usage: None,
        })
    }

    pub fn anthropic() -> Self {
        Self::with(Meter::Anthropic(AnthropicUsage::default()))
    }

    pub fn responses(ids: Option<std::sync::Arc<dyn super::ids::IdSeal>>) -> Self {
        Self {
            ids,
            ..Self::with(Meter::Responses(None))
        }
    }

    fn with(meter: Meter) -> Self {
        Self {
            meter,
            ids: None,
            pending: Vec::new(),
            scanned: 0,
            complete: false,
            sequence: None,
        }
    }

    /// The client's bytes for the provider's `bytes`: every event they complete.
    pub fn feed(&mut self, bytes: Bytes) -> Result<Bytes, sse::TooLarge> {
        let (buf, from) = if self.pending.is_empty() {
            (bytes, 0)
        } else {
            self.pending.extend_from_slice(&bytes);
            // A separator may straddle the old end: look back three bytes.
            let from = self.scanned.saturating_sub(3);
            (Bytes::from(std::mem::take(&mut self.pending)), from)
        };
        let complete = last_boundary(&buf, from);
        if complete < buf.len() {
            self.pending = buf[complete..].to_vec();
            self.scanned = self.pending.len();
            if self.pending.len() > sse::MAX_EVENT_BYTES {
                return Err(sse::TooLarge);
            }
        } else {
            self.scanned = 0;
        }
        if complete > 0 {
            // The end event is the last one of its stream: only the tail needs a look.
            // (A Responses stream's end carries the whole response: it is found when
            // metered.)
            let tail = &buf[complete.saturating_sub(48)..complete];
            let end: Option<&[u8]> = match self.meter {
                Meter::OpenAi { .. } => Some(b"[DONE]"),
                Meter::Anthropic(_) => Some(b"message_stop"),
                Meter::Responses(_) => None,
            };
            if let Some(end) = end {
                self.complete = memchr::memmem::find(tail, end).is_some();
            } else if let Some(n) = last_sequence_number(&buf[..complete]) {
                self.sequence = Some(n);
            }
        }
        Ok(self.meter(buf.slice(..complete)))
    }

    /// The closing bytes of a stream that broke: what is complete of it, then (unless it
    /// had already ended properly) an error event in the client's format.
    pub fn cut(&mut self) -> Bytes {
        let rest = self.end();
        if self.complete {
            return rest;
        }
        let error = match self.meter {
            Meter::OpenAi { .. } => {
                super::stream_error_event(crate::base::Api::OpenAi, super::STREAM_CUT)
            }
            Meter::Anthropic(_) => {
                super::stream_error_event(crate::base::Api::Anthropic, super::STREAM_CUT)
            }
            Meter::Responses(_) => super::responses_error_event(
                super::STREAM_CUT,
                "server_error",
                self.sequence.map_or(0, |n| n + 1),
            ),
        };
        let mut out = rest.to_vec();
        out.extend_from_slice(error.as_bytes());
        out.into()
    }

    /// What is left when the provider's stream ends: an unterminated last event, as is.
    pub fn end(&mut self) -> Bytes {
        let rest = Bytes::from(std::mem::take(&mut self.pending));
        self.scanned = 0;
        self.meter(rest)
    }

    pub fn usage(&self) -> Option<Usage> {
        match &self.meter {
            Meter::OpenAi { usage, .. } => *usage,
            Meter::Anthropic(u) => u.usage(),
            Meter::Responses(u) => *u,
        }
    }

    /// Meters the events of `ready` (whole events) and returns what the client gets, its
    /// response ids rewritten when they are.
    fn meter(&mut self, ready: Bytes) -> Bytes {
        let out = self.metered(ready);
        match &self.ids {
            Some(ids) => super::ids::rewrite(&out, ids.as_ref()).map_or(out, Bytes::from),
            None => out,
        }
    }

    fn metered(&mut self, ready: Bytes) -> Bytes {
        let may_carry_usage = match self.meter {
            Meter::OpenAi { .. } => has_usage_object(&ready),
            Meter::Anthropic(_) => has_usage_event(&ready),
            Meter::Responses(_) => has_response_end(&ready),
        };
        if !may_carry_usage {
            return ready;
        }
        // Walk the events; drop at most the injected usage chunk, copy only then.
        let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
        let mut dropped = false;
        let mut start = 0;
        while start < ready.len() {
            let (end, next) = match sse::find_blank_line(&ready[start..]) {
                Some((i, sep)) => (start + i, start + i + sep),
                None => (ready.len(), ready.len()),
            };
            let keep = match sse::parse_event(&ready[start..end]) {
                Some(event) => self.observe(&event),
                None => true,
            };
            if keep {
                kept.push(start..next);
            } else {
                dropped = true;
            }
            start = next;
        }
        if !dropped {
            return ready;
        }
        let mut out = Vec::with_capacity(ready.len());
        for r in kept {
            out.extend_from_slice(&ready[r]);
        }
        out.into()
    }

    /// Reads usage from one event; false when the event must not reach the client.
    fn observe(&mut self, event: &sse::Event) -> bool {
        match &mut self.meter {
            Meter::OpenAi {
                client_wants_usage,
                usage,
            } => {
                let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                    return true;
                };
                let Some(u) = v.get("usage").and_then(Usage::from_openai) else {
                    return true;
                };
                *usage = Some(u);
                let no_choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                !no_choices || *client_wants_usage
            }
            Meter::Anthropic(total) => {
                let at = match event.name.as_str() {
                    "message_start" => "/message/usage",
                    "message_delta" => "/usage",
                    _ => return true,
                };
                if let Ok(v) = serde_json::from_str::<Value>(&event.data)
                    && let Some(u) = v.pointer(at)
                {
                    total.merge(u);
                }
                true
            }
            Meter::Responses(usage) => {
                let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                    return true;
                };
                let ends = [
                    "response.completed",
                    "response.incomplete",
                    "response.failed",
                ];
                if v["type"].as_str().is_some_and(|t| ends.contains(&t)) {
                    self.complete = true;
                    if let Some(u) = Usage::from_responses(&v["response"]["usage"]) {
                        *usage = Some(u);
                    }
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(relay: &mut Relay, input: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            out.extend_from_slice(&relay.feed(Bytes::copy_from_slice(part)).unwrap());
        }
        out.extend_from_slice(&relay.end());
        out
    }

    #[test]
    fn bytes_pass_unchanged_in_whole_events() {
        for piece in [1, 3, 7, 64, OPENAI.len()] {
            let mut r = Relay::openai(true);
            assert_eq!(run(&mut r, OPENAI.as_bytes(), piece), OPENAI.as_bytes());
            let u = r.usage().unwrap();
            assert_eq!((u.input, u.output), (5, 2));
        }
        // An event is never split: each output holds whole events only.
        let mut r = Relay::openai(true);
        let half = r
            .feed(Bytes::from_static(&OPENAI.as_bytes()[..40]))
            .unwrap();
        assert!(half.is_empty());
    }

    #[test]
    fn a_frame_of_whole_events_is_not_copied() {
        let mut r = Relay::openai(true);
        let frame = Bytes::from_static(&OPENAI.as_bytes()[..OPENAI.find("\n\n").unwrap() + 2]);
        let out = r.feed(frame.clone()).unwrap();
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn injected_usage_chunk_is_dropped_but_counted() {
        for piece in [1, 5, OPENAI.len()] {
            let mut r = Relay::openai(false);
            let out = String::from_utf8(run(&mut r, OPENAI.as_bytes(), piece)).unwrap();
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(out.ends_with("data: [DONE]\n\n") && out.contains("keep-alive"));
            assert_eq!(r.usage().unwrap().output, 2);
        }
    }

    #[test]
    fn anthropic_usage_is_read_from_start_and_delta() {
        let stream = concat!(
            "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1,\"cache_read_input_tokens\":4}}}\r\n\r\n",
            "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"message_delta\"}}\r\n\r\n",
            "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":12}}\r\n\r\n",
            "event: message_stop\r\ndata: {\"type\":\"message_stop\"}",
        );
        for piece in [1, 4, stream.len()] {
            let mut r = Relay::anthropic();
            assert_eq!(run(&mut r, stream.as_bytes(), piece), stream.as_bytes());
            let u = r.usage().unwrap();
            assert_eq!((u.input, u.output, u.cached), (13, 12, 4));
        }
    }

    #[test]
    fn only_events_that_can_carry_usage_are_parsed() {
        assert!(has_usage_object(br#"data: {"usage": {"prompt_tokens":1}}"#));
        assert!(has_usage_object(br#"{"usage":null} {"usage":{}}"#));
        assert!(!has_usage_object(br#"data: {"choices":[],"usage":null}"#));
        assert!(has_usage_event(b"event: message_delta\n"));
        assert!(!has_usage_event(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}"
        ));
    }

    #[test]
    fn a_cut_responses_stream_ends_with_the_next_sequence_number() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"sequence_number\",\"sequence_number\": 7}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"seq",
        );
        for piece in [1, 9, stream.len()] {
            let mut r = Relay::responses(None);
            for part in stream.as_bytes().chunks(piece) {
                r.feed(Bytes::copy_from_slice(part)).unwrap();
            }
            let cut = String::from_utf8(r.cut().to_vec()).unwrap();
            assert!(cut.contains("\"sequence_number\":8"), "{cut}");
            assert!(cut.contains("event: error"), "{cut}");
        }
        // Cut before any event: the first number.
        let mut r = Relay::responses(None);
        assert!(
            String::from_utf8(r.cut().to_vec())
                .unwrap()
                .contains("\"sequence_number\":0")
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut r = Relay::anthropic();
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let mut failed = false;
        for _ in 0..20 {
            if r.feed(chunk.clone()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
