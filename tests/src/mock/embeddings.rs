//! Embeddings and token counting as mock-llm speaks them: OpenAI's `/v1/embeddings`,
//! Gemini's `batchEmbedContents`, Vertex AI's `predict`, Bedrock's `InvokeModel` for Titan
//! and Cohere embedding models; Anthropic's `count_tokens`, Gemini's `countTokens` and
//! Bedrock's `CountTokens`. Request checks follow each API's reference.
//!
//! Every format embeds a text to the same vector ([`vector`]), so a test can check that a
//! vector crossed the gateway unchanged whatever the provider.

use base64::Engine;
use serde_json::{Value, json};

use super::bedrock::AwsError;
use super::openai::count_tokens;

/// The mock's embedding of `text`: `dims` values in [-1, 1), each a multiple of 2^-23, so
/// that f32 and f64 hold them exactly and every encoding round-trips without loss.
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    // FNV-1a over the text, then a xorshift per value: deterministic and cheap.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32) / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn floats(v: &[f32]) -> Value {
    Value::Array(v.iter().map(|x| json!(f64::from(*x))).collect())
}

fn openai_invalid(message: impl Into<String>, param: &str) -> Value {
    json!({"error": {"message": message.into(), "type": "invalid_request_error", "param": param, "code": null}})
}

/// OpenAI's `POST /v1/embeddings`.
pub fn openai(body: &[u8]) -> Result<Value, Value> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        openai_invalid("We could not parse the JSON body of your request.", "input")
    })?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| openai_invalid("you must provide a model parameter", "model"))?;
    // Token arrays are embedded as their numbers written out.
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            } else if items.iter().all(Value::is_u64) {
                vec![Value::Array(items.clone()).to_string()]
            } else if items.iter().all(|i| {
                i.as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64))
            }) {
                items.iter().map(Value::to_string).collect()
            } else {
                return Err(openai_invalid(
                    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                    "input",
                ));
            }
        }
        _ => {
            return Err(openai_invalid(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "input",
            ));
        }
    };
    if inputs.len() > 2048 || inputs.iter().any(String::is_empty) {
        return Err(openai_invalid(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            "input",
        ));
    }
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => {
            return Err(openai_invalid(
                "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
                "encoding_format",
            ));
        }
    };
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => 1536,
        Some(d) => d
            .as_u64()
            .filter(|d| (1..=3072).contains(d))
            .ok_or_else(|| {
                openai_invalid(
                    "Invalid value for 'dimensions': expected an integer from 1 to 3072.",
                    "dimensions",
                )
            })? as usize,
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vec = vector(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vec.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                floats(&vec)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|t| count_tokens(t)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

fn google_invalid(message: impl Into<String>) -> Value {
    super::gemini::error_body(400, &message.into(), "INVALID_ARGUMENT")
}

/// The text of a Gemini `Content` with text parts only.
fn content_text(content: Option<&Value>, at: &str) -> Result<String, Value> {
    let parts = content
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| google_invalid(format!("* {at}.content.parts: required")))?;
    let mut text = String::new();
    for p in parts {
        let t = p.get("text").and_then(Value::as_str).ok_or_else(|| {
            google_invalid(format!("* {at}.content.parts: only text is embedded"))
        })?;
        text.push_str(t);
    }
    Ok(text)
}

fn dims_of(v: Option<&Value>, default: usize, at: &str) -> Result<usize, Value> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(d) => d
            .as_u64()
            .filter(|d| (1..=3072).contains(d))
            .map(|d| d as usize)
            .ok_or_else(|| google_invalid(format!("* {at}.outputDimensionality: out of range"))),
    }
}

/// Gemini's `models/{model}:batchEmbedContents`.
pub fn gemini_batch(body: &[u8], model: &str) -> Result<Value, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| google_invalid(format!("Invalid JSON payload received. {e}")))?;
    let requests = v
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| google_invalid("* BatchEmbedContentsRequest.requests: required"))?;
    let want = format!("models/{model}");
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let at = format!("BatchEmbedContentsRequest.requests[{i}]");
        if r.get("model").and_then(Value::as_str) != Some(want.as_str()) {
            return Err(google_invalid(format!(
                "* {at}.model: the model of each request must be {want}"
            )));
        }
        let text = content_text(r.get("content"), &at)?;
        let dims = dims_of(r.get("outputDimensionality"), 3072, &at)?;
        out.push(json!({"values": floats(&vector(&text, dims))}));
    }
    Ok(json!({"embeddings": out}))
}

