//! OpenAI chat completions from the client, Gemini `generateContent` at the provider (the
//! Gemini API and Gemini models on Vertex AI share the body).
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `system`/`developer` messages become `systemInstruction`; `assistant` is role `model`;
//! - text parts map to `text`, `data:` image URLs to `inlineData`, other image URLs to
//!   `fileData` (MIME type from the extension, else `image/jpeg`);
//! - assistant `tool_calls` become `functionCall` parts and `tool` messages
//!   `functionResponse` parts (named after the call they answer, found in the history);
//! - `tools` -> `functionDeclarations` (`$schema`, `additionalProperties` and `strict`
//!   removed: Gemini's schema subset refuses them); `tool_choice` -> `functionCallingConfig`;
//! - `max_completion_tokens`/`max_tokens` -> `maxOutputTokens`, `stop` -> `stopSequences`,
//!   `n` -> `candidateCount`, `temperature`, `top_p`, `seed`, penalties pass;
//!   `response_format` json_object/json_schema -> `responseMimeType`/`responseSchema`;
//! - `logprobs`, `audio`, `prediction` are refused with a 400; `user`, `logit_bias`,
//!   `parallel_tool_calls`, `store`, `metadata` are dropped.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use crate::metering::usage::Usage;
use crate::translate::TranslateError;
use crate::translate::{Image, Part, Turn, Turns, bad, openai_text};

const PROVIDER: &str = "Gemini";

fn mime_from_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("pdf") => "application/pdf",
        _ => "image/jpeg",
    }
}

fn parts_of(content: &Value, param: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    crate::translate::walk_parts(content, param, "a Gemini model", |_, part, _| {
        out.push(match part {
            Part::Text(text) => json!({ "text": text }),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({"inlineData": {"mimeType": media_type, "data": data}})
            }
            Part::Image(Image::Url(url)) => {
                json!({"fileData": {"mimeType": mime_from_url(url), "fileUri": url}})
            }
        });
        Ok(())
    })?;
    Ok(out)
}

/// A JSON Schema with what Gemini's OpenAPI subset refuses removed.
fn clean_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "$schema" | "additionalProperties" | "strict")
                })
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

fn tools(obj: &Value) -> Result<Option<Value>, TranslateError> {
    let Some(functions) = crate::translate::openai_functions(obj, PROVIDER)? else {
        return Ok(None);
    };
    let declarations: Vec<Value> = functions
        .iter()
        .map(|f| {
            let mut d = json!({"name": f.name});
            if let Some(desc) = f.description {
                d["description"] = json!(desc);
            }
            if let Some(p) = f.parameters {
                d["parameters"] = clean_schema(p);
            }
            d
        })
        .collect();
    Ok(Some(json!([{"functionDeclarations": declarations}])))
}

