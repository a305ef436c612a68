//! Token counts for answers whose provider reported no usage (an OpenAI-compatible server
//! that sends none, a stream that broke before its usage chunk): the request and the
//! answer the client received are counted with a BPE tokenizer instead of charging the
//! request's worst case.
//!
//! OpenAI models are counted with their own encodings (`o200k_base` for GPT-4o, GPT-4.1,
//! GPT-5, the o-series and gpt-oss; `cl100k_base` for GPT-4 and GPT-3.5 and the
//! embedding models). Other families' tokenizers are not bundled (Claude's and Gemini's
//! are not public; their native APIs always report usage), so their text is counted with
//! `o200k_base`, an estimate. Chat messages add OpenAI's documented overhead (3 tokens a
//! message, 1 for a name, 3 to prime the reply). Images and audio are not counted.

use bytes::Bytes;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::base::Api;
use crate::metering::usage::Usage;

/// Most client-bound bytes kept per stream for counting; a longer answer is not counted.
pub const MAX_KEPT_BYTES: usize = 8 << 20;

/// Bytes from which parsing or translating a body is CPU work worth moving off the
/// runtime's threads.
pub const HEAVY_BYTES: usize = 1 << 20;

/// Runs `f`, CPU-heavy work, so that it holds up no other task: on a multi-threaded
/// runtime the tasks queued on this thread move to another while it runs. Elsewhere (a
/// single-threaded runtime, no runtime) it simply runs.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Which encoding counts `model`'s text.
pub fn encoding(model: &str) -> &'static str {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let cl100k = (m.starts_with("gpt-4") && !m.starts_with("gpt-4o") && !m.starts_with("gpt-4.")
        || m.starts_with("gpt-3.5")
        || m.starts_with("gpt-35")
        || m.starts_with("text-embedding-"))
        && !m.starts_with("gpt-4-o");
    if cl100k { "cl100k_base" } else { "o200k_base" }
}

fn encoder(model: &str) -> &'static CoreBPE {
    match encoding(model) {
        "cl100k_base" => tiktoken_rs::cl100k_base_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
    }
}

/// Tokens in `text` for `model`.
pub fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    encoder(model).encode_ordinary(text).len() as u64
}

/// Appends `s` to `out`, a space apart from what is there.
fn push_word(out: &mut String, s: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(s);
}

/// The text of a content value: a string, or the text of its parts (any part's `text`,
/// `thinking`, tool input, or nested tool-result content).
fn content_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => push_word(out, s),
        Value::Array(parts) => {
            for p in parts {
                content_text(p, out);
            }
        }
        Value::Object(o) => {
            for key in ["text", "thinking", "content"] {
                if let Some(x) = o.get(key) {
                    content_text(x, out);
                }
            }
            // Anthropic tool_use, in a request's history.
            if let Some(input) = o.get("input") {
                push_word(out, &input.to_string());
            }
        }
        _ => {}
    }
}

/// Input tokens of a chat request body in the client's format.
pub fn prompt(model: &str, api: Api, body: &[u8]) -> u64 {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut text = String::new();
    let mut overhead = 0;
    if let Some(messages) = req["messages"].as_array() {
        for m in messages {
            overhead += 3;
            if let Some(role) = m["role"].as_str() {
                push_word(&mut text, role);
            }
            if let Some(name) = m["name"].as_str() {
                overhead += 1;
                push_word(&mut text, name);
            }
            content_text(&m["content"], &mut text);
            if let Some(calls) = m["tool_calls"].as_array() {
                for c in calls {
                    content_text(&c["function"]["name"], &mut text);
                    content_text(&c["function"]["arguments"], &mut text);
                }
            }
        }
        overhead += 3;
    }
    if api == Api::Anthropic {
        content_text(&req["system"], &mut text);
    }
    if api == Api::Responses {
        // The stored conversation a `previous_response_id` brings back is not here: the
        // provider's own count, which it always reports, is what is charged.
        content_text(&req["instructions"], &mut text);
        match &req["input"] {
            Value::Array(items) => {
                for item in items {
                    overhead += 3;
                    for key in ["content", "name", "arguments", "output"] {
                        content_text(&item[key], &mut text);
                    }
                }
            }
            input => content_text(input, &mut text),
        }
    }
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        push_word(&mut text, &tools.to_string());
    }
    overhead + count(model, &text)
}

/// Output tokens of a whole (non-streamed) answer in the client's format.
pub fn answer(model: &str, api: Api, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut text = String::new();
    match api {
        Api::OpenAi => {
            for c in v["choices"].as_array().into_iter().flatten() {
                let m = &c["message"];
                content_text(&m["content"], &mut text);
                content_text(&m["reasoning_content"], &mut text);
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    content_text(&call["function"]["name"], &mut text);
                    content_text(&call["function"]["arguments"], &mut text);
                }
            }
        }
        Api::Anthropic => {
            for block in v["content"].as_array().into_iter().flatten() {
                content_text(block, &mut text);
                if let Some(name) = block["name"].as_str() {
                    push_word(&mut text, name);
                }
            }
        }
        Api::Responses => {
            for item in v["output"].as_array().into_iter().flatten() {
                for key in ["content", "summary", "name", "arguments"] {
                    content_text(&item[key], &mut text);
                }
            }
        }
    }
    count(model, &text)
}

