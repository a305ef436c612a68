//! The Responses API (`/v1/responses`). mock-llm speaks it as OpenAI does: the official
//! `openai` SDK drives it directly (tests/python/responses_client.py), and a response
//! stored by one account is not found by another, as with the real API. Through the
//! gateway, the same SDK's turns pass through to an OpenAI provider, streamed event by
//! event, metered with cached and reasoning tokens; to a Claude provider they are
//! translated (reasoning as Claude's thinking), and what a target that stores nothing
//! cannot do is refused in the API's error format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::harness::{DEMO_KEY, Stack, UPSTREAM_KEYS, http_get, http_request_with};

mod common;
use common::*;

fn call(method: &str, url: &str, key: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http_request_with(
        method,
        url,
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn mock_llm_speaks_the_responses_api_to_the_official_sdk() {
    let stack = Stack::start().unwrap();
    let base = format!("{}/v1", stack.mock_url);
    let out = run_python(
        &stack,
        "responses_client.py",
        &[&base, UPSTREAM_KEYS[0], "gpt-4o"],
    );
    let ids: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let asked = ids["asked"].as_str().unwrap();

    // Stored by the first account: the second finds nothing, and cannot follow it up.
    let (status, body) = call(
        "GET",
        &format!("{base}/responses/{asked}"),
        UPSTREAM_KEYS[1],
        &Value::Null,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        "POST",
        &format!("{base}/responses"),
        UPSTREAM_KEYS[1],
        &json!({"model": "gpt-4o", "input": "again", "previous_response_id": asked}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "previous_response_not_found");
    let (status, body) = call(
        "GET",
        &format!("{base}/responses/{asked}"),
        UPSTREAM_KEYS[0],
        &Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], asked);

    // Its WebSocket mode, driven by the Agents SDK's WebSocket transport: every model
    // call a `response.create` frame on the upgraded connection, follow-ups on the stored
    // conversation.
    let out = run_python(
        &stack,
        "agents_client.py",
        &[&base, UPSTREAM_KEYS[0], "websocket"],
    );
    let ran: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(ran["tool_calls"], 4);
    let frames = (stack.upstream_requests().unwrap().into_iter())
        .filter(|r| r["path"] == "/v1/responses" && r["headers"]["upgrade"] == "websocket")
        .count();
    assert_eq!(frames, 8, "two model calls per turn, each a frame");
}

const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: responder
spec:
  match:
    models: ["responder"]
  targets:
    - provider: openai-primary
      model: gpt-4o
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: agents-default
spec:
  match:
    # The OpenAI Agents SDK's default model.
    models: ["gpt-5.6-luna"]
  targets:
    - provider: openai-secondary
      model: gpt-4o
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: claude-responder
spec:
  match:
    models: ["claude-responder"]
  targets:
    - provider: anthropic
      model: claude-sonnet-4-5
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_turns_pass_through_to_an_openai_provider_and_are_metered() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("responder.yaml", ROUTES).unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "responder", Duration::from_secs(10)).await;
    let out = run_python(
        &stack,
        "responses_client.py",
        &[&api, DEMO_KEY, "responder", "turns"],
    );
    let ids: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();

    // Every request reached the provider as the Responses API, the model rewritten.
    let upstream = stack.upstream_requests().unwrap();
    let sent: Vec<&Value> = upstream
        .iter()
        .filter(|r| r["path"] == "/v1/responses")
        .collect();
    assert_eq!(sent.len(), 5, "{upstream:?}");
    assert!(sent.iter().all(|r| r["body"]["model"] == "gpt-4o"));
    assert!(
        sent.iter()
            .all(|r| r["body"].get("stream_options").is_none()),
        "nothing of the chat API is added"
    );

    // Metered as chat is: the audit records carry the provider's counts.
    let admin = &stack.dataplanes[0].admin;
    let (_, body) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
    let records: Vec<Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .chain(serde_json::from_str::<Vec<Value>>(&body).unwrap_or_default())
        .filter(|r: &Value| r["api"] == "responses")
        .collect();
    assert_eq!(records.len(), 5, "{body}");
    assert!(
        records
            .iter()
            .all(|r| r["route"] == "default/responder" && r["status"] == 200)
    );
    let usage = &ids["usage"];
    assert!(
        records
            .iter()
            .any(|r| r["tokens"]["reasoning"] == usage["reasoning"]
                && r["tokens"]["output"] == usage["output"]),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["tokens"]["cached"] == usage["cached"]
                && r["tokens"]["input"] == usage["input"]),
        "{records:?}"
    );
    assert!(records.iter().any(|r| r["stream"] == true));
}

