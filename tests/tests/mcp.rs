//! The MCP gateway end to end: the official `mcp` Python SDK client talks to `/mcp` on
//! real dataplanes, which aggregate real MCP servers started here: two written with the
//! `mcp` SDK (tests/python/mcp_server.py; one behind a header from a Secret, one behind
//! OAuth client credentials) and `@modelcontextprotocol/server-everything` from npm, once
//! over Streamable HTTP and once over the older HTTP+SSE transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{python, run_python, wait_listening};
use serde_json::{Value, json};
use tollgate_tests::harness::{self, Process, Stack, free_port, workspace};

const FINANCE_KEY: &str = "tg-finance-key-0001";
const MAILER_KEY: &str = "tg-mailer-key-0002";
const FLOODER_KEY: &str = "tg-flooder-key-0003";
const LEDGER_TOKEN: &str = "ledger-s3cret-token";

/// Waits until something listens on `port`; the process's log if it never does.
/// An MCP server from tests/python/mcp_server.py; returns it, its port and its call log.
fn python_server(stack: &Stack, name: &str, extra: &[&str]) -> (Process, u16, PathBuf) {
    let port = free_port().unwrap();
    let log = stack.dir.path().join(format!("{name}-calls.jsonl"));
    let mut args = vec![
        workspace()
            .join("tests/python/mcp_server.py")
            .display()
            .to_string(),
        "--port".into(),
        port.to_string(),
        "--log".into(),
        log.display().to_string(),
        "--name".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Process::start(name, Path::new(&python()), &args, stack.dir.path()).unwrap();
    wait_listening(&p, port);
    (p, port, log)
}

/// `@modelcontextprotocol/server-everything` over `transport`: `streamableHttp` (at
/// `/mcp`) or `sse` (the event stream at `/sse`).
fn everything_server(stack: &Stack, transport: &str) -> (Process, u16) {
    let script = workspace()
        .join("tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "{} not found: run `make node-deps` (make test does)",
        script.display()
    );
    let port = free_port().unwrap();
    let p = Process::start_with_env(
        &format!("server-everything-{transport}"),
        Path::new("node"),
        &[script.display().to_string(), transport.into()],
        &[("PORT", &port.to_string())],
        stack.dir.path(),
    )
    .unwrap();
    wait_listening(&p, port);
    (p, port)
}

fn manifests(ledger: u16, vault: u16, every: u16, legacy: u16) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata:
  name: finance
  labels:
    team: finance
spec:
  secretRef:
    name: finance-key
  owner:
    team: finance
    user: agent-7
---
apiVersion: v1
kind: Secret
metadata:
  name: finance-key
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  key: {FINANCE_KEY}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata:
  name: mailer
spec:
  secretRef:
    name: mailer-key
  owner:
    team: mail
  mcpToolPolicyRef:
    name: mail
---
apiVersion: v1
kind: Secret
metadata:
  name: mailer-key
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  key: {MAILER_KEY}
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata:
  name: flooder
spec:
  secretRef:
    name: flooder-key
  limits:
    concurrency: 1
  mcpToolPolicyRef:
    name: flood
---
apiVersion: v1
kind: Secret
metadata:
  name: flooder-key
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  key: {FLOODER_KEY}
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPToolPolicy
metadata:
  name: flood
spec:
  selector:
    matchLabels:
      nothing: selects-this
  rules:
    - server: ledger
      allow: ["*"]
      limits:
        callsPerMinute: 1000
---
apiVersion: v1
kind: Secret
metadata:
  name: ledger-token
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  token: {LEDGER_TOKEN}
---
apiVersion: v1
kind: Secret
metadata:
  name: vault-oauth
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  clientSecret: oauth-s3cret
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPServer
metadata:
  name: ledger
spec:
  url: http://127.0.0.1:{ledger}/mcp
  auth:
    header:
      name: Authorization
      prefix: "Bearer "
      secretRef:
        name: ledger-token
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPServer
metadata:
  name: vault
spec:
  url: http://127.0.0.1:{vault}/mcp
  auth:
    oauth:
      tokenUrl: http://127.0.0.1:{vault}/oauth/token
      clientId: tollgate
      clientSecretRef:
        name: vault-oauth
      scopes: [read]
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPServer
metadata:
  name: everything
spec:
  url: http://127.0.0.1:{every}/mcp
  toolPrefix: every
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPServer
metadata:
  name: legacy
spec:
  url: http://127.0.0.1:{legacy}/sse
  transport: sse
  toolPrefix: legacy
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPToolPolicy
metadata:
  name: finance
spec:
  selector:
    matchLabels:
      team: finance
  rules:
    - server: ledger
      allow: ["ledger_*", "slow_count", "broken"]
      deny: ["ledger_delete"]
    - server: vault
      allow: ["ledger_read"]
    - server: everything
      allow: ["echo", "get-sum", "trigger-long-running-operation", "trigger-sampling-request"]
    - server: legacy
      allow: ["echo", "trigger-long-running-operation"]
  logArguments: true
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPToolPolicy
metadata:
  name: mail
spec:
  selector:
    matchLabels:
      nothing: selects-this
  rules:
    - server: ledger
      allow: ["send_email"]
      limits:
        callsPerMinute: 2
  compactSchemas: true
"#
    )
}

