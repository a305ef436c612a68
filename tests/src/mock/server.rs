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

use super::directives::{Directives, Failure, Refusal};
use super::{anthropic, bedrock, embeddings, gemini, openai, responses};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// mock-llm's settings.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Keys accepted; empty accepts any non-empty key.
    pub api_keys: Vec<String>,
    /// Models listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// Directives applied to every request (a request's own override them).
    pub defaults: Directives,
    /// AWS access keys (id, secret) accepted with SigV4 on the Bedrock endpoints.
    pub aws_keys: Vec<(String, String)>,
    /// A Google service account whose JWT assertions `POST /token` accepts.
    pub google_account: Option<GoogleAccount>,
}

/// The public half of a service-account key, to check token requests against.
#[derive(Clone, Debug)]
pub struct GoogleAccount {
    pub client_email: String,
    /// DER `RSAPublicKey`.
    pub public_key: Vec<u8>,
}

impl GoogleAccount {
    /// Reads a service-account key file (JSON with `client_email` and `private_key`).
    pub fn from_key_file(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text)?;
        let email = v["client_email"].as_str().unwrap_or("").to_string();
        let der =
            tollgate_dataplane::auth::google::pem_der(v["private_key"].as_str().unwrap_or(""))
                .ok_or_else(|| anyhow::anyhow!("private_key is not PEM"))?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("private_key: {e}"))?;
        Ok(Self {
            client_email: email,
            public_key: key.public().as_ref().to_vec(),
        })
    }
}

/// A fault set at run time (`PUT /mock/faults`): directives for the requests that match.
#[derive(Clone, Debug)]
struct Fault {
    /// The requested model; `None` matches any.
    model: Option<String>,
    /// The API key presented; `None` matches any.
    key: Option<String>,
    /// How many requests it applies to; `None`: all.
    times: Option<u64>,
    directives: Directives,
}

impl Fault {
    fn parse(v: &Value) -> Self {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Self {
            model: text("model"),
            key: text("key"),
            times: v.get("times").and_then(|x| x.as_u64()),
            directives: Directives::from_json(v),
        }
    }
}

/// The key a request presents, in any provider's header.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| {
        ["x-api-key", "api-key", "x-goog-api-key"]
            .iter()
            .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
    })
}

#[derive(Debug)]
pub(super) struct Shared {
    config: Config,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<VecDeque<Value>>,
    next_id: Mutex<u64>,
    /// Access tokens issued by `POST /token`.
    tokens: Mutex<Vec<String>>,
    /// Responses stored by the Responses API, by account.
    responses: Mutex<responses::Store>,
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

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(
        status,
        serde_json::to_vec(v).unwrap_or_default(),
        "application/json",
    )
}

