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

fn counter(dp: &Dataplane, name: &str, listener: &str) -> f64 {
    Stack::metric(&dp.admin, name, &[("listener", listener)]).unwrap()
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
        .add_dataplane_with(&["--header-read-timeout", "2s", "--max-connections", "1000"])
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
            if closed_within(s, Duration::from_secs(6)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, open.len(), "every half-sent request is closed");
        assert!(counter(dp, "tollgate_connections_refused_total", "api") >= 900.0);
        assert!(counter(dp, "tollgate_connections_timed_out_total", "api") >= 900.0);
        drop(open);
        // And the API serves again.
        until_served(&dp.api, DEMO_KEY, "gpt-4o-mini", Duration::from_secs(5)).await;
        let after = dp.process.rss_kib().unwrap();
        assert!(
            after < before + RSS_GROWTH_KIB,
            "RSS grew from {before} KiB to {after} KiB"
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
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
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
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
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
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
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
        assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
    })
    .await;
}
