//! Calls to upstream MCP servers over Streamable HTTP: every JSON-RPC message is a POST
//! to the server's URL carrying the upstream session id and protocol version; the answer
//! is `202 Accepted` (for a notification or a response), one JSON body, or an event
//! stream. Authentication is a header from a Secret or an OAuth 2 client-credentials
//! token, fetched from the token endpoint, cached until shortly before it expires, and
//! fetched again when the server answers 401.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::config::{McpServer, OAuthClient};
use super::jsonrpc::Message;
use super::transport::{self, AnswerError};
use crate::auth::sigv4::uri_encode;
use crate::auth::token::{TokenError, exchange};
use crate::upstream::Upstream;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// Largest JSON answer read from an MCP server.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// A token is fetched again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// How long a token without `expires_in` is used.
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the MCP server could not be reached: {0}")]
    Unreachable(String),
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server no longer knows the session (HTTP 404 to a request with a session id).
    #[error("the MCP server ended the session")]
    SessionGone,
    #[error("the MCP server answered HTTP {0}")]
    Status(StatusCode),
    /// The answer held no response to the request sent.
    #[error("the MCP server did not answer the request")]
    NoAnswer,
    #[error("no OAuth token for the MCP server: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

/// What a POST was answered with.
pub enum Reply {
    Accepted,
    Messages(Vec<Message>),
    /// An event stream, to be read as it arrives.
    Events(Incoming),
}

/// Where a message goes: a server, and the session and version agreed with it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub server: &'a McpServer,
    pub session_id: &'a str,
    pub version: &'a str,
}

/// Tokens are cached with each server's OAuth client (`config::OAuthClient::token`).
#[derive(Clone)]
pub struct Client {
    http: Upstream,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mcp::Client").finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(http: Upstream) -> Self {
        Client { http }
    }

    /// POSTs one message (or batch), answering with the reply and the response headers.
    /// The server's timeout bounds the wait for the response head; an event stream is
    /// bounded by its reader.
    pub async fn post(
        &self,
        to: Target<'_>,
        message: &Value,
    ) -> Result<(HeaderMap, Reply), CallError> {
        let body = Bytes::from(serde_json::to_vec(message).unwrap_or_default());
        let mut refreshed = false;
        loop {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(to.server.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json, text/event-stream");
            if !to.session_id.is_empty() {
                req = req.header(SESSION_HEADER, to.session_id);
            }
            if !to.version.is_empty() {
                req = req.header(VERSION_HEADER, to.version);
            }
            let mut req = req
                .body(Full::new(body.clone()))
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            self.authorize(to.server, req.headers_mut()).await?;
            let response = self.send(to.server, req).await?;
            let status = response.status();
            if let Some(oauth) = &to.server.oauth
                && status == StatusCode::UNAUTHORIZED
                && !refreshed
            {
                // The cached token may have been revoked: fetch another, once.
                oauth.token.forget().await;
                refreshed = true;
                continue;
            }
            if status == StatusCode::NOT_FOUND && !to.session_id.is_empty() {
                return Err(CallError::SessionGone);
            }
            if status == StatusCode::ACCEPTED {
                return Ok((response.headers().clone(), Reply::Accepted));
            }
            if !status.is_success() {
                return Err(CallError::Status(status));
            }
            let (parts, body) = response.into_parts();
            let content_type = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if content_type.starts_with("text/event-stream") {
                return Ok((parts.headers, Reply::Events(body)));
            }
            let bytes = tokio::time::timeout(
                to.server.timeout,
                Limited::new(body, MAX_ANSWER_BYTES).collect(),
            )
            .await
            .map_err(|_| CallError::Timeout(to.server.timeout))?
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .to_bytes();
            let messages = transport::messages(&content_type, &bytes)?;
            return Ok((parts.headers, Reply::Messages(messages)));
        }
    }

    /// Ends an upstream session (best effort: the server may have forgotten it already).
    pub async fn end(&self, to: Target<'_>) {
        if to.session_id.is_empty() {
            return;
        }
        let Ok(mut req) = Request::builder()
            .method(Method::DELETE)
            .uri(to.server.url.clone())
            .header(SESSION_HEADER, to.session_id)
            .header(VERSION_HEADER, to.version)
            .body(Full::new(Bytes::new()))
        else {
            return;
        };
        if self.authorize(to.server, req.headers_mut()).await.is_ok() {
            let _ = self.send(to.server, req).await;
        }
    }

    async fn send(
        &self,
        server: &McpServer,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, CallError> {
        tokio::time::timeout(server.timeout, self.http.request(req))
            .await
            .map_err(|_| CallError::Timeout(server.timeout))?
            .map_err(|e| CallError::Unreachable(error_chain(&e)))
    }

    async fn authorize(
        &self,
        server: &McpServer,
        headers: &mut HeaderMap,
    ) -> Result<(), CallError> {
        if let Some((name, value)) = &server.auth {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(oauth) = &server.oauth {
            let token = self.token(server, oauth).await?;
            headers.insert(AUTHORIZATION, token);
        }
        Ok(())
    }

    /// A bearer token for `server`: the cached one while it is fresh, else one from the
    /// client-credentials grant (RFC 6749 section 4.4), with the client authenticated by
    /// HTTP Basic as section 2.3.1 asks servers to support.
    async fn token(
        &self,
        server: &McpServer,
        oauth: &OAuthClient,
    ) -> Result<HeaderValue, CallError> {
        Ok(oauth
            .token
            .get(TOKEN_MARGIN, TOKEN_DEFAULT_LIFE, || async {
                let mut form = String::from("grant_type=client_credentials");
                if !oauth.scopes.is_empty() {
                    form.push_str("&scope=");
                    form.push_str(&uri_encode(&oauth.scopes.join(" "), false));
                }
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    uri_encode(&oauth.client_id, false),
                    uri_encode(&oauth.client_secret, false)
                ));
                let mut client_auth = HeaderValue::try_from(format!("Basic {basic}"))
                    .map_err(|_| TokenError::BadAnswer)?;
                client_auth.set_sensitive(true);
                exchange(
                    &self.http,
                    &oauth.token_url,
                    form,
                    Some(client_auth),
                    server.timeout,
                )
                .await
            })
            .await?)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
