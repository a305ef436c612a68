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
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::metrics::Metrics;
use crate::base::{Api, Body, BoxError, now_unix};
use crate::config::failure::{Failure, HealthPolicy};
use crate::config::model::{Auth, Credential, Provider, ProviderKind, Route, VirtualKey, Wire};
use crate::config::snapshot::Snapshot;
use crate::error::ApiError;
use crate::metering::quota::Reservation;
use crate::metering::usage::Usage;
use crate::pipeline::balance;
use crate::pipeline::{State, admission, authenticate};
use crate::provider::urls::Urls;
use crate::translate::head::ChatHead;
use crate::translate::plan::{Chain, Plan};
use tollgate_proto::time::{parse_duration, parse_rfc3339_unix};

/// Request headers passed on to the provider (trace context and request ids).
const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["traceparent", "tracestate", "x-request-id", "accept"];

/// The provider's response headers a client gets; the others stay in the gateway. They
/// carry the provider account's organisation and project ids, its own rate limits (the
/// gateway's are in `x-ratelimit-*`, per virtual key), cookies and its infrastructure.
const FORWARDED_RESPONSE_HEADERS: [&str; 8] = [
    "content-type",
    "content-encoding",
    "cache-control",
    "retry-after",
    "retry-after-ms",
    // The provider's id of the request, for its support.
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
];

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
    /// Counts the usage the provider did not report: the request, and `output` tokens
    /// (counted by the caller from what the client received).
    /// `None` from `output`: the answer cannot be counted (its worst case is charged).
    fn count_unreported(&mut self, output: impl FnOnce(&str, Api) -> Option<u64>) {
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

pub async fn handle(state: &Arc<State>, req: Request<Incoming>, api: Api) -> Response<Body> {
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
                credential: None,
                reservation: None,
                price: None,
                counted: None,
            }
            .record();
            response
        }
    }
}

/// Where a request goes: its route, the picked target's provider and credential, the
/// model sent upstream, and how many attempts it took to get there.
pub(super) struct Resolved {
    pub route: Arc<Route>,
    pub provider: Arc<Provider>,
    pub model: Arc<str>,
    /// Index into the provider's credentials.
    pub credential: Option<usize>,
    pub attempts: u32,
    /// The attempt's deadline (the target's own, or the route's).
    pub timeout: Duration,
}

impl Resolved {
    /// When the one attempt of a request that started at `started` must have its answer.
    pub fn deadline(&self, started: Instant) -> Instant {
        started + self.timeout.min(self.route.request_timeout)
    }

    pub fn credential(&self) -> Option<&Credential> {
        self.credential
            .and_then(|i| self.provider.credentials.get(i))
    }
}

/// What a request resolves to before it is admitted: body, head, route, the snapshot it
/// was resolved in, and the key.
type Routed = (Bytes, ChatHead, Arc<Route>, Arc<Snapshot>, Arc<VirtualKey>);

/// Authenticates the key, reads the body, and finds the route.
async fn resolve_route(
    state: &State,
    parts: &http::request::Parts,
    body: Incoming,
    labels: &mut Labels,
) -> Result<Routed, ApiError> {
    let snapshot = state.config.load_full();
    let key = authenticate(&snapshot, &parts.headers)?;
    let body = read_body(body, &parts.headers, &state.bodies).await?;
    let head = ChatHead::parse(&body)?;
    if !key.allows_model(&head.model) {
        return Err(ApiError::ModelNotAllowed(head.model));
    }
    let route = snapshot
        .route(key, &head.model, &parts.headers)
        .ok_or_else(|| ApiError::ModelNotFound(head.model.clone()))?
        .clone();
    labels.route = route.id.clone();
    let key = key.clone();
    Ok((body, head, route, snapshot, key))
}

/// Authenticates the key, reads the body, and picks the route, target, credential and
/// model, for one attempt (the strategy applies, ejected targets are passed over).
pub(super) async fn resolve(
    state: &State,
    parts: &http::request::Parts,
    body: Incoming,
    labels: &mut Labels,
) -> Result<(Bytes, ChatHead, Resolved, Arc<Snapshot>, Arc<VirtualKey>), ApiError> {
    let (body, head, route, snapshot, key) = resolve_route(state, parts, body, labels).await?;
    let plan = balance::Plan::new(route.clone(), &snapshot, &state.balance, &head.model);
    let now = Instant::now();
    let c = plan
        .peek_target(now)
        .ok_or_else(|| ApiError::NoTarget(route.id.to_string()))?;
    labels.provider = c.provider.id.clone();
    labels.model = c.label.clone();
    let credential = if c.provider.credentials.is_empty() {
        None
    } else {
        let (chosen, _) = balance::pick_credential(&c.provider, &state.balance, now)
            .ok_or_else(|| ApiError::NoCredential(c.provider.id.to_string()))?;
        c.provider
            .credentials
            .iter()
            .position(|x| std::ptr::eq(x, chosen))
    };
    let resolved = Resolved {
        route: route.clone(),
        provider: c.provider,
        model: c.model,
        credential,
        attempts: 1,
        timeout: c.timeout,
    };
    Ok((body, head, resolved, snapshot, key))
}

