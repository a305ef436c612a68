//! Amazon Bedrock's runtime API family: Converse (and ConverseStream, framed as AWS event
//! streams) for chat, `InvokeModel` for Titan and Cohere embeddings, `CountTokens`, all
//! signed with SigV4. `translate` goes between Converse and the OpenAI pivot.

pub mod translate;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::auth::sigv4::{self, AwsCredentials, uri_encode};
use crate::base::now_unix;
use crate::config::model::Provider;
use crate::error::ApiError;
use crate::translate::{TranslateError, bad};

/// Cohere's limit of texts per call.
const COHERE_BATCH: usize = 96;

/// The header with the input tokens of an `InvokeModel` answer.
pub const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";

/// The URI of a runtime operation on `model`: `converse`, `invoke`, `count-tokens`, ...
pub fn op_uri(p: &Provider, model: &str, verb: &str) -> Result<Uri, http::Error> {
    Ok(Uri::try_from(format!(
        "{}/model/{}/{verb}",
        p.endpoint,
        uri_encode(model, false)
    ))?)
}

/// The URI of Converse (or ConverseStream) for `model`.
pub fn chat_uri(p: &Provider, model: &str, stream: bool) -> Result<Uri, http::Error> {
    op_uri(
        p,
        model,
        if stream {
            "converse-stream"
        } else {
            "converse"
        },
    )
}

/// Bedrock's error type (`x-amzn-ErrorType`), which its error bodies lack.
pub(crate) fn error_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
}

/// The body of `CountTokens` from a translated Converse body: only the members that count.
pub fn count_tokens_body(converse: &mut Value) -> Value {
    let input = crate::base::json::take_members(converse, &["messages", "system", "toolConfig"]);
    json!({"input": {"converse": input}})
}

/// The count in a `CountTokens` answer.
pub fn counted(answer: &Value) -> Option<u64> {
    answer.get("inputTokens").and_then(Value::as_u64)
}

/// The `InvokeModel` bodies for `texts` on Titan: one text per call.
pub fn titan_embed_bodies(texts: &[String], dimensions: Option<u64>) -> Vec<Value> {
    texts
        .iter()
        .map(|t| {
            let mut body = json!({ "inputText": t });
            if let Some(d) = dimensions {
                body["dimensions"] = json!(d);
            }
            body
        })
        .collect()
}

/// The `InvokeModel` bodies for `texts` on Cohere: up to 96 texts per call, at the
/// model's fixed size.
pub fn cohere_embed_bodies(
    texts: &[String],
    dimensions: Option<u64>,
) -> Result<Vec<Value>, TranslateError> {
    if dimensions.is_some() {
        return Err(bad(
            "dimensions",
            "Cohere embedding models on Bedrock have a fixed size",
        ));
    }
    Ok(texts
        .chunks(COHERE_BATCH)
        .map(|texts| json!({ "texts": texts, "input_type": "search_document" }))
        .collect())
}

/// The vector of a Titan answer, and its input tokens when the header gave none.
pub fn titan_embed_vectors(
    answer: &Value,
    header_tokens: Option<u64>,
    out: &mut Vec<Vec<f64>>,
) -> Result<u64, TranslateError> {
    out.push(crate::translate::numbers(answer.get("embedding"))?);
    Ok(match header_tokens {
        Some(_) => 0,
        None => answer
            .get("inputTextTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// The vectors of a Cohere answer: a list of vectors, or lists by type
/// (`{"float": [...]}`).
pub fn cohere_embed_vectors(answer: &Value, out: &mut Vec<Vec<f64>>) -> Result<(), TranslateError> {
    let list = match answer.get("embeddings") {
        Some(Value::Object(by_type)) => by_type.get("float"),
        other => other,
    };
    for e in list
        .and_then(Value::as_array)
        .ok_or(TranslateError::UpstreamBody)?
    {
        out.push(crate::translate::numbers(Some(e))?);
    }
    Ok(())
}

/// Signs a request with SigV4 (service `bedrock`).
pub(crate) fn sign(
    request: &mut Request<Full<Bytes>>,
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
) -> Result<(), ApiError> {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or(ApiError::Internal)?;
    let payload_hash = sigv4::sha256_hex(body);
    let date = sigv4::amz_date(now_unix());
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let mut signed: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-amz-date", &date),
        ("x-amz-content-sha256", &payload_hash),
        ("content-type", "application/json"),
    ];
    if let Some(token) = &creds.session_token {
        signed.push(("x-amz-security-token", token));
    }
    let authorization = sigv4::authorization(
        creds,
        region,
        "bedrock",
        &date,
        &sigv4::Request {
            method: "POST",
            path: &path,
            query: &query,
            headers: &signed,
            payload_sha256: &payload_hash,
        },
        true,
    );
    let headers = request.headers_mut();
    let mut set = |name: &'static str, value: &str, sensitive: bool| -> Result<(), ApiError> {
        let mut v = HeaderValue::from_str(value).map_err(|_| ApiError::Internal)?;
        v.set_sensitive(sensitive);
        headers.insert(HeaderName::from_static(name), v);
        Ok(())
    };
    set("x-amz-date", &date, false)?;
    set("x-amz-content-sha256", &payload_hash, false)?;
    if let Some(token) = &creds.session_token {
        set("x-amz-security-token", token, true)?;
    }
    set("authorization", &authorization, true)?;
    Ok(())
}