/// The audit records of the Responses API's requests, as the admin API lists them.
fn responses_records(stack: &Stack) -> Vec<Value> {
    let admin = &stack.dataplanes[0].admin;
    let (_, body) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
    body.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .chain(serde_json::from_str::<Vec<Value>>(&body).unwrap_or_default())
        .filter(|r: &Value| r["api"] == "responses")
        .collect()
}

/// The same SDK on a Claude provider: every turn translated to Anthropic's Messages API
/// and back (reasoning as Claude's thinking, whose signed blocks come back in the
/// conversation the client sends), and a clear 400 or 404 for what a target that stores
/// nothing cannot do.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_turns_reach_a_claude_provider_translated_and_metered() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("responder.yaml", ROUTES).unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "claude-responder", Duration::from_secs(10)).await;
    run_python(
        &stack,
        "responses_client.py",
        &[&api, DEMO_KEY, "claude-responder", "translated"],
    );
    let upstream = stack.upstream_requests().unwrap();
    let sent: Vec<&Value> = upstream
        .iter()
        .filter(|r| r["path"] == "/v1/messages" && r["body"]["messages"][0]["content"] != "ready?")
        .collect();
    // Four turns; the refused requests never left the gateway.
    assert_eq!(sent.len(), 4, "{upstream:?}");
    assert!(upstream.iter().all(|r| r["path"] != "/v1/responses"));
    assert!(
        sent.iter()
            .all(|r| r["body"]["model"] == "claude-sonnet-4-5")
    );
    let first = &sent[0]["body"];
    assert_eq!(first["system"], "be brief");
    assert_eq!(
        first["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(first["max_tokens"], 4096);
    assert!(first.get("metadata").is_none(), "{first}");
    // The tool's answer went back after the assistant's turn, which starts with the
    // thinking block Claude signed (mock-llm checks the signature, as Claude does).
    let answered = &sent[3]["body"]["messages"];
    assert_eq!(answered[1]["content"][0]["type"], "thinking", "{answered}");
    assert_eq!(answered[1]["content"][1]["type"], "tool_use", "{answered}");
    assert_eq!(
        answered[2]["content"][0]["type"], "tool_result",
        "{answered}"
    );

    // Metered as chat is, from Anthropic's counts; the refusals are recorded as such.
    let records = responses_records(&stack);
    let ok: Vec<&Value> = records.iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(ok.len(), 4, "{records:?}");
    assert!(ok.iter().all(|r| r["route"] == "default/claude-responder"
        && r["provider"] == "default/anthropic"
        && r["tokens"]["input"].as_u64() > Some(0)
        && r["tokens"]["output"].as_u64() > Some(0)));
    assert_eq!(ok.iter().filter(|r| r["stream"] == true).count(), 2);
    assert_eq!(
        records.iter().filter(|r| r["status"] == 400).count(),
        3,
        "{records:?}"
    );
}

/// The quick start's `gpt-4o` route shares its traffic between two OpenAI accounts
/// (`openai-primary`, `openai-secondary`, each its own key): a follow-up must reach the
/// account that stored its first turn, every time.
#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_reaches_the_account_that_stored_its_conversation() {
    let stack = Stack::start().unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "gpt-4o", Duration::from_secs(10)).await;
    // The SDK, stored endpoints included, through the weighted route.
    let out = run_python(
        &stack,
        "responses_client.py",
        &[&api, DEMO_KEY, "gpt-4o", "full"],
    );
    let ids: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let asked = ids["asked"].as_str().unwrap().to_string();
    assert!(asked.starts_with("resp_tg_"), "{asked}");
    assert!(!asked.contains("mock"), "the provider's id is sealed in it");

    // Many conversations: each follow-up goes with the key of its first turn.
    let mut first_keys = std::collections::HashSet::new();
    for n in 0..24 {
        let (status, first) = call(
            "POST",
            &format!("{api}/responses"),
            DEMO_KEY,
            &json!({"model": "gpt-4o", "input": format!("turn one of {n}")}),
        );
        assert_eq!(status, 200, "{first}");
        let (status, next) = call(
            "POST",
            &format!("{api}/responses"),
            DEMO_KEY,
            &json!({"model": "gpt-4o", "input": "and then?", "previous_response_id": first["id"]}),
        );
        assert_eq!(status, 200, "follow-up {n}: {next}");
        assert_eq!(next["previous_response_id"], first["id"]);
        let served: Vec<String> = stack
            .upstream_requests()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == "/v1/responses")
            .rev()
            .take(2)
            .map(|r| r["headers"]["authorization"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(served[0], served[1], "conversation {n} changed accounts");
        first_keys.insert(served[1].clone());
    }
    assert_eq!(first_keys.len(), 2, "the route used both accounts");

    // A forged or altered id is refused; so is a provider's own id.
    let mut altered = asked.clone().into_bytes();
    let at = altered.len() - 5;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [
        altered.as_str(),
        "resp_mock0000000000000001",
        "resp_tg_Zm9yZ2Vk",
    ] {
        let (status, body) = call(
            "POST",
            &format!("{api}/responses"),
            DEMO_KEY,
            &json!({"model": "gpt-4o", "input": "x", "previous_response_id": bad}),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "previous_response_not_found");
        assert_eq!(body["error"]["param"], "previous_response_id");
        let (status, body) = call(
            "GET",
            &format!("{api}/responses/{bad}"),
            DEMO_KEY,
            &Value::Null,
        );
        assert_eq!(status, 404, "{bad}");
        assert_eq!(body["error"]["code"], "not_found");
    }

    // Another tenant's key cannot read or continue it.
    stack.write_manifest("team-x.yaml", TEAM_X_KEY).unwrap();
    let stored = format!("{api}/responses/{asked}");
    let waited = eventually(Duration::from_secs(10), || async {
        call("GET", &stored, X_KEY, &Value::Null).0 != 401
    })
    .await;
    assert!(waited < Duration::from_secs(10));
    let (status, body) = call("GET", &stored, X_KEY, &Value::Null);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = call("GET", &stored, DEMO_KEY, &Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], asked.as_str(), "the id the client holds");

    // The account that stores a conversation fails: the follow-up says so, and no other
    // account answers it without its history.
    let (_, first) = call(
        "POST",
        &format!("{api}/responses"),
        DEMO_KEY,
        &json!({"model": "gpt-4o", "input": "remember this"}),
    );
    let requests = stack.upstream_requests().unwrap();
    let stored_by = requests.last().unwrap()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    tollgate_tests::harness::set_faults(
        &stack.mock_url,
        &json!([{"key": stored_by, "status": 503}]),
    )
    .unwrap();
    let before = stack.upstream_requests().unwrap().len();
    let (status, body) = call(
        "POST",
        &format!("{api}/responses"),
        DEMO_KEY,
        &json!({"model": "gpt-4o", "input": "and then?", "previous_response_id": first["id"]}),
    );
    assert!(status >= 500, "{status} {body}");
    let after = stack.upstream_requests().unwrap();
    assert!(
        after[before..]
            .iter()
            .all(|r| r["headers"]["authorization"] == format!("Bearer {stored_by}")),
        "another account was tried"
    );
}