struct Fixture {
    stack: Stack,
    _servers: Vec<Process>,
    ledger_log: PathBuf,
    vault_log: PathBuf,
    vault_port: u16,
}

impl Fixture {
    fn start() -> Self {
        let stack = Stack::start().unwrap();
        let (ledger, ledger_port, ledger_log) =
            python_server(&stack, "ledger", &["--bearer", LEDGER_TOKEN]);
        let (vault, vault_port, vault_log) = python_server(&stack, "vault", &["--oauth"]);
        let (every, every_port) = everything_server(&stack, "streamableHttp");
        let (legacy, legacy_port) = everything_server(&stack, "sse");
        stack
            .write_manifest(
                "mcp.yaml",
                &manifests(ledger_port, vault_port, every_port, legacy_port),
            )
            .unwrap();
        let fixture = Fixture {
            stack,
            _servers: vec![ledger, vault, every, legacy],
            ledger_log,
            vault_log,
            vault_port,
        };
        // The manifests have reached the dataplane once the key authenticates.
        fixture.until_key_served(0);
        fixture
    }

    fn mcp_url(&self, dataplane: usize) -> String {
        self.stack.dataplanes[dataplane].api.replace("/v1", "/mcp")
    }

    fn until_key_served(&self, dataplane: usize) {
        let url = self.mcp_url(dataplane);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = rpc(
                &url,
                Some(FINANCE_KEY),
                None,
                &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            );
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the key never reached the dataplane:\n{}",
                self.stack.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs tests/python/mcp_client.py and returns what it printed last.
    fn client(&self, args: &[&str]) -> Value {
        let stdout = run_python(&self.stack, "mcp_client.py", args);
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
    }

    /// `tollgate_mcp_tool_calls_total` on a dataplane.
    fn tool_calls(&self, dataplane: usize, server: &str, tool: &str, outcome: &str) -> f64 {
        Stack::metric(
            &self.stack.dataplanes[dataplane].admin,
            "tollgate_mcp_tool_calls_total",
            &[("server", server), ("tool", tool), ("outcome", outcome)],
        )
        .unwrap()
    }

    fn calls(log: &Path) -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many calls of `tool` reached the ledger server.
    fn ledger_calls_of(&self, tool: &str) -> usize {
        Self::calls(&self.ledger_log)
            .iter()
            .filter(|c| c["tool"] == tool)
            .count()
    }
}

/// An `initialize` request, as a client's first message.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

/// A POST of one JSON-RPC message to `/mcp`; status and body.
fn rpc(url: &str, key: Option<&str>, session: Option<&str>, message: &Value) -> (u16, String) {
    let mut headers = vec![("accept", "application/json, text/event-stream".to_string())];
    if let Some(k) = key {
        headers.push(("authorization", format!("Bearer {k}")));
    }
    if let Some(s) = session {
        headers.push(("mcp-session-id", s.to_string()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    harness::http_request_with("POST", url, &headers, &message.to_string()).unwrap()
}

/// A JSON-RPC answer's body, from JSON or from the one message of an event stream.
fn rpc_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|m| m.get("id").is_some())
            .unwrap_or(Value::Null)
    })
}

