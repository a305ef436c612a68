//! Routing and resilience end to end: strategies, failover on every trigger, retries,
//! outlier ejection, key pools and streams, through the real binaries, with faults
//! injected into mock-llm at run time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::harness::{DEMO_KEY, Stack, set_faults, start_mock};

mod common;
use common::*;

/// Providers and routes for these tests, beside the quick start's (whose Secrets hold the
/// keys). `MOCK` is replaced by the stack's mock-llm.
const MANIFEST: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: pool
spec:
  type: openai
  endpoint: MOCK/v1
  credentials:
    - secretRef:
        name: openai-primary-key
    - secretRef:
        name: openai-secondary-key
        key: apiKey
  # Ejection is the subject of its own test; here it must not get in the way.
  health:
    consecutiveFailures: 1000
    minimumRequests: 100000
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: shaky
spec:
  type: openai
  endpoint: MOCK/v1
  credentials:
    - secretRef:
        name: openai-primary-key
  health:
    consecutiveFailures: 2
    baseEjectionTime: 1s
    maxEjectionTime: 4s
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: priced
spec:
  type: openai
  endpoint: MOCK/v1
  credentials:
    - secretRef:
        name: openai-primary-key
  models:
    - name: m-cheap
      inputPerMillionUsd: 0.15
      outputPerMillionUsd: 0.6
    - name: m-dear
      inputPerMillionUsd: 2.5
      outputPerMillionUsd: 10
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: capped
spec:
  type: openai
  endpoint: MOCK/v1
  credentials:
    - secretRef:
        name: openai-primary-key
      limits:
        requestsPerMinute: 3
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: failover
spec:
  match:
    models: ["failover"]
  strategy: priority
  targets:
    - provider: pool
      model: m-primary
      priority: 0
    - provider: pool
      model: m-secondary
      priority: 1
  fallbacks:
    - provider: pool
      model: m-slow-fallback
      timeout: 300ms
    - provider: anthropic
      model: claude-fallback
  fallbackOn: [connect-error, 5xx, "429", timeout, first-token-timeout, context-window]
  retries:
    attempts: 1
    backoff: {base: 10ms, max: 40ms}
    maxRetryAfter: 1s
  timeouts:
    request: 20s
    firstToken: 400ms
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: ejectable
spec:
  match:
    models: ["ejectable"]
  strategy: priority
  targets:
    - provider: shaky
      model: m-bad
      priority: 0
    - provider: shaky
      model: m-good
      priority: 1
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: split
spec:
  match:
    models: ["split"]
  targets:
    - {provider: pool, model: m-a, weight: 1}
    - {provider: pool, model: m-b, weight: 2}
    - {provider: pool, model: m-c, weight: 5}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: fastest
spec:
  match:
    models: ["fastest"]
  strategy: latency
  targets:
    - {provider: pool, model: m-x}
    - {provider: pool, model: m-y}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: idlest
spec:
  match:
    models: ["idlest"]
  strategy: least-busy
  targets:
    - {provider: pool, model: m-p}
    - {provider: pool, model: m-q}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: cheapest
spec:
  match:
    models: ["cheapest"]
  strategy: cost
  targets:
    - {provider: priced, model: m-dear, weight: 10}
    - {provider: priced, model: m-cheap, weight: 1}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: pooled
spec:
  match:
    models: ["pooled"]
  targets:
    - {provider: pool, model: m-pooled}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: capped
spec:
  match:
    models: ["capped"]
  targets:
    - {provider: capped, model: m-capped}
  fallbacks:
    - {provider: openai-secondary, model: m-overflow}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: continued
