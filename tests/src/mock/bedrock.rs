//! Amazon Bedrock's Converse and ConverseStream, as mock-llm speaks them: SigV4 checked
//! against the configured access keys (or a Bedrock API key as a bearer token), request
//! checks that mirror the real API's `ValidationException`s, the JSON answer, and the
//! stream as AWS event-stream frames.

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_dataplane::auth::sigv4;
use tollgate_dataplane::base::eventstream::encode_event;

use super::tools::ToolCall;

#[derive(Debug)]
pub struct ConverseRequest {
    pub model: String,
    pub max_tokens: Option<u64>,
    pub texts: Vec<String>,
    pub last_user: String,
    pub tool_call: Option<ToolCall>,
    /// Claude's extended thinking was asked for (`additionalModelRequestFields.thinking`).
    pub thinking: bool,
}

/// The signature mock-llm gives a thinking text, and checks when the text comes back.
pub fn thinking_signature(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("mocksig{h:016x}")
}

fn thought(req: &ConverseRequest) -> String {
    format!("Mock thinking about: {}", req.last_user)
}

/// A Bedrock error: status, `x-amzn-ErrorType` and body.
#[derive(Debug)]
pub struct AwsError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn validation(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "ValidationException",
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"message": self.message})
    }
}

const BLOCKS: [&str; 8] = [
    "text",
    "image",
    "document",
    "toolUse",
    "toolResult",
    "cachePoint",
    "reasoningContent",
    "video",
];

