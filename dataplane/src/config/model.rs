//! The dataplane's own config types, converted from protocol resources with `TryFrom`.
//! Everything a request needs is parsed here once (URIs, header values, regexes), so the
//! request path does no parsing of config, and a resource that cannot be used is refused
//! with a typed error instead of failing requests later.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use regex::Regex;
use tollgate_proto as pb;

use crate::config::failure::{Failure, FailureSet, HealthPolicy};

/// Anthropic API version sent when neither the client nor the provider names one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("resource has no body")]
    MissingBody,
    #[error("body is a {found}, but the response is for {expected}")]
    WrongType {
        expected: String,
        found: &'static str,
    },
    #[error("unknown provider type {0}")]
    UnknownProviderType(i32),
    #[error("endpoint {0:?} is not an absolute http(s) URL")]
    BadEndpoint(String),
    #[error("apiVersion {0:?} cannot be sent as an HTTP header")]
    BadApiVersion(String),
    #[error("credential {0} cannot be sent as an HTTP header")]
    BadCredential(String),
    #[error("credential {0}: {1}")]
    BadServiceAccount(String, String),
    #[error("{0}")]
    MissingField(&'static str),
    #[error("key hash must be 32 bytes, got {0}")]
    BadKeyHash(usize),
    #[error("route has no model names to match")]
    NoModels,
    #[error("route has no targets")]
    NoTargets,
    #[error("header match {name:?}: {reason}")]
    BadHeaderMatch { name: String, reason: String },
    #[error("compatibility: {0}")]
    BadCompatibility(String),
    #[error("unknown strategy {0}")]
    UnknownStrategy(i32),
    #[error("unknown failure class {0:?}")]
    BadFailureClass(String),
}

/// Wire families the dataplane knows how to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    Gemini,
    VertexAi,
    Bedrock,
    OpenAiCompatible,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::AzureOpenAi => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::VertexAi => "vertex-ai",
            Self::Bedrock => "bedrock",
            Self::OpenAiCompatible => "openai-compatible",
        }
    }
}

/// How a credential authenticates a request.
#[derive(Clone)]
pub enum Auth {
    /// A header carrying the key (`Authorization: Bearer`, `api-key`, `x-api-key`,
    /// `x-goog-api-key`).
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    /// AWS SigV4 with an access key.
    Aws(crate::auth::sigv4::AwsCredentials),
    /// A Google OAuth token from a service-account key.
    Google(Arc<crate::auth::google::ServiceAccount>),
}

