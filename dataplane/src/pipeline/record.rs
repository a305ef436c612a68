//! The settle stage: a request's one record (metrics, usage, cost, its reservation
//! settled) made when its answer ends, fails or is dropped, and the answer to a request
//! that failed before any attempt.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use crate::base::metrics::Metrics;
use crate::base::{Api, Body};
use crate::config::model::VirtualKey;
use crate::error::ApiError;
use crate::metering::quota::Reservation;
use crate::metering::usage::Usage;
use crate::pipeline::balance;
use crate::pipeline::{State, admission};

/// Metric labels: reference-counted, so a request allocates none. They carry the
/// request's audit record in the making, which the settle stage writes.
#[derive(Clone, Default)]
pub(crate) struct Labels {
    pub(crate) route: Arc<str>,
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
    /// `gen_ai.operation.name` and `gen_ai.provider.name` of the GenAI metrics (empty
    /// until known).
    pub(crate) operation: &'static str,
    pub(crate) provider_name: &'static str,
    pub(crate) trail: Option<Arc<super::trail::Trail>>,
}

impl Labels {
    /// A request's labels before it is routed, with its audit record begun.
    pub(crate) fn begin<B>(
        state: &State,
        req: &http::Request<B>,
        op: super::trail::Operation,
        api: Api,
    ) -> Self {
        Self {
            operation: op.name(),
            trail: super::trail::Trail::begin(
                state.audit.as_ref(),
                state.telemetry.as_ref(),
                req,
                op,
                api,
            ),
            ..Self::default()
        }
    }
}

/// The OpenTelemetry GenAI conventions' `gen_ai.provider.name` of a provider type: their
/// well-known values (an OpenAI-compatible server has none, and is named as such).
pub(crate) fn gen_ai_provider(kind: crate::config::model::ProviderKind) -> &'static str {
    use crate::config::model::ProviderKind as K;
    match kind {
        K::OpenAi => "openai",
        K::AzureOpenAi => "azure.ai.openai",
        K::Anthropic => "anthropic",
        K::Gemini => "gcp.gemini",
        K::VertexAi => "gcp.vertex_ai",
        K::Bedrock => "aws.bedrock",
        K::OpenAiCompatible => "openai_compatible",
    }
}

/// Records a finished request once: when its body ends, fails, or is dropped.
pub(crate) struct Completion {
    pub metrics: Metrics,
    pub labels: Labels,
    pub status: StatusCode,
    pub started: Instant,
    pub usage: Option<Usage>,
    /// The credential used, whose tokens-per-minute count the usage adds to.
    pub credential: Option<Arc<balance::Endpoint>>,
    /// The request's reservations, settled with this usage.
    pub reservation: Option<Arc<Reservation>>,
    /// The price of the model used, for the cost.
    pub price: Option<crate::metering::prices::Price>,
    /// The request, counted with a tokenizer if the provider reports no usage.
    pub counted: Option<crate::metering::tokens::Counted>,
    /// When a streamed answer's first bytes came (a whole answer's first token is all
    /// of it).
    pub first_token: Option<std::time::Duration>,
}

impl Completion {
    /// The record of a request that ended with the gateway's error: no provider answer,
    /// no usage.
    pub(crate) fn unanswered(
        metrics: Metrics,
        labels: Labels,
        status: StatusCode,
        started: Instant,
    ) -> Self {
        Self {
            metrics,
            labels,
            status,
            started,
            usage: None,
            credential: None,
            reservation: None,
            price: None,
            counted: None,
            first_token: None,
        }
    }

    /// Counts the usage the provider did not report: the request, and `output` tokens
    /// (counted by the caller from what the client received).
    /// `None` from `output`: the answer cannot be counted (its worst case is charged).
    pub(crate) fn count_unreported(&mut self, output: impl FnOnce(&str, Api) -> Option<u64>) {
        if self.usage.is_some() || !self.status.is_success() {
            return;
        }
        let Some(c) = &self.counted else { return };
        let model = &self.labels.model;
        // Tokenizing is CPU work that grows with the text: it runs off the runtime's
        // threads.
        let counted = crate::metering::tokens::off_runtime(|| {
            let output = output(model, c.api)?;
            Some(c.usage(model, output))
        });
        let Some(usage) = counted else {
            return;
        };
        self.usage = Some(usage);
        self.metrics.usage_counted.inc();
    }

