//! The audit record of one LLM request: what becomes known as the request goes (its key
//! and owner, the model asked for, each attempt and its outcome) and, when its answer
//! ends, one line to the audit sink ([`crate::base::audit`]) with the outcome, tokens and
//! cost. No body, prompt or secret is in it: the key is named by its object, never its
//! value, and a credential by its provider. A request that is traced ([`spans`]) makes its
//! spans from the same record.

mod messages;
mod spans;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;

use crate::base::audit::{Auditor, Owner, millis as ms};
use crate::base::server::ClientAddress;
use crate::base::{Api, lock};
use crate::config::model::{Attribution, VirtualKey};
use crate::error::ApiError;
use crate::metering::usage::Usage;
use crate::translate::head::ChatHead;

/// What a request asks its provider for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// A chat completion or a message, streamed or whole.
    Chat,
    /// Embeddings of one or more inputs.
    Embeddings,
    /// The input tokens of a message (free at the provider).
    CountTokens,
}

impl Operation {
    /// As records name it (the GenAI conventions' `gen_ai.operation.name` where they
    /// have one).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embeddings => "embeddings",
            Self::CountTokens => "count_tokens",
        }
    }
}

/// Client-supplied text kept in a record is cut to this many bytes.
const MAX_CLIENT_TEXT: usize = 256;

/// One request's record in the making. Shared by the request's stages (through its
/// [`super::record::Labels`]) and made into a line once, by the request's settle stage.
pub(crate) struct Trail {
    /// The audit sink (`None`: the request is traced, not audited).
    sink: Option<Arc<Auditor>>,
    /// The request's trace, when it is sampled.
    traced: Option<spans::Traced>,
    /// Hex, as the `x-tollgate-request-id` header carries it (made once, shared).
    request_id: http::HeaderValue,
    at_unix_ms: i64,
    operation: &'static str,
    api: Api,
    client_address: Option<SocketAddr>,
    user_agent: Option<String>,
    client_request_id: Option<String>,
    trace_id: Option<String>,
    /// When the endpoint began reading the request.
    began: Instant,
    /// Its answer is read as it passes: the request is traced, or records its messages.
    watches: AtomicBool,
    late: Mutex<Late>,
}

#[derive(Default)]
struct Late {
    key: Option<Attribution>,
    requested_model: Option<String>,
    stream: bool,
    attempts: Vec<AttemptNote>,
    /// The next attempt's span and credential, noted as its request is made.
    next_attempt: Option<spans::AttemptSpan>,
    /// What only a traced request reads: the request's sampling parameters.
    traced: spans::Details,
    /// The answer's id and finish reasons (traced), and its parts (recorded).
    answer: Option<messages::Answer>,
    /// The prompt, when the key or route opts in to recording messages.
    recording: Option<messages::Recording>,
    first_byte_ms: Option<f64>,
    error: Option<&'static str>,
    ended: Option<Ended>,
}

/// How the request ended, from its settle stage.
struct Ended {
    status: u16,
    usage: Option<Usage>,
    cost_nano_usd: u64,
    duration: std::time::Duration,
    /// The agent session, once admitted (the rest of the owner is the key's).
    session: Option<Arc<str>>,
    route: Arc<str>,
    provider: Arc<str>,
    /// `gen_ai.provider.name` of the provider that served.
    provider_name: &'static str,
}

#[derive(Serialize)]
struct AttemptNote {
    #[serde(serialize_with = "shared_text")]
    provider: Arc<str>,
    #[serde(serialize_with = "shared_text")]
    model: Arc<str>,
    /// What the provider answered, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// `ok`, the failure class the route acts on (`5xx`, `429`, `timeout`, ...), or the
    /// gateway's error code when the attempt ended the request.
    outcome: &'static str,
    duration_ms: f64,
    /// When it began, after the request began.
    #[serde(skip)]
    began: std::time::Duration,
    #[serde(skip)]
    span: Option<spans::AttemptSpan>,
}

/// What the request ended with, from its settle stage.
pub(crate) struct Outcome<'a> {
    pub status: u16,
    pub usage: Option<Usage>,
    pub cost_nano_usd: u64,
    pub started: Instant,
    /// Who was charged (with the session), once admitted.
    pub who: Option<&'a Attribution>,
    pub route: &'a Arc<str>,
    pub provider: &'a Arc<str>,
    pub provider_name: &'static str,
}

