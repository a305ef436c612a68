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
//!   `stopSequences`, `temperature`, `top_p` -> `topP`; a `cache_control` on a part, a
//!   system part or a tool adds a `cachePoint` after it;
//! - `response_format` `json_object`/`json_schema` becomes a forced tool
//!   (`translate::json_mode_as_tool`); the plan turns the call back into content;
//! - the pivot's `thinking` (from Anthropic clients) becomes
//!   `additionalModelRequestFields.thinking`, and an assistant's `thinking_blocks` become
//!   `reasoningContent` blocks (signatures kept); answers' `reasoningContent` goes back the
//!   same way for Anthropic clients only;
//! - `n` > 1 and OpenAI-only parameters (`translate::refuse_openai_only`) are refused
//!   with a 400; `seed`, penalties, `user`, `logit_bias`, `parallel_tool_calls` are dropped.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::metering::usage::Usage;
use crate::translate::TranslateError;
use crate::translate::{Image, Part, Turn, Turns, bad, openai_text};

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

fn blocks_of(content: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    crate::translate::walk_parts(content, param, "a Bedrock model", |at, part, raw| {
        match part {
            Part::Text(text) => out.push(json!({ "text": text })),
            Part::Image(Image::Base64 { media_type, data }) => {
                let format = image_format(media_type)
                    .ok_or_else(|| bad(at, "Bedrock takes png, jpeg, gif or webp images"))?;
                out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
            }
            Part::Image(Image::Url(_)) => {
                return Err(bad(
                    at,
                    "Bedrock models take images as data: URLs (base64), not links",
                ));
            }
        }
        if raw.is_some_and(|p| p.get("cache_control").is_some()) {
            out.push(json!({"cachePoint": {"type": "default"}}));
        }
        Ok(())
    })?;
    Ok(out)
}

/// A `reasoningContent` block for an Anthropic thinking block.
fn reasoning_block(b: &Value) -> Option<Value> {
    match b.get("type").and_then(Value::as_str)? {
        "thinking" => Some(json!({"reasoningContent": {"reasoningText": {
            "text": b.get("thinking").cloned().unwrap_or_else(|| json!("")),
            "signature": b.get("signature").cloned().unwrap_or(Value::Null),
        }}})),
        "redacted_thinking" => Some(json!({"reasoningContent": {
            "redactedContent": b.get("data").cloned().unwrap_or(Value::Null),
        }})),
        _ => None,
    }
}

/// An Anthropic thinking block for a `reasoningContent` block.
fn thinking_block(r: &Value) -> Option<Value> {
    if let Some(t) = r.get("reasoningText") {
        return Some(json!({"type": "thinking",
            "thinking": t.get("text").cloned().unwrap_or_else(|| json!("")),
            "signature": t.get("signature").cloned().unwrap_or_else(|| json!(""))}));
    }
    r.get("redactedContent")
        .map(|d| json!({"type": "redacted_thinking", "data": d}))
}

fn tool_config(obj: &Value) -> Result<Option<Value>, TranslateError> {
    use crate::translate::ToolChoice;
    let Some(functions) = crate::translate::openai_functions(obj, PROVIDER)? else {
        return Ok(None);
    };
    let mut tools: Vec<Value> = Vec::with_capacity(functions.len());
    for f in &functions {
        let mut spec = json!({
            "name": f.name,
            "inputSchema": {"json": f.parameters.cloned().unwrap_or_else(|| json!({"type": "object"}))},
        });
        if let Some(d) = f.description {
            spec["description"] = json!(d);
        }
        tools.push(json!({ "toolSpec": spec }));
        if f.tool.get("cache_control").is_some() {
            tools.push(json!({"cachePoint": {"type": "default"}}));
        }
    }
    let mut config = json!({"tools": tools});
    match crate::translate::openai_tool_choice(obj)? {
        None => {}
        Some(ToolChoice::Auto) => config["toolChoice"] = json!({"auto": {}}),
        Some(ToolChoice::Required) => config["toolChoice"] = json!({"any": {}}),
        Some(ToolChoice::Function(name)) => config["toolChoice"] = json!({"tool": {"name": name}}),
        Some(ToolChoice::None) => {
            return Err(bad(
                "tool_choice",
                "Bedrock models take auto, required or a function",
            ));
        }
    }
    Ok(Some(config))
}

