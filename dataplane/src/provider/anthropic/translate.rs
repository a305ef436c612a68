//! OpenAI chat completions from the client, Anthropic Messages at the provider.
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `system` and `developer` messages become the top-level `system`, in order;
//! - text and image parts map to `text` and `image` blocks (data URLs as base64 sources,
//!   other URLs as URL sources); a `cache_control` on a part or tool is kept;
//! - assistant `tool_calls` become `tool_use` blocks, `tool` messages `tool_result` blocks
//!   in one user turn; `tools`, `tool_choice` and `parallel_tool_calls: false` map to
//!   Anthropic's tools, tool choice and `disable_parallel_tool_use`;
//! - `max_completion_tokens` or `max_tokens` become `max_tokens` (default 4096: Anthropic
//!   requires it); `stop` becomes `stop_sequences`; `temperature`, `top_p` pass;
//!   `user` becomes `metadata.user_id`;
//! - `response_format` `json_object`/`json_schema` becomes a forced tool
//!   (`translate::json_mode_as_tool`); the plan turns the call back into content;
//! - `n` > 1 and OpenAI-only parameters (`translate::refuse_openai_only`: `functions`,
//!   `logprobs`, `audio`, ...) are refused with a 400 naming the parameter; penalties,
//!   `seed` and `logit_bias` are dropped (Anthropic has no equivalent and they do not
//!   change what is asked).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::metering::usage::Usage;
use crate::translate::TranslateError;
use crate::translate::{Image, Part, Turn, Turns, bad, openai_text, tool_result_text};

pub const DEFAULT_MAX_TOKENS: u64 = 4096;

const PROVIDER: &str = "Anthropic";

fn with_cache_control(mut block: Value, part: &Value) -> Value {
    if let Some(cc) = part.get("cache_control") {
        block["cache_control"] = cc.clone();
    }
    block
}

fn content_blocks(content: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    crate::translate::walk_parts(content, param, "an Anthropic model", |_, part, raw| {
        let block = match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            }
            Part::Image(Image::Url(url)) => {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            }
        };
        out.push(match raw {
            Some(p) => with_cache_control(block, p),
            None => block,
        });
        Ok(())
    })?;
    Ok(out)
}

