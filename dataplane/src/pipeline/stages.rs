//! A chat request's stages, in the order they run. A new stage (a cache lookup before
//! routing, a guardrail on the input or the output, a span per attempt) goes in here, in
//! its place:
//!
//! 1. authenticate, read and route ([`super::route::resolve_route`]: the key, the body
//!    within its limits, the head, the key's models, the route);
//! 2. authorise and admit ([`admit`]: the output cap of a metered key, then the key's
//!    budgets, rate limits and sessions reserve the request's worst case);
//! 3. pick ([`pick`]: the first target by the route's strategy, its retry budget);
//! 4. attempt, translate and stream ([`super::attempts`]: each attempt translates the
//!    request for its provider, sends it, and translates the answer back, streamed or
//!    whole; a slow stream is kept alive);
//! 5. settle ([`super::record`]: the request's one record, and its reservation settled
//!    with what it used; [`super::trail`]: its audit record, which the stages before
//!    fill in as they go).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tokio::time::Instant;

use super::attempt::{Ctx, Operation};
use super::attempts::{run_plan, run_plan_boxed};
use super::keep_alive::keep_alive_response;
use super::record::{Labels, refused};
use super::route::{Routed, resolve_route};
use super::{State, admission, balance};
use crate::base::{Api, Body};
use crate::config::model::VirtualKey;
use crate::error::ApiError;
use crate::metering::quota::Reservation;

/// `POST /v1/chat/completions` and `POST /v1/messages` past their endpoint: the answer,
/// or the error the client gets (recorded by the caller, in `labels`).
pub(crate) async fn chat<B>(
    state: &Arc<State>,
    req: Request<B>,
    api: Api,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let (parts, body) = req.into_parts();
    let mut routed = resolve_route(state, &parts, body, labels).await?;
    if api == Api::Responses {
        let Routed {
            route,
            body,
            head,
            key,
            ..
        } = &mut routed;
        let previous = (route, body, head);
        routed.pin =
            super::response_ids::follow_up(&state.sealing, &key.attribution.key, previous)?;
    }
    let reservation = match admit(state, &parts.headers, api, &mut routed).await {
        Ok(r) => r,
        Err(e) => return Ok(refused(state, &routed.key, e, api, started, labels)),
    };
    let key = routed.key.clone();
    let keep_alive = routed.route.keep_alive.filter(|_| routed.head.stream);
    let (ctx, plan, first) = attempts(
        state,
        Operation::Chat,
        api,
        (parts.headers, labels.trail.clone()),
        routed,
        reservation,
        started,
    );
    let Some(every) = keep_alive else {
        return answered(
            state,
            &key,
            run_plan(ctx, plan, first, labels.clone()).await,
            labels,
        );
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

/// `POST /v1/embeddings` and `POST /v1/messages/count_tokens` past their endpoints:
/// answered whole (no stream, no output cap), through the same stages and attempts.
/// Embeddings reserve their input like a chat request with no output; token counting is
/// free at the provider, but a request like any other to the key's limits, refused when
/// its budgets could not take the prompt it counts.
pub(crate) async fn answered_whole<B>(
    state: &Arc<State>,
    req: Request<B>,
    op: Operation,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let api = match op {
        Operation::CountTokens => Api::Anthropic,
        Operation::Chat | Operation::Embeddings => Api::OpenAi,
    };
    let (parts, body) = req.into_parts();
    let routed = resolve_route(state, &parts, body, labels).await?;
    let Routed {
        body,
        head,
        route,
        snapshot,
        key,
        ..
    } = &routed;
    let admitted = if op == Operation::CountTokens {
        let least = admission::prompt_demand(state, snapshot, head, route, body.len());
        admission::admit_free(state, key, &parts.headers, least).await
    } else {
        let size = (state.worst.input(body.len(), head), 0);
        admission::admit(state, snapshot, key, &parts.headers, head, route, size).await
    };
    let reservation = match admitted {
        Ok(r) => Arc::new(r),
        Err(e) => return Ok(refused(state, key, e, api, started, labels)),
    };
    let key = key.clone();
    let trail = labels.trail.clone();
    let (ctx, plan, first) = attempts(
        state,
        op,
        api,
        (parts.headers, trail),
        routed,
        reservation,
        started,
    );
    answered(
        state,
        &key,
        run_plan(ctx, plan, first, labels.clone()).await,
        labels,
    )
}

/// The attempts' context, plan and first candidate (pick), for an admitted request.
fn attempts(
    state: &Arc<State>,
    op: Operation,
    api: Api,
    (headers, trail): (http::HeaderMap, Option<Arc<super::trail::Trail>>),
    Routed {
        body,
        head,
        route,
        snapshot,
        key,
        pin,
    }: Routed,
    reservation: Arc<Reservation>,
    started: Instant,
) -> (Arc<Ctx>, balance::Plan, Option<balance::Candidate>) {
    let (plan, first, budget) = pick(state, &route, &snapshot, &head.model);
    drop(snapshot);
    let ctx = Arc::new(Ctx {
        op,
        state: state.clone(),
        headers,
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
        key,
        trail,
        pin,
    });
    (ctx, plan, first)
}

/// The attempts' outcome: the answer carries the key's quota headers; `labels` become
/// the ones the request ended with.
fn answered(
    state: &State,
    key: &VirtualKey,
    (result, used): (Result<Response<Body>, ApiError>, Labels),
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    *labels = used;
    result.map(|mut r| {
        admission::quota_headers(state, key, r.headers_mut());
        r
    })
}

/// Authorise and admit: a metered key's request gets an output limit, so that what it
/// reserves bounds what the provider can produce; then its worst case is reserved. The
/// body gets the limit written in; the reservation, or why it is refused.
async fn admit(
    state: &State,
    headers: &http::HeaderMap,
    api: Api,
    routed: &mut Routed,
) -> Result<Arc<Reservation>, ApiError> {
    let Routed {
        body,
        head,
        route,
        snapshot,
        key,
        ..
    } = routed;
    let taken = std::mem::take(body);
    *body = if admission::metered(key, headers) {
        let field = match api {
            Api::OpenAi => "max_completion_tokens",
            Api::Anthropic => "max_tokens",
            Api::Responses => "max_output_tokens",
        };
        let capped = head.with_search_cap(taken, state.worst.web_searches)?;
        head.with_output_cap(capped, field, state.worst.output_tokens)
    } else {
        taken
    };
    let size = (
        state.worst.input(body.len(), head),
        state.worst.output(head),
    );
    let reservation = admission::admit(state, snapshot, key, headers, head, route, size).await?;
    Ok(Arc::new(reservation))
}

/// Pick: the route's plan of targets, the first to try, and the route's retry budget
/// (this request counted in it).
fn pick(
    state: &State,
    route: &Arc<crate::config::model::Route>,
    snapshot: &crate::config::snapshot::Snapshot,
    model: &str,
) -> (
    balance::Plan,
    Option<balance::Candidate>,
    Arc<balance::RetryBudget>,
) {
    let mut plan = balance::Plan::new(route.clone(), snapshot, &state.balance, model);
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
    (plan, first, budget)
}
