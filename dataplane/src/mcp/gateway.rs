//! The `/mcp` endpoint: one MCP server (Streamable HTTP transport) in front of every
//! MCPServer a virtual key may reach. `initialize` opens a session with each of those
//! servers and seals their session ids into the client's `Mcp-Session-Id`
//! (`super::session`), so any dataplane serves any later request. `tools/list` and
//! `prompts/list` show names as `<prefix>__<name>`, tools only when the key's policy
//! permits them; `tools/call` checks the policy (and the per-tool rate limit) before
//! anything reaches a server, and every call is audited. A request that goes to one
//! server is answered as that server answers: one JSON body, or an event stream whose
//! notifications (progress, logging) and requests reach the client as they arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{CallError, Client, Reply, SESSION_HEADER, Target, VERSION_HEADER};
use super::compact;
use super::jsonrpc::{self, Body as RpcBody, Id, Message, RpcError};
use super::names::Names;
use super::session::{self, Keys, Session};
use super::transport::{AnswerError, Events};
use crate::base::audit::Owner;
use crate::base::{Body, BoxError, full};
use crate::config::mcp::McpServer;
use crate::config::model::VirtualKey;
use crate::config::snapshot::Snapshot;
use crate::config::tool_policy::KeyPolicy;
use crate::metering::quota::{self, Demand, Qty};
use crate::pipeline::State;

/// Protocol versions the endpoint speaks, newest first: the revisions that begin with
/// the `initialize` handshake.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Error codes of the endpoint beyond JSON-RPC's own (the implementation-defined range).
pub mod code {
    /// No valid virtual key.
    pub const UNAUTHORIZED: i64 = -32001;
    /// The session id is unknown (expired, sealed with an old key, or another key's).
    pub const SESSION_NOT_FOUND: i64 = -32002;
    /// The key's tool policy does not permit the tool.
    pub const FORBIDDEN: i64 = -32003;
    /// The key's calls-a-minute limit for the tool is reached.
    pub const RATE_LIMITED: i64 = -32004;
    /// The MCP server could not be reached or failed.
    pub const UPSTREAM: i64 = -32005;
}

/// Pages of a list read from one server at most.
const MAX_PAGES: usize = 50;
/// Prefix of the ids given to requests a server sends the client, so the client's answer
/// finds its way back: `tg.<upstream index>.<original id as JSON>`.
const RELAYED_ID: &str = "tg.";

/// The endpoint's state, shared by every request.
pub struct Gateway {
    pub client: Client,
    pub keys: Arc<Keys>,
    /// The tools each server listed last, by server id, and when: a call limit is counted
    /// per tool only for tools their server lists, so a client cannot make the ledger
    /// keep an account for every name it invents.
    listed: std::sync::Mutex<HashMap<String, Listing>>,
}

/// The names of the tools one server listed, and when.
type Listing = (Instant, Arc<HashSet<String>>);

/// A listing younger than this is not asked for again when a name is missing from it.
const LISTING_FRESH: Duration = Duration::from_secs(1);
/// A listing is asked for again after this, even when the name is in it.
const LISTING_KEPT: Duration = Duration::from_secs(60);
/// The longest tool name (as MCP's specification bounds them).
const MAX_TOOL_NAME: usize = 128;

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(client: Client, keys: Arc<Keys>) -> Self {
        Gateway {
            client,
            keys,
            listed: Default::default(),
        }
    }

    /// Whether the server of `l` lists `tool`, from a recent listing or a new one.
    async fn lists(&self, l: &Live, tool: &str) -> bool {
        let cached = crate::base::lock(&self.listed).get(&l.server.id).cloned();
        if let Some((at, names)) = &cached {
            let age = at.elapsed();
            if age < LISTING_KEPT && names.contains(tool) {
                return true;
            }
            if age < LISTING_FRESH {
                return false;
            }
        }
        let Ok(listed) = gather(&self.client, std::slice::from_ref(l), "tools/list", "tools").await
        else {
            return false;
        };
        let names: HashSet<String> = listed
            .iter()
            .flat_map(|(_, tools)| tools)
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let found = names.contains(tool);
        crate::base::lock(&self.listed)
            .insert(l.server.id.clone(), (Instant::now(), Arc::new(names)));
        found
    }
}

/// Who is calling, with the config the request started with.
struct Caller {
    key: Arc<VirtualKey>,
    policy: Arc<KeyPolicy>,
    snapshot: Arc<Snapshot>,
}

/// One upstream of a session that the key still reaches under the current config.
#[derive(Clone)]
struct Live {
    index: usize,
    server: Arc<McpServer>,
    session_id: String,
    version: String,
}

impl Live {
    fn target(&self) -> Target<'_> {
        Target {
            server: &self.server,
            session_id: &self.session_id,
            version: &self.version,
            traceparent: None,
        }
    }
}

impl Caller {
    /// The session's upstreams that exist and that the key's policy reaches now: a
    /// policy change applies to sessions already open.
    fn live(&self, session: &Session) -> Vec<Live> {
        session
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(index, u)| {
                let server = self.snapshot.mcp_servers.get(&u.server)?;
                self.policy.rules.reaches(&server.id).then(|| Live {
                    index,
                    server: server.clone(),
                    session_id: u.session_id.clone(),
                    version: u.version.clone(),
                })
            })
            .collect()
    }
}

