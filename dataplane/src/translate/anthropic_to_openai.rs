//! Anthropic Messages from the client, OpenAI chat completions at the provider (and, via
//! OpenAI's format, every other provider format).
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `system` (a string or text blocks) becomes the first, `system`, message;
//! - `text` and `image` blocks become text and `image_url` parts (base64 sources as data
//!   URLs); `tool_use` blocks become the assistant's `tool_calls`; `tool_result` blocks
//!   become `tool` messages, placed before the rest of their user turn;
//! - `max_tokens` becomes `max_completion_tokens` (OpenAI, Azure) or `max_tokens`
//!   (OpenAI-compatible servers, many of which know only that one); `stop_sequences`
//!   becomes `stop`; `temperature`, `top_p` pass; `metadata.user_id` becomes `user`;
//! - tools and `tool_choice` map to function tools (`any` -> `required`), and
//!   `disable_parallel_tool_use` to `parallel_tool_calls: false`;
//! - `thinking` and thinking blocks in the history are kept (as the pivot's extension
//!   members `thinking` and `thinking_blocks`) when the request goes on to Bedrock, whose
//!   Claude models take them as `reasoningContent`, signatures included; elsewhere they are
//!   dropped, as is `top_k`: OpenAI's chat API has no equivalent;
//! - `cache_control` on system blocks, user text and image blocks and tools is kept on the
//!   matching OpenAI part or tool when the request goes on to Bedrock (which turns it into
//!   a `cachePoint`), and dropped otherwise (OpenAI caches prompts by itself, Gemini has no
//!   per-request marker);
//! - `document`, `search_result` and server-tool blocks are refused with a 400.

use serde_json::{Map, Value, json};

use super::TranslateError;
use super::{Usage, bad, sse_event};

/// Which token limit field the provider understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTokensField {
    MaxCompletionTokens,
    MaxTokens,
}

fn text_of_system(system: &Value) -> Result<String, TranslateError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => Ok(blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n\n")),
        _ => Err(bad(
            "system",
            "expected a string or an array of text blocks",
        )),
    }
}

