//! `VirtualKey`: a client identity.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{LocalRef, ObjectStatus, SecretKeyRef};

/// A client identity. The key itself lives in a Secret; only its hash leaves the controller.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "VirtualKey",
    root = "VirtualKey",
    plural = "virtualkeys",
    singular = "virtualkey",
    namespaced,
    status = "ObjectStatus",
    shortname = "vk",
    category = "tollgate",
    doc = "A client identity: the Secret holding the key, its owner, what it may use and its limits.",
    printcolumn(name = "Team", type_ = "string", json_path = ".spec.owner.team"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expiresAt")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeySpec {
    /// Secret key holding the client key (default key `key`).
    pub secret_ref: SecretKeyRef,
    /// Kubernetes mode: the controller creates the Secret, with a random key, when it is
    /// missing (owned by this VirtualKey; deleting it rotates the key). Without it the
    /// controller never creates a Secret, and a deleted Secret revokes the key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generate_secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Model names (globs) this key may use; empty means every model its routes serve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,
    /// LLMRoute names (globs) this key may use; empty means all in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<KeyLimits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub budget_refs: Vec<LocalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_tool_policy_ref: Option<LocalRef>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Record the prompt and the answer of this key's chat requests in their trace spans
    /// (`gen_ai.input.messages` / `gen_ai.output.messages`) and audit records, with the
    /// values of the Secrets the gateway holds redacted (default false: never recorded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_messages: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
}

/// Caps per agent session, the session id read from a request header.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionLimits {
    /// Header carrying the session id (default `x-tollgate-session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$"))]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
    #[serde(
        default,
        rename = "maxCostUSD",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0.0))]
    pub max_cost_usd: Option<f64>,
}
