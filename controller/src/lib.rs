//! The Tollgate controller: reads Tollgate resources (from a manifests directory in local
//! mode), validates and compiles them into protocol resources, serves them to dataplanes
//! over the config stream, tracks what each dataplane applied, and reports every object's
//! conditions on its admin port.

pub mod admin;
pub mod auth;
pub mod compile;
pub mod k8s;
pub mod listener;
pub mod live;
pub mod local;
pub mod objects;
pub mod publish;
pub mod session_key;
pub mod spend;
pub mod status;
pub mod tls;
pub mod tracker;
pub mod xds;

/// Locks `m`, going on with the data a panicking holder left: every value guarded here
/// stays usable whatever step a panic interrupted.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