/// Sends a request to the provider within `deadline`. The provider refusing the gateway's
/// credentials and its 5xx answers are errors; everything else is its answer.
/// Reads an upstream answer whole, within the process's size limit and `deadline`.
pub(super) async fn read_answer(
    state: &State,
    body: Incoming,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    use crate::base::bodies::UpstreamRead;
    crate::base::bodies::read_upstream(body, state.max_upstream_body_bytes, deadline)
        .await
        .map_err(|e| match e {
            UpstreamRead::Timeout => ApiError::UpstreamTimeout,
            UpstreamRead::Broken => ApiError::UpstreamBody,
            UpstreamRead::TooLarge(limit) => ApiError::UpstreamTooLarge(limit),
        })
}

pub(super) async fn send(
    state: &State,
    provider: &Provider,
    upstream: Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<Response<Incoming>, ApiError> {
    let response = match tokio::time::timeout_at(
        deadline,
        state.upstream.for_object(&provider.id).request(upstream),
    )
    .await
    {
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
        if FORWARDED_RESPONSE_HEADERS.contains(&name.as_str()) {
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
    set_attempts(out_headers, to.attempts);
    out
}

pub(super) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limits: &crate::base::bodies::Limits,
) -> Result<Bytes, ApiError> {
    use crate::base::bodies::Refused;
    crate::base::bodies::read_request(body, headers, limits)
        .await
        .map_err(|refused| match refused {
            Refused::TooLarge(limit) => ApiError::BodyTooLarge(limit),
            Refused::TooSlow => ApiError::BodyTooSlow,
            Refused::Busy => ApiError::Overloaded,
            Refused::Broken => ApiError::BadRequest("The request body could not be read.".into()),
        })
}

async fn forward(
    state: &Arc<State>,
    req: Request<Incoming>,
    api: Api,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (body, mut head, route, snapshot, key) = resolve_route(state, &parts, body, labels).await?;
    // A metered key's request gets an output limit, so that what it reserves bounds what
    // the provider can produce.
    let body = if admission::metered(&key, &parts.headers) {
        let field = match api {
            Api::OpenAi => "max_completion_tokens",
            Api::Anthropic => "max_tokens",
        };
        let body = head.with_search_cap(body, state.worst.web_searches)?;
        head.with_output_cap(body, field, state.worst.output_tokens)
    } else {
        body
    };
    let size = (
        state.worst.input(body.len(), &head),
        state.worst.output(&head),
    );
    let reservation =
        match admission::admit(state, &snapshot, &key, &parts.headers, &head, &route, size).await {
            Ok(r) => Arc::new(r),
            Err(e) => return Ok(refused(state, &key, e, api, started, labels)),
        };
    let mut plan = balance::Plan::new(route.clone(), &snapshot, &state.balance, &head.model);
    drop(snapshot);
    let now = Instant::now();
    let budget = state.balance.budget(&route.id);
    budget.request(now);
    let mut first = plan.pick_target(now).or_else(|| plan.fail_over(now));
    if first.is_none() {
        // Everything is ejected: a request still goes somewhere rather than failing here.
        first = plan.pick_any();
        if first.is_some() {
            tracing::debug!(route = %route.id, "every target is ejected; trying one anyway");
        }
    }
    let keep_alive = route.keep_alive.filter(|_| head.stream);
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        headers: parts.headers,
        body,
        head,
        api,
        deadline: started + route.request_timeout,
        route,
        budget,
        started,
        prelude: started.elapsed(),
        current: std::sync::Mutex::new(reservation.clone()),
        admitted: reservation,
        extend_by: 1,
        key: key.clone(),
    });
    let Some(every) = keep_alive else {
        let (result, used) = run_plan(ctx, plan, first, labels.clone()).await;
        *labels = used;
        return result.map(|mut r| {
            admission::quota_headers(state, &key, r.headers_mut());
            r
        });
    };
    // A stream whose first byte is slow in coming: after `every`, the response starts
    // (200, SSE) and carries comments until the answer comes.
    let mut run = run_plan_boxed(ctx.clone(), plan, first, labels.clone());
    tokio::select! {
        (result, used) = &mut run => {
            *labels = used;
            result
        }
        () = tokio::time::sleep(every) => Ok(keep_alive_response(&ctx, run, every)),
    }
}

/// The attempts of one request: `first`, then retries and failover as the route says,
/// until one answers or none is left. Also the labels the request ends with.
async fn run_plan(
    ctx: Arc<Ctx>,
    mut plan: balance::Plan,
    first: Option<balance::Candidate>,
    mut labels: Labels,
) -> (Result<Response<Body>, ApiError>, Labels) {
    let result = run_plan_inner(&ctx, &mut plan, first, &mut labels).await;
    (result, labels)
}

/// The same, boxed: the future a stream holds to continue on another target.
fn run_plan_boxed(
    ctx: Arc<Ctx>,
    plan: balance::Plan,
    first: Option<balance::Candidate>,
    labels: Labels,
) -> PlanFuture {
    Box::pin(run_plan(ctx, plan, first, labels))
}

