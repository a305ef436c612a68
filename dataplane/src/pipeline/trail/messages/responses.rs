//! The Responses API's prompt and answer in the conventions' shape: `instructions` are the
//! system instructions; input items are messages (`function_call` an assistant's
//! `tool_call`, `function_call_output` a tool's `tool_call_response`); output items are
//! the answer's parts, whole or from the typed stream events.

use serde_json::{Value, json};

use super::{Answer, Budget, Part, arguments, bounded, cut_id, message, newest_first, plain_text};
use super::{text_part, typed_part};

/// The system instructions and the input messages of a Responses request.
pub(super) fn input(request: &Value, budget: &mut Budget) -> (Option<Value>, Value) {
    let system = match &request["instructions"] {
        Value::String(s) => Some(json!([text_part(budget.take(s))])),
        _ => None,
    };
    let input = match &request["input"] {
        Value::String(s) => json!([message("user", vec![text_part(budget.take(s))])]),
        Value::Array(items) => newest_first(items.iter(), budget, item),
        _ => json!([]),
    };
    (system, input)
}

fn item(i: &Value, budget: &mut Budget) -> Value {
    match i["type"].as_str().unwrap_or("message") {
        "function_call" => message(
            "assistant",
            vec![json!({
                "type": "tool_call",
                "id": bounded(&i["call_id"], budget),
                "name": bounded(&i["name"], budget),
                "arguments": arguments(i["arguments"].as_str().unwrap_or(""), budget),
            })],
        ),
        "function_call_output" => message(
            "tool",
            vec![json!({
                "type": "tool_call_response",
                "id": bounded(&i["call_id"], budget),
                "response": plain_text(&i["output"], budget),
            })],
        ),
        "message" => {
            let parts = match &i["content"] {
                Value::String(s) => vec![text_part(budget.take(s))],
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                        (_, Some(t)) => text_part(budget.take(t)),
                        (kind, None) => typed_part(kind.unwrap_or("unknown")),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            message(i["role"].as_str().unwrap_or("user"), parts)
        }
        kind => message("assistant", vec![typed_part(kind)]),
    }
}

/// The events that end a Responses stream (and carry the whole response).
const ENDS: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// The event may set what a traced request reads when its content is not recorded.
pub(super) fn wanted(data: &str) -> bool {
    data.contains("\"response.created\"") || ENDS.iter().any(|e| data.contains(e))
}

impl Answer {
    /// A whole Responses answer: its id, its outcome, and (recorded) its output items.
    pub(super) fn responses_whole(&mut self, v: &Value) {
        self.responses_end(v);
        if self.content {
            for (n, item) in v["output"].as_array().into_iter().flatten().enumerate() {
                self.responses_item(n as u64, item, true);
            }
        }
    }

    /// The outcome of a finished response: `completed` is a stop (or tool calls), an
    /// `incomplete` one says why.
    fn responses_end(&mut self, response: &Value) {
        if self.id.is_none() {
            self.id = response["id"].as_str().map(cut_id);
        }
        let calls = (response["output"].as_array().into_iter().flatten())
            .any(|i| i["type"] == "function_call");
        let reason = match response["status"].as_str() {
            Some("completed") if calls => Some("tool_calls"),
            Some("completed") => Some("stop"),
            Some("incomplete") => match response["incomplete_details"]["reason"].as_str() {
                Some("max_output_tokens") => Some("length"),
                Some(other) => Some(other),
                None => Some("incomplete"),
            },
            Some("failed") => Some("error"),
            _ => None,
        };
        if let Some(r) = reason {
            self.choice(0).finish_reason = Some(cut_id(r));
        }
    }

    /// An output item begins (streamed, without its content) or is whole.
    fn responses_item(&mut self, slot: u64, i: &Value, whole: bool) {
        let part = match i["type"].as_str().unwrap_or("") {
            "message" => {
                let text: Vec<&str> = if whole {
                    (i["content"].as_array().into_iter().flatten())
                        .filter_map(|p| p["text"].as_str())
                        .collect()
                } else {
                    Vec::new()
                };
                Part::Text(self.keep(&text.concat()))
            }
            "reasoning" => {
                let summary: Vec<&str> = (i["summary"].as_array().into_iter().flatten())
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                Part::Reasoning(self.keep(&summary.concat()))
            }
            "function_call" => Part::ToolCall {
                id: i["call_id"].as_str().map(cut_id),
                name: self.keep(i["name"].as_str().unwrap_or("")),
                arguments: self.keep(i["arguments"].as_str().unwrap_or("")),
            },
            _ => return,
        };
        let choice = self.choice(0);
        choice.slots.push((slot, choice.parts.len()));
        choice.parts.push(part);
    }

    /// One typed event of a Responses stream.
    pub(super) fn responses_event(&mut self, v: &Value) {
        let kind = v["type"].as_str().unwrap_or("");
        match kind {
            "response.created" => self.id = v["response"]["id"].as_str().map(cut_id),
            k if ENDS.contains(&k) => self.responses_end(&v["response"]),
            "response.output_item.added" if self.content => {
                let slot = v["output_index"].as_u64().unwrap_or(0);
                self.responses_item(slot, &v["item"], false);
            }
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
                if self.content =>
            {
                let added = self.keep(v["delta"].as_str().unwrap_or(""));
                self.append(v["output_index"].as_u64().unwrap_or(0), &added);
            }
            _ => {}
        }
    }
}
