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
            trail: super::trail::Trail::begin(state.audit.as_ref(), req, op, api),
            ..Self::default()
        }
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
    let request_id = labels
        .trail
        .as_ref()
        .and_then(|t| HeaderValue::from_str(t.request_id()).ok());
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
