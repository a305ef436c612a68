//! The Tollgate dataplane: holds the config streamed by the controller as an immutable
//! snapshot swapped atomically, serves the OpenAI-compatible API with virtual keys, picks
//! a route and target per request, calls the provider over pooled connections, and
//! streams the answer back as it arrives. It never talks to the Kubernetes API and keeps
//! serving its last config while the controller is away.

pub mod admin;
pub mod auth;
pub mod base;
pub mod config;
pub mod error;
pub mod mcp;
pub mod metering;
pub mod pipeline;
pub mod provider;
pub mod proxy;
pub mod translate;
