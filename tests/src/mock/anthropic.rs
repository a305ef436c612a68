//! Anthropic's Messages API wire format, as mock-llm speaks it: request checks that mirror
//! the real API's errors, the JSON message, and the SSE event stream (`message_start`,
//! `content_block_*`, `message_delta`, `message_stop`).

use serde_json::{Value, json};

#[derive(Debug)]
pub struct MessagesRequest {
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
    pub texts: Vec<String>,
    pub last_user: String,
    pub tool_call: Option<super::tools::ToolCall>,
    /// Server-side web searches the answer makes: as many as its web search tools allow
    /// (`max_uses`, or 3 for one that sets none), reported in `usage.server_tool_use`.
    pub web_searches: u64,
    /// Extended thinking was asked for (`thinking.type: enabled`): the answer starts with
    /// a signed thinking block.
    pub thinking: bool,
}

/// Extended thinking, checked as the real API checks it: a budget of at least 1024
/// tokens, below `max_tokens`.
fn thinking_of(obj: &serde_json::Map<String, Value>, max_tokens: u64) -> Result<bool, Value> {
    let Some(t) = obj.get("thinking").filter(|t| !t.is_null()) else {
        return Ok(false);
    };
    match t.get("type").and_then(Value::as_str) {
        Some("disabled") => return Ok(false),
        Some("enabled") => {}
        _ => {
            return Err(invalid(
                "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'",
            ));
        }
    }
    let budget = t
        .get("budget_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("thinking.enabled.budget_tokens: Field required"))?;
    if budget < 1024 {
        return Err(invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ));
    }
    if max_tokens <= budget {
        return Err(invalid(
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ));
    }
    Ok(true)
}

/// With thinking on, the last assistant turn that calls a tool must start with the thinking
/// block the model wrote, its signature intact.
fn check_thinking_kept(messages: &[Value]) -> Result<(), Value> {
    let Some((i, last)) = messages
        .iter()
        .enumerate()
        .rfind(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))
    else {
        return Ok(());
    };
    let blocks = last
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let calls = blocks
        .iter()
        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"));
    let first = blocks.first();
    match first.and_then(|b| b.get("type")).and_then(Value::as_str) {
        Some("thinking") => {
            let b = first.unwrap_or(&Value::Null);
            let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
            if b.get("signature").and_then(Value::as_str)
                != Some(super::bedrock::thinking_signature(text).as_str())
            {
                return Err(invalid(format!(
                    "messages.{i}.content.0: Invalid `signature` in `thinking` block"
                )));
            }
            Ok(())
        }
        Some("redacted_thinking") => Ok(()),
        Some(other) if calls => Err(invalid(format!(
            "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{other}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
        ))),
        _ => Ok(()),
    }
}

/// The id of the answer's tool call: unique per answer, as Anthropic's are.
fn tool_id(message_id: &str) -> String {
    format!("toolu_{}", message_id.trim_start_matches("msg_"))
}

/// The thinking text mock-llm writes, and its block.
fn thought(req: &MessagesRequest) -> Value {
    let text = format!("Mock thinking about: {}", req.last_user);
    let signature = super::bedrock::thinking_signature(&text);
    json!({"type": "thinking", "thinking": text, "signature": signature})
}

/// An Anthropic-format error body.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The error `type` Anthropic uses for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn invalid(message: impl Into<String>) -> Value {
    error_body("invalid_request_error", &message.into())
}

fn text_of(content: &Value, at: &str) -> Result<String, Value> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid(format!("{at}.{i}.text: Field required")))?
                            .to_string(),
                    ),
                    Some(
                        "image" | "document" | "tool_use" | "tool_result" | "thinking"
                        | "redacted_thinking",
                    ) => {}
                    _ => {
                        return Err(invalid(format!(
                            "{at}.{i}.type: Input tag does not match any of the expected tags"
                        )));
                    }
                }
            }
            Ok(out.join(" "))
        }
        _ => Err(invalid(format!(
            "{at}: Input should be a valid string or list"
        ))),
    }
}

