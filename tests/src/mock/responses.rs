//! OpenAI's Responses API as mock-llm speaks it (`POST /v1/responses`, JSON and the typed
//! SSE events with their `sequence_number`s): inputs as a string or as items (messages,
//! `function_call`, `function_call_output`), `instructions`, function tools, `reasoning`,
//! `max_output_tokens` (an answer cut by it is `incomplete`), `metadata`, `store`, and
//! usage with cached and reasoning tokens. Stored responses belong to the account (the
//! API key) that made them: `previous_response_id` from another account is not found,
//! as with the real API, whose stored state lives in one organisation and project.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::openai::error_body;
use super::tools::{self, ToolCall};

fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Value {
    error_body(&message.into(), "invalid_request_error", param, code)
}

/// A checked request: what the answer needs.
#[derive(Debug)]
pub struct ResponsesRequest {
    pub model: String,
    pub stream: bool,
    pub store: bool,
    pub previous_response_id: Option<String>,
    pub instructions: Value,
    /// This request's input, as items (a string input is one user message).
    pub input: Vec<Value>,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub max_output_tokens: Option<u64>,
    pub metadata: Value,
    pub reasoning: Value,
    pub text: Value,
    pub temperature: Value,
    pub top_p: Value,
}

impl ResponsesRequest {
    /// Text of every input item, for token counts and directive tags.
    pub fn texts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.input.iter().map(item_text).collect();
        if let Some(s) = self.instructions.as_str() {
            out.push(s.to_string());
        }
        out
    }
}

/// The text an input item carries: a message's text parts, a tool call's arguments, a
/// tool result's output.
pub fn item_text(item: &Value) -> String {
    match item["type"].as_str().unwrap_or("message") {
        "function_call" => item["arguments"].as_str().unwrap_or("").to_string(),
        "function_call_output" => match &item["output"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        _ => match &item["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        },
    }
}

const ITEM_TYPES: [&str; 4] = [
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
];

fn check_item(i: usize, item: &Value) -> Result<(), Value> {
    let param = format!("input[{i}]");
    let Some(obj) = item.as_object() else {
        return Err(invalid(
            format!("Invalid type for 'input[{i}]': expected an object."),
            Some(&param),
            Some("invalid_type"),
        ));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("message");
    if !ITEM_TYPES.contains(&kind) {
        return Err(invalid(
            format!(
                "Invalid value: '{kind}'. Supported values are: 'message', 'function_call', 'function_call_output' and 'reasoning'."
            ),
            Some(&format!("{param}.type")),
            Some("invalid_value"),
        ));
    }
    match kind {
        "message" => {
            let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(invalid(
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."
                    ),
                    Some(&format!("{param}.role")),
                    Some("invalid_value"),
                ));
            }
            if !matches!(obj.get("content"), Some(Value::String(_) | Value::Array(_))) {
                return Err(invalid(
                    format!("Missing required parameter: '{param}.content'."),
                    Some(&format!("{param}.content")),
                    Some("missing_required_parameter"),
                ));
            }
        }
        "function_call_output" | "function_call"
            if obj.get("call_id").and_then(Value::as_str).is_none() =>
        {
            return Err(invalid(
                format!("Missing required parameter: '{param}.call_id'."),
                Some(&format!("{param}.call_id")),
                Some("missing_required_parameter"),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Checks a request body as the real API would, with its error on failure.
pub fn parse(body: &[u8]) -> Result<ResponsesRequest, Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("We could not parse the JSON body of your request. ({e})"),
            None,
            None,
        )
    })?;
    let Some(obj) = v.as_object() else {
        return Err(invalid(
            "The request body must be a JSON object.",
            None,
            None,
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(invalid(
                "Missing required parameter: 'model'.",
                Some("model"),
                Some("missing_required_parameter"),
            ));
        }
    };
    let input = match obj.get("input") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_item(i, item)?;
            }
            items.clone()
        }
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'input': expected one of a string or array of input items.",
                Some("input"),
                Some("invalid_type"),
            ));
        }
    };
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) => {
            for (i, tool) in t.iter().enumerate() {
                if tool["type"] == "function" && tool["name"].as_str().is_none() {
                    return Err(invalid(
                        format!("Missing required parameter: 'tools[{i}].name'."),
                        Some(&format!("tools[{i}].name")),
                        Some("missing_required_parameter"),
                    ));
                }
            }
            t.clone()
        }
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'tools': expected an array.",
                Some("tools"),
                Some("invalid_type"),
            ));
        }
    };
    let max_output_tokens = match obj.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(n) if n >= 16 => Some(n),
            _ => {
                return Err(invalid(
                    "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16.",
                    Some("max_output_tokens"),
                    Some("integer_below_min_value"),
                ));
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'stream': expected a boolean.",
                Some("stream"),
                Some("invalid_type"),
            ));
        }
    };
    let get = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
    Ok(ResponsesRequest {
        model,
        stream,
        store: obj.get("store").and_then(Value::as_bool).unwrap_or(true),
        previous_response_id: obj
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        instructions: get("instructions"),
        input,
        tools,
        tool_choice: obj.get("tool_choice").cloned().unwrap_or(json!("auto")),
        parallel_tool_calls: obj
            .get("parallel_tool_calls")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        max_output_tokens,
        metadata: obj.get("metadata").cloned().unwrap_or(json!({})),
        reasoning: get("reasoning"),
        text: obj
            .get("text")
            .cloned()
            .unwrap_or(json!({"format": {"type": "text"}})),
        temperature: obj.get("temperature").cloned().unwrap_or(json!(1.0)),
        top_p: obj.get("top_p").cloned().unwrap_or(json!(1.0)),
    })
}

