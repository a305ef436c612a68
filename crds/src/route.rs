//! `LLMRoute`: which model names go where.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ObjectStatus;

/// Which requested model names go to which provider targets, and how.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "LLMRoute",
    root = "LlmRoute",
    plural = "llmroutes",
    singular = "llmroute",
    namespaced,
    status = "ObjectStatus",
    shortname = "llmr",
    category = "tollgate",
    doc = "Routes requested model names to provider targets, with strategy, fallbacks, retries and timeouts.",
    printcolumn(name = "Models", type_ = "string", json_path = ".spec.match.models"),
    printcolumn(name = "Strategy", type_ = "string", json_path = ".spec.strategy")
)]
#[x_kube(validation = Rule::new("self.targets.exists(t, t.weight > 0) || self.strategy != 'weighted'").message("a weighted route needs at least one target with weight > 0"))]
#[serde(rename_all = "camelCase")]
pub struct LlmRouteSpec {
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    #[serde(default)]
    pub strategy: Strategy,
    #[schemars(length(min = 1, max = 64))]
    pub targets: Vec<Target>,
    /// Tried in order once the targets have failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub fallbacks: Vec<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Failures that move a request on to the next target, then to the fallbacks (default:
    /// connect-error, 5xx, 429, timeout, first-token-timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallback_on: Vec<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<Streaming>,
    /// Record the prompt and the answer of the chat requests this route serves in their
    /// trace spans and audit records, with the values of the Secrets the gateway holds
    /// redacted (default false: never recorded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_messages: bool,
}

/// How streams behave when the provider is slow or fails.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Streaming {
    /// After the first byte has reached the client, resume a failed stream on the next
    /// target, sending the partial answer as an assistant prefill (default false: the
    /// stream ends with an error event).
    #[serde(default)]
    pub continue_on_failure: bool,
    /// While no byte has come from the provider, send an SSE comment this often (default
    /// 10s; "0s" turns it off). Once one is sent the response status is 200, so a later
    /// failure is told as an error event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub keep_alive_interval: Option<String>,
}

/// What a request must look like to take this route.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Requested model names; `*` matches any run of characters (`gpt-4o*`).
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,
    /// Request headers that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$"))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
    #[serde(default, rename = "type")]
    pub match_type: HeaderMatchType,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Weighted,
    Priority,
    Latency,
    LeastBusy,
    Cost,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weighted => "weighted",
            Self::Priority => "priority",
            Self::Latency => "latency",
            Self::LeastBusy => "least-busy",
            Self::Cost => "cost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of an LLMProvider in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    /// Model name sent upstream; defaults to the requested model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: u32,
    /// Lower is tried first (`priority` strategy).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: u32,
    /// This target's attempt deadline (default: the route's `timeouts.attempt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
    /// This fallback's attempt deadline (default: the route's `timeouts.attempt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Attempts after the first (default 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// What is retried (default: connect-error, 5xx, 429).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub on: Vec<RetryOn>,
    /// Retries allowed, as a percentage of the route's requests over the last 10 seconds
    /// (default 20; at least 3 retries a second are always allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,
    /// Longest `Retry-After` waited for before a retry (default 5s); a provider asking
    /// for longer is not retried but failed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_retry_after: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectError,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "429")]
    RateLimited,
    Timeout,
    FirstTokenTimeout,
    ContextWindow,
    ContentPolicy,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, every attempt included, first byte to last (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub request: Option<String>,
    /// One attempt, until its answer (a JSON answer whole, a stream's first byte); past it
    /// the attempt fails over as a `timeout` (default 60s). A target or fallback's own
    /// `timeout` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub attempt: Option<String>,
    /// Streams: until the upstream's first byte; past it the attempt fails over as a
    /// `first-token-timeout` (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub first_token: Option<String>,
    /// Streams: the longest gap between two chunks once the stream has begun; past it the
    /// stream is continued on the next target (`streaming.continueOnFailure`) or ended
    /// with an error event (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub idle: Option<String>,
}