fn names(live: &[Live]) -> Names {
    Names::new(live.iter().map(|l| (l.server.prefix.as_str(), l.index)))
}

/// What an MCP request works with: the shared request state and the gateway's own.
struct Env<'a> {
    core: &'a State,
    mcp: &'a Gateway,
    /// The HTTP request's trace, when it is sampled.
    trace: Option<tollgate_telemetry::Sampled>,
}

pub async fn handle(core: &State, mcp: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let trace = core
        .telemetry
        .as_ref()
        .and_then(|t| t.sample_headers(req.headers()));
    let state = &Env { core, mcp, trace };
    let method = req.method().clone();
    match method {
        Method::POST => post(state, req).await,
        Method::DELETE => delete(state, req).await,
        _ => {
            // No stream for messages outside a request: servers' own notifications
            // reach the client within the answer to one of its requests.
            let mut r = http_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    "Use POST for messages and DELETE to end a session",
                ),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            r
        }
    }
}

/// An HTTP error carrying a JSON-RPC error.
fn http_error(status: StatusCode, id: Option<&Id>, e: RpcError) -> Response<Body> {
    let mut r = json_response(&jsonrpc::error(id, &e));
    *r.status_mut() = status;
    r
}

fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(serde_json::to_vec(v).unwrap_or_default())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn not_found(id: Option<&Id>) -> Response<Body> {
    http_error(
        StatusCode::NOT_FOUND,
        id,
        RpcError::new(
            code::SESSION_NOT_FOUND,
            "Session not found: send initialize to begin a new session",
        ),
    )
}

/// The caller, or the response refusing it.
fn caller(state: &Env<'_>, headers: &http::HeaderMap) -> Result<Caller, Box<Response<Body>>> {
    let snapshot = state.core.config.load_full();
    let key = crate::pipeline::authenticate(&snapshot, headers)
        .map_err(|e| {
            let mut r = http_error(
                e.status(),
                None,
                RpcError::new(code::UNAUTHORIZED, e.to_string()),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            Box::new(r)
        })?
        .clone();
    let policy = snapshot
        .mcp_rules
        .get(key.id())
        .cloned()
        .unwrap_or_default();
    Ok(Caller {
        key,
        policy,
        snapshot,
    })
}

/// The session a request names, when it is this key's.
fn session_of(state: &Env<'_>, caller: &Caller, headers: &http::HeaderMap) -> Option<Session> {
    let id = headers.get(SESSION_HEADER)?.to_str().ok()?;
    state.mcp.keys.open(id).filter(|s| s.key == caller.key.id())
}

fn count(state: &Env<'_>, method: &str, outcome: &str) {
    state
        .core
        .metrics
        .mcp_requests
        .with_label_values(&[method_label(method), outcome])
        .inc();
}

/// A method as metrics and spans name it: MCP's own by name, any other as `other`, so a
/// client cannot grow a metric without bound or put its text in telemetry.
fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

const KNOWN_METHODS: [&str; 20] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "logging/setLevel",
    "completion/complete",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "response",
    "server/discover",
    "delete",
];

async fn post(state: &Env<'_>, req: Request<Incoming>) -> Response<Body> {
    let caller = match caller(state, req.headers()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (parts, message) = match message_of(state, req).await {
        Ok(m) => m,
        Err(r) => return *r,
    };
    match message {
        Message::Request { id, method, params } => {
            let label = method_label(&method);
            let r = on_request(state, &caller, &parts.headers, id, method, params).await;
            if let (Some(t), Some(s)) = (&state.core.telemetry, &state.trace) {
                super::spans::request_span(t, s, label, &caller.key, r.status().as_u16());
            }
            r
        }
        Message::Notification { method, params } => {
            on_notification(state, &caller, &parts.headers, method, params).await
        }
        Message::Response { id, outcome } => {
            on_response(state, &caller, &parts.headers, id, outcome).await
        }
    }
}

/// The one JSON-RPC message of a POST, read within the body limits, in a protocol
/// version spoken here; or the answer refusing it.
async fn message_of(
    state: &Env<'_>,
    req: Request<Incoming>,
) -> Result<(http::request::Parts, Message), Box<Response<Body>>> {
    let (parts, body) = req.into_parts();
    let bytes =
        match crate::base::bodies::read_request(body, &parts.headers, &state.core.bodies).await {
            Ok(b) => b,
            Err(refused) => {
                use crate::base::bodies::Refused;
                let (status, message) = match refused {
                    Refused::TooLarge(limit) => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Request body is larger than the limit of {limit} bytes"),
                    ),
                    Refused::TooSlow => (
                        StatusCode::REQUEST_TIMEOUT,
                        "The request body arrived too slowly".to_owned(),
                    ),
                    Refused::Busy => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The gateway is holding as many request bodies as it may; retry shortly"
                            .to_owned(),
                    ),
                    Refused::Broken => (
                        StatusCode::BAD_REQUEST,
                        "The request body could not be read".to_owned(),
                    ),
                };
                return Err(Box::new(http_error(
                    status,
                    None,
                    RpcError::new(jsonrpc::INVALID_REQUEST, message),
                )));
            }
        };
    if let Some(v) = parts.headers.get(VERSION_HEADER)
        && !PROTOCOL_VERSIONS
            .iter()
            .any(|p| v.as_bytes() == p.as_bytes())
    {
        return Err(Box::new(http_error(
            StatusCode::BAD_REQUEST,
            None,
            RpcError::new(
                jsonrpc::INVALID_REQUEST,
                format!(
                    "Unsupported MCP-Protocol-Version; supported: {}",
                    PROTOCOL_VERSIONS.join(", ")
                ),
            ),
        )));
    }
    let message = match jsonrpc::parse(&bytes) {
        Err(e) => return Err(Box::new(http_error(StatusCode::BAD_REQUEST, None, e))),
        Ok(RpcBody::Batch(_)) => {
            return Err(Box::new(http_error(
                StatusCode::BAD_REQUEST,
                None,
                RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    "Invalid Request: JSON-RPC batches are not supported; send one message per request",
                ),
            )));
        }
        Ok(RpcBody::One(Err(invalid))) => {
            return Err(Box::new(http_error(
                StatusCode::BAD_REQUEST,
                invalid.id.as_ref(),
                invalid.error,
            )));
        }
        Ok(RpcBody::One(Ok(m))) => m,
    };
    Ok((parts, message))
}

