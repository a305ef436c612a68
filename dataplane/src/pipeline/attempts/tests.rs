//! The attempt engine against a fake provider: no sockets, paused time. Each test gives
//! the fake a script of answers and checks what the client got and which requests the
//! providers saw, when.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tollgate_proto::resource::Body as Resource;
use tollgate_proto::{self as pb, DeltaConfigResponse, type_url};

use crate::base::metrics::Metrics;
use crate::base::{Api, Body, BoxError};
use crate::config::model::Provider;
use crate::config::store::{Store, resource};
use crate::metering::quota::Quotas;
use crate::pipeline::admission::WorstCase;
use crate::pipeline::attempt::Operation;
use crate::pipeline::record::Labels;
use crate::pipeline::{State, TranslationLimits, Transport, Upstreaming};

const KEY: &str = "sk-attempt-engine";

/// What the fake provider does with one request.
enum Reply {
    /// No connection.
    Unreachable,
    /// The status and headers after `wait`, then each frame after its delay; `cut`: the
    /// stream breaks after the last frame instead of ending.
    Answer {
        wait: Duration,
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        frames: Vec<(Duration, String)>,
        cut: bool,
    },
}

fn answer(status: u16, body: &str) -> Reply {
    Reply::Answer {
        wait: Duration::ZERO,
        status,
        headers: vec![("content-type", "application/json")],
        frames: vec![(Duration::ZERO, body.to_string())],
        cut: false,
    }
}

