//! A chat's prompt and answer in the shape the OpenTelemetry GenAI conventions give
//! `gen_ai.input.messages`, `gen_ai.output.messages` and `gen_ai.system_instructions`
//! (messages of `role` and `parts`: `text`, `tool_call`, `tool_call_response`,
//! `reasoning`, or a part named by its type with no content, as an image is), read from
//! the client's format (OpenAI's or Anthropic's). Only a request whose key or route opts
//! in is read for its text, every string redacted of the secrets its snapshot holds, and
//! bounded. Every traced request's answer is read for its id and finish reasons, streamed
//! or whole.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::base::Api;
use crate::base::sse;
use crate::config::snapshot::Snapshot;

/// The recorded text of one direction (prompt or answer) is cut to this many bytes in
/// all: the most recent messages are kept first.
pub(crate) const MAX_RECORDED_BYTES: usize = 64 * 1024;

/// An answer's id or a finish reason longer than this is cut.
const MAX_ID: usize = 256;

/// A request's recorded prompt, and which opt-in asked for it.
pub(crate) struct Recording {
    /// `key` or `route`.
    pub(crate) by: &'static str,
    pub(crate) system: Option<Value>,
    pub(crate) input: Value,
    snapshot: Arc<Snapshot>,
}

impl Recording {
    /// The prompt of `body` (a chat request in `api`'s format), redacted and bounded.
    pub(crate) fn of_request(
        body: &[u8],
        api: Api,
        by: &'static str,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let mut budget = Budget(MAX_RECORDED_BYTES);
        let (system, input) = match api {
            Api::OpenAi => (None, openai_input(&request, &mut budget)),
            Api::Anthropic => anthropic_input(&request, &mut budget),
            Api::Responses => responses::input(&request, &mut budget),
        };
        let mut r = Self {
            by,
            system,
            input,
            snapshot,
        };
        if let Some(s) = &mut r.system {
            redact(s, &r.snapshot);
        }
        redact(&mut r.input, &r.snapshot);
        r
    }

    /// The answer's messages, redacted.
    pub(crate) fn output(&self, answer: &Answer) -> Value {
        let mut out = answer.messages();
        redact(&mut out, &self.snapshot);
        out
    }
}

fn redact(v: &mut Value, snapshot: &Snapshot) {
    match v {
        Value::String(s) => {
            let r = snapshot.redact(s);
            if r != *s {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, snapshot)),
        Value::Object(m) => m.values_mut().for_each(|i| redact(i, snapshot)),
        _ => {}
    }
}

/// What is left of a direction's bytes.
struct Budget(usize);

impl Budget {
    fn take(&mut self, s: &str) -> String {
        let kept = crate::base::clip(s, self.0);
        self.0 -= kept.len();
        kept.to_string()
    }

    fn spent(&self) -> bool {
        self.0 == 0
    }
}

fn text_part(content: String) -> Value {
    json!({"type": "text", "content": content})
}

/// A part recorded by its type alone (an image, a file, audio).
fn typed_part(kind: &str) -> Value {
    json!({"type": crate::base::clip(kind, 64)})
}

/// A client-chosen id or name, within the budget like any text (a string; anything else
/// is left out).
fn bounded(v: &Value, budget: &mut Budget) -> Value {
    v.as_str()
        .map_or(Value::Null, |s| Value::String(budget.take(s)))
}

/// Tool arguments as JSON when they parse, as the text sent otherwise.
fn arguments(text: &str, budget: &mut Budget) -> Value {
    let kept = budget.take(text);
    serde_json::from_str(&kept).unwrap_or(Value::String(kept))
}

fn message(role: &str, parts: Vec<Value>) -> Value {
    json!({"role": crate::base::clip(role, 64), "parts": parts})
}

/// Messages from the last, while the budget lasts, put back in order.
fn newest_first<'a>(
    messages: impl DoubleEndedIterator<Item = &'a Value>,
    budget: &mut Budget,
    one: impl Fn(&'a Value, &mut Budget) -> Value,
) -> Value {
    let mut out = Vec::new();
    for m in messages.rev() {
        if budget.spent() {
            break;
        }
        out.push(one(m, budget));
    }
    out.reverse();
    Value::Array(out)
}

