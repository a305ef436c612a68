//! Translation of arbitrary OpenAI request bodies, Anthropic responses and Anthropic
//! stream events: never panics, and whatever is produced is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::base::sse::Parser;
use tollgate_dataplane::provider::anthropic::translate::{
    StreamTranslator, error, request, response,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = request(data, "claude") {
        serde_json::from_slice::<serde_json::Value>(&out).expect("request must be JSON");
    }
    if let Ok(out) = response(data, 0) {
        serde_json::from_slice::<serde_json::Value>(&out).expect("response must be JSON");
    }
    serde_json::from_slice::<serde_json::Value>(&error(data)).expect("error must be JSON");
    let mut parser = Parser::default();
    let mut t = StreamTranslator::new(0, true);
    for event in parser.feed(data).unwrap_or_default() {
        for line in t
            .event(&event)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
        {
            if line != "[DONE]" {
                serde_json::from_str::<serde_json::Value>(line).expect("chunk must be JSON");
            }
        }
    }
});
