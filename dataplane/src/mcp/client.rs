//! Calls to upstream MCP servers.
//!
//! Over Streamable HTTP every JSON-RPC message is a POST to the server's URL carrying the
//! upstream session id and protocol version; the answer is `202 Accepted` (for a
//! notification or a response), one JSON body, or an event stream.
//!
//! Over the older HTTP+SSE transport (protocol 2024-11-05) a session lives as long as
//! one GET of the server's event stream, which names the endpoint to POST messages to and
//! carries every answer. No dataplane holds such a stream between requests: each request
//! opens one, initializes, sends the request and reads its answer, and the stream ends
//! with it. That keeps sessions servable by any replica, at the price of a handshake per
//! request, and it means such a server keeps nothing between two requests and is told
//! of no client capabilities (so it sends no sampling, elicitation or roots requests).
//!
//! Authentication is a header from a Secret or an OAuth 2 client-credentials token,
//! fetched from the token endpoint, cached until shortly before it expires, and fetched
//! again when the server answers 401.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::jsonrpc::{self, Id, Message, RpcError};
use super::transport::{self, AnswerError, Events};
use crate::auth::sigv4::uri_encode;
use crate::auth::token::{TokenError, exchange};
use crate::config::mcp::{McpServer, OAuthClient};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// Largest JSON answer read from an MCP server.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// A token is fetched again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// How long a token without `expires_in` is used.
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(300);
/// The version an HTTP+SSE server is asked for when the session agreed none.
const SSE_VERSION: &str = "2024-11-05";

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The detail (logged where it happens) is not shown to clients: it may name
    /// addresses and ports.
    #[error("the MCP server could not be reached")]
    Unreachable(String),
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server no longer knows the session (HTTP 404 to a request with a session id).
    #[error("the MCP server ended the session")]
    SessionGone,
    #[error("the MCP server answered HTTP {0}")]
    Status(StatusCode),
    /// An HTTP+SSE server's event stream ended or timed out before naming its endpoint.
    #[error("the MCP server's event stream named no endpoint")]
    NoEndpoint,
    /// An HTTP+SSE server named an endpoint on another origin, where its credentials
    /// are not sent.
    #[error("the MCP server named an endpoint on another origin")]
    ForeignEndpoint,
    /// An HTTP+SSE server refused the handshake made for a request.
    #[error("the MCP server refused initialize: {0}")]
    Refused(String),
    /// The answer held no response to the request sent.
    #[error("the MCP server did not answer the request")]
    NoAnswer,
    #[error("no OAuth token for the MCP server: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Answer(AnswerError),
}

impl From<AnswerError> for CallError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Ended => CallError::NoAnswer,
            AnswerError::Timeout(t) => CallError::Timeout(t),
            other => CallError::Answer(other),
        }
    }
}

/// What a POST was answered with.
pub enum Reply {
    Accepted,
    Messages(Vec<Message>),
    /// An event stream, to be read as it arrives.
    Events(Events),
}

impl Reply {
    /// The outcome of the response to `id`, reading an event stream as far as needed.
    pub async fn answer(
        self,
        id: &Id,
        timeout: Duration,
    ) -> Result<Result<Value, RpcError>, CallError> {
        match self {
            Reply::Accepted => Err(CallError::NoAnswer),
            Reply::Messages(m) => transport::answer_in(m, id).ok_or(CallError::NoAnswer),
            Reply::Events(mut events) => Ok(events.answer(id, timeout).await?),
        }
    }
}

/// Where a message goes: a server, and the session and version agreed with it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub server: &'a McpServer,
    pub session_id: &'a str,
    pub version: &'a str,
    /// The W3C trace context the message carries (a traced tool call's).
    pub traceparent: Option<&'a str>,
}

