//! How the gateway proves itself to a provider or an MCP server: a header with a key, an
//! AWS SigV4 signature, or an OAuth token (from a Google service-account key, or by client
//! credentials) fetched and cached by `token`.

pub mod google;
pub mod sigv4;
pub mod token;
