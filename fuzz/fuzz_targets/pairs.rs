//! The wire formats a request may be translated to, each with a provider type that
//! speaks it: shared by the targets that try every pair of client API and wire format.

use tollgate_dataplane::config::model::{ProviderKind, Wire};

pub const PAIRS: [(Wire, ProviderKind); 5] = [
    (Wire::OpenAi, ProviderKind::OpenAi),
    (Wire::Anthropic, ProviderKind::Anthropic),
    (Wire::VertexAnthropic, ProviderKind::VertexAi),
    (Wire::Gemini, ProviderKind::Gemini),
    (Wire::Bedrock, ProviderKind::Bedrock),
];