/// Vertex AI's `publishers/google/models/{model}:predict` for text embedding models.
pub fn vertex_predict(body: &[u8]) -> Result<Value, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| google_invalid(format!("Invalid JSON payload received. {e}")))?;
    let instances = v
        .get("instances")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| google_invalid("instances: required"))?;
    let dims = dims_of(
        v.pointer("/parameters/outputDimensionality"),
        768,
        "parameters",
    )?;
    let mut predictions = Vec::new();
    let mut chars = 0;
    for (i, inst) in instances.iter().enumerate() {
        let text = inst
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| google_invalid(format!("instances[{i}].content: required")))?;
        chars += text.chars().filter(|c| !c.is_whitespace()).count();
        predictions.push(json!({"embeddings": {
            "values": floats(&vector(text, dims)),
            "statistics": {"token_count": count_tokens(text), "truncated": false},
        }}));
    }
    Ok(json!({"predictions": predictions, "metadata": {"billableCharacterCount": chars}}))
}

/// Bedrock `InvokeModel` for an embedding model: Titan (`amazon.titan-embed-*`) or Cohere
/// (`cohere.embed-*`).
pub fn bedrock_invoke(body: &[u8], model: &str) -> Result<Value, AwsError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        AwsError::validation("Malformed input request, please reformat your input and try again.")
    })?;
    if model.starts_with("amazon.titan-embed") {
        let text = v
            .get("inputText")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AwsError::validation(
                    "Malformed input request: #: required key [inputText] not found",
                )
            })?;
        let dims = match v.get("dimensions") {
            None => 1024,
            Some(d) => match d.as_u64() {
                Some(n @ (256 | 512 | 1024)) => n as usize,
                _ => {
                    return Err(AwsError::validation(
                        "Malformed input request: #/dimensions: 256, 512 or 1024",
                    ));
                }
            },
        };
        return Ok(json!({
            "embedding": floats(&vector(text, dims)),
            "inputTextTokenCount": count_tokens(text),
        }));
    }
    if model.starts_with("cohere.embed") {
        let texts: Vec<&str> = v
            .get("texts")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .filter(|t: &Vec<&str>| !t.is_empty() && t.len() <= 96)
            .ok_or_else(|| {
                AwsError::validation("Malformed input request: #: required key [texts] not found")
            })?;
        if v.get("input_type").and_then(Value::as_str).is_none() {
            return Err(AwsError::validation(
                "Malformed input request: #: required key [input_type] not found",
            ));
        }
        let embeddings: Vec<Value> = texts.iter().map(|t| floats(&vector(t, 1024))).collect();
        return Ok(json!({
            "id": "mock-embed",
            "embeddings": embeddings,
            "texts": texts,
            "response_type": "embeddings_floats",
        }));
    }
    Err(AwsError::validation(format!(
        "The provided model identifier is invalid: {model}"
    )))
}

/// The input tokens of an `InvokeModel` embedding request, for Bedrock's usage headers.
pub fn bedrock_input_tokens(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v.get("inputText"), v.get("texts")) {
        (Some(Value::String(t)), _) => count_tokens(t),
        (_, Some(Value::Array(texts))) => texts
            .iter()
            .filter_map(Value::as_str)
            .map(count_tokens)
            .sum(),
        _ => 0,
    }
}

