//! OpenAI chat completions from the client, Anthropic Messages at the provider.
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `system` and `developer` messages become the top-level `system`, in order;
//! - text and image parts map to `text` and `image` blocks (data URLs as base64 sources,
//!   other URLs as URL sources);
//! - `max_completion_tokens` or `max_tokens` become `max_tokens` (default 4096: Anthropic
//!   requires it); `stop` becomes `stop_sequences`; `temperature`, `top_p` pass;
//!   `user` becomes `metadata.user_id`;
//! - `n` > 1, tools and tool messages, `response_format` other than `text`, `logprobs` are
//!   refused with a 400 naming the parameter; penalties, `seed` and `logit_bias` are
//!   dropped (Anthropic has no equivalent and they do not change what is asked).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::proxy::error::ApiError;

pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::BadRequest(format!("{param}: {message}"))
}

fn text_of_parts(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                _ => Err(bad(param, "only text parts are allowed here")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(bad(param, "expected a string or an array of parts")),
    }
}

fn image_block(part: &Value, param: &str) -> Result<Value, ApiError> {
    let url = part
        .get("image_url")
        .and_then(|i| i.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(param, "image_url.url is required"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad(param, "malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad(param, "data URLs must be base64"))?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

fn content_blocks(content: &Value, param: &str) -> Result<Value, ApiError> {
    match content {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("{param}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                    Some("image_url") => image_block(p, &at),
                    Some(other) => Err(bad(&at, &format!("content parts of type {other:?} cannot be sent to an Anthropic model"))),
                    None => Err(bad(&at, "type is required")),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Err(bad(param, "expected a string or an array of parts")),
    }
}

/// The Anthropic request for an OpenAI chat request, sending `model`.
pub fn request(body: &[u8], model: &str) -> Result<Vec<u8>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "We could not parse the JSON body of your request. ({e})"
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("The request body must be a JSON object.".into()))?;
    for refused in [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "logprobs",
        "top_logprobs",
        "audio",
        "prediction",
    ] {
        if obj
            .get(refused)
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(bad(
                refused,
                "not supported for Anthropic models through this gateway yet",
            ));
        }
    }
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(bad("n", "Anthropic models return one choice; n must be 1"));
    }
    if let Some(format) = obj.get("response_format")
        && format
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
    {
        return Err(bad(
            "response_format",
            "JSON mode is not supported for Anthropic models through this gateway yet",
        ));
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "a non-empty array is required"))?;
    let mut system = Vec::new();
    let mut out_messages = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                system.push(text_of_parts(content, &format!("{param}.content"))?)
            }
            "user" | "assistant" => {
                if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
                    return Err(bad(
                        &param,
                        "tool calls are not supported for Anthropic models through this gateway yet",
                    ));
                }
                out_messages.push(json!({"role": role, "content": content_blocks(content, &format!("{param}.content"))?}));
            }
            "tool" | "function" => {
                return Err(bad(
                    &param,
                    "tool results are not supported for Anthropic models through this gateway yet",
                ));
            }
            _ => {
                return Err(bad(
                    &format!("{param}.role"),
                    "must be system, developer, user or assistant",
                ));
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    let max_tokens = obj
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| obj.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    out.insert("messages".into(), Value::Array(out_messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    for key in ["temperature", "top_p", "stream"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match obj.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = obj.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|_| ApiError::Internal)
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached}
    })
}

/// The OpenAI chat completion for an Anthropic message.
pub fn response(body: &[u8], created: i64) -> Result<Vec<u8>, ApiError> {
    let m: Value = serde_json::from_slice(body).map_err(|_| ApiError::UpstreamStatus(200))?;
    let text: String = m
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let stop = m
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let out = json!({
        "id": format!("chatcmpl-{}", m.get("id").and_then(Value::as_str).unwrap_or("")),
        "object": "chat.completion",
        "created": created,
        "model": m.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(stop)
        }],
        "usage": usage(m.get("usage").unwrap_or(&Value::Null))
    });
    serde_json::to_vec(&out).map_err(|_| ApiError::Internal)
}