/// A request: admitted against the key's limits (all but a ping), then answered here
/// (`initialize`, `ping`) or by the session's servers.
async fn on_request(
    state: &Env<'_>,
    caller: &Caller,
    headers: &http::HeaderMap,
    id: Id,
    method: String,
    params: Option<Value>,
) -> Response<Body> {
    let events = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    // Every request but a ping is one against the key's rate and concurrency
    // limits, and none is served while its budgets are spent.
    let admitted = if method == "ping" {
        None
    } else {
        match crate::pipeline::admission::admit_free(
            state.core,
            &caller.key,
            headers,
            crate::pipeline::admission::LEAST,
        )
        .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                count(state, &method, e.status().as_str());
                return http_error(
                    e.status(),
                    Some(&id),
                    RpcError::new(code::RATE_LIMITED, e.to_string()),
                );
            }
        }
    };
    if method == "initialize" {
        let r = initialize(state, caller, &id, params).await;
        count(state, &method, r.status().as_str());
        return r;
    }
    if method == "ping" {
        count(state, &method, "200");
        return json_response(&jsonrpc::result(&id, json!({})));
    }
    let Some(session) = session_of(state, caller, headers) else {
        let r = if headers.contains_key(SESSION_HEADER) {
            not_found(Some(&id))
        } else if method == "server/discover" {
            // A client probing for a newer, sessionless revision of the protocol:
            // not spoken here, so it falls back to `initialize`.
            json_response(&jsonrpc::error(
                Some(&id),
                &RpcError::new(
                    jsonrpc::METHOD_NOT_FOUND,
                    "Method not found: server/discover",
                ),
            ))
        } else {
            http_error(
                StatusCode::BAD_REQUEST,
                Some(&id),
                RpcError::new(
                    jsonrpc::INVALID_REQUEST,
                    "Bad Request: Mcp-Session-Id header is required (send initialize first)",
                ),
            )
        };
        count(state, &method, r.status().as_str());
        return r;
    };
    let live = caller.live(&session);
    let r = request(state, caller, &live, id, &method, params, events).await;
    count(state, &method, r.status().as_str());
    holding(r, admitted)
}

/// A notification: passed to every server of the session (but `initialized`).
async fn on_notification(
    state: &Env<'_>,
    caller: &Caller,
    headers: &http::HeaderMap,
    method: String,
    params: Option<Value>,
) -> Response<Body> {
    let Some(session) = session_of(state, caller, headers) else {
        return not_found(None);
    };
    count(state, &method, "202");
    if method != "notifications/initialized" {
        // Cancellations name the client's request ids, which are the ids the
        // servers saw: every server gets them, and ignores ids it does not know.
        let message = jsonrpc::notification(&method, params);
        let live = caller.live(&session);
        join_all(
            live.iter()
                .map(|l| state.mcp.client.post(l.target(), &message)),
        )
        .await;
    }
    accepted()
}

/// A response to a request a server made of the client: passed back to that server.
async fn on_response(
    state: &Env<'_>,
    caller: &Caller,
    headers: &http::HeaderMap,
    id: Id,
    outcome: Result<Value, RpcError>,
) -> Response<Body> {
    let Some(session) = session_of(state, caller, headers) else {
        return not_found(None);
    };
    count(state, "response", "202");
    if let Some((index, original)) = unwrap_relayed(&id)
        && let Some(live) = caller.live(&session).into_iter().find(|l| l.index == index)
    {
        let answer = jsonrpc::response(&original, outcome);
        if let Err(e) = state.mcp.client.post(live.target(), &answer).await {
            tracing::debug!(server = %live.server.id, error = %e, "could not pass a response to the MCP server");
        }
    }
    accepted()
}

/// The response, holding the request's admission (its concurrency slot) until the body
/// ends: an answer that comes as an event stream is still the request.
fn holding(
    r: Response<Body>,
    admitted: Option<crate::metering::quota::Reservation>,
) -> Response<Body> {
    let Some(admitted) = admitted else {
        return r;
    };
    r.map(|body| {
        Holding {
            body,
            _admitted: admitted,
        }
        .boxed()
    })
}

