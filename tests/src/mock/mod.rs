//! mock-llm: a fake LLM provider for tests, the quick start and benchmarks.
//!
//! It speaks the providers' real wire formats (OpenAI chat completions and Anthropic messages,
//! JSON and SSE), checks requests the way the real APIs do, and misbehaves on request: latency,
//! error statuses with `retry-after`, resets, and streams cut half way.

pub mod anthropic;
pub mod bedrock;
pub mod directives;
pub mod gemini;
pub mod openai;
pub mod server;
pub mod tools;

pub use directives::{Directives, Failure};
pub use server::{Config, GoogleAccount, serve};
