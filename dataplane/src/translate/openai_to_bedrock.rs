//! OpenAI chat completions from the client, Amazon Bedrock Converse / ConverseStream at the
//! provider.
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `system`/`developer` messages become `system` text blocks;
//! - text parts map to `text` blocks, `data:` images to `image` blocks with `bytes`
//!   (Bedrock cannot fetch URLs: other image URLs are refused with a 400);
//! - assistant `tool_calls` become `toolUse` blocks and `tool` messages `toolResult` blocks
//!   in one user turn; `tools` -> `toolConfig.tools[].toolSpec`, `tool_choice` auto /
//!   required / a function -> `auto` / `any` / `tool` (`none` is refused: Converse has no
//!   such choice);
//! - `max_completion_tokens`/`max_tokens` -> `inferenceConfig.maxTokens`, `stop` ->
//!   `stopSequences`, `temperature`, `top_p` -> `topP`; a `cache_control` on a part adds a
//!   `cachePoint` after it;
//! - `n` > 1, `response_format` other than `text`, `logprobs`, `audio` are refused with a
//!   400; `seed`, penalties, `user`, `logit_bias`, `parallel_tool_calls` are dropped.

use serde_json::{Map, Value, json};

use super::{Image, Usage, bad, openai_image, openai_text, sse_data};
use crate::proxy::error::ApiError;

const PROVIDER: &str = "Bedrock";

fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn blocks_of(content: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    match content {
        Value::String(s) if !s.is_empty() => out.push(json!({"text": s})),
        Value::String(_) | Value::Null => {}
        Value::Array(parts) => {
            for (i, p) in parts.iter().enumerate() {
                let at = format!("{param}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out
                        .push(json!({"text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                    Some("image_url") => match openai_image(p, &at)? {
                        Image::Base64 { media_type, data } => {
                            let format = image_format(media_type).ok_or_else(|| {
                                bad(&at, "Bedrock takes png, jpeg, gif or webp images")
                            })?;
                            out.push(
                                json!({"image": {"format": format, "source": {"bytes": data}}}),
                            );
                        }
                        Image::Url(_) => {
                            return Err(bad(
                                &at,
                                "Bedrock models take images as data: URLs (base64), not links",
                            ));
                        }
                    },
                    Some(other) => {
                        return Err(bad(
                            &at,
                            &format!(
                                "content parts of type {other:?} cannot be sent to a Bedrock model"
                            ),
                        ));
                    }
                    None => return Err(bad(&at, "type is required")),
                }
                if p.get("cache_control").is_some() {
                    out.push(json!({"cachePoint": {"type": "default"}}));
                }
            }
        }
        _ => return Err(bad(param, "expected a string or an array of parts")),
    }
    Ok(out)
}

fn push_turn(out: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut("content").and_then(Value::as_array_mut)
    {
        existing.extend(blocks);
        return;
    }
    out.push(json!({"role": role, "content": blocks}));
}

fn tool_config(obj: &Value) -> Result<Option<Value>, ApiError> {
    let Some(list) = obj.get("tools").and_then(Value::as_array) else {
        return Ok(None);
    };
    let tools = list
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            let f = t
                .get("function")
                .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| bad(&at, "only function tools can be sent to a Bedrock model"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.function.name"), "is required"))?;
            let mut spec = json!({
                "name": name,
                "inputSchema": {"json": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))},
            });
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                spec["description"] = json!(d);
            }
            Ok(json!({"toolSpec": spec}))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut config = json!({"tools": tools});
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.as_str() {
            "auto" => config["toolChoice"] = json!({"auto": {}}),
            "required" => config["toolChoice"] = json!({"any": {}}),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "Bedrock models take auto, required or a function",
                ));
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => config["toolChoice"] = json!({"tool": {"name": name}}),
            None => return Err(bad("tool_choice", "function.name is required")),
        },
    }
    Ok(Some(config))
}

