//! The dataplane tried as a hostile client would, through the real binaries: connections
//! that never finish a request, bodies sent a byte at a time, idle connections, names
//! chosen to grow memory, answers too large to hold, and inputs that once panicked. Each
//! test shows the attack refused or bounded, the process still answering, and its
//! resident memory within the bound docs/hardening.md gives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::harness::{DEMO_KEY, Dataplane, Stack, http_get};

mod common;
use common::*;

/// What an attack may add to the dataplane's resident memory, in KiB.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

fn host(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Fails unless `dp`'s resident memory is within [`RSS_GROWTH_KIB`] of `before`.
fn assert_rss_within(dp: &Dataplane, before: u64) {
    let after = dp.process.rss_kib().unwrap();
    assert!(
        after < before + RSS_GROWTH_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

fn counter(dp: &Dataplane, name: &str, listener: &str) -> f64 {
    Stack::metric(&dp.admin, name, &[("listener", listener)]).unwrap()
}

/// The head of a chat request with the demo key and a body of `length` bytes, as a
/// client writes it on the wire.
fn chat_head(length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// True once the peer has closed `stream` (a read ends or fails).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_probes_keep_answering() {
    let mut stack = Stack::start().unwrap();
    stack
        // The timeout is longer than opening 2,000 connections takes on a busy host: none
        // times out (freeing a place under the cap) before the last is opened.
        .add_dataplane_with(&["--header-read-timeout", "5s", "--max-connections", "1000"])
        .unwrap();
    let dp = &stack.dataplanes[1];
    let addr = host(&dp.api);
    with_logs(&stack, async {
        let before = dp.process.rss_kib().unwrap();
        let mut open = Vec::new();
        for _ in 0..2000 {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                continue;
            };
            // A request head that never ends.
            let _ = s
                .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .await;
            open.push(s);
        }
        // The probes have their own listener and limits: they answer at once.
        let started = Instant::now();
        let (status, _) = http_get(&format!("{}/healthz", dp.admin)).unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let (status, _) = http_get(&format!("{}/readyz", dp.admin)).unwrap();
        assert_eq!(status, 200);
        // Over the cap, connections are closed as they are accepted; the rest once the
        // header-read timeout passes.
        let mut closed = 0;
        for s in &mut open {
            if closed_within(s, Duration::from_secs(9)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, open.len(), "every half-sent request is closed");
        assert!(counter(dp, "tollgate_connections_refused_total", "api") >= 900.0);
        assert!(counter(dp, "tollgate_connections_timed_out_total", "api") >= 900.0);
        drop(open);
        // And the API serves again.
        until_served(&dp.api, DEMO_KEY, "gpt-4o-mini", Duration::from_secs(5)).await;
        assert_rss_within(dp, before);
    })
    .await;
}

#[tokio::test]
async fn a_trickled_http2_preface_is_timed_like_a_head() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--header-read-timeout", "1s", "--idle-timeout", "60s"])
        .unwrap();
    let dp = &stack.dataplanes[1];
    let addr = host(&dp.api);
    with_logs(&stack, async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // The preface's first line, then one byte of the rest every 400 ms: never idle,
        // never a whole preface.
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let started = Instant::now();
        let mut closed = false;
        for b in b"\r\nSM\r\n\r".iter() {
            if closed_within(&mut s, Duration::from_millis(400)).await {
                closed = true;
                break;
            }
            let _ = s.write_all(&[*b]).await;
        }
        let closed = closed || closed_within(&mut s, Duration::from_secs(3)).await;
        assert!(closed, "a trickled preface kept its connection");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_cut_with_408() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--body-read-timeout", "1s", "--body-min-rate", "1000"])
        .unwrap();
    let dp = &stack.dataplanes[1];
    let addr = host(&dp.api);
    with_logs(&stack, async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(chat_head(100_000).as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // One byte every 300 ms, while reading whatever comes back.
        loop {
            assert!(started.elapsed() < Duration::from_secs(10), "never cut");
            let _ = s.write_all(b"{").await;
            match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--idle-timeout", "2s", "--header-read-timeout", "1s"])
        .unwrap();
    let dp = &stack.dataplanes[1];
    let addr = host(&dp.api);
    with_logs(&stack, async {
        // A request that takes longer than both timeouts (the mock answers after 3 s)
        // is not cut: it is in flight.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let body = chat_body("gpt-4o-mini", "slow please [mock latency_ms=3000]");
        let req = format!("{}{body}", chat_head(body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // Then, idle, it is closed after the idle timeout.
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// A route that sends any `free-*` model upstream as it was asked for.
const GLOB_ROUTE: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: free-models}
spec:
  match:
    models: ["free-*"]
  targets:
    - provider: openai-primary
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_model_names_never_become_metric_labels() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("glob.yaml", GLOB_ROUTE).unwrap();
    let dp = &stack.dataplanes[0];
    with_logs(&stack, async {
        until_served(
            dp.api.as_str(),
            DEMO_KEY,
            "free-warmup",
            Duration::from_secs(10),
        )
        .await;
        let (_, before_text) = http_get(&format!("{}/metrics", dp.admin)).unwrap();
        let rss_before = dp.process.rss_kib().unwrap();
        // A thousand distinct names of 240 bytes, eight at a time.
        let names: Vec<String> = (0..1000)
            .map(|i| format!("free-{i:04}-{}", "n".repeat(230)))
            .collect();
        for batch in names.chunks(8) {
            let bodies: Vec<String> = batch.iter().map(|m| chat_body(m, "hi")).collect();
            let calls = bodies.iter().map(|b| post(&dp.api, Some(DEMO_KEY), b));
            for (status, _, body) in futures_util::future::join_all(calls).await {
                assert_eq!(status, 200, "{body}");
            }
        }
        // A name of a megabyte is refused before it goes anywhere.
        let huge = format!("free-{}", "x".repeat(1 << 20));
        let (status, _, body) = post(&dp.api, Some(DEMO_KEY), &chat_body(&huge, "hi")).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.to_string().len() < 1000,
            "the error does not echo the name"
        );
        let (_, after_text) = http_get(&format!("{}/metrics", dp.admin)).unwrap();
        assert!(
            !after_text.contains("free-0"),
            "a client's model name became a label"
        );
        assert!(
            after_text.len() < before_text.len() + 16 * 1024,
            "/metrics grew from {} to {} bytes",
            before_text.len(),
            after_text.len()
        );
        let requests = Stack::metric(
            &dp.admin,
            "tollgate_requests_total",
            &[
                ("route", "default/free-models"),
                ("model", "other"),
                ("status", "200"),
            ],
        )
        .unwrap();
        assert!(requests >= 1000.0, "counted under `other`: {requests}");
        assert_rss_within(dp, rss_before);
    })
    .await;
}

#[tokio::test]
async fn an_upstream_answer_over_the_limit_is_a_502() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--max-upstream-body-bytes", "1000000"])
        .unwrap();
    let dp = &stack.dataplanes[1];
    with_logs(&stack, async {
        let rss_before = dp.process.rss_kib().unwrap();
        for _ in 0..5 {
            let body = chat_body("gpt-4o-mini", "big [mock pad_bytes=20000000]");
            let (status, _, body) = post(&dp.api, Some(DEMO_KEY), &body).await;
            assert_eq!(status, 502, "{body}");
            assert_eq!(
                body["error"]["code"], "upstream_response_too_large",
                "{body}"
            );
        }
        // Within the limit, answers pass.
        let body = chat_body("gpt-4o-mini", "big [mock pad_bytes=500000]");
        let (status, _, _) = post(&dp.api, Some(DEMO_KEY), &body).await;
        assert_eq!(status, 200);
        assert_rss_within(dp, rss_before);
    })
    .await;
}

#[tokio::test]
async fn a_request_too_large_to_translate_is_a_413_and_costs_little() {
    let stack = Stack::start().unwrap();
    let dp = &stack.dataplanes[0];
    with_logs(&stack, async {
        let rss_before = dp.process.rss_kib().unwrap();
        // An OpenAI request to a Claude model is translated; 200,000 messages are more
        // than the default limit of 10,000.
        let messages: Vec<_> = (0..200_000)
            .map(|_| serde_json::json!({"role": "user", "content": "x"}))
            .collect();
        let body =
            serde_json::json!({"model": "claude-haiku-4-5", "messages": messages}).to_string();
        let (status, _, answer) = post(&dp.api, Some(DEMO_KEY), &body).await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(answer["error"]["code"], "request_too_large", "{answer}");
        assert!(answer.to_string().contains("200000 messages"), "{answer}");
        // The same request in the provider's own format is not translated: it passes.
        let (status, _, _) = post_to(
            &dp.api,
            "/messages",
            Some(DEMO_KEY),
            &serde_json::json!({"model": "claude-haiku-4-5", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .await;
        assert_eq!(status, 200);
        assert_rss_within(dp, rss_before);
    })
    .await;
}

#[tokio::test]
async fn inputs_that_once_panicked_are_answered_with_4xx() {
    let stack = Stack::start().unwrap();
    let dp = &stack.dataplanes[0];
    with_logs(&stack, async {
        for (path, body) in [
            (
                "/chat/completions",
                r#"{"model":"gpt-4o-mini","stream":true,"stream_options":[],"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            (
                "/chat/completions",
                r#"{"model":"gpt-4o-mini","stream":true,"stream_options":"yes","messages":[{"role":"user","content":"hi"}]}"#,
            ),
            (
                "/chat/completions",
                r#"{"model":"claude-haiku-4-5","stream":true,"stream_options":[],"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            ("/chat/completions", r#"{"model":"gpt-4o-mini","messages":{}}"#),
            ("/chat/completions", r#"{"model":"claude-haiku-4-5","messages":[[]]}"#),
            ("/chat/completions", r#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":[[1]]}]}"#),
            ("/messages", r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","content":7}]}]}"#),
            ("/messages", r#"{"model":"gpt-4o-mini","max_tokens":5,"system":[1],"messages":[]}"#),
            ("/embeddings", r#"{"model":"text-embedding-3-small","input":[[[1]]]}"#),
        ] {
            let (status, _, answer) = post_to(&dp.api, path, Some(DEMO_KEY), body).await;
            assert!((400..500).contains(&status), "{path} {body}: {status} {answer}");
        }
        let logs = stack.logs();
        assert!(!logs.contains("panicked"), "{logs}");
    })
    .await;
}

#[tokio::test]
async fn provider_headers_reach_clients_only_from_the_allow_list() {
    let stack = Stack::start().unwrap();
    let dp = &stack.dataplanes[0];
    with_logs(&stack, async {
        for stream in [false, true] {
            let body = serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
            let (status, headers, _) = post(&dp.api, Some(DEMO_KEY), &body).await;
            assert_eq!(status, 200);
            for name in [
                "openai-organization",
                "openai-project",
                "x-ratelimit-limit-requests",
            ] {
                assert!(headers.get(name).is_none(), "{name} passed: {headers:?}");
            }
            assert_eq!(headers["x-request-id"], "req_mock");
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .contains(if stream { "event-stream" } else { "json" })
            );
        }
    })
    .await;
}

/// Opens the Responses API's WebSocket mode on `addr` (a raw upgrade, as a client sends
/// it); the stream once the 101 has been read.
async fn websocket(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the upgrade");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A connection upgraded to a WebSocket leaves hyper's hands but not the cap: while two
/// are open under a cap of two, a third connection is closed as accepted; one closed
/// frees its place. On SIGTERM the open one is closed with 1001 (going away), and the
/// process exits within its drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_counts_against_the_cap_and_closes_on_drain() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--max-connections", "2", "--drain-timeout", "10s"])
        .unwrap();
    let addr = host(&stack.dataplanes[1].api);
    let mut kept = websocket(&addr).await;
    let closed = websocket(&addr).await;
    let refused = counter(
        &stack.dataplanes[1],
        "tollgate_connections_refused_total",
        "api",
    );
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    assert_eq!(
        counter(
            &stack.dataplanes[1],
            "tollgate_connections_refused_total",
            "api"
        ),
        refused + 1.0
    );

    // One closed: its place is free again.
    drop(closed);
    let freed = eventually(Duration::from_secs(5), || async {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            return false;
        };
        let head = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
        answer.starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(
        freed < Duration::from_secs(5),
        "the closed WebSocket's place was not freed"
    );

    // Draining: the open WebSocket gets a close frame with 1001, then the end.
    let started = Instant::now();
    stack.dataplanes[1].process.terminate().unwrap();
    let mut frame = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut frame)).await;
    assert!(frame.len() >= 4, "{frame:?}");
    assert_eq!(frame[0], 0x88, "a final close frame: {frame:?}");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1001, "{frame:?}");
    let status = stack.dataplanes[1]
        .process
        .wait_exit(Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited for the WebSocket to time out: {:?}",
        started.elapsed()
    );
}