/// A key with a small token budget and a session cap, beside [`METERED_ROUTE`]:
/// Responses traffic spends them as chat does.
const METERED: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata: {name: tiny}
spec:
  selector: {matchLabels: {team: tiny}}
  limit: {tokens: 1500}
  period: day
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: responder, labels: {team: tiny}}
spec:
  secretRef: {name: responder-key}
  session: {header: x-agent-session, maxTokens: 400}
---
apiVersion: v1
kind: Secret
metadata: {name: responder-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-responder-key-0123456789}
"#;

const RESPONDER_KEY: &str = "tg-responder-key-0123456789";

/// One metered Responses turn on `api`: its status, body, and its total tokens.
async fn turn(api: &str, session: &str, stream: bool) -> (u16, Value, u64) {
    let body = json!({"model": "metered", "input": "plan the next step",
                      "max_output_tokens": 16, "stream": stream});
    let (status, _, v) = post_with(
        api,
        "/responses",
        Some(RESPONDER_KEY),
        &[("x-agent-session", session)],
        &body.to_string(),
    )
    .await;
    let usage = match &v {
        Value::String(text) if status == 200 => text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|e| e["type"] == "response.completed" || e["type"] == "response.incomplete")
            .map(|e| e["response"]["usage"].clone())
            .unwrap_or(Value::Null),
        _ => v["usage"].clone(),
    };
    let total = usage["total_tokens"].as_u64().unwrap_or(0);
    assert!(status != 200 || total > 0, "{v}");
    (status, v, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_spend_sessions_and_budgets_exactly_as_chat_across_replicas() {
    let mut stack = Stack::start().unwrap();
    stack
        .write_manifest("metered.yaml", &metered(&stack, METERED))
        .unwrap();
    stack.add_dataplane().unwrap();
    let apis: Vec<String> = stack.dataplanes.iter().map(|d| d.api.clone()).collect();
    // Every token an answer reported, which the ledger must hold exactly.
    let used = std::sync::atomic::AtomicU64::new(0);
    for api in &apis {
        let waited = eventually(Duration::from_secs(15), || async {
            let (status, _, total) = turn(api, "warm-up", false).await;
            used.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
            status == 200
        })
        .await;
        assert!(waited < Duration::from_secs(15), "{}", stack.logs());
    }
    let used = used.into_inner();
    with_logs(&stack, async {
        let mut used = used;
        // A session's cap stops that session, over both dataplanes, streamed or not.
        let mut served = 0;
        let refused = loop {
            let (status, body, total) = turn(&apis[served % 2], "s1", served % 2 == 1).await;
            used += total;
            if status != 200 {
                break body;
            }
            served += 1;
            assert!(served < 50, "the session was never stopped");
        };
        assert_eq!(refused["error"]["code"], "budget_exceeded", "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("session")
        );
        assert!(served >= 2, "served {served}");

        // The key's token budget stops every session; what the ledger spent is what the
        // answers said they used.
        let mut n = 0;
        let refused = loop {
            n += 1;
            let (status, body, total) = turn(&apis[n % 2], &format!("b{n}"), n % 3 == 0).await;
            used += total;
            if status != 200 {
                break body;
            }
            assert!(n < 100, "the budget was never stopped");
        };
        assert_eq!(refused["error"]["code"], "budget_exceeded", "{refused}");
        assert!(
            !refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("session")
        );
        assert!(used <= 1500, "the budget was overspent: {used}");
        spend_reaches(&stack, "budget/default/tiny", "tokens", used).await;
    })
    .await;
}

/// The Agents SDK's agent (tests/python/agents_client.py) over `transport`, through a
/// fresh stack: the requests the provider got for its model calls.
async fn agent_run(transport: &str) -> Vec<Value> {
    let stack = Stack::start().unwrap();
    stack.write_manifest("responder.yaml", ROUTES).unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "gpt-5.6-luna", Duration::from_secs(10)).await;
    if transport == "websocket" {
        // A key that is refused is refused before the upgrade, in the API's format.
        let (status, body) = http_request_with(
            "GET",
            &format!("{api}/responses"),
            &[
                ("authorization", "Bearer tg-not-a-key"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "",
        )
        .unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("invalid_api_key"), "{body}");
    }
    let out = run_python(&stack, "agents_client.py", &[&api, DEMO_KEY, transport]);
    let ran: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(ran["model"], "gpt-5.6-luna");
    assert_eq!(ran["tool_calls"], 4);
    assert_eq!(ran["transport"], transport);
    let turns: Vec<Value> = (stack.upstream_requests().unwrap().into_iter())
        .filter(|r| r["path"] == "/v1/responses")
        .collect();
    assert_eq!(turns.len(), 8, "two model calls per turn: {turns:?}");
    turns
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_sdk_agent_with_its_defaults_runs_its_turns_through_the_gateway() {
    // Every turn went as the Responses API, with the SDK's default settings.
    let turns = agent_run("http").await;
    assert!(turns.iter().all(|r| r["body"]["model"] == "gpt-4o"));
    assert!(
        turns
            .iter()
            .all(|r| r["body"]["reasoning"]["effort"] == "none"),
        "{turns:?}"
    );
}

/// The Agents SDK's default model sent to Claude.
const AGENTS_ON_CLAUDE: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: agents-on-claude
spec:
  match:
    models: ["gpt-5.6-luna"]
  targets:
    - provider: anthropic
      model: claude-sonnet-4-5
"#;

/// The same agent, with the SDK's defaults, on Claude over both transports: every model
/// call translated, the conversation sent by the SDK each turn (a translated target
/// stores nothing).
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_sdk_agent_runs_its_turns_on_claude_over_http_and_websocket() {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest("agents.yaml", AGENTS_ON_CLAUDE)
        .unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "gpt-5.6-luna", Duration::from_secs(10)).await;
    for transport in ["http", "websocket"] {
        let out = run_python(
            &stack,
            "agents_client.py",
            &[&api, DEMO_KEY, transport, "sent"],
        );
        let ran: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(ran["tool_calls"], 4, "{transport}");
        assert_eq!(ran["transport"], transport);
    }
    let turns: Vec<Value> = (stack.upstream_requests().unwrap().into_iter())
        .filter(|r| r["path"] == "/v1/messages" && r["body"]["messages"][0]["content"] != "ready?")
        .collect();
    assert_eq!(turns.len(), 16, "two model calls per turn, per transport");
    assert!(
        turns
            .iter()
            .all(|r| r["body"]["model"] == "claude-sonnet-4-5")
    );
    // The SDK's default effort is `none`: no thinking asked of Claude.
    assert!(turns.iter().all(|r| r["body"].get("thinking").is_none()));
    assert!(turns[8..].iter().all(|r| r["body"]["stream"] == true));
    let results = turns
        .iter()
        .filter(|r| r["body"].to_string().contains("sunny in Paris"))
        .count();
    assert!(results >= 8, "every tool result crossed: {results}");
    // Every turn is recorded with the client's address, a WebSocket frame's too.
    let records = responses_records(&stack);
    assert_eq!(records.len(), 16, "{records:?}");
    assert!(
        records.iter().all(|r| r["client_address"] == "127.0.0.1"),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_websocket_mode_carries_an_agents_turns_and_tool_calls() {
    // Every model call came as a `response.create` frame, which is always streamed, and
    // went upstream on the same pipeline as HTTP.
    let turns = agent_run("websocket").await;
    assert!(
        turns.iter().all(|r| r["body"]["stream"] == true),
        "{turns:?}"
    );
    assert!(turns.iter().all(|r| r["body"].get("type").is_none()));
}

/// A route that records messages: a Responses turn's instructions, input and answer, in
/// the audit record, with the secret its input held redacted.
#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_responses_turn_keeps_its_messages_redacted() {
    let stack = Stack::start().unwrap();
    let recorded = ROUTES.replace(
        "      model: gpt-4o\n---",
        "      model: gpt-4o\n  recordMessages: true\n---",
    );
    assert!(recorded.contains("recordMessages"));
    stack.write_manifest("responder.yaml", &recorded).unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "responder", Duration::from_secs(10)).await;
    for stream in [false, true] {
        let (status, _, _) = post_with(
            &api,
            "/responses",
            Some(DEMO_KEY),
            &[],
            &json!({"model": "responder", "instructions": "be brief", "stream": stream,
                    "input": format!("marker-{stream} {}", UPSTREAM_KEYS[0])})
            .to_string(),
        )
        .await;
        assert_eq!(status, 200);
    }
    let admin = &stack.dataplanes[0].admin;
    let waited = eventually(Duration::from_secs(5), || async {
        let (_, text) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
        serde_json::from_str::<Vec<Value>>(&text)
            .unwrap()
            .iter()
            .filter(|r| r["messages"].is_object() && r["api"] == "responses")
            .count()
            == 2
    })
    .await;
    assert!(waited < Duration::from_secs(5));
    let (_, text) = http_get(&format!("{admin}/audit?limit=1000")).unwrap();
    assert!(!text.contains(UPSTREAM_KEYS[0]), "a secret was recorded");
    let records: Vec<Value> = serde_json::from_str(&text).unwrap();
    for stream in [false, true] {
        let r = records
            .iter()
            .find(|r| r["api"] == "responses" && r["stream"] == stream)
            .unwrap();
        let m = &r["messages"];
        assert_eq!(m["recorded_by"], "route");
        assert_eq!(
            m["system_instructions"],
            json!([{"type": "text", "content": "be brief"}])
        );
        assert_eq!(
            m["input"],
            json!([{"role": "user", "parts": [{"type": "text",
                "content": format!("marker-{stream} <redacted>")}]}])
        );
        assert_eq!(
            m["output"],
            json!([{"role": "assistant", "finish_reason": "stop", "parts": [{"type": "text",
                "content": format!("Mock reply to: marker-{stream} <redacted>")}]}]),
            "{r}"
        );
    }
}

/// Raw frames: one that is not a `response.create` gets an error frame and the connection
/// goes on; one larger than a request body may be closes it (1009, message too big).
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_frame_is_bounded_like_a_body() {
    let mut stack = Stack::start().unwrap();
    stack
        .add_dataplane_with(&["--max-body-bytes", "65536"])
        .unwrap();
    let api = stack.dataplanes[1].api.clone();
    until_served(&api, DEMO_KEY, "gpt-4o", Duration::from_secs(10)).await;
    let ws = format!("{}/responses", api.replacen("http://", "ws://", 1));
    let out = run_python(&stack, "ws_probe.py", &[&ws, DEMO_KEY, "200000"]);
    let got: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(got["error"]["type"], "error", "{got}");
    assert_eq!(got["error"]["status"], 400, "{got}");
    assert_eq!(got["closed"], 1009, "{got}");
}

/// Routes and a rate-limited key for the Responses API's share of what chat has: a
/// fallback from an OpenAI target to a Claude one, retries, and the key's rate limit.
const RESILIENT: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: resilient}
spec:
  match: {models: ["resilient"]}
  targets:
    - provider: openai-primary
      model: gpt-4o-failing
  fallbacks:
    - provider: anthropic
      model: claude-sonnet-4-5
  fallbackOn: [5xx]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: retried}