/// A body and the admission it keeps until dropped.
struct Holding {
    body: Body,
    _admitted: crate::metering::quota::Reservation,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn delete(state: &Env<'_>, req: Request<Incoming>) -> Response<Body> {
    let caller = match caller(state, req.headers()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(session) = session_of(state, &caller, req.headers()) else {
        return not_found(None);
    };
    count(state, "delete", "200");
    let live = caller.live(&session);
    join_all(live.iter().map(|l| state.mcp.client.end(l.target()))).await;
    Response::new(full(Bytes::new()))
}

/// `initialize`: agrees a protocol version with the client, opens a session with each
/// server the key reaches (a server that fails is left out of the session and logged),
/// and answers with the sealed session.
async fn initialize(
    state: &Env<'_>,
    caller: &Caller,
    id: &Id,
    params: Option<Value>,
) -> Response<Body> {
    let params = params.unwrap_or(Value::Null);
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .copied()
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    let capabilities = params
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut servers: Vec<&Arc<McpServer>> = caller
        .snapshot
        .mcp_servers
        .values()
        .filter(|s| caller.policy.rules.reaches(&s.id))
        .collect();
    servers.sort_by(|a, b| a.id.cmp(&b.id));
    let opened = join_all(
        servers
            .iter()
            .map(|s| open_upstream(&state.mcp.client, s, version, &capabilities)),
    )
    .await;
    let session = Session {
        key: caller.key.id().to_string(),
        version: version.to_string(),
        upstreams: opened.into_iter().flatten().collect(),
    };
    let sealed = match state.mcp.keys.seal(&session) {
        Ok(s) => s,
        Err(e) => {
            return http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id),
                RpcError::new(jsonrpc::INTERNAL_ERROR, e.to_string()),
            );
        }
    };
    tracing::info!(
        key = %caller.key.id(),
        version,
        servers = session.upstreams.len(),
        of = servers.len(),
        "MCP session opened"
    );
    let mut r = json_response(&jsonrpc::result(
        id,
        json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": false},
                "prompts": {"listChanged": false},
                "resources": {"subscribe": true, "listChanged": false},
                "logging": {},
                "completions": {}
            },
            "serverInfo": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")},
            "instructions": "Tools of every MCP server this key may use, named <server prefix>__<tool>."
        }),
    ));
    if let Ok(v) = HeaderValue::try_from(sealed) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// Begins a session with one server: `initialize`, then `notifications/initialized`.
async fn open_upstream(
    client: &Client,
    server: &McpServer,
    version: &str,
    capabilities: &Value,
) -> Option<session::Upstream> {
    let id = Id::Num(0);
    let init = jsonrpc::request(
        &id,
        "initialize",
        Some(json!({
            "protocolVersion": version,
            "capabilities": capabilities,
            "clientInfo": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")}
        })),
    );
    let fresh = Target {
        server,
        session_id: "",
        version: "",
        traceparent: None,
    };
    let answer = async {
        let (headers, reply) = client.post(fresh, &init).await?;
        let session_id = headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let outcome = reply.answer(&id, server.timeout).await?;
        Ok::<_, CallError>((session_id, outcome))
    };
    let (session_id, outcome) = match answer.await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(server = %server.id, error = %e, "MCP server left out of the session");
            return None;
        }
    };
    let result = match outcome {
        Ok(result) => result,
        Err(e) => {
            tracing::warn!(server = %server.id, code = e.code, message = %e.message, "MCP server refused initialize");
            return None;
        }
    };
    let agreed = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(version)
        .to_string();
    let up = session::Upstream {
        server: server.id.clone(),
        session_id,
        version: agreed,
    };
    let ready = Target {
        server,
        session_id: &up.session_id,
        version: &up.version,
        traceparent: None,
    };
    if let Err(e) = client
        .post(
            ready,
            &jsonrpc::notification("notifications/initialized", None),
        )
        .await
    {
        tracing::debug!(server = %server.id, error = %e, "notifications/initialized not delivered");
    }
    Some(up)
}

/// Asks one server and waits for the whole answer.
async fn ask(
    client: &Client,
    live: &Live,
    method: &str,
    params: Option<Value>,
) -> Result<Result<Value, RpcError>, CallError> {
    let id = Id::Str("tollgate".into());
    let (_, reply) = client
        .post(live.target(), &jsonrpc::request(&id, method, params))
        .await?;
    reply.answer(&id, live.server.timeout).await
}

fn upstream_error(id: &Id, server: &McpServer, e: &CallError) -> Response<Body> {
    if matches!(e, CallError::SessionGone) {
        return not_found(Some(id));
    }
    json_response(&jsonrpc::error(
        Some(id),
        &RpcError::new(code::UPSTREAM, format!("MCP server {}: {e}", server.id)),
    ))
}

