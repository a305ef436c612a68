//! The Tollgate dataplane: holds the config streamed by the controller as an immutable
//! snapshot swapped atomically, serves the OpenAI-compatible API with virtual keys, picks
//! a route and target per request, calls the provider over pooled connections, and
//! streams the answer back as it arrives. It never talks to the Kubernetes API and keeps
//! serving its last config while the controller is away.

pub mod admin;
pub mod auth;
pub mod balance;
pub mod bodies;
pub mod egress;
pub mod eventstream;
pub mod glob;
pub mod json;
pub mod link;
pub mod mcp;
pub mod metrics;
pub mod prices;
pub mod proxy;
pub mod quota;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod sse;
pub mod store;
pub mod tokens;
pub mod translate;
pub mod upstream;
pub mod usage;
pub mod xds;

/// Locks `m`, going on with the data a panicking holder left: every value guarded here
/// stays usable whatever step a panic interrupted.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