fn client_text(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    Some(crate::base::clip(v, MAX_CLIENT_TEXT).to_string())
}

/// 128 random bits in hex.
fn new_request_id() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&out))
        .unwrap_or(http::HeaderValue::from_static("0"))
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    tollgate_telemetry::TraceParent::parse(v).map(|p| p.trace_hex())
}

impl Trail {
    /// A request's record, begun as its endpoint reads it; `None` when audit is off and
    /// the request is not traced.
    pub(crate) fn begin<B>(
        sink: Option<&Arc<Auditor>>,
        telemetry: Option<&Arc<tollgate_telemetry::Telemetry>>,
        req: &http::Request<B>,
        op: Operation,
        api: Api,
    ) -> Option<Arc<Self>> {
        let headers = req.headers();
        let traced = telemetry.and_then(|t| spans::Traced::sample(t, headers));
        if sink.is_none() && traced.is_none() {
            return None;
        }
        Some(Arc::new(Self {
            sink: sink.cloned(),
            request_id: new_request_id(),
            at_unix_ms: tollgate_proto::time::now_unix_ms(),
            operation: op.name(),
            api,
            client_address: req.extensions().get::<ClientAddress>().map(|a| a.0),
            user_agent: client_text(headers, "user-agent"),
            client_request_id: client_text(headers, "x-request-id"),
            trace_id: match &traced {
                Some(t) => Some(t.trace_hex()),
                None => trace_id(headers),
            },
            watches: AtomicBool::new(traced.is_some()),
            traced,
            began: Instant::now(),
            late: Mutex::new(Late::default()),
        }))
    }

    /// The gateway's id of the request (its record, and `x-tollgate-request-id`).
    pub(crate) fn request_id(&self) -> &http::HeaderValue {
        &self.request_id
    }

    /// The request's key is known.
    pub(crate) fn authenticated(&self, key: &VirtualKey) {
        lock(&self.late).key = Some(key.attribution.clone());
    }

    /// The request's body was read: the model asked for, and whether it streams (and,
    /// when it is traced, its sampling parameters).
    pub(crate) fn read(&self, head: &ChatHead) {
        let details = self
            .traced
            .as_ref()
            .map(|_| spans::Details::of_request(head));
        let mut late = lock(&self.late);
        // At most MAX_MODEL_NAME bytes: the head refuses longer ones.
        late.requested_model = Some(head.model.clone());
        late.stream = head.stream;
        if let Some(d) = details {
            late.traced = d;
        }
    }

    /// An attempt's request to `uri` is being made to `provider` with `credential`: the
    /// `traceparent` it carries, when the request is traced (the attempt's span; the same
    /// for every request of one attempt). The span names the credential by its place in
    /// the provider's pool.
    pub(crate) fn upstream_request(
        &self,
        uri: &http::Uri,
        provider: &crate::config::model::Provider,
        credential: Option<&crate::config::model::Credential>,
    ) -> Option<http::HeaderValue> {
        let traced = self.traced.as_ref()?;
        let credential =
            credential.and_then(|c| (provider.credentials.iter()).position(|x| std::ptr::eq(x, c)));
        let mut late = lock(&self.late);
        let span = late
            .next_attempt
            .get_or_insert_with(|| spans::AttemptSpan::new(uri, credential));
        http::HeaderValue::from_str(&traced.child(span.id)).ok()
    }

    /// The key or the route (`by`) opts in: the prompt of chat request `body` is recorded
    /// now, and the answer as it passes, with the secrets `snapshot` holds redacted.
    pub(crate) fn record_messages(
        &self,
        body: &[u8],
        by: &'static str,
        snapshot: &Arc<crate::config::snapshot::Snapshot>,
    ) {
        if self.operation != Operation::Chat.name() {
            return;
        }
        let recording = messages::Recording::of_request(body, self.api, by, snapshot.clone());
        let mut late = lock(&self.late);
        late.recording = Some(recording);
        (late.answer)
            .get_or_insert_with(|| messages::Answer::new(self.api, true))
            .record_content();
        self.watches.store(true, Ordering::Relaxed);
    }