pub(super) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<Body> {
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

    pub(super) fn record(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) {
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

    fn next(&self) -> u64 {
        let mut n = lock(&self.next_id);
        *n += 1;
        *n
    }

    fn id(&self) -> String {
        format!("chatcmpl-mock{:08}", self.next())
    }

    /// OpenAI's auth (`Authorization: Bearer`) or Azure's (`api-key`) on a request.
    pub(super) fn check_openai_key(
        &self,
        headers: &http::HeaderMap,
        azure: bool,
    ) -> Result<(), Box<Response<Body>>> {
        let presented = if azure {
            headers.get("api-key").and_then(|v| v.to_str().ok())
        } else {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        };
        self.check_key(presented, azure)
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

/// The error OpenAI would answer with, when the directives ask for one.
fn openai_failure(d: &Directives) -> Option<Response<Body>> {
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
        return Some(with_retry_after(r, d));
    }
    Some(match d.refuse? {
        Refusal::ContextWindow => error(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        Refusal::ContentPolicy => error(
            StatusCode::BAD_REQUEST,
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            Some("content_policy_violation"),
        ),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The account a request is made for: the key it presents (OpenAI's bearer, Azure's
/// `api-key`). Stored responses belong to it.
fn account(headers: &http::HeaderMap) -> String {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let azure = headers.get("api-key").and_then(|v| v.to_str().ok());
    bearer.or(azure).unwrap_or("").to_string()
}

/// `POST /v1/responses` (OpenAI) or `/openai/v1/responses` (Azure).
async fn create_response(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    azure: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    answer_create(shared, &parts.headers, body, azure).await
}

/// The answer to a Responses create request (`body`, sent with `headers`), whether it
/// came over HTTP or as a WebSocket frame.
pub(super) async fn answer_create(
    shared: Arc<Shared>,
    headers: &http::HeaderMap,
    body: Bytes,
    azure: bool,
) -> Result<Response<Body>, std::io::Error> {
    if let Err(response) = shared.check_openai_key(headers, azure) {
        return Ok(*response);
    }
    let r = match responses::parse(&body) {
        Ok(r) => r,
        Err(e) => return Ok(json_response(StatusCode::BAD_REQUEST, &e)),
    };
    let d = shared.directives(headers, &r.texts(), &r.model).await?;
    if let Some(failed) = openai_failure(&d) {
        return Ok(failed);
    }
    let account = account(headers);
    let history = match &r.previous_response_id {
        None => Vec::new(),
        Some(id) => match lock(&shared.responses).get(&account, id) {
            Some(stored) => stored.conversation.clone(),
            None => {
                let e = responses::previous_not_found(id);
                return Ok(json_response(StatusCode::BAD_REQUEST, &e));
            }
        },
    };
    let turn = responses::turn(&r, &history, d.chunks);
    let ids = responses::Ids::new(shared.next());
    let created = unix_now();
    let done = responses::response(&r, &turn, &ids, created, true);
    if r.store {
        let mut conversation = history;
        conversation.extend(r.input.iter().cloned());
        conversation.extend(done["output"].as_array().cloned().unwrap_or_default());
        let stored = responses::Stored {
            response: done.clone(),
            input_items: r.input.clone(),
            conversation,
        };
        lock(&shared.responses).put(&account, stored);
    }
    if !r.stream {
        if d.fail == Some(Failure::Cut) {
            let bytes = serde_json::to_vec(&done).unwrap_or_default();
            return Ok(cut_body(bytes[..bytes.len() / 2].to_vec(), bytes.len()));
        }
        return Ok(with_limits(json_response(StatusCode::OK, &done), &d));
    }
    let events = responses::stream_events(&r, &turn, &ids, created);
    Ok(with_limits(sse(events, &d), &d))
}

/// `GET` or `DELETE /v1/responses/{id}`, `GET .../input_items`, `POST .../cancel`, and
/// `POST /v1/responses/input_tokens`; `rest` is the path after `responses/`.
async fn stored_response(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    rest: &str,
) -> Result<Response<Body>, std::io::Error> {
    let azure = req.headers().contains_key("api-key");
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let (parts, body) = shared.read_and_record(req).await?;
    if let Err(response) = shared.check_openai_key(&parts.headers, azure) {
        return Ok(*response);
    }
    let account = account(&parts.headers);
    if (method.clone(), rest) == (Method::POST, "input_tokens") {
        return Ok(match responses::parse(&body) {
            Ok(r) => {
                let history = (r.previous_response_id.as_ref())
                    .and_then(|id| lock(&shared.responses).get(&account, id).cloned())
                    .map(|s| s.conversation)
                    .unwrap_or_default();
                let t = responses::turn(&r, &history, None);
                json_response(
                    StatusCode::OK,
                    &json!({"object": "response.input_tokens", "input_tokens": t.input_tokens}),
                )
            }
            Err(e) => json_response(StatusCode::BAD_REQUEST, &e),
        });
    }
    let (id, verb) = rest.split_once('/').unwrap_or((rest, ""));
    let mut store = lock(&shared.responses);
    let Some(stored) = store.get(&account, id).cloned() else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &responses::not_found(id),
        ));
    };
    Ok(match (method, verb) {
        (Method::GET, "") => json_response(StatusCode::OK, &stored.response),
        (Method::DELETE, "") => {
            store.delete(&account, id);
            json_response(
                StatusCode::OK,
                &json!({"id": id, "object": "response.deleted", "deleted": true}),
            )
        }
        (Method::GET, "input_items") => {
            let asc = query.contains("order=asc");
            json_response(StatusCode::OK, &responses::input_items_list(&stored, asc))
        }
        (Method::POST, "cancel") => error(
            StatusCode::BAD_REQUEST,
            "Only responses created with background=true can be cancelled.",
            "invalid_request_error",
            None,
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL (responses/{rest})"),
            "invalid_request_error",
            None,
        ),
    })
}

async fn chat(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    azure: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    if let Err(response) = shared.check_openai_key(&parts.headers, azure) {
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
    let d = shared
        .directives(&parts.headers, &chat.texts, &chat.model)
        .await?;
    if let Some(r) = openai_failure(&d) {
        return Ok(r);
    }
    let id = shared.id();
    let created = unix_now();
    let pieces = openai::answer_pieces(&chat, d.chunks);
    let mut chat = chat;
    if d.omit_usage {
        chat.include_usage = false;
    }
    if !chat.stream {
        let mut v = openai::completion(&chat, &id, created, &pieces);
        if d.omit_usage
            && let Some(o) = v.as_object_mut()
        {
            o.remove("usage");
        }
        if d.pad_bytes > 0
            && let Some(Value::String(content)) = v.pointer_mut("/choices/0/message/content")
        {
            content.push_str(&"x".repeat(d.pad_bytes));
        }
        if d.fail == Some(Failure::Cut) {
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            return Ok(cut_body(bytes[..bytes.len() / 2].to_vec(), bytes.len()));
        }
        return Ok(with_limits(json_response(StatusCode::OK, &v), &d));
    }
    Ok(with_limits(
        sse(openai::stream_events(&chat, &id, created, &pieces), &d),
        &d,
    ))
}

/// OpenAI's (or Azure's) embeddings.
async fn embed_openai(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    azure: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    if let Err(response) = shared.check_openai_key(&parts.headers, azure) {
        return Ok(*response);
    }
    Ok(match embeddings::openai(&body) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &e),
    })
}

/// Waits and fails as the request's directives say; returns them for the rest.
impl Shared {
    async fn directives(
        &self,
        headers: &http::HeaderMap,
        texts: &[String],
        model: &str,
    ) -> Result<Directives, std::io::Error> {
        let mut d = self.config.defaults.clone();
        {
            let mut faults = match self.faults.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let key = presented_key(headers);
            if let Some(f) = faults.iter_mut().find(|f| {
                f.times != Some(0)
                    && f.model.as_deref().is_none_or(|m| m == model)
                    && f.key.as_deref().is_none_or(|k| Some(k) == key)
            }) {
                if let Some(n) = f.times.as_mut() {
                    *n -= 1;
                }
                d = f.directives.clone();
            }
        }
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

/// The headers of OpenAI's answers: the account's organisation and project, the request
/// id, and the rate-limit headers, saying the key has no requests left when the
/// directives say so.
fn with_limits(mut r: Response<Body>, d: &Directives) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        "openai-organization",
        HeaderValue::from_static("org-mock-account"),
    );
    h.insert(
        "openai-project",
        HeaderValue::from_static("proj_mock_account"),
    );
    h.insert("x-request-id", HeaderValue::from_static("req_mock"));
    h.insert("x-ratelimit-limit-requests", HeaderValue::from(100));
    h.insert("x-ratelimit-remaining-requests", HeaderValue::from(99));
    if let Some(secs) = d.exhausted_for {
        h.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
        if let Ok(v) = HeaderValue::from_str(&format!("{secs}s")) {
            h.insert("x-ratelimit-reset-requests", v);
        }
    }
    r
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
    streamed(
        events.into_iter().map(Bytes::from).collect(),
        d,
        "text/event-stream; charset=utf-8",
    )
}

/// A streamed response of `events`, paced and cut as the directives say.
fn streamed(events: Vec<Bytes>, d: &Directives, content_type: &'static str) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let cut_at = (d.fail == Some(Failure::Cut)).then_some(events.len() / 2);
    let stall_at = (d.fail == Some(Failure::Stall)).then_some(events.len() / 2);
    let delay = d.chunk_delay;
    let first_token = d.first_token;
    tokio::spawn(async move {
        if !first_token.is_zero() {
            tokio::time::sleep(first_token).await;
        }
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
            if stall_at == Some(i) {
                // Silent, with the connection open, until the client goes away.
                tx.closed().await;
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Anthropic's `count_tokens`, or `count-tokens:rawPredict` on Vertex AI.
async fn count_messages(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    vertex: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let checked = if vertex {
        shared.check_token(&parts.headers)
    } else {
        check_anthropic_headers(&shared, &parts)
    };
    if let Err(r) = checked {
        return Ok(*r);
    }
    Ok(match embeddings::anthropic_count(&body) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &e),
    })
}

fn anthropic_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &anthropic::error_body(anthropic::error_type(status.as_u16()), message),
    )
}

/// Anthropic's auth and version headers.
fn check_anthropic_headers(
    shared: &Shared,
    parts: &http::request::Parts,
) -> Result<(), Box<Response<Body>>> {
    let a_error = |status, message: &str| Err(Box::new(anthropic_error(status, message)));
    match parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        None | Some("") => {
            return a_error(StatusCode::UNAUTHORIZED, "x-api-key header is required");
        }
        Some(key)
            if !shared.config.api_keys.is_empty()
                && !shared.config.api_keys.iter().any(|k| k == key) =>
        {
            return a_error(StatusCode::UNAUTHORIZED, "invalid x-api-key");
        }
        Some(_) => {}
    }
    if parts.headers.get("anthropic-version").is_none() {
        return a_error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    Ok(())
}

async fn messages(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    vertex: Option<(String, bool)>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let a_error = anthropic_error;
    if let Some((model, stream)) = vertex {
        // Claude on Vertex: OAuth bearer token, model in the URL, version in the body.
        if let Err(r) = shared.check_token(&parts.headers) {
            return Ok(*r);
        }
        let mut v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return Ok(a_error(StatusCode::BAD_REQUEST, "invalid JSON")),
        };
        if v.get("anthropic_version").and_then(Value::as_str) != Some("vertex-2023-10-16") {
            return Ok(a_error(
                StatusCode::BAD_REQUEST,
                "anthropic_version: Input should be 'vertex-2023-10-16'",
            ));
        }
        if v.get("model").is_some() {
            return Ok(a_error(
                StatusCode::BAD_REQUEST,
                "model: Extra inputs are not permitted",
            ));
        }
        v["model"] = json!(model);
        if stream != (v.get("stream") == Some(&Value::Bool(true))) {
            return Ok(a_error(
                StatusCode::BAD_REQUEST,
                "stream must match the method (streamRawPredict)",
            ));
        }
        return answer_messages(
            &shared,
            &parts,
            &serde_json::to_vec(&v).unwrap_or_default(),
            a_error,
        )
        .await;
    }
    if let Err(r) = check_anthropic_headers(&shared, &parts) {
        return Ok(*r);
    }
    answer_messages(&shared, &parts, &body, a_error).await
}

async fn answer_messages(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &[u8],
    a_error: impl Fn(StatusCode, &str) -> Response<Body>,
) -> Result<Response<Body>, std::io::Error> {
    let req = match anthropic::parse(body) {
        Ok(r) => r,
        Err(e) => return Ok(json_response(StatusCode::BAD_REQUEST, &e)),
    };
    let d = shared
        .directives(&parts.headers, &req.texts, &req.model)
        .await?;
    if let Some(status) = d.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        let r = a_error(status, &format!("mock-llm was asked to fail with {status}"));
        return Ok(with_retry_after(r, &d));
    }
    if d.refuse == Some(Refusal::ContextWindow) {
        return Ok(a_error(
            StatusCode::BAD_REQUEST,
            "prompt is too long: 210000 tokens > 200000 maximum",
        ));
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
        (Method::POST, "/v1/messages") => messages(shared, req, None).await,
        (Method::POST, "/v1/responses" | "/responses") => create_response(shared, req, false).await,
        (Method::GET, "/v1/responses" | "/responses") if super::responses_ws::is_upgrade(&req) => {
            Ok(super::responses_ws::upgrade(shared, req))
        }
        (Method::POST, "/openai/v1/responses") => create_response(shared, req, true).await,
        (_, p) if p.starts_with("/v1/responses/") || p.starts_with("/openai/v1/responses/") => {
            let rest = p.split("/responses/").nth(1).unwrap_or("").to_string();
            stored_response(shared, req, &rest).await
        }
        (Method::POST, "/v1/messages/count_tokens") => count_messages(shared, req, false).await,
        (Method::POST, "/v1/embeddings" | "/embeddings") => embed_openai(shared, req, false).await,
        (Method::POST, p)
            if p.starts_with("/openai/deployments/") && p.ends_with("/embeddings") =>
        {
            embed_openai(shared, req, true).await
        }
        (Method::POST, "/token") => token(shared, req).await,
        (Method::POST, p) if p.starts_with("/v1beta/models/") => {
            let (model, verb) = model_verb(&p["/v1beta/models/".len()..]);
            generate(shared, req, model, verb, false).await
        }
        (Method::POST, p)
            if p.starts_with("/v1/projects/") && p.contains("/publishers/google/models/") =>
        {
            let rest = p.split("/publishers/google/models/").nth(1).unwrap_or("");
            let (model, verb) = model_verb(rest);
            generate(shared, req, model, verb, true).await
        }
        (Method::POST, p)
            if p.starts_with("/v1/projects/") && p.contains("/publishers/anthropic/models/") =>
        {
            let rest = p
                .split("/publishers/anthropic/models/")
                .nth(1)
                .unwrap_or("");
            let (model, verb) = model_verb(rest);
            match verb.as_str() {
                "rawPredict" if model == "count-tokens" => count_messages(shared, req, true).await,
                "rawPredict" => messages(shared, req, Some((model, false))).await,
                "streamRawPredict" => messages(shared, req, Some((model, true))).await,
                _ => Ok(google_error(StatusCode::NOT_FOUND, "method not found")),
            }
        }
        (Method::POST, p) if p.starts_with("/model/") => converse(shared, req).await,
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
        (Method::PUT, "/mock/faults") => {
            let (_, body) = shared.read_and_record(req).await?;
            let rules: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
            let faults: Vec<Fault> = rules.iter().map(Fault::parse).collect();
            match shared.faults.lock() {
                Ok(mut g) => *g = faults,
                Err(p) => *p.into_inner() = faults,
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
        responses: Mutex::default(),
        faults: Mutex::new(Vec::new()),
        next_id: Mutex::new(0),
        tokens: Mutex::new(Vec::new()),
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
            let _ = builder.serve_connection_with_upgrades(io, service).await;
        });
    }
}

/// `<model>:<verb>` from the end of a path, the model percent-decoded.
fn model_verb(rest: &str) -> (String, String) {
    let (model, verb) = rest.rsplit_once(':').unwrap_or((rest, ""));
    (percent_decode(model), verb.to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn google_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &gemini::error_body(
            status.as_u16(),
            message,
            gemini::status_name(status.as_u16()),
        ),
    )
}

impl Shared {
    /// Vertex AI's auth: a bearer token issued by `POST /token`.
    fn check_token(&self, headers: &http::HeaderMap) -> Result<(), Box<Response<Body>>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let tokens = match self.tokens.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match token {
            Some(t) if tokens.iter().any(|k| k == t) => Ok(()),
            _ => Err(Box::new(google_error(
                StatusCode::UNAUTHORIZED,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ))),
        }
    }

    /// The Gemini API's auth: `x-goog-api-key` or `?key=`.
    fn check_google_key(&self, parts: &http::request::Parts) -> Result<(), Box<Response<Body>>> {
        let key = parts
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                parts.uri.query().and_then(|q| {
                    q.split('&')
                        .find_map(|p| p.strip_prefix("key=").map(str::to_string))
                })
            });
        match key {
            None => Err(Box::new(google_error(
                StatusCode::FORBIDDEN,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            ))),
            Some(k) if !self.config.api_keys.is_empty() && !self.config.api_keys.contains(&k) => {
                Err(Box::new(google_error(
                    StatusCode::BAD_REQUEST,
                    "API key not valid. Please pass a valid API key.",
                )))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The OAuth token endpoint: the JWT-bearer grant, with the assertion's RS256 signature,
/// issuer, audience and expiry checked against the configured service account.
async fn token(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (parts, body) = shared.read_and_record(req).await?;
    let oauth_error = |error: &str, description: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": error, "error_description": description}),
        )
    };
    let form = String::from_utf8_lossy(&body).into_owned();
    let field = |name: &str| {
        form.split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(percent_decode)
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Ok(oauth_error("unsupported_grant_type", "Invalid grant_type"));
    }
    let Some(account) = shared.config.google_account.as_ref() else {
        return Ok(oauth_error(
            "invalid_grant",
            "no service account is configured",
        ));
    };
    let assertion = field("assertion").unwrap_or_default();
    let pieces: Vec<&str> = assertion.split('.').collect();
    let [head, claims, signature] = pieces.as_slice() else {
        return Ok(oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        ));
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &account.public_key,
    );
    if key
        .verify(format!("{head}.{claims}").as_bytes(), &signature)
        .is_err()
    {
        return Ok(oauth_error("invalid_grant", "Invalid JWT Signature."));
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let now = unix_now() as i64;
    let expected_aud = format!(
        "http://{}/token",
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    );
    if claims["iss"].as_str() != Some(account.client_email.as_str())
        || claims["aud"].as_str() != Some(expected_aud.as_str())
        || claims["scope"].as_str().is_none()
        || claims["exp"]
            .as_i64()
            .is_none_or(|exp| exp < now || exp > now + 3700)
    {
        return Ok(oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        ));
    }
    let token = format!(
        "ya29.mock-{}",
        shared.id().trim_start_matches("chatcmpl-mock")
    );
    match shared.tokens.lock() {
        Ok(mut g) => g.push(token.clone()),
        Err(p) => p.into_inner().push(token.clone()),
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
    ))
}

