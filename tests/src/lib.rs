//! Test support for Tollgate: `mock-llm`, a fake upstream that speaks the providers' wire
//! formats with injectable latency and faults, and helpers that start the real binaries
//! on loopback for end-to-end tests.

pub mod bench;
pub mod harness;
pub mod mock;
