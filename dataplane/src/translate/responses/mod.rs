//! OpenAI's Responses API from the client, the OpenAI chat pivot towards providers that do
//! not serve it (Anthropic, Gemini, Vertex AI, Bedrock, chat-only OpenAI-compatible
//! servers): the request as a chat request ([`request`]), a chat completion as a Response
//! ([`response`]), chat chunks as the Responses API's typed events ([`stream`]).
//!
//! These targets store nothing: `previous_response_id`, `store: true`, conversations and
//! item references are refused with a 400 that says to send the whole input. Claude's
//! thinking comes back as `reasoning` items whose `encrypted_content` carries the thinking
//! block (text and signature), so that a client that sends its items back (as agent
//! frameworks do) gives Claude the blocks it checks.

pub mod request;
pub mod stream;

use base64::Engine;
use serde_json::{Value, json};

use crate::metering::usage::Usage;

/// The output limit Claude gets for its answer beside a thinking budget, when the client
/// sets none.
pub(crate) const CLAUDE_ANSWER_TOKENS: u64 = 4096;

/// How the target takes what the Responses API asks beyond chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An OpenAI-format chat server: `reasoning_effort`, and the token limit in this
    /// field.
    Chat(crate::translate::anthropic_to_openai::MaxTokensField),
    /// Claude (Anthropic, Vertex AI, Bedrock): extended thinking with a budget.
    Claude,
    /// Gemini: `reasoning_effort` becomes its thinking budget.
    Gemini,
    /// A model that cannot be asked to reason (Bedrock's other models).
    NoReasoning,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Chat(_) => "this OpenAI-compatible server",
            Self::Claude => "a Claude model",
            Self::Gemini => "a Gemini model",
            Self::NoReasoning => "this model",
        }
    }

    fn max_tokens_field(self) -> &'static str {
        match self {
            Self::Chat(crate::translate::anthropic_to_openai::MaxTokensField::MaxTokens) => {
                "max_tokens"
            }
            _ => "max_completion_tokens",
        }
    }
}

/// What a translated answer echoes of its request (instructions, tools, settings), as a
/// Response object with no output yet.
#[derive(Clone, Debug)]
pub struct Echo {
    skeleton: Value,
    /// The client asked for reasoning summaries: Claude's thinking text is given as one.
    summary: bool,
}

impl Echo {
    pub fn of(req: &Value) -> Self {
        let get = |k: &str, default: Value| {
            req.get(k)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(default)
        };
        let reasoning = req.get("reasoning").filter(|r| r.is_object());
        let summary = reasoning
            .and_then(|r| r.get("summary").or_else(|| r.get("generate_summary")))
            .is_some_and(|s| s.is_string());
        let skeleton = json!({
            "id": "",
            "object": "response",
            "created_at": 0,
            "status": "in_progress",
            "error": null,
            "incomplete_details": null,
            "instructions": get("instructions", Value::Null),
            "max_output_tokens": get("max_output_tokens", Value::Null),
            "metadata": get("metadata", json!({})),
            "model": get("model", Value::Null),
            "output": [],
            "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
            "previous_response_id": null,
            "reasoning": {
                "effort": reasoning.and_then(|r| r.get("effort")).cloned().unwrap_or(Value::Null),
                "summary": reasoning.and_then(|r| r.get("summary")).cloned().unwrap_or(Value::Null),
            },
            "store": false,
            "temperature": get("temperature", Value::Null),
            "text": get("text", json!({"format": {"type": "text"}})),
            "tool_choice": get("tool_choice", json!("auto")),
            "tools": get("tools", json!([])),
            "top_p": get("top_p", Value::Null),
            "truncation": get("truncation", json!("disabled")),
            "usage": null,
            "user": get("user", Value::Null),
        });
        Self { skeleton, summary }
    }

    /// The JSON mode of the request (`text.format` json_object or json_schema).
    pub fn json_mode(&self) -> bool {
        matches!(
            self.skeleton
                .pointer("/text/format/type")
                .and_then(Value::as_str),
            Some("json_object" | "json_schema")
        )
    }