    fn answer<'a>(&self, late: &'a mut Late) -> &'a mut messages::Answer {
        late.answer
            .get_or_insert_with(|| messages::Answer::new(self.api, false))
    }

    /// A whole answer in the client's format, read when the request is traced or records
    /// its messages.
    pub(crate) fn answered(&self, body: &[u8]) {
        if self.watches.load(Ordering::Relaxed) {
            self.answer(&mut lock(&self.late)).whole(body);
        }
    }

    /// Bytes of a streamed answer as the client got them, read when the request is
    /// traced or records its messages.
    pub(crate) fn streamed(&self, frame: &[u8]) {
        if self.watches.load(Ordering::Relaxed) {
            self.answer(&mut lock(&self.late)).streamed(frame);
        }
    }

    /// One attempt ended: `status` is the provider's, when it answered.
    pub(crate) fn attempted(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        status: Option<u16>,
        outcome: &'static str,
        began: Instant,
        request_started: Instant,
    ) {
        let mut late = lock(&self.late);
        if outcome == "ok" && late.first_byte_ms.is_none() {
            late.first_byte_ms = Some(ms(request_started.elapsed()));
        }
        let span = late.next_attempt.take();
        late.attempts.push(AttemptNote {
            provider: provider.clone(),
            model: model.clone(),
            status,
            outcome,
            duration_ms: ms(began.elapsed()),
            began: began.saturating_duration_since(self.began),
            span,
        });
    }

    /// The request ends with the gateway's error `e`.
    pub(crate) fn failed(&self, e: &ApiError) {
        lock(&self.late).error = Some(e.code_or_type());
    }

    /// The request's answer ended (or failed) with `o`. A stream continued on another
    /// target ends twice: the last outcome is the request's, and the tokens and cost of
    /// both are added up.
    pub(crate) fn finish(&self, o: Outcome<'_>) {
        let mut late = lock(&self.late);
        let (tokens, cost) = match &late.ended {
            Some(before) => (
                add(before.usage, o.usage),
                before.cost_nano_usd + o.cost_nano_usd,
            ),
            None => (o.usage, o.cost_nano_usd),
        };
        late.ended = Some(Ended {
            status: o.status,
            usage: tokens,
            cost_nano_usd: cost,
            duration: o.started.elapsed(),
            session: o.who.map(|w| w.session.clone()),
            route: o.route.clone(),
            provider: o.provider.clone(),
            provider_name: o.provider_name,
        });
    }
}

/// The record is written when the last part of the request lets go of it: after every
/// attempt is noted and the answer's last byte is counted. A request whose client went
/// away before any answer is recorded too, as 499.
impl Drop for Trail {
    fn drop(&mut self) {
        let late = lock(&self.late);
        let ended = late.ended.as_ref();
        let owner = (late.key.as_ref()).map_or_else(Owner::default, |w| {
            Owner::new(&w.key, &w.team, &w.customer, &w.user)
        });
        let served = late
            .attempts
            .iter()
            .rev()
            .find(|a| a.outcome == "ok")
            .or(late.attempts.last())
            .map(|a| &*a.model);
        let status = ended.map_or(CLIENT_CLOSED, |e| e.status);
        let error_type = match (ended, late.error) {
            (None, _) => Some("client_closed_request"),
            (_, Some(e)) => Some(e),
            // The provider's own error answer, passed on: the last attempt says what.
            _ if status >= 400 => late
                .attempts
                .last()
                .map(|a| a.outcome)
                .filter(|o| *o != "ok")
                .or(Some("provider_error")),
            _ => None,
        };
        let output = late.recording.as_ref().map(|r| {
            let none = messages::Answer::new(self.api, true);
            r.output(late.answer.as_ref().unwrap_or(&none))
        });
        let record = Record {
            time: tollgate_proto::time::format_rfc3339_ms(self.at_unix_ms),
            kind: "llm",
            request_id: self.request_id.to_str().unwrap_or(""),
            trace_id: self.trace_id.as_deref(),
            operation: self.operation,
            api: match self.api {
                Api::OpenAi => "openai",
                Api::Anthropic => "anthropic",
                Api::Responses => "responses",
            },
            owner,
            session: text(ended.and_then(|e| e.session.as_ref())),
            route: text(ended.map(|e| &e.route)),
            provider: text(ended.map(|e| &e.provider)),
            requested_model: late.requested_model.as_deref(),
            served_model: served,
            attempts: &late.attempts,
            status,
            error_type,
            stream: late.stream,
            time_to_first_token_ms: late.first_byte_ms,
            duration_ms: ms(ended.map_or_else(|| self.began.elapsed(), |e| e.duration)),
            tokens: ended.and_then(|e| e.usage).map(|u| Tokens {
                input: u.input,
                output: u.output,
                cached: u.cached,
                reasoning: u.reasoning,
            }),
            cost_usd: ended.map_or(0, |e| e.cost_nano_usd) as f64 / crate::metering::prices::NANO,
            client_address: self.client_address.map(|a| a.ip()),
            user_agent: self.user_agent.as_deref(),
            client_request_id: self.client_request_id.as_deref(),
            messages: late
                .recording
                .as_ref()
                .zip(output)
                .map(|(r, output)| Messages {
                    recorded_by: r.by,
                    system_instructions: r.system.as_ref(),
                    input: &r.input,
                    output,
                }),
        };
        if let Some(t) = &self.traced {
            t.export(self, &late, &record);
        }
        if let Some(sink) = &self.sink {
            sink.emit(&record);
        }
    }
}

