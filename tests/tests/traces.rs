//! Traces over OTLP, end to end: a real OTLP receiver (tests/python/otlp_receiver.py, on
//! the official OpenTelemetry protobuf definitions), the controller exporting over gRPC,
//! dataplanes over HTTP/protobuf, and an agent written with the official `openai` SDK and
//! the OpenTelemetry OpenAI instrumentation (tests/python/otel_agent.py). One trace holds
//! the agent's spans, the gateway's `chat` spans with one child per attempt, and an MCP
//! `execute_tool` span; a config change is one trace from compile to every apply; the
//! audit records go out as log records; no secret is in any of it, and no prompt unless a
//! route or key opts in to recording messages (then with every secret redacted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::harness::{
    DEMO_KEY, Process, Stack, UPSTREAM_KEYS, free_port, http_request_with, set_faults, workspace,
};

mod common;
use common::*;

const ROUTES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: traced
spec:
  match:
    models: ["traced"]
  targets:
    - provider: openai-primary
      model: gpt-4o
  fallbacks:
    - provider: openai-secondary
      model: gpt-4o-mini
  fallbackOn: [5xx]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: recorded
spec:
  match:
    models: ["recorded"]
  targets:
    - provider: openai-secondary
      model: gpt-4o-mini
  recordMessages: true
---
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata:
  name: recorder
spec:
  secretRef: {name: recorder-key}
  recordMessages: true
---
apiVersion: v1
kind: Secret
metadata: {name: recorder-key, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-recorder-key-0123456789}
"#;

const RECORDER_KEY: &str = "tg-recorder-key-0123456789";

const LEDGER_TOKEN: &str = "ledger-bearer-9c41e";
const PROMPT: &str = "the merger closes on 4d2b-confidential";

fn mcp_manifest(port: u16) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: MCPServer
metadata:
  name: ledger
spec:
  url: http://127.0.0.1:{port}/mcp
  auth:
    header:
      name: Authorization
      prefix: "Bearer "
      secretRef:
        name: ledger-token
---
apiVersion: v1
kind: Secret
metadata:
  name: ledger-token
  labels: {{tollgate.dev/credential: 'true'}}
stringData:
  token: {LEDGER_TOKEN}
---
apiVersion: tollgate.dev/v1alpha1
kind: MCPToolPolicy
metadata:
  name: demo-tools
spec:
  selector:
    matchLabels:
      team: demo
  rules:
    - server: ledger
      allow: ["ledger_read"]
"#
    )
}

/// A span as the receiver got it, with its service's name.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    v: Value,
}

impl Span {
    fn name(&self) -> &str {
        self.v["name"].as_str().unwrap_or("")
    }
    fn id(&self) -> String {
        hex(&self.v["spanId"])
    }
    fn trace(&self) -> String {
        hex(&self.v["traceId"])
    }
    fn parent(&self) -> String {
        hex(&self.v["parentSpanId"])
    }
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or("")
    }
    fn nanos(&self, field: &str) -> u128 {
        self.v[field].as_str().unwrap().parse().unwrap()
    }
    /// An attribute's value, as a JSON value (strings, numbers, booleans, arrays).
    fn attr(&self, key: &str) -> Option<Value> {
        let kv = self.v["attributes"]
            .as_array()?
            .iter()
            .find(|kv| kv["key"] == key)?;
        Some(any_value(&kv["value"]))
    }
    fn str(&self, key: &str) -> String {
        match self.attr(key) {
            Some(Value::String(s)) => s,
            other => panic!("{key} of {} is {other:?}: {:?}", self.name(), self.v),
        }
    }
    fn int(&self, key: &str) -> i64 {
        match self.attr(key) {
            Some(v) => v.as_i64().unwrap_or_else(|| panic!("{key} is {v}")),
            None => panic!("no {key} on {}: {:?}", self.name(), self.v),
        }
    }
}

/// OTLP's JSON mapping of an `AnyValue`, as a plain JSON value (64-bit integers are
/// strings there).
fn any_value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        return json!(i.as_str().unwrap().parse::<i64>().unwrap());
    }
    if let Some(d) = v.get("doubleValue") {
        return d.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        let values = a["values"].as_array().cloned().unwrap_or_default();
        return Value::Array(values.iter().map(any_value).collect());
    }
    Value::Null
}