    /// The Response at the start of a stream (status `in_progress`, no output).
    fn started(&self, id: &str, created: i64, model: &Value) -> Value {
        let mut r = self.skeleton.clone();
        r["id"] = json!(id);
        r["created_at"] = json!(created);
        if !model.is_null() {
            r["model"] = model.clone();
        }
        r
    }
}

/// The prefix of the `encrypted_content` the gateway gives Claude's thinking.
const THINKING_PREFIX: &str = "tollgate.thinking.v1.";

/// A thinking block (`{type: thinking, thinking, signature}` or
/// `{type: redacted_thinking, data}`) as a reasoning item's `encrypted_content`.
fn reasoning_content(block: &Value) -> String {
    let plain = serde_json::to_vec(block).unwrap_or_default();
    format!(
        "{THINKING_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain)
    )
}

/// The thinking block a reasoning item's `encrypted_content` carries, when the gateway
/// wrote it.
pub(crate) fn reasoning_block(content: &str) -> Option<Value> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(content.strip_prefix(THINKING_PREFIX)?)
        .ok()?;
    let block: Value = serde_json::from_slice(&raw).ok()?;
    matches!(
        block.get("type").and_then(Value::as_str),
        Some("thinking" | "redacted_thinking")
    )
    .then_some(block)
}

/// A reasoning output item for a thinking block.
fn reasoning_item(id: String, block: &Value, summary: bool) -> Value {
    let text = block.get("thinking").and_then(Value::as_str).unwrap_or("");
    let summary = if summary && !text.is_empty() {
        json!([{"type": "summary_text", "text": text}])
    } else {
        json!([])
    };
    json!({
        "type": "reasoning",
        "id": id,
        "summary": summary,
        "encrypted_content": reasoning_content(block),
    })
}

/// The Responses API's `usage` for the pivot's usage.
pub(crate) fn usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output,
    })
}

/// The id stem of a translated answer: the chat completion's id without its `chatcmpl-`,
/// kept to the characters of OpenAI's ids.
fn stem(chat_id: Option<&str>) -> String {
    let raw = chat_id.unwrap_or("");
    let raw = raw.strip_prefix("chatcmpl-").unwrap_or(raw);
    let stem: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    if stem.is_empty() { "0".into() } else { stem }
}

/// The status and `incomplete_details` for a chat `finish_reason`.
fn status(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A message output item with one text (or refusal) part.
fn message_item(id: String, part: Value, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": [part]})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: String, call_id: &Value, name: &Value, arguments: &Value, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// The Response for a chat completion (choice 0) of a request that `echo` describes.
pub fn response(chat: &Value, echo: &Echo) -> Value {
    let stem = stem(chat.get("id").and_then(Value::as_str));
    let choice = chat.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let (status, incomplete) = status(finish);
    let mut output = Vec::new();
    for (n, block) in message
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        output.push(reasoning_item(
            format!("rs_{stem}_{n}"),
            block,
            echo.summary,
        ));
    }
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(format!("msg_{stem}"), text_part(text), status));
    } else if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        let part = json!({"type": "refusal", "refusal": refusal});
        output.push(message_item(format!("msg_{stem}"), part, status));
    }
    for (n, call) in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        output.push(call_item(
            format!("fc_{stem}_{n}"),
            call.get("id").unwrap_or(&Value::Null),
            f.get("name").unwrap_or(&Value::Null),
            f.get("arguments").unwrap_or(&json!("")),
            "completed",
        ));
    }
    let mut r = echo.started(
        &format!("resp_{stem}"),
        chat.get("created").and_then(Value::as_i64).unwrap_or(0),
        chat.get("model").unwrap_or(&Value::Null),
    );
    r["status"] = json!(status);
    r["incomplete_details"] = incomplete;
    r["output"] = Value::Array(output);
    r["usage"] = usage(
        chat.get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default(),
    );
    r
}

#[cfg(test)]
mod tests;
