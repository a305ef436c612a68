//! mock-llm's HTTP server: routes by path, checks auth, applies directives, records
//! requests for tests to inspect (`GET /mock/requests`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::directives::{Directives, Failure};
use super::{anthropic, openai};

type Body = BoxBody<Bytes, std::io::Error>;

/// mock-llm's settings.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Keys accepted; empty accepts any non-empty key.
    pub api_keys: Vec<String>,
    /// Models listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// Directives applied to every request (a request's own override them).
    pub defaults: Directives,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    requests: Mutex<VecDeque<Value>>,
    next_id: Mutex<u64>,
}

const RECORDED: usize = 10_000;

fn full(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(
        status,
        serde_json::to_vec(v).unwrap_or_default(),
        "application/json",
    )
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response<Body> {
    json_response(status, &openai::error_body(message, kind, None, code))
}

fn mask(key: &str) -> String {
    let n = key.chars().count();
    if n <= 8 {
        "****".into()
    } else {
        let head: String = key.chars().take(3).collect();
        let tail: String = key.chars().skip(n - 4).collect();
        format!("{head}***{tail}")
    }
}

impl Shared {
    /// The whole request, recorded for `GET /mock/requests`.
    async fn read_and_record(
        &self,
        req: Request<Incoming>,
    ) -> Result<(http::request::Parts, Bytes), std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        self.record(&parts.method, &parts.uri, &parts.headers, &body);
        Ok((parts, body))
    }

    fn record(&self, method: &Method, uri: &http::Uri, headers: &http::HeaderMap, body: &[u8]) {
        let header_map: serde_json::Map<String, Value> = headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_string(),
                    Value::String(v.to_str().ok()?.to_string()),
                ))
            })
            .collect();
        let body = serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let mut requests = match self.requests.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if requests.len() == RECORDED {
            requests.pop_front();
        }
        requests.push_back(json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "headers": header_map,
            "body": body,
        }));
    }

    fn id(&self) -> String {
        let mut n = match self.next_id.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *n += 1;
        format!("chatcmpl-mock{n:08}")
    }

    /// OpenAI's auth: `Authorization: Bearer`; Azure's: `api-key`.
    fn check_key(&self, presented: Option<&str>, azure: bool) -> Result<(), Box<Response<Body>>> {
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            let message = if azure {
                "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."
            } else {
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            };
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                message,
                "invalid_request_error",
                None,
            )));
        };
        if !self.config.api_keys.is_empty() && !self.config.api_keys.iter().any(|k| k == key) {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                &format!("Incorrect API key provided: {}.", mask(key)),
                "invalid_request_error",
                Some("invalid_api_key"),
            )));
        }
        Ok(())
    }
}

async fn chat(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    azure: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let presented = if azure {
        parts.headers.get("api-key").and_then(|v| v.to_str().ok())
    } else {
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    };
    if let Err(response) = shared.check_key(presented, azure) {
        return Ok(*response);
    }
    if azure && !parts.uri.query().unwrap_or("").contains("api-version=") {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "Resource not found",
            "invalid_request_error",
            Some("404"),
        ));
    }
    let chat = match openai::parse(&body) {
        Ok(c) => c,
        Err(e) => return Ok(json_response(StatusCode::BAD_REQUEST, &e)),
    };
    let d = shared.directives(&parts.headers, &chat.texts).await?;
    if let Some(status) = d.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        let (kind, code) = match status.as_u16() {
            429 => ("requests", Some("rate_limit_exceeded")),
            400..=499 => ("invalid_request_error", None),
            _ => ("server_error", None),
        };
        let r = error(
            status,
            &format!("mock-llm was asked to fail with {status}"),
            kind,
            code,
        );
        return Ok(with_retry_after(r, &d));
    }
    let id = shared.id();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let pieces = openai::answer_pieces(&chat, d.chunks);
    if !chat.stream {
        let v = openai::completion(&chat, &id, created, &pieces);
        if d.fail == Some(Failure::Cut) {
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            return Ok(cut_body(bytes[..bytes.len() / 2].to_vec(), bytes.len()));
        }
        return Ok(json_response(StatusCode::OK, &v));
    }
    Ok(sse(openai::stream_events(&chat, &id, created, &pieces), &d))
}

