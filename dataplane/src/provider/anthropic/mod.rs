//! Anthropic's Messages API family: Anthropic itself, and Claude on Vertex AI (the same
//! body, the model in the URL and the version in the body). `translate` goes between it
//! and the OpenAI pivot.

pub mod translate;

use http::{HeaderMap, HeaderName, Uri};
use serde_json::{Value, json};

use crate::base::Api;
use crate::config::model::{Provider, ProviderKind};

/// `anthropic_version` in the body of Claude requests on Vertex AI.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// The URI of a chat turn (Messages) for `model`.
pub fn chat_uri(p: &Provider, model: &str, stream: bool) -> Result<Uri, http::Error> {
    if p.kind != ProviderKind::VertexAi {
        return Ok(Uri::try_from(format!("{}/v1/messages", p.endpoint))?);
    }
    let verb = if stream {
        "streamRawPredict"
    } else {
        "rawPredict"
    };
    let base = super::vertex::model_base(p, "anthropic", model);
    Ok(Uri::try_from(format!("{base}:{verb}"))?)
}

/// The URI of token counting: Anthropic's `count_tokens`, or the `count-tokens` model on
/// Vertex AI (which takes the model in the body).
pub fn count_tokens_uri(p: &Provider) -> Result<Uri, http::Error> {
    let uri = if p.kind == ProviderKind::VertexAi {
        format!(
            "{}:rawPredict",
            super::vertex::model_base(p, "anthropic", "count-tokens")
        )
    } else {
        format!("{}/v1/messages/count_tokens", p.endpoint)
    };
    Ok(Uri::try_from(uri)?)
}

/// A Messages body for Claude on Vertex: the model is in the URL, the version in the body.
pub fn vertex_body(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.remove("model");
        obj.insert("anthropic_version".into(), json!(VERTEX_VERSION));
    }
    v
}

/// The version and beta headers: the client's own win when it speaks Anthropic's API.
pub(crate) fn version_headers(p: &Provider, client: &HeaderMap, api: Api, headers: &mut HeaderMap) {
    let from_client = |name| client.get(name).filter(|_| api == Api::Anthropic);
    if p.kind == ProviderKind::Anthropic {
        let version = from_client("anthropic-version").unwrap_or(&p.anthropic_version);
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            version.clone(),
        );
    }
    if matches!(p.kind, ProviderKind::Anthropic | ProviderKind::VertexAi)
        && let Some(beta) = from_client("anthropic-beta")
    {
        headers.insert(HeaderName::from_static("anthropic-beta"), beta.clone());
    }
}
