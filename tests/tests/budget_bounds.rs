//! The ways around a budget, tried as a hostile tenant would, through the real binaries:
//! models without a price, attempts the provider billed but the gateway did not see end
//! (client gone, timeout, failover, a silent stream), reservations smaller than what the
//! provider may produce (`n`, the other max-tokens field, attachments, no limit at all),
//! endpoints outside the budget (token counting, MCP), and a flood of session ids.
//! Each test says what the ledger must hold afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::harness::{DEMO_KEY, Stack, http_get, set_faults};

mod common;
use common::*;

/// Providers priced at 1 USD per million tokens in and out (1,000 nano-USD a token)
/// unless said otherwise, routes to them, and keys. `MOCK` is the stack's mock-llm.
const MANIFEST: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: metered}
spec:
  type: openai
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: openai-primary-key}}]
  health: {consecutiveFailures: 1000, minimumRequests: 100000}
  models:
    - {name: m-priced, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
    - {name: m-hang, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
    - {name: m-slow, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
    - {name: m-stall, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
    # An Azure-style deployment name, priced as the model it serves.
    - {name: prod-chat, priceAs: gpt-4o-mini}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: compat}
spec:
  type: openai-compatible
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: openai-primary-key}}]
  compatibility: {maxTokensField: max_tokens}
  models:
    - {name: m-compat, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: selfhosted}
spec:
  type: openai-compatible
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: openai-primary-key}}]
  unpricedModels: free
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: metered}
spec:
  match: {models: [metered]}
  targets: [{provider: metered, model: m-priced}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: hung}
spec:
  match: {models: [hung]}
  targets: [{provider: metered, model: m-hang}]
  fallbacks: [{provider: metered, model: m-priced}]
  timeouts: {attempt: 400ms}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: hung-alone}
spec:
  match: {models: [hung-alone]}
  targets: [{provider: metered, model: m-hang}]
  timeouts: {attempt: 400ms}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: slow}
spec:
  match: {models: [slow]}
  targets: [{provider: metered, model: m-slow}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: silent}
spec:
  match: {models: [silent]}
  targets: [{provider: metered, model: m-stall}]
  timeouts: {idle: 400ms}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: compat}
spec:
  match: {models: [compat]}
  targets: [{provider: compat, model: m-compat}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: finetune}
spec:
  match: {models: [finetune]}
  targets: [{provider: metered, model: "ft:gpt-4o-mini-2024-07-18:acme::x1"}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: o1pro}
spec:
  match: {models: [o1pro]}
  targets: [{provider: metered, model: o1-pro}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: local}
spec:
  match: {models: [local]}
  targets: [{provider: selfhosted, model: llama-local}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: deploy}
spec:
  match: {models: [deploy]}
  targets: [{provider: metered, model: prod-chat}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata: {name: roomy}
spec:
  selector: {matchLabels: {team: roomy}}
  limit: {usd: 10}
  period: month
---
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata: {name: tiny}
spec:
  selector: {matchLabels: {team: tiny}}
  limit: {usd: 0.002}
  period: month
---
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata: {name: tokens-only}
spec:
  selector: {matchLabels: {team: tokens}}
  limit: {tokens: 1000000}
  period: month
---
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata: {name: hostile}
spec:
  selector: {matchLabels: {team: hostile}}
  limit: {usd: 0.05}
  period: month
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: hostile, labels: {team: hostile}}
spec: {secretRef: {name: hostile-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: hostile-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-hostile-key-0123456789}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: roomy, labels: {team: roomy}}
spec: {secretRef: {name: roomy-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: roomy-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-roomy-key-0123456789}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: tiny, labels: {team: tiny}}
spec: {secretRef: {name: tiny-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: tiny-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-tiny-key-0123456789}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: tokens, labels: {team: tokens}}
spec: {secretRef: {name: tokens-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: tokens-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-tokens-key-0123456789}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: off}
spec:
  secretRef: {name: off-key}
  disabled: true
---
apiVersion: v1
kind: Secret
metadata: {name: off-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-off-key-0123456789}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: agents}
spec:
  secretRef: {name: agents-key}
  session: {header: x-agent-session, maxTokens: 100000}
---
apiVersion: v1
kind: Secret
metadata: {name: agents-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-agents-key-0123456789}
"#;

/// Nano-USD a token at the test prices.
const NANO_PER_TOKEN: u64 = 1000;

async fn stack() -> Stack {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest(
            "bounds.yaml",
            &format!(
                "{}---\n{RPM_KEY_MANIFEST}",
                MANIFEST.replace("MOCK", &stack.mock_url)
            ),
        )
        .unwrap();
    until_served(stack.api(), DEMO_KEY, "metered", Duration::from_secs(10)).await;
    stack
}

