//! OpenAI's chat completions wire format, as mock-llm speaks it: request checks that
//! mirror the real API's 400s, and JSON and SSE answers with the documented fields.

use serde_json::{Value, json};

/// A checked chat request: what the answer needs.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub n: usize,
    /// Text of every message, for token counts and directive tags.
    pub texts: Vec<String>,
    /// Text of the last user message.
    pub last_user: String,
    /// The tool the answer calls.
    pub tool_call: Option<super::tools::ToolCall>,
    /// Text of a last assistant message (a prefill): the answer continues it.
    pub prefill: String,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// An OpenAI-format error body.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> Value {
    error_body(&message.into(), "invalid_request_error", param, None)
}

fn content_text(content: &Value) -> Result<String, Value> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(
                                    "content part of type text needs a string 'text'",
                                    Some("messages"),
                                )
                            })?
                            .to_string(),
                    ),
                    Some("image_url" | "input_audio" | "file" | "refusal") => {}
                    _ => {
                        return Err(invalid(
                            "content part has an invalid 'type'",
                            Some("messages"),
                        ));
                    }
                }
            }
            Ok(out.join(" "))
        }
        _ => Err(invalid(
            "message content must be a string or an array of parts",
            Some("messages"),
        )),
    }
}

/// Checks a request body as the real API would, with its error on failure.
pub fn parse(body: &[u8]) -> Result<ChatRequest, Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            format!("We could not parse the JSON body of your request. ({e})"),
            None,
        )
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object.", None))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None => {
            return Err(invalid("you must provide a model parameter", Some("model")));
        }
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'model': expected a string.",
                Some("model"),
            ));
        }
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                Some("messages"),
            ));
        }
        None => {
            return Err(invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ));
        }
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'messages': expected an array.",
                Some("messages"),
            ));
        }
    };
    let mut texts = Vec::new();
    let mut last_user = String::new();
    let mut call_ids: Vec<String> = Vec::new();
    let mut has_tool_result = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                format!("Missing required parameter: 'messages[{i}].role'."),
                Some("messages"),
            )
        })?;
        if !ROLES.contains(&role) {
            return Err(invalid(
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                ),
                Some(&format!("messages[{i}].role")),
            ));
        }
        let text = content_text(m.get("content").unwrap_or(&Value::Null))?;
        match role {
            "user" => {
                last_user.clone_from(&text);
                has_tool_result = false;
            }
            "assistant" => {
                call_ids = m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect();
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                if !call_ids.iter().any(|c| c == id) {
                    return Err(invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                        Some(&format!("messages.[{i}].role")),
                    ));
                }
                last_user = format!("tool result: {text}");
                has_tool_result = true;
            }
            _ => {}
        }
        texts.push(text);
    }
    let prefill = match messages.last() {
        Some(m) if m.get("role").and_then(Value::as_str) == Some("assistant") => {
            texts.last().cloned().unwrap_or_default()
        }
        _ => String::new(),
    };
    let first_tool = match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) => match tools.first() {
            None => None,
            Some(t) => {
                let name = t
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| {
                        invalid(
                            "Missing required parameter: 'tools[0].function'.",
                            Some("tools[0].function"),
                        )
                    })?;
                Some((name.to_string(), t.pointer("/function/parameters").cloned()))
            }
        },
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'tools': expected an array.",
                Some("tools"),
            ));
        }
    };
    let tool_call = super::tools::decide(first_tool, has_tool_result);
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'stream': expected a boolean.",
                Some("stream"),
            ));
        }
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if obj.get("stream_options").is_some_and(|o| !o.is_null()) && !stream {
        return Err(invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
        ));
    }
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n @ 1..=128) => n as usize,
            _ => {
                return Err(invalid(
                    "Invalid 'n': must be between 1 and 128.",
                    Some("n"),
                ));
            }
        },
        Some(_) => {
            return Err(invalid(
                "Invalid type for 'n': expected an integer.",
                Some("n"),
            ));
        }
    };
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        n,
        texts,
        last_user,
        tool_call,
        prefill,
    })
}

/// Rough token count: words and punctuation runs.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The answer's content, in pieces (one per stream chunk).
pub fn answer_pieces(req: &ChatRequest, chunks: Option<usize>) -> Vec<String> {
    super::continue_after(super::reply_pieces(&req.last_user, chunks), &req.prefill)
}

pub fn usage(req: &ChatRequest, completion_tokens: u64) -> Value {
    let prompt = super::prompt_tokens(&req.texts, 3);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

pub fn completion(req: &ChatRequest, id: &str, created: u64, pieces: &[String]) -> Value {
    let content: String = pieces.concat();
    let choices: Vec<Value> = (0..req.n)
        .map(|i| match &req.tool_call {
            Some(call) => json!({
                "index": i,
                "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                            "tool_calls": [{"id": format!("call_mock{i}"), "type": "function",
                                            "function": {"name": call.name, "arguments": call.arguments.to_string()}}]},
                "logprobs": null,
                "finish_reason": "tool_calls"
            }),
            None => json!({
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }),
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage(req, pieces.len() as u64 * req.n as u64),
        "service_tier": "default",
        "system_fingerprint": "fp_mock"
    })
}

/// The SSE events of a streamed answer, each a complete `data: ...\n\n` event.
pub fn stream_events(req: &ChatRequest, id: &str, created: u64, pieces: &[String]) -> Vec<String> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": choices
        });
        if req.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {v}\n\n")
    };
    let mut events = Vec::new();
    for i in 0..req.n {
        events.push(chunk(
            json!([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}]),
            None,
        ));
    }
    if let Some(call) = &req.tool_call {
        for i in 0..req.n {
            events.push(chunk(
                json!([{"index": i, "delta": {"tool_calls": [{"index": 0, "id": format!("call_mock{i}"), "type": "function", "function": {"name": call.name, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]),
                None,
            ));
            for piece in super::tools::argument_pieces(call) {
                events.push(chunk(
                    json!([{"index": i, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, "logprobs": null, "finish_reason": null}]),
                    None,
                ));
            }
        }
    } else {
        for piece in pieces {
            for i in 0..req.n {
                events.push(chunk(
                    json!([{"index": i, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]),
                    None,
                ));
            }
        }
    }
    let finish = if req.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    for i in 0..req.n {
        events.push(chunk(
            json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish}]),
            None,
        ));
    }
    if req.include_usage {
        events.push(chunk(
            json!([]),
            Some(usage(req, pieces.len() as u64 * req.n as u64)),
        ));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_real_api_rejects() {
        for (body, param) in [
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model"),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":"m","messages":[{"content":"hi"}]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"hi"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e["error"]["param"], param, "{body}");
            assert_eq!(e["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn stream_has_usage_chunk_only_when_asked() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}"#;
        let req = parse(body).unwrap();
        let pieces = answer_pieces(&req, Some(20));
        assert_eq!(pieces.len(), 20);
        let events = stream_events(&req, "id", 1, &pieces);
        let last_data: Value =
            serde_json::from_str(events[events.len() - 2].trim_start_matches("data: ").trim())
                .unwrap();
        assert_eq!(last_data["choices"], json!([]));
        assert_eq!(last_data["usage"]["completion_tokens"], 20);
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let mut plain = req;
        plain.include_usage = false;
        assert!(
            stream_events(&plain, "id", 1, &pieces)
                .iter()
                .all(|e| !e.contains("usage"))
        );
    }
}