/// A stored response: the object, its input items, and the conversation up to and
/// including it (what a follow-up's `previous_response_id` brings back).
#[derive(Clone, Debug)]
pub struct Stored {
    pub response: Value,
    pub input_items: Vec<Value>,
    pub conversation: Vec<Value>,
}

/// Stored responses an account keeps at most.
const MAX_STORED: usize = 20_000;

/// Stored responses by account (the key that made them) and id.
#[derive(Debug, Default)]
pub struct Store {
    by_account: HashMap<String, HashMap<String, Stored>>,
}

impl Store {
    pub fn get(&self, account: &str, id: &str) -> Option<&Stored> {
        self.by_account.get(account)?.get(id)
    }

    pub fn put(&mut self, account: &str, stored: Stored) {
        let id = stored.response["id"].as_str().unwrap_or("").to_string();
        let held = self.by_account.entry(account.to_string()).or_default();
        // Bounded, as a long benchmark would otherwise hold every answer: past the bound
        // the store starts over (the tests never come near it).
        if held.len() >= MAX_STORED {
            held.clear();
        }
        held.insert(id, stored);
    }

    pub fn delete(&mut self, account: &str, id: &str) -> bool {
        self.by_account
            .get_mut(account)
            .is_some_and(|m| m.remove(id).is_some())
    }
}

pub fn not_found(id: &str) -> Value {
    invalid(format!("No response found with id '{id}'."), None, None)
}

pub fn previous_not_found(id: &str) -> Value {
    invalid(
        format!("Previous response with id '{id}' not found."),
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    )
}

/// What the model does with a conversation: the text it answers, or the tool it calls.
pub struct Turn {
    pub pieces: Vec<String>,
    pub tool_call: Option<ToolCall>,
    pub reasoning_tokens: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    /// Cut by `max_output_tokens`.
    pub incomplete: bool,
}

/// The answer to `req` after `history` (the stored conversation it follows).
pub fn turn(req: &ResponsesRequest, history: &[Value], chunks: Option<usize>) -> Turn {
    let mut last_user = String::new();
    let mut has_tool_result = false;
    for item in history.iter().chain(&req.input) {
        match item["type"].as_str().unwrap_or("message") {
            "message" if item["role"] == "user" => {
                last_user = item_text(item);
                has_tool_result = false;
            }
            "function_call_output" => {
                last_user = format!("tool result: {}", item_text(item));
                has_tool_result = true;
            }
            _ => {}
        }
    }
    let first_tool = req
        .tools
        .iter()
        .find(|t| t["type"] == "function")
        .and_then(|t| {
            Some((
                t["name"].as_str()?.to_string(),
                t.get("parameters").cloned(),
            ))
        });
    let tool_call = if req.tool_choice == "none" {
        None
    } else {
        tools::decide(first_tool, has_tool_result)
    };
    let history_texts: Vec<String> = history.iter().map(item_text).collect();
    let cached_tokens = super::prompt_tokens(&history_texts, 3);
    let input_tokens = cached_tokens + super::prompt_tokens(&req.texts(), 3);
    let reasoning_tokens = match req.reasoning["effort"].as_str() {
        None | Some("none") => 0,
        Some(_) => 8,
    };
    let mut pieces = super::reply_pieces(&last_user, chunks);
    let mut incomplete = false;
    if let Some(max) = req.max_output_tokens {
        let room = max.saturating_sub(reasoning_tokens) as usize;
        if pieces.len() > room {
            pieces.truncate(room);
            incomplete = true;
        }
    }
    Turn {
        pieces,
        tool_call,
        reasoning_tokens,
        input_tokens,
        cached_tokens,
        incomplete,
    }
}