spec:
  match:
    models: ["continued"]
  strategy: priority
  targets:
    - {provider: pool, model: m-cut, priority: 0}
    - {provider: pool, model: m-whole, priority: 1}
  streaming:
    continueOnFailure: true
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: patient
spec:
  match:
    models: ["patient"]
  targets:
    - {provider: pool, model: m-slow}
  streaming:
    keepAliveInterval: 200ms
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: patient-fails
spec:
  match:
    models: ["patient-fails"]
  targets:
    - {provider: pool, model: m-slow-fail}
  streaming:
    keepAliveInterval: 200ms
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: hung
spec:
  match:
    models: ["hung"]
  targets:
    - {provider: pool, model: m-hung}
  fallbacks:
    - {provider: pool, model: m-rescue}
  timeouts:
    request: 20s
    attempt: 800ms
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: silent
spec:
  match:
    models: ["silent"]
  strategy: priority
  targets:
    - {provider: pool, model: m-stall, priority: 0}
    - {provider: pool, model: m-whole, priority: 1}
  timeouts:
    idle: 500ms
  streaming:
    continueOnFailure: true
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: silent-ends
spec:
  match:
    models: ["silent-ends"]
  targets:
    - {provider: pool, model: m-stall}
  timeouts:
    idle: 500ms
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: agent-planning
spec:
  match:
    models: ["agent"]
    headers:
      - {name: x-agent-step, value: planning}
  targets:
    - {provider: pool, model: m-fast}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: agent-reasoning
spec:
  match:
    models: ["agent"]
    headers:
      - {name: X-Agent-Step, value: "reason(ing)?|think", type: RegularExpression}
  targets:
    - {provider: anthropic, model: claude-strong}
"#;

