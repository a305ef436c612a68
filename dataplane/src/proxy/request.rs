//! Reads the little of a chat request the gateway needs (model, stream) without building
//! the whole document, and rewrites the model in place, leaving every other byte as the
//! client sent it.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;

#[derive(Debug)]
pub struct ChatHead {
    pub model: String,
    /// Byte range of the model's JSON string literal in the body.
    model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage` (OpenAI).
    pub include_usage: bool,
    /// The body has a `stream_options` member.
    has_stream_options: bool,
    /// `response_format` asks for JSON (OpenAI).
    pub json_mode: bool,
    /// The most output tokens asked for: `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

impl ChatHead {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        })?;
        let raw = head
            .model
            .ok_or_else(|| ApiError::BadRequest("you must provide a model parameter".into()))?;
        let model: String = serde_json::from_str(raw.get())
            .map_err(|_| ApiError::BadRequest("model: expected a string".into()))?;
        if model.is_empty() {
            return Err(ApiError::BadRequest(
                "you must provide a model parameter".into(),
            ));
        }
        // The raw value borrows from `body`, so its offset is known without searching.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        Ok(Self {
            model,
            model_span: start..start + raw.get().len(),
            stream: head.stream.unwrap_or(false),
            has_stream_options: head.stream_options.is_some(),
            json_mode: head
                .response_format
                .and_then(|f| f.kind)
                .is_some_and(|k| k == "json_object" || k == "json_schema"),
            include_usage: head
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            max_tokens: head.max_completion_tokens.or(head.max_tokens),
        })
    }

    /// An OpenAI streaming body that asks for the usage chunk, so every stream can be
    /// metered: `"stream_options":{"include_usage":true},` is written after the opening
    /// brace, leaving the rest as sent. A body with other `stream_options` is rebuilt.
    pub fn with_usage_requested(&self, body: bytes::Bytes) -> bytes::Bytes {
        if !self.stream || self.include_usage {
            return body;
        }
        if !self.has_stream_options {
            let Some(brace) = body.iter().position(|b| *b == b'{') else {
                return body;
            };
            const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
            let rest = &body[brace + 1..];
            let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
            let mut out = Vec::with_capacity(body.len() + MEMBER.len() + 1);
            out.extend_from_slice(&body[..=brace]);
            out.extend_from_slice(MEMBER);
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            return out.into();
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return body;
        };
        v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
        serde_json::to_vec(&v).map(Into::into).unwrap_or(body)
    }

    /// The body with `model` in place of the requested one (the same bytes when equal).
    pub fn with_model(&self, body: bytes::Bytes, model: &str) -> bytes::Bytes {
        if model == self.model {
            return body;
        }
        let literal = serde_json::to_string(model).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len() + literal.len());
        out.extend_from_slice(&body[..self.model_span.start]);
        out.extend_from_slice(literal.as_bytes());
        out.extend_from_slice(&body[self.model_span.end..]);
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#;
        let head = ChatHead::parse(body).unwrap();
        assert_eq!(head.model, "gpt-4o");
        assert!(head.stream);
        assert_eq!(head.max_tokens, None);
        let head = ChatHead::parse(br#"{"model":"m","max_tokens":5}"#).unwrap();
        assert_eq!(head.max_tokens, Some(5));
        let head =
            ChatHead::parse(br#"{"model":"m","max_tokens":5,"max_completion_tokens":7}"#).unwrap();
        assert_eq!(head.max_tokens, Some(7));
    }

    #[test]
    fn rewrites_only_the_model() {
        let body = bytes::Bytes::from_static(
            br#"{ "model" : "smart", "messages":[{"role":"user","content":"model: smart"}] }"#,
        );
        let head = ChatHead::parse(&body).unwrap();
        let out = head.with_model(body.clone(), "gpt-4o-mini");
        assert_eq!(
            &out[..],
            br#"{ "model" : "gpt-4o-mini", "messages":[{"role":"user","content":"model: smart"}] }"#
        );
        let same = head.with_model(body.clone(), "smart");
        assert_eq!(same.as_ptr(), body.as_ptr(), "no copy when unchanged");
    }

    #[test]
    fn usage_is_requested_for_streams_only() {
        let body = bytes::Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let head = ChatHead::parse(&body).unwrap();
        let out = head.with_usage_requested(body);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");

        let body = bytes::Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
        );
        let head = ChatHead::parse(&body).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&head.with_usage_requested(body)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let body = bytes::Bytes::from_static(br#"{"model":"m"}"#);
        let head = ChatHead::parse(&body).unwrap();
        assert_eq!(&head.with_usage_requested(body)[..], br#"{"model":"m"}"#);
    }

    #[test]
    fn escaped_model_names() {
        let body = bytes::Bytes::from_static(br#"{"model":"a\"b"}"#);
        let head = ChatHead::parse(&body).unwrap();
        assert_eq!(head.model, "a\"b");
        assert_eq!(&head.with_model(body, "c")[..], br#"{"model":"c"}"#);
    }

    #[test]
    fn bad_bodies() {
        for body in [
            &b"not json"[..],
            b"{\"model\":1}",
            b"{}",
            b"[]",
            b"{\"model\":\"\"}",
            b"{\"model\":\"a\",\"stream\":\"yes\"}",
            b"{\"model\":\"a\",\"model\":\"b\"}",
        ] {
            assert!(
                matches!(ChatHead::parse(body), Err(ApiError::BadRequest(_))),
                "{:?}",
                std::str::from_utf8(body)
            );
        }
    }
}