/// A key that invents tool names cannot make the ledger keep an account for each: a
/// limited tool is counted only when its server lists it, so invented names are unknown
/// tools and leave no account behind, while the listed tool is counted as before.
#[test]
fn invented_tool_names_leave_no_ledger_accounts() {
    let f = Fixture::start();
    let url = f.mcp_url(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    common::init_tls();
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, message: Value| {
        let mut req = http
            .post(&url)
            .bearer_auth(FLOODER_KEY)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(message.to_string());
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        rt.block_on(async {
            let resp = req.send().await.unwrap();
            let session = resp
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            (status, session, rpc_body(&resp.text().await.unwrap()))
        })
    };
    let (status, session, init) = post(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "flood", "version": "1"}}}),
    );
    assert_eq!(status, 200, "{init}");
    let session = session.expect("a session id");
    let call = |id: u64, name: &str| {
        post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": {"account": "acme"}}}),
        )
    };
    let (status, _, read) = call(2, "ledger__ledger_read");
    assert_eq!(status, 200, "{read}");
    assert!(read.get("result").is_some(), "{read}");
    for i in 0..60 {
        let (_, _, v) = call(10 + i, &format!("ledger__made_up_{i}"));
        assert_eq!(v["error"]["code"], -32602, "{v}");
    }
    let (_, _, v) = call(100, &format!("ledger__{}", "x".repeat(300)));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // Nor do they reach the metrics as label values: they count as unknown tools.
    assert_eq!(f.tool_calls(0, "-", "-", "unknown_tool"), 61.0);
    let (_, metrics) =
        harness::http_get(&format!("{}/metrics", f.stack.dataplanes[0].admin)).unwrap();
    assert!(
        !metrics.contains("made_up"),
        "invented names in the metrics"
    );
    let (_, usage) = harness::http_get(&format!("{}/usage", f.stack.controller_admin)).unwrap();
    let accounts: Vec<String> = serde_json::from_str::<Value>(&usage).unwrap()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["account"].as_str().map(str::to_string))
        .filter(|a| a.starts_with("tool/default/flood/"))
        .collect();
    assert_eq!(
        accounts,
        ["tool/default/flood/0/default/flooder/ledger_read"],
        "{usage}"
    );

    // The key may run one request at a time: an answer that comes as an event stream
    // (progress, then the result) holds its slot until the stream ends.
    let slow = {
        let req = http
            .post(&url)
            .bearer_auth(FLOODER_KEY)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", session.as_str())
            .body(
                json!({"jsonrpc": "2.0", "id": 200, "method": "tools/call", "params": {
                    "name": "ledger__slow_count", "arguments": {"n": 20},
                    "_meta": {"progressToken": "p1"}}})
                .to_string(),
            );
        rt.spawn(async move {
            let resp = req.send().await.unwrap();
            let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
            (content_type, resp.text().await.unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let (status, _, busy) = call(201, "ledger__ledger_read");
    assert_eq!(status, 429, "{busy}");
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent"),
        "{busy}"
    );
    let (content_type, text) = rt.block_on(slow).unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert!(text.contains("counted to 20"), "{text}");
    let (status, _, read) = call(202, "ledger__ledger_read");
    assert_eq!(status, 200, "{read}");
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn call<'a>(out: &'a Value, name: &str) -> Vec<&'a Value> {
    out["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .collect()
}

#[test]
fn each_key_sees_and_calls_only_the_tools_its_policy_permits() {
    let mut f = Fixture::start();
    let url = f.mcp_url(0);

    let finance = f.client(&[
        "tour",
        "--url",
        &url,
        "--key",
        FINANCE_KEY,
        "--call",
        r#"ledger__ledger_read={"account":"acme"}"#,
        "--call",
        r#"vault__ledger_read={"account":"vault-acme"}"#,
        "--call",
        r#"every__get-sum={"a":2,"b":3}"#,
        "--call",
        r#"every__trigger-sampling-request={"prompt":"hi","maxTokens":5}"#,
        "--call",
        r#"legacy__echo={"message":"over HTTP+SSE"}"#,
        "--call",
        r#"legacy__get-sum={"a":1,"b":1}"#,
        "--call",
        "ledger__broken",
        "--call",
        r#"ledger__ledger_delete={"account":"acme","password":"hunter2"}"#,
        "--call",
        r#"ledger__send_email={"to":"x@example.com","body":"hi"}"#,
        "--call",
        r#"every__get-env"#,
        "--call",
        r#"nowhere__tool"#,
        "--call",
        r#"ledger__Ledger_Delete={"account":"acme"}"#,
        "--call",
        r#"ledger__ledger_delete ={"account":"acme"}"#,
        "--call",
        r#"ledger__LEDGER_READ={"account":"acme"}"#,
        "--call",
        r#"ledger__invented_tool"#,
        "--call",
        "ledger__x\nFORGED tollgate::audit line",
        "--prompt",
        r#"ledger__summarize={"account":"acme"}"#,
        "--progress-call",
        r#"every__trigger-long-running-operation={"duration":1,"steps":4}"#,
        "--progress-call",
        r#"legacy__trigger-long-running-operation={"duration":1,"steps":3}"#,
    ]);
    assert_eq!(finance["server"], "tollgate");
    assert_eq!(
        names(&finance["tools"]),
        [
            "every__echo",
            "every__get-sum",
            "every__trigger-long-running-operation",
            "every__trigger-sampling-request",
            "ledger__broken",
            "ledger__ledger_read",
            "ledger__slow_count",
            "legacy__echo",
            "legacy__trigger-long-running-operation",
            "vault__ledger_read",
        ],
        "exactly what the policy allows, from all four servers"
    );
    assert_eq!(
        call(&finance, "ledger__ledger_read")[0]["text"],
        "acme: 1200"
    );
    assert_eq!(
        call(&finance, "vault__ledger_read")[0]["text"],
        "vault-acme: 1200",
        "through OAuth client credentials"
    );
    assert_eq!(
        call(&finance, "every__get-sum")[0]["text"],
        "The sum of 2 and 3 is 5."
    );
    // The server asked the client for a sample in the middle of the call: the request
    // reached the client through the gateway, and its answer found the way back.
    let sampled = call(&finance, "every__trigger-sampling-request")[0];
    assert!(
        sampled["text"]
            .as_str()
            .is_some_and(|t| t.contains("sampled by the test client")),
        "{sampled}"
    );
    assert_eq!(
        call(&finance, "legacy__echo")[0]["text"],
        "Echo: over HTTP+SSE",
        "through the HTTP+SSE transport"
    );
    assert_eq!(call(&finance, "ledger__broken")[0]["ok"], false);
    for denied in [
        "ledger__ledger_delete",
        "ledger__send_email",
        "every__get-env",
        "legacy__get-sum",
    ] {
        let c = call(&finance, denied)[0];
        assert_eq!(c["error"]["code"], -32003, "{denied}: {c}");
    }
    assert_eq!(call(&finance, "nowhere__tool")[0]["error"]["code"], -32602);
    // Only names the server listed, as listed: a re-spelling of a denied tool (or of a
    // permitted one) and an invented name are unknown, whatever the server would match.
    for respelled in [
        "ledger__Ledger_Delete",
        "ledger__ledger_delete ",
        "ledger__LEDGER_READ",
        "ledger__invented_tool",
        "ledger__x\nFORGED tollgate::audit line",
    ] {
        let c = call(&finance, respelled)[0];
        assert_eq!(c["error"]["code"], -32602, "{respelled:?}: {c}");
    }
    // Resources and prompts of every server, the prompt named like a tool.
    let resources = names(&finance["resources"]);
    assert!(resources.contains(&"ledger://accounts"), "{resources:?}");
    assert!(
        resources.iter().any(|r| r.starts_with("demo://")),
        "{resources:?}"
    );
    assert!(finance["resource_text"][0].is_string());
    let prompts = names(&finance["prompts"]);
    for p in [
        "ledger__summarize",
        "every__simple-prompt",
        "legacy__simple-prompt",
    ] {
        assert!(prompts.contains(&p), "{p} in {prompts:?}");
    }
    assert_eq!(finance["prompt_text"][0], "Summarize the ledger of acme.");
    // Argument completion goes to the prompt's server under its own name, over both
    // transports, with the context argument passed on.
    assert_eq!(
        finance["completions"],
        json!({
            "every__completable-prompt": ["David", "Eve", "Frank"],
            "legacy__completable-prompt": ["David", "Eve", "Frank"],
        })
    );
    // A resource template's variable is completed by a server that has the template
    // (both everything servers do; the ledger server has no templates).
    assert_eq!(
        finance["template_completions"],
        json!({"demo://resource/dynamic/text/{resourceId}": ["7"]}),
        "{finance}"
    );
    assert_eq!(finance["ping"], true);
    assert_eq!(finance["log_level"], true);
    assert!(
        finance["subscribed"]
            .as_str()
            .is_some_and(|u| u.starts_with("demo://")),
        "{finance}"
    );
    // The client ended its session: the servers' sessions ended with it.
    let ended = finance["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "DELETE")
        .and_then(|r| r["session"].as_str())
        .expect("the client sent DELETE");
    let (status, body) = rpc(
        &url,
        Some(FINANCE_KEY),
        Some(ended),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
    );
    assert_eq!(status, 404, "{body}");
    // Progress from server-everything reached the client before the result, over both
    // transports.
    let progress = &finance["progress"];
    assert_eq!(
        progress["every__trigger-long-running-operation"],
        json!([1.0, 2.0, 3.0, 4.0])
    );
    assert_eq!(
        progress["legacy__trigger-long-running-operation"],
        json!([1.0, 2.0, 3.0])
    );
    for result in finance["progress_result"].as_object().unwrap().values() {
        assert!(result.as_str().unwrap().contains("completed"), "{finance}");
    }

    // The refused calls never reached the server: its own log has only the permitted.
    let ledger_calls: Vec<String> = Fixture::calls(&f.ledger_log)
        .iter()
        .filter(|c| c["kind"] == "call")
        .map(|c| c["tool"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ledger_calls, ["ledger_read", "broken"]);
    assert!(
        !Fixture::calls(&f.ledger_log)
            .iter()
            .any(|c| c["kind"] == "unauthorized"),
        "every request carried the header from the Secret"
    );
    let vault = Fixture::calls(&f.vault_log);
    let tokens: Vec<&Value> = vault.iter().filter(|c| c["kind"] == "token").collect();
    assert_eq!(
        tokens.len(),
        1,
        "one token, cached across requests: {vault:?}"
    );
    assert_eq!(tokens[0]["granted"], true);
    assert_eq!(tokens[0]["scope"], "read");

    // The server revokes the token before it expires: the gateway's next request is
    // refused (401), and the gateway fetches a new token and sends the request again.
    let revoke = format!("http://127.0.0.1:{}/oauth/revoke", f.vault_port);
    assert_eq!(harness::http_request("POST", &revoke, "").unwrap().0, 200);
    let again = f.client(&[
        "tour",
        "--url",
        &url,
        "--key",
        FINANCE_KEY,
        "--call",
        r#"vault__ledger_read={"account":"after-revoke"}"#,
    ]);
    assert_eq!(
        call(&again, "vault__ledger_read")[0]["text"],
        "after-revoke: 1200"
    );
    let vault = Fixture::calls(&f.vault_log);
    let granted = vault
        .iter()
        .filter(|c| c["kind"] == "token" && c["granted"] == true)
        .count();
    assert_eq!(granted, 2, "a second token after the revocation: {vault:?}");
    assert!(vault.iter().any(|c| c["kind"] == "unauthorized"));

    // The other key: another policy (named by the key), compaction, and a per-tool
    // limit that holds across dataplanes: two calls on one, the third on another.
    f.stack.add_dataplane().unwrap();
    f.until_key_served(1);
    let mailer = f.client(&[
        "tour",
        "--url",
        &url,
        "--key",
        MAILER_KEY,
        "--call",
        r#"ledger__send_email={"to":"a@example.com","body":"1"}"#,
        "--call",
        r#"ledger__send_email={"to":"b@example.com","body":"2"}"#,
        "--call",
        r#"ledger__ledger_read={"account":"acme"}"#,
    ]);
    let third = f.client(&[
        "tour",
        "--url",
        &f.mcp_url(1),
        "--key",
        MAILER_KEY,
        "--call",
        r#"ledger__send_email={"to":"c@example.com","body":"3"}"#,
    ]);
    assert_eq!(names(&mailer["tools"]), ["ledger__send_email"]);
    let compaction = &mailer["tool_meta"]["tollgate.dev/compaction"];
    assert!(
        compaction["tokensAfter"].as_u64().unwrap() < compaction["tokensBefore"].as_u64().unwrap(),
        "{mailer}"
    );
    let sends = call(&mailer, "ledger__send_email");
    assert_eq!(sends[0]["text"], "sent");
    assert_eq!(sends[1]["text"], "sent");
    assert_eq!(
        call(&third, "ledger__send_email")[0]["error"]["code"],
        -32004,
        "two calls a minute, on any dataplane: {third}"
    );
    assert_eq!(
        call(&mailer, "ledger__ledger_read")[0]["error"]["code"],
        -32003
    );
    assert_eq!(
        f.ledger_calls_of("send_email"),
        2,
        "the refused third call did not reach the server"
    );

    // Audit: an event per call, arguments only where the policy asks, secrets redacted.
    let metric = |server: &str, tool: &str, outcome: &str| f.tool_calls(0, server, tool, outcome);
    assert_eq!(metric("default/ledger", "ledger_read", "ok"), 1.0);
    assert_eq!(metric("default/ledger", "ledger_delete", "denied"), 1.0);
    assert_eq!(metric("default/ledger", "broken", "tool_error"), 1.0);
    assert_eq!(metric("default/ledger", "send_email", "ok"), 2.0);
    assert_eq!(
        f.tool_calls(1, "default/ledger", "send_email", "rate_limited"),
        1.0,
        "the third call, refused by the second dataplane"
    );
    // nowhere__tool, and the five names the ledger server did not list.
    assert_eq!(metric("-", "-", "unknown_tool"), 6.0);
    // Audit records: JSON lines on the dataplane's standard output, written in batches
    // (every 50 ms): one per call the first dataplane answered.
    let mine = |l: &str| l.starts_with('{') && l.contains(r#""kind":"mcp_tool_call""#);
    let calls = Stack::metric(
        &f.stack.dataplanes[0].admin,
        "tollgate_mcp_tool_calls_total",
        &[],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let log = loop {
        let log = f.stack.dataplanes[0].process.log_text();
        let written = log.lines().filter(|l| mine(l)).count() as f64;
        assert!(written <= calls, "{written} records for {calls} calls");
        if written == calls || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let audit: Vec<&str> = log.lines().filter(|l| mine(l)).collect();
    // A client's tool name cannot start a line of its own in the log.
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a tool name wrote its own log line"
    );
    let delete = audit
        .iter()
        .find(|l| l.contains("ledger_delete"))
        .expect("an audit event for the refused call");
    let delete: serde_json::Value = serde_json::from_str(delete).unwrap();
    assert_eq!(
        (&delete["namespace"], &delete["key"], &delete["decision"]),
        (&json!("default"), &json!("finance"), &json!("denied")),
        "{delete}"
    );
    assert_eq!(delete["server"], "default/ledger", "{delete}");
    assert!(delete["duration_ms"].is_number(), "{delete}");
    assert!(delete.to_string().contains("agent-7"), "{delete}");
    assert_eq!(delete["arguments"]["account"], "acme", "{delete}");
    assert!(!log.contains("hunter2"), "a password argument was logged");
    let mail = audit
        .iter()
        .find(|l| l.contains("send_email") && l.contains(r#""key":"mailer""#))
        .unwrap();
    assert!(
        !mail.contains("a@example.com"),
        "the mail policy does not log arguments: {mail}"
    );
    for secret in [LEDGER_TOKEN, "oauth-s3cret", FINANCE_KEY, MAILER_KEY] {
        assert!(!log.contains(secret), "{secret} in the dataplane's log");
    }
}

#[test]
fn a_session_goes_on_at_another_dataplane_and_across_a_restart() {
    let mut f = Fixture::start();
    f.stack.add_dataplane().unwrap();
    f.until_key_served(1);
    let (first, second) = (f.mcp_url(0), f.mcp_url(1));

    let mut child = Command::new(python())
        .arg(workspace().join("tests/python/mcp_client.py"))
        .args([
            "switch",
            "--url",
            &first,
            "--second-url",
            &second,
            "--key",
            FINANCE_KEY,
            "--call",
            r#"ledger__ledger_read={"account":"globex"}"#,
            "--call",
            r#"every__echo={"message":"still here"}"#,
            "--call",
            r#"legacy__echo={"message":"and here"}"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("ready"), "{line}");
    // The dataplane that began the session is gone for good, and the controller restarts.
    f.stack.dataplanes[0].process.kill();
    f.stack.controller.take().unwrap().kill();
    f.stack.start_controller().unwrap();
    f.stack.add_dataplane().unwrap();
    f.until_key_served(2);
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    if !status.success() {
        eprintln!("{}", f.stack.logs());
    }
    assert!(status.success(), "{rest}");
    let out: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(out["tools_after"], out["tools"]);
    assert_eq!(call(&out, "ledger__ledger_read")[0]["text"], "globex: 1200");
    assert_eq!(call(&out, "every__echo")[0]["text"], "Echo: still here");
    assert_eq!(call(&out, "legacy__echo")[0]["text"], "Echo: and here");
    // One session throughout: the id the first dataplane issued is what the second took.
    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let requests = out["requests"].as_array().unwrap();
    let sessions: std::collections::BTreeSet<&str> = requests
        .iter()
        .filter_map(|r| r["session"].as_str())
        .collect();
    assert_eq!(sessions.len(), 1, "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r["port"] == port(&first) && r["session"].is_string())
    );
    assert!(requests.iter().any(|r| r["port"] == port(&second)));

    // The session is the key's own: another key cannot use it, nor can a forged id.
    let session = *sessions.iter().next().unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, body) = rpc(&second, Some(MAILER_KEY), Some(session), &list);
    assert_eq!(status, 404, "{body}");
    let (status, body) = rpc(
        &second,
        Some(FINANCE_KEY),
        Some(&session.replace('A', "B")),
        &list,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = rpc(&second, Some(FINANCE_KEY), Some(session), &list);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ledger__ledger_read"), "{body}");
    // A dataplane started after the controller restarted has only the key the restarted
    // controller sent: the same one, kept in its state directory.
    let (status, body) = rpc(&f.mcp_url(2), Some(FINANCE_KEY), Some(session), &list);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("every__echo"), "{body}");

    // A limited tool while the controller, which counts the calls, is away: refused, not
    // let through uncounted; once it is back, the same call goes through.
    f.stack.controller.take().unwrap().kill();
    let send = r#"ledger__send_email={"to":"d@example.com","body":"4"}"#;
    let tour = |f: &Fixture| {
        f.client(&[
            "tour",
            "--url",
            &f.mcp_url(2),
            "--key",
            MAILER_KEY,
            "--call",
            send,
        ])
    };
    let away = tour(&f);
    let refused = &call(&away, "ledger__send_email")[0]["error"];
    assert_eq!(refused["code"], -32004, "{away}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("cannot be checked"),
        "{away}"
    );
    assert_eq!(
        f.tool_calls(2, "default/ledger", "send_email", "limit_unavailable"),
        1.0
    );
    assert_eq!(
        f.ledger_calls_of("send_email"),
        0,
        "the refused call reached the server"
    );
    f.stack.start_controller().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let back = tour(&f);
        if call(&back, "ledger__send_email")[0]["text"] == "sent" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the controller came back: {back}\n{}",
            f.stack.logs()
        );
    }
    assert_eq!(f.ledger_calls_of("send_email"), 1);
}

/// Sends one POST to `/mcp` and hands back the connection, to read the answer as it comes.
fn post_open(url: &str, session: Option<&str>, message: &Value) -> BufReader<TcpStream> {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let session = session.map_or(String::new(), |s| format!("mcp-session-id: {s}\r\n"));
    let body = message.to_string();
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\
         authorization: Bearer {FINANCE_KEY}\r\n{session}\
         accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(stream)
}

#[test]
fn a_client_that_goes_away_cancels_its_call_at_the_server() {
    let f = Fixture::start();
    let url = f.mcp_url(0);
    let init = initialize();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut post_open(&url, None, &init), &mut answer).unwrap();
    let session = answer
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no session in {answer}"));
    // After its first progress the server falls silent; the client hangs up then. The
    // gateway, which has nothing to send, must notice the client gone by itself.
    let slow = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "ledger__slow_count", "arguments": {"n": 2, "stall_after": 1}, "_meta": {"progressToken": "p"}}});
    let mut stream = post_open(&url, Some(&session), &slow);
    let mut line = String::new();
    while !line.contains("notifications/progress") {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "no progress");
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Fixture::calls(&f.ledger_log)
        .iter()
        .any(|c| c["kind"] == "cancelled")
    {
        assert!(
            Instant::now() < deadline,
            "the server's tool was never cancelled: {:?}\n{}",
            Fixture::calls(&f.ledger_log),
            f.stack.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        f.tool_calls(0, "default/ledger", "slow_count", "cancelled"),
        1.0
    );
}

#[test]
fn bad_requests_get_the_right_status_and_a_json_rpc_error() {
    let f = Fixture::start();
    let url = f.mcp_url(0);
    let init = initialize();
    let (status, body) = rpc(&url, None, None, &init);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32001
    );
    let (status, body) = rpc(&url, Some("tg-not-a-key"), None, &init);
    assert_eq!(status, 401, "{body}");
    // Without a session, only initialize and ping are served.
    let (status, body) = rpc(
        &url,
        Some(FINANCE_KEY),
        None,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = harness::http_request_with(
        "POST",
        &url,
        &[("authorization", &format!("Bearer {FINANCE_KEY}"))],
        "{not json",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32700
    );
    let (status, _) = harness::http_request_with(
        "GET",
        &url,
        &[("authorization", &format!("Bearer {FINANCE_KEY}"))],
        "",
    )
    .unwrap();
    assert_eq!(status, 405);
    // The version a client asks for is agreed when spoken; an unknown one gets the newest.
    let (status, body) = rpc(&url, Some(FINANCE_KEY), None, &init);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    let mut newer = init.clone();
    newer["params"]["protocolVersion"] = json!("2099-01-01");
    let (_, body) = rpc(&url, Some(FINANCE_KEY), None, &newer);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
}
