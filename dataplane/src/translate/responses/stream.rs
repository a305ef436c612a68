//! OpenAI chat chunks as the Responses API's typed events, as they arrive:
//! `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its deltas (`response.output_text.delta`,
//! `response.function_call_arguments.delta`, `response.reasoning_summary_text.delta`) and
//! their `...done` events, `response.output_item.done`; last `response.completed` (or
//! `response.incomplete`) with the whole Response and its usage. Every event carries its
//! `sequence_number`, counted from 0.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::{Echo, call_item, message_item, reasoning_item, text_part};
use crate::base::sse;
use crate::metering::usage::Usage;
use crate::translate::sse_event;

/// The output item being written.
#[derive(Clone, Debug)]
enum Open {
    None,
    Text {
        text: String,
    },
    Reasoning {
        thinking: String,
        signature: String,
        summary_open: bool,
    },
    Call {
        chat_index: u64,
        call_id: Value,
        name: Value,
        arguments: String,
    },
}

#[derive(Clone, Debug)]
pub struct Stream {
    echo: std::sync::Arc<Echo>,
    created: i64,
    seq: u64,
    started: bool,
    done: bool,
    stem: String,
    model: Value,
    /// The items written out, in output order.
    output: Vec<Value>,
    open: Open,
    /// The id of the item being written.
    item_id: String,
    calls: u64,
    reasonings: u64,
    finish: Option<String>,
    usage: Option<Usage>,
}