/// Gemini `generateContent` / `streamGenerateContent` (the Gemini API, or Vertex AI).
async fn generate(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    model: String,
    verb: String,
    vertex: bool,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let checked = if vertex {
        shared.check_token(&parts.headers)
    } else {
        shared.check_google_key(&parts)
    };
    if let Err(r) = checked {
        return Ok(*r);
    }
    let reply = |r: Result<Value, Value>| match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &e),
    };
    let stream = match verb.as_str() {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "countTokens" => return Ok(reply(embeddings::gemini_count(&body, &model, vertex))),
        "batchEmbedContents" if !vertex => {
            return Ok(reply(embeddings::gemini_batch(&body, &model)));
        }
        "predict" if vertex => return Ok(reply(embeddings::vertex_predict(&body))),
        _ => {
            return Ok(google_error(
                StatusCode::NOT_FOUND,
                &format!("Method {verb} not found"),
            ));
        }
    };
    let g = match gemini::parse(&body, &model) {
        Ok(g) => g,
        Err(e) => return Ok(json_response(StatusCode::BAD_REQUEST, &e)),
    };
    let d = shared.directives(&parts.headers, &g.texts, &model).await?;
    if let Some(status) = d.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        return Ok(with_retry_after(
            google_error(status, &format!("mock-llm was asked to fail with {status}")),
            &d,
        ));
    }
    let id = shared.id().replace("chatcmpl-mock", "resp");
    let (pieces, finish) = gemini::pieces(&g, d.chunks);
    if !stream {
        return Ok(json_response(
            StatusCode::OK,
            &gemini::response(&g, &id, &pieces, finish),
        ));
    }
    let events = gemini::stream_events(&g, &id, &pieces, finish);
    if parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|p| p == "alt=sse")
    {
        return Ok(sse(events, &d));
    }
    // Without alt=sse the API streams one JSON array.
    let items: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e.trim().trim_start_matches("data: ")).ok())
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(items)))
}

