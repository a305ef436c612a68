//! The Responses API (`/v1/responses`). mock-llm speaks it as OpenAI does: the official
//! `openai` SDK drives it directly (tests/python/responses_client.py), and a response
//! stored by one account is not found by another, as with the real API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use tollgate_tests::harness::{Stack, UPSTREAM_KEYS, http_request_with};

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
}
