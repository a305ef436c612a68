//! Tollgate's wire protocols between controller and dataplanes: the config stream
//! (incremental xDS semantics: one resource per user object, versions, nonces, ACK/NACK
//! with per-resource errors, resume from held versions) and the usage stream (sequenced
//! usage batches, acknowledged, answered with quota leases). The Rust code under `src/gen`
//! is generated from `proto/` by `make generate` and committed.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!("gen/tollgate.v1alpha1.rs");
}

pub use generated::*;

pub mod admin;
pub mod prices;
pub mod process;
pub mod quantity;
pub mod time;

/// Type URLs of the resource types on the config stream, one per user-facing kind.
pub mod type_url {
    pub const PROVIDER: &str = "tollgate.dev/v1alpha1/Provider";
    pub const ROUTE: &str = "tollgate.dev/v1alpha1/Route";
    pub const VIRTUAL_KEY: &str = "tollgate.dev/v1alpha1/VirtualKey";
    pub const BUDGET: &str = "tollgate.dev/v1alpha1/Budget";
    pub const MCP_SERVER: &str = "tollgate.dev/v1alpha1/McpServer";
    pub const MCP_TOOL_POLICY: &str = "tollgate.dev/v1alpha1/McpToolPolicy";

    /// Every type, in the order a dataplane subscribes to them (providers before the
    /// routes that point at them).
    pub const ALL: [&str; 6] = [
        PROVIDER,
        ROUTE,
        VIRTUAL_KEY,
        BUDGET,
        MCP_SERVER,
        MCP_TOOL_POLICY,
    ];
}

impl resource::Body {
    /// The type URL a resource with this body travels under.
    pub fn type_url(&self) -> &'static str {
        match self {
            resource::Body::Provider(_) => type_url::PROVIDER,
            resource::Body::Route(_) => type_url::ROUTE,
            resource::Body::VirtualKey(_) => type_url::VIRTUAL_KEY,
            resource::Body::Budget(_) => type_url::BUDGET,
            resource::Body::McpServer(_) => type_url::MCP_SERVER,
            resource::Body::McpToolPolicy(_) => type_url::MCP_TOOL_POLICY,
        }
    }
}

const REDACTED: &str = "<redacted>";

fn redact(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { REDACTED }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("api_key", &redact(&self.api_key))
            .field("weight", &self.weight)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish()
    }
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("sse", &self.sse)
            .field("tool_prefix", &self.tool_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("auth_header_name", &self.auth_header_name)
            .field("auth_header_value", &redact(&self.auth_header_value))
            .field("oauth", &self.oauth)
            .finish()
    }
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &redact(&self.client_secret))
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl std::fmt::Debug for DeltaConfigResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaConfigResponse")
            .field("type_url", &self.type_url)
            .field("system_version_info", &self.system_version_info)
            .field("resources", &self.resources)
            .field("removed_resources", &self.removed_resources)
            .field("nonce", &self.nonce)
            .field(
                "mcp_session_key",
                &if self.mcp_session_key.is_empty() {
                    ""
                } else {
                    REDACTED
                },
            )
            .finish()
    }
}

/// Metadata key carrying the bearer token that authenticates a dataplane's streams.
pub const AUTHORIZATION: &str = "authorization";

/// The gRPC metadata key under which a controller replica that does not keep the usage
/// ledger names the leader's own URL when it refuses a usage stream.
pub const LEADER_URL: &str = "tollgate-leader-url";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential {
            id: "openai/apiKey".into(),
            api_key: "sk-very-secret".into(),
            weight: 1,
            ..Default::default()
        };
        let p = Provider {
            credentials: vec![c],
            ..Default::default()
        };
        let m = McpServer {
            auth_header_value: "Bearer hunter2".into(),
            oauth: Some(OAuthClient {
                client_secret: "s3cr3t".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = DeltaConfigResponse {
            mcp_session_key: b"session-key-bytes".to_vec(),
            ..Default::default()
        };
        let text = format!("{p:?} {m:?} {r:?}");
        for secret in ["sk-very-secret", "hunter2", "s3cr3t", "115, 101"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("<redacted>"));
    }
}
