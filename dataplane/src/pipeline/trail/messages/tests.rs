use super::*;
use tollgate_proto as pb;

fn snapshot_with_secret(secret: &str) -> Arc<Snapshot> {
    let p = crate::config::redact::provider_with_secret(pb::ProviderType::Openai, secret);
    let mut s = Snapshot::default();
    s.providers.insert("default/p".into(), p);
    Arc::new(s)
}

#[test]
fn an_openai_prompt_becomes_parts_with_secrets_redacted() {
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "my key is sk-live-provider-1"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"}
        ]
    });
    let r = Recording::of_request(
        body.to_string().as_bytes(),
        Api::OpenAi,
        "key",
        snapshot_with_secret("sk-live-provider-1"),
    );
    assert_eq!(r.system, None);
    assert_eq!(
        r.input,
        json!([
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [
                {"type": "text", "content": "my key is <redacted>"},
                {"type": "image_url"}
            ]},
            {"role": "assistant", "parts": [
                {"type": "tool_call", "id": "call_1", "name": "lookup", "arguments": {"q": "x"}}
            ]},
            {"role": "tool", "parts": [
                {"type": "tool_call_response", "id": "call_1", "response": "found"}
            ]}
        ])
    );
    assert!(!r.input.to_string().contains("AAAA"), "no image data");
}

#[test]
fn an_anthropic_prompt_keeps_its_system_apart() {
    let body = json!({
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "you are terse"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "x"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "found"}]}
            ]}
        ]
    });
    let r = Recording::of_request(
        body.to_string().as_bytes(),
        Api::Anthropic,
        "route",
        Arc::new(Snapshot::default()),
    );
    assert_eq!(
        r.system,
        Some(json!([{"type": "text", "content": "you are terse"}]))
    );
    assert_eq!(
        r.input,
        json!([
            {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
            {"role": "assistant", "parts": [
                {"type": "reasoning", "content": "hmm"},
                {"type": "tool_call", "id": "tu_1", "name": "lookup", "arguments": {"q": "x"}}
            ]},
            {"role": "user", "parts": [
                {"type": "tool_call_response", "id": "tu_1", "response": "found"}
            ]}
        ])
    );
}

#[test]
fn a_long_prompt_keeps_its_newest_messages_within_the_bound() {
    let big = "x".repeat(MAX_RECORDED_BYTES / 2 + 10);
    let body = json!({"messages": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": big},
        {"role": "user", "content": big},
    ]});
    let r = Recording::of_request(
        body.to_string().as_bytes(),
        Api::OpenAi,
        "key",
        Arc::new(Snapshot::default()),
    );
    let messages = r.input.as_array().unwrap();
    assert_eq!(messages.len(), 2, "the oldest message is left out");
    let kept: usize = messages
        .iter()
        .map(|m| m["parts"][0]["content"].as_str().unwrap().len())
        .sum();
    assert_eq!(kept, MAX_RECORDED_BYTES);
}

#[test]
fn client_ids_and_names_count_against_the_bound() {
    // A hostile client's tool-call id and name: a megabyte each, in every format.
    let huge = "i".repeat(1 << 20);
    let openai = json!({"messages": [
        {"role": "assistant", "tool_calls": [{"id": huge, "function": {"name": huge, "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": huge, "content": "ok"}
    ]});
    let anthropic = json!({"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": huge, "name": huge, "input": {}},
        {"type": "tool_result", "tool_use_id": huge, "content": "ok"}
    ]}]});
    let responses = json!({"input": [
        {"type": "function_call", "call_id": huge, "name": huge, "arguments": "{}"},
        {"type": "function_call_output", "call_id": huge, "output": "ok"}
    ]});
    for (api, body) in [
        (Api::OpenAi, openai),
        (Api::Anthropic, anthropic),
        (Api::Responses, responses),
    ] {
        let r = Recording::of_request(
            body.to_string().as_bytes(),
            api,
            "key",
            Arc::new(Snapshot::default()),
        );
        let kept = r.input.to_string().len();
        assert!(
            kept < MAX_RECORDED_BYTES + 1024,
            "{api:?}: {kept} bytes kept"
        );
    }
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

#[test]
fn an_openai_stream_is_put_together_and_its_finish_read() {
    let stream = sse(&[
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let mut a = Answer::new(Api::OpenAi, true);
    // Cut anywhere, as frames are.
    for chunk in stream.as_bytes().chunks(7) {
        a.streamed(chunk);
    }
    assert_eq!(a.id.as_deref(), Some("chatcmpl-1"));
    assert_eq!(a.finish_reasons(), ["tool_calls"]);
    assert_eq!(
        a.messages(),
        json!([{"role": "assistant", "finish_reason": "tool_call", "parts": [
            {"type": "text", "content": "Hello"},
            {"type": "tool_call", "id": "call_9", "name": "f", "arguments": {"a": 1}}
        ]}])
    );

    // Without the opt-in only the id and the finish reason are read.
    let mut a = Answer::new(Api::OpenAi, false);
    a.streamed(stream.as_bytes());
    assert_eq!(a.id.as_deref(), Some("chatcmpl-1"));
    assert_eq!(a.finish_reasons(), ["tool_calls"]);
    assert_eq!(
        a.messages(),
        json!([{"role": "assistant", "parts": [], "finish_reason": "tool_call"}])
    );
}

#[test]
fn an_anthropic_stream_is_put_together_and_its_stop_read() {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "content": []}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_2", "name": "f", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": 2}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
    ];
    let stream: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    let mut a = Answer::new(Api::Anthropic, true);
    a.streamed(stream.as_bytes());
    assert_eq!(a.id.as_deref(), Some("msg_1"));
    assert_eq!(a.finish_reasons(), ["tool_use"]);
    assert_eq!(
        a.messages(),
        json!([{"role": "assistant", "finish_reason": "tool_call", "parts": [
            {"type": "text", "content": "Hi there"},
            {"type": "tool_call", "id": "tu_2", "name": "f", "arguments": {"a": 2}}
        ]}])
    );
}

#[test]
fn whole_answers_in_both_formats() {
    let openai = json!({"id": "chatcmpl-2", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "no"}, "finish_reason": "length"}
    ]});
    let mut a = Answer::new(Api::OpenAi, true);
    a.whole(openai.to_string().as_bytes());
    assert_eq!(a.id.as_deref(), Some("chatcmpl-2"));
    assert_eq!(a.finish_reasons(), ["stop", "length"]);
    assert_eq!(a.messages()[1]["parts"][0]["content"], "no");
    assert_eq!(a.messages()[1]["finish_reason"], "length");

    let anthropic = json!({"id": "msg_2", "type": "message", "content": [
        {"type": "text", "text": "sure"}], "stop_reason": "end_turn"});
    let mut a = Answer::new(Api::Anthropic, false);
    a.whole(anthropic.to_string().as_bytes());
    assert_eq!(a.id.as_deref(), Some("msg_2"));
    assert_eq!(a.finish_reasons(), ["end_turn"]);
    assert_eq!(
        a.messages()[0]["parts"],
        json!([]),
        "no text without opt-in"
    );
}

#[test]
fn a_reason_is_named_only_by_a_string() {
    assert!(names_a_reason(r#"{"finish_reason":"stop"}"#));
    assert!(names_a_reason(r#"{"finish_reason" : "stop"}"#));
    assert!(!names_a_reason(r#"{"finish_reason":null}"#));
    assert!(!names_a_reason(r#"{"delta":{"content":"x"}}"#));
}
