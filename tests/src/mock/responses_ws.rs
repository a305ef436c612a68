//! The Responses API's WebSocket mode, as mock-llm speaks it: `GET /v1/responses` upgraded
//! (the key checked first, as for HTTP), then one `response.create` text frame per turn
//! (the fields of a create request; always streamed), answered with the same events a
//! streamed `POST /v1/responses` gives, one text frame each, in order. An error is one
//! `{"type": "error", "status", "error"}` frame; the connection stays open.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::server::{Body, Shared};

/// A request to upgrade to a WebSocket (the test the gateway makes).
pub(super) use tollgate_dataplane::proxy::responses_ws::is_upgrade;

/// The upgrade's answer; the connection is then served by its own task.
pub(super) fn upgrade(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    if let Err(refused) = shared.check_openai_key(req.headers(), false) {
        return *refused;
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return super::server::error(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is required",
            "invalid_request_error",
            None,
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let headers = req.headers().clone();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        serve(shared, headers, ws).await;
    });
    let mut r = super::server::json_response(StatusCode::SWITCHING_PROTOCOLS, &Value::Null);
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

fn error_frame(status: u16, error: Value) -> Message {
    Message::text(json!({"type": "error", "status": status, "error": error}).to_string())
}

async fn serve<S>(shared: Arc<Shared>, headers: http::HeaderMap, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(message)) = rx.next().await {
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let frames = turn(&shared, &headers, text.as_str()).await;
        for frame in frames {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    }
}

/// The frames that answer one `response.create` frame.
async fn turn(shared: &Arc<Shared>, headers: &http::HeaderMap, text: &str) -> Vec<Message> {
    let invalid = |message: &str| {
        vec![error_frame(
            400,
            json!({"type": "invalid_request_error", "message": message, "param": null, "code": null}),
        )]
    };
    let Ok(Value::Object(mut create)) = serde_json::from_str::<Value>(text) else {
        return invalid("A frame must be a JSON object.");
    };
    if create.remove("type").as_ref().and_then(Value::as_str) != Some("response.create") {
        return invalid("Only response.create frames are accepted.");
    }
    create.insert("stream".into(), Value::Bool(true));
    let body = Bytes::from(serde_json::to_vec(&create).unwrap_or_default());
    let uri: http::Uri = "/v1/responses".parse().unwrap_or_default();
    shared.record(&Method::POST, &uri, headers, &body);
    let answer = match super::server::answer_create(shared.clone(), headers, body, false).await {
        Ok(a) => a,
        Err(e) => return invalid(&e.to_string()),
    };
    let status = answer.status().as_u16();
    let Ok(collected) = answer.into_body().collect().await else {
        return vec![error_frame(
            500,
            json!({"type": "server_error", "message": "the answer broke"}),
        )];
    };
    let bytes = collected.to_bytes();
    if status != 200 {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return vec![error_frame(status, v.get("error").cloned().unwrap_or(v))];
    }
    String::from_utf8_lossy(&bytes)
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| Message::text(data.to_string()))
        .collect()
}
