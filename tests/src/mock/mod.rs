//! mock-llm: a fake LLM provider for tests, the quick start and benchmarks.
//!
//! It speaks the providers' real wire formats (OpenAI chat completions and Responses,
//! Anthropic messages, Gemini, Bedrock; JSON and SSE, and the Responses API's WebSocket
//! mode), checks requests the way the real APIs
//! do, and misbehaves on request: latency, error statuses with `retry-after`, resets, and
//! streams cut half way.

pub mod anthropic;
pub mod bedrock;
pub mod directives;
pub mod embeddings;
pub mod gemini;
pub mod openai;
pub mod responses;
mod responses_ws;
pub mod server;
pub mod tools;

pub use directives::{Directives, Failure};
pub use server::{Config, GoogleAccount, serve};

/// The answer to `last_user`, in pieces (one per stream chunk, one token each):
/// "Mock reply to: <its words>", padded with " more" or merged to `chunks` pieces.
pub fn reply_pieces(last_user: &str, chunks: Option<usize>) -> Vec<String> {
    let mut pieces = vec!["Mock".to_string(), " reply".to_string(), " to:".to_string()];
    pieces.extend(last_user.split_whitespace().map(|w| format!(" {w}")));
    if let Some(n) = chunks {
        let n = n.max(1);
        while pieces.len() < n {
            pieces.push(" more".to_string());
        }
        if pieces.len() > n {
            let tail: String = pieces.split_off(n - 1).concat();
            pieces.push(tail);
        }
    }
    pieces
}

/// What is left of an answer once a `prefill` (the start of it, sent as the last
/// assistant message) is taken off: a model continues its own partial answer. A prefill
/// that is not the start of the answer changes nothing.
pub fn continue_after(pieces: Vec<String>, prefill: &str) -> Vec<String> {
    let whole: String = pieces.concat();
    if prefill.is_empty() || !whole.starts_with(prefill) {
        return pieces;
    }
    let mut skip = prefill.len();
    let mut out = Vec::new();
    for piece in pieces {
        if skip >= piece.len() {
            skip -= piece.len();
        } else {
            out.push(piece[skip..].to_string());
            skip = 0;
        }
    }
    out
}

/// A prompt's tokens as the mock counts them: its words, plus `per_message` for each
/// message's framing (each format counts its framing differently).
pub fn prompt_tokens(texts: &[String], per_message: u64) -> u64 {
    texts.iter().map(|t| openai::count_tokens(t)).sum::<u64>() + per_message * texts.len() as u64
}

/// Cuts `pieces` at a token limit; true when it did.
pub fn cut_at_limit(pieces: &mut Vec<String>, limit: Option<u64>) -> bool {
    match limit {
        Some(max) if pieces.len() as u64 > max => {
            pieces.truncate(max as usize);
            true
        }
        _ => false,
    }
}
