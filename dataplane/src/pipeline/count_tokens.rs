//! One token-counting attempt; what each API family is sent is in
//! `provider::count_tokens`. Counting is free at the provider: nothing is charged but the
//! request.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use serde_json::{Value, json};

use super::attempt::{Answered, Ctx, Step, Whole, fetch};
use super::balance;
use super::record::Labels;
use crate::base::{Api, Body, now_unix};
use crate::error::ApiError;
use crate::provider::count_tokens;
use crate::provider::plan::Plan;

/// The client's answer (Anthropic's `{"input_tokens": n}`) from the provider's, and its
/// headers.
fn answer_of(plan: &Plan, up: Whole) -> Result<(Bytes, HeaderMap), ApiError> {
    let Whole {
        status,
        mut headers,
        body: collected,
    } = up;
    let out: Bytes = if plan.passes_response() {
        collected
    } else if status.is_success() {
        let v: Value = serde_json::from_slice(&collected).map_err(|_| ApiError::UpstreamBody)?;
        let n = count_tokens::counted(plan, &v).ok_or(ApiError::UpstreamBody)?;
        serde_json::to_vec(&json!({ "input_tokens": n }))
            .map_err(|_| ApiError::Internal)?
            .into()
    } else {
        plan.error(status.as_u16(), collected, &headers)
    };
    if !plan.passes_response() {
        // The provider's headers describe its own API's answer, not this one.
        headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.remove(header::CONTENT_LENGTH);
    Ok((out, headers))
}

/// One token-counting attempt on candidate `c`.
pub(crate) async fn attempt(
    ctx: &Ctx,
    c: &balance::Candidate,
    attempts: u32,
    labels: &Labels,
) -> Result<Response<Body>, Step> {
    let p = ctx.begin(c)?;
    let (state, provider, model) = (&ctx.state, &c.provider, &*c.model);
    let plan = Plan {
        client: Api::Anthropic,
        wire: provider.wire(model),
        provider: provider.kind,
        model: c.model.clone(),
        stream: false,
        include_usage: false,
        created: now_unix(),
        id: String::new(),
        json_mode: false,
        ids: None,
        echo: None,
    };
    let (uri, body) =
        count_tokens::request(&plan, provider, &ctx.head, &ctx.body).map_err(Step::Final)?;
    let upstream = ctx.request(&p, uri, body).await?;
    let inflight = c.endpoint.start();
    let sent = p.sent(state);
    let up = match fetch(state, &p, upstream).await {
        Ok(up) => up,
        Err(e) => return Err(sent.failed(p.class_of(&e), Err(e), None)),
    };
    drop(inflight);
    let status = up.status;
    let credential_limited = sent.limit_credential(up.exhausted_for());
    let failure = up.failure();
    let (body, headers) = answer_of(&plan, up).map_err(Step::Final)?;
    let answered = Answered {
        status,
        headers,
        body,
        // Nothing is charged but the request.
        usage: Some(crate::metering::usage::Usage::default()),
        price: None,
        failure,
        credential_limited,
    };
    sent.answered(ctx, labels, attempts, answered)
}