/// Checks SigV4 on a request: the signature must match one of `keys` (id, secret).
pub fn check_signature(
    method: &str,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
    keys: &[(String, String)],
) -> Result<(), AwsError> {
    let denied = |kind: &'static str, message: &str| AwsError {
        status: 403,
        kind,
        message: message.into(),
    };
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            denied(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential' parameter.",
        )
    })?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let credential = field("Credential").unwrap_or_default();
    let signed = field("SignedHeaders").unwrap_or_default();
    let mut scope = credential.split('/');
    let (akid, _date, region, service) = (
        scope.next().unwrap_or(""),
        scope.next().unwrap_or(""),
        scope.next().unwrap_or(""),
        scope.next().unwrap_or(""),
    );
    if service != "bedrock" {
        return Err(denied(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        ));
    }
    let Some((_, secret)) = keys.iter().find(|(id, _)| id == akid) else {
        return Err(denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let payload_hash = sigv4::sha256_hex(body);
    if let Some(claimed) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        && claimed != payload_hash
    {
        return Err(denied(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }
    let values: Vec<(String, String)> = signed
        .split(';')
        .map(|name| {
            let value = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (name.to_string(), value)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let expected = sigv4::authorization(
        &sigv4::AwsCredentials {
            access_key_id: akid.to_string(),
            secret_access_key: secret.clone(),
            session_token: None,
        },
        region,
        "bedrock",
        amz_date,
        &sigv4::Request {
            method,
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &pairs,
            payload_sha256: &payload_hash,
        },
        true,
    );
    if expected != auth || !signed.split(';').any(|h| h == "host") {
        return Err(denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

pub fn parse(body: &[u8], model: &str) -> Result<ConverseRequest, AwsError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        AwsError::validation("Malformed input request, please reformat your input and try again.")
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| AwsError::validation("Malformed input request"))?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "messages"
                | "system"
                | "inferenceConfig"
                | "toolConfig"
                | "guardrailConfig"
                | "additionalModelRequestFields"
                | "additionalModelResponseFieldPaths"
                | "promptVariables"
                | "requestMetadata"
                | "performanceConfig"
        ) {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value at '{k}' failed to satisfy constraint: unknown member"
            )));
        }
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| AwsError::validation("A conversation must start with a user message. Try again with a conversation that starts with a user message."))?;
    let mut texts = Vec::new();
    for s in obj
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = s.get("text").and_then(Value::as_str) {
            texts.push(t.to_string());
        }
    }
    let mut last_user = String::new();
    let mut tool_ids: Vec<String> = Vec::new();
    let mut has_tool_result = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]",
                i + 1
            )));
        }
        if i == 0 && role != "user" {
            return Err(AwsError::validation(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ));
        }
        let content = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| AwsError::validation(format!("The content field in the Message object at messages.{i}.content is empty. Add a ContentBlock object to the content field and try again.")))?;
        let mut text = Vec::new();
        let mut result = None;
        let mut ids = Vec::new();
        for b in content {
            let keys: Vec<&String> = b
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if keys.len() != 1 || !BLOCKS.contains(&keys[0].as_str()) {
                return Err(AwsError::validation(format!(
                    "The content block at messages.{i}.content must have exactly one member"
                )));
            }
            if let Some(t) = b.get("text").and_then(Value::as_str) {
                text.push(t.to_string());
            }
            if let Some(r) = b.pointer("/reasoningContent/reasoningText") {
                let t = r.get("text").and_then(Value::as_str).unwrap_or("");
                if role != "assistant"
                    || r.get("signature").and_then(Value::as_str)
                        != Some(thinking_signature(t).as_str())
                {
                    return Err(AwsError::validation(format!(
                        "The reasoning block at messages.{i}.content has an invalid signature"
                    )));
                }
            }
            if let Some(tu) = b.get("toolUse") {
                ids.push(
                    tu.get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
                if !tu.get("input").is_some_and(Value::is_object) {
                    return Err(AwsError::validation("toolUse.input must be an object"));
                }
            }
            if let Some(tr) = b.get("toolResult") {
                let id = tr.get("toolUseId").and_then(Value::as_str).unwrap_or("");
                if !tool_ids.iter().any(|t| t == id) {
                    return Err(AwsError::validation(format!(
                        "The toolResult blocks at messages.{i}.content contain a toolUseId ({id}) that does not match a toolUse block of the previous turn."
                    )));
                }
                result = Some(
                    tr.get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        if role == "assistant" {
            tool_ids = ids;
        } else {
            has_tool_result = result.is_some();
            last_user = match result {
                Some(r) => format!("tool result: {r}"),
                None => text.join(" "),
            };
        }
        texts.push(text.join(" "));
    }
    let first_tool = obj
        .get("toolConfig")
        .and_then(|t| t.pointer("/tools/0/toolSpec"))
        .map(|s| {
            (
                s.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                s.pointer("/inputSchema/json").cloned(),
            )
        });
    Ok(ConverseRequest {
        model: model.to_string(),
        max_tokens: v
            .pointer("/inferenceConfig/maxTokens")
            .and_then(Value::as_u64),
        texts,
        last_user,
        tool_call: super::tools::decide(first_tool, has_tool_result),
        thinking: v.pointer("/additionalModelRequestFields/thinking/type")
            == Some(&json!("enabled")),
    })
}

pub fn pieces(req: &ConverseRequest, chunks: Option<usize>) -> (Vec<String>, &'static str) {
    let mut pieces = super::reply_pieces(&req.last_user, chunks);
    if req.tool_call.is_some() {
        return (pieces, "tool_use");
    }
    if super::cut_at_limit(&mut pieces, req.max_tokens) {
        return (pieces, "max_tokens");
    }
    (pieces, "end_turn")
}

/// The prompt's tokens as the mock counts them.
pub fn input_tokens(req: &ConverseRequest) -> u64 {
    super::prompt_tokens(&req.texts, 1)
}

fn usage(req: &ConverseRequest, output: u64) -> Value {
    let input = input_tokens(req);
    json!({"inputTokens": input, "outputTokens": output, "totalTokens": input + output})
}

pub fn response(req: &ConverseRequest, pieces: &[String], stop: &str) -> Value {
    let content = match &req.tool_call {
        Some(call) => {
            json!([{"toolUse": {"toolUseId": "tooluse_mock0", "name": call.name, "input": call.arguments}}])
        }
        None => json!([{"text": pieces.concat()}]),
    };
    let content = if req.thinking {
        let t = thought(req);
        let mut blocks = vec![
            json!({"reasoningContent": {"reasoningText": {"text": t, "signature": thinking_signature(&t)}}}),
        ];
        blocks.extend(content.as_array().cloned().unwrap_or_default());
        Value::Array(blocks)
    } else {
        content
    };
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": usage(req, pieces.len() as u64),
        "metrics": {"latencyMs": 1},
    })
}