/// One credential, ready to put on a request.
#[derive(Clone)]
pub struct Credential {
    pub id: String,
    pub auth: Auth,
    pub weight: u32,
    /// Per-minute limits of the key (0: none).
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Provider {
    /// `<namespace>/<name>`; shared with metric labels, so cloning it is cheap.
    pub id: Arc<str>,
    pub kind: ProviderKind,
    /// Endpoint without a trailing slash.
    pub endpoint: String,
    pub region: String,
    pub project: String,
    pub api_version: String,
    /// `anthropic-version` for Anthropic providers: `api_version`, or the default.
    pub anthropic_version: HeaderValue,
    pub credentials: Vec<Credential>,
    /// How this server's OpenAI API differs from OpenAI's (`spec.compatibility`).
    pub compat: Compat,
    /// When its targets and credentials are ejected.
    pub health: HealthPolicy,
    /// Price overrides by model name (`spec.models`); the built-in table has the rest.
    pub prices: Vec<tollgate_proto::prices::Override>,
    /// Models without a price cost nothing (`spec.unpricedModels: free`).
    pub unpriced_free: bool,
    /// The chat completions URI, built once; `None` for Azure, whose URI names the model.
    pub(crate) chat_completions: Option<Uri>,
}

/// A server's differences from OpenAI's API, applied to every request sent to it in
/// OpenAI's format.
#[derive(Clone, Debug, Default)]
pub struct Compat {
    /// Streams get `stream_options.include_usage` (the default).
    pub stream_usage: bool,
    /// The token-limit field the server takes; `None` leaves requests as sent.
    pub max_tokens_field: Option<&'static str>,
    pub drop_params: Vec<String>,
    pub developer_as_system: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Compat {
    /// Nothing in the body changes. A `translated` body (the gateway wrote it) also loses
    /// the `stream_options` it asks for when the server takes none.
    pub fn keeps_body(&self, translated: bool) -> bool {
        self.max_tokens_field.is_none()
            && self.drop_params.is_empty()
            && !self.developer_as_system
            && (self.stream_usage || !translated)
    }

    /// The request body as this server takes it (the same bytes when nothing applies).
    pub fn apply(&self, body: bytes::Bytes, translated: bool) -> bytes::Bytes {
        if self.keeps_body(translated) {
            return body;
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return body;
        };
        let Some(obj) = v.as_object_mut() else {
            return body;
        };
        for p in &self.drop_params {
            obj.remove(p);
        }
        if translated && !self.stream_usage {
            obj.remove("stream_options");
        }
        if let Some(field) = self.max_tokens_field {
            let other = if field == "max_tokens" {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            if let Some(n) = obj.remove(other) {
                obj.entry(field).or_insert(n);
            }
        }
        if self.developer_as_system
            && let Some(messages) = obj.get_mut("messages").and_then(|m| m.as_array_mut())
        {
            for m in messages {
                if m.get("role").and_then(|r| r.as_str()) == Some("developer") {
                    m["role"] = serde_json::Value::String("system".into());
                }
            }
        }
        serde_json::to_vec(&v).map(Into::into).unwrap_or(body)
    }
}

impl TryFrom<Option<&pb::Compatibility>> for Compat {
    type Error = ConvertError;

    fn try_from(c: Option<&pb::Compatibility>) -> Result<Self, Self::Error> {
        let Some(c) = c else {
            return Ok(Self {
                stream_usage: true,
                ..Self::default()
            });
        };
        let max_tokens_field = match c.max_tokens_field.as_str() {
            "" => None,
            "max_tokens" => Some("max_tokens"),
            "max_completion_tokens" => Some("max_completion_tokens"),
            other => {
                return Err(ConvertError::BadCompatibility(format!(
                    "maxTokensField {other:?} is not max_tokens or max_completion_tokens"
                )));
            }
        };
        let headers = c
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::try_from(h.name.as_str()).map_err(|_| {
                    ConvertError::BadCompatibility(format!("{:?} is not a header name", h.name))
                })?;
                let value = HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                    ConvertError::BadCompatibility(format!(
                        "the value of header {} cannot be sent",
                        h.name
                    ))
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, ConvertError>>()?;
        Ok(Self {
            stream_usage: !c.no_stream_usage,
            max_tokens_field,
            drop_params: c.drop_params.clone(),
            developer_as_system: c.developer_as_system,
            headers,
        })
    }
}

/// The wire format a provider speaks for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    /// Anthropic's Messages body on Vertex AI: no `model`, `anthropic_version` in the body.
    VertexAnthropic,
    Gemini,
    Bedrock,
}

impl Provider {
    /// The wire format for `model` at this provider: Vertex AI serves Claude models with
    /// Anthropic's body and everything else with Gemini's.
    pub fn wire(&self, model: &str) -> Wire {
        match self.kind {
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => {
                Wire::OpenAi
            }
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::Gemini => Wire::Gemini,
            ProviderKind::VertexAi if model.starts_with("claude") => Wire::VertexAnthropic,
            ProviderKind::VertexAi => Wire::Gemini,
            ProviderKind::Bedrock => Wire::Bedrock,
        }
    }

    /// Picks a credential by weight.
    pub fn credential(&self) -> Option<&Credential> {
        pick_weighted(&self.credentials, |c| c.weight)
    }

    /// What a request to `model` costs here, as one figure to compare targets by: the sum
    /// of the input and output prices per million tokens. `None` when no price is known.
    pub fn price(&self, model: &str) -> Option<f64> {
        self.price_of(model).map(|p| p.base.input + p.base.output)
    }

    /// The price of `model` here: the provider's override, else the built-in table.
    pub fn price_of(&self, model: &str) -> Option<tollgate_proto::prices::Price> {
        tollgate_proto::prices::lookup(self.kind.as_str(), &self.prices, model)
    }

