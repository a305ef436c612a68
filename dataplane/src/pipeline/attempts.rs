//! The attempt loop of one request: the first candidate, then another credential, a
//! retry after a backoff or the provider's `Retry-After`, or the next target or fallback,
//! as the route says, until one answers, the deadline passes or nothing is left.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::time::Instant;

use super::PlanFuture;
use super::attempt::{Ctx, Failed, Operation, Step, set_attempts};
use super::record::Labels;
use super::stream::{Resume, ResumeSlot};
use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::pipeline::balance;
use crate::translate::head::ChatHead;

/// The attempts of one request: `first`, then retries and failover as the route says,
/// until one answers or none is left. Also the labels the request ends with.
pub(crate) async fn run_plan(
    ctx: Arc<Ctx>,
    mut plan: balance::Plan,
    first: Option<balance::Candidate>,
    mut labels: Labels,
) -> (Result<Response<Body>, ApiError>, Labels) {
    let result = run_plan_inner(&ctx, &mut plan, first, &mut labels).await;
    (result, labels)
}

/// The same, boxed: the future a stream holds to continue on another target.
pub(crate) fn run_plan_boxed(
    ctx: Arc<Ctx>,
    plan: balance::Plan,
    first: Option<balance::Candidate>,
    labels: Labels,
) -> PlanFuture {
    Box::pin(run_plan(ctx, plan, first, labels))
}

pub(crate) async fn run_plan_inner(
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
        labels.provider_name = super::record::gen_ai_provider(c.provider.kind);
        let _probe = balance::ProbeGuard::new(&c);
        let began = Instant::now();
        let result = attempt(ctx, &c, attempts, labels, resume.as_ref()).await;
        if let Some(t) = &labels.trail {
            let (status, outcome) = outcome_of(&result);
            t.attempted(
                &c.provider.id,
                &c.model,
                status,
                outcome,
                began,
                ctx.started,
            );
        }
        let failed = match result {
            Ok(response) => {
                if let Some(slot) = &resume {
                    let (ctx, labels) = (ctx.clone(), labels.clone());
                    let plan = std::mem::replace(plan, balance::Plan::empty(route.clone()));
                    slot.fill(Resume {
                        body: ctx.body.clone(),
                        restart: Box::new(move |body, head| {
                            continue_elsewhere(&ctx, plan, labels, body, head)
                        }),
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

/// An attempt's outcome for the audit record: the provider's status when it answered, and
/// `ok`, the failure class, or the gateway's error code.
fn outcome_of(result: &Result<Response<Body>, Step>) -> (Option<u16>, &'static str) {
    let provider_status = |e: &ApiError| match e {
        ApiError::UpstreamStatus(s) | ApiError::UpstreamAuth(s) => Some(*s),
        _ => None,
    };
    match result {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), "ok"),
        // The provider's own error answer (a 4xx the client caused), passed on.
        Ok(r) => (Some(r.status().as_u16()), "provider_error"),
        Err(Step::Final(e)) => (provider_status(e), e.code_or_type()),
        Err(Step::Failed(f)) => {
            let status = match &f.answer {
                Ok((r, _)) => Some(r.status().as_u16()),
                Err(e) => provider_status(e),
            };
            (status, f.class.as_str())
        }
    }
}

/// One attempt of the request's operation on candidate `c`.
async fn attempt(
    ctx: &Ctx,
    c: &balance::Candidate,
    attempts: u32,
    labels: &Labels,
    resume: Option<&ResumeSlot>,
) -> Result<Response<Body>, Step> {
    match ctx.op {
        Operation::Chat => ctx.run(c, attempts, labels, resume).await,
        Operation::Embeddings => super::embeddings::attempt(ctx, c, attempts, labels).await,
        Operation::CountTokens => super::count_tokens::attempt(ctx, c, attempts, labels).await,
    }
}

/// The attempts that continue a broken stream on the next target: the request with the
/// partial answer (`body`, `head`), charged to the same reservation, two worst cases per
/// further billed attempt (its request carries the partial answer too).
fn continue_elsewhere(
    first: &Ctx,
    mut plan: balance::Plan,
    labels: Labels,
    body: Bytes,
    head: ChatHead,
) -> Option<PlanFuture> {
    let next = plan.fail_over(Instant::now())?;
    let ctx = Arc::new(Ctx {
        op: first.op,
        state: first.state.clone(),
        headers: first.headers.clone(),
        body,
        head,
        api: first.api,
        route: first.route.clone(),
        budget: first.budget.clone(),
        started: first.started,
        deadline: first.deadline,
        prelude: Duration::ZERO,
        admitted: first.admitted.clone(),
        current: std::sync::Mutex::new(first.current()),
        extend_by: 2,
        key: first.key.clone(),
        trail: first.trail.clone(),
        pin: first.pin.clone(),
    });
    ctx.state
        .metrics
        .fallbacks
        .with_label_values(&[&ctx.route.id, &next.provider.id, &next.model])
        .inc();
    tracing::debug!(route = %ctx.route.id, provider = %next.provider.id, "continuing a broken stream");
    Some(run_plan_boxed(ctx, plan, Some(next), labels))
}

#[cfg(test)]
mod tests;
