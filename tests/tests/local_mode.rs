//! End to end in local mode: mock-llm, the controller on a manifests directory, and a
//! dataplane, as real processes on loopback, driven by real OpenAI clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_openai::error::OpenAIError;
use futures_util::StreamExt;
use serde_json::Value;
use tollgate_tests::harness::{DEMO_KEY, Stack, http_get};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_openai_client_json_and_stream() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        let c = client(stack.api(), DEMO_KEY);
        let r = c
            .chat()
            .create(request("gpt-4o", "hello from rust", false))
            .await
            .unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert_eq!(
            r.choices[0].message.content.as_deref(),
            Some("Mock reply to: hello from rust")
        );
        let usage = r.usage.unwrap();
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens + usage.completion_tokens
        );

        // Streaming: every content chunk arrives, then the usage chunk.
        let mut stream = c
            .chat()
            .create_stream(request("gpt-4o-mini", "count [mock chunks=20]", true))
            .await
            .unwrap();
        let (mut pieces, mut usage) = (Vec::new(), None);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            if let Some(text) = chunk.choices.first().and_then(|c| c.delta.content.clone())
                && !text.is_empty()
            {
                pieces.push(text);
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
        }
        assert_eq!(pieces.len(), 20, "{pieces:?}");
        assert_eq!(usage.unwrap().completion_tokens, 20);

        // The alias route sends gpt-4o upstream, and the provider got its own key.
        let r = c
            .chat()
            .create(request("smart", "alias", false))
            .await
            .unwrap();
        assert_eq!(r.model, "gpt-4o");
        let requests = stack.upstream_requests().unwrap();
        let last = requests.last().unwrap();
        assert_eq!(last["body"]["model"], "gpt-4o");
        assert_eq!(last["headers"]["authorization"], "Bearer sk-mock-primary");
        assert!(
            requests
                .iter()
                .all(|r| r["headers"]["authorization"] != format!("Bearer {DEMO_KEY}"))
        );

        let models = c.models().list().await.unwrap();
        let mut ids: Vec<_> = models.data.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "claude-haiku-4-5",
                "claude-sonnet-4-5",
                "gpt-4o",
                "gpt-4o-mini",
                "smart",
                "text-embedding-3-small"
            ]
        );
    })
    .await;
}

/// A stream is metered even when the client did not ask for usage: the gateway asks the
/// provider for the usage chunk, counts it, and does not pass it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_metered_without_the_client_asking_for_usage() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        let c = client(stack.api(), DEMO_KEY);
        let mut stream = c
            .chat()
            .create_stream(request("smart", "meter me", false))
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(
                chunk.usage.is_none(),
                "usage chunk reached the client: {chunk:?}"
            );
            if let Some(t) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
                text += &t;
            }
        }
        assert_eq!(text, "Mock reply to: meter me");
        let last = &stack.last_upstream_request().unwrap();
        assert_eq!(
            last["body"]["stream_options"]["include_usage"], true,
            "{last}"
        );
        // The request is recorded when its body ends, just after the client's last byte.
        let admin = &stack.dataplanes[0].admin;
        let labels = [("route", "default/smart"), ("kind", "output")];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let output = loop {
            let n = Stack::metric(admin, "tollgate_tokens_total", &labels).unwrap_or(0.0);
            if n > 0.0 || std::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(output, 5.0, "5 pieces, one token each");
        let input = Stack::metric(
            admin,
            "tollgate_tokens_total",
            &[("route", "default/smart"), ("kind", "input")],
        )
        .unwrap();
        assert!(input > 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_forwarded_as_they_arrive() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        // 10 chunks, 150 ms apart: the first must arrive long before the last is sent.
        let c = client(stack.api(), DEMO_KEY);
        let started = Instant::now();
        let mut stream = c
            .chat()
            .create_stream(request(
                "gpt-4o",
                "slow [mock chunks=10 chunk_delay_ms=150]",
                false,
            ))
            .await
            .unwrap();
        let mut arrivals = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
            arrivals.push(started.elapsed());
        }
        assert!(arrivals.len() >= 10, "{arrivals:?}");
        let first = arrivals[0];
        let last = *arrivals.last().unwrap();
        assert!(last >= Duration::from_millis(1500), "{arrivals:?}");
        assert!(
            first < Duration::from_millis(700),
            "first chunk held back: {arrivals:?}"
        );
    })
    .await;
}

