//! MCPServer and MCPToolPolicy as the dataplane holds them, converted from the config
//! stream (a resource that cannot be used is NACKed, like any other).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use tollgate_proto as pb;

use super::tool_policy::Rule;
use crate::config::model::{ConvertError, http_url, secret_header};

/// Timeout of a call to an MCP server whose resource sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct McpServer {
    /// `<namespace>/<name>`.
    pub id: String,
    pub url: Uri,
    pub prefix: String,
    pub timeout: Duration,
    /// Sent on every upstream request; the value is marked sensitive (never printed).
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub oauth: Option<Arc<OAuthClient>>,
    /// The older HTTP+SSE transport: `url` is the event stream, which names where to
    /// POST messages.
    pub sse: bool,
}

/// OAuth 2 client credentials for an MCP server, with the token they last got.
pub struct OAuthClient {
    pub token_url: Uri,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub token: crate::auth::token::Cached,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl TryFrom<&pb::McpServer> for McpServer {
    type Error = ConvertError;

    fn try_from(s: &pb::McpServer) -> Result<Self, Self::Error> {
        let id = format!("{}/{}", s.namespace, s.name);
        let auth = if s.auth_header_name.is_empty() {
            None
        } else {
            let name = HeaderName::try_from(s.auth_header_name.as_str())
                .map_err(|_| ConvertError::BadCredential(format!("{id} (header name)")))?;
            let value =
                secret_header(s.auth_header_value.clone(), &format!("{id} (header value)"))?;
            Some((name, value))
        };
        let oauth = match &s.oauth {
            Some(o) if !o.token_url.is_empty() => Some(Arc::new(OAuthClient {
                token_url: http_url(&o.token_url)?,
                client_id: o.client_id.clone(),
                client_secret: o.client_secret.clone(),
                scopes: o.scopes.clone(),
                token: Default::default(),
            })),
            _ => None,
        };
        if s.tool_prefix.is_empty() {
            return Err(ConvertError::MissingField("MCPServer has no tool prefix"));
        }
        Ok(McpServer {
            url: http_url(&s.url)?,
            prefix: s.tool_prefix.clone(),
            timeout: if s.timeout_ms == 0 {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_millis(s.timeout_ms)
            },
            auth,
            oauth,
            sse: s.sse,
            id,
        })
    }
}

/// One MCPToolPolicy: the keys it selected when compiled, and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolPolicy {
    /// `<namespace>/<name>` of each VirtualKey it applies to.
    pub keys: Vec<String>,
    /// Rules with their server as `<namespace>/<name>`.
    pub rules: Vec<Rule>,
    pub compact_schemas: bool,
    pub log_arguments: bool,
}

impl From<&pb::McpToolPolicy> for ToolPolicy {
    fn from(p: &pb::McpToolPolicy) -> Self {
        ToolPolicy {
            keys: p
                .virtual_keys
                .iter()
                .map(|k| format!("{}/{k}", p.namespace))
                .collect(),
            rules: p
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| Rule {
                    server: format!("{}/{}", p.namespace, r.server),
                    allow: r
                        .allow
                        .iter()
                        .map(|g| super::tool_policy::canonical(g))
                        .collect(),
                    deny: r
                        .deny
                        .iter()
                        .map(|g| super::tool_policy::canonical(g))
                        .collect(),
                    calls_per_minute: r.calls_per_minute,
                    origin: format!("{}/{}/{i}", p.namespace, p.name),
                })
                .collect(),
            compact_schemas: p.compact_schemas,
            log_arguments: p.log_arguments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> pb::McpServer {
        pb::McpServer {
            namespace: "ns".into(),
            name: "time".into(),
            url: "http://127.0.0.1:9/mcp".into(),
            tool_prefix: "time".into(),
            auth_header_name: "authorization".into(),
            auth_header_value: "Bearer s3cret".into(),
            oauth: Some(pb::OAuthClient {
                token_url: "https://auth.example/token".into(),
                client_id: "id".into(),
                client_secret: "oauth-s3cret".into(),
                scopes: vec!["tools".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_server_converts_and_never_prints_its_secrets() {
        let s = McpServer::try_from(&server()).unwrap();
        assert_eq!(s.id, "ns/time");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        let bad = pb::McpServer {
            url: "not a url".into(),
            ..server()
        };
        assert!(McpServer::try_from(&bad).is_err());
        let bad = pb::McpServer {
            auth_header_value: "line\nbreak".into(),
            ..server()
        };
        let e = McpServer::try_from(&bad).unwrap_err().to_string();
        assert!(!e.contains("line"), "{e}");
        let sse = pb::McpServer {
            sse: true,
            ..server()
        };
        assert!(McpServer::try_from(&sse).unwrap().sse);
    }

    #[test]
    fn a_policy_names_keys_and_servers_in_its_namespace() {
        let p = ToolPolicy::from(&pb::McpToolPolicy {
            namespace: "ns".into(),
            name: "finance".into(),
            virtual_keys: vec!["agent".into()],
            rules: vec![pb::ToolRule {
                server: "time".into(),
                allow: vec!["*".into()],
                deny: vec![" Delete_*\u{200B}".into()],
                calls_per_minute: 5,
            }],
            ..Default::default()
        });
        assert_eq!(p.keys, ["ns/agent"]);
        assert_eq!(
            p.rules[0].deny,
            ["delete_*"],
            "globs kept in canonical form"
        );
        assert_eq!(p.rules[0].server, "ns/time");
        assert_eq!(p.rules[0].origin, "ns/finance/0");
    }
}