spec:
  match: {models: ["retried"]}
  targets:
    - provider: openai-primary
      model: gpt-4o-flaky
  retries:
    attempts: 1
    backoff: {base: 10ms, max: 40ms}
"#;

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A Responses request whose OpenAI target fails before its first byte falls back to a
/// Claude target (translated, whole and streamed); a failed attempt is retried; a key's
/// rate limit refuses in the API's format, with OpenAI's rate-limit headers.
#[tokio::test(flavor = "multi_thread")]
async fn responses_fall_back_across_formats_retry_and_meet_rate_limits() {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest(
            "resilient.yaml",
            &format!("{RESILIENT}---\n{RPM_KEY_MANIFEST}"),
        )
        .unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "resilient", Duration::from_secs(10)).await;
    tollgate_tests::harness::set_faults(
        &stack.mock_url,
        &json!([
            {"model": "gpt-4o-failing", "status": 503},
            {"model": "gpt-4o-flaky", "status": 503, "times": 1},
        ]),
    )
    .unwrap();

    let body = json!({"model": "resilient", "input": "fall back"}).to_string();
    let (status, h, v) = post_to(&api, "/responses", Some(DEMO_KEY), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-tollgate-model"), "claude-sonnet-4-5");
    assert_eq!(v["object"], "response");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Mock reply to: fall back"
    );
    let id = v["id"].as_str().unwrap();
    assert!(
        id.starts_with("resp_") && !id.starts_with("resp_tg_"),
        "a translated answer's id is not sealed: {id}"
    );
    let body = json!({"model": "resilient", "input": "fall back", "stream": true}).to_string();
    let (status, h, v) = post_to(&api, "/responses", Some(DEMO_KEY), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-tollgate-model"), "claude-sonnet-4-5");
    let text = v.as_str().unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(text.contains("event: response.completed\n"), "{text}");
    let upstream = stack.upstream_requests().unwrap();
    let failing = upstream
        .iter()
        .filter(|r| r["path"] == "/v1/responses" && r["body"]["model"] == "gpt-4o-failing")
        .count();
    assert_eq!(failing, 2, "each request tried the OpenAI target first");

    let body = json!({"model": "retried", "input": "again"}).to_string();
    let (status, h, v) = post_to(&api, "/responses", Some(DEMO_KEY), &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-tollgate-model"), "gpt-4o-flaky");
    assert!(v["id"].as_str().unwrap().starts_with("resp_tg_"), "{v}");
    let flaky = (stack.upstream_requests().unwrap().iter())
        .filter(|r| r["path"] == "/v1/responses" && r["body"]["model"] == "gpt-4o-flaky")
        .count();
    assert_eq!(flaky, 2, "one failure, one retry");

    let rpm = RPM_KEY;
    let body = json!({"model": "resilient", "input": "count me"}).to_string();
    for left in ["1", "0"] {
        let (status, h, v) = post_to(&api, "/responses", Some(rpm), &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(header(&h, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), left);
    }
    let (status, h, v) = post_to(&api, "/responses", Some(rpm), &body).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(h.contains_key("retry-after"));
    // The endpoints that cost no tokens are requests too: refused alike, before the id
    // or the body is looked at.
    let (status, h, v) = post_to(&api, "/responses/input_tokens", Some(rpm), &body).await;
    assert_eq!(status, 429, "{v}");
    assert!(h.contains_key("retry-after"));
    let (status, text) = http_request_with(
        "GET",
        &format!("{api}/responses/resp_tg_anything"),
        &[("authorization", &format!("Bearer {rpm}"))],
        "",
    )
    .unwrap();
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("rate_limit_error"), "{text}");
}

/// A chat-only OpenAI-compatible server (vLLM, Ollama, ...). `MOCK` is the stack's
/// mock-llm.
const CHAT_ONLY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: chat-only}
spec:
  type: openai-compatible
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: openai-primary-key}}]
  unpricedModels: free
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat-only}
spec:
  match: {models: ["chat-only"]}
  targets: [{provider: chat-only, model: llama-3.1-8b}]