async fn request(
    state: &Env<'_>,
    caller: &Caller,
    live: &[Live],
    id: Id,
    method: &str,
    params: Option<Value>,
    events: bool,
) -> Response<Body> {
    let client = &state.mcp.client;
    let answer = |outcome| json_response(&jsonrpc::response(&id, outcome));
    match method {
        "tools/list" => list_tools(state, caller, live, &id).await,
        "tools/call" => call_tool(state, caller, live, id, params, events).await,
        "prompts/list" => match gather(client, live, method, "prompts").await {
            Err(r) => r(&id),
            Ok(listed) => {
                let names = names(live);
                let prompts: Vec<Value> = listed
                    .into_iter()
                    .flat_map(|(l, items)| {
                        let names = &names;
                        items.into_iter().filter_map(move |mut p| {
                            let name = p.get("name")?.as_str()?;
                            p["name"] =
                                Value::String(names.show(&l.server.prefix, l.index, name)?);
                            Some(p)
                        })
                    })
                    .collect();
                answer(Ok(json!({"prompts": prompts})))
            }
        },
        "prompts/get" => {
            let mut params = params.unwrap_or(Value::Null);
            let Some((l, name)) = by_name(live, &params, "name") else {
                return answer(Err(RpcError::new(
                    jsonrpc::INVALID_PARAMS,
                    "Unknown prompt",
                )));
            };
            params["name"] = Value::String(name);
            relay(state, l, id, method, Some(params), events, None).await
        }
        "resources/list" | "resources/templates/list" => {
            let field = if method == "resources/list" {
                "resources"
            } else {
                "resourceTemplates"
            };
            match gather(client, live, method, field).await {
                Err(r) => r(&id),
                Ok(listed) => {
                    let items: Vec<Value> = listed.into_iter().flat_map(|(_, v)| v).collect();
                    answer(Ok(json!({ field: items })))
                }
            }
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            // Resources are named by URI, which the servers choose: the first server
            // that knows the URI answers.
            first_answer(client, live, &id, method, params).await
        }
        "completion/complete" => {
            let mut params = params.unwrap_or(Value::Null);
            if params.pointer("/ref/type").and_then(Value::as_str) == Some("ref/prompt") {
                let Some((l, name)) = params.get("ref").and_then(|r| by_name(live, r, "name"))
                else {
                    return answer(Err(RpcError::new(
                        jsonrpc::INVALID_PARAMS,
                        "Unknown prompt",
                    )));
                };
                params["ref"]["name"] = Value::String(name);
                return relay(state, l, id, method, Some(params), false, None).await;
            }
            first_answer(client, live, &id, method, Some(params)).await
        }
        "logging/setLevel" => {
            join_all(live.iter().map(|l| ask(client, l, method, params.clone()))).await;
            answer(Ok(json!({})))
        }
        _ => answer(Err(RpcError::new(
            jsonrpc::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        ))),
    }
}

/// The server and its own name for a `<prefix>__<name>` in `params[field]`.
fn by_name<'a>(live: &'a [Live], params: &Value, field: &str) -> Option<(&'a Live, String)> {
    let shown = params.get(field)?.as_str()?;
    let (index, name) = names(live).split(shown)?;
    Some((live.iter().find(|l| l.index == index)?, name.to_string()))
}

type Refusal = Box<dyn FnOnce(&Id) -> Response<Body> + Send>;