impl Stream {
    pub fn new(echo: std::sync::Arc<Echo>, created: i64) -> Self {
        Self {
            echo,
            created,
            seq: 0,
            started: false,
            done: false,
            stem: String::new(),
            model: Value::Null,
            output: Vec::new(),
            open: Open::None,
            item_id: String::new(),
            calls: 0,
            reasonings: 0,
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut String, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.push_str(&sse_event(kind, &v));
    }

    fn response(&self) -> Value {
        self.echo
            .started(&format!("resp_{}", self.stem), self.created, &self.model)
    }

    fn index(&self) -> usize {
        self.output.len()
    }

    fn open(&mut self, out: &mut String, open: Open, id: String, item: Value) {
        self.close(out);
        self.item_id = id;
        self.open = open;
        let output_index = self.index();
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
    }

    /// Closes the open item: its `...done` events, then `response.output_item.done`.
    fn close(&mut self, out: &mut String) {
        let open = std::mem::replace(&mut self.open, Open::None);
        let (id, output_index) = (self.item_id.clone(), self.index());
        let at = json!({"item_id": id, "output_index": output_index});
        let with = |mut v: Value, extra: Value| {
            if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        let item = match open {
            Open::None => return,
            Open::Text { text } => {
                let part = text_part(&text);
                let place = with(at.clone(), json!({"content_index": 0}));
                self.emit(
                    out,
                    "response.output_text.done",
                    with(place.clone(), json!({"text": text, "logprobs": []})),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    with(place, json!({"part": part.clone()})),
                );
                message_item(id, part, "completed")
            }
            Open::Reasoning {
                thinking,
                signature,
                summary_open,
            } => {
                if summary_open {
                    let place = with(at.clone(), json!({"summary_index": 0}));
                    self.emit(
                        out,
                        "response.reasoning_summary_text.done",
                        with(place.clone(), json!({"text": thinking})),
                    );
                    self.emit(
                        out,
                        "response.reasoning_summary_part.done",
                        with(
                            place,
                            json!({"part": {"type": "summary_text", "text": thinking}}),
                        ),
                    );
                }
                let block =
                    json!({"type": "thinking", "thinking": thinking, "signature": signature});
                reasoning_item(id, &block, self.echo.summary)
            }
            Open::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    with(at, json!({"arguments": arguments, "name": name})),
                );
                call_item(id, &call_id, &name, &json!(arguments), "completed")
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        self.output.push(item);
    }

    fn start(&mut self, c: &Value, out: &mut String) {
        self.started = true;
        self.stem = super::stem(c.get("id").and_then(Value::as_str));
        self.model = c.get("model").cloned().unwrap_or(Value::Null);
        // The same Response opens both events: written once (the members in the order
        // `emit` gives them).
        let response = self.response().to_string();
        for kind in ["response.created", "response.in_progress"] {
            out.push_str(&format!(
                "event: {kind}\ndata: {{\"response\":{response},\"sequence_number\":{},\"type\":\"{kind}\"}}\n\n",
                self.seq
            ));
            self.seq += 1;
        }
    }

    fn text(&mut self, delta: &str, out: &mut String) {
        if !matches!(self.open, Open::Text { .. }) {
            let id = format!("msg_{}", self.stem);
            let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
            self.open(
                out,
                Open::Text {
                    text: String::new(),
                },
                id.clone(),
                item,
            );
            let output_index = self.index();
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
        }
        if let Open::Text { text } = &mut self.open {
            text.push_str(delta);
        }
        let output_index = self.index();
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": self.item_id, "output_index": output_index, "content_index": 0,
                "delta": delta, "logprobs": []}),
        );
    }

    /// A piece of Claude's thinking (the pivot's `delta.thinking_block`).
    fn thinking(&mut self, t: &Value, out: &mut String) {
        if let Some(data) = t.get("data") {
            let id = format!("rs_{}_{}", self.stem, self.reasonings);
            self.reasonings += 1;
            self.close(out);
            let block = json!({"type": "redacted_thinking", "data": data});
            let item = reasoning_item(id.clone(), &block, false);
            let output_index = self.index();
            let added = json!({"type": "reasoning", "id": id, "summary": []});
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": added}),
            );
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            );
            self.output.push(item);
            return;
        }
        if !matches!(self.open, Open::Reasoning { .. }) {
            let id = format!("rs_{}_{}", self.stem, self.reasonings);
            self.reasonings += 1;
            let item = json!({"type": "reasoning", "id": id, "summary": []});
            let open = Open::Reasoning {
                thinking: String::new(),
                signature: String::new(),
                summary_open: false,
            };
            self.open(out, open, id, item);
        }
        let summary = self.echo.summary;
        let (id, output_index) = (self.item_id.clone(), self.index());
        let Open::Reasoning {
            thinking,
            signature,
            summary_open,
        } = &mut self.open
        else {
            return;
        };
        if let Some(s) = t.get("signature").and_then(Value::as_str) {
            signature.push_str(s);
        }
        let Some(piece) = t
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        else {
            return;
        };
        thinking.push_str(piece);
        if !summary {
            return;
        }
        let first = !*summary_open;
        *summary_open = true;
        let at = json!({"item_id": id, "output_index": output_index, "summary_index": 0});
        if first {
            let mut added = at.clone();
            added["part"] = json!({"type": "summary_text", "text": ""});
            self.emit(out, "response.reasoning_summary_part.added", added);
        }
        let mut delta = at;
        delta["delta"] = json!(piece);
        self.emit(out, "response.reasoning_summary_text.delta", delta);
    }

    fn call(&mut self, call: &Value, out: &mut String) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let same = matches!(&self.open, Open::Call { chat_index: i, .. } if *i == chat_index);
        if !same {
            if call.get("id").is_none_or(Value::is_null) {
                // A fragment of a call whose item is closed: nothing to add it to.
                return;
            }
            let id = format!("fc_{}_{}", self.stem, self.calls);
            self.calls += 1;
            let call_id = call.get("id").cloned().unwrap_or(Value::Null);
            let name = call
                .pointer("/function/name")
                .cloned()
                .unwrap_or(Value::Null);
            let item = call_item(id.clone(), &call_id, &name, &json!(""), "in_progress");
            let open = Open::Call {
                chat_index,
                call_id,
                name,
                arguments: String::new(),
            };
            self.open(out, open, id, item);
        }
        let Some(args) = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        if let Open::Call { arguments, .. } = &mut self.open {
            arguments.push_str(args);
        }
        let output_index = self.index();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": self.item_id, "output_index": output_index, "delta": args}),
        );
    }

    pub(super) fn chunk(&mut self, c: &Value) -> String {
        let mut out = String::new();
        if let Some(error) = c.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .or_else(|| error.get("type").and_then(Value::as_str))
                .unwrap_or("server_error");
            self.fail(message, code, &mut out);
            return out;
        }
        if !self.started {
            self.start(c, &mut out);
        }
        let chunk = crate::translate::PivotChunk::of(c);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if let Some(t) = chunk.thinking() {
            self.thinking(t, &mut out);
        }
        if let Some(text) = chunk.text() {
            self.text(text, &mut out);
        }
        for call in chunk.calls() {
            self.call(call, &mut out);
        }
        if let Some(finish) = chunk.finish {
            self.finish = Some(finish.to_string());
            self.close(&mut out);
        }
        out
    }

    fn fail(&mut self, message: &str, code: &str, out: &mut String) {
        self.done = true;
        self.emit(
            out,
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
    }

    fn complete(&mut self) -> String {
        let mut out = String::new();
        if !self.started {
            self.start(&Value::Null, &mut out);
        }
        self.close(&mut out);
        self.done = true;
        let (status, incomplete) = super::status(self.finish.as_deref());
        let mut response = self.response();
        response["status"] = json!(status);
        response["incomplete_details"] = incomplete;
        response["output"] = Value::Array(std::mem::take(&mut self.output));
        response["usage"] = super::usage(self.usage.unwrap_or_default());
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(&mut out, kind, json!({"response": response}));
        out
    }
}