fn image_part(block: &Value, param: &str) -> Result<Value, TranslateError> {
    let source = block
        .get("source")
        .ok_or_else(|| bad(&format!("{param}.source"), "is required"))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            source.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => {
            return Err(bad(
                &format!("{param}.source.type"),
                "must be base64 or url for a non-Anthropic model",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_result_content(block: &Value) -> Value {
    match block.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => Value::String(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => Value::String(String::new()),
    }
}

/// `part` with `block`'s `cache_control`, when the request keeps them.
fn cached(mut part: Value, block: &Value, keep: bool) -> Value {
    if keep && let Some(cc) = block.get("cache_control") {
        part["cache_control"] = cc.clone();
    }
    part
}

/// The OpenAI messages for one Anthropic message.
fn messages_of(
    m: &Value,
    i: usize,
    out: &mut Vec<Value>,
    keep: bool,
) -> Result<(), TranslateError> {
    let param = format!("messages[{i}]");
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    if role != "user" && role != "assistant" {
        return Err(bad(&format!("{param}.role"), "must be user or assistant"));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(bad(
                &format!("{param}.content"),
                "expected a string or an array of content blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{param}.content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                if role == "assistant" {
                    text.push_str(t);
                } else {
                    parts.push(cached(json!({"type": "text", "text": t}), b, keep));
                }
            }
            Some("image") if role == "user" => parts.push(cached(image_part(b, &at)?, b, keep)),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                }
            })),
            Some("tool_result") if role == "user" => {
                let mut content = tool_result_content(b);
                if b.get("is_error") == Some(&Value::Bool(true))
                    && let Value::String(s) = &content
                {
                    content = Value::String(format!("Error: {s}"));
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": content,
                }));
            }
            // Only Bedrock's Claude can check the signatures; elsewhere they are dropped.
            Some("thinking" | "redacted_thinking") => {
                if keep && role == "assistant" {
                    thinking.push(b.clone());
                }
            }
            Some(other) => {
                return Err(bad(
                    &at,
                    &format!("{other} blocks cannot be sent to this model"),
                ));
            }
            None => return Err(bad(&format!("{at}.type"), "is required")),
        }
    }
    if role == "assistant" {
        if text.is_empty() && calls.is_empty() {
            return Ok(());
        }
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() {
            msg["thinking_blocks"] = Value::Array(thinking);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        // A lone text block is sent as a string, which every OpenAI-compatible server takes.
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" && only.get("cache_control").is_none() => {
                only["text"].clone()
            }
            _ => Value::Array(parts),
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn tools(obj: &Value, keep: bool) -> Result<Option<Value>, TranslateError> {
    let Some(list) = super::tools_array(obj)? else {
        return Ok(None);
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            if let Some(kind) = t.get("type").and_then(Value::as_str)
                && kind != "custom"
            {
                return Err(bad(
                    &at,
                    &format!("server tools ({kind}) run only on Anthropic models"),
                ));
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.name"), "is required"))?;
            let mut f = json!({
                "name": name,
                "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = t.get("description").and_then(Value::as_str) {
                f["description"] = json!(d);
            }
            Ok(cached(json!({"type": "function", "function": f}), t, keep))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| Some(Value::Array(v)))
}

/// The OpenAI chat request for an Anthropic request, sending `model`. Streams always ask
/// for usage, so it can be metered and reported in `message_delta`. `keep_cache_control`
/// keeps `cache_control` markers on parts and tools, for a next step that honours them.
pub fn request_value(
    obj: &Value,
    model: &str,
    field: MaxTokensField,
    keep_cache_control: bool,
) -> Result<Value, TranslateError> {
    let keep = keep_cache_control;
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "Field required"))?;
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("max_tokens", "Field required"))?;
    let mut out_messages = Vec::new();
    if let Some(system) = obj.get("system").filter(|v| !v.is_null()) {
        match system.as_array() {
            Some(blocks) if keep && blocks.iter().any(|b| b.get("cache_control").is_some()) => {
                let parts: Vec<Value> = blocks
                    .iter()
                    .filter_map(|b| {
                        let t = b.get("text").and_then(Value::as_str)?;
                        Some(cached(json!({"type": "text", "text": t}), b, keep))
                    })
                    .collect();
                out_messages.push(json!({"role": "system", "content": parts}));
            }
            _ => {
                let text = text_of_system(system)?;
                if !text.is_empty() {
                    out_messages.push(json!({"role": "system", "content": text}));
                }
            }
        }
    }
    for (i, m) in messages.iter().enumerate() {
        messages_of(m, i, &mut out_messages, keep)?;
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(out_messages));
    let field = match field {
        MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        MaxTokensField::MaxTokens => "max_tokens",
    };
    out.insert(field.into(), json!(max_tokens));
    for key in ["temperature", "top_p"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = obj
        .get("stop_sequences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        out.insert("stop".into(), Value::Array(stop.clone()));
    }
    if let Some(user) = obj.pointer("/metadata/user_id").and_then(Value::as_str) {
        out.insert("user".into(), json!(user));
    }
    if obj.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(t) = tools(obj, keep)? {
        out.insert("tools".into(), t);
    }
    if keep && let Some(t) = obj.get("thinking").filter(|t| !t.is_null()) {
        out.insert("thinking".into(), t.clone());
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = choice
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("tool_choice.name", "is required"))?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
        };
        out.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn anthropic_usage(u: Usage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached),
        "output_tokens": u.output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached,
    })
}

fn message_id(openai_id: Option<&str>) -> String {
    let id = openai_id.unwrap_or("");
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// The Anthropic message for an OpenAI chat completion.
pub fn response_value(c: &Value) -> Value {
    let choice = c.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content: Vec<Value> = message
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": super::arguments_object(call.pointer("/function/arguments")),
        }));
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let usage = Usage::from_openai(c.get("usage").unwrap_or(&Value::Null)).unwrap_or_default();
    json!({
        "id": message_id(c.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": c.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage(usage),
    })
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An OpenAI error body (any provider's, after translation to OpenAI's) as an Anthropic one.
pub fn error(body: &[u8], status: u16) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("The provider returned an error.");
    serde_json::to_vec(
        &json!({"type": "error", "error": {"type": error_type(status), "message": message}}),
    )
    .unwrap_or_default()
}

/// Anthropic's `error` event.
#[derive(Debug, PartialEq, Eq)]
enum Block {
    None,
    Thinking,
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// Turns OpenAI chunks into Anthropic events, as they arrive: text deltas become
/// `text_delta`s and tool-call argument fragments `input_json_delta`s, each written as soon
/// as its chunk is read.
#[derive(Debug)]
pub struct StreamTranslator {
    started: bool,
    done: bool,
    open: Block,
    next_index: u64,
    finish: Option<String>,
    usage: Option<Usage>,
}

impl Default for StreamTranslator {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamTranslator {
    pub fn new() -> Self {
        Self {
            started: false,
            done: false,
            open: Block::None,
            next_index: 0,
            finish: None,
            usage: None,
        }
    }

