//! The spans of a traced request, made when its record is: one server span named as the
//! OpenTelemetry GenAI conventions name an operation (`chat {model}`), with their
//! `gen_ai.*` attributes and `tollgate.*` ones for what they lack, and one client span per
//! upstream attempt (HTTP client conventions), whose id went to the provider in the
//! attempt's `traceparent`. Nothing of a body is in them (the sampling parameters, the
//! answer's id and its finish reasons are read from it), unless the key or the route opts
//! in to recording messages ([`super::messages`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tollgate_telemetry::{Attribute as A, AttributeValue, FinishedSpan, Kind, Sampled, Telemetry};

use super::{Late, Record, Trail};
use crate::translate::head::ChatHead;

/// A sampled request's trace.
pub(crate) struct Traced {
    telemetry: Arc<Telemetry>,
    sampled: Sampled,
}

/// An attempt's span: its id (sent as the attempt's `traceparent`), the server it went
/// to, and the index of the credential it used.
#[derive(Clone, Debug)]
pub(crate) struct AttemptSpan {
    pub(crate) id: u64,
    server: Option<String>,
    port: Option<u16>,
    credential: Option<usize>,
}

impl AttemptSpan {
    pub(super) fn new(uri: &http::Uri, credential: Option<usize>) -> Self {
        Self {
            id: tollgate_telemetry::new_span_id(),
            server: uri.host().map(str::to_string),
            port: uri.port_u16().or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            }),
            credential,
        }
    }
}

/// What only a traced request reads from its request.
#[derive(Default)]
pub(crate) struct Details {
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
}

impl Details {
    pub(super) fn of_request(head: &ChatHead) -> Self {
        Self {
            max_tokens: head.max_tokens,
            temperature: head.temperature,
            top_p: head.top_p,
        }
    }
}

fn text(key: &'static str, v: Option<&str>) -> Option<A> {
    v.filter(|s| !s.is_empty())
        .map(|v| A::new(key, v.to_string()))
}

impl Traced {
    /// The request's trace when `telemetry`'s sampler takes it, under the client's
    /// `traceparent` if it sent a well-formed one.
    pub(super) fn sample(telemetry: &Arc<Telemetry>, headers: &http::HeaderMap) -> Option<Self> {
        Some(Self {
            sampled: telemetry.sample_headers(headers)?,
            telemetry: telemetry.clone(),
        })
    }

    pub(super) fn trace_hex(&self) -> String {
        format!("{:032x}", self.sampled.trace_id)
    }

    /// The `traceparent` of the request's child span `span_id`.
    pub(super) fn child(&self, span_id: u64) -> String {
        self.sampled.child(span_id).format()
    }