/// Runs one of tests/python/*.py against a fresh stack; it asserts itself.
fn run_python(script: &str, base_url: impl Fn(&Stack) -> String, ok_line: &str) {
    run_python_on(Stack::start().unwrap(), script, base_url, ok_line);
}

#[test]
fn python_openai_sdk() {
    run_python(
        "openai_client.py",
        |s| s.api().to_string(),
        "python openai sdk: ok",
    );
}

#[test]
fn python_anthropic_sdk_and_translation() {
    run_python(
        "anthropic_client.py",
        |s| s.api().trim_end_matches("/v1").to_string(),
        "python anthropic sdk: ok",
    );
}

/// Both SDKs, sync and async, streaming and not, with a tool-call round trip, against a
/// model of every provider type, each speaking its own wire format behind mock-llm.
#[test]
fn python_sdks_on_every_provider_type() {
    run_python_on(
        Stack::start_all_providers().unwrap(),
        "providers_client.py",
        |s| s.api().trim_end_matches("/v1").to_string(),
        "python providers: ok",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_provider_gets_its_own_headers_and_the_translated_request() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        let c = client(stack.api(), DEMO_KEY);
        let r = c
            .chat()
            .create(request("claude-haiku-4-5", "translated", false))
            .await
            .unwrap();
        assert_eq!(
            r.choices[0].message.content.as_deref(),
            Some("Mock reply to: translated")
        );
        let last = &stack.last_upstream_request().unwrap();
        assert_eq!(last["path"], "/v1/messages");
        assert_eq!(last["headers"]["x-api-key"], "sk-ant-mock");
        assert_eq!(last["headers"]["anthropic-version"], "2023-06-01");
        assert!(last["headers"].get("authorization").is_none(), "{last}");
        assert_eq!(last["body"]["model"], "claude-haiku-4-5");
        assert_eq!(last["body"]["max_tokens"], 4096);
        assert_eq!(last["body"]["messages"][0]["content"], "translated");
        // An Anthropic client on an OpenAI model is translated both ways.
        let resp = reqwest::Client::new()
            .post(format!("{}/messages", stack.api()))
            .header("x-api-key", DEMO_KEY)
            .body(
                r#"{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":"x"}]}"#,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "Mock reply to: x");
        // Without max_tokens: Anthropic's own 400, in its format.
        let resp = reqwest::Client::new()
            .post(format!("{}/messages", stack.api()))
            .header("x-api-key", DEMO_KEY)
            .body(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_targets_share_traffic() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        // The quick start's `chat` route weighs openai-primary 3 and openai-secondary 1.
        let n = 400;
        let mut primary = 0;
        for _ in 0..n {
            let (status, headers, v) =
                post(stack.api(), Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
            assert_eq!(status, 200, "{v}");
            match headers["x-tollgate-provider"].to_str().unwrap() {
                "default/openai-primary" => primary += 1,
                "default/openai-secondary" => {}
                other => panic!("unexpected provider {other}"),
            }
        }
        // Binomial(400, 0.75): mean 300, sd 8.7; five sd either side.
        assert!(
            (257..=343).contains(&primary),
            "primary took {primary} of {n}"
        );
        // Each account was called with its own key.
        let requests = stack.upstream_requests().unwrap();
        let secondary_calls = requests
            .iter()
            .filter(|r| r["headers"]["authorization"] == "Bearer sk-mock-secondary")
            .count();
        assert_eq!(secondary_calls, n - primary);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_in_openai_format() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        let api = stack.api();
        let cases: Vec<(Option<&str>, String, u16, Option<&str>)> = vec![
            (
                None,
                chat_body("gpt-4o", "hi"),
                401,
                Some("invalid_api_key"),
            ),
            (
                Some("tg-wrong"),
                chat_body("gpt-4o", "hi"),
                401,
                Some("invalid_api_key"),
            ),
            (
                Some(DEMO_KEY),
                chat_body("gpt-9", "hi"),
                404,
                Some("model_not_found"),
            ),
            (Some(DEMO_KEY), "{\"model\": ".into(), 400, None),
            (Some(DEMO_KEY), "{\"messages\": []}".into(), 400, None),
            (
                Some(DEMO_KEY),
                chat_body("gpt-4o", "[mock status=500]"),
                502,
                Some("upstream_error"),
            ),
            (
                Some(DEMO_KEY),
                chat_body("gpt-4o", "[mock fail=reset]"),
                502,
                Some("upstream_unreachable"),
            ),
        ];
        for (key, body, status, code) in cases {
            let (got, _, v) = post(api, key, &body).await;
            assert_eq!(got, status, "{body}: {v}");
            assert_eq!(v["error"]["code"].as_str(), code, "{body}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
            assert!(v["error"]["type"].is_string(), "{v}");
        }
        // Upstream messages are checked: an empty messages array is the provider's 400.
        let (got, _, v) = post(api, Some(DEMO_KEY), r#"{"model":"gpt-4o","messages":[]}"#).await;
        assert_eq!(got, 400);
        assert_eq!(v["error"]["param"], "messages");
        // The provider's own client errors pass through with their status and headers
        // (both targets of the route said 429; the last answer is the client's).
        let (got, headers, v) = post(
            api,
            Some(DEMO_KEY),
            &chat_body("gpt-4o", "[mock status=429 retry_after=7]"),
        )
        .await;
        assert_eq!(got, 429);
        assert_eq!(headers["retry-after"], "7");
        assert_eq!(headers["x-tollgate-attempts"], "2");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        // Both keys are out for the 7 seconds the provider asked: the gateway says so
        // itself, without calling the provider.
        let sent = stack.upstream_requests().unwrap().len();
        let (got, _, v) = post(api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(got, 429, "{v}");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(stack.upstream_requests().unwrap().len(), sent);

        // The SDK sees the same errors.
        let err = client(api, "tg-wrong")
            .chat()
            .create(request("gpt-4o", "hi", false))
            .await
            .unwrap_err();
        let OpenAIError::ApiError(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.status_code.as_u16(), 401);

        // Requests are counted by route, provider, model and status.
        let admin = &stack.dataplanes[0].admin;
        let ok = Stack::metric(
            admin,
            "tollgate_requests_total",
            &[("route", "default/chat"), ("status", "502")],
        )
        .unwrap();
        assert_eq!(ok, 2.0);
        let not_found =
            Stack::metric(admin, "tollgate_requests_total", &[("status", "404")]).unwrap();
        assert_eq!(not_found, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_uses_only_its_allowed_models() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        stack
            .write_manifest(
                "mini.yaml",
                "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: mini\nspec:\n  secretRef:\n    name: mini-key\n  models: [\"gpt-4o-mini\", \"claude-*\"]\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: mini-key\n  labels:\n    tollgate.dev/credential: \"true\"\nstringData:\n  key: tg-mini-key-0123456789\n",
            )
            .unwrap();
        let api = stack.api().to_string();
        let api_ref = &api;
        until_served(api_ref, "tg-mini-key-0123456789", "gpt-4o-mini", Duration::from_secs(2)).await;
        let (status, _, v) = post(&api, Some("tg-mini-key-0123456789"), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert_eq!(v["error"]["type"], "permission_error");
        let models = client(&api, "tg-mini-key-0123456789").models().list().await.unwrap();
        let mut ids: Vec<_> = models.data.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o-mini"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_gives_504() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        stack
            .write_manifest(
                "timeout.yaml",
                "apiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: hurried\nspec:\n  match:\n    models: [hurried]\n  targets:\n    - provider: openai-primary\n      model: gpt-4o\n  timeouts:\n    request: 300ms\n",
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _, v) = post(stack.api(), Some(DEMO_KEY), &chat_body("hurried", "[mock latency_ms=2000]")).await;
            if status == 504 {
                assert_eq!(v["error"]["code"], "upstream_timeout");
                break;
            }
            assert_eq!(status, 404, "{v}");
            assert!(Instant::now() < deadline, "route never applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

const NEW_KEY: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata:
  name: carol
spec:
  secretRef:
    name: carol-key
---
apiVersion: v1
kind: Secret
metadata:
  name: carol-key
  labels: {tollgate.dev/credential: 'true'}
stringData:
  key: tg-carol-secret-key-0123456789
";

const BAD_ROUTE: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: broken
spec:
  match:
    models: [broken-model]
  strategy: round-robin
  targets:
    - provider: openai-primary
";

async fn status_of(api: &str, key: &str) -> u16 {
    post(api, Some(key), &chat_body("gpt-4o", "hi")).await.0
}

fn find_object(admin: &str, name: &str) -> Option<Value> {
    let (_, body) = http_get(&format!("{admin}/status")).ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
        .cloned()
}

#[tokio::test(flavor = "current_thread")]
async fn manifests_are_watched() {
    let stack = Stack::start().unwrap();
    with_logs(&stack, async {
        let admin = stack.controller_admin.clone();
        let api = &stack.api().to_string();
        let sent_before = Stack::metric(&admin, "tollgate_xds_resources_sent_total", &[]).unwrap();
        assert_eq!(status_of(api, "tg-carol-secret-key-0123456789").await, 401);

        // A new key works within 2 s, and only that one resource is sent.
        stack.write_manifest("carol.yaml", NEW_KEY).unwrap();
        let took = eventually(Duration::from_secs(2), move || async move {
            status_of(api, "tg-carol-secret-key-0123456789").await == 200
        })
        .await;
        eprintln!("new key served after {took:?}");
        let sent =
            Stack::metric(&admin, "tollgate_xds_resources_sent_total", &[]).unwrap() - sent_before;
        assert_eq!(sent, 1.0, "a one-key change must send one resource");
        assert_eq!(
            Stack::metric(
                &admin,
                "tollgate_xds_resources_sent_total",
                &[("type", "tollgate.dev/v1alpha1/VirtualKey")]
            )
            .unwrap(),
            2.0,
            "demo key at start, carol now"
        );

        // Deleting it makes it fail with 401.
        stack.remove_manifest("carol.yaml").unwrap();
        eventually(Duration::from_secs(2), move || async move {
            status_of(api, "tg-carol-secret-key-0123456789").await == 401
        })
        .await;

        // An invalid route is reported with its file and reason; everything else works.
        stack.write_manifest("broken.yaml", BAD_ROUTE).unwrap();
        let admin_ref = &admin;
        eventually(Duration::from_secs(2), move || async move {
            find_object(admin_ref, "broken").is_some()
        })
        .await;
        let report = find_object(&admin, "broken").unwrap();
        assert_eq!(report["origin"], "broken.yaml#1");
        let accepted = &report["conditions"][0];
        assert_eq!(accepted["type"], "Accepted");
        assert_eq!(accepted["status"], "False");
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .contains("spec.strategy: Unsupported value: \"round-robin\""),
            "{accepted}"
        );
        assert_eq!(status_of(api, DEMO_KEY).await, 200);
        let (status, _, _) = post(stack.api(), Some(DEMO_KEY), &chat_body("smart", "hi")).await;
        assert_eq!(status, 200);
        let (status, _, _) = post(
            stack.api(),
            Some(DEMO_KEY),
            &chat_body("broken-model", "hi"),
        )
        .await;
        assert_eq!(status, 404);
        let log = stack.controller.as_ref().unwrap().log_text();
        assert!(
            log.contains("broken.yaml#1") && log.contains("round-robin"),
            "no log line for the bad file:\n{log}"
        );

        // Every accepted object is Programmed: the dataplane ACKed its current version.
        let (_, body) = http_get(&format!("{admin}/status")).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        for o in v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["name"] != "broken")
        {
            let programmed = o["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Programmed")
                .unwrap();
            assert_eq!(programmed["status"], "True", "{o}");
            assert_eq!(programmed["message"], "applied by 1 of 1 dataplanes");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_survives_controller_restart_without_resending() {
    let mut stack = Stack::start().unwrap();
    let api = stack.api().to_string();
    let (status, _, _) = post(&api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
    assert_eq!(status, 200);
    stack.controller.as_mut().unwrap().kill();
    // The last config keeps serving.
    for _ in 0..5 {
        let (status, _, v) = post(&api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(status, 200, "{v}\n{}", stack.logs());
    }
    // The token is rotated meanwhile, as the kubelet rotates a projected token: the new
    // controller accepts only the new one, which the dataplane reads when it reconnects.
    std::fs::write(&stack.token_file, "rotated-token\n").unwrap();
    // A new controller: the dataplane resumes with the versions it holds; nothing is resent.
    stack.start_controller().unwrap();
    let admin = stack.controller_admin.clone();
    eventually(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            Stack::metric(&admin, "tollgate_xds_connected_dataplanes", &[]).unwrap_or(0.0) == 1.0
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Stack::metric(&admin, "tollgate_xds_resources_sent_total", &[]).unwrap();
    let responses = Stack::metric(&admin, "tollgate_xds_responses_total", &[]).unwrap();
    assert_eq!(sent, 0.0, "{}", stack.logs());
    assert_eq!(responses, 6.0, "one (empty) response per type");
    let (status, _, _) = post(&api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams() {
    let mut stack = Stack::start().unwrap();
    let api = stack.api().to_string();
    let admin = stack.dataplanes[0].admin.clone();
    let c = client(&api, DEMO_KEY);
    // A stream of 10 chunks, 100 ms apart.
    let mut stream = c
        .chat()
        .create_stream(request(
            "gpt-4o",
            "drain [mock chunks=10 chunk_delay_ms=100]",
            false,
        ))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.choices.is_empty());
    stack.dataplanes[0].process.terminate().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = http_get(&format!("{admin}/readyz")).unwrap();
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    // The open stream runs to its end.
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(t) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text += &t;
        }
    }
    assert!(text.starts_with("Mock reply to: drain"), "{text}");
    assert_eq!(
        text.split_whitespace().count(),
        10,
        "every chunk arrived: {text}"
    );
    let exit = stack.dataplanes[0]
        .process
        .wait_exit(Duration::from_secs(5))
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", stack.logs());
    // New connections are refused once it has gone.
    assert!(reqwest::get(format!("{api}/models")).await.is_err());
}

#[test]
fn config_stream_requires_the_token() {
    let mut stack = Stack::start().unwrap();
    std::fs::write(&stack.token_file, "wrong-token\n").unwrap();
    let (api_port, admin_port) = (
        tollgate_tests::harness::free_port().unwrap(),
        tollgate_tests::harness::free_port().unwrap(),
    );
    let args: Vec<String> = vec![
        "--controller".into(),
        format!("https://127.0.0.1:{}", stack.xds_port),
        "--controller-ca".into(),
        tollgate_tests::harness::controller_ca(stack.dir.path()),
        "--listen".into(),
        format!("127.0.0.1:{api_port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--token-file".into(),
        stack.token_file.display().to_string(),
    ];
    let dp = tollgate_tests::harness::Process::start(
        "intruder",
        &tollgate_tests::harness::bin("tollgate-dataplane").unwrap(),
        &args,
        stack.dir.path(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = http_get(&format!("http://127.0.0.1:{admin_port}/readyz")).unwrap();
    assert_eq!(
        status, 503,
        "a dataplane with a wrong token must get no config"
    );
    assert!(
        dp.log_text()
            .contains("a valid dataplane token is required"),
        "{}",
        dp.log_text()
    );
    // The controller says so too, with where from, and never the token.
    let controller_log = stack.controller.as_ref().unwrap().log_text();
    assert!(
        controller_log.contains("a config stream client was refused"),
        "{controller_log}"
    );
    assert!(!controller_log.contains("wrong-token"), "{controller_log}");
    let refusal = controller_log
        .lines()
        .find(|l| l.contains("was refused"))
        .unwrap_or_default();
    assert!(refusal.contains("127.0.0.1:"), "where from: {refusal}");
    stack.dataplanes.clear();
}

/// Embeddings reach every provider type in its own API, and come back as OpenAI's list
/// with the provider's vectors unchanged, in either encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_on_every_provider_type() {
    use base64::Engine;
    use tollgate_tests::mock::embeddings::vector;
    let stack = Stack::start_all_providers().unwrap();
    with_logs(&stack, async {
        // model, provider, upstream path ends with, dimensions sent, expected prompt tokens
        let cases = [
            (
                "embed-openai",
                "default/openai-primary",
                "/embeddings",
                Some(256),
                3,
            ),
            ("embed-azure", "default/azure", "/embeddings", Some(256), 3),
            (
                "gemini-embedding-001",
                "default/gemini",
                ":batchEmbedContents",
                Some(256),
                0,
            ),
            ("embed-vertex", "default/vertex", ":predict", Some(256), 3),
            ("embed-titan", "default/bedrock", "/invoke", Some(256), 3),
            ("embed-cohere", "default/bedrock-apikey", "/invoke", None, 3),
        ];
        for (model, provider, path, dims, tokens) in cases {
            let mut body = serde_json::json!({"model": model, "input": ["alpha beta", "gamma"]});
            if let Some(d) = dims {
                body["dimensions"] = d.into();
            }
            let (status, headers, v) = post_to(
                stack.api(),
                "/embeddings",
                Some(DEMO_KEY),
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{model}: {v}");
            assert_eq!(headers["x-tollgate-provider"], provider, "{model}");
            let n = dims.unwrap_or(1024);
            for (i, text) in ["alpha beta", "gamma"].iter().enumerate() {
                let got: Vec<f32> = v["data"][i]["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got, vector(text, n), "{model} input {i}");
                assert_eq!(v["data"][i]["index"], i, "{model}");
            }
            assert_eq!(v["object"], "list");
            assert_eq!(
                v["usage"]["prompt_tokens"], tokens,
                "{model}: {}",
                v["usage"]
            );
            let last = &stack.last_upstream_request().unwrap();
            assert!(
                last["path"].as_str().unwrap().ends_with(path),
                "{model}: {}",
                last["path"]
            );

            // base64, as the OpenAI SDKs ask by default.
            body["encoding_format"] = "base64".into();
            let (status, _, v) = post_to(
                stack.api(),
                "/embeddings",
                Some(DEMO_KEY),
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{model}: {v}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["data"][1]["embedding"].as_str().unwrap())
                .unwrap();
            let got: Vec<f32> = bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(got, vector("gamma", n), "{model} base64");
        }

        // What a target cannot do is a 400 in OpenAI's format.
        for (body, says) in [
            (
                r#"{"model":"embed-titan","input":"a","dimensions":7}"#,
                "256, 512 or 1024",
            ),
            (
                r#"{"model":"vertex-claude","input":"a"}"#,
                "no embeddings API",
            ),
            (
                r#"{"model":"gemini-embedding-001","input":[1,2,3]}"#,
                "token arrays",
            ),
            (
                r#"{"model":"embed-cohere","input":"a","dimensions":8}"#,
                "fixed size",
            ),
            (
                r#"{"model":"embed-vertex","input":"a","task":"x"}"#,
                "Unrecognized",
            ),
        ] {
            let (status, _, v) = post_to(stack.api(), "/embeddings", Some(DEMO_KEY), body).await;
            assert_eq!(status, 400, "{body}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{body}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
        }
        let (status, _, _) = post_to(
            stack.api(),
            "/embeddings",
            Some("tg-wrong"),
            r#"{"model":"embed-openai","input":"a"}"#,
        )
        .await;
        assert_eq!(status, 401);
    })
    .await;
}

/// `count_tokens` gives, for every provider that can count, the count that provider's
/// answer to the same request reports as input tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_matches_the_usage_of_the_answer() {
    let stack = Stack::start_all_providers().unwrap();
    with_logs(&stack, async {
        for (model, upstream) in [
            ("claude-sonnet-4-5", "/v1/messages/count_tokens"),
            ("vertex-claude", "/count-tokens:rawPredict"),
            ("gemini-2.5-flash", ":countTokens"),
            ("vertex-gemini", ":countTokens"),
            ("bedrock-claude", "/count-tokens"),
            ("bedrock-nova", "/count-tokens"),
        ] {
            // cache_control reaches the providers that honour it (Bedrock as cachePoint).
            let body = serde_json::json!({
                "model": model,
                "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": "how many tokens are in this request"}],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"},
                           "cache_control": {"type": "ephemeral"}}],
            });
            let (status, _, count) = post_to(
                stack.api(),
                "/messages/count_tokens",
                Some(DEMO_KEY),
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{model}: {count}");
            let last = &stack.last_upstream_request().unwrap();
            assert!(
                last["path"].as_str().unwrap().ends_with(upstream),
                "{model}: {}",
                last["path"]
            );
            let mut message = body.clone();
            message["max_tokens"] = 100.into();
            let (status, _, answer) = post_to(
                stack.api(),
                "/messages",
                Some(DEMO_KEY),
                &message.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{model}: {answer}");
            if model.starts_with("bedrock") {
                let sent = &stack.last_upstream_request().unwrap()["body"];
                assert_eq!(sent["system"][1]["cachePoint"]["type"], "default", "{sent}");
                assert_eq!(sent["toolConfig"]["tools"][1]["cachePoint"]["type"], "default", "{sent}");
            }
            assert!(
                count["input_tokens"].as_u64().unwrap() > 0,
                "{model}: {count}"
            );
            assert_eq!(
                count["input_tokens"], answer["usage"]["input_tokens"],
                "{model}: {count} vs {}",
                answer["usage"]
            );
        }
        // OpenAI-format providers cannot count: a 400 in Anthropic's format.
        let (status, _, v) = post_to(
            stack.api(),
            "/messages/count_tokens",
            Some(DEMO_KEY),
            r#"{"model":"smart","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        // max_tokens is not part of a count request, as Anthropic's API says.
        let (status, _, v) = post_to(
            stack.api(),
            "/messages/count_tokens",
            Some(DEMO_KEY),
            r#"{"model":"bedrock-nova","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
        assert_eq!(status, 400, "{v}");
    })
    .await;
}

/// An OpenAI-compatible server's differences (spec.compatibility) shape what it is sent:
/// fields renamed and dropped, roles mapped, headers added, no stream_options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_settings_shape_the_upstream_request() {
    let stack = Stack::start_all_providers().unwrap();
    with_logs(&stack, async {
        let last_request = || {
            stack.last_upstream_request().unwrap()
        };
        let body = r#"{"model":"quirky","stream":true,"max_completion_tokens":50,
            "parallel_tool_calls":false,"store":true,"temperature":0.5,
            "messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi there"}]}"#;
        let (status, headers, v) = post(stack.api(), Some(DEMO_KEY), body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(headers["x-tollgate-provider"], "default/quirky");
        let text = v.as_str().unwrap_or_default();
        assert!(
            text.contains(r#""content":"Mock""#) && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        let sent = last_request();
        let b = &sent["body"];
        assert!(b.get("stream_options").is_none(), "{b}");
        assert_eq!(b["max_tokens"], 50, "{b}");
        assert!(b.get("max_completion_tokens").is_none(), "{b}");
        assert!(b.get("parallel_tool_calls").is_none() && b.get("store").is_none(), "{b}");
        assert_eq!(b["messages"][0]["role"], "system", "{b}");
        assert_eq!(b["temperature"], 0.5, "{b}");
        assert_eq!(b["model"], "llama-3.1-8b", "{b}");
        assert_eq!(sent["headers"]["x-title"], "Tollgate tests");

        // An Anthropic client on the same server: translated, then the same settings.
        let (status, _, v) = post_to(
            stack.api(),
            "/messages",
            Some(DEMO_KEY),
            r#"{"model":"quirky","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let b = &last_request()["body"];
        assert!(b.get("stream_options").is_none(), "{b}");
        assert_eq!(b["max_tokens"], 20, "{b}");

        // Without settings, the same request keeps its fields and gets stream_options.
        let (status, _, _) = post(stack.api(), Some(DEMO_KEY), &body.replace("\"quirky\"", "\"vllm-llama\"")).await;
        assert_eq!(status, 200);
        let b = &last_request()["body"];
        assert_eq!(b["stream_options"]["include_usage"], true, "{b}");
        assert_eq!(b["max_completion_tokens"], 50, "{b}");
        assert_eq!(b["messages"][0]["role"], "developer", "{b}");
    })
    .await;
}
