//! The Responses API's WebSocket mode, as the OpenAI Agents SDK and Codex use it: `GET
//! /v1/responses` upgraded, then `response.create` frames in (a create request's fields,
//! streamed), and each answer's events out as text frames, in order, one answer at a
//! time on a connection. Every frame is one `POST /v1/responses` on the same pipeline as
//! HTTP (key, route, budgets, sessions, metering, sealed ids, follow-ups), authenticated
//! with the headers of the upgrade request. The connection keeps its place under the
//! listener's connection cap while it lives; when the listener drains, an answer in
//! progress is finished and the connection is closed with 1001 (going away).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::pipeline::State;

/// A connection with no frame from the client for this long is closed: an upgraded
/// connection has left the listener's own limits, and an agent's tool runs between its
/// turns are far shorter.
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// What each frame's request carries from the upgrade request: its headers (below) and
/// the client's address, so that every turn is recorded as an HTTP request is.
#[derive(Clone, Debug)]
struct Origin {
    headers: HeaderMap,
    peer: Option<crate::base::server::ClientAddress>,
}

/// Request headers an answer's request carries from the upgrade (the key, the agent
/// session, trace context, ids).
fn carried(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in from {
        let keep = !matches!(
            name.as_str(),
            "connection"
                | "upgrade"
                | "host"
                | "content-length"
                | "transfer-encoding"
                | "sec-websocket-key"
                | "sec-websocket-version"
                | "sec-websocket-extensions"
                | "sec-websocket-protocol"
        );
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// Whether `req` asks to become a WebSocket.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// `GET /v1/responses` with an upgrade: the key is checked first (a refused key gets its
/// 401 before any upgrade), then the connection becomes a WebSocket served by its own
/// task.
pub async fn handle(state: &Arc<State>, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    let snapshot = state.config.load_full();
    if let Err(e) = crate::pipeline::authenticate(&snapshot, req.headers()) {
        return e.to_response_for(Api::Responses);
    }
    drop(snapshot);
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| version_ok) else {
        return ApiError::BadRequest(
            "A WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13.".into(),
        )
        .to_response_for(Api::Responses);
    };
    let origin = Origin {
        headers: carried(req.headers()),
        peer: req
            .extensions()
            .get::<crate::base::server::ClientAddress>()
            .copied(),
    };
    // A frame is a request body: no larger than one may be.
    let most = Some(state.bodies.max_bytes);
    let config = WebSocketConfig::default()
        .max_message_size(most)
        .max_frame_size(most);
    // The connection keeps its place under the listener's cap while it is a WebSocket,
    // and closes when the listener drains.
    let slot = req
        .extensions()
        .get::<crate::base::server::ConnectionSlot>()
        .and_then(crate::base::server::ConnectionSlot::take);
    let draining = req
        .extensions()
        .get::<crate::base::server::Draining>()
        .map(|d| d.0.clone());
    let upgrade = hyper::upgrade::on(&mut req);
    let state = state.clone();
    tokio::spawn(async move {
        let _slot = slot;
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                serve(&state, ws, origin, draining).await;
            }
            Err(e) => tracing::debug!(error = %e, "responses websocket upgrade failed"),
        }
    });
    let mut out = Response::new(crate::base::full(Bytes::new()));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = out.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    out
}

/// An error event in the Responses API's shape.
fn error_event(status: u16, error: &serde_json::Value) -> String {
    serde_json::json!({"type": "error", "status": status, "error": error}).to_string()
}

/// Resolves when the listener drains (never, without a signal).
async fn drained(draining: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match draining {
        Some(d) => {
            if d.wait_for(|on| *on).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn serve<S>(
    state: &Arc<State>,
    mut ws: WebSocketStream<S>,
    origin: Origin,
    mut draining: Option<tokio::sync::watch::Receiver<bool>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut closing = None;
    loop {
        // An answer in progress is finished first; the next frame waits for none.
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE, ws.next()) => next,
            () = drained(&mut draining) => {
                closing = Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "the gateway is shutting down; reconnect".into(),
                });
                break;
            }
        };
        let Ok(Some(message)) = next else {
            break;
        };
        let text = match message {
            Ok(Message::Text(t)) => t,
            Err(tokio_tungstenite::tungstenite::Error::Capacity(_)) => {
                closing = Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: "a frame is no larger than a request body may be".into(),
                });
                break;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let frame = match serde_json::from_str::<serde_json::Value>(text.as_str()) {
            Ok(serde_json::Value::Object(mut o))
                if o.get("type").and_then(|t| t.as_str()) == Some("response.create") =>
            {
                o.remove("type");
                o.insert("stream".into(), serde_json::Value::Bool(true));
                o
            }
            _ => {
                let error = serde_json::json!({"type": "invalid_request_error", "code": "unknown_event",
                    "message": "Each message must be a JSON object of type `response.create`."});
                if ws
                    .send(Message::text(error_event(400, &error)))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let body = serde_json::to_vec(&frame).unwrap_or_default();
        if !answer(state, &mut ws, &origin, body).await {
            break;
        }
    }
    let _ = ws.close(closing).await;
}

/// One `response.create`: its events to the client; false once the client is gone.
async fn answer<S>(
    state: &Arc<State>,
    ws: &mut WebSocketStream<S>,
    origin: &Origin,
    body: Vec<u8>,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = Request::post("/v1/responses")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default();
    *req.headers_mut() = origin.headers.clone();
    if let Some(peer) = origin.peer {
        req.extensions_mut().insert(peer);
    }
    let response = super::chat::handle(state, req, Api::Responses).await;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return ws
            .send(Message::text(error_event(status.as_u16(), &v["error"])))
            .await
            .is_ok();
    }
    let mut events = crate::base::sse::Parser::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for event in events.feed(&data).unwrap_or_default() {
            if event.data.is_empty() {
                continue;
            }
            if ws.send(Message::text(event.data)).await.is_err() {
                return false;
            }
        }
    }
    true
}
