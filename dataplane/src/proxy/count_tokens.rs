//! `POST /v1/messages/count_tokens` (Anthropic): passed through to Anthropic (and to
//! Claude on Vertex AI's `count-tokens` model); for Gemini and Bedrock models the request
//! is translated as a message would be, and sent to `countTokens` / `CountTokens`.
//! OpenAI-format providers have no token-counting API, so the request is refused there.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::base::{Api, Body, now_unix};
use crate::config::model::{ProviderKind, Wire};
use crate::error::ApiError;
use crate::pipeline::State;
use crate::pipeline::attempt::{respond, send};
use crate::pipeline::record::{Completion, Labels, answer};
use crate::pipeline::route::resolve;
use crate::provider::request::build_upstream;
use crate::provider::urls::Urls;
use crate::translate::plan::Plan;

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = forward(state, req, started, &mut labels).await;
    answer(state, result, Api::Anthropic, started, labels)
}

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

async fn forward(
    state: &State,
    req: Request<Incoming>,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (body, head, to, snapshot, key) = resolve(state, &parts, body, labels).await?;
    // Free at the provider, but a request like any other to the key's limits, and refused
    // when its budgets could not take the prompt it counts.
    let least =
        crate::pipeline::admission::prompt_demand(state, &snapshot, &head, &to.route, body.len());
    drop(snapshot);
    let reservation =
        match crate::pipeline::admission::admit_free(state, &key, &parts.headers, least).await {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                return Ok(crate::pipeline::record::refused(
                    state,
                    &key,
                    e,
                    Api::Anthropic,
                    started,
                    labels,
                ));
            }
        };
    let model: &str = &to.model;
    let wire = to.provider.wire(model);
    let plan = Plan {
        client: Api::Anthropic,
        wire,
        provider: to.provider.kind,
        model: to.model.clone(),
        stream: false,
        include_usage: false,
        created: now_unix(),
        id: String::new(),
        json_mode: false,
    };
    let (uri, upstream_body) = match wire {
        Wire::Anthropic | Wire::VertexAnthropic => {
            (to.provider.count_tokens_uri(), head.with_model(body, model))
        }
        Wire::Gemini => (
            to.provider.google_uri(model, "countTokens"),
            translated(&plan, &body)?.into(),
        ),
        Wire::Bedrock => (
            to.provider.bedrock_op_uri(model, "count-tokens"),
            translated(&plan, &body)?.into(),
        ),
        Wire::OpenAi => {
            return Err(crate::translate::bad(
                "model",
                &format!(
                    "token counting is not available for `{}`: its provider ({}) has no token-counting API",
                    model,
                    to.provider.kind.as_str()
                ),
            )
            .into());
        }
    };
    let uri = uri.map_err(|_| ApiError::Internal)?;
    let upstream = build_upstream(
        state.upstream.for_object(&to.provider.id),
        &to.provider,
        to.credential(),
        &parts.headers,
        Api::Anthropic,
        uri,
        upstream_body,
    )
    .await?;
    let deadline = to.deadline(started);
    let response = send(state, &to.provider, upstream, deadline).await?;
    let (mut up_parts, up_body) = response.into_parts();
    let collected = crate::pipeline::attempt::read_answer(state, up_body, deadline).await?;
    let status = up_parts.status;
    let out: Bytes = if plan.passes_response() {
        collected
    } else if status.is_success() {
        let v: Value = serde_json::from_slice(&collected).map_err(|_| ApiError::UpstreamBody)?;
        let n = v
            .get(if wire == Wire::Bedrock {
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
        plan.error(
            status.as_u16(),
            collected,
            crate::provider::request::aws_error_type(&up_parts.headers),
        )
    };
    if !plan.passes_response() {
        // The provider's headers describe its own API's answer, not this one.
        up_parts.headers = HeaderMap::new();
        up_parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    up_parts.headers.remove(header::CONTENT_LENGTH);
    Completion {
        metrics: state.metrics.clone(),
        labels: std::mem::take(labels),
        status,
        started,
        // Nothing is charged but the request.
        usage: Some(crate::metering::usage::Usage::default()),
        credential: None,
        reservation: Some(reservation),
        price: None,
        counted: None,
    }
    .record();
    let mut response = respond(status, crate::base::full(out), &up_parts.headers, &to);
    crate::pipeline::admission::quota_headers(state, &key, response.headers_mut());
    Ok(response)
}
