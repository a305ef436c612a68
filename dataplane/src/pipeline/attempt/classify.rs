//! What a provider's answer says beyond its status: a refusal that is about the request
//! (context window, content policy), and how long a credential is out of quota.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::base::now_unix;
use crate::config::failure::Failure;
use tollgate_proto::time::{parse_duration, parse_rfc3339_unix};

/// The class of a refusal that is about the request (a 4xx): context window exceeded, or
/// content policy. Other 4xx answers are the client's and are passed on.
pub(crate) fn refusal_class(body: &[u8]) -> Option<Failure> {
    // Providers differ in case ("Input is too long"): compare in lower case. Only 4xx
    // bodies get here, and they are small.
    let body = body.to_ascii_lowercase();
    let body = body.as_slice();
    const CONTEXT: [&[u8]; 6] = [
        b"context_length_exceeded",
        b"maximum context length",
        b"prompt is too long",
        b"input is too long",
        b"too many input tokens",
        b"exceeds the maximum number of tokens",
    ];
    const POLICY: [&[u8]; 4] = [
        b"content_policy_violation",
        b"content_filter",
        b"responsibleaipolicyviolation",
        b"content management policy",
    ];
    let has = |needles: &[&[u8]]| {
        needles
            .iter()
            .any(|n| memchr::memmem::find(body, n).is_some())
    };
    if has(&CONTEXT) {
        Some(Failure::ContextWindow)
    } else if has(&POLICY) {
        Some(Failure::ContentPolicy)
    } else {
        None
    }
}

/// A header's value as a number of seconds (`retry-after: 2`).
pub(crate) fn header_secs(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// The longest a provider's rate-limit reset is believed.
pub(crate) const LONGEST_RESET: Duration = Duration::from_secs(3600);

/// How long the provider says this credential is out of quota, from its rate-limit
/// headers: `None` while it has some left.
pub(crate) fn exhausted_for(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    const DEFAULT: Duration = Duration::from_secs(1);
    let retry_after = header_secs(headers, "retry-after");
    if status == StatusCode::TOO_MANY_REQUESTS && retry_after.is_some() {
        return retry_after;
    }
    let zero = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
    };
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        if zero(remaining) {
            let wait = headers
                .get(reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_duration)
                .map(|d| d.min(LONGEST_RESET));
            return Some(wait.or(retry_after).unwrap_or(DEFAULT));
        }
    }
    for (remaining, reset) in [
        (
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
    ] {
        if zero(remaining) {
            let wait = headers
                .get(reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_rfc3339_unix)
                .map(|at| Duration::from_secs(at.saturating_sub(now_unix()).max(0) as u64));
            return Some(wait.or(retry_after).unwrap_or(DEFAULT));
        }
    }
    None
}
