//! One token-counting attempt: passed through to Anthropic (and to Claude on Vertex AI's
//! `count-tokens` model); for Gemini and Bedrock models the request is translated as a
//! message would be, and sent to `countTokens` / `CountTokens`. OpenAI-format providers
//! have no token-counting API, so the request is refused there. Counting is free at the
//! provider: nothing is charged but the request.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use serde_json::{Value, json};

use super::attempt::{Answered, Ctx, Step, Whole, exhausted_for, failure_of, fetch, header_secs};
use super::balance;
use super::record::Labels;
use crate::base::{Api, Body, now_unix};
use crate::config::model::{ProviderKind, Wire};
use crate::error::ApiError;
use crate::provider::request::aws_error_type;
use crate::provider::urls::Urls;
use crate::translate::plan::Plan;

/// The upstream body for a Gemini or Bedrock model: the message request translated as for
/// `/v1/messages`, then only the members that count.
fn translated(plan: &Plan, client: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut v = crate::translate::parse_client_json(client)?;
    if let Some(obj) = v.as_object_mut() {
        for extra in ["max_tokens", "stream"] {
            if obj.contains_key(extra) {
                return Err(crate::translate::bad(extra, "Extra inputs are not permitted").into());
            }
        }
        // Needed by the message translation; not sent.
        obj.insert("max_tokens".into(), json!(1));
    }
    let mut full = plan.request_value(v)?;
    let mut pick = |keys: &[&str]| -> Value {
        Value::Object(
            keys.iter()
                .filter_map(|k| Some(((*k).to_string(), full.get_mut(*k)?.take())))
                .collect(),
        )
    };
    let out = match (plan.wire, plan.provider) {
        (Wire::Bedrock, _) => {
            json!({"input": {"converse": pick(&["messages", "system", "toolConfig"])}})
        }
        (_, ProviderKind::VertexAi) => pick(&["contents", "systemInstruction", "tools"]),
        _ => {
            let mut inner = pick(&["contents", "systemInstruction", "tools", "toolConfig"]);
            inner["model"] = json!(format!("models/{}", plan.model));
            json!({ "generateContentRequest": inner })
        }
    };
    serde_json::to_vec(&out).map_err(|_| ApiError::Internal)
}

/// The provider's URL and body for counting with `plan`.
fn request(ctx: &Ctx, c: &balance::Candidate, plan: &Plan) -> Result<(http::Uri, Bytes), ApiError> {
    let (provider, model) = (&c.provider, &*c.model);
    let (uri, body) = match plan.wire {
        Wire::Anthropic | Wire::VertexAnthropic => (
            provider.count_tokens_uri(),
            ctx.head.with_model(ctx.body.clone(), model),
        ),
        Wire::Gemini => (
            provider.google_uri(model, "countTokens"),
            translated(plan, &ctx.body)?.into(),
        ),
        Wire::Bedrock => (
            provider.bedrock_op_uri(model, "count-tokens"),
            translated(plan, &ctx.body)?.into(),
        ),
        Wire::OpenAi => {
            return Err(crate::translate::bad(
                "model",
                &format!(
                    "token counting is not available for `{}`: its provider ({}) has no token-counting API",
                    model,
                    provider.kind.as_str()
                ),
            )
            .into());
        }
    };
    Ok((uri.map_err(|_| ApiError::Internal)?, body))
}

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
        let n = v
            .get(if plan.wire == Wire::Bedrock {
                "inputTokens"
            } else {
                "totalTokens"
            })
            .and_then(Value::as_u64)
            .ok_or(ApiError::UpstreamBody)?;
        serde_json::to_vec(&json!({ "input_tokens": n }))
            .map_err(|_| ApiError::Internal)?
            .into()
    } else {
        plan.error(status.as_u16(), collected, aws_error_type(&headers))
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
    };
    let (uri, body) = request(ctx, c, &plan).map_err(Step::Final)?;
    let upstream = ctx.request(&p, uri, body).await?;
    let inflight = c.endpoint.start();
    let sent = p.sent(state);
    let up = match fetch(state, &p, upstream).await {
        Ok(up) => up,
        Err(e) => return Err(sent.failed(p.class_of(&e), Err(e), None)),
    };
    drop(inflight);
    let status = up.status;
    let credential_limited = sent.limit_credential(exhausted_for(status, &up.headers));
    let failure =
        failure_of(status, &up.body).map(|class| (class, header_secs(&up.headers, "retry-after")));
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