/// Output tokens of a streamed answer, from the SSE bytes the client received.
pub fn streamed(model: &str, api: Api, frames: &[Bytes]) -> u64 {
    let mut parser = crate::base::sse::Parser::default();
    let mut text = String::new();
    for f in frames {
        let Ok(events) = parser.feed(f) else {
            break;
        };
        for e in events {
            let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                continue;
            };
            match api {
                Api::OpenAi => {
                    for c in v["choices"].as_array().into_iter().flatten() {
                        let d = &c["delta"];
                        for key in ["content", "reasoning_content"] {
                            text.push_str(d[key].as_str().unwrap_or(""));
                        }
                        for call in d["tool_calls"].as_array().into_iter().flatten() {
                            for key in ["name", "arguments"] {
                                text.push_str(call["function"][key].as_str().unwrap_or(""));
                            }
                        }
                    }
                }
                Api::Anthropic => {
                    let d = &v["delta"];
                    for key in ["text", "thinking", "partial_json"] {
                        if let Some(s) = d[key].as_str() {
                            text.push_str(s);
                        }
                    }
                    if let Some(name) = v["content_block"]["name"].as_str() {
                        text.push_str(name);
                    }
                }
                Api::Responses => {
                    // `response.output_text.delta`, `...function_call_arguments.delta`,
                    // `...reasoning_summary_text.delta`; a call's name comes with its item.
                    if v["type"].as_str().is_some_and(|t| t.ends_with(".delta")) {
                        text.push_str(v["delta"].as_str().unwrap_or(""));
                    }
                    if v["type"] == "response.output_item.added" {
                        text.push_str(v["item"]["name"].as_str().unwrap_or(""));
                    }
                }
            }
        }
    }
    count(model, &text)
}

/// What is kept of a request to count it if its provider reports no usage.
#[derive(Clone, Debug)]
pub struct Counted {
    pub api: Api,
    /// The request body as the client sent it.
    pub request: Bytes,
}

impl Counted {
    /// The usage of an answer the provider did not report: `output` tokens counted by the
    /// caller from what the client received.
    pub fn usage(&self, model: &str, output: u64) -> Usage {
        Usage {
            input: prompt(model, self.api, &self.request),
            output,
            ..Usage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_its_encoding() {
        for (model, enc) in [
            ("gpt-4o-mini", "o200k_base"),
            ("gpt-4.1", "o200k_base"),
            ("gpt-5", "o200k_base"),
            ("o3-mini", "o200k_base"),
            ("openai/gpt-oss-120b", "o200k_base"),
            ("gpt-4-turbo", "cl100k_base"),
            ("gpt-4", "cl100k_base"),
            ("gpt-3.5-turbo", "cl100k_base"),
            ("text-embedding-3-small", "cl100k_base"),
            ("meta-llama/Llama-3.1-8B-Instruct", "o200k_base"),
        ] {
            assert_eq!(encoding(model), enc, "{model}");
        }
    }

    #[test]
    fn tokens_are_the_encodings_own() {
        // Token ids published for these encodings (OpenAI's cookbook for cl100k_base, a
        // tiktoken tutorial for o200k_base).
        assert_eq!(
            encoder("gpt-4").encode_ordinary("tiktoken is great!"),
            [83, 1609, 5963, 374, 2294, 0]
        );
        assert_eq!(
            encoder("gpt-3.5-turbo").encode_ordinary("Hello, how are you doing today?"),
            [9906, 11, 1268, 527, 499, 3815, 3432, 30]
        );
        assert_eq!(
            encoder("gpt-4o").encode_ordinary("this is a test example, tutorialexample.com"),
            [851, 382, 261, 1746, 4994, 11, 24000, 18582, 1136]
        );
        assert_eq!(
            count("gpt-4o", "this is a test example, tutorialexample.com"),
            9
        );
        assert_eq!(count("gpt-4o", ""), 0);
    }

    #[test]
    fn a_chat_request_counts_its_messages_with_their_overhead() {
        let body = br#"{"model":"gpt-4o","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"Say hi"}]}]}"#;
        let text = count("gpt-4o", "system You are terse. user Say hi");
        assert_eq!(prompt("gpt-4o", Api::OpenAi, body), 3 + 3 + 3 + text);
        let anthropic = br#"{"model":"claude","system":"You are terse.","max_tokens":5,
            "messages":[{"role":"user","content":"Say hi"}]}"#;
        let text = count("claude", "user Say hi You are terse.");
        assert_eq!(prompt("claude", Api::Anthropic, anthropic), 3 + 3 + text);
    }

    #[test]
    fn answers_count_what_the_client_received() {
        let json = br#"{"choices":[{"message":{"role":"assistant","content":"Hello there"}}]}"#;
        let n = count("gpt-4o", "Hello there");
        assert!(n > 0);
        assert_eq!(answer("gpt-4o", Api::OpenAi, json), n);
        let frames = [
            Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
            ),
            Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" th"),
            Bytes::from_static(b"ere\"}}]}\n\ndata: [DONE]\n\n"),
        ];
        assert_eq!(
            streamed("gpt-4o", Api::OpenAi, &frames),
            count("gpt-4o", "Hello there")
        );
        let anthropic = [Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there\"}}\n\n",
        )];
        assert_eq!(
            streamed("claude", Api::Anthropic, &anthropic),
            count("claude", "Hello there")
        );
    }
}