type PlanFuture =
    Pin<Box<dyn std::future::Future<Output = (Result<Response<Body>, ApiError>, Labels)> + Send>>;

async fn run_plan_inner(
    ctx: &Arc<Ctx>,
    plan: &mut balance::Plan,
    mut next: Option<balance::Candidate>,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let (state, route, deadline) = (&ctx.state, &ctx.route, ctx.deadline);
    let budget = &ctx.budget;
    // Streams an OpenAI client gets may be continued on the next target after a failure.
    let resume = (route.continue_on_failure && ctx.head.stream && ctx.api == Api::OpenAi)
        .then(ResumeSlot::default);
    let (mut attempts, mut retries, mut other_credentials) = (0u32, 0u32, 0usize);
    let mut last: Option<Box<Failed>> = None;
    while let Some(c) = next.take() {
        if let Err(e) = ctx.reserve_attempt().await {
            // No room for another billed attempt: the client gets the last failure.
            tracing::debug!(route = %route.id, error = %e, "no quota for another attempt");
            if last.is_none() {
                return Err(e);
            }
            break;
        }
        attempts += 1;
        labels.provider = c.provider.id.clone();
        labels.model = c.label.clone();
        let _probe = balance::ProbeGuard::new(&c);
        let failed = match ctx.run(&c, attempts, labels, resume.as_ref()).await {
            Ok(response) => {
                if let Some(slot) = &resume {
                    slot.fill(Resume {
                        ctx: ctx.clone(),
                        plan: std::mem::replace(plan, balance::Plan::empty(route.clone())),
                        labels: labels.clone(),
                    });
                }
                return Ok(response);
            }
            Err(Step::Final(e)) => return Err(e),
            Err(Step::Failed(f)) => f,
        };
        let class = failed.class;
        let metrics = &state.metrics;
        metrics
            .attempts
            .with_label_values(&[&route.id, &c.provider.id, &c.label, class.as_str()])
            .inc();
        let now = Instant::now();
        if Instant::now() >= deadline {
            last = Some(failed);
            break;
        }
        // The provider refused the credential, or it is out of quota: the same target
        // with another credential of its pool, at once.
        if failed.credential_set_aside && other_credentials + 1 < c.provider.credentials.len() {
            other_credentials += 1;
            next = Some(balance::Candidate {
                probe: false,
                ..c.clone()
            });
            last = Some(failed);
            continue;
        }
        // A retry: the same tier again (an untried target first), after a backoff or the
        // provider's Retry-After, if the route retries this class and its budget allows.
        if route.retry.on.contains(class) && retries < route.retry.attempts {
            let wait = match failed.retry_after {
                Some(ra) if ra > route.retry.max_retry_after => None,
                Some(ra) => Some(ra),
                None => Some(route.retry.backoff(retries + 1)),
            };
            if let Some(wait) = wait {
                if budget.try_retry(route.retry.budget_percent, now) {
                    let wake = (now + wait).min(deadline);
                    tokio::time::sleep_until(wake).await;
                    next = plan.pick_target(Instant::now());
                    if next.is_some() {
                        retries += 1;
                        metrics.retries.with_label_values(&[&route.id]).inc();
                    }
                } else {
                    metrics
                        .retries_refused
                        .with_label_values(&[&route.id])
                        .inc();
                }
            }
        }
        if next.is_none() && route.fallback_on.contains(class) {
            next = plan.fail_over(Instant::now());
            if let Some(n) = &next {
                metrics
                    .fallbacks
                    .with_label_values(&[&route.id, &n.provider.id, &n.model])
                    .inc();
            }
        }
        if next.is_some() {
            tracing::debug!(route = %route.id, provider = %c.provider.id, model = %c.model, failure = class.as_str(), "moving on after a failed attempt");
        }
        last = Some(failed);
    }
    let Some(last) = last else {
        return Err(ApiError::NoTarget(route.id.to_string()));
    };
    match last.answer {
        Ok((mut response, completion)) => {
            completion.record();
            set_attempts(response.headers_mut(), attempts);
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// What a failed attempt leaves: why, and what the client gets if nothing else is tried.
struct Failed {
    class: Failure,
    /// The provider's own answer in the client's format (with its metrics record, made
    /// only if it is the one returned), or the gateway's error.
    answer: Result<(Response<Body>, Completion), ApiError>,
    /// The provider's `Retry-After`.
    retry_after: Option<Duration>,
    /// The credential was set aside (refused, or out of quota): the same target may be
    /// tried again with another.
    credential_set_aside: bool,
}

enum Step {
    /// The client's answer is this error; nothing else is tried.
    Final(ApiError),
    Failed(Box<Failed>),
}

impl Step {
    fn failed(class: Failure, e: ApiError) -> Self {
        Self::Failed(Box::new(Failed {
            class,
            answer: Err(e),
            retry_after: None,
            credential_set_aside: false,
        }))
    }
}

/// A chat request past authentication and routing, owned: what every attempt needs,
/// including attempts made after the response has begun (keep-alive, continuation).
struct Ctx {
    state: Arc<State>,
    headers: HeaderMap,
    body: Bytes,
    head: ChatHead,
    api: Api,
    route: Arc<Route>,
    /// The route's retry budget (this request is counted in it).
    budget: Arc<balance::RetryBudget>,
    started: Instant,
    deadline: Instant,
    /// Time spent in the gateway before the first attempt (authentication, body, route).
    prelude: Duration,
    /// What the request reserved when admitted (its concurrency slot included); settled
    /// when the last holder lets go.
    admitted: Arc<Reservation>,
    /// What the next attempt is charged to: `admitted` until an attempt has been charged,
    /// then an extension of it for each further billed attempt.
    current: std::sync::Mutex<Arc<Reservation>>,
    /// How many of the admitted worst cases a further billed attempt reserves: 1, or 2 for
    /// a stream's continuation (its request carries the partial answer too).
    extend_by: u64,
    /// The key, for the error a refused extension gets.
    key: Arc<VirtualKey>,
}

impl Ctx {
    fn current(&self) -> Arc<Reservation> {
        crate::base::lock(&self.current).clone()
    }

    /// Before an attempt: when an earlier attempt has been charged (the provider billed
    /// it), another worst case is reserved for this one, so that what every attempt is
    /// charged stays within what the request reserved.
    async fn reserve_attempt(&self) -> Result<(), ApiError> {
        if !crate::base::lock(&self.current).charged() {
            return Ok(());
        }
        let more = self
            .state
            .quotas
            .extend(&self.admitted, self.extend_by)
            .await
            .map_err(|r| admission::refusal(&self.state, &self.key, &r))?;
        *crate::base::lock(&self.current) = Arc::new(more);
        Ok(())
    }
}

/// An attempt whose request has gone to the provider: unless its outcome is settled
/// otherwise (an answer recorded, an error status the provider does not bill, no
/// connection), it is charged its worst case when it ends, including when the client goes
/// away and the attempt is dropped mid-way.
pub(super) struct Billed<'a> {
    reservation: Option<Arc<Reservation>>,
    labels: &'a Labels,
    /// The status its record shows: the client went away (499) unless a timeout (504) or
    /// a broken answer (502) ended it.
    status: u16,
}

impl<'a> Billed<'a> {
    pub(super) fn new(reservation: Arc<Reservation>, labels: &'a Labels) -> Self {
        Self {
            reservation: Some(reservation),
            labels,
            status: 499,
        }
    }

    /// The attempt ended with `e`: billed (its worst case, when the guard drops) only when
    /// the provider had the request and neither refused nor failed it.
    pub(super) fn failed(&mut self, e: &ApiError) {
        match e {
            ApiError::UpstreamTimeout | ApiError::UpstreamBody => self.status = e.status().as_u16(),
            _ => self.settled(),
        }
    }

    /// The outcome is recorded elsewhere, or the provider does not bill it.
    pub(super) fn settled(&mut self) {
        self.reservation = None;
    }
}

impl Drop for Billed<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let l = self.labels;
            r.charge_worst(&l.route, &l.provider, &l.model, self.status);
        }
    }
}