/// An Anthropic error body as an OpenAI error body (the status is kept by the caller).
pub fn error(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("The provider returned an error.");
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    serde_json::to_vec(
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
    .unwrap_or_default()
}

/// Turns Anthropic stream events into OpenAI chunks, as they arrive.
#[derive(Debug)]
pub struct StreamTranslator {
    id: String,
    model: Value,
    created: i64,
    include_usage: bool,
    usage: Value,
    done: bool,
    /// The JSON of a content chunk around its text, built at `message_start`, so the
    /// events that are most of a stream (text deltas) cost one small parse and a copy.
    text_prefix: String,
    text_suffix: &'static str,
}

/// Just enough of an event to recognise a text delta without building a document.
#[derive(Deserialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<TextDelta<'a>>,
}

#[derive(Deserialize)]
struct TextDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

impl StreamTranslator {
    pub fn new(created: i64, include_usage: bool) -> Self {
        Self {
            id: String::new(),
            model: Value::Null,
            created,
            include_usage,
            usage: json!({}),
            done: false,
            text_prefix: String::new(),
            text_suffix: "",
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {v}\n\n")
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> String {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }

    /// The OpenAI SSE text for one Anthropic event (often empty).
    pub fn event(&mut self, event: &crate::sse::Event) -> String {
        if !self.text_prefix.is_empty()
            && let Ok(e) = serde_json::from_str::<TextDeltaEvent<'_>>(&event.data)
            && e.kind == "content_block_delta"
            && let Some(TextDelta {
                kind,
                text: Some(text),
            }) = e.delta
            && kind == "text_delta"
        {
            let text = serde_json::to_string(&text).unwrap_or_default();
            let mut out = String::with_capacity(self.text_prefix.len() + text.len() + 64);
            out.push_str("data: ");
            out.push_str(&self.text_prefix);
            out.push_str(&text);
            out.push_str(self.text_suffix);
            out.push_str("\n\n");
            return out;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return String::new();
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.name.as_str());
        match kind {
            "message_start" => {
                let m = data.get("message").cloned().unwrap_or(Value::Null);
                self.id = format!(
                    "chatcmpl-{}",
                    m.get("id").and_then(Value::as_str).unwrap_or("")
                );
                self.model = m.get("model").cloned().unwrap_or(Value::Null);
                if let Some(u) = m.get("usage").and_then(Value::as_object) {
                    self.merge_usage(u);
                }
                self.text_prefix = format!(
                    "{{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":",
                    Value::String(self.id.clone()),
                    self.created,
                    self.model
                );
                self.text_suffix = if self.include_usage {
                    "},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}"
                } else {
                    "},\"logprobs\":null,\"finish_reason\":null}]}"
                };
                self.delta(json!({"role": "assistant", "content": ""}), None)
            }
            // Text deltas after `message_start` take the fast path above.
            "content_block_delta" => match data.pointer("/delta/type").and_then(Value::as_str) {
                Some("text_delta") => {
                    let text = data.pointer("/delta/text").cloned().unwrap_or(Value::Null);
                    self.delta(json!({"content": text}), None)
                }
                _ => String::new(),
            },
            "message_delta" => {
                if let Some(u) = data.get("usage").and_then(Value::as_object) {
                    self.merge_usage(u);
                }
                let stop = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.delta(json!({}), Some(finish_reason(stop)))
            }
            "message_stop" => self.finish(),
            "error" => {
                self.done = true;
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider error");
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                format!(
                    "data: {}\n\n",
                    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
                )
            }
            _ => String::new(),
        }
    }

    fn merge_usage(&mut self, u: &Map<String, Value>) {
        for (k, v) in u {
            if !v.is_null() {
                self.usage[k] = v.clone();
            }
        }
    }

    /// The closing chunks: usage (when asked for) and `[DONE]`.
    pub fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        let mut out = String::new();
        if self.include_usage {
            out += &self.chunk(json!([]), Some(usage(&self.usage)));
        }
        out += "data: [DONE]\n\n";
        out
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;
