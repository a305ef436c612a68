//! The bottom room: HTTP plumbing, wire formats and counters that know nothing of
//! routes, keys or providers. Every other room may use it; it uses none of them.

pub mod audit;
pub mod bodies;
pub mod egress;
pub mod eventstream;
pub mod glob;
pub mod json;
pub mod link;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod upstream;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or request body of any origin: whole bytes, a relayed stream, a translated
/// stream.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

/// The API a client called, which decides the format of its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's chat completions (and embeddings).
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API: its errors are OpenAI's; its streams are typed events.
    Responses,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The first `max` bytes of `s` at most, cut on a character boundary: how client- and
/// provider-chosen text is bounded before it is kept in a record, a span or an error.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Locks `m`, going on with the data a panicking holder left: every value guarded here
/// stays usable whatever step a panic interrupted.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
