//! Gemini's `generateContent` wire format (the Gemini API and Gemini on Vertex AI), as
//! mock-llm speaks it: request checks that mirror the real API's 400s (unknown fields,
//! missing parts, a part with no data), the JSON answer and the `alt=sse` stream.

use serde_json::{Value, json};

use super::tools::ToolCall;

#[derive(Debug)]
pub struct GenerateRequest {
    pub model: String,
    pub candidates: usize,
    pub max_output_tokens: Option<u64>,
    pub texts: Vec<String>,
    pub last_user: String,
    pub tool_call: Option<ToolCall>,
    pub json_mode: bool,
}

/// A Google API error body.
pub fn error_body(code: u16, message: &str, status: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// Google's status name for an HTTP status.
pub fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn invalid(message: impl Into<String>) -> Value {
    error_body(400, &message.into(), "INVALID_ARGUMENT")
}

fn unknown(name: &str, at: &str) -> Value {
    let at = if at.is_empty() {
        String::new()
    } else {
        format!(" at '{at}'")
    };
    invalid(format!(
        "Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."
    ))
}

const TOP: [&str; 10] = [
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
    "model",
];
const GENERATION: [&str; 17] = [
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
    "mediaResolution",
];
const PART_DATA: [&str; 7] = [
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

fn parts_text(parts: &[Value], at: &str) -> Result<(String, Option<String>), Value> {
    let mut text = Vec::new();
    let mut result = None;
    for (j, p) in parts.iter().enumerate() {
        let obj = p
            .as_object()
            .ok_or_else(|| invalid(format!("{at}.parts[{j}]: expected an object")))?;
        let data: Vec<&String> = obj
            .keys()
            .filter(|k| PART_DATA.contains(&k.as_str()))
            .collect();
        if data.len() != 1 {
            return Err(invalid(format!(
                "Unable to submit request because it has an empty or invalid data field in {at}.parts[{j}]. Each part must contain exactly one data field."
            )));
        }
        for k in obj.keys() {
            if !PART_DATA.contains(&k.as_str())
                && !matches!(k.as_str(), "thought" | "thoughtSignature")
            {
                return Err(unknown(k, &format!("{at}.parts[{j}]")));
            }
        }
        if let Some(t) = p.get("text") {
            text.push(
                t.as_str()
                    .ok_or_else(|| invalid(format!("{at}.parts[{j}].text: expected a string")))?
                    .to_string(),
            );
        }
        if let Some(inline) = p.get("inlineData")
            && (inline.get("mimeType").is_none() || inline.get("data").is_none())
        {
            return Err(invalid(format!(
                "{at}.parts[{j}].inlineData: mimeType and data are required"
            )));
        }
        if let Some(fr) = p.get("functionResponse") {
            if fr.get("name").and_then(Value::as_str).is_none()
                || !fr.get("response").is_some_and(Value::is_object)
            {
                return Err(invalid(format!(
                    "{at}.parts[{j}].functionResponse: name and an object response are required"
                )));
            }
            let response = &fr["response"];
            result = Some(match response.get("content") {
                Some(Value::String(s)) => s.clone(),
                _ => response.to_string(),
            });
        }
    }
    Ok((text.join(" "), result))
}

/// Checks a body as the real API would; `model` comes from the URL.
pub fn parse(body: &[u8], model: &str) -> Result<GenerateRequest, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("Invalid JSON payload received. {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("Invalid JSON payload received. Expected an object."))?;
    for k in obj.keys() {
        if !TOP.contains(&k.as_str()) {
            return Err(unknown(k, ""));
        }
    }
    let contents = match obj.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => {
            return Err(invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            ));
        }
    };
    let mut texts = Vec::new();
    if let Some(si) = obj
        .get("systemInstruction")
        .or_else(|| obj.get("system_instruction"))
    {
        let parts = si
            .get("parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        texts.push(parts_text(parts, "system_instruction")?.0);
    }
    let mut last_user = String::new();
    let mut has_tool_result = false;
    for (i, c) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(invalid(format!(
                "Please use a valid role: user, model. ({at}.role)"
            )));
        }
        let parts = match c.get("parts") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            _ => {
                return Err(invalid(format!(
                    "* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
                )));
            }
        };
        let (text, result) = parts_text(parts, &at)?;
        if role == "user" {
            has_tool_result = result.is_some();
            last_user = match result {
                Some(r) => format!("tool result: {r}"),
                None => text.clone(),
            };
        }
        texts.push(text);
    }
    let config = obj
        .get("generationConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(c) = config.as_object() {
        for k in c.keys() {
            if !GENERATION.contains(&k.as_str()) {
                return Err(unknown(k, "generation_config"));
            }
        }
    }
    let candidates = config
        .get("candidateCount")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let first_tool = obj
        .get("tools")
        .and_then(|t| t.pointer("/0/functionDeclarations/0"))
        .map(|d| {
            (
                d.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                d.get("parameters").cloned(),
            )
        });
    if first_tool.as_ref().is_some_and(|(n, _)| n.is_empty()) {
        return Err(invalid(
            "* GenerateContentRequest.tools[0].function_declarations[0].name: Name cannot be empty.",
        ));
    }
    Ok(GenerateRequest {
        model: model.to_string(),
        candidates: candidates.max(1),
        max_output_tokens: config.get("maxOutputTokens").and_then(Value::as_u64),
        texts,
        last_user,
        tool_call: super::tools::decide(first_tool, has_tool_result),
        json_mode: config.get("responseMimeType").and_then(Value::as_str)
            == Some("application/json"),
    })
}