/// Every page of `field` from each server. A server that fails is left out (and logged);
/// a server that has ended the session ends the client's.
async fn gather<'a>(
    client: &Client,
    live: &'a [Live],
    method: &str,
    field: &str,
) -> Result<Vec<(&'a Live, Vec<Value>)>, Refusal> {
    let all = join_all(live.iter().map(|l| async move {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            match ask(client, l, method, params).await {
                Ok(Ok(result)) => {
                    if let Some(Value::Array(page)) = result.get(field) {
                        items.extend(page.iter().cloned());
                    }
                    match result.get("nextCursor") {
                        Some(c @ Value::String(_)) => cursor = Some(c.clone()),
                        _ => break,
                    }
                }
                Ok(Err(e)) => {
                    // A server without this capability answers "method not found".
                    if e.code != jsonrpc::METHOD_NOT_FOUND {
                        tracing::warn!(server = %l.server.id, method, code = e.code, message = %e.message, "MCP server refused a list");
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((l, items))
    }))
    .await;
    let mut out = Vec::new();
    for (l, r) in live.iter().zip(all) {
        match r {
            Ok(x) => out.push(x),
            Err(CallError::SessionGone) => {
                return Err(Box::new(|id: &Id| not_found(Some(id))));
            }
            Err(e) => {
                tracing::warn!(server = %l.server.id, method, error = %e, "MCP server left out of a list");
            }
        }
    }
    Ok(out)
}

async fn first_answer(
    client: &Client,
    live: &[Live],
    id: &Id,
    method: &str,
    params: Option<Value>,
) -> Response<Body> {
    let mut last = RpcError::new(jsonrpc::INVALID_PARAMS, "No MCP server knows this resource");
    for l in live {
        match ask(client, l, method, params.clone()).await {
            Ok(Ok(v)) => return json_response(&jsonrpc::result(id, v)),
            Ok(Err(e)) => last = e,
            Err(CallError::SessionGone) => return not_found(Some(id)),
            Err(e) => {
                tracing::warn!(server = %l.server.id, method, error = %e, "MCP server failed");
            }
        }
    }
    json_response(&jsonrpc::error(Some(id), &last))
}

async fn list_tools(state: &Env<'_>, caller: &Caller, live: &[Live], id: &Id) -> Response<Body> {
    let listed = match gather(&state.mcp.client, live, "tools/list", "tools").await {
        Ok(l) => l,
        Err(r) => return r(id),
    };
    let names = names(live);
    let rules = &caller.policy.rules;
    let mut shown = Vec::new();
    for (l, tools) in listed {
        for mut tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            if !rules.permits(&l.server.id, name) {
                continue;
            }
            let Some(full_name) = names.show(&l.server.prefix, l.index, name) else {
                tracing::warn!(server = %l.server.id, tool = name, "tool not shown: its name would collide with another server's");
                continue;
            };
            tool["name"] = Value::String(full_name);
            shown.push(tool);
        }
    }
    let mut result = json!({});
    if caller.policy.compact_schemas {
        let compacted: Vec<Value> = shown.iter().map(compact::tool).collect();
        let (before, after) = compact::reduction(&shown, &compacted);
        state
            .core
            .metrics
            .mcp_list_tokens
            .with_label_values(&["listed"])
            .inc_by(before);
        state
            .core
            .metrics
            .mcp_list_tokens
            .with_label_values(&["sent"])
            .inc_by(after);
        result["_meta"] =
            json!({"tollgate.dev/compaction": {"tokensBefore": before, "tokensAfter": after}});
        shown = compacted;
    }
    result["tools"] = Value::Array(shown);
    json_response(&jsonrpc::result(id, result))
}

async fn call_tool(
    state: &Env<'_>,
    caller: &Caller,
    live: &[Live],
    id: Id,
    params: Option<Value>,
    events: bool,
) -> Response<Body> {
    let mut params = params.unwrap_or(Value::Null);
    let Some(shown) = params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return json_response(&jsonrpc::error(
            Some(&id),
            &RpcError::new(jsonrpc::INVALID_PARAMS, "tools/call needs a tool name"),
        ));
    };
    let arguments = caller
        .policy
        .log_arguments
        .then(|| params.get("arguments").map(redact))
        .flatten();
    let mut audit = Audit {
        key: caller.key.clone(),
        server: String::new(),
        tool: clipped(&shown).to_owned(),
        arguments,
        start: Instant::now(),
        at_unix_ms: tollgate_proto::time::now_unix_ms(),
        metrics: state.core.metrics.clone(),
        sink: state.core.audit.clone(),
        span: state
            .core
            .telemetry
            .as_ref()
            .zip(state.trace.as_ref())
            .map(|(t, s)| super::spans::ToolSpan::child_of(t, s)),
    };
    let refuse = |audit: Audit, outcome: &str, code: i64, message: String| {
        audit.finish(outcome);
        json_response(&jsonrpc::error(Some(&id), &RpcError::new(code, message)))
    };
    let Some((l, tool)) = by_name(live, &params, "name") else {
        return refuse(
            audit,
            "unknown_tool",
            jsonrpc::INVALID_PARAMS,
            format!("Unknown tool: {}", clipped(&shown)),
        );
    };
    // Only a name the server listed, exactly as listed, is called: a server that
    // matches names loosely cannot be reached by a spelling the policy did not see, and
    // what the metrics and accounts name is the server's own list.
    if tool.len() > MAX_TOOL_NAME || !state.mcp.lists(l, &tool).await {
        // Counted like any tool no server has: without its (client-chosen) name, so
        // invented names cannot grow the metric.
        return refuse(
            audit,
            "unknown_tool",
            jsonrpc::INVALID_PARAMS,
            format!("Unknown tool: {}", clipped(&shown)),
        );
    }
    audit.server = l.server.id.clone();
    audit.tool = tool.clone();
    let rules = &caller.policy.rules;
    if !rules.permits(&l.server.id, &tool) {
        return refuse(
            audit,
            "denied",
            code::FORBIDDEN,
            format!("Tool {shown} is not permitted for this key"),
        );
    }
    if let Some(rule) = rules.limit(&l.server.id, &tool) {
        // Counted by the controller's ledger, like a key's rate limits: the limit holds
        // across every dataplane.
        let demand = Demand {
            account: Arc::from(format!("tool/{}/{}/{tool}", rule.origin, caller.key.id())),
            amount: Qty::requests(1),
        };
        let limit = rule.calls_per_minute;
        match state
            .core
            .quotas
            .reserve(&[demand], caller.key.attribution.clone())
            .await
        {
            // Counted once admitted, however the call ends.
            Ok(counted) => counted.record(
                &Arc::from("mcp"),
                &Arc::from(l.server.id.as_str()),
                &Arc::from(tool.as_str()),
                200,
                None,
                0,
            ),
            Err(quota::Refusal::Exhausted { .. }) => {
                return refuse(
                    audit,
                    "rate_limited",
                    code::RATE_LIMITED,
                    format!(
                        "Tool {shown} may be called {limit} times a minute by this key; retry later"
                    ),
                );
            }
            Err(quota::Refusal::Unavailable { .. }) => {
                return refuse(
                    audit,
                    "limit_unavailable",
                    code::RATE_LIMITED,
                    format!("The call limit of tool {shown} cannot be checked now; retry later"),
                );
            }
        }
    }
    params["name"] = Value::String(tool);
    relay(
        state,
        l,
        id,
        "tools/call",
        Some(params),
        events,
        Some(audit),
    )
    .await
}

/// At most [`MAX_TOOL_NAME`] bytes of a client's tool name, for errors and the audit log.
fn clipped(name: &str) -> &str {
    crate::base::clip(name, MAX_TOOL_NAME)
}

/// Sends a request to one server and answers the client as the server answers.
async fn relay(
    state: &Env<'_>,
    l: &Live,
    id: Id,
    method: &str,
    params: Option<Value>,
    events: bool,
    audit: Option<Audit>,
) -> Response<Body> {
    let message = jsonrpc::request(&id, method, params);
    let traceparent = audit
        .as_ref()
        .and_then(|a| a.span.as_ref())
        .map(super::spans::ToolSpan::traceparent);
    let to = Target {
        traceparent: traceparent.as_deref(),
        ..l.target()
    };
    let answered = match state.mcp.client.post(to, &message).await {
        Err(e) => Err(e),
        Ok((_, Reply::Events(body))) if events => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(32);
            let client = state.mcp.client.clone();
            tokio::spawn(pump(body, tx, id, l.clone(), client, audit));
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return r;
        }
        Ok((_, reply)) => reply.answer(&id, l.server.timeout).await,
    };
    match answered {
        Ok(outcome) => {
            if let Some(a) = audit {
                a.finish(outcome_of(&outcome));
            }
            json_response(&jsonrpc::response(&id, outcome))
        }
        Err(e) => {
            tracing::warn!(server = %l.server.id, method, error = %e, "MCP server failed");
            if let Some(a) = audit {
                a.finish("upstream_error");
            }
            upstream_error(&id, &l.server, &e)
        }
    }
}

