//! The translator against the golden matrix (`testdata/pairs`): the files of an OpenAI
//! client and an Anthropic provider, which `provider/golden.rs` writes and checks for the
//! whole plan. Here the same files check the translator's own entry points, and that a
//! stream translates alike however it is cut.

use std::path::PathBuf;

use super::*;
use crate::base::sse::Parser;

fn pairs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/pairs")
}

/// `actual` must equal the golden file `openai-anthropic/<name>` (rewritten by the
/// matrix test under `UPDATE_GOLDEN=1`, not here).
fn golden(name: &str, actual: &str) {
    let path = pairs().join("golden/openai-anthropic").join(name);
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run the golden matrix with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "{name} differs from the golden file");
}

/// An input of the matrix: `client/openai/<name>` or `upstream/anthropic/<name>`.
fn input(name: &str) -> Vec<u8> {
    std::fs::read(pairs().join(name)).unwrap()
}

fn pretty(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

#[test]
fn requests() {
    for case in ["text", "system_images_stop"] {
        let out = request(
            &input(&format!("client/openai/{case}.json")),
            "claude-sonnet-4-5",
        )
        .unwrap();
        golden(&format!("request_{case}.json"), &pretty(&out));
    }
}

#[test]
fn refused_parameters_name_themselves() {
    for (body, param) in [
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]}"#,
            "functions",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
            "n",
        ),
        // JSON mode travels as a forced tool, so it cannot join the client's own tools.
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            "response_format",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
            "response_format.type",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            "messages[0].tool_call_id",
        ),
    ] {
        match request(body.as_bytes(), "c") {
            Err(TranslateError::BadRequest(m)) => assert!(m.starts_with(param), "{m}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let out = request(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#, "c").unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["tool_choice"],
        serde_json::json!({"type": "tool", "name": "json_response"})
    );
    // Parameters with no Anthropic equivalent that do not change the request are dropped.
    let out = request(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1,"presence_penalty":0.5}"#, "c").unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v.get("seed").is_none() && v.get("presence_penalty").is_none());
    assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
}

#[test]
fn responses() {
    let out = response(&input("upstream/anthropic/text.json"), 1_700_000_000).unwrap();
    golden("response_text.json", &pretty(&out));
    golden(
        "response_error.json",
        &pretty(&error(&input("upstream/anthropic/error.json"))),
    );
}

/// The fast path for text deltas writes the same chunk as building it as a document.
#[test]
fn fast_text_chunks_equal_slow_ones() {
    for include_usage in [false, true] {
        let mut t = StreamTranslator::new(5, include_usage, false);
        let start = crate::base::sse::Event {
            name: "message_start".into(),
            data: r#"{"type":"message_start","message":{"id":"msg_\"x","model":"claude","usage":{"input_tokens":1}}}"#.into(),
        };
        t.event(&start);
        for text in ["plain", "quote \\\" and \\n newline", "unicode \\u00e9 é"] {
            let data = format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            );
            let fast = t.event(&crate::base::sse::Event {
                name: "content_block_delta".into(),
                data: data.clone(),
            });
            let v: Value = serde_json::from_str(&data).unwrap();
            let slow = t.out.delta(json!({"content": v["delta"]["text"]}), None);
            let parse = |s: &str| {
                serde_json::from_str::<Value>(s.trim_start_matches("data: ").trim()).unwrap()
            };
            assert_eq!(parse(&fast), parse(&slow), "{text}");
            assert!(fast.starts_with("data: {") && fast.ends_with("}\n\n"));
        }
    }
}

#[test]
fn streams_translate_event_by_event_whatever_the_chunking() {
    let raw = input("upstream/anthropic/text.sse");
    let run = |cut: usize| {
        let mut parser = Parser::default();
        let mut t = StreamTranslator::new(1_700_000_000, true, false);
        let mut out = String::new();
        for part in raw.chunks(cut) {
            for event in parser.feed(part).unwrap() {
                out += &t.event(&event);
            }
        }
        out + &t.finish()
    };
    let whole = run(raw.len());
    golden("stream_text_usage.sse", &whole);
    for cut in [1, 7, 64] {
        assert_eq!(run(cut), whole, "chunks of {cut} bytes");
    }
    // Without include_usage: no usage fields at all.
    let mut parser = Parser::default();
    let mut t = StreamTranslator::new(1, false, false);
    let mut out = String::new();
    for event in parser.feed(&raw).unwrap() {
        out += &t.event(&event);
    }
    assert!(!out.contains("usage"));
    assert!(out.ends_with("data: [DONE]\n\n"));
}
