//! Google's `generateContent` API family: the Gemini API, and Google's models on Vertex
//! AI (the same bodies under a Vertex path). `translate` goes between it and the OpenAI
//! pivot; embeddings are `batchEmbedContents` (Gemini API) or `predict` (Vertex AI).

pub mod translate;

use http::Uri;
use serde_json::{Value, json};

use crate::auth::sigv4::uri_encode;
use crate::base::json::take_members;
use crate::config::model::{Provider, ProviderKind};
use crate::translate::TranslateError;

/// The URI of a method on `model`: `generateContent`, `countTokens`,
/// `batchEmbedContents`, `predict`, ...
pub fn method_uri(p: &Provider, model: &str, method: &str) -> Result<Uri, http::Error> {
    let base = if p.kind == ProviderKind::VertexAi {
        super::vertex::model_base(p, "google", model)
    } else {
        format!("{}/v1beta/models/{}", p.endpoint, uri_encode(model, false))
    };
    Ok(Uri::try_from(format!("{base}:{method}"))?)
}

/// The URI of a chat turn: `generateContent`, or its SSE stream.
pub fn chat_uri(p: &Provider, model: &str, stream: bool) -> Result<Uri, http::Error> {
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    method_uri(p, model, method)
}

/// The body of `countTokens` from a translated chat body: only the members that count.
pub fn count_tokens_body(p: &Provider, model: &str, chat: &mut Value) -> Value {
    if p.kind == ProviderKind::VertexAi {
        return take_members(chat, &["contents", "systemInstruction", "tools"]);
    }
    let mut inner = take_members(
        chat,
        &["contents", "systemInstruction", "tools", "toolConfig"],
    );
    inner["model"] = json!(format!("models/{model}"));
    json!({ "generateContentRequest": inner })
}

/// The count in a `countTokens` answer.
pub fn counted(answer: &Value) -> Option<u64> {
    answer.get("totalTokens").and_then(Value::as_u64)
}

/// The body of `batchEmbedContents` (Gemini API) for `texts`.
pub fn embed_body(model: &str, texts: &[String], dimensions: Option<u64>) -> Value {
    let name = format!("models/{model}");
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut r = json!({"model": name, "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    json!({ "requests": requests })
}

/// The body of `predict` on a Vertex AI text embedding model for `texts`.
pub fn vertex_embed_body(texts: &[String], dimensions: Option<u64>) -> Value {
    let instances: Vec<Value> = texts.iter().map(|t| json!({ "content": t })).collect();
    let mut body = json!({ "instances": instances });
    if let Some(d) = dimensions {
        body["parameters"] = json!({ "outputDimensionality": d });
    }
    body
}

/// The vectors of a `batchEmbedContents` answer (the Gemini API reports no token count).
pub fn embed_vectors(answer: &Value, out: &mut Vec<Vec<f64>>) -> Result<(), TranslateError> {
    for e in answer
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or(TranslateError::UpstreamBody)?
    {
        out.push(crate::translate::numbers(e.get("values"))?);
    }
    Ok(())
}

/// The vectors of a Vertex AI `predict` answer, and its input tokens.
pub fn vertex_embed_vectors(
    answer: &Value,
    out: &mut Vec<Vec<f64>>,
) -> Result<u64, TranslateError> {
    let mut tokens = 0;
    for p in answer
        .get("predictions")
        .and_then(Value::as_array)
        .ok_or(TranslateError::UpstreamBody)?
    {
        out.push(crate::translate::numbers(p.pointer("/embeddings/values"))?);
        tokens += p
            .pointer("/embeddings/statistics/token_count")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u64;
    }
    Ok(tokens)
}
