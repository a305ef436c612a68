//! The Tollgate controller: reads Tollgate resources (from a manifests directory in local
//! mode), validates and compiles them into protocol resources, serves them to dataplanes
//! over the config stream, tracks what each dataplane applied, and reports every object's
//! conditions on its admin port.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod compile;
pub mod k8s;
pub mod ledger;
pub mod listener;
pub mod local;
pub mod objects;
pub mod publish;
pub mod session_key;
pub mod status;
pub mod tls;
pub mod tracker;
pub mod usage;
pub mod xds;