    /// The GenAI conventions' metrics, and tokens and cost by owner, for a request that
    /// reached a provider.
    fn gen_ai(&self, cost: u64) {
        let l = &self.labels;
        if l.operation.is_empty() || l.provider_name.is_empty() {
            return;
        }
        let g = &self.metrics.gen_ai;
        let elapsed = self.started.elapsed();
        let op = [l.operation, l.provider_name, &l.model];
        let error = if self.status.is_success() {
            ""
        } else {
            self.status.as_str()
        };
        g.operation_duration
            .with_label_values(&[op[0], op[1], op[2], error])
            .observe(elapsed.as_secs_f64());
        if self.status.is_success() {
            let first = self.first_token.unwrap_or(elapsed);
            g.time_to_first_token
                .with_label_values(&op)
                .observe(first.as_secs_f64());
            if let (Some(f), Some(u)) = (self.first_token, self.usage)
                && u.output > 1
            {
                let per = elapsed.saturating_sub(f).as_secs_f64() / (u.output - 1) as f64;
                g.time_per_output_token.with_label_values(&op).observe(per);
            }
        }
        let Some(u) = self.usage else { return };
        let owners = &self.metrics.owners;
        let who = self.reservation.as_ref().map(|r| &r.who);
        let customer = who.and_then(|w| owners.customer_label(&w.customer));
        for (kind, n) in [("input", u.input), ("output", u.output)] {
            g.token_usage
                .with_label_values(&[op[0], op[1], op[2], op[2], kind])
                .observe(n as f64);
            if let Some(w) = who {
                owners
                    .team_tokens
                    .with_label_values(&[&w.team, kind])
                    .inc_by(n);
            }
            if let Some(c) = customer {
                owners
                    .customer_tokens
                    .with_label_values(&[c, kind])
                    .inc_by(n);
            }
        }
        if let Some(c) = customer
            && cost > 0
        {
            owners
                .customer_cost
                .with_label_values(&[c])
                .inc_by(cost as f64 / crate::metering::prices::NANO);
        }
    }

    pub fn record(self) {
        let l = &self.labels;
        if let (Some(c), Some(u)) = (&self.credential, &self.usage) {
            c.add_tokens(u.input + u.output);
        }
        let cost = match (&self.price, &self.usage) {
            (Some(p), Some(u)) => crate::metering::prices::cost_nano(p, u),
            _ => 0,
        };
        if let Some(t) = &l.trail {
            t.finish(super::trail::Outcome {
                status: self.status.as_u16(),
                usage: self.usage,
                cost_nano_usd: cost,
                started: self.started,
                who: self.reservation.as_ref().map(|r| &r.who),
                route: &l.route,
                provider: &l.provider,
                provider_name: l.provider_name,
            });
        }
        if let Some(r) = &self.reservation {
            r.record(
                &l.route,
                &l.provider,
                &l.model,
                self.status.as_u16(),
                self.usage,
                cost,
            );
        }
        if cost > 0 {
            let team = self.reservation.as_ref().map_or("", |r| &r.who.team);
            self.metrics
                .cost
                .with_label_values(&[&l.route, &l.provider, &l.model, team])
                .inc_by(cost as f64 / crate::metering::prices::NANO);
        }
        self.gen_ai(cost);
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

/// The response for a request's outcome; a failure is logged (when it is the gateway's or
/// the provider's) and recorded in metrics here.
pub(crate) fn answer(
    state: &State,
    result: Result<Response<Body>, ApiError>,
    api: Api,
    started: Instant,
    labels: Labels,
) -> Response<Body> {
    let request_id = labels.trail.as_ref().map(|t| t.request_id().clone());
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            if matches!(e, ApiError::Internal | ApiError::UpstreamUnreachable) {
                tracing::warn!(route = %labels.route, provider = %labels.provider, error = %e, "request failed");
            }
            if let Some(t) = &labels.trail {
                t.failed(&e);
            }
            let response = e.to_response_for(api);
            Completion::unanswered(state.metrics.clone(), labels, response.status(), started)
                .record();
            response
        }
    };
    if let Some(id) = request_id {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-tollgate-request-id"), id);
    }
    response
}

/// The answer to a request admission refused: recorded like every error, in the client's
/// format, with the rate-limit headers when a rate limit refused it.
pub(crate) fn refused(
    state: &State,
    key: &VirtualKey,
    e: ApiError,
    api: Api,
    started: tokio::time::Instant,
    labels: &Labels,
) -> http::Response<Body> {
    let rate_limited = matches!(e, ApiError::RateLimited(_));
    let mut response = answer(state, Err(e), api, started, labels.clone());
    if rate_limited {
        rate_limited_headers(state, key, response.headers_mut());
    }
    response
}

/// A rate-limit refusal carries the rate-limit headers too, and when to try again.
pub(crate) fn rate_limited_headers(state: &State, key: &VirtualKey, out: &mut HeaderMap) {
    admission::quota_headers(state, key, out);
    out.insert(
        HeaderName::from_static("retry-after"),
        HeaderValue::from_static("1"),
    );
}