    fn close_block(&mut self, out: &mut String) {
        if self.open != Block::None {
            out.push_str(&sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_index - 1}),
            ));
            self.open = Block::None;
        }
    }

    fn open_block(&mut self, block: Block, content_block: Value, out: &mut String) -> u64 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = block;
        out.push_str(&sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn chunk(&mut self, c: &Value) -> String {
        let mut out = String::new();
        if let Some(error) = c.get("error") {
            self.done = true;
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            out.push_str(&super::anthropic_error_event(message));
            return out;
        }
        if !self.started {
            self.started = true;
            out.push_str(&sse_event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": message_id(c.get("id").and_then(Value::as_str)),
                    "type": "message",
                    "role": "assistant",
                    "model": c.get("model").cloned().unwrap_or(Value::Null),
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            ));
        }
        let chunk = super::PivotChunk::of(c);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if let Some(t) = chunk.thinking() {
            self.thinking_delta(t, &mut out);
        }
        if let Some(text) = chunk.text() {
            let index = if self.open == Block::Text {
                self.next_index - 1
            } else {
                self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out)
            };
            out.push_str(&sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in chunk.calls() {
            let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = if self.open == Block::Tool(call_index) {
                self.next_index - 1
            } else {
                self.open_block(
                    Block::Tool(call_index),
                    json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": {},
                    }),
                    &mut out,
                )
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                out.push_str(&sse_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(finish) = chunk.finish {
            self.finish = Some(finish.to_string());
            self.close_block(&mut out);
        }
        out
    }

    /// A piece of a thinking block (the pivot's `delta.thinking_block`: `thinking` text, its
    /// `signature`, or a redacted block's `data`).
    fn thinking_delta(&mut self, t: &Value, out: &mut String) {
        if let Some(data) = t.get("data") {
            self.open_block(
                Block::Thinking,
                json!({"type": "redacted_thinking", "data": data}),
                out,
            );
            self.close_block(out);
            return;
        }
        let index = if self.open == Block::Thinking {
            self.next_index - 1
        } else {
            self.open_block(
                Block::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            )
        };
        let delta = if let Some(text) = t.get("thinking") {
            json!({"type": "thinking_delta", "thinking": text})
        } else if let Some(sig) = t.get("signature") {
            json!({"type": "signature_delta", "signature": sig})
        } else {
            return;
        };
        out.push_str(&sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    fn close_message(&mut self) -> String {
        self.done = true;
        let mut out = String::new();
        self.close_block(&mut out);
        let usage = self.usage.unwrap_or_default();
        let mut u = anthropic_usage(usage);
        if let Some(obj) = u.as_object_mut() {
            obj.remove("cache_creation_input_tokens");
        }
        out.push_str(&sse_event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_deref().unwrap_or("stop")), "stop_sequence": null},
                "usage": u}),
        ));
        out.push_str(&sse_event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

impl super::StreamStep for StreamTranslator {
    fn event(&mut self, event: &crate::base::sse::Event) -> String {
        if self.done {
            return String::new();
        }
        match super::PivotEvent::of(event) {
            super::PivotEvent::Done => self.close_message(),
            super::PivotEvent::Chunk(c) => self.chunk(&c),
            super::PivotEvent::Other => String::new(),
        }
    }

    fn end(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        super::anthropic_error_event(super::STREAM_CUT)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::StreamStep;

    #[test]
    fn tool_results_come_before_the_rest_of_the_turn() {
        let req = json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "checking"}, {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}, {"type": "text", "text": "thanks"}]}
        ]});
        let out = request_value(&req, "gpt", MaxTokensField::MaxTokens, false).unwrap();
        let roles: Vec<&str> = out["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "user"]);
        assert_eq!(
            out["messages"][1]["tool_calls"][0]["function"]["arguments"],
            r#"{"c":"Paris"}"#
        );
        assert_eq!(out["max_tokens"], 10);
    }

    #[test]
    fn max_tokens_is_required() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        assert!(matches!(
            request_value(&req, "g", MaxTokensField::MaxTokens, false),
            Err(TranslateError::BadRequest(m)) if m.starts_with("max_tokens")
        ));
    }

    #[test]
    fn early_end_is_an_error_not_a_stop() {
        let mut t = StreamTranslator::new();
        let first = t.event(&crate::base::sse::Event {
            name: String::new(),
            data: r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}"#.into(),
        });
        assert!(first.contains("message_start") && first.contains("text_delta"));
        let end = t.end();
        assert!(end.starts_with("event: error"), "{end}");
        assert!(!end.contains("message_stop"));
    }
}