/// nginx's status for a request whose client closed the connection first.
const CLIENT_CLOSED: u16 = 499;

fn add(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            input: a.input + b.input,
            output: a.output + b.output,
            cached: a.cached + b.cached,
            cache_write: a.cache_write + b.cache_write,
            reasoning: a.reasoning + b.reasoning,
            web_searches: a.web_searches + b.web_searches,
        }),
        (a, b) => a.or(b),
    }
}

fn shared_text<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// A text that is set, or `None`.
fn text(v: Option<&Arc<str>>) -> Option<&str> {
    v.map(|s| &**s).filter(|s| !s.is_empty())
}

#[derive(Serialize)]
struct Tokens {
    input: u64,
    output: u64,
    cached: u64,
    reasoning: u64,
}

/// One LLM request's audit line. Field names follow what log pipelines and the
/// OpenTelemetry GenAI conventions call these things, in snake case.
#[derive(Serialize)]
struct Record<'a> {
    time: String,
    kind: &'static str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    operation: &'static str,
    api: &'static str,
    #[serde(flatten)]
    owner: Owner<'a>,
    session: Option<&'a str>,
    route: Option<&'a str>,
    provider: Option<&'a str>,
    requested_model: Option<&'a str>,
    served_model: Option<&'a str>,
    attempts: &'a [AttemptNote],
    status: u16,
    error_type: Option<&'static str>,
    stream: bool,
    time_to_first_token_ms: Option<f64>,
    duration_ms: f64,
    tokens: Option<Tokens>,
    cost_usd: f64,
    client_address: Option<std::net::IpAddr>,
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_request_id: Option<&'a str>,
    /// Only when the key or the route opts in; its presence records that it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Messages<'a>>,
}

/// A request's prompt and answer, as the GenAI conventions shape them, secrets redacted.
#[derive(Serialize)]
struct Messages<'a> {
    /// `key` or `route`: the opt-in that asked for them.
    recorded_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instructions: Option<&'a serde_json::Value>,
    input: &'a serde_json::Value,
    output: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_gives_a_trace_id() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", v.parse().unwrap());
            trace_id(&h)
        };
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(with("00-abc-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn client_text_is_cut_on_a_character_boundary() {
        let mut h = http::HeaderMap::new();
        let long = "é".repeat(200);
        h.insert("user-agent", long.parse().unwrap());
        // Non-ASCII header values are not `to_str`; an ASCII one is cut to the bound.
        assert_eq!(client_text(&h, "user-agent"), None);
        h.insert("user-agent", "a".repeat(1000).parse().unwrap());
        assert_eq!(
            client_text(&h, "user-agent").unwrap().len(),
            MAX_CLIENT_TEXT
        );
    }
}