/// A stack with [`MANIFEST`] applied and its routes live.
async fn stack() -> Stack {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest(
            "resilience.yaml",
            &MANIFEST.replace("MOCK", &stack.mock_url),
        )
        .unwrap();
    until_served(stack.api(), DEMO_KEY, "capped", Duration::from_secs(5)).await;
    stack
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn stream_body(model: &str, text: &str) -> String {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

/// The text of an OpenAI stream's content deltas (`data` from [`sse_data`]).
fn stream_content(data: &[String]) -> String {
    data.iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Requests mock-llm received for `model`.
fn calls_for(stack: &Stack, model: &str) -> usize {
    stack
        .upstream_requests()
        .unwrap()
        .iter()
        .filter(|r| r["body"]["model"] == model)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_fails_over_invisibly() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        // Healthy: the priority strategy always takes the first target.
        for _ in 0..5 {
            let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("failover", "hi")).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(header(&h, "x-tollgate-model"), "m-primary");
            assert_eq!(header(&h, "x-tollgate-attempts"), "1");
            assert_eq!(header(&h, "x-tollgate-route"), "default/failover");
        }
        // Each fault on the first target: the client gets a normal answer from the
        // second, and the header says it took two attempts.
        let cases: Vec<(&str, Value, bool)> = vec![
            ("5xx", json!({"status": 503}), false),
            ("429", json!({"status": 429}), false),
            ("connection reset", json!({"fail": "reset"}), false),
            ("context window", json!({"refuse": "context_window"}), false),
            (
                "stall before the response (stream)",
                json!({"latency_ms": 1500}),
                true,
            ),
            (
                "stall after the headers (stream)",
                json!({"first_token_ms": 1500}),
                true,
            ),
            ("5xx (stream)", json!({"status": 500}), true),
            ("reset (stream)", json!({"fail": "reset"}), true),
        ];
        for (name, mut fault, stream) in cases {
            fault["model"] = json!("m-primary");
            set_faults(&stack.mock_url, &json!([fault])).unwrap();
            let body = if stream {
                stream_body("failover", "hi")
            } else {
                chat_body("failover", "hi")
            };
            let (status, h, v) = post(api, Some(DEMO_KEY), &body).await;
            assert_eq!(status, 200, "{name}: {v}");
            assert_eq!(header(&h, "x-tollgate-model"), "m-secondary", "{name}");
            assert_eq!(header(&h, "x-tollgate-attempts"), "2", "{name}");
            if stream {
                let text = v.as_str().unwrap();
                let data = sse_data(text);
                assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{name}");
                assert!(!text.contains("\"error\""), "{name}: {text}");
                assert_eq!(stream_content(&data), "Mock reply to: hi", "{name}");
            } else {
                assert_eq!(
                    v["choices"][0]["message"]["content"], "Mock reply to: hi",
                    "{name}"
                );
            }
        }

        // Both targets down: the fallbacks in order. The first has its own 300 ms
        // timeout, which it exceeds; the second (a Claude model, translated) answers.
        set_faults(
            &stack.mock_url,
            &json!([
                {"model": "m-primary", "status": 502},
                {"model": "m-secondary", "status": 503},
                {"model": "m-slow-fallback", "latency_ms": 2000},
            ]),
        )
        .unwrap();
        let t = Instant::now();
        let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("failover", "hi")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(header(&h, "x-tollgate-provider"), "default/anthropic");
        assert_eq!(header(&h, "x-tollgate-model"), "claude-fallback");
        // primary, its retry (on the untried secondary), the slow fallback, the last.
        assert_eq!(header(&h, "x-tollgate-attempts"), "4");
        assert_eq!(v["choices"][0]["message"]["content"], "Mock reply to: hi");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );

        // Content policy is not among this route's triggers: the provider's 400 is the
        // client's answer, after one attempt.
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-primary", "refuse": "content_policy"}]),
        )
        .unwrap();
        let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("failover", "hi")).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "content_policy_violation");
        assert_eq!(header(&h, "x-tollgate-attempts"), "1");

        // After the first byte, a failure ends the stream with an error event in the
        // client's format (no continueOnFailure on this route).
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-primary", "fail": "cut", "chunks": 6, "chunk_delay_ms": 50}]),
        )
        .unwrap();
        let (status, _, v) = post(api, Some(DEMO_KEY), &stream_body("failover", "hi")).await;
        assert_eq!(status, 200);
        let data = sse_data(v.as_str().unwrap());
        let last: Value =
            serde_json::from_str(data.last().unwrap()).unwrap_or_else(|_| panic!("{data:?}"));
        assert_eq!(last["error"]["type"], "server_error", "{data:?}");
        assert!(data.len() > 2, "some content came first: {data:?}");

        // 429 with Retry-After: the key is set aside for that long, and the same target is
        // tried at once with the pool's other key. When that one says the same, a
        // Retry-After within the route's cap (1 s) is waited for before the retry (on
        // the untried target).
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-primary", "status": 429, "retry_after": 1}]),
        )
        .unwrap();
        let t = Instant::now();
        let (status, h, _) = post(api, Some(DEMO_KEY), &chat_body("failover", "hi")).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-tollgate-model"), "m-secondary");
        assert_eq!(header(&h, "x-tollgate-attempts"), "3");
        assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
        // Beyond the cap, the request moves on at once. Both keys of the pool are now
        // out for 30 s, so it ends at the fallback on another provider.
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-primary", "status": 429, "retry_after": 30}]),
        )
        .unwrap();
        let t = Instant::now();
        let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("failover", "hi")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(header(&h, "x-tollgate-provider"), "default/anthropic");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );

        let admin = &stack.dataplanes[0].admin;
        let attempts = |outcome: &str| {
            Stack::metric(
                admin,
                "tollgate_upstream_attempts_total",
                &[("route", "default/failover"), ("outcome", outcome)],
            )
            .unwrap()
        };
        assert!(attempts("5xx") >= 4.0);
        assert!(attempts("429") >= 3.0);
        assert!(attempts("connect-error") >= 2.0);
        assert_eq!(attempts("context-window"), 1.0);
        assert_eq!(attempts("content-policy"), 1.0);
        assert_eq!(attempts("first-token-timeout"), 2.0);
        assert_eq!(attempts("timeout"), 1.0);
        let fallbacks = Stack::metric(
            admin,
            "tollgate_fallbacks_total",
            &[("route", "default/failover")],
        )
        .unwrap();
        assert!(fallbacks >= 2.0, "{fallbacks}");
        assert!(
            Stack::metric(
                admin,
                "tollgate_retries_total",
                &[("route", "default/failover")]
            )
            .unwrap()
                >= 1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outliers_are_ejected_for_a_growing_time_and_probed_back() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        let admin = stack.dataplanes[0].admin.clone();
        let ejected = || {
            Stack::metric(
                &admin,
                "tollgate_upstream_ejected",
                &[("provider", "default/shaky"), ("endpoint", "m-bad")],
            )
            .unwrap()
        };
        let ask = || async {
            let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("ejectable", "hi")).await;
            assert_eq!(status, 200, "{v}");
            (
                header(&h, "x-tollgate-model").to_string(),
                header(&h, "x-tollgate-attempts").to_string(),
            )
        };
        set_faults(&stack.mock_url, &json!([{"model": "m-bad", "status": 503}])).unwrap();
        // Two failures in a row eject m-bad (consecutiveFailures: 2).
        assert_eq!(ask().await, ("m-good".into(), "2".into()));
        assert_eq!(ejected(), 0.0);
        assert_eq!(ask().await, ("m-good".into(), "2".into()));
        assert_eq!(ejected(), 1.0);
        let bad_calls = calls_for(&stack, "m-bad");
        assert_eq!(bad_calls, 2);
        // While ejected, it is not called at all.
        for _ in 0..5 {
            assert_eq!(ask().await, ("m-good".into(), "1".into()));
        }
        assert_eq!(calls_for(&stack, "m-bad"), 2);
        // After the base ejection time (1 s), one request probes it; it fails again and
        // is ejected for twice as long.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(ask().await, ("m-good".into(), "2".into()));
        assert_eq!(calls_for(&stack, "m-bad"), 3);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(ask().await, ("m-good".into(), "1".into()), "still out");
        assert_eq!(calls_for(&stack, "m-bad"), 3);
        // Healthy again: the next probe (after the 2 s) brings it back.
        set_faults(&stack.mock_url, &json!([])).unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(ask().await, ("m-bad".into(), "1".into()));
        assert_eq!(ejected(), 0.0);
        assert_eq!(ask().await, ("m-bad".into(), "1".into()));
        let ejections = Stack::metric(
            &admin,
            "tollgate_ejections_total",
            &[("provider", "default/shaky"), ("kind", "target")],
        )
        .unwrap();
        assert_eq!(ejections, 2.0);
        // Streams that break after their first byte count too: two in a row eject it.
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-bad", "fail": "cut", "chunks": 6, "chunk_delay_ms": 30}]),
        )
        .unwrap();
        for _ in 0..2 {
            let (status, h, v) = post(api, Some(DEMO_KEY), &stream_body("ejectable", "hi")).await;
            assert_eq!(status, 200);
            assert_eq!(header(&h, "x-tollgate-model"), "m-bad");
            let data = sse_data(v.as_str().unwrap());
            assert!(data.last().unwrap().contains("\"error\""), "{data:?}");
        }
        assert_eq!(ejected(), 1.0);
        assert_eq!(ask().await, ("m-good".into(), "1".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pools_skip_refused_exhausted_and_capped_keys() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        let by_key = |stack: &Stack, model: &str| {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for r in stack.upstream_requests().unwrap() {
                if r["body"]["model"] == model {
                    let key = r["headers"]["authorization"].as_str().unwrap_or("");
                    *counts.entry(key.to_string()).or_default() += 1;
                }
            }
            counts
        };
        // The provider refuses one key of the pool: the request is tried again at once
        // with the other, and the refused key is not used again.
        set_faults(
            &stack.mock_url,
            &json!([{"key": "sk-mock-primary", "status": 401}]),
        )
        .unwrap();
        let mut attempts = vec![];
        for _ in 0..12 {
            let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("pooled", "hi")).await;
            assert_eq!(status, 200, "{v}");
            attempts.push(header(&h, "x-tollgate-attempts").to_string());
        }
        let counts = by_key(&stack, "m-pooled");
        assert_eq!(counts.get("Bearer sk-mock-primary"), Some(&1), "{counts:?}");
        assert_eq!(
            counts.get("Bearer sk-mock-secondary"),
            Some(&12),
            "{counts:?}"
        );
        assert_eq!(
            attempts.iter().filter(|a| *a == "2").count(),
            1,
            "{attempts:?}"
        );
        let admin = &stack.dataplanes[0].admin;
        let ejected = Stack::metric(
            admin,
            "tollgate_ejections_total",
            &[("provider", "default/pool"), ("kind", "credential")],
        )
        .unwrap();
        assert_eq!(ejected, 1.0);

        // A key whose rate-limit headers say it has nothing left is set aside until the
        // reset they give (30 s here). With the other key still ejected, the pool has
        // none left, and the gateway says so itself.
        set_faults(
            &stack.mock_url,
            &json!([{"key": "sk-mock-secondary", "exhausted_for": 30, "times": 1}]),
        )
        .unwrap();
        let (status, _, _) = post(api, Some(DEMO_KEY), &chat_body("pooled", "one")).await;
        assert_eq!(status, 200);
        // Both keys are now out: the refused one ejected, the other exhausted.
        let sent = stack.upstream_requests().unwrap().len();
        let (status, _, v) = post(api, Some(DEMO_KEY), &chat_body("pooled", "two")).await;
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(stack.upstream_requests().unwrap().len(), sent);

        // requestsPerMinute: 3 on the capped key: the fourth request in the minute goes
        // to the route's fallback without calling the capped key.
        let mut models = vec![];
        for _ in 0..5 {
            let (status, h, v) = post(api, Some(DEMO_KEY), &chat_body("capped", "hi")).await;
            assert_eq!(status, 200, "{v}");
            models.push(header(&h, "x-tollgate-model").to_string());
        }
        // One request went through while the stack was starting (see `stack`).
        assert_eq!(
            models,
            [
                "m-capped",
                "m-capped",
                "m-overflow",
                "m-overflow",
                "m-overflow"
            ]
        );
        assert_eq!(calls_for(&stack, "m-capped"), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_split_by_weight_latency_load_and_cost() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        let model_of = |h: &reqwest::header::HeaderMap| header(h, "x-tollgate-model").to_string();

        // Weighted 1:2:5: a chi-square test of the counts over 800 requests.
        let n = 800u32;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..n {
            let (status, h, _) = post(api, Some(DEMO_KEY), &chat_body("split", "hi")).await;
            assert_eq!(status, 200);
            *counts.entry(model_of(&h)).or_default() += 1;
        }
        let chi2: f64 = [("m-a", 1.0), ("m-b", 2.0), ("m-c", 5.0)]
            .iter()
            .map(|(m, w)| {
                let expected = f64::from(n) * w / 8.0;
                let got = f64::from(counts.get(*m).copied().unwrap_or(0));
                (got - expected).powi(2) / expected
            })
            .sum();
        // Two degrees of freedom: 13.8 is the 0.1% critical value.
        assert!(chi2 < 13.8, "{counts:?}: chi2 {chi2}");

        // Latency: once m-x turns slow at run time, traffic leaves it.
        for _ in 0..20 {
            post(api, Some(DEMO_KEY), &chat_body("fastest", "hi")).await;
        }
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-x", "latency_ms": 300}]),
        )
        .unwrap();
        let mut late = vec![];
        for _ in 0..40 {
            let (status, h, _) = post(api, Some(DEMO_KEY), &chat_body("fastest", "hi")).await;
            assert_eq!(status, 200);
            late.push(model_of(&h));
        }
        let slow_calls = late.iter().filter(|m| *m == "m-x").count();
        assert!(
            slow_calls <= 2,
            "m-x still took {slow_calls} of 40: {late:?}"
        );
        set_faults(&stack.mock_url, &json!([])).unwrap();

        // Least busy: streams held open are spread evenly, one target then the other.
        set_faults(
            &stack.mock_url,
            &json!([{"chunks": 4, "chunk_delay_ms": 500}]),
        )
        .unwrap();
        let http = reqwest::Client::new();
        let mut open = vec![];
        for _ in 0..10 {
            let resp = http
                .post(format!("{api}/chat/completions"))
                .bearer_auth(DEMO_KEY)
                .header("content-type", "application/json")
                .body(stream_body("idlest", "hi"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            open.push(resp);
        }
        // After each pair, both targets hold as many streams: every pair has one of each
        // (a random pick would pass this with probability 1/32).
        let order: Vec<String> = open.iter().map(|r| model_of(r.headers())).collect();
        for pair in order.chunks(2) {
            assert_ne!(pair[0], pair[1], "{order:?}");
        }
        drop(open);
        set_faults(&stack.mock_url, &json!([])).unwrap();

        // Cost: the cheapest model by the provider's price table, whatever the weights;
        // when it fails, the dearer one takes over.
        for _ in 0..10 {
            let (_, h, _) = post(api, Some(DEMO_KEY), &chat_body("cheapest", "hi")).await;
            assert_eq!(model_of(&h), "m-cheap");
        }
        set_faults(
            &stack.mock_url,
            &json!([{"model": "m-cheap", "status": 500}]),
        )
        .unwrap();
        let (status, h, _) = post(api, Some(DEMO_KEY), &chat_body("cheapest", "hi")).await;
        assert_eq!(status, 200);
        assert_eq!(model_of(&h), "m-dear");
    })
    .await;
}