/// The class of a refusal that is about the request (a 4xx): context window exceeded, or
/// content policy. Other 4xx answers are the client's and are passed on.
fn refusal_class(body: &[u8]) -> Option<Failure> {
    // Providers differ in case ("Input is too long"): compare in lower case. Only 4xx
    // bodies get here, and they are small.
    let body = body.to_ascii_lowercase();
    let body = body.as_slice();
    const CONTEXT: [&[u8]; 6] = [
        b"context_length_exceeded",
        b"maximum context length",
        b"prompt is too long",
        b"input is too long",
        b"too many input tokens",
        b"exceeds the maximum number of tokens",
    ];
    const POLICY: [&[u8]; 4] = [
        b"content_policy_violation",
        b"content_filter",
        b"responsibleaipolicyviolation",
        b"content management policy",
    ];
    let has = |needles: &[&[u8]]| {
        needles
            .iter()
            .any(|n| memchr::memmem::find(body, n).is_some())
    };
    if has(&CONTEXT) {
        Some(Failure::ContextWindow)
    } else if has(&POLICY) {
        Some(Failure::ContentPolicy)
    } else {
        None
    }
}

/// A header's value as a number of seconds (`retry-after: 2`).
fn header_secs(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The longest a provider's rate-limit reset is believed.
const LONGEST_RESET: Duration = Duration::from_secs(3600);

/// How long the provider says this credential is out of quota, from its rate-limit
/// headers: `None` while it has some left.
fn exhausted_for(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    const DEFAULT: Duration = Duration::from_secs(1);
    let retry_after = header_secs(headers, "retry-after");
    if status == StatusCode::TOO_MANY_REQUESTS && retry_after.is_some() {
        return retry_after;
    }
    let zero = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
    };
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        if zero(remaining) {
            let wait = headers
                .get(reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_duration)
                .map(|d| d.min(LONGEST_RESET));
            return Some(wait.or(retry_after).unwrap_or(DEFAULT));
        }
    }
    for (remaining, reset) in [
        (
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
    ] {
        if zero(remaining) {
            let wait = headers
                .get(reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_rfc3339_unix)
                .map(|at| Duration::from_secs(at.saturating_sub(now_unix()).max(0) as u64));
            return Some(wait.or(retry_after).unwrap_or(DEFAULT));
        }
    }
    None
}

