//! One upstream attempt, in phases: prepare (credential, body in the provider's format,
//! signed request), call (send within the first-token deadline), read (the first bytes
//! of a stream, or the whole answer), classify (what a failure is, for the loop in
//! `attempts`). Also the request's context every attempt shares.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::record::{Completion, Labels};
use super::route::Resolved;
use super::stream::{ResumeSlot, Streamed, Timers, Transcript};
use crate::base::{Api, Body, now_unix};
use crate::config::failure::Failure;
use crate::config::model::Credential;
use crate::config::model::{Provider, Route, VirtualKey, Wire};
use crate::error::ApiError;
use crate::metering::quota::Reservation;
use crate::pipeline::balance;
use crate::pipeline::{State, admission};
use crate::provider::plan::Plan;
use crate::provider::request::build_upstream;
use crate::translate::head::ChatHead;

/// The provider's response headers a client gets; the others stay in the gateway. They
/// carry the provider account's organisation and project ids, its own rate limits (the
/// gateway's are in `x-ratelimit-*`, per virtual key), cookies and its infrastructure.
pub(crate) const FORWARDED_RESPONSE_HEADERS: [&str; 8] = [
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

/// Reads an upstream answer whole, within the process's size limit and `deadline`.
pub(crate) async fn read_answer(
    state: &State,
    body: Body,
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

/// Sends a request to the provider within `deadline`. The provider refusing the gateway's
/// credentials and its 5xx answers are errors; everything else is its answer.
pub(crate) async fn send(
    state: &State,
    provider: &Provider,
    upstream: Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let response =
        match tokio::time::timeout_at(deadline, state.transport.send(provider, upstream)).await {
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
pub(crate) fn respond(
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

/// What a failed attempt leaves: why, and what the client gets if nothing else is tried.
pub(crate) struct Failed {
    pub(crate) class: Failure,
    /// The provider's own answer in the client's format (with its metrics record, made
    /// only if it is the one returned), or the gateway's error.
    pub(crate) answer: Result<(Response<Body>, Completion), ApiError>,
    /// The provider's `Retry-After`.
    pub(crate) retry_after: Option<Duration>,
    /// The credential was set aside (refused, or out of quota): the same target may be
    /// tried again with another.
    pub(crate) credential_set_aside: bool,
}

pub(crate) enum Step {
    /// The client's answer is this error; nothing else is tried.
    Final(ApiError),
    Failed(Box<Failed>),
}

impl Step {
    pub(crate) fn failed(class: Failure, e: ApiError) -> Self {
        Self::Failed(Box::new(Failed {
            class,
            answer: Err(e),
            retry_after: None,
            credential_set_aside: false,
        }))
    }
}

pub(crate) use super::trail::Operation;
pub(crate) use classify::{exhausted_for, header_secs, refusal_class};

mod classify;

/// A chat request past authentication and routing, owned: what every attempt needs,
/// including attempts made after the response has begun (keep-alive, continuation).
pub(crate) struct Ctx {
    pub(crate) op: Operation,
    pub(crate) state: Arc<State>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) head: ChatHead,
    pub(crate) api: Api,
    pub(crate) route: Arc<Route>,
    /// The route's retry budget (this request is counted in it).
    pub(crate) budget: Arc<balance::RetryBudget>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    /// Time spent in the gateway before the first attempt (authentication, body, route).
    pub(crate) prelude: Duration,
    /// What the request reserved when admitted (its concurrency slot included); settled
    /// when the last holder lets go.
    pub(crate) admitted: Arc<Reservation>,
    /// What the next attempt is charged to: `admitted` until an attempt has been charged,
    /// then an extension of it for each further billed attempt.
    pub(crate) current: std::sync::Mutex<Arc<Reservation>>,
    /// How many of the admitted worst cases a further billed attempt reserves: 1, or 2 for
    /// a stream's continuation (its request carries the partial answer too).
    pub(crate) extend_by: u64,
    /// The key, for the error a refused extension gets.
    pub(crate) key: Arc<VirtualKey>,
    /// The request's record, whose trace each attempt's request carries.
    pub(crate) trail: Option<Arc<super::trail::Trail>>,
    /// A Responses follow-up: only the account storing its previous response may take it.
    pub(crate) pin: Option<Arc<super::response_ids::Pin>>,
}

impl Ctx {
    pub(crate) fn current(&self) -> Arc<Reservation> {
        crate::base::lock(&self.current).clone()
    }

    /// Before an attempt: when an earlier attempt has been charged (the provider billed
    /// it), another worst case is reserved for this one, so that what every attempt is
    /// charged stays within what the request reserved.
    pub(crate) async fn reserve_attempt(&self) -> Result<(), ApiError> {
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
pub(crate) struct Billed<'a> {
    pub(crate) reservation: Option<Arc<Reservation>>,
    pub(crate) labels: &'a Labels,
    /// The status its record shows: the client went away (499) unless a timeout (504) or
    /// a broken answer (502) ended it.
    pub(crate) status: u16,
}

impl<'a> Billed<'a> {
    pub(crate) fn new(reservation: Arc<Reservation>, labels: &'a Labels) -> Self {
        Self {
            reservation: Some(reservation),
            labels,
            status: 499,
        }
    }

    /// The attempt ended with `e`: billed (its worst case, when the guard drops) only when
    /// the provider had the request and neither refused nor failed it.
    pub(crate) fn failed(&mut self, e: &ApiError) {
        match e {
            ApiError::UpstreamTimeout | ApiError::UpstreamBody => self.status = e.status().as_u16(),
            _ => self.settled(),
        }
    }

    /// The outcome is recorded elsewhere, or the provider does not bill it.
    pub(crate) fn settled(&mut self) {
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

/// An attempt's request, ready to send, and what its later phases need.
pub(crate) struct Prepared<'c> {
    pub(crate) c: &'c balance::Candidate,
    pub(crate) credential: Option<(&'c Credential, Arc<balance::Endpoint>)>,
    pub(crate) started: Instant,
    /// When the whole answer must have come.
    pub(crate) deadline: Instant,
    /// When the first byte must have come (a stream's first-token timeout).
    pub(crate) first_deadline: Instant,
}

impl<'c> Prepared<'c> {
    /// A timeout at `at`: the first-token timeout when it came before the attempt's own.
    fn timeout_class(&self, at: Instant) -> Failure {
        if at < self.deadline {
            Failure::FirstTokenTimeout
        } else {
            Failure::Timeout
        }
    }

    /// The attempt's request is leaving now: what records its outcome.
    pub(crate) fn sent<'a>(&'a self, state: &'a State) -> Sent<'a, 'c> {
        Sent {
            state,
            p: self,
            at: Instant::now(),
        }
    }

    /// The class of a failed call or read: a timeout, a refused credential, a server
    /// error, or (anything else: no connection, a broken or oversized answer) a
    /// connection error.
    pub(crate) fn class_of(&self, e: &ApiError) -> Failure {
        match e {
            ApiError::UpstreamTimeout => self.timeout_class(self.first_deadline),
            ApiError::UpstreamAuth(_) => Failure::Auth,
            ApiError::UpstreamStatus(_) => Failure::ServerError,
            _ => Failure::ConnectError,
        }
    }
}

/// An attempt whose request has been sent: records its outcome against the target and
/// the credential.
pub(crate) struct Sent<'a, 'c> {
    pub(crate) state: &'a State,
    pub(crate) p: &'a Prepared<'c>,
    pub(crate) at: Instant,
}

impl Sent<'_, '_> {
    /// The attempt failed with `class`: recorded against the target (and the credential,
    /// when it is at fault), and what the loop needs to decide what comes next.
    pub(crate) fn failed(
        &self,
        class: Failure,
        answer: Result<(Response<Body>, Completion), ApiError>,
        retry_after: Option<Duration>,
    ) -> Step {
        let (state, c) = (self.state, self.p.c);
        let health = &c.provider.health;
        let now = Instant::now();
        let t = if class.counts_against_target() {
            c.endpoint.failure(health, now, now - self.at)
        } else {
            c.endpoint.success(now - self.at, now)
        };
        state.metrics.health(t, &c.provider.id, &c.label, "target");
        let mut credential_set_aside = false;
        if let Some((cred, endpoint)) = &self.p.credential
            && class == Failure::Auth
        {
            let t = endpoint.eject_now(health, now);
            state
                .metrics
                .health(t, &c.provider.id, &cred.id, "credential");
            credential_set_aside = true;
        }
        Step::Failed(Box::new(Failed {
            class,
            answer,
            retry_after,
            credential_set_aside,
        }))
    }

    /// The attempt succeeded: the target and its credential are well.
    pub(crate) fn succeeded(&self) {
        let c = self.p.c;
        let t = c.endpoint.success(self.at.elapsed(), Instant::now());
        self.state
            .metrics
            .health(t, &c.provider.id, &c.label, "target");
        self.credential_ok();
    }

    /// The answer's rate-limit headers say the credential is out of quota for `wait`: it
    /// is set aside that long. Whether it was.
    pub(crate) fn limit_credential(&self, wait: Option<Duration>) -> bool {
        match (&self.p.credential, wait) {
            (Some((_, endpoint)), Some(wait)) => {
                endpoint.limit_for(wait, Instant::now());
                true
            }
            _ => false,
        }
    }

    /// A provider's answer that is a failure the route may act on (`class`, its
    /// `Retry-After`): after a 429 that set the credential aside (`credential_limited`),
    /// another credential is tried at once.
    fn failed_answer(
        &self,
        class: Failure,
        answer: (Response<Body>, Completion),
        retry_after: Option<Duration>,
        credential_limited: bool,
    ) -> Step {
        let mut step = self.failed(class, Ok(answer), retry_after);
        if let Step::Failed(f) = &mut step {
            f.credential_set_aside |= credential_limited;
        }
        step
    }

    /// Ends an attempt of an operation answered whole (embeddings, token counting): a
    /// failure the loop may act on, or the client's answer, recorded.
    pub(crate) fn answered(
        &self,
        ctx: &Ctx,
        labels: &Labels,
        attempts: u32,
        a: Answered,
    ) -> Result<Response<Body>, Step> {
        let c = self.p.c;
        let to = Resolved {
            route: ctx.route.clone(),
            provider: c.provider.clone(),
            model: c.model.clone(),
            attempts,
        };
        let completion = Completion {
            metrics: ctx.state.metrics.clone(),
            labels: labels.clone(),
            status: a.status,
            started: ctx.started,
            usage: a.usage,
            credential: None,
            reservation: Some(ctx.current()),
            price: a.price,
            counted: None,
            first_token: None,
        };
        let response = respond(a.status, crate::base::full(a.body), &a.headers, &to);
        if let Some((class, retry_after)) = a.failure {
            let answer = (response, completion);
            return Err(self.failed_answer(class, answer, retry_after, a.credential_limited));
        }
        self.succeeded();
        ctx.count_ok(c);
        completion.record();
        Ok(response)
    }

    /// The attempt's credential is well.
    pub(crate) fn credential_ok(&self) {
        if let Some((cred, endpoint)) = &self.p.credential {
            let t = endpoint.success(self.at.elapsed(), Instant::now());
            self.state
                .metrics
                .health(t, &self.p.c.provider.id, &cred.id, "credential");
        }
    }
}

/// An upstream answer read whole.
pub(crate) struct Whole {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Whole {
    /// The failure the route may act on, with the answer's `Retry-After`; `None` for a
    /// success or the client's own error.
    pub(crate) fn failure(&self) -> Option<(Failure, Option<Duration>)> {
        let class = failure_of(self.status, &self.body)?;
        Some((class, header_secs(&self.headers, "retry-after")))
    }

    /// How long the answer's rate-limit headers say the credential is out of quota.
    pub(crate) fn exhausted_for(&self) -> Option<Duration> {
        exhausted_for(self.status, &self.headers)
    }
}

/// Sends `request` for attempt `p` and reads the answer whole, within its deadline.
pub(crate) async fn fetch(
    state: &State,
    p: &Prepared<'_>,
    request: Request<Full<Bytes>>,
) -> Result<Whole, ApiError> {
    let response = send(state, &p.c.provider, request, p.deadline).await?;
    let (parts, body) = response.into_parts();
    let body = read_answer(state, body, p.deadline).await?;
    Ok(Whole {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A whole answer of an operation other than chat, in the client's format.
pub(crate) struct Answered {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) usage: Option<crate::metering::usage::Usage>,
    pub(crate) price: Option<tollgate_proto::prices::Price>,
    /// The provider's answer is a failure the route may act on: its class and its
    /// `Retry-After`.
    pub(crate) failure: Option<(Failure, Option<Duration>)>,
    /// Its rate-limit headers set the credential aside.
    pub(crate) credential_limited: bool,
}

/// What reading a whole answer starts from.
struct Read<'a, 'b, 'c> {
    sent: &'a Sent<'b, 'c>,
    plan: &'a Plan,
    status: StatusCode,
    /// The answer's rate-limit headers set the credential aside.
    credential_limited: bool,
    /// Time in the gateway before the request went upstream.
    before_upstream: Duration,
}

/// The class of an answer that is a failure the route may act on, from its status and
/// body; `None` for a success or the client's own error.
pub(crate) fn failure_of(status: StatusCode, body: &[u8]) -> Option<Failure> {
    if status.is_success() {
        None
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Some(Failure::RateLimited)
    } else if status.is_client_error() {
        refusal_class(body)
    } else {
        None
    }
}

impl Ctx {
    /// One attempt on candidate `c`: the client's answer, or why it failed. A stream
    /// that may be continued elsewhere gets `resume`, filled in if it is the answer.
    pub(crate) async fn run(
        &self,
        c: &balance::Candidate,
        attempts: u32,
        labels: &Labels,
        resume: Option<&ResumeSlot>,
    ) -> Result<Response<Body>, Step> {
        let (p, plan, request) = self.prepare(c).await?;
        let before_upstream = self.prelude + p.started.elapsed();
        let mut billed = Billed::new(self.current(), labels);
        let inflight = c.endpoint.start();
        let (response, sent) = self.call(&p, request, &mut billed).await?;
        let status = response.status();
        let (mut up_parts, up_body) = response.into_parts();
        let credential_limited = sent.limit_credential(exhausted_for(status, &up_parts.headers));
        let streamed = status.is_success()
            && up_parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.starts_with("text/event-stream")
                        || v.starts_with("application/vnd.amazon.eventstream")
                });
        let completion = Completion {
            metrics: self.state.metrics.clone(),
            // A clone (three reference counts): an error after this point is still
            // recorded with the request's labels.
            labels: labels.clone(),
            status,
            started: self.started,
            usage: None,
            credential: p.credential.as_ref().map(|(_, e)| e.clone()),
            reservation: Some(billed.reservation.clone().unwrap_or_else(|| self.current())),
            price: c.provider.price_of(&c.model),
            counted: Some(crate::metering::tokens::Counted {
                api: self.api,
                request: self.body.clone(),
            }),
            first_token: None,
        };
        let to = Resolved {
            route: self.route.clone(),
            provider: c.provider.clone(),
            model: c.model.clone(),
            attempts,
        };
        if !streamed {
            let read = Read {
                sent: &sent,
                plan: &plan,
                status,
                credential_limited,
                before_upstream,
            };
            return self
                .read_whole(
                    read,
                    (up_parts, up_body),
                    inflight,
                    completion,
                    &to,
                    &mut billed,
                )
                .await;
        }
        let first = self.first_bytes(&sent, up_body, &mut billed).await?;
        let mut completion = completion;
        completion.first_token = Some(self.started.elapsed());
        up_parts.headers.remove(header::CONTENT_LENGTH);
        up_parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        // From here the stream records its outcome, whole or broken.
        billed.settled();
        let (upstream, first) = first;
        let body = Streamed {
            inner: upstream,
            first: Some(first),
            timers: Timers::new(self.deadline, self.route.idle_timeout),
            done: Some(completion),
            chain: plan.stream(),
            ended: false,
            complete: false,
            _inflight: inflight,
            resume: resume.cloned(),
            transcript: resume.map(|_| Transcript::default()),
            continuation: None,
            target: Some((c.endpoint.clone(), c.provider.health)),
            kept: Some(Vec::new()),
            kept_bytes: 0,
        }
        .boxed();
        let got_response = Instant::now();
        let out = respond(status, body, &up_parts.headers, &to);
        self.state
            .metrics
            .overhead
            .observe((before_upstream + got_response.elapsed()).as_secs_f64());
        Ok(out)
    }

    /// The start of every attempt: its deadlines, and a credential of the target's pool
    /// (none left: a rate-limit failure, so the loop can move on).
    pub(crate) fn begin<'c>(&self, c: &'c balance::Candidate) -> Result<Prepared<'c>, Step> {
        let started = Instant::now();
        let deadline = (started + c.timeout).min(self.deadline);
        // Streams: the first byte must come within the first-token timeout.
        let first_deadline = if self.head.stream {
            (started + self.route.first_token_timeout).min(deadline)
        } else {
            deadline
        };
        let provider = &c.provider;
        let credential = if provider.credentials.is_empty() {
            None
        } else {
            let (balance, pin) = (&self.state.balance, self.pin.as_ref());
            let picked = match pin {
                Some(pin) => {
                    balance::pick_named(provider, &pin.stored.credential, balance, started)
                }
                None => balance::pick_credential(provider, balance, started),
            };
            match (picked, pin) {
                (Some(x), _) => Some(x),
                (None, pin) => {
                    let id = provider.id.to_string();
                    return Err(Step::failed(
                        Failure::RateLimited,
                        match pin {
                            Some(_) => ApiError::StoredAccountUnavailable(id),
                            None => ApiError::NoCredential(id),
                        },
                    ));
                }
            }
        };
        Ok(Prepared {
            c,
            credential,
            started,
            deadline,
            first_deadline,
        })
    }

    /// Prepare: the deadlines and a credential, the body in the provider's format, and
    /// the signed request.
    async fn prepare<'c>(
        &self,
        c: &'c balance::Candidate,
    ) -> Result<(Prepared<'c>, Plan, Request<Full<Bytes>>), Step> {
        let p = self.begin(c)?;
        let (head, api) = (&self.head, self.api);
        let provider = &c.provider;
        let model: &str = &c.model;
        let wire = provider.wire(model);
        let mut plan = Plan {
            client: api,
            wire,
            provider: provider.kind,
            model: c.model.clone(),
            stream: head.stream,
            include_usage: head.include_usage,
            created: now_unix(),
            id: Plan::answer_id(wire),
            json_mode: api == Api::OpenAi && head.json_mode,
            ids: None,
            echo: None,
        };
        let body = self.upstream_body(&mut plan, c)?;
        if plan.serves_responses() {
            let (keys, key) = (self.state.sealing.clone(), &self.key.attribution.key);
            let credential = p.credential.as_ref().map(|(c, _)| *c);
            let pin = self.pin.as_deref();
            let sealer = super::response_ids::Sealer::new(keys, key, provider, credential, pin);
            plan.ids = Some(Arc::new(sealer));
        }
        let uri = crate::provider::plan_uri(&plan, provider)
            .map_err(|_| Step::Final(ApiError::Internal))?;
        let request = self.request(&p, uri, body).await?;
        Ok((p, plan, request))
    }

    /// The signed request of attempt `p`, to `uri` with `body`; no credential (no token
    /// could be had) is a failure of the credential.
    pub(crate) async fn request(
        &self,
        p: &Prepared<'_>,
        uri: http::Uri,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, Step> {
        let provider = &p.c.provider;
        let credential = p.credential.as_ref().map(|(c, _)| *c);
        let traceparent =
            (self.trail.as_ref()).and_then(|t| t.upstream_request(&uri, provider, credential));
        build_upstream(
            self.state.upstream.for_object(&provider.id),
            provider,
            credential,
            (&self.headers, traceparent),
            self.api,
            uri,
            body,
        )
        .await
        .map_err(|e| Step::failed(Failure::Auth, e))
    }

    /// The request body for the provider: the client's with the model rewritten, or its
    /// translation.
    fn upstream_body(&self, plan: &mut Plan, c: &balance::Candidate) -> Result<Bytes, Step> {
        let (body, head, provider) = (&self.body, &self.head, &c.provider);
        let wire = plan.wire;
        let mut upstream_body: Bytes = if plan.passes_request() {
            let body = head.with_model(body.clone(), &c.model);
            if wire == Wire::OpenAi && provider.compat.stream_usage && !plan.serves_responses() {
                head.with_usage_requested(body)
            } else {
                body
            }
        } else {
            if let Some(refused) = self
                .state
                .translation
                .refuse(body.len(), head.attachments.messages)
            {
                return Err(Step::Final(refused));
            }
            // A large translation is CPU work of many milliseconds: the other tasks of
            // this thread move to another while it runs.
            let mut translate = || plan.request(body);
            let translated = if body.len() > crate::metering::tokens::HEAVY_BYTES {
                crate::metering::tokens::off_runtime(translate)
            } else {
                translate()
            };
            translated.map_err(|e| Step::Final(e.into()))?.into()
        };
        if wire == Wire::OpenAi && !plan.serves_responses() {
            upstream_body = provider.compat.apply(upstream_body, !plan.passes_request());
        }
        Ok(upstream_body)
    }

    /// Call: sends the request within the first-byte deadline. A timeout is billed (the
    /// provider has the request); a refusal, a failure or no connection is not.
    pub(crate) async fn call<'a, 'c>(
        &'a self,
        p: &'a Prepared<'c>,
        request: Request<Full<Bytes>>,
        billed: &mut Billed<'_>,
    ) -> Result<(Response<Body>, Sent<'a, 'c>), Step> {
        let sent = p.sent(&self.state);
        match send(&self.state, &p.c.provider, request, p.first_deadline).await {
            Ok(r) => Ok((r, sent)),
            Err(e) => {
                billed.failed(&e);
                Err(sent.failed(p.class_of(&e), Err(e), None))
            }
        }
    }

    /// Read, for a stream: waits for its first bytes. Until they come a failure is
    /// invisible to the client, and the next target can be tried; once they have, the
    /// target's outcome is the stream's (settled when it ends, or breaks).
    async fn first_bytes(
        &self,
        sent: &Sent<'_, '_>,
        mut body: Body,
        billed: &mut Billed<'_>,
    ) -> Result<(Body, Bytes), Step> {
        let p = sent.p;
        let first = loop {
            match tokio::time::timeout_at(p.first_deadline, body.frame()).await {
                Err(_) => {
                    billed.status = 504;
                    return Err(sent.failed(
                        p.timeout_class(p.first_deadline),
                        Err(ApiError::UpstreamTimeout),
                        None,
                    ));
                }
                Ok(None) | Ok(Some(Err(_))) => {
                    billed.status = 502;
                    return Err(sent.failed(
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
        p.c.endpoint.first_byte(sent.at.elapsed(), Instant::now());
        sent.credential_ok();
        self.count_ok(p.c);
        Ok((body, first))
    }

    /// Read, for a whole answer: collects it within the attempt's deadline, classifies
    /// it, translates a success, and records it.
    async fn read_whole(
        &self,
        read: Read<'_, '_, '_>,
        (mut up_parts, up_body): (http::response::Parts, Body),
        inflight: balance::InFlight,
        mut completion: Completion,
        to: &Resolved,
        billed: &mut Billed<'_>,
    ) -> Result<Response<Body>, Step> {
        let (sent, status) = (read.sent, read.status);
        let p = sent.p;
        use crate::base::bodies::UpstreamRead;
        let collected = crate::base::bodies::read_upstream(
            up_body,
            self.state.max_upstream_body_bytes,
            p.deadline,
        );
        let collected = match collected.await {
            Ok(c) => c,
            Err(e) => {
                let e = match e {
                    UpstreamRead::Timeout => ApiError::UpstreamTimeout,
                    UpstreamRead::Broken => ApiError::UpstreamBody,
                    UpstreamRead::TooLarge(limit) => ApiError::UpstreamTooLarge(limit),
                };
                let class = if matches!(e, ApiError::UpstreamTimeout) {
                    Failure::Timeout
                } else {
                    Failure::ConnectError
                };
                billed.status = e.status().as_u16();
                return Err(sent.failed(class, Err(e), None));
            }
        };
        let collected_at = Instant::now();
        drop(inflight);
        let failure = failure_of(status, &collected);
        let out = if status.is_success() {
            let large = collected.len() > crate::metering::tokens::HEAVY_BYTES;
            let translate = || read.plan.response(collected);
            let translated = if large {
                crate::metering::tokens::off_runtime(translate)
            } else {
                translate()
            };
            let (out, usage) =
                translated.map_err(|e| sent.failed(Failure::ServerError, Err(e.into()), None))?;
            if let Some(t) = &completion.labels.trail {
                t.answered(&out);
            }
            completion.usage = usage;
            completion.count_unreported(|model, api| {
                Some(crate::metering::tokens::answer(model, api, &out))
            });
            out
        } else {
            // An error status: the provider does not bill it; recorded with its answer.
            billed.settled();
            read.plan
                .error(status.as_u16(), collected, &up_parts.headers)
        };
        if !read.plan.passes_response() {
            up_parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        up_parts.headers.remove(header::CONTENT_LENGTH);
        let response = respond(status, crate::base::full(out), &up_parts.headers, to);
        if let Some(class) = failure {
            let retry_after = header_secs(&up_parts.headers, "retry-after");
            let answer = (response, completion);
            return Err(sent.failed_answer(class, answer, retry_after, read.credential_limited));
        }
        sent.succeeded();
        self.count_ok(p.c);
        completion.record();
        billed.settled();
        self.state
            .metrics
            .overhead
            .observe((read.before_upstream + collected_at.elapsed()).as_secs_f64());
        Ok(response)
    }

    pub(crate) fn count_ok(&self, c: &balance::Candidate) {
        self.state
            .metrics
            .attempts
            .with_label_values(&[&self.route.id, &c.provider.id, &c.label, "ok"])
            .inc();
    }
}

pub(crate) fn set_attempts(headers: &mut HeaderMap, attempts: u32) {
    headers.insert(
        HeaderName::from_static("x-tollgate-attempts"),
        HeaderValue::from(attempts),
    );
}

#[cfg(test)]
mod tests;