/// Text of a content that is a string or a list of text parts.
fn plain_text(content: &Value, budget: &mut Budget) -> String {
    match content {
        Value::String(s) => budget.take(s),
        Value::Array(parts) => {
            let joined: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            budget.take(&joined.join("\n"))
        }
        _ => String::new(),
    }
}

fn openai_input(request: &Value, budget: &mut Budget) -> Value {
    let messages = request["messages"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    newest_first(messages.iter(), budget, |m, budget| {
        let role = m["role"].as_str().unwrap_or("user");
        if role == "tool" {
            let part = json!({
                "type": "tool_call_response",
                "id": bounded(&m["tool_call_id"], budget),
                "response": plain_text(&m["content"], budget),
            });
            return message(role, vec![part]);
        }
        let mut parts = Vec::new();
        match &m["content"] {
            Value::String(s) => parts.push(text_part(budget.take(s))),
            Value::Array(items) => {
                for p in items {
                    match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(t)) => parts.push(text_part(budget.take(t))),
                        (Some(kind), _) => parts.push(typed_part(kind)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            parts.push(json!({
                "type": "tool_call",
                "id": bounded(&call["id"], budget),
                "name": bounded(&call["function"]["name"], budget),
                "arguments": arguments(call["function"]["arguments"].as_str().unwrap_or(""), budget),
            }));
        }
        message(role, parts)
    })
}

fn anthropic_input(request: &Value, budget: &mut Budget) -> (Option<Value>, Value) {
    let messages = request["messages"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let input = newest_first(messages.iter(), budget, |m, budget| {
        let role = m["role"].as_str().unwrap_or("user");
        let parts = match &m["content"] {
            Value::String(s) => vec![text_part(budget.take(s))],
            Value::Array(blocks) => blocks.iter().map(|b| anthropic_block(b, budget)).collect(),
            _ => Vec::new(),
        };
        message(role, parts)
    });
    let system = match &request["system"] {
        Value::Null => None,
        s => Some(json!([text_part(plain_text(s, budget))])),
    };
    (system, input)
}

fn anthropic_block(b: &Value, budget: &mut Budget) -> Value {
    match b["type"].as_str().unwrap_or("") {
        "text" => text_part(budget.take(b["text"].as_str().unwrap_or(""))),
        "thinking" => json!({
            "type": "reasoning",
            "content": budget.take(b["thinking"].as_str().unwrap_or("")),
        }),
        "tool_use" => json!({
            "type": "tool_call",
            "id": bounded(&b["id"], budget),
            "name": bounded(&b["name"], budget),
            "arguments": arguments(&b["input"].to_string(), budget),
        }),
        "tool_result" => json!({
            "type": "tool_call_response",
            "id": bounded(&b["tool_use_id"], budget),
            "response": plain_text(&b["content"], budget),
        }),
        kind => typed_part(kind),
    }
}

/// One part of an answer, as it is put together.
#[derive(Debug)]
enum Part {
    Text(String),
    Reasoning(String),
    ToolCall {
        id: Option<String>,
        name: String,
        arguments: String,
    },
}

/// One choice of an answer (Anthropic's have one).
#[derive(Debug, Default)]
struct Choice {
    parts: Vec<Part>,
    /// The part each streamed tool call (OpenAI: by its `index`) or content block
    /// (Anthropic: by its `index`) is in.
    slots: Vec<(u64, usize)>,
    finish_reason: Option<String>,
}

/// The answer the client got: its id and finish reasons, and (when its content is
/// recorded) its parts, from the whole answer or from the stream's events as they pass.
#[derive(Debug)]
pub(crate) struct Answer {
    api: Api,
    /// Its text is kept (the request opted in), not only its id and finish reasons.
    content: bool,
    pub(crate) id: Option<String>,
    choices: Vec<Choice>,
    events: sse::Parser,
    /// Bytes of content left to keep.
    left: usize,
}

fn cut_id(s: &str) -> String {
    crate::base::clip(s, MAX_ID).to_string()
}

impl Answer {
    pub(crate) fn new(api: Api, content: bool) -> Self {
        Self {
            api,
            content,
            id: None,
            choices: Vec::new(),
            events: sse::Parser::default(),
            left: MAX_RECORDED_BYTES,
        }
    }

    pub(crate) fn record_content(&mut self) {
        self.content = true;
    }

    /// Every choice's finish reason, as the provider (or translation) named it.
    pub(crate) fn finish_reasons(&self) -> Vec<String> {
        (self.choices.iter())
            .filter_map(|c| c.finish_reason.clone())
            .collect()
    }

    fn choice(&mut self, index: u64) -> &mut Choice {
        let i = usize::try_from(index).unwrap_or(0).min(127);
        if self.choices.len() <= i {
            self.choices.resize_with(i + 1, Choice::default);
        }
        &mut self.choices[i]
    }

    fn keep(&mut self, s: &str) -> String {
        let kept = crate::base::clip(s, self.left);
        self.left -= kept.len();
        kept.to_string()
    }

    /// A whole answer in the client's format.
    pub(crate) fn whole(&mut self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        self.id = v["id"].as_str().map(cut_id);
        match self.api {
            Api::OpenAi => {
                for (n, c) in v["choices"].as_array().into_iter().flatten().enumerate() {
                    let index = c["index"].as_u64().unwrap_or(n as u64);
                    self.choice(index).finish_reason = c["finish_reason"].as_str().map(cut_id);
                    if self.content {
                        self.openai_delta(index, &c["message"]);
                    }
                }
            }
            Api::Anthropic => {
                self.choice(0).finish_reason = v["stop_reason"].as_str().map(cut_id);
                if self.content {
                    for (i, block) in v["content"].as_array().into_iter().flatten().enumerate() {
                        self.anthropic_start(i as u64, block);
                    }
                }
            }
            Api::Responses => self.responses_whole(&v),
        }
    }

    /// Bytes of a stream as the client got them.
    pub(crate) fn streamed(&mut self, frame: &[u8]) {
        // The gateway's own output: well formed, and far below the event size limit.
        for event in self.events.feed(frame).unwrap_or_default() {
            // Only its id and finish reasons are wanted: most events are skipped unread.
            let wanted = self.content
                || (self.id.is_none() && event.data.contains("\"id\""))
                || names_a_reason(&event.data)
                || (self.api == Api::Responses && responses::wanted(&event.data));
            if !wanted {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match self.api {
                Api::OpenAi => self.openai_chunk(&v),
                Api::Anthropic => self.anthropic_event(&v),
                Api::Responses => self.responses_event(&v),
            }
        }
    }

    fn openai_chunk(&mut self, v: &Value) {
        if self.id.is_none() {
            self.id = v["id"].as_str().map(cut_id);
        }
        for (n, c) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let index = c["index"].as_u64().unwrap_or(n as u64);
            if let Some(r) = c["finish_reason"].as_str() {
                self.choice(index).finish_reason = Some(cut_id(r));
            }
            if self.content {
                self.openai_delta(index, &c["delta"]);
            }
        }
    }

    /// A streamed delta or a whole message: text, reasoning and tool calls added to the
    /// choice's parts.
    fn openai_delta(&mut self, index: u64, d: &Value) {
        for (field, reasoning) in [("reasoning_content", true), ("content", false)] {
            if let Some(t) = d[field].as_str().filter(|t| !t.is_empty()) {
                let t = self.keep(t);
                let parts = &mut self.choice(index).parts;
                match (parts.last_mut(), reasoning) {
                    (Some(Part::Text(s)), false) | (Some(Part::Reasoning(s)), true) => {
                        s.push_str(&t);
                    }
                    (_, false) => parts.push(Part::Text(t)),
                    (_, true) => parts.push(Part::Reasoning(t)),
                }
            }
        }
        for (n, call) in d["tool_calls"].as_array().into_iter().flatten().enumerate() {
            let slot = call["index"].as_u64().unwrap_or(n as u64);
            let args = self.keep(call["function"]["arguments"].as_str().unwrap_or(""));
            let name = self.keep(call["function"]["name"].as_str().unwrap_or(""));
            let choice = self.choice(index);
            match choice.slots.iter().find(|(s, _)| *s == slot) {
                Some(&(_, at)) => {
                    if let Some(Part::ToolCall { arguments, .. }) = choice.parts.get_mut(at) {
                        arguments.push_str(&args);
                    }
                }
                None => {
                    choice.slots.push((slot, choice.parts.len()));
                    choice.parts.push(Part::ToolCall {
                        id: call["id"].as_str().map(cut_id),
                        name,
                        arguments: args,
                    });
                }
            }
        }
    }

    fn anthropic_event(&mut self, v: &Value) {
        match v["type"].as_str().unwrap_or("") {
            "message_start" => self.id = v["message"]["id"].as_str().map(cut_id),
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.choice(0).finish_reason = Some(cut_id(r));
                }
            }
            "content_block_start" if self.content => {
                self.anthropic_start(v["index"].as_u64().unwrap_or(0), &v["content_block"]);
            }
            "content_block_delta" if self.content => {
                let d = &v["delta"];
                let added = ["text", "thinking", "partial_json"]
                    .iter()
                    .find_map(|f| d[*f].as_str());
                let Some(added) = added else {
                    return;
                };
                let added = self.keep(added);
                self.append(v["index"].as_u64().unwrap_or(0), &added);
            }
            _ => {}
        }
    }

    /// Streamed text added to the part in `slot` (a content block's or an output item's
    /// index) of the one choice.
    fn append(&mut self, slot: u64, added: &str) {
        let choice = self.choice(0);
        if let Some(&(_, at)) = choice.slots.iter().find(|(s, _)| *s == slot)
            && let Some(part) = choice.parts.get_mut(at)
        {
            match part {
                Part::Text(s) | Part::Reasoning(s) => s.push_str(added),
                Part::ToolCall { arguments, .. } => arguments.push_str(added),
            }
        }
    }

    /// A content block begins (streamed) or is whole (a whole answer).
    fn anthropic_start(&mut self, slot: u64, b: &Value) {
        let part = match b["type"].as_str().unwrap_or("") {
            "text" => Part::Text(self.keep(b["text"].as_str().unwrap_or(""))),
            "thinking" => Part::Reasoning(self.keep(b["thinking"].as_str().unwrap_or(""))),
            "tool_use" => {
                // Streamed: `{}` until its JSON comes in deltas.
                let input = match &b["input"] {
                    Value::Object(m) if m.is_empty() => String::new(),
                    Value::Null => String::new(),
                    v => v.to_string(),
                };
                Part::ToolCall {
                    id: b["id"].as_str().map(cut_id),
                    name: self.keep(b["name"].as_str().unwrap_or("")),
                    arguments: self.keep(&input),
                }
            }
            _ => return,
        };
        let choice = self.choice(0);
        choice.slots.push((slot, choice.parts.len()));
        choice.parts.push(part);
    }

    /// The output messages, one per choice.
    pub(crate) fn messages(&self) -> Value {
        let out = self.choices.iter().map(|c| {
            let parts: Vec<Value> = c
                .parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => text_part(t.clone()),
                    Part::Reasoning(t) => json!({"type": "reasoning", "content": t}),
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    } => json!({
                        "type": "tool_call",
                        "id": id,
                        "name": name,
                        "arguments": serde_json::from_str::<Value>(arguments)
                            .unwrap_or_else(|_| Value::String(arguments.clone())),
                    }),
                })
                .collect();
            let mut m = Map::new();
            m.insert("role".into(), "assistant".into());
            m.insert("parts".into(), parts.into());
            let reason = c.finish_reason.as_deref().map(finish_reason);
            m.insert("finish_reason".into(), reason.unwrap_or("error").into());
            Value::Object(m)
        });
        Value::Array(out.collect())
    }
}

/// The event sets a finish (or stop) reason: `"..._reason"`, then a string, not `null`.
fn names_a_reason(data: &str) -> bool {
    data.match_indices("_reason\"").any(|(at, m)| {
        let rest = data[at + m.len()..].trim_start();
        rest.strip_prefix(':')
            .is_some_and(|v| v.trim_start().starts_with('"'))
    })
}

/// A provider's finish reason as the conventions name it (`stop`, `length`,
/// `content_filter`, `tool_call`), or as the provider did when they have no name for it.
fn finish_reason(r: &str) -> &str {
    match r {
        "stop" | "end_turn" | "stop_sequence" => "stop",
        "length" | "max_tokens" => "length",
        "tool_calls" | "function_call" | "tool_use" => "tool_call",
        "content_filter" | "refusal" => "content_filter",
        other => other,
    }
}

mod responses;
#[cfg(test)]
mod tests;