impl Ctx {
    /// One attempt on candidate `c`: the client's answer, or why it failed. A stream
    /// that may be continued elsewhere gets `resume`, filled in if it is the answer.
    async fn run(
        &self,
        c: &balance::Candidate,
        attempts: u32,
        labels: &Labels,
        resume: Option<&ResumeSlot>,
    ) -> Result<Response<Body>, Step> {
        let Self {
            state,
            headers,
            body,
            head,
            api,
            route,
            started,
            deadline,
            prelude,
            ..
        } = self;
        let (api, started, deadline) = (*api, *started, *deadline);
        let attempt_started = Instant::now();
        let attempt_deadline = (attempt_started + c.timeout).min(deadline);
        // Streams: the first byte must come within the first-token timeout.
        let first_deadline = if head.stream {
            (attempt_started + route.first_token_timeout).min(attempt_deadline)
        } else {
            attempt_deadline
        };
        let timeout_class = |at: Instant| {
            if at < attempt_deadline {
                Failure::FirstTokenTimeout
            } else {
                Failure::Timeout
            }
        };
        let provider = &c.provider;
        let model: &str = &c.model;
        let credential = if provider.credentials.is_empty() {
            None
        } else {
            match balance::pick_credential(provider, &state.balance, attempt_started) {
                Some(x) => Some(x),
                None => {
                    return Err(Step::failed(
                        Failure::RateLimited,
                        ApiError::NoCredential(provider.id.to_string()),
                    ));
                }
            }
        };
        let wire = provider.wire(model);
        let plan = Plan {
            client: api,
            wire,
            provider: provider.kind,
            model: c.model.clone(),
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
            let body = head.with_model(body.clone(), model);
            if wire == Wire::OpenAi && provider.compat.stream_usage {
                head.with_usage_requested(body)
            } else {
                body
            }
        } else {
            if let Some(refused) = state
                .translation
                .refuse(body.len(), head.attachments.messages)
            {
                return Err(Step::Final(refused));
            }
            // A large translation is CPU work of many milliseconds: the other tasks of
            // this thread move to another while it runs.
            let translate = || plan.request(body);
            let translated = if body.len() > crate::metering::tokens::HEAVY_BYTES {
                crate::metering::tokens::off_runtime(translate)
            } else {
                translate()
            };
            translated.map_err(|e| Step::Final(e.into()))?.into()
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
        .map_err(|_| Step::Final(ApiError::Internal))?;
        let upstream = build_upstream(
            state,
            provider,
            credential.as_ref().map(|(c, _)| *c),
            headers,
            api,
            uri,
            upstream_body,
        )
        .await
        .map_err(|e| Step::failed(Failure::Auth, e))?;

        let mut billed = Billed::new(self.current(), labels);
        let inflight = c.endpoint.start();
        let before_upstream = *prelude + attempt_started.elapsed();
        let sent_at = Instant::now();
        let health = &provider.health;
        // Records a failure against the target (and the credential, when it is at fault).
        let fail =
            |class: Failure, e: Result<(Response<Body>, Completion), ApiError>, retry_after| {
                let now = Instant::now();
                if class.counts_against_target() {
                    let t = c.endpoint.failure(health, now, now - sent_at);
                    state.metrics.health(t, &provider.id, &c.label, "target");
                } else {
                    let t = c.endpoint.success(now - sent_at, now);
                    state.metrics.health(t, &provider.id, &c.label, "target");
                }
                let mut credential_set_aside = false;
                if let Some((cred, endpoint)) = &credential
                    && class == Failure::Auth
                {
                    let t = endpoint.eject_now(health, now);
                    state
                        .metrics
                        .health(t, &provider.id, &cred.id, "credential");
                    credential_set_aside = true;
                }
                Step::Failed(Box::new(Failed {
                    class,
                    answer: e,
                    retry_after,
                    credential_set_aside,
                }))
            };
        let response = match send(state, provider, upstream, first_deadline).await {
            Ok(r) => r,
            Err(e) => {
                // A timeout is billed (the provider has the request); a refusal, a failure
                // or no connection is not.
                billed.failed(&e);
                let class = match e {
                    ApiError::UpstreamTimeout => timeout_class(first_deadline),
                    ApiError::UpstreamAuth(_) => Failure::Auth,
                    ApiError::UpstreamStatus(_) => Failure::ServerError,
                    _ => Failure::ConnectError,
                };
                return Err(fail(class, Err(e), None));
            }
        };
        let status = response.status();
        let (mut up_parts, mut up_body) = response.into_parts();
        let mut credential_limited = false;
        if let Some((_, endpoint)) = &credential
            && let Some(wait) = exhausted_for(status, &up_parts.headers)
        {
            endpoint.limit_for(wait, Instant::now());
            credential_limited = true;
        }
        let streamed = status.is_success()
            && up_parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.starts_with("text/event-stream")
                        || v.starts_with("application/vnd.amazon.eventstream")
                });
        let mut completion = Completion {
            metrics: state.metrics.clone(),
            // A clone (three reference counts): an error after this point is still
            // recorded with the request's labels.
            labels: labels.clone(),
            status,
            started,
            usage: None,
            credential: credential.as_ref().map(|(_, e)| e.clone()),
            reservation: Some(billed.reservation.clone().unwrap_or_else(|| self.current())),
            price: provider.price_of(&c.model),
            counted: Some(crate::metering::tokens::Counted {
                api: self.api,
                request: self.body.clone(),
            }),
        };
        let to = Resolved {
            route: route.clone(),
            provider: provider.clone(),
            model: c.model.clone(),
            credential: None,
            attempts,
            timeout: c.timeout,
        };
        let body = if streamed {
            // Wait for the first bytes: until they come, a failure is invisible to the
            // client, and the next target can be tried.
            let first = loop {
                match tokio::time::timeout_at(first_deadline, up_body.frame()).await {
                    Err(_) => {
                        billed.status = 504;
                        return Err(fail(
                            timeout_class(first_deadline),
                            Err(ApiError::UpstreamTimeout),
                            None,
                        ));
                    }
                    Ok(None) | Ok(Some(Err(_))) => {
                        billed.status = 502;
                        return Err(fail(
                            Failure::ConnectError,
                            Err(ApiError::UpstreamBody),
                            None,
                        ));
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            break data;
                        }
                    }
                }
            };
            // The target's outcome is the stream's: settled when it ends (or broken).
            c.endpoint.first_byte(sent_at.elapsed(), Instant::now());
            if let Some((cred, endpoint)) = &credential {
                let t = endpoint.success(sent_at.elapsed(), Instant::now());
                state
                    .metrics
                    .health(t, &provider.id, &cred.id, "credential");
            }
            self.count_ok(c);
            up_parts.headers.remove(header::CONTENT_LENGTH);
            up_parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            // From here the stream records its outcome, whole or broken.
            billed.settled();
            Streamed {
                inner: up_body,
                first: Some(first),
                timers: Timers::new(deadline, route.idle_timeout),
                done: Some(completion),
                chain: plan.stream(),
                ended: false,
                complete: false,
                _inflight: inflight,
                resume: resume.cloned(),
                transcript: resume.map(|_| Transcript::default()),
                continuation: None,
                target: Some((c.endpoint.clone(), provider.health)),
                kept: Some(Vec::new()),
                kept_bytes: 0,
            }
            .boxed()
        } else {
            use crate::base::bodies::UpstreamRead;
            let read = crate::base::bodies::read_upstream(
                up_body,
                state.max_upstream_body_bytes,
                attempt_deadline,
            );
            let collected = match read.await {
                Err(UpstreamRead::Timeout) => {
                    billed.status = 504;
                    return Err(fail(Failure::Timeout, Err(ApiError::UpstreamTimeout), None));
                }
                Err(UpstreamRead::Broken) => {
                    billed.status = 502;
                    return Err(fail(
                        Failure::ConnectError,
                        Err(ApiError::UpstreamBody),
                        None,
                    ));
                }
                Err(UpstreamRead::TooLarge(limit)) => {
                    billed.status = 502;
                    return Err(fail(
                        Failure::ConnectError,
                        Err(ApiError::UpstreamTooLarge(limit)),
                        None,
                    ));
                }
                Ok(c) => c,
            };
            let collected_at = Instant::now();
            drop(inflight);
            let failure = if status.is_success() {
                None
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                Some(Failure::RateLimited)
            } else if status.is_client_error() {
                refusal_class(&collected)
            } else {
                None
            };
            let out = if status.is_success() {
                let large = collected.len() > crate::metering::tokens::HEAVY_BYTES;
                let translate = || plan.response(collected);
                let translated = if large {
                    crate::metering::tokens::off_runtime(translate)
                } else {
                    translate()
                };
                let (out, usage) =
                    translated.map_err(|e| fail(Failure::ServerError, Err(e.into()), None))?;
                completion.usage = usage;
                completion.count_unreported(|model, api| {
                    Some(crate::metering::tokens::answer(model, api, &out))
                });
                out
            } else {
                // An error status: the provider does not bill it; recorded with its answer.
                billed.settled();
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
            let response = respond(status, crate::base::full(out), &up_parts.headers, &to);
            if let Some(class) = failure {
                let retry_after = header_secs(&up_parts.headers, "retry-after");
                let mut step = fail(class, Ok((response, completion)), retry_after);
                if let Step::Failed(f) = &mut step {
                    // A 429 that set the credential aside (above): try another at once.
                    f.credential_set_aside |= credential_limited;
                }
                return Err(step);
            }
            let t = c.endpoint.success(sent_at.elapsed(), Instant::now());
            state.metrics.health(t, &provider.id, &c.label, "target");
            if let Some((cred, endpoint)) = &credential {
                let t = endpoint.success(sent_at.elapsed(), Instant::now());
                state
                    .metrics
                    .health(t, &provider.id, &cred.id, "credential");
            }
            self.count_ok(c);
            completion.record();
            billed.settled();
            state
                .metrics
                .overhead
                .observe((before_upstream + collected_at.elapsed()).as_secs_f64());
            return Ok(response);
        };
        let got_response = Instant::now();
        let out = respond(status, body, &up_parts.headers, &to);
        state
            .metrics
            .overhead
            .observe((before_upstream + got_response.elapsed()).as_secs_f64());
        Ok(out)
    }

    fn count_ok(&self, c: &balance::Candidate) {
        self.state
            .metrics
            .attempts
            .with_label_values(&[&self.route.id, &c.provider.id, &c.label, "ok"])
            .inc();
    }
}