pub fn parse(body: &[u8]) -> Result<MessagesRequest, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| invalid("There was an issue with your request body: invalid JSON"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None => return Err(invalid("model: Field required")),
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    };
    let max_tokens = match obj.get("max_tokens") {
        Some(n) => n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
        })?,
        None => return Err(invalid("max_tokens: Field required")),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        None => return Err(invalid("messages: Field required")),
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    let mut texts = Vec::new();
    if let Some(system) = obj.get("system") {
        texts.push(text_of(system, "system")?);
    }
    let mut last_user = String::new();
    let mut tool_use_ids: Vec<String> = Vec::new();
    let mut has_tool_result = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let blocks = m
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if role == "assistant" {
            tool_use_ids = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .filter_map(|b| b.get("id").and_then(Value::as_str).map(str::to_string))
                .collect();
        }
        let results: Vec<&Value> = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .collect();
        if role == "user" {
            has_tool_result = !results.is_empty();
        }
        for r in &results {
            let id = r.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
            if !tool_use_ids.iter().any(|t| t == id) {
                return Err(invalid(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )));
            }
        }
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        let text = text_of(
            m.get("content").unwrap_or(&Value::Null),
            &format!("messages.{i}.content"),
        )?;
        if role == "user" {
            last_user.clone_from(&text);
            if let Some(r) = results.last() {
                let result = match r.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(c) => text_of(c, &format!("messages.{i}.content"))?,
                    None => String::new(),
                };
                last_user = format!("tool result: {result}");
            }
        }
        texts.push(text);
    }
    // Server tools (web search) run at the provider and are billed per use; the answer's
    // tool call, if any, is for the first client tool.
    let is_server_tool = |t: &Value| {
        t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|k| k.starts_with("web_search"))
    };
    let web_searches = match obj.get("tools") {
        Some(Value::Array(tools)) => tools
            .iter()
            .filter(|t| is_server_tool(t))
            .map(|t| t.get("max_uses").and_then(Value::as_u64).unwrap_or(3))
            .sum(),
        _ => 0,
    };
    let first_tool = match obj.get("tools") {
        None => None,
        Some(Value::Array(tools)) => match tools.iter().find(|t| !is_server_tool(t)) {
            None => None,
            Some(t) => {
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tools.0.name: Field required"))?;
                if t.get("input_schema").is_none() {
                    return Err(invalid("tools.0.input_schema: Field required"));
                }
                Some((name.to_string(), t.get("input_schema").cloned()))
            }
        },
        Some(_) => return Err(invalid("tools: Input should be a valid list")),
    };
    let tool_call = super::tools::decide(first_tool, has_tool_result);
    if messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        != Some("user")
    {
        return Err(invalid(
            "messages: first message must use the \"user\" role",
        ));
    }
    let thinking = thinking_of(obj, max_tokens)?;
    if thinking {
        check_thinking_kept(messages)?;
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean")),
    };
    Ok(MessagesRequest {
        model,
        stream,
        max_tokens,
        texts,
        last_user,
        tool_call,
        web_searches,
        thinking,
    })
}

/// The prompt's tokens as the mock counts them.
pub fn input_tokens(req: &MessagesRequest) -> u64 {
    super::prompt_tokens(&req.texts, 2)
}

/// Pieces of the answer, cut at `max_tokens` (one piece is one token here).
pub fn pieces(req: &MessagesRequest, chunks: Option<usize>) -> (Vec<String>, &'static str) {
    let mut pieces = super::reply_pieces(&req.last_user, chunks);
    if super::cut_at_limit(&mut pieces, Some(req.max_tokens)) {
        return (pieces, "max_tokens");
    }
    (pieces, "end_turn")
}

pub fn message(req: &MessagesRequest, id: &str, pieces: &[String], stop_reason: &str) -> Value {
    let mut content = match &req.tool_call {
        Some(call) => vec![
            json!({"type": "tool_use", "id": tool_id(id), "name": call.name, "input": call.arguments}),
        ],
        None => vec![json!({"type": "text", "text": pieces.concat()})],
    };
    if req.thinking {
        content.insert(0, thought(req));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": if req.tool_call.is_some() { "tool_use" } else { stop_reason },
        "stop_sequence": null,
        "usage": usage(req, pieces.len())
    })
}

/// The SSE events of a streamed answer, each `event: ...\ndata: ...\n\n`.
pub fn stream_events(
    req: &MessagesRequest,
    id: &str,
    pieces: &[String],
    stop_reason: &str,
) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": req.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens(req), "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        }}),
    )];
    // The thinking block comes first; the answer's block follows at `at`.
    let mut at = 0;
    if req.thinking {
        let t = thought(req);
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": t["thinking"]}}),
        ));
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": t["signature"]}}),
        ));
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        at = 1;
    }
    if let Some(call) = &req.tool_call {
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": at, "content_block": {"type": "tool_use", "id": tool_id(id), "name": call.name, "input": {}}}),
        ));
        for piece in super::tools::argument_pieces(call) {
            events.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": at, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": at}),
        ));
        events.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        return events;
    }
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": at, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(event("ping", json!({"type": "ping"})));
    for p in pieces {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": at, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": at}),
    ));
    let mut delta_usage = json!({"output_tokens": pieces.len()});
    if req.web_searches > 0 {
        delta_usage["server_tool_use"] = json!({"web_search_requests": req.web_searches});
    }
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": delta_usage}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// A JSON answer's `usage`, with the web searches the answer made.
fn usage(req: &MessagesRequest, output: usize) -> Value {
    let mut u = json!({
        "input_tokens": input_tokens(req),
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0
    });
    if req.web_searches > 0 {
        u["server_tool_use"] = json!({"web_search_requests": req.web_searches});
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_real_api_rejects() {
        for body in [
            r#"{"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"claude","max_tokens":10,"messages":[]}"#,
            r#"{"model":"claude","max_tokens":10,"messages":[{"role":"system","content":"hi"}]}"#,
            r#"{"model":"claude","max_tokens":10,"messages":[{"role":"assistant","content":"hi"}]}"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e["type"], "error", "{body}");
            assert_eq!(e["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn max_tokens_cuts_the_answer() {
        let req = parse(
            br#"{"model":"c","max_tokens":2,"messages":[{"role":"user","content":"a b c"}]}"#,
        )
        .unwrap();
        let (p, stop) = pieces(&req, None);
        assert_eq!((p.len(), stop), (2, "max_tokens"));
        let events = stream_events(&req, "msg_1", &p, stop);
        assert!(events[0].starts_with("event: message_start\n"));
        assert!(events.last().unwrap().starts_with("event: message_stop\n"));
    }
}
