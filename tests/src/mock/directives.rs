//! How a request tells mock-llm to misbehave: `x-mock-*` headers, or a `[mock ...]` tag
//! anywhere in a message's text (which survives a gateway that does not forward headers).

use std::time::Duration;

/// What to do with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// Wait before sending the response headers.
    pub latency: Duration,
    /// Answer with this error status (OpenAI error body).
    pub status: Option<u16>,
    /// With a 429 or 503: send `retry-after` with this many seconds.
    pub retry_after: Option<u64>,
    /// Number of content chunks in the answer.
    pub chunks: Option<usize>,
    /// Wait between stream chunks.
    pub chunk_delay: Duration,
    /// Break the connection: `reset` before any response, `cut` half way through the body;
    /// `stall` half way through a stream: the connection stays open and nothing more
    /// comes.
    pub fail: Option<Failure>,
    /// Streams: wait this long after the response headers before the first event.
    pub first_token: Duration,
    /// Refuse the request as the provider refuses one that is too long
    /// (`context_window`) or against its content policy (`content_policy`).
    pub refuse: Option<Refusal>,
    /// Answer, but say in the rate-limit headers that the key has no requests left, for
    /// this many seconds.
    pub exhausted_for: Option<u64>,
    /// Answer without usage (no `usage` member, no usage chunk), as some OpenAI-compatible
    /// servers do.
    pub omit_usage: bool,
    /// Answers that are not streamed: this many more bytes of content (OpenAI format).
    pub pad_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ContextWindow,
    ContentPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Reset,
    Cut,
    Stall,
}

impl Directives {
    fn set(&mut self, key: &str, value: &str) {
        let ms = |v: &str| v.parse::<u64>().ok().map(Duration::from_millis);
        match key {
            "latency_ms" | "latency-ms" => self.latency = ms(value).unwrap_or_default(),
            "status" => self.status = value.parse().ok(),
            "retry_after" | "retry-after" => self.retry_after = value.parse().ok(),
            "chunks" => self.chunks = value.parse().ok(),
            "chunk_delay_ms" | "chunk-delay-ms" => self.chunk_delay = ms(value).unwrap_or_default(),
            "first_token_ms" | "first-token-ms" => self.first_token = ms(value).unwrap_or_default(),
            "refuse" => {
                self.refuse = match value {
                    "context_window" => Some(Refusal::ContextWindow),
                    "content_policy" => Some(Refusal::ContentPolicy),
                    _ => None,
                }
            }
            "exhausted_for" | "exhausted-for" => self.exhausted_for = value.parse().ok(),
            "omit_usage" | "omit-usage" => self.omit_usage = value == "1" || value == "true",
            "pad_bytes" | "pad-bytes" => self.pad_bytes = value.parse().unwrap_or_default(),
            "fail" => {
                self.fail = match value {
                    "reset" => Some(Failure::Reset),
                    "cut" => Some(Failure::Cut),
                    "stall" => Some(Failure::Stall),
                    _ => None,
                }
            }
            _ => {}
        }
    }

    /// Reads a JSON object of directive keys (a fault rule).
    pub fn from_json(v: &serde_json::Value) -> Self {
        let mut d = Self::default();
        if let Some(obj) = v.as_object() {
            for (k, v) in obj {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                d.set(k, &text);
            }
        }
        d
    }

    /// Reads `x-mock-<key>` headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in headers {
            if let (Some(key), Ok(value)) = (name.as_str().strip_prefix("x-mock-"), value.to_str())
            {
                d.set(key, value);
            }
        }
        d
    }

    /// Applies every `[mock key=value ...]` tag found in `text`.
    pub fn apply_tags(&mut self, text: &str) {
        let mut rest = text;
        while let Some(start) = rest.find("[mock ") {
            let after = &rest[start + 6..];
            let Some(end) = after.find(']') else { break };
            for pair in after[..end].split_whitespace() {
                if let Some((k, v)) = pair.split_once('=') {
                    self.set(k, v);
                }
            }
            rest = &after[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_headers() {
        let mut d = Directives::default();
        d.apply_tags(
            "hello [mock latency_ms=20 status=503 retry_after=2] and [mock chunks=3 fail=cut]",
        );
        assert_eq!(d.latency, Duration::from_millis(20));
        assert_eq!(d.status, Some(503));
        assert_eq!(d.retry_after, Some(2));
        assert_eq!(d.chunks, Some(3));
        assert_eq!(d.fail, Some(Failure::Cut));
        let mut h = http::HeaderMap::new();
        h.insert("x-mock-chunk-delay-ms", "5".parse().unwrap());
        assert_eq!(
            Directives::from_headers(&h).chunk_delay,
            Duration::from_millis(5)
        );
    }
}