/// Pieces of the answer and its finish reason.
pub fn pieces(req: &GenerateRequest, chunks: Option<usize>) -> (Vec<String>, &'static str) {
    let mut pieces = if req.json_mode {
        vec![format!(
            "{{\"reply\": {}}}",
            Value::String(req.last_user.clone())
        )]
    } else {
        super::reply_pieces(&req.last_user, chunks)
    };
    if super::cut_at_limit(&mut pieces, req.max_output_tokens) {
        return (pieces, "MAX_TOKENS");
    }
    (pieces, "STOP")
}

/// The prompt's tokens as the mock counts them.
pub fn prompt_tokens(req: &GenerateRequest) -> u64 {
    super::prompt_tokens(&req.texts, 1)
}

fn usage(req: &GenerateRequest, output: u64) -> Value {
    let prompt = prompt_tokens(req);
    json!({"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output})
}

fn call_part(call: &ToolCall) -> Value {
    json!({"functionCall": {"name": call.name, "args": call.arguments}})
}

pub fn response(req: &GenerateRequest, id: &str, pieces: &[String], finish: &str) -> Value {
    let parts = match &req.tool_call {
        Some(call) => json!([call_part(call)]),
        None => json!([{"text": pieces.concat()}]),
    };
    let candidates: Vec<Value> = (0..req.candidates)
        .map(|i| json!({"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": i}))
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(req, pieces.len() as u64 * req.candidates as u64),
        "modelVersion": req.model,
        "responseId": id,
    })
}

/// The `alt=sse` events: one chunk per piece, the last with `finishReason` and usage.
pub fn stream_events(
    req: &GenerateRequest,
    id: &str,
    pieces: &[String],
    finish: &str,
) -> Vec<String> {
    let chunk = |parts: Value, last: bool| {
        let candidates: Vec<Value> = (0..req.candidates)
            .map(|i| {
                let mut c = json!({"content": {"role": "model", "parts": parts}, "index": i});
                if last {
                    c["finishReason"] = json!(finish);
                }
                c
            })
            .collect();
        let mut v = json!({"candidates": candidates, "modelVersion": req.model, "responseId": id});
        if last {
            v["usageMetadata"] = usage(req, pieces.len() as u64 * req.candidates as u64);
        }
        format!("data: {v}\r\n\r\n")
    };
    if let Some(call) = &req.tool_call {
        return vec![chunk(json!([call_part(call)]), true)];
    }
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| chunk(json!([{"text": p}]), i + 1 == n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_real_api_rejects() {
        for body in [
            r#"{}"#,
            r#"{"contents":[]}"#,
            r#"{"contents":[{"role":"user","parts":[]}]}"#,
            r#"{"contents":[{"role":"assistant","parts":[{"text":"x"}]}]}"#,
            r#"{"contents":[{"role":"user","parts":[{}]}]}"#,
            r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"messages":[]}"#,
            r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"generationConfig":{"max_tokens":5}}"#,
        ] {
            let e = parse(body.as_bytes(), "gemini-2.5-flash").unwrap_err();
            assert_eq!(e["error"]["status"], "INVALID_ARGUMENT", "{body}");
        }
        let ok = parse(
            br#"{"contents":[{"role":"user","parts":[{"text":"hello there"}]}],"generationConfig":{"maxOutputTokens":2}}"#,
            "g",
        )
        .unwrap();
        let (pieces, finish) = super::pieces(&ok, None);
        assert_eq!((pieces.len(), finish), (2, "MAX_TOKENS"));
    }
}