/// The Converse body for an OpenAI chat request (the model goes in the URL).
pub fn request_value(obj: &Value) -> Result<Value, ApiError> {
    super::refuse_set(
        obj,
        &[
            "logprobs",
            "top_logprobs",
            "audio",
            "prediction",
            "functions",
        ],
        PROVIDER,
    )?;
    super::refuse_n(obj, PROVIDER)?;
    if obj
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text")
    {
        return Err(bad(
            "response_format",
            "JSON mode is not supported for Bedrock models through this gateway; describe the JSON you want in the prompt, or use a tool",
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
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => {
                system.push(json!({"text": openai_text(content, &format!("{param}.content"))?}))
            }
            "user" => push_turn(
                &mut out_messages,
                "user",
                blocks_of(content, &format!("{param}.content"))?,
            ),
            "assistant" => {
                let mut blocks = blocks_of(content, &format!("{param}.content"))?;
                for (j, call) in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let at = format!("{param}.tool_calls[{j}]");
                    blocks.push(json!({"toolUse": {
                        "toolUseId": call.get("id").and_then(Value::as_str).ok_or_else(|| bad(&format!("{at}.id"), "is required"))?,
                        "name": call.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| bad(&format!("{at}.function.name"), "is required"))?,
                        "input": super::arguments_object(call.pointer("/function/arguments")),
                    }}));
                }
                push_turn(&mut out_messages, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{param}.tool_call_id"), "is required"))?;
                push_turn(
                    &mut out_messages,
                    "user",
                    vec![
                        json!({"toolResult": {"toolUseId": id, "content": [{"text": super::tool_result_text(content)}]}}),
                    ],
                );
            }
            _ => {
                return Err(bad(
                    &format!("{param}.role"),
                    "must be system, developer, user, assistant or tool",
                ));
            }
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(out_messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(n) = super::openai_max_tokens(obj) {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(stop) = super::openai_stop(obj) {
        inference.insert("stopSequences".into(), Value::Array(stop));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            inference.insert(to.into(), v.clone());
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(c) = tool_config(obj)? {
        out.insert("toolConfig".into(), c);
    }
    Ok(Value::Object(out))
}

/// OpenAI's `finish_reason` for Bedrock's `stopReason`.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

pub fn usage(u: &Value) -> Option<Usage> {
    u.as_object()?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cacheReadInputTokens");
    Some(Usage {
        input: n("inputTokens") + cached + n("cacheWriteInputTokens"),
        output: n("outputTokens"),
        cached,
        reasoning: 0,
    })
}

/// The OpenAI chat completion for a Converse response.
pub fn response_value(b: &Value, model: &str, id: &str, created: i64) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in b
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(tu) = block.get("toolUse") {
            calls.push(json!({
                "id": tu.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": tu.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": tu.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                }
            }));
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let reason = b
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let u = usage(b.get("usage").unwrap_or(&Value::Null)).unwrap_or_default();
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(reason)}],
        "usage": u.to_openai(),
    })
}

/// A Bedrock error body (`{"message": ...}`) as an OpenAI error body.
pub fn error(body: &[u8], status: u16, error_type: Option<&str>) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("The provider returned an error.");
    // `x-amzn-ErrorType` is `Name:namespace`; the name is the useful part.
    let code = error_type.map(|t| t.split(':').next().unwrap_or(t));
    serde_json::to_vec(&json!({"error": {"message": message, "type": super::openai_to_gemini::openai_error_type(status), "param": null, "code": code}}))
        .unwrap_or_default()
}

/// Turns ConverseStream events (decoded from AWS event-stream frames by
/// [`crate::eventstream`], one [`crate::sse::Event`] per frame, named by `:event-type`)
/// into OpenAI chunks as they arrive.
#[derive(Debug)]
pub struct StreamTranslator {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// Content block index -> tool call index.
    tool_blocks: Vec<(u64, usize)>,
    finish: Option<&'static str>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamTranslator {
    pub fn new(id: &str, model: &str, created: i64, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{id}"),
            model: model.to_string(),
            created,
            include_usage,
            tool_blocks: Vec::new(),
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&v)
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> String {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }

    fn close(&mut self) -> String {
        self.done = true;
        let mut out = String::new();
        if self.include_usage {
            out += &self.chunk(json!([]), Some(self.usage.unwrap_or_default().to_openai()));
        }
        out + "data: [DONE]\n\n"
    }
}

impl super::StreamStep for StreamTranslator {
    fn event(&mut self, event: &crate::sse::Event) -> String {
        if self.done {
            return String::new();
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return String::new();
        };
        match event.name.as_str() {
            "messageStart" => self.delta(json!({"role": "assistant", "content": ""}), None),
            "contentBlockStart" => {
                let Some(tu) = data.pointer("/start/toolUse") else {
                    return String::new();
                };
                let block = data
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let call = self.tool_blocks.len();
                self.tool_blocks.push((block, call));
                self.delta(
                    json!({"tool_calls": [{"index": call, "id": tu.get("toolUseId").cloned().unwrap_or(Value::Null), "type": "function", "function": {"name": tu.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}}]}),
                    None,
                )
            }
            "contentBlockDelta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    return self.delta(json!({"content": text}), None);
                }
                if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    let block = data
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if let Some(&(_, call)) = self.tool_blocks.iter().find(|(b, _)| *b == block) {
                        return self.delta(
                            json!({"tool_calls": [{"index": call, "function": {"arguments": input}}]}),
                            None,
                        );
                    }
                }
                String::new()
            }
            "messageStop" => {
                let reason = data
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                let finish = finish_reason(reason);
                self.finish = Some(finish);
                self.delta(json!({}), Some(finish))
            }
            "metadata" => {
                if let Some(u) = data.get("usage").and_then(usage) {
                    self.usage = Some(u);
                }
                if self.finish.is_some() {
                    self.close()
                } else {
                    String::new()
                }
            }
            "error" => {
                self.done = true;
                let message = data
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider error");
                sse_data(
                    &json!({"error": {"message": message, "type": "server_error", "param": null, "code": data.get("type").cloned().unwrap_or(Value::Null)}}),
                )
            }
            _ => String::new(),
        }
    }

    fn end(&mut self) -> String {
        if self.done {
            return String::new();
        }
        if self.finish.is_some() {
            // Usage comes in `metadata`, after `messageStop`; a stream without it still ends.
            return self.close();
        }
        self.done = true;
        sse_data(
            &json!({"error": {"message": "The provider's stream ended before the answer was complete.", "type": "server_error", "param": null, "code": null}}),
        )
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