/// Tokens are cached with each server's OAuth client (`config::OAuthClient::token`).
#[derive(Clone)]
pub struct Client {
    http: crate::base::upstream::Clients,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mcp::Client").finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(http: crate::base::upstream::Clients) -> Self {
        Client { http }
    }

    /// Sends one message, answering with the reply and the response headers. The
    /// server's timeout bounds the wait for the response head; an event stream is
    /// bounded by its reader.
    pub async fn post(
        &self,
        to: Target<'_>,
        message: &Value,
    ) -> Result<(HeaderMap, Reply), CallError> {
        if to.server.sse {
            return self.post_sse(to, message).await;
        }
        let body = Bytes::from(serde_json::to_vec(message).unwrap_or_default());
        let response = self
            .send_authorized(to.server, || {
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
                if let Some(tp) = to.traceparent {
                    req = req.header("traceparent", tp);
                }
                req.body(Full::new(body.clone()))
            })
            .await?;
        let status = response.status();
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
        let content_type = media_type(&parts.headers);
        if content_type == "text/event-stream" {
            return Ok((parts.headers, Reply::Events(Events::new(body))));
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
        Ok((parts.headers, Reply::Messages(messages)))
    }

    /// A message to an HTTP+SSE server: a request gets a session of its own (see the
    /// module's description), which ends when its answer has been read. Notifications
    /// and responses have no session left to go to, and are dropped.
    async fn post_sse(
        &self,
        to: Target<'_>,
        message: &Value,
    ) -> Result<(HeaderMap, Reply), CallError> {
        let Some(method) = message.get("method").and_then(Value::as_str) else {
            return Ok((HeaderMap::new(), Reply::Accepted));
        };
        let Some(id) = message.get("id").and_then(Id::read) else {
            return Ok((HeaderMap::new(), Reply::Accepted));
        };
        let server = to.server;
        let (endpoint, mut events) = self.open_sse(server).await?;
        let version = if method == "initialize" {
            message
                .pointer("/params/protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(SSE_VERSION)
        } else if to.version.is_empty() {
            SSE_VERSION
        } else {
            to.version
        };
        let init_id = Id::Str("tollgate-init".into());
        let init = jsonrpc::request(
            &init_id,
            "initialize",
            Some(json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")}
            })),
        );
        self.post_to_endpoint(server, &endpoint, &init).await?;
        let initialized = events.answer(&init_id, server.timeout).await?;
        if method == "initialize" {
            // The handshake is the answer: the stream ends here.
            let answer = Message::Response {
                id,
                outcome: initialized,
            };
            return Ok((HeaderMap::new(), Reply::Messages(vec![answer])));
        }
        if let Err(e) = initialized {
            return Err(CallError::Refused(e.message));
        }
        let done = jsonrpc::notification("notifications/initialized", None);
        self.post_to_endpoint(server, &endpoint, &done).await?;
        self.post_to_endpoint(server, &endpoint, message).await?;
        Ok((HeaderMap::new(), Reply::Events(events)))
    }

    /// GETs an HTTP+SSE server's event stream and reads it up to its `endpoint` event.
    async fn open_sse(&self, server: &McpServer) -> Result<(Uri, Events), CallError> {
        let response = self
            .send_authorized(server, || {
                Request::builder()
                    .method(Method::GET)
                    .uri(server.url.clone())
                    .header(ACCEPT, "text/event-stream")
                    .body(Full::new(Bytes::new()))
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Status(status));
        }
        let content_type = media_type(response.headers());
        if content_type != "text/event-stream" {
            return Err(AnswerError::ContentType(content_type).into());
        }
        let mut events = Events::new(response.into_body());
        let named = tokio::time::timeout(server.timeout, async {
            while let Some(e) = events.next_event().await? {
                if e.name == "endpoint" {
                    return Ok(Some(e.data));
                }
            }
            Ok::<_, AnswerError>(None)
        })
        .await
        .map_err(|_| CallError::NoEndpoint)??
        .ok_or(CallError::NoEndpoint)?;
        let endpoint = endpoint_of(&server.url, named.trim()).ok_or(CallError::ForeignEndpoint)?;
        Ok((endpoint, events))
    }

    /// POSTs one message to an HTTP+SSE server's endpoint; its answer comes on the stream.
    async fn post_to_endpoint(
        &self,
        server: &McpServer,
        endpoint: &Uri,
        message: &Value,
    ) -> Result<(), CallError> {
        let body = Bytes::from(serde_json::to_vec(message).unwrap_or_default());
        let response = self
            .send_authorized(server, || {
                Request::builder()
                    .method(Method::POST)
                    .uri(endpoint.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
            })
            .await?;
        let status = response.status();
        // The body is a word or two ("Accepted"); read so the connection can be reused.
        let _ = tokio::time::timeout(
            server.timeout,
            Limited::new(response.into_body(), 64 * 1024).collect(),
        )
        .await;
        if !status.is_success() {
            return Err(CallError::Status(status));
        }
        Ok(())
    }

    /// Ends an upstream session (best effort: the server may have forgotten it already).
    pub async fn end(&self, to: Target<'_>) {
        if to.session_id.is_empty() {
            return;
        }
        let _ = self
            .send_authorized(to.server, || {
                Request::builder()
                    .method(Method::DELETE)
                    .uri(to.server.url.clone())
                    .header(SESSION_HEADER, to.session_id)
                    .header(VERSION_HEADER, to.version)
                    .body(Full::new(Bytes::new()))
            })
            .await;
    }

    /// Sends the request `make` builds with the server's credentials; when the server
    /// answers 401 to an OAuth token, the token may have been revoked: it is fetched
    /// again and the request sent once more.
    async fn send_authorized(
        &self,
        server: &McpServer,
        make: impl Fn() -> Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Response<Incoming>, CallError> {
        let mut refreshed = false;
        loop {
            let mut req = make().map_err(|e| CallError::Unreachable(e.to_string()))?;
            self.authorize(server, req.headers_mut()).await?;
            let response = self.send(server, req).await?;
            if let Some(oauth) = &server.oauth
                && response.status() == StatusCode::UNAUTHORIZED
                && !refreshed
            {
                oauth.token.forget().await;
                refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }

    async fn send(
        &self,
        server: &McpServer,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, CallError> {
        tokio::time::timeout(
            server.timeout,
            self.http.for_object(&server.id).request(req),
        )
        .await
        .map_err(|_| CallError::Timeout(server.timeout))?
        .map_err(|e| {
            let chain = error_chain(&e);
            tracing::warn!(server = %server.id, error = %chain, "MCP server unreachable");
            CallError::Unreachable(chain)
        })
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
                    self.http.for_object(&server.id),
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

/// The media type of a response (`Content-Type` without parameters), lowercased.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Where an HTTP+SSE server's `endpoint` event points, resolved against the stream's
/// URL; `None` when it is on another origin (scheme, host and port), where the server's
/// credentials must not go.
fn endpoint_of(stream: &Uri, named: &str) -> Option<Uri> {
    if named.contains("://") {
        let uri = Uri::try_from(named).ok()?;
        return (uri.scheme() == stream.scheme() && uri.authority() == stream.authority())
            .then_some(uri);
    }
    if named.starts_with("//") {
        return None;
    }
    let path = if named.starts_with('/') {
        named.to_string()
    } else {
        // Relative to the stream's directory.
        let base = stream.path();
        format!("{}{named}", &base[..base.rfind('/').map_or(0, |i| i + 1)])
    };
    let mut parts = stream.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_type_is_read_without_its_parameters() {
        let mut headers = HeaderMap::new();
        assert_eq!(media_type(&headers), "");
        for (sent, read) in [
            ("Application/JSON; charset=utf-8", "application/json"),
            ("text/event-stream", "text/event-stream"),
            (" text/event-stream ;charset=utf-8", "text/event-stream"),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(sent));
            assert_eq!(media_type(&headers), read, "{sent}");
        }
    }

    #[test]
    fn an_endpoint_resolves_against_the_stream_and_stays_on_its_origin() {
        let stream = Uri::from_static("http://127.0.0.1:3001/mcp/sse?x=1");
        let at = |named: &str| endpoint_of(&stream, named).map(|u| u.to_string());
        assert_eq!(
            at("/message?sessionId=a1").as_deref(),
            Some("http://127.0.0.1:3001/message?sessionId=a1")
        );
        assert_eq!(
            at("message?sessionId=a1").as_deref(),
            Some("http://127.0.0.1:3001/mcp/message?sessionId=a1")
        );
        assert_eq!(
            at("http://127.0.0.1:3001/m").as_deref(),
            Some("http://127.0.0.1:3001/m")
        );
        for foreign in [
            "http://127.0.0.1:3002/m",
            "https://127.0.0.1:3001/m",
            "http://evil.example/m",
            "//evil.example/m",
        ] {
            assert_eq!(at(foreign), None, "{foreign}");
        }
        assert_eq!(at("/bad path"), None);
    }
}