fn aws_error(e: &bedrock::AwsError) -> Response<Body> {
    let mut r = json_response(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &e.body(),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        e.kind
    )) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// Bedrock Converse and ConverseStream: `/model/{modelId}/converse[-stream]`.
async fn converse(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = shared.read_and_record(req).await?;
    let path = parts.uri.path()["/model/".len()..].to_string();
    let Some((model, verb)) = path.rsplit_once('/') else {
        return Ok(aws_error(&bedrock::AwsError {
            status: 404,
            kind: "UnknownOperationException",
            message: "unknown operation".into(),
        }));
    };
    let stream = match verb {
        "converse" => false,
        "converse-stream" => true,
        "invoke" | "count-tokens" => false,
        _ => {
            return Ok(aws_error(&bedrock::AwsError {
                status: 404,
                kind: "UnknownOperationException",
                message: "unknown operation".into(),
            }));
        }
    };
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match bearer {
        // Bedrock API keys.
        Some(key) => {
            if shared.config.api_keys.is_empty() || shared.config.api_keys.iter().any(|k| k == key)
            {
                Ok(())
            } else {
                Err(bedrock::AwsError {
                    status: 403,
                    kind: "UnrecognizedClientException",
                    message: "The security token included in the request is invalid.".into(),
                })
            }
        }
        None => bedrock::check_signature(
            "POST",
            &parts.uri,
            &parts.headers,
            &body,
            &shared.config.aws_keys,
        ),
    };
    if let Err(e) = authorized {
        return Ok(aws_error(&e));
    }
    let reply = |r: Result<Value, bedrock::AwsError>| match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => aws_error(&e),
    };
    match verb {
        "invoke" => {
            let answer = embeddings::bedrock_invoke(&body, &percent_decode(model));
            let tokens = embeddings::bedrock_input_tokens(&body);
            let mut r = reply(answer);
            if r.status().is_success() {
                // InvokeModel reports usage in headers.
                r.headers_mut().insert(
                    "x-amzn-bedrock-input-token-count",
                    HeaderValue::from(tokens),
                );
            }
            return Ok(r);
        }
        "count-tokens" => {
            return Ok(reply(embeddings::bedrock_count(
                &body,
                &percent_decode(model),
            )));
        }
        _ => {}
    }
    let c = match bedrock::parse(&body, &percent_decode(model)) {
        Ok(c) => c,
        Err(e) => return Ok(aws_error(&e)),
    };
    let d = shared
        .directives(&parts.headers, &c.texts, &c.model)
        .await?;
    if let Some(status) = d.status {
        let kind = match status {
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            400..=499 => "ValidationException",
            _ => "InternalServerException",
        };
        let r = aws_error(&bedrock::AwsError {
            status,
            kind,
            message: format!("mock-llm was asked to fail with {status}"),
        });
        return Ok(with_retry_after(r, &d));
    }
    let (pieces, stop) = bedrock::pieces(&c, d.chunks);
    if stream {
        return Ok(streamed(
            bedrock::stream_frames(&c, &pieces, stop),
            &d,
            "application/vnd.amazon.eventstream",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &bedrock::response(&c, &pieces, stop),
    ))
}
