//! `LLMProvider`: one provider account.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ObjectStatus, SecretKeyRef};

/// One provider account: where it is, how to authenticate, what its models cost.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "LLMProvider",
    root = "LlmProvider",
    plural = "llmproviders",
    singular = "llmprovider",
    namespaced,
    status = "ObjectStatus",
    shortname = "llmp",
    category = "tollgate",
    doc = "An LLM provider account: type, endpoint, credentials (a weighted key pool), model prices.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint")
)]
#[x_kube(validation = Rule::new("self.type != 'azure-openai' && self.type != 'openai-compatible' || has(self.endpoint)").message("endpoint is required for azure-openai and openai-compatible providers"))]
#[x_kube(validation = Rule::new("self.type != 'bedrock' || has(self.region)").message("region is required for bedrock providers"))]
#[x_kube(validation = Rule::new("self.type != 'vertex-ai' || (has(self.project) && has(self.region))").message("project and region are required for vertex-ai providers"))]
#[x_kube(validation = Rule::new("self.type != 'azure-openai' || has(self.apiVersion)").message("apiVersion is required for azure-openai providers"))]
#[x_kube(validation = Rule::new("!has(self.compatibility) || self.type in ['openai', 'azure-openai', 'openai-compatible']").message("compatibility applies to openai, azure-openai and openai-compatible providers"))]
#[serde(rename_all = "camelCase")]
pub struct LlmProviderSpec {
    /// The provider's API family.
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Base URL of the API, e.g. `https://api.openai.com/v1`. Defaults to the provider's
    /// public endpoint where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"),
        length(max = 2048)
    )]
    pub endpoint: Option<String>,
    /// Cloud region (bedrock, vertex-ai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Cloud project (vertex-ai).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub project: Option<String>,
    /// API version (azure-openai `api-version`, anthropic `anthropic-version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub api_version: Option<String>,
    /// Credentials, used as a weighted pool.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub credentials: Vec<Credential>,
    /// Per-model price and context-window overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub models: Vec<ModelOverride>,
    /// Outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// Settings for servers that speak OpenAI's API with differences (openai,
    /// azure-openai, openai-compatible): vLLM, Ollama, Groq, Mistral, DeepSeek, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<Compatibility>,
    /// What a model without a price (neither in the built-in table nor in `models`)
    /// costs keys with a USD limit: `refuse` (the default) refuses such requests, as their
    /// cost could not be counted; `free` charges them nothing (a self-hosted server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpriced_models: Option<UnpricedModels>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UnpricedModels {
    #[default]
    Refuse,
    Free,
}

/// How to talk to a server whose OpenAI API differs from OpenAI's own.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compatibility {
    /// Ask streams for a final usage chunk (`stream_options.include_usage`) so that every
    /// stream is metered (default true). Turn off for servers that reject
    /// `stream_options`; their streams are then metered only when they send usage anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_usage: Option<bool>,
    /// The token-limit field the server understands: `max_tokens` or
    /// `max_completion_tokens`. Either one in a request is renamed to it. Unset: as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_field: Option<MaxTokensField>,
    /// Top-level request members removed before sending (e.g. `parallel_tool_calls`,
    /// `store`, `service_tier` for servers that reject what they do not know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub drop_params: Vec<String>,
    /// Send `developer` messages with the `system` role, for servers that know only that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub developer_as_system: Option<bool>,
    /// Extra request headers (not secrets), e.g. OpenRouter's `HTTP-Referer` and `X-Title`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HeaderSetting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    MaxTokens,
    MaxCompletionTokens,
}

/// One request header.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct HeaderSetting {
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"),
        length(min = 1, max = 128)
    )]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    Openai,
    AzureOpenai,
    Anthropic,
    Gemini,
    VertexAi,
    Bedrock,
    OpenaiCompatible,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::AzureOpenai => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::VertexAi => "vertex-ai",
            Self::Bedrock => "bedrock",
            Self::OpenaiCompatible => "openai-compatible",
        }
    }
}

/// One credential of the pool.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Secret key holding the API key (default key `apiKey`).
    pub secret_ref: SecretKeyRef,
    /// Relative share of traffic within the pool.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CredentialLimits>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

/// Price (USD per million tokens) and context window for one model of this provider.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelOverride {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub input_per_million_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub output_per_million_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cached_input_per_million_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<u64>,
    /// The built-in price entry this name is priced as: the model an Azure deployment (or
    /// an alias) serves, e.g. `gpt-4.1-mini`. Prices set here win over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub price_as: Option<String>,
}

/// Outlier ejection: when a target or credential is taken out of rotation.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Consecutive failures that eject (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; grows on repeat (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub base_ejection_time: Option<String>,
    /// Longest ejection (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_ejection_time: Option<String>,
    /// Failure percentage over `interval` that ejects (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_percent: Option<u32>,
    /// Requests needed in `interval` before the failure percentage counts (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub minimum_requests: Option<u32>,
    /// The window of the failure percentage (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,
}