/// The protobuf JSON mapping writes ids as base64; as hex here.
fn hex(v: &Value) -> String {
    use base64::Engine;
    let Some(s) = v.as_str() else {
        return String::new();
    };
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Received {
    text: String,
    spans: Vec<Span>,
    /// Log record bodies, by service.
    logs: Vec<(String, String)>,
    protocols: HashMap<String, String>,
    /// The `x-` headers each service's exports came with.
    headers: HashMap<String, Value>,
}

fn service_of(resource: &Value) -> String {
    resource["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
        .map(|kv| kv["value"]["stringValue"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn received(out: &Path) -> Received {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let (mut spans, mut logs, mut protocols) = (Vec::new(), Vec::new(), HashMap::new());
    let mut headers = HashMap::new();
    for line in text.lines() {
        let export: Value = serde_json::from_str(line).unwrap();
        let request = &export["request"];
        if export["signal"] == "traces" {
            for rs in request["resourceSpans"].as_array().unwrap() {
                let service = service_of(&rs["resource"]);
                protocols.insert(
                    service.clone(),
                    export["protocol"].as_str().unwrap().to_string(),
                );
                headers.insert(service.clone(), export["headers"].clone());
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        spans.push(Span {
                            service: service.clone(),
                            v: s.clone(),
                        });
                    }
                }
            }
        } else {
            for rl in request["resourceLogs"].as_array().unwrap() {
                let service = service_of(&rl["resource"]);
                for sl in rl["scopeLogs"].as_array().unwrap() {
                    for r in sl["logRecords"].as_array().unwrap() {
                        let body = r["body"]["stringValue"].as_str().unwrap_or("");
                        logs.push((service.clone(), body.to_string()));
                    }
                }
            }
        }
    }
    Received {
        text,
        spans,
        logs,
        protocols,
        headers,
    }
}

struct Receiver {
    _process: Process,
    grpc: u16,
    http: u16,
    out: PathBuf,
}

fn start_receiver(dir: &Path) -> Receiver {
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let out = dir.join("otlp.jsonl");
    let script = workspace().join("tests/python/otlp_receiver.py");
    let args = [
        script.display().to_string(),
        "--grpc-port".into(),
        grpc.to_string(),
        "--http-port".into(),
        http.to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    let p = Process::start("otlp-receiver", Path::new(&python()), &args, dir).unwrap();
    wait_listening(&p, grpc);
    wait_listening(&p, http);
    Receiver {
        _process: p,
        grpc,
        http,
        out,
    }
}

fn mcp_server(stack: &Stack) -> (Process, u16) {
    let port = free_port().unwrap();
    let log = stack.dir.path().join("ledger-calls.jsonl");
    let args = [
        workspace()
            .join("tests/python/mcp_server.py")
            .display()
            .to_string(),
        "--port".into(),
        port.to_string(),
        "--log".into(),
        log.display().to_string(),
        "--bearer".into(),
        LEDGER_TOKEN.into(),
    ];
    let p = Process::start("ledger", Path::new(&python()), &args, stack.dir.path()).unwrap();
    wait_listening(&p, port);
    (p, port)
}

#[tokio::test]
async fn one_trace_from_the_agent_through_the_gateway_to_the_provider() {
    let receiver_dir = tempfile::tempdir().unwrap();
    let receiver = start_receiver(receiver_dir.path());
    let grpc = format!("http://127.0.0.1:{}", receiver.grpc);
    let http = format!("http://127.0.0.1:{}", receiver.http);
    let fast = ("OTEL_BSP_SCHEDULE_DELAY", "100");
    let mut stack = Stack::start_env(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-otlp-tenant=controllers"),
            fast,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &http),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "gateway-dataplane"),
            // Values are URL-encoded, as the specification says.
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-otlp-tenant=gateway%20team,x-otlp-env=test",
            ),
            fast,
            ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap();
    // The dataplane the agent uses also sends its audit records as log records.
    stack
        .add_dataplane_with(&["--audit", "stdout,otlp"])
        .unwrap();
    let api = stack.dataplanes[1].api.clone();
    let (_ledger, ledger_port) = mcp_server(&stack);
    stack.write_manifest("traced.yaml", ROUTES).unwrap();
    stack
        .write_manifest("ledger.yaml", &mcp_manifest(ledger_port))
        .unwrap();
    with_logs(&stack, async {
        until_served(&api, DEMO_KEY, "traced", Duration::from_secs(10)).await;
        until_served(&api, RECORDER_KEY, "gpt-4o-mini", Duration::from_secs(10)).await;
        set_faults(
            &stack.mock_url,
            &json!([{"model": "gpt-4o", "status": 502}]),
        )
        .unwrap();
        let mcp = api.trim_end_matches("/v1").to_string() + "/mcp";
        let out = run_python(
            &stack,
            "otel_agent.py",
            &[
                "--api",
                &api,
                "--mcp",
                &mcp,
                "--key",
                DEMO_KEY,
                "--otlp",
                &format!("127.0.0.1:{}", receiver.grpc),
                "--failover-model",
                "traced",
                "--stream-model",
                "gpt-4o-mini",
                "--prompt",
                PROMPT,
            ],
        );
        let agent: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let trace = agent["trace_id"].as_str().unwrap().to_string();
        assert_eq!(agent["tool_text"], "acct-9: 1200", "{agent}");

        // Every span of the trace has arrived: two chat spans and the tool call's.
        let mut got = received(&receiver.out);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ours = |name: &str| {
                got.spans
                    .iter()
                    .filter(|s| s.trace() == trace && s.name().starts_with(name))
                    .filter(|s| s.service == "gateway-dataplane")
                    .count()
            };
            if ours("chat ") >= 2 && ours("execute_tool ") >= 1 && ours("POST") >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the trace's spans did not all arrive: {:?}",
                got.spans
                    .iter()
                    .map(|s| (s.service.as_str(), s.name(), s.trace()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            got = received(&receiver.out);
        }
        assert_eq!(got.protocols["gateway-dataplane"], "http/protobuf");
        assert_eq!(
            got.headers["gateway-dataplane"],
            json!({"x-otlp-tenant": "gateway team", "x-otlp-env": "test"})
        );
        let in_trace: Vec<&Span> = got.spans.iter().filter(|s| s.trace() == trace).collect();
        let by_id: HashMap<String, &Span> = in_trace.iter().map(|s| (s.id(), *s)).collect();
        let gateway = |name: &str| -> Vec<&Span> {
            in_trace
                .iter()
                .copied()
                .filter(|s| s.service == "gateway-dataplane" && s.name() == name)
                .collect()
        };

        // The failover: the gateway's span is a child of the agent's HTTP client span,
        // itself under the OpenAI instrumentation's `chat traced` span.
        let chat = gateway("chat traced");
        assert_eq!(chat.len(), 1, "{chat:?}");
        let chat = chat[0];
        assert_eq!(chat.kind(), "SPAN_KIND_SERVER");
        let client_http = by_id[&chat.parent()];
        assert_eq!(client_http.service, "test-agent");
        let client_chat = by_id[&client_http.parent()];
        assert_eq!(client_chat.name(), "chat traced", "{:?}", client_chat.v);
        assert_eq!(client_chat.service, "test-agent");
        for (key, want) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", "traced"),
            ("gen_ai.response.model", "gpt-4o-mini"),
            ("tollgate.key", "demo"),
            ("tollgate.namespace", "default"),
            ("tollgate.route", "default/traced"),
            ("tollgate.provider", "default/openai-secondary"),
        ] {
            assert_eq!(chat.str(key), want, "{key}: {:?}", chat.v);
        }
        assert_eq!(
            chat.str("gen_ai.response.id"),
            agent["failover_response_id"].as_str().unwrap()
        );
        assert_eq!(
            chat.attr("gen_ai.response.finish_reasons"),
            Some(json!(["stop"]))
        );
        assert_eq!(chat.int("gen_ai.request.max_tokens"), 50);
        assert_eq!(chat.attr("gen_ai.request.temperature"), Some(json!(0.25)));
        assert_eq!(chat.attr("gen_ai.request.stream"), Some(json!(false)));
        assert_eq!(chat.int("http.response.status_code"), 200);
        assert_eq!(chat.int("tollgate.attempts"), 2);
        assert!(chat.int("gen_ai.usage.input_tokens") > 0);
        assert!(chat.int("gen_ai.usage.output_tokens") > 0);
        assert!(chat.attr("tollgate.cost_usd").unwrap().as_f64().unwrap() > 0.0);
        assert!(chat.attr("tollgate.team").is_some());
        // One child per attempt: the 502, then the fallback's 200.
        let mut attempts: Vec<&Span> = in_trace
            .iter()
            .copied()
            .filter(|s| s.parent() == chat.id())
            .collect();
        attempts.sort_by_key(|s| s.int("tollgate.attempt"));
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(attempts[0].kind(), "SPAN_KIND_CLIENT");
        assert_eq!(attempts[0].int("http.response.status_code"), 502);
        assert_eq!(attempts[0].str("error.type"), "5xx");
        assert_eq!(attempts[0].str("gen_ai.request.model"), "gpt-4o");
        assert_eq!(attempts[0].str("server.address"), "127.0.0.1");
        assert_eq!(attempts[0].int("tollgate.credential.index"), 0);
        assert_eq!(attempts[1].int("http.response.status_code"), 200);
        assert!(attempts[1].attr("error.type").is_none());
        assert!(attempts[0].nanos("endTimeUnixNano") <= attempts[1].nanos("startTimeUnixNano"));
        // mock-llm received each attempt's own span as its parent.
        let upstream = stack.upstream_requests().unwrap();
        let traceparents: Vec<String> = upstream
            .iter()
            .filter_map(|r| r["headers"]["traceparent"].as_str())
            .map(str::to_string)
            .collect();
        for a in &attempts {
            let want = format!("00-{trace}-{}-01", a.id());
            assert!(
                traceparents.contains(&want),
                "{want} not in {traceparents:?}"
            );
        }

        // The stream: its span lasts until the last chunk, not until its headers.
        let stream = gateway("chat gpt-4o-mini");
        assert_eq!(stream.len(), 1, "{stream:?}");
        let stream = stream[0];
        assert_eq!(stream.attr("gen_ai.request.stream"), Some(json!(true)));
        let lasted = stream.nanos("endTimeUnixNano") - stream.nanos("startTimeUnixNano");
        assert!(
            lasted >= 600_000_000,
            "five chunks 150 ms apart, yet the span lasted {lasted} ns"
        );
        let ttft = stream.attr("tollgate.time_to_first_token").unwrap();
        assert!(
            ttft.as_f64().unwrap() * 1e9 < lasted as f64 - 400e6,
            "the first token came well before the end: {ttft} s of {lasted} ns"
        );
        assert!(
            stream.nanos("endTimeUnixNano") <= agent["stream_ended_ns"].as_u64().unwrap() as u128,
            "the span ends before the agent has read the end"
        );
        // Read from the stream as it passed: the answer's id and finish reason.
        assert!(stream.str("gen_ai.response.id").starts_with("chatcmpl-"));
        assert_eq!(
            stream.attr("gen_ai.response.finish_reasons"),
            Some(json!(["stop"]))
        );
        assert!(
            stream.attr("gen_ai.input.messages").is_none(),
            "not opted in"
        );

        // MCP: the tool call's span under its JSON-RPC request's span, under the agent's.
        // Named by the server's own name of the tool, as its audit record names it.
        let tool = gateway("execute_tool ledger_read");
        assert_eq!(tool.len(), 1, "{tool:?}");
        let tool = tool[0];
        assert_eq!(tool.str("gen_ai.tool.name"), "ledger_read");
        assert_eq!(tool.str("gen_ai.operation.name"), "execute_tool");
        assert_eq!(tool.str("tollgate.mcp.server"), "default/ledger");
        assert_eq!(tool.str("tollgate.mcp.decision"), "ok");
        let rpc = by_id[&tool.parent()];
        assert_eq!(rpc.name(), "tools/call");
        assert_eq!(rpc.str("mcp.method.name"), "tools/call");
        assert_eq!(by_id[&rpc.parent()].service, "test-agent");
        // The MCP server was called with the tool span's context.
        let calls = std::fs::read_to_string(stack.dir.path().join("ledger-calls.jsonl")).unwrap();
        assert!(
            calls.contains(&format!("00-{trace}-{}-01", tool.id())),
            "{calls}"
        );

        // A client's own method name never becomes a span's name or attribute: an unknown
        // method is `other`, as in metrics.
        let hostile = format!("x{}-hostile-method", "y".repeat(4000));
        let hostile_trace = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
        let (status, _) = http_request_with(
            "POST",
            &mcp,
            &[
                ("authorization", &format!("Bearer {DEMO_KEY}")),
                ("accept", "application/json, text/event-stream"),
                (
                    "traceparent",
                    &format!("00-{hostile_trace}-00f067aa0ba902b7-01"),
                ),
            ],
            &json!({"jsonrpc": "2.0", "id": 1, "method": hostile}).to_string(),
        )
        .unwrap();
        assert_eq!(status, 400);
        let deadline = Instant::now() + Duration::from_secs(10);
        let other = loop {
            let got = received(&receiver.out);
            if let Some(s) = got.spans.iter().find(|s| s.trace() == hostile_trace) {
                assert!(
                    !got.text.contains("-hostile-method"),
                    "the method was exported"
                );
                break s.clone();
            }
            assert!(Instant::now() < deadline, "no span for the unknown method");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(other.name(), "other");
        assert_eq!(other.str("mcp.method.name"), "other");
        assert_eq!(other.int("http.response.status_code"), 400);

        recorded_messages(&api, &receiver.out).await;

        // A change to the config: one trace from the controller's compile through its
        // pushes to every dataplane's apply.
        stack
            .write_manifest("later.yaml", &ROUTES.replace("traced", "later"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let (compile, applies) = loop {
            let got = received(&receiver.out);
            let compiles: Vec<Span> = got
                .spans
                .iter()
                .filter(|s| s.service == "tollgate-controller" && s.name() == "compile")
                .cloned()
                .collect();
            let found = compiles.iter().rev().find_map(|c| {
                let applies: Vec<Span> = got
                    .spans
                    .iter()
                    .filter(|s| s.trace() == c.trace() && s.name() == "apply")
                    .cloned()
                    .collect();
                (applies.len() >= 2).then(|| (c.clone(), applies))
            });
            if let Some(f) = found {
                break f;
            }
            assert!(
                Instant::now() < deadline,
                "no compile trace reached two applies"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(got_protocol(&receiver.out, "tollgate-controller"), "grpc");
        assert_eq!(
            received(&receiver.out).headers["tollgate-controller"]["x-otlp-tenant"],
            "controllers"
        );
        let all = received(&receiver.out).spans;
        for apply in &applies {
            assert_eq!(apply.service, "gateway-dataplane");
            let push = all.iter().find(|s| s.id() == apply.parent()).unwrap();
            assert_eq!(push.name(), "push");
            assert_eq!(push.service, "tollgate-controller");
            assert_eq!(push.str("tollgate.reply"), "ack");
            assert_eq!(push.parent(), compile.id());
        }

        // The audit records went out as log records too.
        let got = received(&receiver.out);
        let audited = got
            .logs
            .iter()
            .filter(|(service, _)| service == "gateway-dataplane")
            .map(|(_, body)| serde_json::from_str::<Value>(body).unwrap())
            .filter(|r| r["trace_id"] == trace.as_str())
            .collect::<Vec<_>>();
        assert!(
            audited
                .iter()
                .any(|r| r["kind"] == "llm" && r["requested_model"] == "traced"),
            "{audited:?}"
        );
        assert!(
            audited.iter().any(|r| r["kind"] == "mcp_tool_call"),
            "{audited:?}"
        );

        // No secret and no prompt in any span, log record or log line.
        let token = std::fs::read_to_string(&stack.token_file).unwrap();
        let everything = got.text + &stack.logs();
        for secret in [DEMO_KEY, token.trim(), LEDGER_TOKEN, PROMPT]
            .into_iter()
            .chain(UPSTREAM_KEYS)
        {
            assert!(
                !everything.contains(secret),
                "{secret:?} was exported or logged"
            );
        }
    })
    .await;
}

/// A traced request under `trace` to `path`; its span once exported.
async fn traced_request(
    api: &str,
    out: &Path,
    path: &str,
    key: &str,
    trace: &str,
    body: Value,
) -> Span {
    let (status, answer) = http_request_with(
        "POST",
        &format!("{api}{path}"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
        ],
        &body.to_string(),
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = received(out);
        let span =
            (got.spans.iter()).find(|s| s.trace() == trace && s.kind() == "SPAN_KIND_SERVER");
        if let Some(s) = span {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "no span for {trace}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A span's recorded messages, parsed, checked free of every secret.
fn recorded(span: &Span, key: &str) -> Value {
    let text = span.str(key);
    for secret in [DEMO_KEY, RECORDER_KEY, LEDGER_TOKEN]
        .into_iter()
        .chain(UPSTREAM_KEYS)
    {
        assert!(!text.contains(secret), "{secret} in {key}: {text}");
    }
    serde_json::from_str(&text).unwrap()
}

/// A route and a key that opt in: the prompt and the answer are in the span and the
/// audit record, shaped as the GenAI conventions say, with every secret redacted.
async fn recorded_messages(api: &str, out: &Path) {
    let leaky = format!(
        "recorded-marker-71 {} {} {LEDGER_TOKEN}",
        UPSTREAM_KEYS[0], DEMO_KEY
    );
    // By the route, whole.
    let by_route = "7e57ab1e7e57ab1e7e57ab1e7e57ab1e";
    let span = traced_request(
        api,
        out,
        "/chat/completions",
        DEMO_KEY,
        by_route,
        json!({"model": "recorded", "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": leaky}
        ]}),
    )
    .await;
    assert_eq!(span.str("tollgate.messages.recorded_by"), "route");
    let input = recorded(&span, "gen_ai.input.messages");
    assert_eq!(
        input,
        json!([
            {"role": "system", "parts": [{"type": "text", "content": "be terse"}]},
            {"role": "user", "parts": [{"type": "text",
                "content": "recorded-marker-71 <redacted> <redacted> <redacted>"}]}
        ])
    );
    let output = recorded(&span, "gen_ai.output.messages");
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["finish_reason"], "stop");
    assert_eq!(
        output[0]["parts"][0]["content"],
        "Mock reply to: recorded-marker-71 <redacted> <redacted> <redacted>",
        "the echoed secrets are redacted too"
    );

    // By the key, streamed, in Anthropic's format (translated to the OpenAI provider).
    let by_key = "7e57ab1e7e57ab1e7e57ab1e7e57ab1f";
    let span = traced_request(
        api,
        out,
        "/messages",
        RECORDER_KEY,
        by_key,
        json!({"model": "gpt-4o-mini", "max_tokens": 64, "stream": true,
               "system": "answer in one line",
               "messages": [{"role": "user", "content": "streamed-marker-72 tg-recorder-key-0123456789"}]}),
    )
    .await;
    assert_eq!(span.str("tollgate.messages.recorded_by"), "key");
    assert_eq!(
        recorded(&span, "gen_ai.system_instructions"),
        json!([{"type": "text", "content": "answer in one line"}])
    );
    let input = recorded(&span, "gen_ai.input.messages");
    assert_eq!(
        input[0]["parts"][0]["content"],
        "streamed-marker-72 <redacted>"
    );
    let output = recorded(&span, "gen_ai.output.messages");
    assert_eq!(
        output,
        json!([{"role": "assistant", "finish_reason": "stop", "parts": [
            {"type": "text", "content": "Mock reply to: streamed-marker-72 <redacted>"}
        ]}])
    );
    assert!(span.str("gen_ai.response.id").starts_with("msg_"));
    assert_eq!(
        span.attr("gen_ai.response.finish_reasons"),
        Some(json!(["end_turn"]))
    );

    // Embeddings: their own span, and never their input, whatever the key says.
    let embedded = "7e57ab1e7e57ab1e7e57ab1e7e57ab20";
    let span = traced_request(
        api,
        out,
        "/embeddings",
        RECORDER_KEY,
        embedded,
        json!({"model": "text-embedding-3-small", "input": ["embedded-marker-73"]}),
    )
    .await;
    assert_eq!(span.name(), "embeddings text-embedding-3-small");
    assert_eq!(span.str("gen_ai.operation.name"), "embeddings");
    assert_eq!(span.str("gen_ai.provider.name"), "openai");
    assert!(span.int("gen_ai.usage.input_tokens") > 0);
    assert!(span.attr("gen_ai.input.messages").is_none());
    assert!(!received(out).text.contains("embedded-marker-73"));

    // The audit records say who opted in, and carry the same redacted messages.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = received(out);
        let records: Vec<Value> = (got.logs.iter())
            .map(|(_, body)| serde_json::from_str::<Value>(body).unwrap())
            .filter(|r| r["trace_id"] == by_route || r["trace_id"] == by_key)
            .collect();
        if records.len() == 2 {
            for r in &records {
                let want = if r["trace_id"] == by_key {
                    "key"
                } else {
                    "route"
                };
                assert_eq!(r["messages"]["recorded_by"], want, "{r}");
                let text = r["messages"].to_string();
                assert!(text.contains("-marker-7"), "{text}");
                assert!(!text.contains(UPSTREAM_KEYS[0]) && !text.contains(RECORDER_KEY));
            }
            break;
        }
        assert!(Instant::now() < deadline, "{records:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn got_protocol(out: &Path, service: &str) -> String {
    received(out).protocols[service].clone()
}