fn tool_config(obj: &Value) -> Result<Option<Value>, TranslateError> {
    use crate::translate::ToolChoice;
    let config = match crate::translate::openai_tool_choice(obj)? {
        None => return Ok(None),
        Some(ToolChoice::Auto) => json!({"mode": "AUTO"}),
        Some(ToolChoice::Required) => json!({"mode": "ANY"}),
        Some(ToolChoice::None) => json!({"mode": "NONE"}),
        Some(ToolChoice::Function(name)) => {
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

/// The `generateContent` body for an OpenAI chat request (the model goes in the URL).
pub fn request_value(obj: &Value) -> Result<Value, TranslateError> {
    crate::translate::refuse_openai_only(obj, PROVIDER)?;
    let mut system = Vec::new();
    let mut turns = Turns::new("parts", false);
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    crate::translate::walk_messages(obj, |param, turn| {
        match turn {
            Turn::System(content) => {
                system.push(json!({"text": openai_text(content, &format!("{param}.content"))?}))
            }
            Turn::User(content) => {
                turns.push("user", parts_of(content, &format!("{param}.content"))?);
            }
            Turn::Assistant(m, content) => {
                let parts = parts_of(content, &format!("{param}.content"))?;
                turns.assistant("model", m, param, parts, |call| {
                    call_names.insert(call.id, call.name);
                    json!({"functionCall": {"name": call.name, "args": call.arguments}})
                })?;
            }
            Turn::Tool(id, content) => {
                let name = call_names.get(id).ok_or_else(|| {
                    bad(
                        &format!("{param}.tool_call_id"),
                        "does not match a tool call of an earlier assistant message",
                    )
                })?;
                let text = crate::translate::tool_result_text(content);
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                turns
                    .tool_result(json!({"functionResponse": {"name": name, "response": response}}));
            }
            Turn::Function => return Err(crate::translate::unknown_role(param)),
        }
        Ok(())
    })?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(turns.list));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(n) = crate::translate::openai_max_tokens(obj) {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(stop) = crate::translate::openai_stop(obj) {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    // OpenAI's reasoning effort as a thinking budget (as Gemini's own OpenAI API maps it).
    if let Some(effort) = obj.get("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "none" => 0,
            "minimal" => 512,
            "low" => 1024,
            "medium" => 8192,
            _ => 24576,
        };
        config.insert("thinkingConfig".into(), json!({"thinkingBudget": budget}));
    }
    match obj.pointer("/response_format/type").and_then(Value::as_str) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = obj.pointer("/response_format/json_schema/schema") {
                config.insert("responseSchema".into(), clean_schema(schema));
            }
        }
        _ => {}
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(t) = tools(obj)? {
        out.insert("tools".into(), t);
    }
    if let Some(c) = tool_config(obj)? {
        out.insert("toolConfig".into(), c);
    }
    Ok(Value::Object(out))
}

/// OpenAI's `finish_reason` for Gemini's `finishReason`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

fn call_id(response_id: &str, candidate: u64, i: usize, given: Option<&Value>) -> Value {
    match given.and_then(Value::as_str) {
        Some(id) if !id.is_empty() => json!(id),
        _ if response_id.is_empty() => json!(format!("call_{candidate}_{i}")),
        _ => json!(format!("call_{response_id}_{candidate}_{i}")),
    }
}

/// Text and tool calls of one candidate's parts (thought parts are left out); calls are
/// numbered from `first_call`.
fn read_parts(
    parts: &[Value],
    response_id: &str,
    candidate: u64,
    first_call: usize,
) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in parts {
        if p.get("thought") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let i = first_call + calls.len();
            calls.push(crate::translate::openai_call(
                call_id(response_id, candidate, i, fc.get("id")),
                fc.get("name").cloned().unwrap_or(Value::Null),
                fc.get("args"),
            ));
        }
    }
    (text, calls)
}

/// Each candidate of a response: its index, its parts, and its finish reason.
fn candidates(g: &Value) -> impl Iterator<Item = (u64, &[Value], Option<&str>)> {
    g.get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(pos, c)| {
            (
                c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64),
                c.pointer("/content/parts")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
                c.get("finishReason").and_then(Value::as_str),
            )
        })
}

