//! How a route classifies a failed attempt (`retries.on`, `fallbackOn`) and when a
//! provider takes a target or credential out of rotation (`spec.health`).

use std::time::Duration;

/// Why an attempt failed, as routes name it in `retries.on` and `fallbackOn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    ConnectError,
    ServerError,
    RateLimited,
    Timeout,
    FirstTokenTimeout,
    ContextWindow,
    ContentPolicy,
    /// The provider refused the gateway's credential (401/403): always moves on, since
    /// the client is not at fault.
    Auth,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectError => "connect-error",
            Self::ServerError => "5xx",
            Self::RateLimited => "429",
            Self::Timeout => "timeout",
            Self::FirstTokenTimeout => "first-token-timeout",
            Self::ContextWindow => "context-window",
            Self::ContentPolicy => "content-policy",
            Self::Auth => "auth",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "connect-error" => Self::ConnectError,
            "5xx" => Self::ServerError,
            "429" => Self::RateLimited,
            "timeout" => Self::Timeout,
            "first-token-timeout" => Self::FirstTokenTimeout,
            "context-window" => Self::ContextWindow,
            "content-policy" => Self::ContentPolicy,
            _ => return None,
        })
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Whether the failure says the target is unwell (counts toward its ejection). A
    /// context-window or content-policy refusal is about the request, and a 429 about the
    /// credential's quota, not the target.
    pub fn counts_against_target(self) -> bool {
        !matches!(
            self,
            Self::ContextWindow | Self::ContentPolicy | Self::RateLimited
        )
    }
}

/// A set of failure classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureSet(u16);

impl FailureSet {
    pub fn of(items: &[Failure]) -> Self {
        Self(items.iter().fold(0, |acc, f| acc | f.bit()))
    }

    pub fn contains(self, f: Failure) -> bool {
        f == Failure::Auth || self.0 & f.bit() != 0
    }
}

/// When a target or credential is taken out of rotation (`LLMProvider.spec.health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub failure_percent: u32,
    pub minimum_requests: u32,
    pub interval: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            failure_percent: 50,
            minimum_requests: 20,
            interval: Duration::from_secs(10),
        }
    }
}