/// The usage an answer reports, as (input, output).
fn usage_of(v: &Value) -> (u64, u64) {
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

fn body(model: &str, text: &str, extra: Value) -> String {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_without_a_price_are_refused_to_keys_limited_in_usd() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        // A fine-tune is not its base model: no price, so no answer for a USD budget.
        let (status, _, v) = post(
            api,
            Some("tg-roomy-key-0123456789"),
            &chat_body("finetune", "hi"),
        )
        .await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["error"]["code"], "model_price_unknown");
        assert_eq!(v["error"]["param"], "model");
        let anthropic = json!({"model": "finetune", "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, v) = post_to(
            api,
            "/messages",
            Some("tg-roomy-key-0123456789"),
            &anthropic.to_string(),
        )
        .await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "permission_error");
        // A key limited in tokens only can count it; a provider whose unpriced models are
        // declared free serves any key.
        let (status, _, v) = post(
            api,
            Some("tg-tokens-key-0123456789"),
            &chat_body("finetune", "hi"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (status, _, v) = post(
            api,
            Some("tg-roomy-key-0123456789"),
            &chat_body("local", "hi"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        // Exact names: o1-pro at its own price (150 / 600 USD per million), not o1's; a
        // deployment at the price of the model it serves (0.15 / 0.60).
        let (status, _, v) = post(
            api,
            Some("tg-roomy-key-0123456789"),
            &chat_body("o1pro", "hi there"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (i, o) = usage_of(&v);
        let mut expected = i * 150_000 + o * 600_000;
        let (status, _, v) = post(
            api,
            Some("tg-roomy-key-0123456789"),
            &chat_body("deploy", "hello"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (i, o) = usage_of(&v);
        expected += i * 150 + o * 600;
        spend_reaches(&stack, "budget/default/roomy", "usd", expected).await;
        // The route says so, where `kubectl get` and /status show it.
        let (_, text) = http_get(&format!("{}/status", stack.controller_admin)).unwrap();
        let status: Value = serde_json::from_str(&text).unwrap();
        let condition = |route: &str| -> Value {
            let object = status["objects"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["kind"] == "LLMRoute" && o["name"] == route)
                .unwrap_or_else(|| panic!("no route {route} in {text}"))
                .clone();
            object["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "PricesKnown")
                .cloned()
                .unwrap_or(Value::Null)
        };
        let c = condition("finetune");
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], "NoPrice");
        assert!(
            c["message"].as_str().unwrap().contains("ft:gpt-4o-mini"),
            "{c}"
        );
        assert_eq!(condition("o1pro")["status"], "True");
        assert_eq!(condition("local")["status"], "True");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_the_provider_billed_are_charged() {
    let stack = stack().await;
    set_faults(
        &stack.mock_url,
        &json!([
            {"model": "m-hang", "latency_ms": 600000},
            {"model": "m-slow", "latency_ms": 1500},
            {"model": "m-stall", "fail": "stall", "chunks": 10},
        ]),
    )
    .unwrap();
    with_logs(&stack, async {
        let api = stack.api();
        let limit = json!({"max_tokens": 50});
        // The worst case of a request: its bytes bound its input, max_tokens its output.
        let worst = |b: &str| (b.len() as u64 + 50) * NANO_PER_TOKEN;
        let mut expected = 0;

        // The client goes away before the JSON answer: the provider still answers (and
        // bills), so its worst case is charged.
        let gone = body("slow", "I will not wait", limit.clone());
        let client = reqwest::Client::new();
        let cut = client
            .post(format!("{api}/chat/completions"))
            .bearer_auth("tg-roomy-key-0123456789")
            .header("content-type", "application/json")
            .body(gone.clone())
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(cut.is_err(), "the client gave up first");
        expected += worst(&gone);

        // An attempt that times out (504): charged.
        let timed = body("hung-alone", "anyone?", limit.clone());
        let (status, _, v) = post(api, Some("tg-roomy-key-0123456789"), &timed).await;
        assert_eq!(status, 504, "{v}");
        expected += worst(&timed);

        // A timed-out attempt, then the fallback: both charged.
        let failover = body("hung", "second try", limit.clone());
        let (status, h, v) = post(api, Some("tg-roomy-key-0123456789"), &failover).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(h["x-tollgate-attempts"], "2");
        let (i, o) = usage_of(&v);
        expected += worst(&failover) + (i + o) * NANO_PER_TOKEN;

        // A stream that goes silent half way: the provider went on producing.
        let mut silent: Value =
            serde_json::from_str(&body("silent", "keep talking", limit.clone())).unwrap();
        silent["stream"] = json!(true);
        let silent = silent.to_string();
        let (status, _, v) = post(api, Some("tg-roomy-key-0123456789"), &silent).await;
        assert_eq!(status, 200);
        assert!(v.as_str().unwrap().contains("\"error\""), "{v}");
        expected += worst(&silent);

        spend_reaches(&stack, "budget/default/roomy", "usd", expected).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_bound_choices_limits_and_attachments() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        // The tiny budget holds 2,000 tokens' worth (0.002 USD).
        let ok = body("metered", "hi", json!({"max_tokens": 50}));
        let (status, _, v) = post(api, Some("tg-tiny-key-0123456789"), &ok).await;
        assert_eq!(status, 200, "{v}");
        let refused = |v: &Value| v["error"]["code"] == "budget_exceeded";
        // 100 choices of 50 tokens each: 5,000 tokens of output at most.
        let many = body("metered", "hi", json!({"max_tokens": 50, "n": 100}));
        let (status, _, v) = post(api, Some("tg-tiny-key-0123456789"), &many).await;
        assert!(status == 429 && refused(&v), "{status} {v}");
        // A server taking max_tokens receives the client's max_tokens, whatever
        // max_completion_tokens says.
        let both = body(
            "compat",
            "hi",
            json!({"max_tokens": 100000, "max_completion_tokens": 10}),
        );
        let before = stack.upstream_requests().unwrap().len();
        let (status, _, v) = post(api, Some("tg-tiny-key-0123456789"), &both).await;
        assert!(status == 429 && refused(&v), "{status} {v}");
        assert_eq!(stack.upstream_requests().unwrap().len(), before, "not sent");
        // Five images cost thousands of tokens each, however short their URLs.
        let images: Vec<Value> = (0..5)
            .map(|i| json!({"type": "image_url", "image_url": {"url": format!("https://img/{i}.png")}}))
            .collect();
        let pictured = json!({"model": "metered", "max_tokens": 10,
            "messages": [{"role": "user", "content": images}]});
        let (status, _, v) = post(api, Some("tg-tiny-key-0123456789"), &pictured.to_string()).await;
        assert!(status == 429 && refused(&v), "{status} {v}");
        // Limits that cannot be meant are the client's error.
        for absurd in [
            json!({"max_tokens": u64::MAX}),
            json!({"max_completion_tokens": 2_000_000}),
            json!({"n": 0}),
            json!({"n": 1000}),
        ] {
            let (status, _, v) =
                post(api, Some("tg-tiny-key-0123456789"), &body("metered", "hi", absurd.clone())).await;
            assert_eq!(status, 400, "{absurd}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        // A metered request with no limit gets the gateway's, so its worst case holds;
        // an unmetered key's request is sent as it came.
        let (status, _, _) = post(api, Some("tg-roomy-key-0123456789"), &chat_body("metered", "cap me")).await;
        assert_eq!(status, 200);
        let sent = stack.last_upstream_request().unwrap();
        assert_eq!(sent["body"]["max_completion_tokens"], 4096, "{sent}");
        let (status, _, _) = post(api, Some(DEMO_KEY), &chat_body("gpt-4o", "leave me")).await;
        assert_eq!(status, 200);
        let sent = stack.last_upstream_request().unwrap();
        assert!(sent["body"].get("max_completion_tokens").is_none(), "{sent}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counting_and_mcp_requests_are_governed() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        let count = |text: &str| {
            json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": text}]})
                .to_string()
        };
        // A disabled key counts nothing.
        let (status, _, v) = post_to(
            api,
            "/messages/count_tokens",
            Some("tg-off-key-0123456789"),
            &count("hi"),
        )
        .await;
        assert_eq!(status, 401, "{v}");
        // Token counting is a request like any other to a rate limit (two a minute).
        for _ in 0..2 {
            let (status, _, v) =
                post_to(api, "/messages/count_tokens", Some(RPM_KEY), &count("hi")).await;
            assert_eq!(status, 200, "{v}");
        }
        let (status, h, v) =
            post_to(api, "/messages/count_tokens", Some(RPM_KEY), &count("hi")).await;
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert!(h.contains_key("retry-after"));
        // And so is an MCP request, initialize included.
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}});
        let base = api.trim_end_matches("/v1");
        let (status, _, v) = post_with(
            base,
            "/mcp",
            Some(RPM_KEY),
            &[("accept", "application/json, text/event-stream")],
            &init.to_string(),
        )
        .await;
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["id"], 1);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Rate limit"),
            "{v}"
        );
        // A prompt the key's budget could not take is not counted either.
        let (status, _, v) = post_to(
            api,
            "/messages/count_tokens",
            Some("tg-tiny-key-0123456789"),
            &count("a few words"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let huge = "word ".repeat(500_000);
        let (status, _, v) = post_to(
            api,
            "/messages/count_tokens",
            Some("tg-tiny-key-0123456789"),
            &count(&huge),
        )
        .await;
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("tiny"),
            "{v}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_session_ids_leaves_other_keys_acknowledged() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api().to_string();
        // A session id the ledger would not keep is refused, not taken as no session.
        let (status, _, v) = post_with(
            &api,
            "/chat/completions",
            Some("tg-agents-key-0123456789"),
            &[("x-agent-session", "a/b")],
            &chat_body("metered", "hi"),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        // 1,100 distinct sessions from one key: the first 1,000 (the per-key cap) are
        // served, the rest refused.
        let mut tasks = Vec::new();
        for t in 0..20 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                for i in 0..55 {
                    let id = format!("run-{t}-{i}");
                    let (status, _, v) = post_with(
                        &api,
                        "/chat/completions",
                        Some("tg-agents-key-0123456789"),
                        &[("x-agent-session", id.as_str())],
                        &body("metered", "step", json!({"max_tokens": 5})),
                    )
                    .await;
                    match status {
                        200 => ok += 1,
                        429 => {
                            assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                            refused += 1;
                        }
                        other => panic!("{other}: {v}"),
                    }
                }
                (ok, refused)
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = t.await.unwrap();
            ok += o;
            refused += r;
        }
        assert_eq!(ok + refused, 1_100);
        assert_eq!(ok, 1_000, "{refused} refused");
        // Another key's usage is still counted and acknowledged.
        let (status, _, v) = post(
            &api,
            Some("tg-roomy-key-0123456789"),
            &chat_body("metered", "still here"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (i, o) = usage_of(&v);
        spend_reaches(
            &stack,
            "budget/default/roomy",
            "usd",
            (i + o) * NANO_PER_TOKEN,
        )
        .await;
        let admin = &stack.dataplanes[0].admin;
        eventually(Duration::from_secs(5), || async {
            Stack::metric(admin, "tollgate_usage_unacked_batches", &[]).unwrap() == 0.0
        })
        .await;
    })
    .await;
}

/// One hostile request: the way around the budget it tries, as a body, its route, and
/// whether the client gives up before the answer.
fn trick(n: usize, i: usize) -> (String, bool) {
    let text = format!("client {i} try {n}");
    let images: Vec<Value> = (0..2)
        .map(|k| json!({"type": "image_url", "image_url": {"url": format!("https://img/{k}")}}))
        .collect();
    match n % 6 {
        0 => (
            body("metered", &text, json!({"n": 8, "max_tokens": 20})),
            false,
        ),
        1 => (
            body(
                "compat",
                &text,
                json!({"max_tokens": 40, "max_completion_tokens": 5}),
            ),
            false,
        ),
        2 => (
            json!({"model": "metered", "max_tokens": 10,
                "messages": [{"role": "user", "content": images}]})
            .to_string(),
            false,
        ),
        3 => (body("slow", &text, json!({"max_tokens": 30})), true),
        4 => (body("hung-alone", &text, json!({"max_tokens": 30})), false),
        _ => (body("metered", &text, json!({})), false),
    }
}

/// Three dataplanes, 18 clients trying every way around one budget at once until it
/// refuses them: what is spent stays within the limit (the reservations are true bounds,
/// so the documented overshoot is zero), and every answer and timeout the clients saw is
/// in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dataplanes_of_hostile_clients_stay_within_the_limit() {
    let mut stack = stack().await;
    stack.add_dataplane().unwrap();
    stack.add_dataplane().unwrap();
    for d in &stack.dataplanes {
        until_served(&d.api, DEMO_KEY, "metered", Duration::from_secs(10)).await;
    }
    set_faults(
        &stack.mock_url,
        &json!([
            {"model": "m-hang", "latency_ms": 600000},
            {"model": "m-slow", "latency_ms": 300},
        ]),
    )
    .unwrap();
    with_logs(&stack, async {
        let limit: u64 = 50_000_000; // 0.05 USD: 50,000 tokens
        let apis: Vec<String> = stack.dataplanes.iter().map(|d| d.api.clone()).collect();
        let mut tasks = Vec::new();
        for i in 0..18 {
            let api = apis[i % 3].clone();
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                // What this client knows was charged: answers' usage, timeouts' worst case.
                let (mut known, mut refusals_in_a_row) = (0u64, 0);
                for n in (i % 6).. {
                    let (text, give_up) = trick(n, i);
                    let mut req = http
                        .post(format!("{api}/chat/completions"))
                        .bearer_auth("tg-hostile-key-0123456789")
                        .header("content-type", "application/json")
                        .body(text.clone());
                    if give_up {
                        req = req.timeout(Duration::from_millis(100));
                    }
                    let Ok(resp) = req.send().await else {
                        continue;
                    };
                    let status = resp.status().as_u16();
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    match status {
                        200 => {
                            let (i, o) = usage_of(&v);
                            known += (i + o) * NANO_PER_TOKEN;
                            refusals_in_a_row = 0;
                        }
                        504 => {
                            known += (text.len() as u64 + 30) * NANO_PER_TOKEN;
                            refusals_in_a_row = 0;
                        }
                        429 => {
                            assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                            refusals_in_a_row += 1;
                            if refusals_in_a_row >= 6 {
                                break;
                            }
                        }
                        other => panic!("{other}: {v}"),
                    }
                    assert!(n < 3000, "the budget never ran out");
                }
                known
            }));
        }
        let mut known = 0;
        for t in tasks {
            known += t.await.unwrap();
        }
        // Every dataplane's usage has arrived when the spend stops moving.
        let spent = settled_spend(&stack, "budget/default/hostile").await;
        eprintln!("hostile clients: spent {spent} of {limit} nano-USD; they saw {known} charged");
        assert!(spent <= limit, "spent {spent} of {limit}");
        assert!(
            known <= spent,
            "the clients saw {known} charged, the ledger has {spent}"
        );
        // The budget was used, not refused from the start.
        assert!(spent > limit / 2, "spent only {spent} of {limit}");
    })
    .await;
}

/// Web searches are billed per search: a metered request's web search tool without a
/// bound gets one, what it reserves includes the searches, and the ledger charges each
/// search the provider reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_searches_are_bounded_and_charged() {
    let stack = stack().await;
    with_logs(&stack, async {
        let api = stack.api();
        let search = json!({"model": "claude-haiku-4-5", "max_tokens": 20,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "what happened today?"}]});
        let (status, _, v) = post_to(
            api,
            "/messages",
            Some("tg-roomy-key-0123456789"),
            &search.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let sent = stack.last_upstream_request().unwrap();
        assert_eq!(sent["body"]["tools"][0]["max_uses"], 5, "{sent}");
        let u = &v["usage"];
        assert_eq!(u["server_tool_use"]["web_search_requests"], 5, "{v}");
        // Claude Haiku 4.5: 1 USD per million in, 5 out; 0.01 USD a search.
        let (i, o) = (
            u["input_tokens"].as_u64().unwrap(),
            u["output_tokens"].as_u64().unwrap(),
        );
        let mut expected = i * 1_000 + o * 5_000 + 5 * 10_000_000;
        spend_reaches(&stack, "budget/default/roomy", "usd", expected).await;
        // The same, streamed: the searches come in the last `message_delta`.
        let mut streamed = search.clone();
        streamed["stream"] = json!(true);
        let (status, _, v) = post_to(
            api,
            "/messages",
            Some("tg-roomy-key-0123456789"),
            &streamed.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let events: Vec<Value> = v
            .as_str()
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        let input = events
            .iter()
            .find_map(|e| e["message"]["usage"]["input_tokens"].as_u64())
            .unwrap();
        let delta = events
            .iter()
            .rfind(|e| e["type"] == "message_delta")
            .unwrap();
        assert_eq!(delta["usage"]["server_tool_use"]["web_search_requests"], 5);
        let output = delta["usage"]["output_tokens"].as_u64().unwrap();
        expected += input * 1_000 + output * 5_000 + 5 * 10_000_000;
        spend_reaches(&stack, "budget/default/roomy", "usd", expected).await;
        // An unmetered key's tool is sent as it came.
        let (status, _, _) = post_to(api, "/messages", Some(DEMO_KEY), &search.to_string()).await;
        assert_eq!(status, 200);
        let sent = stack.last_upstream_request().unwrap();
        assert!(sent["body"]["tools"][0].get("max_uses").is_none(), "{sent}");
        // The tiny budget (0.002 USD) cannot take five searches (0.05 USD).
        let (status, _, v) = post_to(
            api,
            "/messages",
            Some("tg-tiny-key-0123456789"),
            &search.to_string(),
        )
        .await;
        assert_eq!(status, 429, "{v}");
    })
    .await;
}
