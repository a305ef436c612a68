//! Request-head parsing and the in-place model rewrite on arbitrary bodies: never panics,
//! and a rewritten body parses back with the new model and nothing else changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::proxy::request::ChatHead;

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    let Ok(head) = ChatHead::parse(&body) else {
        return;
    };
    let rewritten = head.with_model(body.clone(), "rewritten-model");
    let again = ChatHead::parse(&rewritten).expect("a rewritten body must still parse");
    assert_eq!(again.model, "rewritten-model");
    assert_eq!(again.stream, head.stream);
});