/// Ids of one answer's response and items.
pub struct Ids {
    pub response: String,
    pub message: String,
    pub reasoning: String,
    pub call: String,
    pub call_item: String,
}

impl Ids {
    pub fn new(n: u64) -> Self {
        Self {
            response: format!("resp_mock{n:016x}"),
            message: format!("msg_mock{n:016x}"),
            reasoning: format!("rs_mock{n:016x}"),
            call: format!("call_mock{n:016x}"),
            call_item: format!("fc_mock{n:016x}"),
        }
    }
}

fn output_tokens(t: &Turn) -> u64 {
    let visible = match &t.tool_call {
        Some(_) => 2,
        None => t.pieces.len() as u64,
    };
    visible + t.reasoning_tokens
}

pub fn usage(t: &Turn) -> Value {
    let output = output_tokens(t);
    json!({
        "input_tokens": t.input_tokens,
        "input_tokens_details": {"cached_tokens": t.cached_tokens},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": t.reasoning_tokens},
        "total_tokens": t.input_tokens + output,
    })
}

/// The output items of a finished turn.
pub fn output_items(t: &Turn, ids: &Ids, req: &ResponsesRequest) -> Vec<Value> {
    let mut out = Vec::new();
    if t.reasoning_tokens > 0 {
        out.push(reasoning_item(ids, req));
    }
    match &t.tool_call {
        Some(call) => out.push(json!({
            "id": ids.call_item, "type": "function_call", "status": "completed",
            "call_id": ids.call, "name": call.name, "arguments": call.arguments.to_string(),
        })),
        None => out.push(message_item(ids, &t.pieces.concat(), "completed")),
    }
    out
}

fn reasoning_item(ids: &Ids, req: &ResponsesRequest) -> Value {
    let summary = if req.reasoning["summary"].is_string() {
        json!([{"type": "summary_text", "text": "Mock reasoning."}])
    } else {
        json!([])
    };
    json!({"id": ids.reasoning, "type": "reasoning", "summary": summary})
}