fn outcome_of(outcome: &Result<Value, RpcError>) -> &'static str {
    match outcome {
        Ok(v) if v.get("isError").and_then(Value::as_bool) == Some(true) => "tool_error",
        Ok(_) => "ok",
        Err(_) => "error",
    }
}

/// Passes a server's event stream to the client: notifications as they come (a progress
/// notification restarts the server's timeout), requests with ids that lead back to the
/// server, and the response, which ends the stream. A client that goes away cancels
/// the request at the server.
async fn pump(
    mut events: Events,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    id: Id,
    live: Live,
    client: Client,
    audit: Option<Audit>,
) {
    let (index, server) = (live.index, &live.server);
    let mut deadline = tokio::time::Instant::now() + server.timeout;
    let send = |v: Value| {
        let tx = tx.clone();
        async move {
            let event = format!("event: message\ndata: {v}\n\n");
            tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_ok()
        }
    };
    let outcome: &str = loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, events.next()) => read,
            () = tx.closed() => break "client_gone",
        };
        let m = match read {
            Err(_) => break "timeout",
            Ok(Ok(None)) => break "cut",
            Ok(Ok(Some(m))) => m,
            // One event that is not JSON-RPC is skipped.
            Ok(Err(AnswerError::NotJsonRpc(_))) => continue,
            Ok(Err(_)) => break "cut",
        };
        let delivered = match m {
            Message::Response { id: got, outcome } if got == id => {
                let kind = outcome_of(&outcome);
                send(jsonrpc::response(&id, outcome)).await;
                if let Some(a) = audit {
                    a.finish(kind);
                }
                return;
            }
            Message::Response { .. } => true,
            Message::Notification { method, params } => {
                if method == "notifications/progress" {
                    deadline = tokio::time::Instant::now() + server.timeout;
                }
                send(jsonrpc::notification(&method, params)).await
            }
            Message::Request {
                id: asked,
                method,
                params,
            } => {
                send(jsonrpc::request(
                    &wrap_relayed(index, &asked),
                    &method,
                    params,
                ))
                .await
            }
        };
        if !delivered {
            break "client_gone";
        }
    };
    if outcome == "client_gone" {
        // Closing the stream is not a cancellation under Streamable HTTP: say it. (An
        // HTTP+SSE server's session ends with its stream, which cancels what it ran.)
        drop(events);
        let cancel = jsonrpc::notification(
            "notifications/cancelled",
            Some(json!({"requestId": id.to_value(), "reason": "the client went away"})),
        );
        if let Err(e) = client.post(live.target(), &cancel).await {
            tracing::debug!(server = %server.id, error = %e, "cancellation not delivered");
        }
        if let Some(a) = audit {
            a.finish("cancelled");
        }
        return;
    }
    tracing::warn!(server = %server.id, why = outcome, "MCP server's event stream ended without an answer");
    let e = RpcError::new(
        code::UPSTREAM,
        match outcome {
            "timeout" => format!(
                "MCP server {} did not answer within {:?}",
                server.id, server.timeout
            ),
            _ => format!("MCP server {} ended its answer early", server.id),
        },
    );
    send(jsonrpc::error(Some(&id), &e)).await;
    if let Some(a) = audit {
        a.finish("upstream_error");
    }
}

fn wrap_relayed(index: usize, id: &Id) -> Id {
    Id::Str(format!("{RELAYED_ID}{index}.{}", id.to_value()))
}

