//! Golden files for every client format x provider wire format, through the same
//! [`Plan`] the proxy uses: requests (`testdata/pairs/client/<client>/*.json`), answers,
//! errors and streams (`testdata/pairs/upstream/<wire>/*`). Outputs are in
//! `testdata/pairs/golden/<client>-<wire>/`. `UPDATE_GOLDEN=1` rewrites them; review the
//! diff. Streams are also fed in small chunks and must give the same output.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plan::Plan;
use crate::base::Api;
use crate::config::model::{ProviderKind, Wire};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/pairs")
}

fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

fn pretty(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

fn cases(dir: &Path, ext: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

const WIRES: [(&str, Wire, ProviderKind, &str); 5] = [
    ("openai", Wire::OpenAi, ProviderKind::OpenAi, "gpt-4o"),
    (
        "anthropic",
        Wire::Anthropic,
        ProviderKind::Anthropic,
        "claude-sonnet-4-5",
    ),
    (
        "vertex-anthropic",
        Wire::VertexAnthropic,
        ProviderKind::VertexAi,
        "claude-sonnet-4-5",
    ),
    (
        "gemini",
        Wire::Gemini,
        ProviderKind::Gemini,
        "gemini-2.5-flash",
    ),
    (
        "bedrock",
        Wire::Bedrock,
        ProviderKind::Bedrock,
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
    ),
];

fn plan(client: Api, wire: Wire, provider: ProviderKind, model: &str, include_usage: bool) -> Plan {
    Plan {
        client,
        wire,
        provider,
        model: model.into(),
        stream: true,
        include_usage,
        created: 1_700_000_000,
        id: "tg-test".into(),
        json_mode: false,
        ids: None,
        echo: None,
    }
}

/// The upstream stream for a case: SSE as is; Bedrock's events encoded as AWS frames.
fn upstream_stream(wire_dir: &str, raw: &[u8]) -> Vec<u8> {
    if wire_dir != "bedrock" {
        return raw.to_vec();
    }
    let mut out = Vec::new();
    for line in std::str::from_utf8(raw)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap();
        out.extend(crate::base::eventstream::encode_event(
            v["event"].as_str().unwrap(),
            v["data"].to_string().as_bytes(),
        ));
    }
    out
}

/// The client formats of the matrix. A Responses client's `openai` wire is a chat-only
/// OpenAI-compatible server (OpenAI and Azure OpenAI serve the Responses API themselves).
const CLIENTS: [(&str, Api); 3] = [
    ("openai", Api::OpenAi),
    ("anthropic", Api::Anthropic),
    ("responses", Api::Responses),
];

/// The plan of a pair, with its output folder's name.
fn pair(
    (client_dir, client): (&str, Api),
    (wire_dir, wire, provider, model): (&str, Wire, ProviderKind, &str),
    include_usage: bool,
) -> (String, Plan) {
    let (wire_dir, provider) = match (client, wire) {
        (Api::Responses, Wire::OpenAi) => ("openai-compatible", ProviderKind::OpenAiCompatible),
        _ => (wire_dir, provider),
    };
    let mut p = plan(client, wire, provider, model, include_usage);
    if client == Api::Responses {
        // Answers echo their request: this one's (it asks for reasoning summaries).
        let request = std::fs::read(root().join("client/responses/items.json")).unwrap();
        p.request(&request).unwrap();
    }
    (format!("{client_dir}-{wire_dir}"), p)
}

fn run_stream(p: &Plan, bytes: &[u8], chunk: usize) -> String {
    let mut chain = p.stream();
    let mut out = String::new();
    for part in bytes.chunks(chunk) {
        out += &chain.feed(part).unwrap();
    }
    out + &chain.end()
}

#[test]
fn every_pair() {
    let root = root();
    for (client_dir, client) in CLIENTS {
        for (wire_dir, wire, provider, model) in WIRES {
            let (name, p) = pair(
                (client_dir, client),
                (wire_dir, wire, provider, model),
                false,
            );
            let out_dir = root.join(format!("golden/{name}"));
            // Requests.
            for (name, body) in cases(&root.join("client").join(client_dir), "json") {
                let mut p = p.clone();
                p.json_mode = client == Api::OpenAi
                    && crate::translate::head::ChatHead::parse(&body).is_ok_and(|h| h.json_mode);
                let out = if p.passes_request() {
                    "passed through with only the model rewritten\n".to_string()
                } else {
                    match p.request(&body) {
                        Ok(out) => pretty(&out),
                        Err(e) => format!("400: {e}\n"),
                    }
                };
                golden(&out_dir.join(format!("request_{name}.json")), &out);
            }
            let upstream_wire = if wire_dir == "vertex-anthropic" {
                "anthropic"
            } else {
                wire_dir
            };
            let up = root.join("upstream").join(upstream_wire);
            // Answers and errors.
            for (name, body) in cases(&up, "json") {
                let out = if name == "error" {
                    let status = 400;
                    let mut headers = http::HeaderMap::new();
                    headers.insert(
                        "x-amzn-errortype",
                        http::HeaderValue::from_static(
                            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                        ),
                    );
                    pretty(&p.error(status, body.clone().into(), &headers))
                } else {
                    let (out, usage) = p.response(body.clone().into()).unwrap();
                    assert!(
                        usage.is_some(),
                        "{client_dir}-{wire_dir} {name}: no usage read"
                    );
                    pretty(&out)
                };
                golden(&out_dir.join(format!("response_{name}.json")), &out);
            }
            // Streams, with and without the client asking for usage (OpenAI clients).
            let ext = if wire == Wire::Bedrock {
                "jsonl"
            } else {
                "sse"
            };
            for (name, raw) in cases(&up, ext) {
                let bytes = upstream_stream(wire_dir, &raw);
                for include_usage in [false, true] {
                    if include_usage && client != Api::OpenAi {
                        continue;
                    }
                    let (_, p) = pair(
                        (client_dir, client),
                        (wire_dir, wire, provider, model),
                        include_usage,
                    );
                    let whole = run_stream(&p, &bytes, bytes.len());
                    for chunk in [1, 5, 64] {
                        assert_eq!(
                            run_stream(&p, &bytes, chunk),
                            whole,
                            "{client_dir}-{wire_dir} {name}: chunks of {chunk}"
                        );
                    }
                    let mut chain = p.stream();
                    chain.feed(&bytes).unwrap();
                    chain.end();
                    assert!(
                        chain.usage().is_some(),
                        "{client_dir}-{wire_dir} {name}: no usage"
                    );
                    let suffix = if include_usage { "_usage" } else { "" };
                    golden(&out_dir.join(format!("stream_{name}{suffix}.sse")), &whole);
                }
            }
        }
    }
}

/// A stream cut short ends with an error event in the client's format, never a clean end.
#[test]
fn cut_streams_end_in_an_error() {
    let root = root();
    for (client_dir, client) in CLIENTS {
        for (wire_dir, wire, provider, model) in WIRES {
            let (_, p) = pair(
                (client_dir, client),
                (wire_dir, wire, provider, model),
                false,
            );
            if p.passes_response() {
                continue;
            }
            let upstream_wire = if wire_dir == "vertex-anthropic" {
                "anthropic"
            } else {
                wire_dir
            };
            let ext = if wire == Wire::Bedrock {
                "jsonl"
            } else {
                "sse"
            };
            let raw = std::fs::read(
                root.join("upstream")
                    .join(upstream_wire)
                    .join(format!("text.{ext}")),
            )
            .unwrap();
            let bytes = upstream_stream(wire_dir, &raw);
            let cut = &bytes[..bytes.len() / 2];
            let out = run_stream(&p, cut, cut.len());
            let tail = out.rsplit("\n\n").nth(1).unwrap_or("");
            assert!(tail.contains("error"), "{client_dir}-{wire_dir}: {out}");
            assert!(
                !out.contains("[DONE]")
                    && !out.contains("message_stop")
                    && !out.contains("response.completed"),
                "{client_dir}-{wire_dir}: {out}"
            );
        }
    }
}

/// JSON mode through a forced tool: the tool call in the provider's answer (JSON and
/// stream) reaches the OpenAI client as the message content, finishing with `stop`.
#[test]
fn json_mode_answers_are_content() {
    let root = root();
    for (wire_dir, wire, provider, model) in WIRES {
        if !matches!(
            wire,
            Wire::Anthropic | Wire::VertexAnthropic | Wire::Bedrock
        ) {
            continue;
        }
        let mut p = plan(Api::OpenAi, wire, provider, model, false);
        p.json_mode = true;
        let upstream_wire = if wire_dir == "vertex-anthropic" {
            "anthropic"
        } else {
            wire_dir
        };
        let up = root.join("upstream").join(upstream_wire);
        let out_dir = root.join(format!("golden/openai-{wire_dir}"));
        let body = std::fs::read(up.join("tool_call.json")).unwrap();
        let (out, _) = p.response(body.into()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            serde_json::from_str::<Value>(content).is_ok(),
            "{wire_dir}: {v}"
        );
        assert!(
            v["choices"][0]["message"].get("tool_calls").is_none(),
            "{wire_dir}: {v}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{wire_dir}");
        golden(&out_dir.join("response_json_mode.json"), &pretty(&out));

        let ext = if wire == Wire::Bedrock {
            "jsonl"
        } else {
            "sse"
        };
        let raw = std::fs::read(up.join(format!("tool_call.{ext}"))).unwrap();
        let bytes = upstream_stream(wire_dir, &raw);
        let whole = run_stream(&p, &bytes, bytes.len());
        assert_eq!(run_stream(&p, &bytes, 7), whole, "{wire_dir}: chunked");
        let mut text = String::new();
        let mut finish = None;
        for event in whole.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            let Ok(chunk) = serde_json::from_str::<Value>(event) else {
                continue;
            };
            assert!(!event.contains("tool_calls"), "{wire_dir}: {event}");
            if let Some(c) = chunk
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(c);
            }
            if let Some(f) = chunk
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                finish = Some(f.to_string());
            }
        }
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            serde_json::from_str::<Value>(content).unwrap(),
            "{wire_dir}: the streamed JSON is the whole JSON"
        );
        assert_eq!(finish.as_deref(), Some("stop"), "{wire_dir}");
        golden(&out_dir.join("stream_json_mode.sse"), &whole);
    }
}