fn with_headers(status: u16, headers: Vec<(&'static str, &'static str)>) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend(headers);
    Reply::Answer {
        wait: Duration::ZERO,
        status,
        headers: all,
        frames: vec![(Duration::ZERO, r#"{"error":{"message":"no"}}"#.to_string())],
        cut: false,
    }
}

fn completion(text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
    .to_string()
}

fn chunk(id: &str, delta: serde_json::Value, finish: Option<&str>) -> String {
    let c = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

/// A streamed answer: an opening chunk, one chunk per word (each `every` after the one
/// before), then the end, unless `cut`.
fn stream(id: &str, words: &[&str], first: Duration, every: Duration, cut: bool) -> Reply {
    let mut frames = vec![(
        first,
        chunk(
            id,
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ),
    )];
    for w in words {
        frames.push((every, chunk(id, serde_json::json!({"content": w}), None)));
    }
    if !cut {
        frames.push((every, chunk(id, serde_json::json!({}), Some("stop"))));
        frames.push((Duration::ZERO, "data: [DONE]\n\n".to_string()));
    }
    Reply::Answer {
        wait: Duration::ZERO,
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        frames,
        cut,
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Call {
    at: Duration,
    host: String,
    authorization: String,
    body: serde_json::Value,
}

struct Fake {
    start: Instant,
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<Call>>,
    /// Requests whose answer has not come yet, and the most there ever were at once.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    most_waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Fake {
    fn new(script: Vec<Reply>) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
            waiting: Arc::default(),
            most_waiting: Arc::default(),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Transport for Fake {
    fn send(&self, _provider: &Provider, request: Request<Full<Bytes>>) -> Upstreaming {
        let (parts, body) = request.into_parts();
        let reply = self.script.lock().unwrap().pop_front();
        let calls = &self.calls;
        let at = self.start.elapsed();
        Box::pin({
            let body = body;
            let host = parts.uri.host().unwrap_or("").to_string();
            let authorization = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let sent = futures_util::FutureExt::now_or_never(body.collect())
                .and_then(Result::ok)
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            calls.lock().unwrap().push(Call {
                at,
                host,
                authorization,
                body: serde_json::from_slice(&sent).unwrap_or_default(),
            });
            let (waiting, most) = (self.waiting.clone(), self.most_waiting.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                most.fetch_max(waiting.fetch_add(1, SeqCst) + 1, SeqCst);
                let reply = match reply {
                    Some(Reply::Answer { wait, .. }) => {
                        tokio::time::sleep(wait).await;
                        reply
                    }
                    other => other,
                };
                waiting.fetch_sub(1, SeqCst);
                let Some(Reply::Answer {
                    wait,
                    status,
                    headers,
                    frames,
                    cut,
                }) = reply
                else {
                    return Err(BoxError::from("connection refused"));
                };
                let _ = wait;
                let frames = futures_util::stream::unfold(
                    (frames.into_iter(), cut),
                    |(mut rest, cut)| async move {
                        match rest.next() {
                            Some((delay, text)) => {
                                tokio::time::sleep(delay).await;
                                Some((Ok(Frame::data(Bytes::from(text))), (rest, cut)))
                            }
                            None if cut => {
                                Some((Err(BoxError::from("connection reset")), (rest, false)))
                            }
                            None => None,
                        }
                    },
                );
                let mut response = Response::new(StreamBody::new(frames).boxed());
                *response.status_mut() = http::StatusCode::from_u16(status)?;
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(name, http::HeaderValue::from_static(value));
                }
                Ok(response)
            }
        })
    }
}

fn provider(name: &str, keys: &[&str]) -> pb::Resource {
    provider_of(name, pb::ProviderType::Openai, keys)
}

fn provider_of(name: &str, kind: pb::ProviderType, keys: &[&str]) -> pb::Resource {
    resource(
        &format!("default/{name}"),
        "1",
        Resource::Provider(pb::Provider {
            namespace: "default".into(),
            name: name.into(),
            r#type: kind as i32,
            region: "us-east-1".into(),
            endpoint: format!("http://{name}.test/v1"),
            credentials: keys
                .iter()
                .map(|k| pb::Credential {
                    id: (*k).into(),
                    api_key: (*k).into(),
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    )
}

/// A route for `claude-sonnet-4-5` on Anthropic provider `x`, falling back to `y`.
fn claude_route() -> pb::Resource {
    resource(
        "default/claude",
        "1",
        Resource::Route(pb::Route {
            namespace: "default".into(),
            name: "claude".into(),
            models: vec!["claude-sonnet-4-5".into()],
            targets: vec![pb::Target {
                provider: "x".into(),
                weight: 1,
                ..Default::default()
            }],
            fallbacks: vec![pb::Fallback {
                provider: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

/// A route for `gpt-4o` on provider `a`, falling back to `b` then `c`.
fn route(edit: impl FnOnce(&mut pb::Route)) -> pb::Resource {
    let mut r = pb::Route {
        namespace: "default".into(),
        name: "r".into(),
        models: vec!["gpt-4o".into()],
        targets: vec![pb::Target {
            provider: "a".into(),
            weight: 1,
            ..Default::default()
        }],
        fallbacks: ["b", "c"]
            .iter()
            .map(|p| pb::Fallback {
                provider: (*p).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    edit(&mut r);
    resource("default/r", "1", Resource::Route(r))
}

fn key() -> pb::Resource {
    use sha2::Digest;
    resource(
        "default/k",
        "1",
        Resource::VirtualKey(pb::VirtualKey {
            namespace: "default".into(),
            name: "k".into(),
            key_sha256: sha2::Sha256::digest(KEY).to_vec(),
            ..Default::default()
        }),
    )
}

fn state(route: pb::Resource, fake: Arc<Fake>) -> Arc<State> {
    let mut store = Store::default();
    for (type_url, resources) in [
        (
            type_url::PROVIDER,
            vec![
                provider("a", &["a-key-1", "a-key-2"]),
                provider("b", &["b-key"]),
                provider("c", &["c-key"]),
                provider_of("x", pb::ProviderType::Anthropic, &["x-key"]),
                provider_of("y", pb::ProviderType::Anthropic, &["y-key"]),
                provider_of(
                    "t",
                    pb::ProviderType::Bedrock,
                    &[r#"{"accessKeyId":"AKIDTEST","secretAccessKey":"secret"}"#],
                ),
            ],
        ),
        (type_url::ROUTE, vec![route, claude_route()]),
        (type_url::VIRTUAL_KEY, vec![key()]),
    ] {
        let applied = store.apply(&DeltaConfigResponse {
            type_url: type_url.into(),
            resources,
            nonce: "1".into(),
            ..Default::default()
        });
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    }
    let (_ready, ready) = tokio::sync::watch::channel(true);
    Arc::new(State {
        config: Arc::new(ArcSwap::from_pointee(store.snapshot())),
        ready,
        upstream: crate::base::upstream::Clients::new(&Default::default()),
        transport: fake,
        metrics: Metrics::new().unwrap(),
        bodies: crate::base::bodies::Limits::new(1 << 20, Duration::from_secs(10), 1, 1 << 24),
        max_upstream_body_bytes: 1 << 20,
        translation: TranslationLimits {
            max_bytes: 1 << 20,
            max_messages: 1000,
        },
        balance: Default::default(),
        quotas: Quotas::new(Duration::from_secs(1), false),
        worst: WorstCase {
            output_tokens: 4096,
            media_tokens: 1000,
            file_tokens: 10_000,
            web_searches: 5,
        },
        audit: None,
        telemetry: None,
        sealing: Default::default(),
    })
}

/// Which stages a test request goes through.
#[derive(Clone, Copy)]
enum Op {
    Chat { stream: bool },
    Embeddings,
    CountTokens,
}

/// Sends a chat request (streamed or not) through the stages; the status, the
/// `x-tollgate-attempts` header, and the body the client read.
async fn chat(state: &Arc<State>, stream: bool) -> (u16, String, String) {
    call(state, Op::Chat { stream }).await
}

async fn call(state: &Arc<State>, op: Op) -> (u16, String, String) {
    let body = body_of(op);
    call_with(state, op, body).await
}

fn body_of(op: Op) -> serde_json::Value {
    match op {
        Op::Chat { stream } => serde_json::json!({
            "model": "gpt-4o",
            "stream": stream,
            "messages": [{"role": "user", "content": "Say hello"}]
        }),
        Op::Embeddings => serde_json::json!({"model": "gpt-4o", "input": "hello"}),
        Op::CountTokens => serde_json::json!({
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Say hello"}]
        }),
    }
}

async fn call_with(state: &Arc<State>, op: Op, body: serde_json::Value) -> (u16, String, String) {
    let req = Request::post("/")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let operation = match op {
        Op::Chat { .. } => Operation::Chat,
        Op::Embeddings => Operation::Embeddings,
        Op::CountTokens => Operation::CountTokens,
    };
    let api = match op {
        Op::CountTokens => Api::Anthropic,
        _ => Api::OpenAi,
    };
    let mut labels = Labels::begin(state, &req, operation, api);
    let started = Instant::now();
    let stages = super::super::stages::chat;
    let (api, result) = match op {
        Op::Chat { .. } => (
            Api::OpenAi,
            stages(state, req, Api::OpenAi, started, &mut labels).await,
        ),
        Op::Embeddings => (
            Api::OpenAi,
            super::super::stages::answered_whole(
                state,
                req,
                Operation::Embeddings,
                started,
                &mut labels,
            )
            .await,
        ),
        Op::CountTokens => (
            Api::Anthropic,
            super::super::stages::answered_whole(
                state,
                req,
                Operation::CountTokens,
                started,
                &mut labels,
            )
            .await,
        ),
    };
    let response: Response<Body> =
        super::super::record::answer(state, result, api, started, labels);
    let status = response.status().as_u16();
    let attempts = response
        .headers()
        .get("x-tollgate-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = match response.into_body().collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(e) => format!("<broken: {e}>"),
    };
    (status, attempts, text)
}

/// The text of an OpenAI stream: every delta's content, in order.
fn streamed_text(sse: &str) -> String {
    sse.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_server_error_is_retried_after_a_backoff_within_its_ceiling() {
    fastrand::seed(7);
    let fake = Fake::new(vec![
        answer(500, "{}"),
        answer(503, "{}"),
        answer(200, &completion("hello")),
    ]);
    let state = state(
        route(|r| {
            r.retries = Some(pb::Retries {
                attempts: 2,
                backoff_base_ms: 400,
                backoff_max_ms: 10_000,
                on: vec!["5xx".into()],
                budget_percent: Some(100),
                ..Default::default()
            });
            r.fallback_on = vec!["context-window".into()];
        }),
        fake.clone(),
    );
    let (status, attempts, body) = chat(&state, false).await;
    assert_eq!((status, attempts.as_str()), (200, "3"), "{body}");
    let calls = fake.calls();
    assert!(calls.iter().all(|c| c.host == "a.test"), "{calls:?}");
    // Full jitter: each wait is at most the ceiling (400 ms, then 800 ms), and waits.
    let (first, second) = (calls[1].at - calls[0].at, calls[2].at - calls[1].at);
    assert!(
        first > Duration::ZERO && first <= Duration::from_millis(400),
        "{first:?}"
    );
    assert!(
        second > Duration::ZERO && second <= Duration::from_millis(800),
        "{second:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_one_over_the_cap_is_not_waited_for() {
    let retrying = |max_ms| {
        route(move |r| {
            r.targets[0].provider = "b".into();
            r.fallbacks.clear();
            r.retries = Some(pb::Retries {
                attempts: 2,
                backoff_base_ms: 10,
                on: vec!["429".into()],
                budget_percent: Some(100),
                max_retry_after_ms: max_ms,
                ..Default::default()
            });
        })
    };
    let fake = Fake::new(vec![
        with_headers(429, vec![("retry-after", "3")]),
        answer(200, &completion("hello")),
    ]);
    let (status, attempts, _) = chat(&state(retrying(5_000), fake.clone()), false).await;
    assert_eq!((status, attempts.as_str()), (200, "2"));
    let calls = fake.calls();
    assert_eq!(calls[1].at - calls[0].at, Duration::from_secs(3));

    // Retry-After past the route's cap: the client gets the 429 at once.
    let fake = Fake::new(vec![
        with_headers(429, vec![("retry-after", "30")]),
        answer(200, &completion("never")),
    ]);
    let (status, attempts, _) = chat(&state(retrying(5_000), fake.clone()), false).await;
    assert_eq!((status, attempts.as_str()), (429, "1"));
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_or_exhausted_credential_is_swapped_for_another_at_once() {
    for refusal in [
        with_headers(401, vec![]),
        with_headers(429, vec![("x-ratelimit-remaining-requests", "0")]),
    ] {
        let fake = Fake::new(vec![refusal, answer(200, &completion("hello"))]);
        let state = state(
            route(|r| {
                r.fallbacks.clear();
            }),
            fake.clone(),
        );
        let (status, attempts, body) = chat(&state, false).await;
        assert_eq!((status, attempts.as_str()), (200, "2"), "{body}");
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].host, calls[1].host, "the same target");
        assert_ne!(
            calls[0].authorization, calls[1].authorization,
            "another credential"
        );
        assert_eq!(calls[1].at, calls[0].at, "no wait");
    }
}

#[tokio::test(start_paused = true)]
async fn fallbacks_are_tried_in_their_order_until_one_answers() {
    let fake = Fake::new(vec![
        Reply::Unreachable,
        answer(502, "{}"),
        answer(200, &completion("from c")),
    ]);
    let state = state(
        route(|r| {
            r.fallback_on = vec!["connect-error".into(), "5xx".into()];
        }),
        fake.clone(),
    );
    let (status, attempts, body) = chat(&state, false).await;
    assert_eq!((status, attempts.as_str()), (200, "3"));
    assert!(body.contains("from c"), "{body}");
    let hosts: Vec<String> = fake.calls().into_iter().map(|c| c.host).collect();
    assert_eq!(hosts, ["a.test", "b.test", "c.test"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_a_first_token_in_time_moves_to_the_fallback() {
    let fake = Fake::new(vec![
        stream(
            "slow",
            &["late"],
            Duration::from_secs(20),
            Duration::ZERO,
            false,
        ),
        stream(
            "fast",
            &["hello", " there"],
            Duration::ZERO,
            Duration::ZERO,
            false,
        ),
    ]);
    let state = state(
        route(|r| {
            r.timeouts = Some(pb::Timeouts {
                first_token_ms: 2_000,
                ..Default::default()
            });
            r.fallback_on = vec!["first-token-timeout".into()];
        }),
        fake.clone(),
    );
    let (status, attempts, body) = chat(&state, true).await;
    assert_eq!((status, attempts.as_str()), (200, "2"));
    assert_eq!(streamed_text(&body), "hello there");
    let calls = fake.calls();
    assert_eq!(calls[1].host, "b.test");
    assert_eq!(calls[1].at - calls[0].at, Duration::from_secs(2));
}

/// A stream cut after two words, and the fallback's continuation of it.
fn cut_then_continued() -> Arc<Fake> {
    Fake::new(vec![
        stream(
            "first",
            &["The answer", " is"],
            Duration::ZERO,
            Duration::from_millis(10),
            true,
        ),
        stream(
            "second",
            &[" forty-two."],
            Duration::ZERO,
            Duration::ZERO,
            false,
        ),
    ])
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_midway_continues_on_the_fallback_as_one_stream() {
    let fake = cut_then_continued();
    let state = state(
        route(|r| {
            r.streaming = Some(pb::Streaming {
                continue_on_failure: true,
                ..Default::default()
            });
        }),
        fake.clone(),
    );
    let (status, _, body) = chat(&state, true).await;
    assert_eq!(status, 200);
    assert_eq!(streamed_text(&body), "The answer is forty-two.", "{body}");
    assert!(
        !body.contains("\"second\""),
        "one chunk id throughout: {body}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let calls = fake.calls();
    assert_eq!(calls[1].host, "b.test");
    // The continuation carries the partial answer as the assistant's turn.
    let messages = calls[1].body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        messages
            .last()
            .map(|m| (m["role"].clone(), m["content"].clone())),
        Some(("assistant".into(), "The answer is".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn embeddings_take_the_same_credentials_retries_and_fallbacks() {
    let vectors = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"gpt-4o","usage":{"prompt_tokens":1,"total_tokens":1}}"#;
    let fake = Fake::new(vec![
        with_headers(401, vec![]),
        answer(503, "{}"),
        answer(200, vectors),
    ]);
    let state = state(route(|_| {}), fake.clone());
    let (status, attempts, body) = call(&state, Op::Embeddings).await;
    assert_eq!((status, attempts.as_str()), (200, "3"), "{body}");
    assert!(body.contains("embedding"), "{body}");
    let calls = fake.calls();
    let seen: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.host.as_str(), c.authorization.as_str()))
        .collect();
    // The refused credential is swapped for the other at once; the 503 moves to `b`.
    assert_eq!(seen[0].0, "a.test");
    assert_eq!(seen[1].0, "a.test");
    assert_ne!(seen[0].1, seen[1].1);
    assert_eq!(seen[2], ("b.test", "Bearer b-key"));
    assert!(calls.iter().all(|c| c.body["model"] == "gpt-4o"));
}

#[tokio::test(start_paused = true)]
async fn token_counting_falls_back_like_any_request() {
    let fake = Fake::new(vec![
        Reply::Unreachable,
        answer(200, r#"{"input_tokens":12}"#),
    ]);
    let state = state(route(|_| {}), fake.clone());
    let (status, attempts, body) = call(&state, Op::CountTokens).await;
    assert_eq!(
        (status, attempts.as_str(), body.as_str()),
        (200, "2", r#"{"input_tokens":12}"#)
    );
    let hosts: Vec<String> = fake.calls().into_iter().map(|c| c.host).collect();
    assert_eq!(hosts, ["x.test", "y.test"]);
}

#[tokio::test(start_paused = true)]
async fn an_embeddings_request_of_many_texts_keeps_few_provider_calls_in_flight() {
    // Titan takes one text per call: 100 texts are 100 calls, 32 at a time at most.
    let titan = r#"{"embedding":[0.1,0.2],"inputTextTokenCount":2}"#;
    let slow = |_| Reply::Answer {
        wait: Duration::from_millis(50),
        status: 200,
        headers: vec![("content-type", "application/json")],
        frames: vec![(Duration::ZERO, titan.to_string())],
        cut: false,
    };
    let fake = Fake::new((0..100).map(slow).collect());
    let model = "amazon.titan-embed-text-v2:0";
    let state = state(
        route(|r| {
            r.models = vec![model.into()];
            r.targets[0].provider = "t".into();
            r.fallbacks.clear();
        }),
        fake.clone(),
    );
    let texts: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let body = serde_json::json!({"model": model, "input": texts});
    let (status, _, answer) = call_with(&state, Op::Embeddings, body).await;
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(100));
    assert_eq!(v["data"][99]["index"], 99, "answers in the texts' order");
    assert_eq!(fake.calls().len(), 100);
    let most = fake.most_waiting.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=32).contains(&most), "{most} calls in flight at once");
}

/// The state of `route` with a sink that keeps the last audit records.
fn audited(route: pb::Resource, fake: Arc<Fake>) -> (Arc<State>, Arc<crate::base::audit::Auditor>) {
    let mut s = state(route, fake);
    let metrics = s.metrics.clone();
    let sink = crate::base::audit::Auditor::start(
        crate::base::audit::Settings {
            stdout: false,
            ring: 10,
            pending: 10,
            forward: 0,
        },
        metrics.audit_written.clone(),
        metrics.audit_dropped.clone(),
        None,
    )
    .unwrap();
    Arc::get_mut(&mut s).unwrap().audit = Some(sink.clone());
    (s, sink)
}

fn records(sink: &crate::base::audit::Auditor) -> Vec<serde_json::Value> {
    sink.recent(10)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_request_has_one_audit_record_with_each_attempt() {
    let fake = Fake::new(vec![
        Reply::Unreachable,
        answer(502, "{}"),
        answer(200, &completion("from c")),
    ]);
    let (state, sink) = audited(
        route(|r| {
            r.fallback_on = vec!["connect-error".into(), "5xx".into()];
        }),
        fake.clone(),
    );
    let (status, _, _) = chat(&state, false).await;
    assert_eq!(status, 200);
    let got = records(&sink);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r["kind"], "llm");
    assert_eq!(
        (r["key"].as_str(), r["namespace"].as_str()),
        (Some("k"), Some("default"))
    );
    assert_eq!(r["operation"], "chat");
    assert_eq!(r["requested_model"], "gpt-4o");
    assert_eq!(r["status"], 200);
    assert_eq!(r["error_type"], serde_json::Value::Null);
    assert_eq!(r["stream"], false);
    let outcomes: Vec<(&str, &str, Option<u64>)> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        outcomes[1..],
        [
            ("default/b", "5xx", Some(502)),
            ("default/c", "ok", Some(200))
        ]
    );
    assert_eq!(outcomes[0].1, "connect-error");
    assert_eq!(r["provider"], "default/c");
    assert!(r["tokens"]["input"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["request_id"].as_str().unwrap().len(), 32);
    let line = sink.recent(1)[0].to_string();
    for secret in [KEY, "a-key-1", "b-key", "c-key", "Say hello"] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_and_a_continued_stream_are_recorded_once_each() {
    let fake = cut_then_continued();
    let (state, sink) = audited(
        route(|r| {
            r.streaming = Some(pb::Streaming {
                continue_on_failure: true,
                ..Default::default()
            });
        }),
        fake.clone(),
    );
    let (status, _, _) = chat(&state, true).await;
    assert_eq!(status, 200);
    let got = records(&sink);
    assert_eq!(got.len(), 1, "recorded when the stream ends, once: {got:?}");
    assert_eq!(got[0]["stream"], true);
    assert_eq!(
        got[0]["attempts"].as_array().unwrap().len(),
        2,
        "{}",
        got[0]
    );
    assert!(got[0]["time_to_first_token_ms"].is_number(), "{}", got[0]);

    // A request with a key the gateway does not know: its record names no key.
    let req = Request::post("/")
        .header("authorization", "Bearer tg-not-a-key")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let mut labels = Labels::begin(&state, &req, Operation::Chat, Api::OpenAi);
    let started = Instant::now();
    let result = super::super::stages::chat(&state, req, Api::OpenAi, started, &mut labels).await;
    let response = super::super::record::answer(&state, result, Api::OpenAi, started, labels);
    assert_eq!(response.status(), 401);
    let id = response.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let got = records(&sink);
    let r = &got[1];
    assert_eq!(
        (r["status"].as_u64(), r["error_type"].as_str()),
        (Some(401), Some("invalid_api_key"))
    );
    assert_eq!(r["key"], serde_json::Value::Null);
    assert_eq!(r["request_id"], id.as_str());
    assert!(!sink.recent(2)[1].contains("tg-not-a-key"));
}
