//! Model Context Protocol building blocks: JSON-RPC 2.0 messages as MCP carries them,
//! tool-name namespacing across aggregated servers, the tool policies of a key, and
//! tool-schema compaction.

pub mod compact;
pub mod config;
pub mod jsonrpc;
pub mod names;
pub mod policy;
pub mod transport;