/// ConverseStream frames.
pub fn stream_frames(req: &ConverseRequest, pieces: &[String], stop: &str) -> Vec<Bytes> {
    let frame = |event: &str, v: Value| Bytes::from(encode_event(event, v.to_string().as_bytes()));
    let mut out = vec![frame(
        "messageStart",
        json!({"role": "assistant", "p": "abcdefgh"}),
    )];
    let mut index = 0;
    if req.thinking {
        let t = thought(req);
        let (a, b) = t.split_at(t.len() / 2);
        for piece in [a, b] {
            out.push(frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": piece}}}),
            ));
        }
        out.push(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": thinking_signature(&t)}}}),
        ));
        out.push(frame("contentBlockStop", json!({"contentBlockIndex": 0})));
        index = 1;
    }
    if let Some(call) = &req.tool_call {
        out.push(frame("contentBlockStart", json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": "tooluse_mock0", "name": call.name}}})));
        for piece in super::tools::argument_pieces(call) {
            out.push(frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
            ));
        }
    } else {
        for p in pieces {
            out.push(frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"text": p}, "p": "ab"}),
            ));
        }
    }
    out.push(frame(
        "contentBlockStop",
        json!({"contentBlockIndex": index}),
    ));
    out.push(frame("messageStop", json!({"stopReason": stop})));
    out.push(frame(
        "metadata",
        json!({"usage": usage(req, pieces.len() as u64), "metrics": {"latencyMs": 1}}),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_real_api_rejects() {
        for body in [
            r#"{}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":[{"role":"assistant","content":[{"text":"x"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"text":"x","image":{}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"text":"x"}]}],"max_tokens":5}"#,
            r#"{"messages":[{"role":"user","content":[{"toolResult":{"toolUseId":"t","content":[]}}]}]}"#,
        ] {
            let e = parse(body.as_bytes(), "m").unwrap_err();
            assert_eq!((e.status, e.kind), (400, "ValidationException"), "{body}");
        }
    }

    #[test]
    fn signatures_are_checked() {
        let keys = vec![("AKIDMOCK".to_string(), "secret".to_string())];
        let uri: http::Uri = "http://127.0.0.1:9000/model/m%3A0/converse"
            .parse()
            .unwrap();
        let body = br#"{"messages":[]}"#;
        let date = "20250101T000000Z";
        let hash = sigv4::sha256_hex(body);
        let sign = |secret: &str| {
            sigv4::authorization(
                &sigv4::AwsCredentials {
                    access_key_id: "AKIDMOCK".into(),
                    secret_access_key: secret.into(),
                    session_token: None,
                },
                "us-east-1",
                "bedrock",
                date,
                &sigv4::Request {
                    method: "POST",
                    path: uri.path(),
                    query: "",
                    headers: &[("host", "127.0.0.1:9000"), ("x-amz-date", date)],
                    payload_sha256: &hash,
                },
                true,
            )
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "127.0.0.1:9000".parse().unwrap());
        headers.insert("x-amz-date", date.parse().unwrap());
        headers.insert("authorization", sign("secret").parse().unwrap());
        assert!(check_signature("POST", &uri, &headers, body, &keys).is_ok());
        assert!(check_signature("POST", &uri, &headers, b"{}", &keys).is_err());
        headers.insert("authorization", sign("wrong").parse().unwrap());
        assert_eq!(
            check_signature("POST", &uri, &headers, body, &keys)
                .unwrap_err()
                .kind,
            "InvalidSignatureException"
        );
    }
}
