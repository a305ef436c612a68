//! Translation between the client's API format and the provider's.
//!
//! OpenAI's chat format is the pivot: every provider format has a translator from and to
//! it (`openai_to_<provider>`), and an Anthropic client on a non-Anthropic provider goes
//! through `anthropic_to_openai` first. Same-format traffic never comes here: it passes
//! through with only the model rewritten. `pipeline` chooses the steps for a pair.

pub mod anthropic_to_openai;
pub mod openai_to_anthropic;
pub mod openai_to_bedrock;
pub mod openai_to_gemini;
pub mod pipeline;

#[cfg(test)]
mod golden;

use serde_json::Value;

use crate::proxy::error::ApiError;

/// Anthropic API version sent when neither the client nor the provider names one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Tokens of one answer, in OpenAI's terms: `input` includes `cached`, `output` includes
/// `reasoning`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object.
    pub fn from_openai(u: &Value) -> Option<Self> {
        let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        u.as_object()?;
        Some(Self {
            input: n("/prompt_tokens"),
            output: n("/completion_tokens"),
            cached: n("/prompt_tokens_details/cached_tokens"),
            reasoning: n("/completion_tokens_details/reasoning_tokens"),
        })
    }

    /// Reads an Anthropic `usage` object (input there excludes cache reads and writes).
    pub fn from_anthropic(u: &Value) -> Option<Self> {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        u.as_object()?;
        let cached = n("cache_read_input_tokens");
        Some(Self {
            input: n("input_tokens") + cached + n("cache_creation_input_tokens"),
            output: n("output_tokens"),
            cached,
            reasoning: 0,
        })
    }

    /// The OpenAI `usage` object.
    pub fn to_openai(self) -> Value {
        let mut v = serde_json::json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        });
        if self.reasoning > 0 {
            v["completion_tokens_details"] =
                serde_json::json!({"reasoning_tokens": self.reasoning});
        }
        v
    }
}

/// One step of a translated stream: takes the events of one format, writes SSE text of
/// another, event by event, never holding back what it can already write.
pub trait StreamStep: Send + Sync {
    /// SSE text for one incoming event (often empty).
    fn event(&mut self, event: &crate::sse::Event) -> String;
    /// Called when the incoming stream ends: the closing text, or an error event when the
    /// stream ended before the answer was complete.
    fn end(&mut self) -> String;
    /// Usage seen so far.
    fn usage(&self) -> Option<Usage>;
}

/// A parse failure of the client's body, worded like the providers word it.
pub(crate) fn parse_client_json(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "We could not parse the JSON body of your request. ({e})"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    Ok(v)
}

pub(crate) fn bad(param: &str, message: &str) -> ApiError {
    ApiError::BadRequest(format!("{param}: {message}"))
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// Text of an OpenAI message `content` (a string or text parts); other parts are refused.
pub(crate) fn openai_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                _ => Err(bad(param, "only text parts are allowed here")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(bad(param, "expected a string or an array of parts")),
    }
}

/// An image given as an OpenAI `image_url` part.
pub(crate) enum Image<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url(&'a str),
}

pub(crate) fn openai_image<'a>(part: &'a Value, param: &str) -> Result<Image<'a>, ApiError> {
    let url = part
        .get("image_url")
        .and_then(|i| i.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(param, "image_url.url is required"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad(param, "malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad(param, "data URLs must be base64"))?;
        return Ok(Image::Base64 { media_type, data });
    }
    Ok(Image::Url(url))
}

/// `max_completion_tokens`, else `max_tokens`.
pub(crate) fn openai_max_tokens(obj: &Value) -> Option<u64> {
    obj.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| obj.get("max_tokens").and_then(Value::as_u64))
}

/// `stop` as a list.
pub(crate) fn openai_stop(obj: &Value) -> Option<Vec<Value>> {
    match obj.get("stop") {
        Some(Value::String(s)) => Some(vec![Value::String(s.clone())]),
        Some(Value::Array(a)) if !a.is_empty() => Some(a.clone()),
        _ => None,
    }
}

/// Refuses `n` > 1 for providers that return one choice.
pub(crate) fn refuse_n(obj: &Value, provider: &str) -> Result<(), ApiError> {
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(bad(
            "n",
            &format!("{provider} models return one choice per request; n must be 1"),
        ));
    }
    Ok(())
}

/// Refuses parameters that are set (not null or false) and cannot be honoured.
pub(crate) fn refuse_set(obj: &Value, params: &[&str], provider: &str) -> Result<(), ApiError> {
    for p in params {
        if obj
            .get(*p)
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(bad(
                p,
                &format!("not supported for {provider} models through this gateway"),
            ));
        }
    }
    Ok(())
}

/// The JSON of a tool call's `arguments` string (an object; `{}` when empty or invalid).
pub(crate) fn arguments_object(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::json!({}))
        }
        Some(v @ Value::Object(_)) => v.clone(),
        _ => serde_json::json!({}),
    }
}

/// The text of a `tool` message's content.
pub(crate) fn tool_result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
