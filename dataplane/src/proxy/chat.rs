//! `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic): authenticate,
//! pick the route and target, then either pass the request through (same format at both
//! ends: only the model is rewritten) or translate it, call the provider, and forward its
//! answer (JSON or SSE) chunk by chunk as it arrives.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::pipeline::attempt::Ctx;
use crate::pipeline::attempts::{run_plan, run_plan_boxed};
use crate::pipeline::balance;
use crate::pipeline::keep_alive::keep_alive_response;
use crate::pipeline::record::{Labels, answer, refused};
use crate::pipeline::route::resolve_route;
use crate::pipeline::{State, admission};

pub async fn handle(state: &Arc<State>, req: Request<Incoming>, api: Api) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = forward(state, req, api, started, &mut labels).await;
    answer(state, result, api, started, labels)
}

pub(crate) async fn forward(
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
