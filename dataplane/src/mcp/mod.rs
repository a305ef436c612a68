//! The MCP gateway (`/mcp`, in `gateway`) and its parts: JSON-RPC 2.0 messages as MCP
//! carries them, tool-name namespacing across aggregated servers, sealed sessions, the
//! upstream client, and tool-schema compaction.

pub mod client;
pub mod compact;
pub mod gateway;
pub mod jsonrpc;
pub mod names;
pub mod session;
mod spans;
pub mod transport;