    /// Whether configuration names `model` for this provider (see
    /// [`tollgate_proto::prices::listed`]).
    pub fn lists(&self, model: &str) -> bool {
        tollgate_proto::prices::listed(self.kind.as_str(), &self.prices, model)
    }
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

impl From<Option<&pb::Health>> for HealthPolicy {
    fn from(h: Option<&pb::Health>) -> Self {
        let d = Self::default();
        let Some(h) = h else { return d };
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        Self {
            consecutive_failures: or(h.consecutive_failures, d.consecutive_failures),
            base_ejection: ms_or(h.base_ejection_ms, d.base_ejection),
            max_ejection: ms_or(h.max_ejection_ms, d.max_ejection),
            failure_percent: or(h.failure_percent, d.failure_percent),
            minimum_requests: or(h.minimum_requests, d.minimum_requests),
            interval: ms_or(h.interval_ms, d.interval),
        }
    }
}

/// AWS keys as the controller packs them: `{"accessKeyId", "secretAccessKey",
/// "sessionToken"?}`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AwsKeyJson {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// A secret as a header value, marked sensitive (never printed); `id` names it in the
/// error.
pub(crate) fn secret_header(text: String, id: &str) -> Result<HeaderValue, ConvertError> {
    let mut value =
        HeaderValue::try_from(text).map_err(|_| ConvertError::BadCredential(id.to_string()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An absolute http(s) URL.
pub(crate) fn http_url(s: &str) -> Result<Uri, ConvertError> {
    let uri: Uri = s.parse().map_err(|_| ConvertError::BadEndpoint(s.into()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(ConvertError::BadEndpoint(s.into())),
    }
}

fn header_auth(name: HeaderName, text: String, id: &str) -> Result<Auth, ConvertError> {
    Ok(Auth::Header {
        name,
        value: secret_header(text, id)?,
    })
}

fn credential_auth(kind: ProviderKind, c: &pb::Credential) -> Result<Auth, ConvertError> {
    let key = c.api_key.clone();
    match kind {
        ProviderKind::AzureOpenAi => header_auth(HeaderName::from_static("api-key"), key, &c.id),
        ProviderKind::Anthropic => header_auth(HeaderName::from_static("x-api-key"), key, &c.id),
        ProviderKind::Gemini => header_auth(HeaderName::from_static("x-goog-api-key"), key, &c.id),
        ProviderKind::VertexAi => crate::auth::google::ServiceAccount::from_json(&key)
            .map(Auth::Google)
            .map_err(|e| ConvertError::BadServiceAccount(c.id.clone(), e.to_string())),
        ProviderKind::Bedrock if key.trim_start().starts_with('{') => {
            let k: AwsKeyJson = serde_json::from_str(&key)
                .map_err(|_| ConvertError::BadCredential(c.id.clone()))?;
            Ok(Auth::Aws(crate::auth::sigv4::AwsCredentials {
                access_key_id: k.access_key_id,
                secret_access_key: k.secret_access_key,
                session_token: k.session_token.filter(|t| !t.is_empty()),
            }))
        }
        // Bedrock API keys, and the OpenAI family.
        _ => header_auth(http::header::AUTHORIZATION, format!("Bearer {key}"), &c.id),
    }
}

impl TryFrom<&pb::Provider> for Provider {
    type Error = ConvertError;

    fn try_from(p: &pb::Provider) -> Result<Self, Self::Error> {
        use pb::ProviderType as T;
        let kind = match T::try_from(p.r#type) {
            Ok(T::Openai) => ProviderKind::OpenAi,
            Ok(T::AzureOpenai) => ProviderKind::AzureOpenAi,
            Ok(T::Anthropic) => ProviderKind::Anthropic,
            Ok(T::Gemini) => ProviderKind::Gemini,
            Ok(T::VertexAi) => ProviderKind::VertexAi,
            Ok(T::Bedrock) => ProviderKind::Bedrock,
            Ok(T::OpenaiCompatible) => ProviderKind::OpenAiCompatible,
            Ok(T::Unspecified) | Err(_) => return Err(ConvertError::UnknownProviderType(p.r#type)),
        };
        let endpoint = p.endpoint.trim_end_matches('/').to_string();
        http_url(&endpoint).map_err(|_| ConvertError::BadEndpoint(p.endpoint.clone()))?;
        match kind {
            ProviderKind::VertexAi if p.project.is_empty() || p.region.is_empty() => {
                return Err(ConvertError::MissingField(
                    "vertex-ai needs project and region",
                ));
            }
            ProviderKind::Bedrock if p.region.is_empty() => {
                return Err(ConvertError::MissingField("bedrock needs region"));
            }
            _ => {}
        }
        let credentials = p
            .credentials
            .iter()
            .map(|c| {
                Ok(Credential {
                    id: c.id.clone(),
                    auth: credential_auth(kind, c)?,
                    weight: c.weight,
                    requests_per_minute: c.requests_per_minute,
                    tokens_per_minute: c.tokens_per_minute,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let chat_completions = match kind {
            ProviderKind::AzureOpenAi => None,
            _ => Some(
                Uri::try_from(format!("{endpoint}/chat/completions"))
                    .map_err(|_| ConvertError::BadEndpoint(p.endpoint.clone()))?,
            ),
        };
        Ok(Self {
            id: format!("{}/{}", p.namespace, p.name).into(),
            kind,
            endpoint,
            chat_completions,
            region: p.region.clone(),
            project: p.project.clone(),
            api_version: p.api_version.clone(),
            anthropic_version: if p.api_version.is_empty() || kind != ProviderKind::Anthropic {
                HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION)
            } else {
                HeaderValue::try_from(p.api_version.as_str())
                    .map_err(|_| ConvertError::BadApiVersion(p.api_version.clone()))?
            },
            credentials,
            compat: Compat::try_from(p.compatibility.as_ref())?,
            health: HealthPolicy::from(p.health.as_ref()),
            prices: p
                .models
                .iter()
                .map(|m| tollgate_proto::prices::Override {
                    model: m.name.clone(),
                    price_as: (!m.price_as.is_empty()).then(|| m.price_as.clone()),
                    input: m.input_per_million_usd,
                    output: m.output_per_million_usd,
                    cached: m.cached_input_per_million_usd,
                })
                .collect(),
            unpriced_free: p.unpriced_free,
        })
    }
}

#[derive(Clone, Debug)]
pub enum HeaderCondition {
    Exact(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub condition: HeaderCondition,
}

#[derive(Clone, Debug)]
pub struct Target {
    /// `<namespace>/<name>` of the provider.
    pub provider: String,
    /// Model sent upstream; `None` sends the requested model.
    pub model: Option<Arc<str>>,
    pub weight: u32,
    pub priority: u32,
    /// This target's own attempt deadline; `None`: the route's.
    pub timeout: Option<Duration>,
}

/// How a route picks among its targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    Weighted,
    Priority,
    Latency,
    LeastBusy,
    Cost,
}

#[derive(Clone, Debug)]
pub struct Fallback {
    pub target: Target,
}

/// A route's retries (`spec.retries`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub on: FailureSet,
    pub budget_percent: u32,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based): exponential, with full jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.backoff_max);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `<namespace>/<name>`; shared with metric labels, so cloning it is cheap.
    pub id: Arc<str>,
    pub namespace: String,
    pub name: String,
    pub models: Vec<String>,
    pub headers: Vec<HeaderMatch>,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub fallbacks: Vec<Fallback>,
    pub retry: RetryPolicy,
    /// Failures that move on to the next target or fallback.
    pub fallback_on: FailureSet,
    pub request_timeout: Duration,
    /// One attempt, until its answer: a JSON answer whole, a stream's first byte (targets
    /// and fallbacks without a timeout of their own).
    pub attempt_timeout: Duration,
    /// Streams: longest wait for the provider's first byte.
    pub first_token_timeout: Duration,
    /// Streams: longest silence between two chunks once the stream has begun.
    pub idle_timeout: Duration,
    /// Streams: resume on the next target after a failure mid-stream.
    pub continue_on_failure: bool,
    /// Streams: SSE comment interval while no byte has come; `None` sends none.
    pub keep_alive: Option<Duration>,
    /// Prompts and answers go into spans and audit records, secrets redacted.
    pub record_messages: bool,
}

/// Used when a route sets no request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Used when a route sets no attempt timeout: a provider that accepts a request and never
/// answers costs this long before the next target is tried, not the whole request's time.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Used when a route sets no first-token timeout.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when a route sets no idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when a route sets no keep-alive interval.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

fn failure_set(names: &[String], default: &[Failure]) -> Result<FailureSet, ConvertError> {
    if names.is_empty() {
        return Ok(FailureSet::of(default));
    }
    let parsed = names
        .iter()
        .map(|n| Failure::parse(n).ok_or_else(|| ConvertError::BadFailureClass(n.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FailureSet::of(&parsed))
}

impl TryFrom<&pb::Route> for Route {
    type Error = ConvertError;

    fn try_from(r: &pb::Route) -> Result<Self, Self::Error> {
        if r.models.is_empty() {
            return Err(ConvertError::NoModels);
        }
        if r.targets.is_empty() {
            return Err(ConvertError::NoTargets);
        }
        let headers = r
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::try_from(h.name.as_str()).map_err(|e| {
                    ConvertError::BadHeaderMatch {
                        name: h.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let condition = if h.regex {
                    let anchored = format!("^(?:{})$", h.value);
                    HeaderCondition::Regex(Regex::new(&anchored).map_err(|e| {
                        ConvertError::BadHeaderMatch {
                            name: h.name.clone(),
                            reason: e.to_string(),
                        }
                    })?)
                } else {
                    HeaderCondition::Exact(h.value.clone())
                };
                Ok(HeaderMatch { name, condition })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let timeouts = r.timeouts.unwrap_or_default();
        let own_timeout = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let target = |provider: &str, model: &str, weight, priority, timeout_ms| Target {
            provider: format!("{}/{}", r.namespace, provider),
            model: (!model.is_empty()).then(|| model.into()),
            weight,
            priority,
            timeout: own_timeout(timeout_ms),
        };
        let retries = r.retries.clone().unwrap_or_default();
        let keep_alive_ms = r.streaming.as_ref().map_or(0, |s| s.keep_alive_ms);
        Ok(Self {
            id: format!("{}/{}", r.namespace, r.name).into(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            models: r.models.clone(),
            headers,
            strategy: match pb::Strategy::try_from(r.strategy) {
                Ok(pb::Strategy::Weighted) => Strategy::Weighted,
                Ok(pb::Strategy::Priority) => Strategy::Priority,
                Ok(pb::Strategy::Latency) => Strategy::Latency,
                Ok(pb::Strategy::LeastBusy) => Strategy::LeastBusy,
                Ok(pb::Strategy::Cost) => Strategy::Cost,
                Err(_) => return Err(ConvertError::UnknownStrategy(r.strategy)),
            },
            targets: r
                .targets
                .iter()
                .map(|t| target(&t.provider, &t.model, t.weight, t.priority, t.timeout_ms))
                .collect(),
            fallbacks: r
                .fallbacks
                .iter()
                .map(|f| Fallback {
                    target: target(&f.provider, &f.model, 1, 0, f.timeout_ms),
                })
                .collect(),
            retry: RetryPolicy {
                attempts: retries.attempts,
                backoff_base: ms_or(retries.backoff_base_ms, Duration::from_millis(25)),
                backoff_max: ms_or(retries.backoff_max_ms, Duration::from_millis(250)),
                on: failure_set(
                    &retries.on,
                    &[
                        Failure::ConnectError,
                        Failure::ServerError,
                        Failure::RateLimited,
                    ],
                )?,
                budget_percent: retries.budget_percent.unwrap_or(20),
                max_retry_after: ms_or(retries.max_retry_after_ms, Duration::from_secs(5)),
            },
            fallback_on: failure_set(
                &r.fallback_on,
                &[
                    Failure::ConnectError,
                    Failure::ServerError,
                    Failure::RateLimited,
                    Failure::Timeout,
                    Failure::FirstTokenTimeout,
                ],
            )?,
            request_timeout: ms_or(timeouts.request_ms, DEFAULT_REQUEST_TIMEOUT),
            attempt_timeout: ms_or(timeouts.attempt_ms, DEFAULT_ATTEMPT_TIMEOUT),
            first_token_timeout: ms_or(timeouts.first_token_ms, DEFAULT_FIRST_TOKEN_TIMEOUT),
            idle_timeout: ms_or(timeouts.idle_ms, DEFAULT_IDLE_TIMEOUT),
            continue_on_failure: r.streaming.as_ref().is_some_and(|s| s.continue_on_failure),
            keep_alive: match keep_alive_ms {
                0 => Some(DEFAULT_KEEP_ALIVE),
                u64::MAX => None,
                ms => Some(Duration::from_millis(ms)),
            },
            record_messages: r.record_messages,
        })
    }
}

impl Route {
    pub fn headers_match(&self, headers: &http::HeaderMap) -> bool {
        self.headers.iter().all(|m| {
            headers.get_all(&m.name).iter().any(|v| {
                let Ok(v) = v.to_str() else { return false };
                match &m.condition {
                    HeaderCondition::Exact(want) => v == want,
                    HeaderCondition::Regex(re) => re.is_match(v),
                }
            })
        })
    }
}

/// The attribution of a request, for its usage record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attribution {
    pub key: Arc<str>,
    pub team: Arc<str>,
    pub customer: Arc<str>,
    pub user: Arc<str>,
    pub session: Arc<str>,
}

/// A virtual key as the dataplane holds it: only what requests use (its labels, for
/// example, select Budgets in the controller and are not kept here).
#[derive(Clone, Debug)]
pub struct VirtualKey {
    pub hash: [u8; 32],
    /// Model globs; empty allows all.
    pub models: Vec<String>,
    /// Route-name globs; empty allows all in the namespace.
    pub routes: Vec<String>,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    /// `budget/<namespace>/<name>` of every Budget the key is charged to.
    pub budget_accounts: Vec<Arc<str>>,
    /// Requests and tokens per minute, across every dataplane.
    pub rate: Option<RateLimits>,
    /// `conc/<namespace>/<key>`: requests in flight at once, across every dataplane.
    pub concurrency: Option<Arc<str>>,
    /// Per-session caps, and the header naming the session.
    pub session: Option<SessionCaps>,
    /// Spend is limited in USD (a budget or the session caps): models without a price
    /// are refused.
    pub usd_limited: bool,
    /// Prompts and answers go into spans and audit records, secrets redacted.
    pub record_messages: bool,
    /// The key (`<namespace>/<name>`) and its owner, for usage records and logs (the
    /// session is added per request).
    pub attribution: Attribution,
}

#[derive(Clone, Debug)]
pub struct RateLimits {
    /// `rate/<namespace>/<key>`.
    pub account: Arc<str>,
    /// Zero when not limited.
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

#[derive(Clone, Debug)]
pub struct SessionCaps {
    pub header: HeaderName,
}

impl TryFrom<&pb::VirtualKey> for VirtualKey {
    type Error = ConvertError;

    fn try_from(k: &pb::VirtualKey) -> Result<Self, Self::Error> {
        let hash: [u8; 32] = k
            .key_sha256
            .as_slice()
            .try_into()
            .map_err(|_| ConvertError::BadKeyHash(k.key_sha256.len()))?;
        let owner = k.owner.as_ref();
        let owned = |f: fn(&pb::Owner) -> &str| shared_str(owner.map_or("", f));
        Ok(Self {
            hash,
            models: k.models.clone(),
            routes: k.routes.clone(),
            expires_at: (k.expires_at_unix != 0).then_some(k.expires_at_unix),
            disabled: k.disabled,
            attribution: Attribution {
                key: Arc::from(format!("{}/{}", k.namespace, k.name)),
                team: owned(|o| &o.team),
                customer: owned(|o| &o.customer),
                user: owned(|o| &o.user),
                session: shared_str(""),
            },
            budget_accounts: k
                .budgets
                .iter()
                .map(|b| Arc::from(format!("budget/{}/{b}", k.namespace)))
                .collect(),
            rate: k
                .limits
                .as_ref()
                .filter(|l| l.requests_per_minute > 0 || l.tokens_per_minute > 0)
                .map(|l| RateLimits {
                    account: Arc::from(format!("rate/{}/{}", k.namespace, k.name)),
                    requests_per_minute: l.requests_per_minute,
                    tokens_per_minute: l.tokens_per_minute,
                }),
            concurrency: k
                .limits
                .as_ref()
                .filter(|l| l.concurrency > 0)
                .map(|_| Arc::from(format!("conc/{}/{}", k.namespace, k.name))),
            session: k
                .session
                .as_ref()
                .filter(|s| s.max_tokens > 0 || s.max_cost_usd.is_some())
                .and_then(|s| {
                    let name = if s.header.is_empty() {
                        "x-tollgate-session"
                    } else {
                        s.header.as_str()
                    };
                    Some(SessionCaps {
                        header: HeaderName::try_from(name).ok()?,
                    })
                }),
            usd_limited: k.usd_limited,
            record_messages: k.record_messages,
        })
    }
}

/// `s` as a shared string; the empty one is allocated once and shared by every key.
fn shared_str(s: &str) -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    if s.is_empty() {
        EMPTY.get_or_init(|| Arc::from("")).clone()
    } else {
        Arc::from(s)
    }
}

impl VirtualKey {
    /// `<namespace>/<name>`.
    pub fn id(&self) -> &str {
        &self.attribution.key
    }

    pub fn namespace(&self) -> &str {
        self.id().split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|g| crate::base::glob::matches(g, model))
    }

    pub fn allows_route(&self, route: &Route) -> bool {
        self.routes.is_empty()
            || self
                .routes
                .iter()
                .any(|g| crate::base::glob::matches(g, &route.name))
    }
}

/// Picks an item with probability proportional to its weight; `None` when all weigh 0.
pub fn pick_weighted<T>(items: &[T], weight: impl Fn(&T) -> u32) -> Option<&T> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(0..total);
    for item in items {
        let w = u64::from(weight(item));
        if point < w {
            return Some(item);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_settings_rewrite_only_what_they_name() {
        let c = Compat::try_from(Some(&pb::Compatibility {
            no_stream_usage: true,
            max_tokens_field: "max_tokens".into(),
            drop_params: vec!["store".into()],
            developer_as_system: true,
            headers: vec![pb::Header {
                name: "X-Title".into(),
                value: "t".into(),
            }],
        }))
        .unwrap();
        assert!(!c.stream_usage);
        let out = c.apply(bytes::Bytes::from_static(
            br#"{"model":"m","max_completion_tokens":5,"store":true,"messages":[{"role":"developer","content":"d"},{"role":"user","content":"u"}]}"#,
        ), false);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"m","max_tokens":5,"messages":[{"role":"system","content":"d"},{"role":"user","content":"u"}]})
        );
        // Both fields present: the one the server takes wins, the other goes.
        let out = c.apply(
            bytes::Bytes::from_static(br#"{"max_tokens":7,"max_completion_tokens":5}"#),
            false,
        );
        assert_eq!(&out[..], br#"{"max_tokens":7}"#);
        // The stream_options a translated body asks for go; a client's own stay.
        let sent = bytes::Bytes::from_static(br#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(&c.apply(sent.clone(), true)[..], b"{}");
        assert_eq!(
            &c.apply(sent, false)[..],
            br#"{"stream_options":{"include_usage":true}}"#
        );

        let none = Compat::try_from(None).unwrap();
        assert!(none.stream_usage && none.keeps_body(true));
        let body = bytes::Bytes::from_static(br#"{ "model" : "m" }"#);
        assert_eq!(
            none.apply(body.clone(), true).as_ptr(),
            body.as_ptr(),
            "no copy"
        );

        for bad in [
            pb::Compatibility {
                max_tokens_field: "tokens".into(),
                ..Default::default()
            },
            pb::Compatibility {
                headers: vec![pb::Header {
                    name: "bad name".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Compat::try_from(Some(&bad)),
                Err(ConvertError::BadCompatibility(_))
            ));
        }
    }

    #[test]
    fn anthropic_version_is_resolved_once() {
        let mut p = pb::Provider {
            namespace: "ns".into(),
            name: "claude".into(),
            r#type: pb::ProviderType::Anthropic as i32,
            endpoint: "https://api.anthropic.com".into(),
            ..Default::default()
        };
        let default = Provider::try_from(&p).unwrap();
        assert_eq!(default.anthropic_version, DEFAULT_ANTHROPIC_VERSION);
        assert_eq!(&*default.id, "ns/claude");
        p.api_version = "2023-01-01".into();
        assert_eq!(
            Provider::try_from(&p).unwrap().anthropic_version,
            "2023-01-01"
        );
        p.api_version = "bad\nversion".into();
        assert_eq!(
            Provider::try_from(&p).unwrap_err(),
            ConvertError::BadApiVersion("bad\nversion".into())
        );
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        fastrand::seed(7);
        let weights = [3u32, 1, 0, 6];
        let mut counts = [0u32; 4];
        let n = 100_000;
        for _ in 0..n {
            let i = pick_weighted(&[0usize, 1, 2, 3], |&i| weights[i])
                .copied()
                .unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 is never picked");
        // Chi-square with 2 degrees of freedom; 13.8 is the 0.1% critical value.
        let total: u32 = weights.iter().sum();
        let chi2: f64 = [0, 1, 3]
            .iter()
            .map(|&i| {
                let expected = f64::from(n) * f64::from(weights[i]) / f64::from(total);
                (f64::from(counts[i]) - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 13.8, "counts {counts:?}, chi2 {chi2}");
        assert!(pick_weighted(&[1, 2], |_| 0).is_none());
    }
}
