//! The SSE parser on arbitrary bytes in arbitrary chunks: never panics, and chunking never
//! changes the events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::base::sse::Parser;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = Parser::default();
    let mut expected = whole.feed(bytes).unwrap_or_default();
    expected.extend(whole.finish());
    let mut chunked = Parser::default();
    let mut got = Vec::new();
    for part in bytes.chunks(usize::from(cut).max(1)) {
        got.extend(chunked.feed(part).unwrap_or_default());
    }
    got.extend(chunked.finish());
    assert_eq!(got, expected);
});