/// The Converse body for an OpenAI chat request (the model goes in the URL).
pub fn request_value(obj: &Value) -> Result<Value, TranslateError> {
    let checked = crate::translate::checked_with_json_tool(obj, PROVIDER)?;
    let obj = &*checked;
    let mut system = Vec::new();
    let mut turns = Turns::new("content", false);
    crate::translate::walk_messages(obj, |param, turn| {
        match turn {
            Turn::System(content) => match content.as_array() {
                // Parts marked with cache_control each get a cachePoint after them.
                Some(parts) if parts.iter().any(|p| p.get("cache_control").is_some()) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            system.push(json!({ "text": t }));
                        }
                        if p.get("cache_control").is_some() {
                            system.push(json!({"cachePoint": {"type": "default"}}));
                        }
                    }
                }
                _ => {
                    system.push(json!({"text": openai_text(content, &format!("{param}.content"))?}))
                }
            },
            Turn::User(content) => {
                turns.push("user", blocks_of(content, &format!("{param}.content"))?);
            }
            Turn::Assistant(m, content) => {
                // Thinking first, as the model wrote it (Anthropic clients, via the pivot).
                let mut blocks: Vec<Value> = m
                    .get("thinking_blocks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(reasoning_block)
                    .collect();
                blocks.extend(blocks_of(content, &format!("{param}.content"))?);
                turns.assistant("assistant", m, param, blocks, |call| {
                    json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}})
                })?;
            }
            Turn::Tool(id, content) => {
                let text = crate::translate::tool_result_text(content);
                turns.tool_result(
                    json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}}),
                );
            }
            Turn::Function => return Err(crate::translate::unknown_role(param)),
        }
        Ok(())
    })?;
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns.list));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(n) = crate::translate::openai_max_tokens(obj) {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(stop) = crate::translate::openai_stop(obj) {
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
    // Claude's extended thinking (Anthropic clients, via the pivot) is a model field.
    if let Some(t) = obj.get("thinking").filter(|t| t.is_object()) {
        out.insert(
            "additionalModelRequestFields".into(),
            json!({ "thinking": t }),
        );
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
    let cache_write = n("cacheWriteInputTokens");
    Some(Usage {
        input: n("inputTokens") + cached + cache_write,
        output: n("outputTokens"),
        cached,
        cache_write,
        reasoning: 0,
        web_searches: 0,
    })
}

/// The OpenAI chat completion for a Converse response. With `thinking` (an Anthropic
/// client), `reasoningContent` blocks ride along as the pivot's `thinking_blocks`.
pub fn response_value(b: &Value, model: &str, id: &str, created: i64, thinking: bool) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking_blocks = Vec::new();
    for block in b
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if thinking && let Some(t) = block.get("reasoningContent").and_then(thinking_block) {
            thinking_blocks.push(t);
        }
        if let Some(tu) = block.get("toolUse") {
            calls.push(crate::translate::openai_call(
                tu.get("toolUseId").cloned().unwrap_or(Value::Null),
                tu.get("name").cloned().unwrap_or(Value::Null),
                tu.get("input"),
            ));
        }
    }
    let reason = b
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = crate::translate::openai_message(text, calls);
    if !thinking_blocks.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    crate::translate::openai_completion(
        format!("chatcmpl-{id}"),
        created,
        json!(model),
        vec![
            json!({"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(reason)}),
        ],
        usage(b.get("usage").unwrap_or(&Value::Null)).unwrap_or_default(),
    )
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
    crate::translate::openai_error_body(
        message,
        crate::translate::openai_error_type(status),
        json!(code),
    )
}

/// Turns ConverseStream events (decoded from AWS event-stream frames by
/// [`crate::base::eventstream`], one [`crate::base::sse::Event`] per frame, named by `:event-type`)
/// into OpenAI chunks as they arrive.
#[derive(Debug)]
pub struct StreamTranslator {
    out: crate::translate::ChunkWriter,
    /// Content block index -> tool call index.
    tool_blocks: Vec<(u64, usize)>,
    finish: Option<&'static str>,
    usage: Option<Usage>,
    done: bool,
    thinking: bool,
    /// A content chunk around its text, so the events that are most of a stream (text
    /// deltas) cost one small parse and a copy.
    text: crate::translate::TextChunk,
}

/// Just enough of a `contentBlockDelta` to take its text without building a document.
#[derive(Deserialize)]
struct TextDelta<'a> {
    #[serde(borrow)]
    delta: Text<'a>,
}

#[derive(Deserialize)]
struct Text<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

impl StreamTranslator {
    /// `thinking`: pass reasoning on as the pivot's `delta.thinking_block` (Anthropic
    /// clients); OpenAI clients do not get it.
    pub fn new(id: &str, model: &str, created: i64, include_usage: bool, thinking: bool) -> Self {
        let out = crate::translate::ChunkWriter {
            id: format!("chatcmpl-{id}"),
            model: json!(model),
            created,
            include_usage,
        };
        Self {
            text: out.text_template(),
            out,
            tool_blocks: Vec::new(),
            finish: None,
            usage: None,
            done: false,
            thinking,
        }
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> String {
        self.out.delta(delta, finish)
    }

    /// The chunk for a `contentBlockDelta` that carries text, or `None` for any other
    /// event.
    fn text_delta(&self, event: &crate::base::sse::Event) -> Option<String> {
        if event.name != "contentBlockDelta" {
            return None;
        }
        let d: TextDelta<'_> = serde_json::from_str(&event.data).ok()?;
        Some(self.text.with(&d.delta.text))
    }

    fn close(&mut self) -> String {
        self.done = true;
        self.out.close(self.usage.unwrap_or_default())
    }
}

impl crate::translate::StreamStep for StreamTranslator {
    fn event(&mut self, event: &crate::base::sse::Event) -> String {
        if self.done {
            return String::new();
        }
        if let Some(chunk) = self.text_delta(event) {
            return chunk;
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
                if let Some(r) = delta.get("reasoningContent") {
                    if !self.thinking {
                        return String::new();
                    }
                    let piece = if let Some(t) = r.get("text") {
                        json!({ "thinking": t })
                    } else if let Some(s) = r.get("signature") {
                        json!({ "signature": s })
                    } else if let Some(d) = r.get("redactedContent") {
                        json!({ "data": d })
                    } else {
                        return String::new();
                    };
                    return self.delta(json!({ "thinking_block": piece }), None);
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
                crate::translate::openai_error_chunk(
                    message,
                    "server_error",
                    data.get("type").cloned().unwrap_or(Value::Null),
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
        crate::translate::openai_error_chunk(
            crate::translate::STREAM_CUT,
            "server_error",
            Value::Null,
        )
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::sse::Event;
    use crate::translate::StreamStep;

    fn payload(sse: &str) -> Value {
        let data = sse.strip_prefix("data: ").unwrap().trim_end();
        serde_json::from_str(data).unwrap()
    }

    /// A text delta read without a document gives the chunk the general path gives;
    /// deltas without text are left to the general path.
    #[test]
    fn text_deltas_take_the_fast_path_with_the_same_result() {
        for include_usage in [false, true] {
            let mut t = StreamTranslator::new("id1", "m", 7, include_usage, false);
            for text in ["Hel", "", "quote \" and é\n"] {
                let delta = Event {
                    name: "contentBlockDelta".into(),
                    data: json!({"contentBlockIndex": 0, "delta": {"text": text}}).to_string(),
                };
                assert!(t.text_delta(&delta).is_some(), "{text:?}");
                let got = t.event(&delta);
                let want = t.delta(json!({"content": text}), None);
                assert_eq!(payload(&got), payload(&want), "{text:?}");
            }
            let reasoning = Event {
                name: "contentBlockDelta".into(),
                data: r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"hmm"}}}"#
                    .into(),
            };
            assert!(t.text_delta(&reasoning).is_none());
            assert_eq!(
                t.event(&reasoning),
                "",
                "reasoning is not an OpenAI client's"
            );
        }
    }
}