fn unwrap_relayed(id: &Id) -> Option<(usize, Id)> {
    let Id::Str(s) = id else { return None };
    let (index, original) = s.strip_prefix(RELAYED_ID)?.split_once('.')?;
    let original = match serde_json::from_str::<Value>(original).ok()? {
        Value::String(s) => Id::Str(s),
        Value::Number(n) => Id::Num(n.as_i64()?),
        _ => return None,
    };
    Some((index.parse().ok()?, original))
}

/// One tool call's audit event, written when the call ends.
struct Audit {
    key: Arc<VirtualKey>,
    server: String,
    tool: String,
    arguments: Option<Value>,
    start: Instant,
    at_unix_ms: i64,
    metrics: crate::base::metrics::Metrics,
    /// The audit sink; without one, the call is logged instead.
    sink: Option<Arc<crate::base::audit::Auditor>>,
    /// The call's span, when its request is traced.
    span: Option<super::spans::ToolSpan>,
}

fn nonempty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// One tool call's audit line.
#[derive(serde::Serialize)]
struct ToolCallRecord<'a> {
    time: String,
    kind: &'static str,
    request_id: String,
    /// The call's trace, when it is traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(flatten)]
    owner: Owner<'a>,
    server: Option<&'a str>,
    tool: &'a str,
    /// `ok`, `tool_error`, `denied`, `rate_limited`, `unknown_tool`, `upstream_error`, ...
    decision: &'a str,
    duration_ms: f64,
    /// Present only when the key's tool policy opts in (`logArguments`), redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a Value>,
}

impl Audit {
    fn finish(self, outcome: &str) {
        let elapsed = self.start.elapsed();
        let server = if self.server.is_empty() {
            "-"
        } else {
            self.server.as_str()
        };
        // A tool that no server has is counted without its (client-chosen) name.
        let tool = if self.server.is_empty() {
            "-"
        } else {
            self.tool.as_str()
        };
        self.metrics
            .mcp_tool_calls
            .with_label_values(&[server, tool, outcome])
            .inc();
        if !self.server.is_empty() && !matches!(outcome, "denied" | "rate_limited") {
            self.metrics
                .mcp_tool_duration
                .with_label_values(&[server])
                .observe(elapsed.as_secs_f64());
        }
        let trace_id = self.span.as_ref().map(super::spans::ToolSpan::trace_hex);
        if let Some(span) = self.span {
            span.end(&self.tool, &self.server, outcome);
        }
        let owner = &self.key.attribution;
        if let Some(sink) = &self.sink {
            sink.emit(&ToolCallRecord {
                time: tollgate_proto::time::format_rfc3339_ms(self.at_unix_ms),
                kind: "mcp_tool_call",
                request_id: format!("{:032x}", fastrand::u128(..)),
                trace_id,
                owner: Owner::new(&owner.key, &owner.team, &owner.customer, &owner.user),
                server: nonempty(&self.server),
                tool: &self.tool,
                decision: outcome,
                duration_ms: crate::base::audit::millis(elapsed),
                arguments: self.arguments.as_ref(),
            });
            return;
        }
        tracing::info!(
            target: "tollgate::audit",
            event = "mcp_tool_call",
            key = %self.key.id(),
            team = %owner.team,
            customer = %owner.customer,
            user = %owner.user,
            server,
            // Escaped: an unknown tool's name is the client's, control characters and all.
            tool = ?self.tool,
            outcome,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            arguments = %self.arguments.as_ref().map(|a| a.to_string()).unwrap_or_default(),
            "tool call"
        );
    }
}

/// Names of argument fields whose values are never logged.
const SECRET_NAMES: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
    "credential",
    "private_key",
    "cookie",
];

/// Arguments with secrets replaced: values of fields named like secrets, and strings
/// that look like bearer tokens or API keys.
fn redact(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase().replace('-', "_");
                    if SECRET_NAMES.iter().any(|s| lower.contains(s)) {
                        (k.clone(), Value::String("<redacted>".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s)
            if s.starts_with("Bearer ")
                || s.starts_with("Basic ")
                || s.starts_with("sk-")
                || s.starts_with("tg-") =>
        {
            Value::String("<redacted>".into())
        }
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_ids_lead_back_to_their_server_and_id() {
        for id in [Id::Num(7), Id::Str("a.b".into()), Id::Str("".into())] {
            let wrapped = wrap_relayed(3, &id);
            assert_eq!(unwrap_relayed(&wrapped), Some((3, id)));
        }
        assert_eq!(unwrap_relayed(&Id::Num(1)), None);
        assert_eq!(unwrap_relayed(&Id::Str("tg.x.1".into())), None);
        assert_eq!(unwrap_relayed(&Id::Str("other".into())), None);
    }

    #[test]
    fn secrets_in_arguments_are_redacted() {
        let args = json!({
            "account": "acme",
            "apiKey": "abc",
            "nested": {"db-password": "hunter2", "limit": 5},
            "headers": ["Bearer xyz", "plain"],
            "access_token": "t"
        });
        let r = redact(&args);
        let text = r.to_string();
        for secret in ["abc", "hunter2", "xyz", "\"t\""] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(r["account"], "acme");
        assert_eq!(r["nested"]["limit"], 5);
        assert_eq!(r["headers"][1], "plain");
    }
}
