//! The MCP gateway (`/mcp`, in `gateway`) and its parts: JSON-RPC 2.0 messages as MCP
//! carries them, tool-name namespacing across aggregated servers, the tool policies of a
//! key, sealed sessions, the upstream client, and tool-schema compaction.

pub mod client;
pub mod compact;
pub mod config;
pub mod gateway;
pub mod jsonrpc;
pub mod names;
pub mod policy;
pub mod session;
pub mod transport;
