//! Audit records: one JSON line per LLM request on the dataplane's standard output and in
//! its `/audit` ring, with every attempt and who sent it; no secret and no prompt in any
//! record or log line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::harness::{DEMO_KEY, Stack, UPSTREAM_KEYS, http_get, set_faults};

mod common;
use common::*;

/// A route that fails over from one model to another on a 5xx.
const MANIFEST: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: audited
spec:
  match:
    models: ["audited"]
  targets:
    - provider: openai-primary
      model: m-primary
  fallbacks:
    - provider: openai-secondary
      model: m-secondary
  fallbackOn: [5xx]
"#;

const PROMPT: &str = "the quarterly numbers are 7f3a-confidential";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn records(admin: &str) -> Vec<Value> {
    let (status, body) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn by_id<'r>(records: &'r [Value], id: &str) -> &'r Value {
    records
        .iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no record {id} in {records:?}"))
}

#[tokio::test]
async fn every_request_has_one_record_with_its_attempts_and_no_secret() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("audited.yaml", MANIFEST).unwrap();
    with_logs(&stack, async {
        until_served(stack.api(), DEMO_KEY, "audited", Duration::from_secs(5)).await;
        let admin = stack.dataplanes[0].admin.clone();
        // The records of the requests above are in the ring after the writer's beat.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = records(&admin).len();
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-primary", "status": 502}]),
        )
        .unwrap();

        // A request that fails over, with a client's own ids.
        let (status, h, v) = post_with(
            stack.api(),
            "/chat/completions",
            Some(DEMO_KEY),
            &[
                ("user-agent", "audit-test/1.0"),
                ("x-request-id", "client-request-1"),
                ("traceparent", TRACEPARENT),
            ],
            &chat_body("audited", PROMPT),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let failed_over = h["x-tollgate-request-id"].to_str().unwrap().to_string();
        // Without tracing, both attempts pass the client's trace context on as it came.
        let upstream = stack.upstream_requests().unwrap();
        let passed = upstream
            .iter()
            .rev()
            .take(2)
            .filter(|r| r["headers"]["traceparent"] == TRACEPARENT)
            .count();
        assert_eq!(passed, 2, "{upstream:?}");

        // A stream, and a request with a key the gateway does not know.
        let body = json!({"model": "gpt-4o-mini", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": PROMPT}]})
        .to_string();
        let (status, h, _) = post(stack.api(), Some(DEMO_KEY), &body).await;
        assert_eq!(status, 200);
        let streamed = h["x-tollgate-request-id"].to_str().unwrap().to_string();
        let (status, h, _) = post(stack.api(), Some("tg-not-a-key-5d1e"), &body).await;
        assert_eq!(status, 401);
        let refused = h["x-tollgate-request-id"].to_str().unwrap().to_string();

        // Written lines reach the ring within the writer's beat (50 ms).
        let mut got = records(&admin);
        for _ in 0..100 {
            if got.len() - before >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            got = records(&admin);
        }
        assert_eq!(got.len() - before, 3, "{got:?}");
        let r = by_id(&got, &failed_over);
        assert_eq!(r["kind"], "llm");
        assert_eq!(
            (&r["namespace"], &r["key"]),
            (&json!("default"), &json!("demo"))
        );
        assert_eq!(
            (&r["team"], &r["user"]),
            (&json!("demo"), &json!("quickstart"))
        );
        assert_eq!(r["route"], "default/audited");
        assert_eq!(r["requested_model"], "audited");
        assert_eq!(r["served_model"], "m-secondary");
        assert_eq!(r["provider"], "default/openai-secondary");
        assert_eq!(
            (&r["status"], &r["error_type"]),
            (&json!(200), &Value::Null)
        );
        let attempts: Vec<(&str, &str, Option<u64>)> = r["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["model"].as_str().unwrap(),
                    a["outcome"].as_str().unwrap(),
                    a["status"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            attempts,
            [
                ("m-primary", "5xx", Some(502)),
                ("m-secondary", "ok", Some(200))
            ]
        );
        assert_eq!(r["user_agent"], "audit-test/1.0");
        assert_eq!(r["client_request_id"], "client-request-1");
        assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r["client_address"], "127.0.0.1");
        assert!(r["tokens"]["input"].as_u64().unwrap() > 0, "{r}");
        assert!(r["duration_ms"].as_f64().unwrap() > 0.0, "{r}");

        let s = by_id(&got, &streamed);
        assert_eq!((&s["stream"], &s["status"]), (&json!(true), &json!(200)));
        let (ttft, total) = (
            s["time_to_first_token_ms"].as_f64().unwrap(),
            s["duration_ms"].as_f64().unwrap(),
        );
        assert!(ttft > 0.0 && ttft <= total, "{s}");
        assert!(s["tokens"]["output"].as_u64().unwrap() > 0, "{s}");

        let x = by_id(&got, &refused);
        assert_eq!(
            (&x["status"], &x["error_type"]),
            (&json!(401), &json!("invalid_api_key"))
        );
        assert_eq!(x["key"], Value::Null);

        // The same records on standard output, one line each, within the writer's beat.
        let dataplane = &stack.dataplanes[0].process;
        eventually(Duration::from_secs(2), || async {
            let log = dataplane.log_text();
            [&failed_over, &streamed, &refused].iter().all(|id| {
                log.lines()
                    .any(|l| l.starts_with('{') && l.contains(id.as_str()))
            })
        })
        .await;
        let line = dataplane
            .log_text()
            .lines()
            .find(|l| l.contains(&failed_over))
            .map(str::to_string)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), *r);

        // The controller's live log has them too, merged from the dataplanes' usage
        // streams, with filters.
        let controller = stack.controller_admin.clone();
        let live = |query: &str| {
            let (status, body) = http_get(&format!("{controller}/logs?{query}")).unwrap();
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Vec<Value>>(&body).unwrap()
        };
        let ids = |records: Vec<Value>| -> Vec<String> {
            records
                .iter()
                .map(|r| r["request_id"].as_str().unwrap().to_string())
                .collect()
        };
        let waited = eventually(Duration::from_secs(2), || async {
            ids(live("limit=1000")).contains(&refused)
        })
        .await;
        eprintln!("in the controller's live log after {waited:?}");
        let audited = live("route=default/audited&limit=1000");
        assert!(
            audited.iter().all(|r| r["route"] == "default/audited"),
            "{audited:?}"
        );
        assert!(ids(audited).contains(&failed_over));
        let client_errors = live("status=4xx&limit=1000");
        assert!(client_errors.iter().all(|r| {
            r["status"]
                .as_u64()
                .is_some_and(|s| (400..500).contains(&s))
        }));
        assert!(ids(client_errors).contains(&refused));
        assert!(ids(live("key=default/demo&model=m-secondary")).contains(&failed_over));
        assert_eq!(
            live("key=demo&status=200&limit=1000")
                .iter()
                .filter(|r| [&failed_over, &streamed]
                    .contains(&&r["request_id"].as_str().unwrap().to_string()))
                .count(),
            2
        );
        let (status, _) = http_get(&format!("{controller}/logs?colour=red")).unwrap();
        assert_eq!(status, 400, "an unknown filter is refused, not ignored");

        // Followed: a request made now comes as a server-sent event within 2 seconds.
        let follow = reqwest::Client::new()
            .get(format!(
                "{controller}/logs?follow=1&model=gpt-4o-mini&limit=0"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(
            follow.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let (status, h, _) = post(stack.api(), Some(DEMO_KEY), &body).await;
        assert_eq!(status, 200);
        let next = h["x-tollgate-request-id"].to_str().unwrap().to_string();
        let started = std::time::Instant::now();
        let mut stream = follow.bytes_stream();
        let mut text = String::new();
        while !text.contains(&next) {
            let chunk = tokio::time::timeout(
                Duration::from_secs(2),
                futures_util::StreamExt::next(&mut stream),
            )
            .await
            .expect("an event within 2 s")
            .unwrap()
            .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(text.starts_with("data: {"), "{text}");
        assert!(
            !text.contains(&streamed),
            "limit=0: only records made after: {text}"
        );

        // Client text as long as the body or a header allows stays out of the record
        // (the head refuses a model name over 256 bytes; headers are cut to 256), and the
        // live log still gets the record: one too long for a usage batch would stall it.
        let long = format!("m-{}", "x".repeat(200_000));
        let agent = "a".repeat(8_000);
        let (status, h, _) = post_with(
            stack.api(),
            "/chat/completions",
            Some(DEMO_KEY),
            &[("user-agent", &agent)],
            &chat_body(&long, "hi"),
        )
        .await;
        assert_eq!(status, 400);
        let hostile = h["x-tollgate-request-id"].to_str().unwrap().to_string();
        eventually(Duration::from_secs(2), || async {
            ids(live("status=400&limit=1000")).contains(&hostile)
        })
        .await;
        let r = live("status=400&limit=1000")
            .into_iter()
            .find(|r| r["request_id"] == hostile.as_str())
            .unwrap();
        assert_eq!(r["requested_model"], Value::Null, "{r}");
        assert_eq!(r["user_agent"].as_str().unwrap().len(), 256, "{r}");

        // No secret and no prompt anywhere: records, the ring, every process's log.
        let token = std::fs::read_to_string(&stack.token_file).unwrap();
        let (_, ring) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
        let everything = format!("{}\n{ring}", stack.logs());
        for secret in [DEMO_KEY, "tg-not-a-key-5d1e", token.trim(), PROMPT]
            .into_iter()
            .chain(UPSTREAM_KEYS)
        {
            assert!(!everything.contains(secret), "{secret:?} was written");
        }
    })
    .await;
}

#[test]
fn audit_can_be_off_and_the_ring_is_only_for_the_admin() {
    let mut stack = Stack::start().unwrap();
    let token = stack.dir.path().join("admin-token");
    std::fs::write(&token, "admin-s3cret-0123456789\n").unwrap();
    stack.add_dataplane_with(&["--audit", "off"]).unwrap();
    stack
        .add_dataplane_with(&["--admin-token-file", token.to_str().unwrap()])
        .unwrap();
    let (status, _) = http_get(&format!("{}/audit", stack.dataplanes[1].admin)).unwrap();
    assert_eq!(status, 404, "no records are kept with --audit off");
    let (status, _) = http_get(&format!("{}/audit", stack.dataplanes[2].admin)).unwrap();
    assert_eq!(
        status, 401,
        "the records need the admin token when there is one"
    );
    let (status, body) = http_get(&format!("{}/audit?limit=x", stack.dataplanes[0].admin)).unwrap();
    assert_eq!(status, 400, "{body}");
}

/// A Budget over the quick start's key, for the page to show.
const BUDGET: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata:
  name: page-budget
spec:
  selector:
    matchLabels: {team: demo}
  limit:
    usd: 25
  period: month
"#;

#[tokio::test]
async fn the_web_page_shows_objects_budgets_and_a_request_within_2_seconds() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("budget.yaml", BUDGET).unwrap();
    with_logs(&stack, async {
        // The Budget's account is there once a request has reserved against it.
        eventually(Duration::from_secs(10), || async {
            post(stack.api(), Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
            http_get(&format!("{}/usage", stack.controller_admin))
                .unwrap()
                .1
                .contains("page-budget")
        })
        .await;
        let out = run_python(
            &stack,
            "live_page.py",
            &[
                &stack.controller_admin,
                stack.api(),
                DEMO_KEY,
                "default/page-budget",
            ],
        );
        assert!(out.contains("page ok"), "{out}");
    })
    .await;
}
