use serde_json::{Value, json};

use super::request::request;
use super::*;
use crate::translate::StreamStep;
use crate::translate::anthropic_to_openai::MaxTokensField;

fn thinking_content(text: &str, signature: &str) -> String {
    reasoning_content(&json!({"type": "thinking", "thinking": text, "signature": signature}))
}

#[test]
fn one_assistant_turn_from_its_items_with_claudes_thinking_first() {
    let req = json!({"model": "m", "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": thinking_content("two calls", "sig")},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-openai"},
    ]});
    let chat = request(&req, Target::Claude).unwrap().chat;
    let m = chat["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(m[1]["content"], "Checking.");
    assert_eq!(m[1]["tool_calls"][1]["id"], "c2");
    assert_eq!(
        m[1]["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "two calls", "signature": "sig"}])
    );
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    );
    assert_eq!(m[3]["tool_call_id"], "c2");
    // Another target cannot check Claude's signatures: the thinking is left out.
    let chat = request(&req, Target::Gemini).unwrap().chat;
    assert!(chat["messages"][1].get("thinking_blocks").is_none());
}

#[test]
fn what_a_translated_target_cannot_honour_is_a_400_naming_it() {
    let cases = [
        (
            json!({"previous_response_id": "resp_x"}),
            "previous_response_id",
        ),
        (json!({"store": true}), "store"),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"include": ["message.output_text.logprobs"]}),
            "include[0]",
        ),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0]",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"tool_choice": {"type": "web_search_preview"}}),
            "tool_choice",
        ),
        (
            json!({"reasoning": {"effort": "high"}, "max_output_tokens": 1500}),
            "max_output_tokens",
        ),
    ];
    for (extra, param) in cases {
        let mut req = json!({"model": "m", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let err = request(&req, Target::Claude).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{param}: ")), "{param}: {err}");
    }
    // Unset or false, store asks for nothing: the answer says it was not stored.
    let req = json!({"model": "m", "input": "hi", "store": false});
    assert!(request(&req, Target::Claude).is_ok());
    let req = json!({"model": "m", "input": "hi", "reasoning": {"effort": "high"}});
    let err = request(&req, Target::NoReasoning).unwrap_err().to_string();
    assert!(err.starts_with("reasoning.effort: "), "{err}");
}

#[test]
fn reasoning_is_a_thinking_budget_inside_the_output_limit_on_claude() {
    let req = json!({"model": "m", "input": "hi", "reasoning": {"effort": "medium"}, "max_output_tokens": 10000});
    let chat = request(&req, Target::Claude).unwrap().chat;
    assert_eq!(
        chat["thinking"],
        json!({"type": "enabled", "budget_tokens": 5000})
    );
    assert_eq!(chat["max_tokens"], 10000);
    let req = json!({"model": "m", "input": "hi", "reasoning": {"effort": "low"}});
    let chat = request(&req, Target::Claude).unwrap().chat;
    assert_eq!(chat["thinking"]["budget_tokens"], 2048);
    assert_eq!(chat["max_tokens"], 2048 + CLAUDE_ANSWER_TOKENS);
    let chat = request(&req, Target::Chat(MaxTokensField::MaxTokens))
        .unwrap()
        .chat;
    assert_eq!(chat["reasoning_effort"], "low");
    assert!(chat.get("thinking").is_none());
}

#[test]
fn a_chat_answer_is_a_response_with_items_usage_and_its_requests_settings() {
    let echo = Echo::of(
        &json!({"model": "smart", "instructions": "Be brief.", "reasoning": {"effort": "low", "summary": "auto"}, "metadata": {"a": "b"}}),
    );
    let chat = json!({"id": "chatcmpl-msg_1", "created": 7, "model": "claude-x", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "Hi", "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "s"}],
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        "finish_reason": "length"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}});
    let r = response(&chat, &echo);
    assert_eq!(r["id"], "resp_msg_1");
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["instructions"], "Be brief.");
    assert_eq!(r["metadata"], json!({"a": "b"}));
    assert_eq!(r["store"], false);
    let kinds: Vec<&str> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(r["output"][0]["summary"][0]["text"], "hm");
    let back = reasoning_block(r["output"][0]["encrypted_content"].as_str().unwrap()).unwrap();
    assert_eq!(back["signature"], "s");
    assert_eq!(r["output"][2]["call_id"], "call_9");
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15})
    );
}

fn events(out: &str) -> Vec<Value> {
    out.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn feed(s: &mut stream::Stream, chunk: Value) -> String {
    s.event(&crate::base::sse::Event {
        name: String::new(),
        data: chunk.to_string(),
    })
}

#[test]
fn stream_events_are_typed_ordered_and_numbered_and_a_cut_ends_in_an_error() {
    let echo = std::sync::Arc::new(Echo::of(&json!({"model": "smart"})));
    let mut s = stream::Stream::new(echo.clone(), 7);
    let mut out = String::new();
    let c = |delta: Value, finish: Value| json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    out += &feed(
        &mut s,
        c(json!({"role": "assistant", "content": ""}), Value::Null),
    );
    out += &feed(&mut s, c(json!({"content": "He"}), Value::Null));
    out += &feed(&mut s, c(json!({"content": "y"}), Value::Null));
    out += &feed(
        &mut s,
        c(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "w", "arguments": ""}}]}),
            Value::Null,
        ),
    );
    out += &feed(
        &mut s,
        c(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            Value::Null,
        ),
    );
    out += &feed(&mut s, c(json!({}), json!("tool_calls")));
    out += &feed(
        &mut s,
        json!({"id": "chatcmpl-1", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
    );
    out += &feed_done(&mut s);
    let ev = events(&out);
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (n, e) in ev.iter().enumerate() {
        assert_eq!(e["sequence_number"], n);
    }
    let done = &ev[13]["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], "Hey");
    assert_eq!(done["output"][1]["arguments"], "{}");
    assert_eq!(done["usage"]["total_tokens"], 5);
    assert_eq!(ev[6]["text"], "Hey");
    // Cut short: an error event numbered after the last one, and no completion.
    let mut s = stream::Stream::new(echo, 7);
    let mut out = feed(&mut s, c(json!({"content": "He"}), Value::Null));
    out += &s.end();
    let ev = events(&out);
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["sequence_number"], ev.len() - 1);
    assert!(!out.contains("response.completed"));
}

fn feed_done(s: &mut stream::Stream) -> String {
    s.event(&crate::base::sse::Event {
        name: String::new(),
        data: "[DONE]".into(),
    })
}

#[test]
fn text_chunks_take_the_fast_path_with_the_same_result() {
    let echo = std::sync::Arc::new(Echo::of(&json!({"model": "smart"})));
    let chunks = [
        json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "A"}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"content": " \"quoted\" \u{e9}\n"}, "logprobs": null, "finish_reason": null}], "usage": null}),
        json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"content": "B"}, "finish_reason": null}]}),
        json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ];
    let mut fast = stream::Stream::new(echo.clone(), 7);
    let mut general = stream::Stream::new(echo, 7);
    let (mut a, mut b) = (String::new(), String::new());
    for (i, c) in chunks.iter().enumerate() {
        // Once the message is open, a text-only chunk is written by the template.
        let templated = fast.clone().text_fast(&c.to_string());
        assert_eq!(templated.is_some(), i == 1 || i == 2, "chunk {i}");
        a += &feed(&mut fast, c.clone());
        b += &general.chunk(c);
    }
    a += &feed_done(&mut fast);
    b += &feed_done(&mut general);
    assert_eq!(a, b);
    assert!(a.contains("\"text\":\"A \\\"quoted\\\" é\\nB\""), "{a}");
}
