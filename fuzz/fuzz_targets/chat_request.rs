//! Request-head parsing, every rewrite of a request (model, output cap, web-search cap,
//! usage requested) and its translation to every wire format, on arbitrary bodies: never
//! panics, and a rewritten body parses back with the new model and nothing else changed.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::base::Api;
use tollgate_dataplane::translate::head::ChatHead;
use tollgate_dataplane::provider::plan::Plan;

#[path = "pairs.rs"]
mod pairs;
use pairs::PAIRS;

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    let Ok(mut head) = ChatHead::parse(&body) else {
        return;
    };
    let rewritten = head.with_model(body.clone(), "rewritten-model");
    let again = ChatHead::parse(&rewritten).expect("a rewritten body must still parse");
    assert_eq!(again.model, "rewritten-model");
    assert_eq!(again.stream, head.stream);
    let capped = head.with_usage_requested(body.clone());
    let capped = head.with_search_cap(capped, 5).unwrap_or(body.clone());
    let capped = head.with_output_cap(capped, "max_tokens", 4096);
    ChatHead::parse(&capped).expect("a capped body must still parse");
    for client in [Api::OpenAi, Api::Anthropic] {
        for (wire, provider) in PAIRS {
            let plan = Plan {
                client,
                wire,
                provider,
                model: Arc::from("m"),
                stream: head.stream,
                include_usage: head.include_usage,
                created: 0,
                id: String::new(),
                json_mode: head.json_mode,
            };
            if !plan.passes_request() {
                let _ = plan.request(&body);
            }
        }
    }
});
