//! Test support for Tollgate: `mock-llm`, a fake upstream that speaks the providers' wire
//! formats with injectable latency and faults, and helpers that start the real binaries
//! on loopback for end-to-end tests, with a fake Kubernetes API server for the
//! controller's Kubernetes mode.

pub mod bench;
pub mod fake_kube;
pub mod harness;
pub mod mock;
pub mod validation;
