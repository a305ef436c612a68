//! What a provider sends back, on every pair of client API and wire format: arbitrary
//! bytes as a stream in arbitrary chunks, as a whole answer, and as an error body. Never
//! panics.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::base::Api;
use tollgate_dataplane::provider::plan::Plan;

#[path = "pairs.rs"]
mod pairs;
use pairs::PAIRS;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let (wire, provider) = PAIRS[usize::from(choice) % PAIRS.len()];
    let client = if choice & 0x08 == 0 { Api::OpenAi } else { Api::Anthropic };
    let plan = Plan {
        client,
        wire,
        provider,
        model: Arc::from("m"),
        stream: true,
        include_usage: choice & 0x10 != 0,
        created: 0,
        id: "id".into(),
        json_mode: choice & 0x20 != 0,
    };
    let piece = usize::from(choice >> 6) * 7 + 1;
    let mut chain = plan.stream();
    for part in bytes.chunks(piece) {
        if chain.feed_bytes(Bytes::copy_from_slice(part)).is_err() {
            break;
        }
    }
    let _ = chain.end_bytes();
    let _ = chain.usage();
    let mut cut = plan.stream();
    let _ = cut.feed_bytes(Bytes::copy_from_slice(bytes));
    let _ = cut.cut_bytes();
    let whole = Plan { stream: false, ..plan.clone() };
    let _ = whole.response(Bytes::copy_from_slice(bytes));
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amzn-errortype", http::HeaderValue::from_static("ValidationException"));
    let _ = whole.error(400 + u16::from(choice), Bytes::copy_from_slice(bytes), &headers);
});