    /// Exports the request's span and its attempts' spans.
    pub(super) fn export(&self, trail: &Trail, late: &Late, r: &Record<'_>) {
        let s = &self.sampled;
        let ended = late.ended.as_ref();
        let duration = ended.map_or_else(|| trail.began.elapsed(), |e| e.duration);
        let name: Cow<'static, str> = match r.requested_model {
            Some(m) => format!("{} {m}", r.operation).into(),
            None => r.operation.into(),
        };
        let mut a = vec![
            A::new("gen_ai.operation.name", r.operation),
            A::new("http.response.status_code", i64::from(r.status)),
            A::new("gen_ai.request.stream", r.stream),
            A::new("tollgate.request_id", r.request_id.to_string()),
            A::new("tollgate.attempts", late.attempts.len() as i64),
            A::new("tollgate.cost_usd", r.cost_usd),
        ];
        a.extend(
            [
                text("gen_ai.request.model", r.requested_model),
                text("gen_ai.response.model", r.served_model),
                text("gen_ai.provider.name", ended.map(|e| e.provider_name)),
                text(
                    "gen_ai.response.id",
                    late.answer.as_ref().and_then(|a| a.id.as_deref()),
                ),
                text("gen_ai.conversation.id", r.session),
                text("error.type", r.error_type),
                text("tollgate.key", r.owner.key),
                text("tollgate.namespace", r.owner.namespace),
                text("tollgate.team", r.owner.team),
                text("tollgate.customer", r.owner.customer),
                text("tollgate.user", r.owner.user),
                text("tollgate.route", r.route),
                text("tollgate.provider", r.provider),
                text("user_agent.original", r.user_agent),
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(ip) = r.client_address {
            a.push(A::new("client.address", ip.to_string()));
        }
        let d = &late.traced;
        let reasons = late.answer.as_ref().map(|a| a.finish_reasons());
        if let Some(reasons) = reasons.filter(|r| !r.is_empty()) {
            let reasons = reasons
                .into_iter()
                .map(tollgate_telemetry::StringValue::from)
                .collect::<Vec<_>>();
            a.push(A::new(
                "gen_ai.response.finish_reasons",
                AttributeValue::Array(reasons.into()),
            ));
        }
        if let Some(m) = d.max_tokens {
            a.push(A::new("gen_ai.request.max_tokens", m as i64));
        }
        if let Some(t) = d.temperature {
            a.push(A::new("gen_ai.request.temperature", t));
        }
        if let Some(t) = d.top_p {
            a.push(A::new("gen_ai.request.top_p", t));
        }
        if let Some(t) = &r.tokens {
            a.push(A::new("gen_ai.usage.input_tokens", t.input as i64));
            a.push(A::new("gen_ai.usage.output_tokens", t.output as i64));
            a.push(A::new(
                "gen_ai.usage.cache_read.input_tokens",
                t.cached as i64,
            ));
            a.push(A::new(
                "tollgate.usage.reasoning_tokens",
                t.reasoning as i64,
            ));
        }
        if let Some(ttft) = r.time_to_first_token_ms {
            a.push(A::new("tollgate.time_to_first_token", ttft / 1e3));
        }
        if let Some(m) = &r.messages {
            a.push(A::new("tollgate.messages.recorded_by", m.recorded_by));
            a.push(A::new("gen_ai.input.messages", m.input.to_string()));
            a.push(A::new("gen_ai.output.messages", m.output.to_string()));
            if let Some(system) = m.system_instructions {
                a.push(A::new("gen_ai.system_instructions", system.to_string()));
            }
        }
        let error = (r.status >= 400).then(|| Cow::Borrowed(r.error_type.unwrap_or("error")));
        self.telemetry.export(FinishedSpan {
            name,
            kind: Kind::Server,
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent: s.parent,
            parent_remote: true,
            start: s.start,
            end: s.start + duration,
            attributes: a,
            error,
        });
        for (n, note) in late.attempts.iter().enumerate() {
            let span = note.span.as_ref();
            let mut a = vec![
                A::new("http.request.method", "POST"),
                A::new("tollgate.attempt", n as i64 + 1),
                A::new("tollgate.provider", note.provider.to_string()),
                A::new("gen_ai.request.model", note.model.to_string()),
            ];
            if let Some(host) = span.and_then(|s| s.server.clone()) {
                a.push(A::new("server.address", host));
            }
            if let Some(port) = span.and_then(|s| s.port) {
                a.push(A::new("server.port", i64::from(port)));
            }
            if let Some(i) = span.and_then(|s| s.credential) {
                a.push(A::new("tollgate.credential.index", i as i64));
            }
            if let Some(status) = note.status {
                a.push(A::new("http.response.status_code", i64::from(status)));
            }
            let failed = note.outcome != "ok";
            if failed {
                a.push(A::new("error.type", note.outcome));
            }
            let start = s.start + note.began;
            self.telemetry.export(FinishedSpan {
                name: "POST".into(),
                kind: Kind::Client,
                trace_id: s.trace_id,
                span_id: span.map_or_else(tollgate_telemetry::new_span_id, |s| s.id),
                parent: Some(s.span_id),
                parent_remote: false,
                start,
                end: start + Duration::from_secs_f64(note.duration_ms.max(0.0) / 1e3),
                attributes: a,
                error: failed.then_some(Cow::Borrowed(note.outcome)),
            });
        }
    }
}