/// The response of a stream whose provider has not sent a byte within the keep-alive
/// interval: 200 and SSE at once, comments while the attempts go on, then the answer's
/// stream, or an error event in the client's format.
fn keep_alive_response(ctx: &Ctx, run: PlanFuture, every: Duration) -> Response<Body> {
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
struct KeepAlive {
    /// The attempts (behind a mutex only to make the body `Sync`); `None` once done.
    run: Option<std::sync::Mutex<PlanFuture>>,
    ticker: tokio::time::Interval,
    /// The answer's stream.
    then: Option<Body>,
    api: Api,
    started: Instant,
    metrics: Metrics,
}

/// An SSE comment: ignored by clients, it keeps idle-timeouts along the way from firing.
const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

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
                        Completion {
                            metrics: this.metrics.clone(),
                            labels,
                            status: e.status(),
                            started: this.started,
                            usage: None,
                            credential: None,
                            reservation: None,
                            price: None,
                            counted: None,
                        }
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

fn set_attempts(headers: &mut HeaderMap, attempts: u32) {
    headers.insert(
        HeaderName::from_static("x-tollgate-attempts"),
        HeaderValue::from(attempts),
    );
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
                .authorization(state.upstream.for_object(&provider.id))
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
    /// The provider's first bytes, read before the response was committed.
    first: Option<Bytes>,
    /// The request's deadline and the provider's silence since its last frame.
    timers: Timers,
    done: Option<Completion>,
    chain: Chain,
    /// The closing bytes have been written; the next poll ends the body.
    ended: bool,
    /// The provider ended the stream itself (rather than it breaking, going silent, being
    /// cut at the deadline, or the client going away).
    complete: bool,
    _inflight: balance::InFlight,
    /// Set when the route continues broken streams on the next target.
    resume: Option<ResumeSlot>,
    /// What the client has been sent (kept only when the stream may be continued).
    transcript: Option<Transcript>,
    /// The continuation, once the provider's stream broke.
    continuation: Option<Continuation>,
    /// The target's health record: a break after the first byte counts against it.
    target: Option<(Arc<balance::Endpoint>, HealthPolicy)>,
    /// What the client has been sent (shared, not copied), counted if the provider
    /// reports no usage; `None` once over [`crate::metering::tokens::MAX_KEPT_BYTES`].
    kept: Option<Vec<Bytes>>,
    kept_bytes: usize,
}

/// What a stream needs to continue on the next target: the request, the plan with what
/// has been tried, and the labels.
struct Resume {
    ctx: Arc<Ctx>,
    plan: balance::Plan,
    labels: Labels,
}

/// Filled by the attempt loop once the stream is the answer; taken by the stream if it
/// breaks.
#[derive(Clone, Default)]
struct ResumeSlot(Arc<std::sync::Mutex<Option<Resume>>>);

impl ResumeSlot {
    fn fill(&self, r: Resume) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(r);
        }
    }

    fn take(&self) -> Option<Resume> {
        self.0.lock().ok()?.take()
    }
}

