//! How the gateway proves itself to a provider: a header with a key, an AWS SigV4
//! signature, or a Google OAuth token minted from a service-account key.

pub mod google;
pub mod sigv4;
