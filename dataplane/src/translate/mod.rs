//! Translation between the client's API format and the provider's, one module per pair.
//! Same-format traffic never comes here: it passes through with only the model rewritten.

pub mod openai_to_anthropic;

/// Anthropic API version sent when neither the client nor the provider names one.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
