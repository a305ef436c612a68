//! MCP's JSON-RPC message parsing on arbitrary bytes: never panics, and every message it
//! accepts, written back out, reads as the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_dataplane::mcp::jsonrpc::{self, Body, Message};

fn written(m: &Message) -> serde_json::Value {
    match m {
        Message::Request { id, method, params } => jsonrpc::request(id, method, params.clone()),
        Message::Notification { method, params } => {
            jsonrpc::notification(method, params.clone())
        }
        Message::Response { id, outcome } => match outcome {
            Ok(v) => jsonrpc::result(id, v.clone()),
            Err(e) => jsonrpc::error(Some(id), e),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let items = match jsonrpc::parse(data) {
        Err(_) => return,
        Ok(Body::One(m)) => vec![m],
        Ok(Body::Batch(ms)) => ms,
    };
    for m in items.into_iter().flatten() {
        assert_eq!(jsonrpc::message(written(&m)), Ok(m));
    }
});
