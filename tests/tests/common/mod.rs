//! Helpers shared by the end-to-end test files: clients, raw requests, waiting, logs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs,
};
use serde_json::Value;
use tollgate_tests::harness::{DEMO_KEY, Stack};

pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client(api: &str, key: &str) -> Client<OpenAIConfig> {
    init_tls();
    Client::with_config(OpenAIConfig::new().with_api_base(api).with_api_key(key))
}

pub fn request(
    model: &str,
    text: &str,
    stream: bool,
) -> async_openai::types::chat::CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(text)
            .build()
            .unwrap()
            .into()]);
    if stream {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    }
    args.build().unwrap()
}

/// Raw HTTP, for status codes and headers the SDKs hide.
pub async fn post(
    api: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_to(api, "/chat/completions", key, body).await
}

pub async fn post_to(
    api: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_with(api, path, key, &[], body).await
}

/// [`post_to`] with extra request headers. A body that is not JSON (an SSE stream) comes
/// back as a string.
pub async fn post_with(
    api: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    // One client per test thread: building one loads the trust store, and each test has
    // its own runtime, which a client's pooled connections must not outlive.
    thread_local! {
        static HTTP: reqwest::Client = {
            init_tls();
            reqwest::Client::new()
        };
    }
    let mut req = HTTP
        .with(reqwest::Client::clone)
        .post(format!("{api}{path}"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

pub fn chat_body(model: &str, text: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
}

/// Runs `f` and prints every process's log if it panics, then the panic's message again,
/// so that the end of a long output still says what failed.
pub async fn with_logs<F: std::future::Future<Output = ()>>(stack: &Stack, f: F) {
    use futures_util::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(f).catch_unwind().await {
        eprintln!("{}", stack.logs());
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        eprintln!("--- the test failed: {message}");
        std::panic::resume_unwind(panic);
    }
}

/// The Python with the SDKs the tests use: `.venv` unless `TOLLGATE_PYTHON` names one.
pub fn python() -> String {
    let python = std::env::var("TOLLGATE_PYTHON").unwrap_or_else(|_| {
        tollgate_tests::harness::workspace()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run `make venv` (make test does) or set TOLLGATE_PYTHON"
    );
    python
}

/// Runs `tests/python/<script>` with `args` and returns its output; fails the test, with
/// every process's log, when the script fails.
pub fn run_python(stack: &Stack, script: &str, args: &[&str]) -> String {
    let script = tollgate_tests::harness::workspace()
        .join("tests/python")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{}", stack.logs());
    }
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    stdout.into_owned()
}

pub fn run_python_on(
    stack: Stack,
    script: &str,
    base_url: impl Fn(&Stack) -> String,
    ok_line: &str,
) {
    let stdout = run_python(&stack, script, &[&base_url(&stack), DEMO_KEY]);
    assert!(stdout.contains(ok_line), "{stdout}");
}

/// Polls until `f` returns true; returns how long that took.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a request for `model` with `key` is answered 200 (a manifest just written
/// has reached the dataplane).
pub async fn until_served(api: &str, key: &str, model: &str, within: Duration) -> Duration {
    eventually(within, || async {
        post(api, Some(key), &chat_body(model, "ready?")).await.0 == 200
    })
    .await
}

/// The controller's view of a ledger account (`GET /usage`), `null` when it has none.
pub fn ledger_account(stack: &Stack, name: &str) -> Value {
    let (_, text) =
        tollgate_tests::harness::http_get(&format!("{}/usage", stack.controller_admin)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until ledger `account` has spent exactly `amount` in `unit` (`usd`, in nano-USD,
/// or `tokens`), failing if it passes it or takes over 10 s.
pub async fn spend_reaches(stack: &Stack, account: &str, unit: &str, amount: u64) {
    let started = Instant::now();
    loop {
        let spent = ledger_account(stack, account)["spent"][unit]
            .as_u64()
            .unwrap_or(0);
        if spent == amount {
            return;
        }
        assert!(
            spent < amount && started.elapsed() < Duration::from_secs(10),
            "{account}: spent {spent} {unit}, expected {amount}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until ledger `account`'s USD spend stops changing (every dataplane's usage has
/// arrived), and returns it in nano-USD.
pub async fn settled_spend(stack: &Stack, account: &str) -> u64 {
    let (mut last, mut same) = (u64::MAX, 0);
    loop {
        let now = ledger_account(stack, account)["spent"]["usd"]
            .as_u64()
            .unwrap_or(0);
        same = if now == last { same + 1 } else { 0 };
        if same >= 5 {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until process `p` accepts connections on `port` (a server that has no readiness
/// URL), failing with its log after a minute.
pub fn wait_listening(p: &tollgate_tests::harness::Process, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {port}:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A VirtualKey in another namespace (`team-x`), with its Secret (a file of its own beside
/// a test's manifests), and its key.
pub const TEAM_X_KEY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: x, namespace: team-x}
spec: {secretRef: {name: x-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: x-key, namespace: team-x, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-team-x-key-0123456789}
"#;
pub const X_KEY: &str = "tg-team-x-key-0123456789";

/// A provider whose model costs 1 USD per million tokens in and out (1,000 nano-USD a
/// token), and a route `metered` to it. `MOCK` stands for the stack's mock-llm.
pub const METERED_ROUTE: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: metered}
spec:
  type: openai
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: openai-primary-key}}]
  models:
    - {name: gpt-4o-mini, inputPerMillionUsd: 1, outputPerMillionUsd: 1}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: metered}
spec:
  match: {models: [metered]}
  targets: [{provider: metered, model: gpt-4o-mini}]
---
"#;

/// [`METERED_ROUTE`] and `manifest` as one file's text, for `stack`'s mock-llm (one file,
/// so that the dataplane never serves the route without what the test adds to it).
pub fn metered(stack: &Stack, manifest: &str) -> String {
    format!("{METERED_ROUTE}{manifest}").replace("MOCK", &stack.mock_url)
}

/// A key limited to two requests a minute, with its Secret; and the key.
pub const RPM_KEY_MANIFEST: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: rpm}
spec:
  secretRef: {name: rpm-key}
  limits: {requestsPerMinute: 2}
---
apiVersion: v1
kind: Secret
metadata: {name: rpm-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-rpm-key-0123456789}
"#;
pub const RPM_KEY: &str = "tg-rpm-key-0123456789";