/// Waits and fails as the request's directives say; returns them for the rest.
impl Shared {
    async fn directives(
        &self,
        headers: &http::HeaderMap,
        texts: &[String],
    ) -> Result<Directives, std::io::Error> {
        let mut d = self.config.defaults.clone();
        let from_headers = Directives::from_headers(headers);
        if from_headers != Directives::default() {
            d = from_headers;
        }
        for text in texts {
            d.apply_tags(text);
        }
        if !d.latency.is_zero() {
            tokio::time::sleep(d.latency).await;
        }
        if d.fail == Some(Failure::Reset) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock reset",
            ));
        }
        Ok(d)
    }
}

fn with_retry_after(mut r: Response<Body>, d: &Directives) -> Response<Body> {
    if let Some(secs) = d.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// A server-sent-events response, paced and cut as the directives say.
fn sse(events: Vec<String>, d: &Directives) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let cut_at = (d.fail == Some(Failure::Cut)).then_some(events.len() / 2);
    let delay = d.chunk_delay;
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if cut_at == Some(i) {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "mock cut",
                    )))
                    .await;
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn messages(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let a_error = |status: StatusCode, message: &str| {
        json_response(
            status,
            &anthropic::error_body(anthropic::error_type(status.as_u16()), message),
        )
    };
    match parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        None | Some("") => {
            return Ok(a_error(
                StatusCode::UNAUTHORIZED,
                "x-api-key header is required",
            ));
        }
        Some(key)
            if !shared.config.api_keys.is_empty()
                && !shared.config.api_keys.iter().any(|k| k == key) =>
        {
            return Ok(a_error(StatusCode::UNAUTHORIZED, "invalid x-api-key"));
        }
        Some(_) => {}
    }
    if parts.headers.get("anthropic-version").is_none() {
        return Ok(a_error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        ));
    }
    let req = match anthropic::parse(&body) {
        Ok(r) => r,
        Err(e) => return Ok(json_response(StatusCode::BAD_REQUEST, &e)),
    };
    let d = shared.directives(&parts.headers, &req.texts).await?;
    if let Some(status) = d.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        let r = a_error(status, &format!("mock-llm was asked to fail with {status}"));
        return Ok(with_retry_after(r, &d));
    }
    let id = shared.id().replace("chatcmpl-", "msg_");
    let (pieces, stop) = anthropic::pieces(&req, d.chunks);
    if req.stream {
        return Ok(sse(anthropic::stream_events(&req, &id, &pieces, stop), &d));
    }
    Ok(json_response(
        StatusCode::OK,
        &anthropic::message(&req, &id, &pieces, stop),
    ))
}

/// A body that promises `declared` bytes, sends `sent`, then breaks.
fn cut_body(sent: Vec<u8>, declared: usize) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from(sent)))).await;
        let _ = tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "mock cut",
            )))
            .await;
    });
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&declared.to_string()) {
        r.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    r
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/chat/completions" | "/chat/completions") => {
            chat(shared, req, false).await
        }
        (Method::POST, "/v1/messages") => messages(shared, req).await,
        (Method::POST, p)
            if p.starts_with("/openai/deployments/") && p.ends_with("/chat/completions") =>
        {
            chat(shared, req, true).await
        }
        (Method::GET, "/v1/models" | "/models") => {
            let data: Vec<Value> = shared
                .config
                .models
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock-llm"}))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        (Method::GET, "/mock/requests") => {
            let requests = match shared.requests.lock() {
                Ok(g) => g.iter().cloned().collect::<Vec<_>>(),
                Err(p) => p.into_inner().iter().cloned().collect(),
            };
            Ok(json_response(StatusCode::OK, &Value::Array(requests)))
        }
        (Method::DELETE, "/mock/requests") => {
            match shared.requests.lock() {
                Ok(mut g) => g.clear(),
                Err(p) => p.into_inner().clear(),
            }
            Ok(full(StatusCode::NO_CONTENT, Bytes::new(), "text/plain"))
        }
        (Method::GET, "/healthz") => Ok(full(StatusCode::OK, "ok\n", "text/plain")),
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {path})", req.method()),
            "invalid_request_error",
            None,
        )),
    }
}

/// Serves until the process ends.
pub async fn serve(config: Config, listener: TcpListener) {
    let shared = Arc::new(Shared {
        config,
        requests: Mutex::new(VecDeque::new()),
        next_id: Mutex::new(0),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder.serve_connection(io, service).await;
        });
    }
}