/// Anthropic's `POST /v1/messages/count_tokens` (and Claude's `count-tokens:rawPredict` on
/// Vertex AI): the body of a message request without `max_tokens`.
pub fn anthropic_count(body: &[u8]) -> Result<Value, Value> {
    let mut v: Value = serde_json::from_slice(body).map_err(|_| {
        super::anthropic::error_body(
            "invalid_request_error",
            "There was an issue with your request body: invalid JSON",
        )
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(super::anthropic::error_body(
            "invalid_request_error",
            "The request body must be a JSON object",
        ));
    };
    for extra in ["max_tokens", "stream", "temperature", "stop_sequences"] {
        if obj.contains_key(extra) {
            return Err(super::anthropic::error_body(
                "invalid_request_error",
                &format!("{extra}: Extra inputs are not permitted"),
            ));
        }
    }
    obj.insert("max_tokens".into(), json!(1));
    let req = super::anthropic::parse(&serde_json::to_vec(&v).unwrap_or_default())?;
    Ok(json!({"input_tokens": super::anthropic::input_tokens(&req)}))
}

/// Gemini's `countTokens`: `{"generateContentRequest": {...}}` (the Gemini API) or the
/// request's members at the top (Vertex AI).
pub fn gemini_count(body: &[u8], model: &str, vertex: bool) -> Result<Value, Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| google_invalid(format!("Invalid JSON payload received. {e}")))?;
    let inner = if vertex {
        v
    } else {
        let inner = v.get("generateContentRequest").cloned().ok_or_else(|| {
            google_invalid("* CountTokensRequest.generateContentRequest: required")
        })?;
        if inner.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) {
            return Err(google_invalid(
                "* CountTokensRequest.generateContentRequest.model: must name the model in the URL",
            ));
        }
        inner
    };
    let req = super::gemini::parse(&serde_json::to_vec(&inner).unwrap_or_default(), model)?;
    Ok(json!({"totalTokens": super::gemini::prompt_tokens(&req)}))
}

/// Bedrock's `CountTokens`: `{"input": {"converse": {messages, system, toolConfig}}}`.
pub fn bedrock_count(body: &[u8], model: &str) -> Result<Value, AwsError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| AwsError::validation("Malformed input request"))?;
    let converse = v
        .pointer("/input/converse")
        .ok_or_else(|| AwsError::validation("1 validation error detected: Value null at 'input' failed to satisfy constraint: Member must not be null"))?;
    if let Some(obj) = converse.as_object()
        && let Some(k) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "messages" | "system" | "toolConfig" | "additionalModelRequestFields"
            )
        })
    {
        return Err(AwsError::validation(format!(
            "Malformed input request: extraneous key [{k}] is not permitted"
        )));
    }
    let req = super::bedrock::parse(&serde_json::to_vec(converse).unwrap_or_default(), model)?;
    Ok(json!({"inputTokens": super::bedrock::input_tokens(&req)}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_exact_in_f32() {
        let v = vector("hello world", 64);
        assert_eq!(v.len(), 64);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert_eq!(v, vector("hello world", 64));
        assert_ne!(v, vector("hello world!", 64));
        for x in v {
            assert_eq!(f64::from(x) as f32, x);
        }
    }

    #[test]
    fn openai_embeddings_checks_and_encodes() {
        assert!(openai(br#"{"model":"m"}"#).is_err());
        assert!(openai(br#"{"model":"m","input":[]}"#).is_err());
        assert!(openai(br#"{"model":"m","input":"a","encoding_format":"hex"}"#).is_err());
        let v = openai(
            br#"{"model":"m","input":["a b","c"],"dimensions":4,"encoding_format":"base64"}"#,
        )
        .unwrap();
        let b64 = v["data"][1]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, vector("c", 4));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn provider_formats_are_checked() {
        assert!(
            gemini_batch(
                br#"{"requests":[{"model":"models/x","content":{"parts":[{"text":"a"}]}}]}"#,
                "y"
            )
            .is_err()
        );
        assert!(vertex_predict(br#"{"instances":[{}]}"#).is_err());
        assert!(bedrock_invoke(br#"{"texts":["a"]}"#, "cohere.embed-english-v3").is_err());
        assert!(
            bedrock_invoke(
                br#"{"inputText":"a","dimensions":7}"#,
                "amazon.titan-embed-text-v2:0"
            )
            .is_err()
        );
        assert!(
            anthropic_count(
                br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"}]}"#
            )
            .is_err()
        );
        // A valid conversation with a member CountTokens does not take: only that is wrong.
        let messages = r#""messages":[{"role":"user","content":[{"text":"a"}]}]"#;
        assert!(
            bedrock_count(
                format!(r#"{{"input":{{"converse":{{{messages}}}}}}}"#).as_bytes(),
                "m"
            )
            .is_ok()
        );
        assert!(
            bedrock_count(
                format!(r#"{{"input":{{"converse":{{{messages},"inferenceConfig":{{}}}}}}}}"#)
                    .as_bytes(),
                "m"
            )
            .is_err()
        );
    }
}