fn tools(obj: &Value) -> Result<Option<Value>, TranslateError> {
    let Some(functions) = crate::translate::openai_functions(obj, PROVIDER)? else {
        return Ok(None);
    };
    let tools = functions
        .iter()
        .map(|f| {
            let mut tool = json!({
                "name": f.name,
                "input_schema": f.parameters.cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = f.description {
                tool["description"] = json!(d);
            }
            with_cache_control(tool, f.tool)
        })
        .collect();
    Ok(Some(Value::Array(tools)))
}

fn tool_choice(obj: &Value) -> Result<Option<Value>, TranslateError> {
    use crate::translate::ToolChoice;
    let parallel_off = obj.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let mut choice = match crate::translate::openai_tool_choice(obj)? {
        None if parallel_off => json!({"type": "auto"}),
        None => return Ok(None),
        Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::None) => json!({"type": "none"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
    };
    if parallel_off && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Ok(Some(choice))
}

/// The Anthropic request for an OpenAI chat request, sending `model`.
pub fn request(body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    let v = crate::translate::parse_client_json(body)?;
    let out = request_value(&v, model)?;
    serde_json::to_vec(&out).map_err(|_| TranslateError::Internal)
}

/// [`request`] on a parsed body.
pub fn request_value(obj: &Value, model: &str) -> Result<Value, TranslateError> {
    let checked = crate::translate::checked_with_json_tool(obj, PROVIDER)?;
    let obj = &*checked;
    let mut system: Vec<Value> = Vec::new();
    let mut turns = Turns::new("content", true);
    crate::translate::walk_messages(obj, |param, turn| {
        match turn {
            Turn::System(content) => {
                let text = openai_text(content, &format!("{param}.content"))?;
                let mut block = json!({"type": "text", "text": text});
                if let Value::Array(parts) = content
                    && let Some(cc) = parts.iter().rev().find_map(|p| p.get("cache_control"))
                {
                    block["cache_control"] = cc.clone();
                }
                system.push(block);
            }
            Turn::User(content) => {
                let blocks = content_blocks(content, &format!("{param}.content"))?;
                turns.push("user", blocks);
            }
            Turn::Assistant(m, content) => {
                // Thinking first, as the model wrote it (Responses clients' reasoning items,
                // via the pivot): Claude checks their signatures.
                let mut blocks: Vec<Value> = m
                    .get("thinking_blocks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|b| {
                        matches!(
                            b.get("type").and_then(Value::as_str),
                            Some("thinking" | "redacted_thinking")
                        )
                    })
                    .cloned()
                    .collect();
                blocks.extend(content_blocks(content, &format!("{param}.content"))?);
                turns.assistant("assistant", m, param, blocks, |call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
                })?;
            }
            Turn::Tool(id, content) => turns.tool_result(
                json!({"type": "tool_result", "tool_use_id": id, "content": tool_result_text(content)}),
            ),
            Turn::Function => {
                return Err(bad(
                    param,
                    "function messages are deprecated; use tool messages",
                ));
            }
        }
        Ok(())
    })?;
    // A turn that is one plain text block is sent as a string, as clients write it.
    let mut out_messages = turns.list;
    for m in &mut out_messages {
        if let Some([only]) = m
            .get("content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            && only.get("type").and_then(Value::as_str) == Some("text")
            && only.get("cache_control").is_none()
        {
            let text = only.get("text").cloned().unwrap_or_default();
            m["content"] = text;
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    let max_tokens = crate::translate::openai_max_tokens(obj).unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    out.insert("messages".into(), Value::Array(out_messages));
    if !system.is_empty() {
        // Plain text when no block carries cache_control, as most clients send it.
        if system.iter().all(|b| b.get("cache_control").is_none()) {
            let texts: Vec<&str> = system
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            out.insert("system".into(), Value::String(texts.join("\n\n")));
        } else {
            out.insert("system".into(), Value::Array(system));
        }
    }
    // `thinking` is the pivot's extension member (from the Responses API's reasoning).
    for key in ["temperature", "top_p", "stream", "thinking"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = crate::translate::openai_stop(obj) {
        out.insert("stop_sequences".into(), Value::Array(stop));
    }
    if let Some(user) = obj.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(t) = tools(obj)? {
        out.insert("tools".into(), t);
    }
    if let Some(c) = tool_choice(obj)? {
        out.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(out))
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// The OpenAI chat completion for an Anthropic message.
pub fn response(body: &[u8], created: i64) -> Result<Vec<u8>, TranslateError> {
    let m: Value = serde_json::from_slice(body).map_err(|_| TranslateError::UpstreamBody)?;
    serde_json::to_vec(&response_value(&m, created, false)).map_err(|_| TranslateError::Internal)
}

/// [`response`] on a parsed message. With `thinking`, thinking blocks ride along as the
/// pivot's `thinking_blocks` (for clients that carry them back).
pub fn response_value(m: &Value, created: i64, thinking: bool) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking_blocks = Vec::new();
    for b in m
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(crate::translate::openai_call(
                b.get("id").cloned().unwrap_or(Value::Null),
                b.get("name").cloned().unwrap_or(Value::Null),
                b.get("input"),
            )),
            Some("thinking" | "redacted_thinking") if thinking => thinking_blocks.push(b.clone()),
            // Thinking blocks have no place in a chat completion.
            _ => {}
        }
    }
    let mut message = crate::translate::openai_message(text, calls);
    if !thinking_blocks.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    let stop = m
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    crate::translate::openai_completion(
        format!(
            "chatcmpl-{}",
            m.get("id").and_then(Value::as_str).unwrap_or("")
        ),
        created,
        m.get("model").cloned().unwrap_or(Value::Null),
        vec![json!({
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(stop)
        })],
        Usage::from_anthropic(m.get("usage").unwrap_or(&Value::Null)).unwrap_or_default(),
    )
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
    crate::translate::openai_error_body(message, kind, Value::Null)
}

/// Turns Anthropic stream events into OpenAI chunks, as they arrive.
#[derive(Debug)]
pub struct StreamTranslator {
    out: crate::translate::ChunkWriter,
    usage: crate::metering::usage::AnthropicUsage,
    done: bool,
    /// Anthropic content block index -> OpenAI tool call index, for tool-use blocks.
    tool_blocks: Vec<(u64, usize)>,
    /// A content chunk around its text, built at `message_start`, so the events that
    /// are most of a stream (text deltas) cost one small parse and a copy.
    text: Option<crate::translate::TextChunk>,
    /// Pass thinking on as the pivot's `delta.thinking_block` pieces.
    thinking: bool,
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
    pub fn new(created: i64, include_usage: bool, thinking: bool) -> Self {
        Self {
            out: crate::translate::ChunkWriter {
                id: String::new(),
                model: Value::Null,
                created,
                include_usage,
            },
            usage: crate::metering::usage::AnthropicUsage::default(),
            done: false,
            tool_blocks: Vec::new(),
            text: None,
            thinking,
        }
    }

    /// The OpenAI SSE text for one Anthropic event (often empty).
    pub fn event(&mut self, event: &crate::base::sse::Event) -> String {
        if let Some(template) = &self.text
            && let Ok(e) = serde_json::from_str::<TextDeltaEvent<'_>>(&event.data)
            && e.kind == "content_block_delta"
            && let Some(TextDelta {
                kind,
                text: Some(text),
            }) = e.delta
            && kind == "text_delta"
        {
            return template.with(&text);
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
                self.out.id = format!(
                    "chatcmpl-{}",
                    m.get("id").and_then(Value::as_str).unwrap_or("")
                );
                self.out.model = m.get("model").cloned().unwrap_or(Value::Null);
                if let Some(u) = m.get("usage") {
                    self.usage.merge(u);
                }
                self.text = Some(self.out.text_template());
                self.out
                    .delta(json!({"role": "assistant", "content": ""}), None)
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {}
                    Some("redacted_thinking") if self.thinking => {
                        let piece =
                            json!({"data": block.get("data").cloned().unwrap_or(Value::Null)});
                        return self.out.delta(json!({ "thinking_block": piece }), None);
                    }
                    _ => return String::new(),
                }
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let call = self.tool_blocks.len();
                self.tool_blocks.push((index, call));
                self.out.delta(
                    json!({"tool_calls": [{
                        "index": call,
                        "id": block.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}
                    }]}),
                    None,
                )
            }
            // Text deltas after `message_start` take the fast path above.
            "content_block_delta" => match data.pointer("/delta/type").and_then(Value::as_str) {
                Some("text_delta") => {
                    let text = data.pointer("/delta/text").cloned().unwrap_or(Value::Null);
                    self.out.delta(json!({"content": text}), None)
                }
                Some("thinking_delta") if self.thinking => {
                    let t = data
                        .pointer("/delta/thinking")
                        .cloned()
                        .unwrap_or(Value::Null);
                    self.out
                        .delta(json!({"thinking_block": {"thinking": t}}), None)
                }
                Some("signature_delta") if self.thinking => {
                    let s = data
                        .pointer("/delta/signature")
                        .cloned()
                        .unwrap_or(Value::Null);
                    self.out
                        .delta(json!({"thinking_block": {"signature": s}}), None)
                }
                Some("input_json_delta") => {
                    let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let Some(&(_, call)) = self.tool_blocks.iter().find(|(b, _)| *b == index)
                    else {
                        return String::new();
                    };
                    let partial = data
                        .pointer("/delta/partial_json")
                        .cloned()
                        .unwrap_or_else(|| json!(""));
                    self.out.delta(
                        json!({"tool_calls": [{"index": call, "function": {"arguments": partial}}]}),
                        None,
                    )
                }
                _ => String::new(),
            },
            "message_delta" => {
                if let Some(u) = data.get("usage") {
                    self.usage.merge(u);
                }
                let stop = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.out.delta(json!({}), Some(finish_reason(stop)))
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
                crate::translate::openai_error_chunk(message, kind, Value::Null)
            }
            _ => String::new(),
        }
    }

    /// The closing chunks: usage (when asked for) and `[DONE]`.
    pub fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        self.out.close(self.usage.total())
    }
}

impl crate::translate::StreamStep for StreamTranslator {
    fn event(&mut self, event: &crate::base::sse::Event) -> String {
        StreamTranslator::event(self, event)
    }

    fn end(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        crate::translate::openai_error_chunk(crate::translate::STREAM_CUT, "api_error", Value::Null)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }
}

#[cfg(test)]
mod tests;