/// Just enough of a pivot chunk to recognise one that only adds text, without building
/// a document: most of a stream.
#[derive(Deserialize)]
struct TextOnly<'a> {
    #[serde(borrow)]
    choices: [TextChoice<'a>; 1],
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct TextChoice<'a> {
    #[serde(borrow)]
    delta: TextDelta<'a>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct TextDelta<'a> {
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    thinking_block: Option<IgnoredAny>,
}

impl Stream {
    /// The `response.output_text.delta` event for a chunk that only adds text to the open
    /// message, written without building a document (the same bytes as the general path).
    pub(super) fn text_fast(&mut self, data: &str) -> Option<String> {
        if !matches!(self.open, Open::Text { .. }) {
            return None;
        }
        let c: TextOnly<'_> = serde_json::from_str(data).ok()?;
        let [choice] = &c.choices;
        if c.usage.is_some()
            || c.error.is_some()
            || choice.finish_reason.is_some()
            || choice.delta.tool_calls.is_some()
            || choice.delta.thinking_block.is_some()
            || choice.delta.content.is_empty()
        {
            return None;
        }
        let delta = &choice.delta.content;
        if let Open::Text { text } = &mut self.open {
            text.push_str(delta);
        }
        let quoted = serde_json::to_string(delta.as_ref()).ok()?;
        let item = serde_json::to_string(&self.item_id).ok()?;
        let out = format!(
            "event: response.output_text.delta\ndata: {{\"content_index\":0,\"delta\":{quoted},\"item_id\":{item},\"logprobs\":[],\"output_index\":{},\"sequence_number\":{},\"type\":\"response.output_text.delta\"}}\n\n",
            self.index(),
            self.seq,
        );
        self.seq += 1;
        Some(out)
    }
}

impl crate::translate::StreamStep for Stream {
    fn event(&mut self, event: &sse::Event) -> String {
        if self.done {
            return String::new();
        }
        if let Some(out) = self.text_fast(&event.data) {
            return out;
        }
        match crate::translate::PivotEvent::of(event) {
            crate::translate::PivotEvent::Done => self.complete(),
            crate::translate::PivotEvent::Chunk(c) => self.chunk(&c),
            crate::translate::PivotEvent::Other => String::new(),
        }
    }

    fn end(&mut self) -> String {
        if self.done {
            return String::new();
        }
        let mut out = String::new();
        self.fail(crate::translate::STREAM_CUT, "server_error", &mut out);
        out
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
