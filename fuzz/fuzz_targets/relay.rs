//! The same-format relay on arbitrary bytes in arbitrary chunks: never panics, and
//! chunking never changes what the client gets or the usage read. With the client
//! wanting usage, the bytes pass unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::translate::relay::Relay;

fn run(mut relay: Relay, bytes: &[u8], piece: usize) -> (Vec<u8>, Option<(u64, u64)>) {
    let mut out = Vec::new();
    for part in bytes.chunks(piece) {
        match relay.feed(Bytes::copy_from_slice(part)) {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => return (out, None),
        }
    }
    out.extend_from_slice(&relay.end());
    (out, relay.usage().map(|u| (u.input, u.output)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut >> 1).max(1);
    let make = || {
        if cut & 1 == 0 {
            Relay::openai(cut & 2 == 0)
        } else {
            Relay::anthropic()
        }
    };
    let whole = run(make(), bytes, bytes.len().max(1));
    let chunked = run(make(), bytes, piece);
    assert_eq!(whole, chunked);
    if cut & 3 != 2 {
        assert_eq!(whole.0, bytes);
    }
});
