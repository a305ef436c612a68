//! The provider room: everything about speaking to each upstream API family, one folder
//! per family (URLs, headers, signing, its translator to and from the OpenAI pivot, its
//! error bodies, its embeddings and token-counting bodies). Here: what one operation asks
//! of whichever family a model speaks ([`chat_uri`] and [`plan_uri`], [`plan`] for chat, [`embeddings`],
//! [`count_tokens`]), and the request every family shares ([`request`]). It uses the
//! error, translate, metering, config, auth and base rooms below it.
//!
//! A family's folder imports nothing from this file or from another family's folder
//! (`vertex` holds the path the Vertex AI families share), so the families never reach
//! each other.

pub mod anthropic;
pub mod bedrock;
pub mod count_tokens;
pub mod embeddings;
pub mod gemini;
pub mod openai;
pub mod plan;
pub mod request;
mod vertex;

#[cfg(test)]
mod golden;

use http::Uri;

use crate::config::model::{Provider, Wire};

/// The URI of `plan`'s turn at `provider`: the Responses API where the plan passes it
/// through, the chat API of the provider's wire format otherwise.
pub fn plan_uri(plan: &plan::Plan, provider: &Provider) -> Result<Uri, http::Error> {
    if plan.serves_responses() {
        return openai::responses_uri(provider);
    }
    chat_uri(provider, plan.wire, &plan.model, plan.stream)
}

/// The URI of a chat turn for `model` at `provider`, which speaks `wire`.
pub fn chat_uri(
    provider: &Provider,
    wire: Wire,
    model: &str,
    stream: bool,
) -> Result<Uri, http::Error> {
    match wire {
        Wire::OpenAi => openai::chat_uri(provider, model),
        Wire::Anthropic | Wire::VertexAnthropic => anthropic::chat_uri(provider, model, stream),
        Wire::Gemini => gemini::chat_uri(provider, model, stream),
        Wire::Bedrock => bedrock::chat_uri(provider, model, stream),
    }
}