/// The answer an OpenAI client has received so far.
#[derive(Debug, Default)]
struct Transcript {
    text: String,
    /// The stream's chunk id, which a continuation keeps.
    id: Option<String>,
    /// The answer ended (a finish reason, or `[DONE]`): nothing to continue.
    finished: bool,
    /// It holds tool calls, which a continuation cannot resume.
    tool_calls: bool,
    events: crate::base::sse::Parser,
}

impl Transcript {
    fn observe(&mut self, out: &[u8]) {
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
fn continuation_body(body: &[u8], partial: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get_mut("messages")?
        .as_array_mut()?
        .push(serde_json::json!({"role": "assistant", "content": partial}));
    serde_json::to_vec(&v).ok().map(Into::into)
}

enum Continuation {
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
fn rejoin(events: &mut crate::base::sse::Parser, frame: &[u8], id: Option<&str>) -> Bytes {
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
    fn settle(&mut self, broke: bool) {
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
    fn sent(&mut self, out: Bytes) -> Frame<Bytes> {
        if let Some(t) = self.transcript.as_mut() {
            t.observe(&out);
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

    fn finish(&mut self) {
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
    fn try_resume(&mut self) -> bool {
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
        let Some(body) = continuation_body(&r.ctx.body, &t.text) else {
            return false;
        };
        let Ok(head) = ChatHead::parse(&body) else {
            return false;
        };
        let mut plan = r.plan;
        let Some(next) = plan.fail_over(Instant::now()) else {
            return false;
        };
        let ctx = Arc::new(Ctx {
            state: r.ctx.state.clone(),
            headers: r.ctx.headers.clone(),
            body,
            head,
            api: r.ctx.api,
            route: r.ctx.route.clone(),
            budget: r.ctx.budget.clone(),
            started: r.ctx.started,
            deadline: r.ctx.deadline,
            prelude: Duration::ZERO,
            admitted: r.ctx.admitted.clone(),
            current: std::sync::Mutex::new(r.ctx.current()),
            extend_by: 2,
            key: r.ctx.key.clone(),
        });
        ctx.state
            .metrics
            .fallbacks
            .with_label_values(&[&ctx.route.id, &next.provider.id, &next.model])
            .inc();
        tracing::debug!(route = %ctx.route.id, provider = %next.provider.id, "continuing a broken stream");
        self.finish();
        let run = run_plan_boxed(ctx, plan, Some(next), r.labels);
        self.continuation = Some(Continuation::Starting(std::sync::Mutex::new(run)));
        true
    }

    fn poll_continuation(
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
    fn fail(&mut self, e: &dyn std::fmt::Display) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
struct StreamTimeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("the provider sent nothing for {0:?} while streaming")]
struct StreamIdle(Duration);

/// A stream's two limits on one timer: the request's deadline, and the longest silence
/// between two frames. A frame only notes the time; the timer is moved when it fires
/// before either is due, so a stream costs one timer and one clock read per frame.
struct Timers {
    deadline: Instant,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// Which limit a stream reached.
#[derive(Debug, PartialEq, Eq)]
enum Expired {
    Deadline,
    Idle,
}

impl Timers {
    fn new(deadline: Instant, idle: Duration) -> Self {
        let last = Instant::now();
        Self {
            deadline,
            idle,
            last,
            sleep: Box::pin(tokio::time::sleep_until((last + idle).min(deadline))),
        }
    }

    fn frame(&mut self) {
        self.last = Instant::now();
    }

    /// Ready once the deadline has passed, or the provider has been silent for the whole
    /// idle limit (the deadline first, when both have).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
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

/// The answer to a request admission refused: recorded like every error, in the client's
/// format, with the rate-limit headers when a rate limit refused it.
pub(super) fn refused(
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
fn rate_limited_headers(state: &State, key: &VirtualKey, out: &mut HeaderMap) {
    admission::quota_headers(state, key, out);
    out.insert(
        HeaderName::from_static("retry-after"),
        HeaderValue::from_static("1"),
    );
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
    fn rate_limit_headers_set_a_key_aside() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let ok = StatusCode::OK;
        assert_eq!(exhausted_for(ok, &headers(&[])), None);
        assert_eq!(
            exhausted_for(ok, &headers(&[("x-ratelimit-remaining-requests", "3")])),
            None
        );
        assert_eq!(
            exhausted_for(
                ok,
                &headers(&[
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", "6m0s")
                ])
            ),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            exhausted_for(
                ok,
                &headers(&[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "2h")
                ])
            ),
            Some(Duration::from_secs(3600)),
            "capped"
        );
        let soon = now_unix() + 100;
        let date = {
            // Seconds since the epoch back to a date, by search: the parser is the thing
            // under test, so the expected text is built independently.
            let days = soon.div_euclid(86_400);
            let secs = soon.rem_euclid(86_400);
            let (mut y, mut d) = (1970i64, days);
            let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            while d >= if leap(y) { 366 } else { 365 } {
                d -= if leap(y) { 366 } else { 365 };
                y += 1;
            }
            let months = [
                31,
                if leap(y) { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let mut m = 0;
            while d >= months[m] {
                d -= months[m];
                m += 1;
            }
            format!(
                "{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                m + 1,
                d + 1,
                secs / 3600,
                secs % 3600 / 60,
                secs % 60
            )
        };
        let wait = exhausted_for(
            ok,
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", &date),
            ]),
        )
        .unwrap();
        assert!((99..=100).contains(&wait.as_secs()), "{wait:?} from {date}");
        let limited = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(exhausted_for(limited, &headers(&[])), None);
        assert_eq!(
            exhausted_for(limited, &headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn refusals_are_classed_by_the_providers_words() {
        for (body, class) in [
            (
                &br#"{"error":{"code":"context_length_exceeded","message":"This model's maximum context length is 128000 tokens."}}"#[..],
                Some(Failure::ContextWindow),
            ),
            (
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
                Some(Failure::ContextWindow),
            ),
            (
                br#"{"message":"Input is too long for requested model."}"#,
                Some(Failure::ContextWindow),
            ),
            (
                br#"{"error":{"code":"content_filter","message":"The response was filtered"}}"#,
                Some(Failure::ContentPolicy),
            ),
            (
                br#"{"error":{"code":null,"message":"Invalid value for 'temperature'"}}"#,
                None,
            ),
        ] {
            assert_eq!(refusal_class(body), class, "{}", String::from_utf8_lossy(body));
        }
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