/// The OpenAI chat completion for a `generateContent` response.
pub fn response_value(g: &Value, model: &str, created: i64) -> Value {
    let response_id = g.get("responseId").and_then(Value::as_str).unwrap_or("");
    let mut choices: Vec<Value> = candidates(g)
        .map(|(index, parts, reason)| {
            let (text, calls) = read_parts(parts, response_id, index, 0);
            let finish = finish_reason(reason.unwrap_or("STOP"), !calls.is_empty());
            json!({"index": index, "message": crate::translate::openai_message(text, calls), "logprobs": null, "finish_reason": finish})
        })
        .collect();
    if choices.is_empty() {
        // The prompt itself was blocked.
        choices.push(json!({"index": 0, "message": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": "content_filter"}));
    }
    crate::translate::openai_completion(
        format!("chatcmpl-{response_id}"),
        created,
        json!(
            g.get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(model)
        ),
        choices,
        Usage::from_gemini(g.get("usageMetadata").unwrap_or(&Value::Null)).unwrap_or_default(),
    )
}

/// A Google error body (`{"error": {code, message, status}}`) as an OpenAI error body.
pub fn error(body: &[u8], status: u16) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("The provider returned an error.");
    let code = v.pointer("/error/status").cloned().unwrap_or(Value::Null);
    crate::translate::openai_error_body(message, crate::translate::openai_error_type(status), code)
}

/// Turns `streamGenerateContent?alt=sse` chunks into OpenAI chunks, one for one. Gemini
/// sends no end marker: the stream is complete when a candidate has a `finishReason`.
#[derive(Debug)]
pub struct StreamTranslator {
    out: crate::translate::ChunkWriter,
    started: bool,
    finished: bool,
    done: bool,
    /// Tool calls so far, per candidate index.
    calls: HashMap<u64, usize>,
    usage: Option<Usage>,
    /// A content chunk around its text, built after the first chunk, so the chunks that
    /// are most of a stream (more text for the one candidate) cost one small parse and a
    /// copy.
    text: Option<crate::translate::TextChunk>,
}

/// A chunk that only adds text to candidate 0, read without building a document. Any
/// other field (a finish reason, a function call, a thought, an error, prompt feedback)
/// fails the read and the chunk takes the general path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextOnly<'a> {
    #[serde(borrow)]
    candidates: [TextCandidate<'a>; 1],
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<crate::metering::usage::counts::Gemini>,
    #[serde(default, rename = "modelVersion")]
    _model_version: Option<IgnoredAny>,
    #[serde(default, rename = "responseId")]
    _response_id: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextCandidate<'a> {
    #[serde(borrow)]
    content: TextContent<'a>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, rename = "safetyRatings")]
    _safety_ratings: Option<IgnoredAny>,
    #[serde(default, rename = "citationMetadata")]
    _citation_metadata: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextContent<'a> {
    #[serde(borrow)]
    parts: [TextPart<'a>; 1],
    #[serde(default, rename = "role")]
    _role: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextPart<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

impl StreamTranslator {
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        Self {
            out: crate::translate::ChunkWriter {
                id: String::new(),
                model: json!(model),
                created,
                include_usage,
            },
            started: false,
            finished: false,
            done: false,
            calls: HashMap::new(),
            usage: None,
            text: None,
        }
    }

    /// The chunk for more text on candidate 0 after its first chunk, or `None` when the
    /// event is anything else.
    fn text_only(&mut self, data: &str) -> Option<String> {
        let template = self.text.as_ref()?;
        let g: TextOnly<'_> = serde_json::from_str(data).ok()?;
        let [candidate] = &g.candidates;
        let [part] = &candidate.content.parts;
        if candidate.index.unwrap_or(0) != 0 || part.text.is_empty() {
            return None;
        }
        if let Some(u) = &g.usage_metadata {
            self.usage = Some(u.usage());
        }
        Some(template.with(&part.text))
    }

    fn gemini_chunk(&mut self, g: &Value) -> String {
        if let Some(e) = g.get("error") {
            self.done = true;
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            return crate::translate::openai_error_chunk(
                message,
                "server_error",
                e.get("status").cloned().unwrap_or(Value::Null),
            );
        }
        let response_id = g.get("responseId").and_then(Value::as_str).unwrap_or("");
        if !self.started {
            self.started = true;
            self.out.id = format!("chatcmpl-{response_id}");
            if let Some(m) = g.get("modelVersion").and_then(Value::as_str) {
                self.out.model = json!(m);
            }
        }
        if let Some(u) = g.get("usageMetadata").and_then(Usage::from_gemini) {
            self.usage = Some(u);
        }
        let mut choices = Vec::new();
        for (index, parts, reason) in candidates(g) {
            let first = !self.calls.contains_key(&index);
            let seen = self.calls.get(&index).copied().unwrap_or(0);
            let (text, mut calls) = read_parts(parts, response_id, index, seen);
            for (i, call) in calls.iter_mut().enumerate() {
                call["index"] = json!(seen + i);
            }
            let total = seen + calls.len();
            self.calls.insert(index, total);
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if !text.is_empty() || first {
                delta.insert("content".into(), json!(text));
            }
            if !calls.is_empty() {
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            let finish = reason.map(|r| finish_reason(r, total > 0));
            self.finished |= finish.is_some();
            choices.push(
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}),
            );
        }
        if g.pointer("/promptFeedback/blockReason").is_some() && choices.is_empty() {
            self.finished = true;
            choices.push(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": "content_filter"}));
        }
        if choices.is_empty() {
            return String::new();
        }
        if self.text.is_none() && self.calls.contains_key(&0) {
            self.text = Some(self.out.text_template());
        }
        self.out.chunk(Value::Array(choices), None)
    }
}

impl crate::translate::StreamStep for StreamTranslator {
    fn event(&mut self, event: &crate::base::sse::Event) -> String {
        if self.done {
            return String::new();
        }
        if let Some(chunk) = self.text_only(&event.data) {
            return chunk;
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(g) => self.gemini_chunk(&g),
            Err(_) => String::new(),
        }
    }

    fn end(&mut self) -> String {
        if self.done {
            return String::new();
        }
        self.done = true;
        if !self.finished {
            return crate::translate::openai_error_chunk(
                crate::translate::STREAM_CUT,
                "server_error",
                Value::Null,
            );
        }
        self.out.close(self.usage.unwrap_or_default())
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

    fn event(data: &str) -> Event {
        Event {
            name: String::new(),
            data: data.to_string(),
        }
    }

    fn payload(sse: &str) -> Value {
        let data = sse.strip_prefix("data: ").unwrap().trim_end();
        serde_json::from_str(data).unwrap()
    }

    const FIRST: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"modelVersion":"gemini-2.5-flash-001","responseId":"r1"}"#;

    /// Text chunks after the first read without a document and give what the general
    /// path gives; everything else is left to the general path.
    #[test]
    fn text_chunks_take_the_fast_path_with_the_same_result() {
        for include_usage in [false, true] {
            let mut fast = StreamTranslator::new("gemini-2.5-flash", 7, include_usage);
            let mut general = StreamTranslator::new("gemini-2.5-flash", 7, include_usage);
            assert!(
                fast.text_only(FIRST).is_none(),
                "no template before the first chunk, which has the role"
            );
            assert_eq!(fast.event(&event(FIRST)), general.event(&event(FIRST)));
            for (data, takes_fast_path) in [
                (
                    r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo \"q\" é\n"}]},"index":0}],"modelVersion":"x","responseId":"r1"}"#,
                    true,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":"more"}]},"safetyRatings":[{"category":"HARM_CATEGORY_HATE_SPEECH","probability":"NEGLIGIBLE"}]}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12}}"#,
                    true,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":"end"}]},"finishReason":"STOP","index":0}]}"#,
                    false,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":"hmm","thought":true}]},"index":0}]}"#,
                    false,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"b"}]},"index":0}]}"#,
                    false,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":"other"}]},"index":1}]}"#,
                    false,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"text":""}]},"index":0}]}"#,
                    false,
                ),
                (
                    r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]},"index":0}]}"#,
                    false,
                ),
                (r#"{"error":{"code":500,"message":"boom"}}"#, false),
            ] {
                assert_eq!(fast.text_only(data).is_some(), takes_fast_path, "{data}");
                let mut fast = StreamTranslator::new("gemini-2.5-flash", 7, include_usage);
                fast.event(&event(FIRST));
                let got = fast.event(&event(data));
                let want = general.gemini_chunk(&serde_json::from_str(data).unwrap());
                assert_eq!(payload(&got), payload(&want), "{data}");
                assert_eq!(fast.usage, general.usage, "{data}");
                general = StreamTranslator::new("gemini-2.5-flash", 7, include_usage);
                general.event(&event(FIRST));
            }
        }
    }
}