fn message_item(ids: &Ids, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    };
    json!({"id": ids.message, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// The response object; `output` and `usage` are left empty while it is in progress.
pub fn response(
    req: &ResponsesRequest,
    t: &Turn,
    ids: &Ids,
    created: u64,
    finished: bool,
) -> Value {
    let status = match (finished, t.incomplete) {
        (false, _) => "in_progress",
        (true, false) => "completed",
        (true, true) => "incomplete",
    };
    let mut reasoning = Map::new();
    reasoning.insert("effort".into(), req.reasoning["effort"].clone());
    reasoning.insert("summary".into(), req.reasoning["summary"].clone());
    json!({
        "id": ids.response,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": false,
        "completed_at": if status == "completed" { json!(created) } else { Value::Null },
        "error": null,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": if finished { Value::Array(output_items(t, ids, req)) } else { json!([]) },
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": reasoning,
        "service_tier": "default",
        "store": req.store,
        "temperature": req.temperature,
        "text": req.text,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_p": req.top_p,
        "truncation": "disabled",
        "usage": if finished { usage(t) } else { Value::Null },
        "user": null,
        "metadata": req.metadata,
    })
}

/// The typed events of a streamed answer, each a complete SSE event, numbered.
pub fn stream_events(req: &ResponsesRequest, t: &Turn, ids: &Ids, created: u64) -> Vec<String> {
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response(req, t, ids, created, false)}),
        json!({"type": "response.in_progress", "response": response(req, t, ids, created, false)}),
    ];
    let mut index = 0;
    if t.reasoning_tokens > 0 {
        let item = reasoning_item(ids, req);
        events.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"id": ids.reasoning, "type": "reasoning", "summary": []}}),
        );
        events.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        index += 1;
    }
    match &t.tool_call {
        Some(call) => {
            let args = call.arguments.to_string();
            events.push(
                json!({"type": "response.output_item.added", "output_index": index,
                "item": {"id": ids.call_item, "type": "function_call", "status": "in_progress",
                         "call_id": ids.call, "name": call.name, "arguments": ""}}),
            );
            for piece in tools::argument_pieces(call) {
                events.push(json!({"type": "response.function_call_arguments.delta",
                    "item_id": ids.call_item, "output_index": index, "delta": piece}));
            }
            events.push(json!({"type": "response.function_call_arguments.done",
                "item_id": ids.call_item, "output_index": index, "name": call.name, "arguments": args}));
            events.push(
                json!({"type": "response.output_item.done", "output_index": index,
                "item": {"id": ids.call_item, "type": "function_call", "status": "completed",
                         "call_id": ids.call, "name": call.name, "arguments": args}}),
            );
        }
        None => {
            let text = t.pieces.concat();
            let at = json!({"item_id": ids.message, "output_index": index, "content_index": 0});
            let with = |mut v: Value| {
                if let (Some(o), Some(a)) = (v.as_object_mut(), at.as_object()) {
                    o.extend(a.clone());
                }
                v
            };
            events.push(
                json!({"type": "response.output_item.added", "output_index": index,
                "item": message_item(ids, "", "in_progress")}),
            );
            events.push(with(json!({"type": "response.content_part.added",
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
            for piece in &t.pieces {
                events.push(with(
                    json!({"type": "response.output_text.delta", "delta": piece, "logprobs": []}),
                ));
            }
            events.push(with(
                json!({"type": "response.output_text.done", "text": text, "logprobs": []}),
            ));
            events.push(with(json!({"type": "response.content_part.done",
                "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}})));
            events.push(json!({"type": "response.output_item.done", "output_index": index,
                "item": message_item(ids, &text, if t.incomplete { "incomplete" } else { "completed" })}));
        }
    }
    let end = if t.incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(json!({"type": end, "response": response(req, t, ids, created, true)}));
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut e)| {
            e["sequence_number"] = json!(n);
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or(""))
        })
        .collect()
}

/// `GET /v1/responses/{id}/input_items`: the items, newest first as the API lists them by
/// default, each with an id.
pub fn input_items_list(stored: &Stored, order_asc: bool) -> Value {
    let mut data: Vec<Value> = stored
        .input_items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut item = item.clone();
            if item.get("id").is_none() {
                let id = format!("{}_in{i}", stored.response["id"].as_str().unwrap_or(""));
                item["id"] = json!(id);
            }
            if item.get("type").is_none() {
                item["type"] = json!("message");
            }
            item
        })
        .collect();
    if !order_asc {
        data.reverse();
    }
    json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|d| d["id"].clone()),
        "last_id": data.last().map(|d| d["id"].clone()),
        "has_more": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> ResponsesRequest {
        parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_string_input_is_one_user_message_and_the_stream_is_numbered() {
        let r = req(json!({"model": "gpt-4o", "input": "hello there", "stream": true}));
        let t = turn(&r, &[], None);
        assert_eq!(t.pieces.concat(), "Mock reply to: hello there");
        let events = stream_events(&r, &t, &Ids::new(1), 0);
        let types: Vec<String> = events
            .iter()
            .map(|e| {
                e.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string()
            })
            .collect();
        assert_eq!(types.first().unwrap(), "response.created");
        assert_eq!(types.last().unwrap(), "response.completed");
        assert!(types.contains(&"response.output_text.delta".to_string()));
        for (n, e) in events.iter().enumerate() {
            let data: Value =
                serde_json::from_str(e.lines().nth(1).unwrap().trim_start_matches("data: "))
                    .unwrap();
            assert_eq!(data["sequence_number"], n);
        }
    }

    #[test]
    fn a_tool_is_called_then_its_output_quoted() {
        let tool = json!({"type": "function", "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}});
        let first = req(json!({"model": "m", "input": "weather?", "tools": [tool]}));
        let t = turn(&first, &[], None);
        assert_eq!(t.tool_call.as_ref().unwrap().name, "weather");
        let follow = req(json!({"model": "m", "tools": [tool], "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}));
        let history = vec![json!({"type": "message", "role": "user", "content": "weather?"})];
        let t = turn(&follow, &history, None);
        assert!(t.tool_call.is_none());
        assert_eq!(t.pieces.concat(), "Mock reply to: tool result: sunny");
        assert!(t.cached_tokens > 0, "the history counts as cached input");
    }

    #[test]
    fn bad_requests_get_the_apis_errors() {
        let e = parse(br#"{"input": "x"}"#).unwrap_err();
        assert_eq!(e["error"]["param"], "model");
        let e = parse(br#"{"model": "m", "input": 3}"#).unwrap_err();
        assert_eq!(e["error"]["param"], "input");
        let e = parse(br#"{"model": "m", "input": [{"type": "bogus"}]}"#).unwrap_err();
        assert_eq!(e["error"]["param"], "input[0].type");
        let e = parse(br#"{"model": "m", "input": "x", "max_output_tokens": 3}"#).unwrap_err();
        assert_eq!(e["error"]["code"], "integer_below_min_value");
    }

    #[test]
    fn max_output_tokens_cuts_the_answer_as_incomplete() {
        let r = req(
            json!({"model": "m", "input": "a b c d e f g h i j k l m n o p q r s t", "max_output_tokens": 16}),
        );
        let t = turn(&r, &[], None);
        assert!(t.incomplete);
        let v = response(&r, &t, &Ids::new(2), 0, true);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["usage"]["output_tokens"], 16);
    }
}