"#;

/// The Responses API on a server that speaks only chat: each turn sent as a chat
/// completion (the model rewritten, usage asked for in streams), answered as a Response;
/// a tool call's output goes back in the input the client sends.
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_only_server_answers_responses_turns_through_chat() {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest(
            "chat-only.yaml",
            &CHAT_ONLY.replace("MOCK", &stack.mock_url),
        )
        .unwrap();
    let api = stack.dataplanes[0].api.clone();
    until_served(&api, DEMO_KEY, "chat-only", Duration::from_secs(10)).await;
    let weather = json!({"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}});
    let question = json!({"role": "user", "content": "weather in Oslo?"});
    let body = json!({"model": "chat-only", "input": [question], "tools": [weather],
        "reasoning": {"effort": "low"}, "max_output_tokens": 300});
    let (status, _, v) = post_to(&api, "/responses", Some(DEMO_KEY), &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"][0]["type"], "function_call", "{v}");
    let call = v["output"][0].clone();
    assert_eq!(call["name"], "get_weather");
    let sent = stack.upstream_requests().unwrap();
    let chat = &sent.last().unwrap();
    assert_eq!(chat["path"], "/v1/chat/completions");
    assert_eq!(chat["body"]["model"], "llama-3.1-8b");
    assert_eq!(chat["body"]["reasoning_effort"], "low");
    assert_eq!(chat["body"]["max_tokens"], 300);
    assert_eq!(chat["body"]["tools"][0]["function"]["name"], "get_weather");

    let output =
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "snow"});
    let body = json!({"model": "chat-only", "stream": true, "tools": [weather],
        "input": [question, call, output]});
    let (status, _, v) = post_to(&api, "/responses", Some(DEMO_KEY), &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let text = v.as_str().unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "Mock reply to: tool result: snow"
    );
    assert!(last["response"]["usage"]["output_tokens"].as_u64() > Some(0));
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let sent = stack.upstream_requests().unwrap();
    let chat = &sent.last().unwrap()["body"];
    assert_eq!(chat["stream_options"]["include_usage"], true);
    assert_eq!(chat["messages"][1]["tool_calls"][0]["id"], call["call_id"]);
    assert_eq!(chat["messages"][2]["role"], "tool");
}
