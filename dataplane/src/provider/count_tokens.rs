//! Token counting (Anthropic's `count_tokens` from the client) at each API family: passed
//! through to Anthropic and to Claude on Vertex AI's `count-tokens` model; for Gemini and
//! Bedrock models the request is translated as a message would be, and only the members
//! that count are sent to `countTokens` / `CountTokens`. OpenAI's API has no token
//! counting, so the request is refused there.

use bytes::Bytes;
use http::Uri;
use serde_json::{Value, json};

use super::plan::Plan;
use super::{anthropic, bedrock, gemini};
use crate::config::model::{Provider, Wire};
use crate::error::ApiError;
use crate::translate::head::ChatHead;
use crate::translate::{TranslateError, bad, parse_client_json};

/// The chat body `plan` would send for the client's counting request.
fn translated(plan: &Plan, client: &[u8]) -> Result<Value, TranslateError> {
    let mut v = parse_client_json(client)?;
    if let Some(obj) = v.as_object_mut() {
        for extra in ["max_tokens", "stream"] {
            if obj.contains_key(extra) {
                return Err(bad(extra, "Extra inputs are not permitted"));
            }
        }
        // Needed by the message translation; not sent.
        obj.insert("max_tokens".into(), json!(1));
    }
    // An Anthropic client's plan keeps nothing from its request: a copy does.
    plan.clone().request_value(v)
}

/// The provider's URL and body for counting the client's request (`head`, `body`) with
/// `plan`.
pub fn request(
    plan: &Plan,
    provider: &Provider,
    head: &ChatHead,
    body: &Bytes,
) -> Result<(Uri, Bytes), ApiError> {
    let model = &*plan.model;
    let (uri, body) = match plan.wire {
        Wire::Anthropic | Wire::VertexAnthropic => (
            anthropic::count_tokens_uri(provider),
            head.with_model(body.clone(), model),
        ),
        Wire::Gemini => {
            let mut chat = translated(plan, body)?;
            let out = gemini::count_tokens_body(provider, model, &mut chat);
            (
                gemini::method_uri(provider, model, "countTokens"),
                to_bytes(&out)?,
            )
        }
        Wire::Bedrock => {
            let mut chat = translated(plan, body)?;
            let out = bedrock::count_tokens_body(&mut chat);
            (
                bedrock::op_uri(provider, model, "count-tokens"),
                to_bytes(&out)?,
            )
        }
        Wire::OpenAi => {
            return Err(bad(
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

fn to_bytes(v: &Value) -> Result<Bytes, ApiError> {
    Ok(serde_json::to_vec(v)
        .map_err(|_| ApiError::Internal)?
        .into())
}

/// The count in a successful translated answer (Gemini, Bedrock).
pub fn counted(plan: &Plan, answer: &Value) -> Option<u64> {
    match plan.wire {
        Wire::Bedrock => bedrock::counted(answer),
        _ => gemini::counted(answer),
    }
}
