//! The config room: the model the controller's resources compile to (`model`, `mcp`,
//! `tool_policy`), the immutable snapshot a request reads (`snapshot`) and the secrets it
//! holds (`redact`), the store that applies the controller's changes to it (`store`), and
//! the client of the config stream (`xds`). It holds no request logic and uses only the
//! base room.

pub mod failure;
pub mod mcp;
pub mod model;
pub mod redact;
pub mod session_keys;
pub mod snapshot;
pub mod store;
pub mod tool_policy;
pub mod xds;