/// A route whose only target is a provider process that dies while a few hundred
/// requests are in flight: every request succeeds on the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_provider_under_load_loses_no_request() {
    let stack = Stack::start().unwrap();
    let (mut doomed, doomed_url) = start_mock("mock-doomed", stack.dir.path()).unwrap();
    // Slow answers, so that many requests are in flight at the provider when it dies.
    set_faults(&doomed_url, &json!([{"latency_ms": 400}])).unwrap();
    stack
        .write_manifest(
            "doomed.yaml",
            &format!(
                r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: doomed
spec:
  type: openai
  endpoint: {doomed_url}/v1
  credentials:
    - secretRef:
        name: openai-primary-key
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: resilient
spec:
  match:
    models: ["resilient"]
  targets:
    - provider: doomed
      model: gpt-4o
  fallbacks:
    - provider: openai-secondary
      model: gpt-4o-mini
  timeouts:
    firstToken: 2s
"#
            ),
        )
        .unwrap();
    with_logs(&stack, async {
        let api = stack.api().to_string();
        until_served(&api, DEMO_KEY, "resilient", Duration::from_secs(5)).await;
        let http = reqwest::Client::new();
        let total = 300;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let http = http.clone();
            let api = api.clone();
            tasks.spawn(async move {
                // Spread over ~600 ms: sent before the kill (in flight when it comes) and
                // after it.
                tokio::time::sleep(Duration::from_millis(i as u64 * 2)).await;
                let stream = i % 3 == 0;
                let body = if stream {
                    stream_body("resilient", &format!("request {i}"))
                } else {
                    chat_body("resilient", &format!("request {i}"))
                };
                let resp = http
                    .post(format!("{api}/chat/completions"))
                    .bearer_auth(DEMO_KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let provider = header(resp.headers(), "x-tollgate-provider").to_string();
                let text = resp.text().await.unwrap();
                let expected = format!("Mock reply to: request {i}");
                let ok = if stream {
                    let data = sse_data(&text);
                    data.last().is_some_and(|d| d == "[DONE]") && stream_content(&data) == expected
                } else {
                    serde_json::from_str::<Value>(&text)
                        .is_ok_and(|v| v["choices"][0]["message"]["content"] == expected)
                };
                (status, ok, provider, text)
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        doomed.kill();
        let mut by_provider: HashMap<String, usize> = HashMap::new();
        while let Some(r) = tasks.join_next().await {
            let (status, ok, provider, text) = r.unwrap();
            assert_eq!(status, 200, "{text}");
            assert!(ok, "{text}");
            *by_provider.entry(provider).or_default() += 1;
        }
        // None failed. The provider answers after 400 ms and dies at 250 ms, so (unless the
        // kill comes late) every request is answered by the fallback.
        assert_eq!(by_provider.values().sum::<usize>(), total);
        // The kill caught requests in flight at the provider (reset, then the fallback),
        // not only ones sent after it (refused, until the target is ejected after five):
        // about 125 are in flight at 250 ms.
        let broken = Stack::metric(
            &stack.dataplanes[0].admin,
            "tollgate_upstream_attempts_total",
            &[("route", "default/resilient"), ("outcome", "connect-error")],
        )
        .unwrap();
        eprintln!("attempts broken by the kill: {broken}; answered by: {by_provider:?}");
        assert!(broken >= 50.0, "{broken}");
        assert!(
            by_provider
                .get("default/openai-secondary")
                .is_some_and(|n| *n > 100),
            "{by_provider:?}"
        );
    })
    .await;
}

/// `streaming.continueOnFailure` and keep-alives, seen raw and through the official
/// OpenAI Python SDK.
#[test]
fn broken_streams_continue_and_slow_ones_keep_alive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = rt.block_on(stack());
    set_faults(
        &stack.mock_url,
        &json!([
            // The first target breaks its stream half way; the second answers whole.
            {"model": "m-cut", "fail": "cut", "chunks": 10, "chunk_delay_ms": 30},
            {"model": "m-whole", "chunks": 10},
            {"model": "m-slow", "latency_ms": 700},
            {"model": "m-slow-fail", "latency_ms": 700, "status": 503},
        ]),
    )
    .unwrap();
    let expected = format!("Mock reply to: continue this please{}", " more".repeat(4));
    rt.block_on(with_logs(&stack, async {
        let api = stack.api();
        let (status, h, v) = post(
            api,
            Some(DEMO_KEY),
            &stream_body("continued", "continue this please"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-tollgate-model"), "m-cut");
        let data = sse_data(v.as_str().unwrap());
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(stream_content(&data), expected);
        assert!(
            chunks.iter().all(|c| c["id"] == chunks[0]["id"]),
            "{chunks:?}"
        );
        assert!(
            chunks.iter().all(|c| c.get("error").is_none()),
            "{chunks:?}"
        );
        // The second target was asked to continue the partial answer.
        let requests = stack.upstream_requests().unwrap();
        let resumed = requests
            .iter()
            .rfind(|r| r["body"]["model"] == "m-whole")
            .unwrap();
        let prefill = resumed["body"]["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap();
        assert_eq!(prefill["role"], "assistant");
        let partial = prefill["content"].as_str().unwrap();
        assert!(
            !partial.is_empty() && partial.len() < expected.len() && expected.starts_with(partial),
            "{partial:?}"
        );

        // A slow first byte: keep-alive comments, then the answer.
        let t = Instant::now();
        let (status, _, v) = post(api, Some(DEMO_KEY), &stream_body("patient", "hi")).await;
        assert_eq!(status, 200);
        let text = v.as_str().unwrap();
        assert!(text.matches(": keep-alive").count() >= 2, "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert!(t.elapsed() >= Duration::from_millis(700));
        // When the attempts fail after the response began, an error event ends it.
        let (status, _, v) = post(api, Some(DEMO_KEY), &stream_body("patient-fails", "hi")).await;
        assert_eq!(status, 200);
        let text = v.as_str().unwrap();
        assert!(text.contains(": keep-alive"), "{text}");
        let data = sse_data(text);
        let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "server_error", "{text}");
    }));
    run_python_on(
        stack,
        "streams_client.py",
        |s| s.api().to_string(),
        "streams ok",
    );
}

/// A provider that accepts requests and never answers costs one attempt deadline, not
/// the request's timeout; a stream that goes silent is continued or ended within the idle
/// timeout. Driven with the official OpenAI Python SDK.
#[test]
fn hung_and_silent_providers_cost_one_deadline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = rt.block_on(stack());
    set_faults(
        &stack.mock_url,
        &json!([
            {"model": "m-hung", "latency_ms": 600000},
            {"model": "m-stall", "fail": "stall", "chunks": 10},
            {"model": "m-whole", "chunks": 10},
        ]),
    )
    .unwrap();
    let stdout = run_python(&stack, "deadlines_client.py", &[stack.api(), DEMO_KEY]);
    assert!(stdout.contains("deadlines ok"), "{stdout}");
    // Each hung request reached the hung target once and was not retried there.
    assert_eq!(calls_for(&stack, "m-hung"), 2);
    assert_eq!(calls_for(&stack, "m-stall"), 2);
    let timeouts = Stack::metric(
        &stack.dataplanes[0].admin,
        "tollgate_upstream_attempts_total",
        &[("model", "m-hung"), ("outcome", "timeout")],
    )
    .unwrap();
    assert_eq!(timeouts, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_pick_the_route() {
    let stack = stack().await;
    with_logs(&stack, async {
        let http = reqwest::Client::new();
        let ask = |step: Option<&'static str>| {
            let mut req = http
                .post(format!("{}/chat/completions", stack.api()))
                .bearer_auth(DEMO_KEY)
                .header("content-type", "application/json")
                .body(chat_body("agent", "next step?"));
            if let Some(step) = step {
                req = req.header("x-agent-step", step);
            }
            async move {
                let resp = req.send().await.unwrap();
                (
                    resp.status().as_u16(),
                    header(resp.headers(), "x-tollgate-route").to_string(),
                    header(resp.headers(), "x-tollgate-model").to_string(),
                )
            }
        };
        assert_eq!(
            ask(Some("planning")).await,
            (200, "default/agent-planning".into(), "m-fast".into())
        );
        for step in ["reasoning", "reason", "think"] {
            assert_eq!(
                ask(Some(step)).await,
                (
                    200,
                    "default/agent-reasoning".into(),
                    "claude-strong".into()
                ),
                "{step}"
            );
        }
        // Regular expressions match the whole value; no header, no route.
        assert_eq!(ask(Some("reasoning-more")).await.0, 404);
        assert_eq!(ask(Some("Planning")).await.0, 404);
        assert_eq!(ask(None).await.0, 404);
    })
    .await;
}
