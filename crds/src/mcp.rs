//! `MCPServer` and `MCPToolPolicy`: upstream MCP servers and who may use their tools.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ObjectStatus, SecretKeyRef};

/// An upstream MCP server whose tools Tollgate may expose.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "MCPServer",
    root = "McpServer",
    plural = "mcpservers",
    singular = "mcpserver",
    namespaced,
    status = "ObjectStatus",
    shortname = "mcps",
    category = "tollgate",
    doc = "An upstream MCP server: URL, transport, authentication and tool-name prefix.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(name = "Transport", type_ = "string", json_path = ".spec.transport"),
    printcolumn(name = "Prefix", type_ = "string", json_path = ".spec.toolPrefix")
)]
#[serde(rename_all = "camelCase")]
pub struct McpServerSpec {
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"),
        length(max = 2048)
    )]
    /// The server's MCP endpoint; with `transport: sse`, its event stream.
    pub url: String,
    /// `streamable-http` (the default) or `sse`, the older HTTP+SSE transport.
    #[serde(default)]
    pub transport: McpTransport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<McpAuth>,
    /// Prefix of this server's tool names (`<prefix>__<tool>`); defaults to the object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,32}$"))]
    pub tool_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum McpTransport {
    #[default]
    StreamableHttp,
    Sse,
}

#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[x_kube(validation = Rule::new("!(has(self.header) && has(self.oauth))").message("use either header or oauth, not both"))]
pub struct McpAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClientCredentials>,
}

/// A header whose value comes from a Secret (e.g. `Authorization: Bearer <secret>`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderAuth {
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$"))]
    pub name: String,
    /// Written before the secret value, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    pub secret_ref: SecretKeyRef,
}

/// OAuth 2 client credentials grant.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientCredentials {
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$"))]
    pub token_url: String,
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    pub client_secret_ref: SecretKeyRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
}

/// Which VirtualKeys may see and call which tools. Anything not allowed is denied.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "MCPToolPolicy",
    root = "McpToolPolicy",
    plural = "mcptoolpolicies",
    singular = "mcptoolpolicy",
    namespaced,
    status = "ObjectStatus",
    shortname = "mcptp",
    category = "tollgate",
    doc = "Allow/deny rules over MCP tools for the VirtualKeys it selects; default deny."
)]
#[serde(rename_all = "camelCase")]
pub struct McpToolPolicySpec {
    /// VirtualKeys (by label) this policy applies to.
    pub selector: LabelSelector,
    #[schemars(length(max = 128))]
    pub rules: Vec<ToolRule>,
    /// Trim tool descriptions and schemas in `tools/list`.
    #[serde(default)]
    pub compact_schemas: bool,
    /// Log tool-call arguments (secrets redacted) in the audit trail.
    #[serde(default)]
    pub log_arguments: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRule {
    /// MCPServer name in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// Tool-name globs that are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub allow: Vec<String>,
    /// Tool-name globs that are denied even when allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ToolLimits>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub calls_per_minute: Option<u64>,
}
