//! Where each provider's API lives: the URL of every operation the gateway calls, by
//! provider kind.

use http::Uri;

use crate::auth::sigv4::uri_encode;
use crate::config::model::{Provider, ProviderKind};

/// The URLs of a provider's operations.
pub trait Urls {
    /// The URI of a chat completion for `model` at this provider.
    fn chat_uri(&self, model: &str) -> Result<Uri, http::Error>;

    /// The URI of Anthropic's Messages API at this provider.
    fn messages_uri(&self) -> Result<Uri, http::Error>;

    /// The URI of `generateContent` (or its SSE stream) for `model`.
    fn gemini_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error>;

    /// The URI of a method on a Google model (the Gemini API, or Vertex AI's Google
    /// publisher): `countTokens`, `batchEmbedContents`, `predict`, ...
    fn google_uri(&self, model: &str, method: &str) -> Result<Uri, http::Error>;

    /// The URI of OpenAI's embeddings API (an Azure deployment's, for Azure).
    fn embeddings_uri(&self, model: &str) -> Result<Uri, http::Error>;

    /// The URI of token counting for Claude: Anthropic's `count_tokens`, or the
    /// `count-tokens` model on Vertex AI (which takes the model in the body).
    fn count_tokens_uri(&self) -> Result<Uri, http::Error>;

    /// The URI of a Claude model on Vertex AI.
    fn vertex_anthropic_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error>;

    /// The URI of Converse (or ConverseStream) for `model` on Bedrock.
    fn bedrock_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error>;

    /// The URI of a Bedrock runtime operation on `model`: `invoke`, `count-tokens`, ...
    fn bedrock_op_uri(&self, model: &str, verb: &str) -> Result<Uri, http::Error>;
}

impl Urls for Provider {
    fn chat_uri(&self, model: &str) -> Result<Uri, http::Error> {
        if let Some(uri) = &self.chat_completions {
            return Ok(uri.clone());
        }
        Ok(Uri::try_from(format!(
            "{}/openai/deployments/{}/chat/completions?api-version={}",
            self.endpoint,
            uri_encode(model, false),
            self.api_version
        ))?)
    }

    fn messages_uri(&self) -> Result<Uri, http::Error> {
        Ok(Uri::try_from(format!("{}/v1/messages", self.endpoint))?)
    }

    fn gemini_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error> {
        if stream {
            self.google_uri(model, "streamGenerateContent?alt=sse")
        } else {
            self.google_uri(model, "generateContent")
        }
    }

    fn google_uri(&self, model: &str, method: &str) -> Result<Uri, http::Error> {
        let base = if self.kind == ProviderKind::VertexAi {
            vertex_model_base(self, "google", model)
        } else {
            format!(
                "{}/v1beta/models/{}",
                self.endpoint,
                uri_encode(model, false)
            )
        };
        Ok(Uri::try_from(format!("{base}:{method}"))?)
    }

    fn embeddings_uri(&self, model: &str) -> Result<Uri, http::Error> {
        let uri = match self.kind {
            ProviderKind::AzureOpenAi => format!(
                "{}/openai/deployments/{}/embeddings?api-version={}",
                self.endpoint,
                uri_encode(model, false),
                self.api_version
            ),
            _ => format!("{}/embeddings", self.endpoint),
        };
        Ok(Uri::try_from(uri)?)
    }

    fn count_tokens_uri(&self) -> Result<Uri, http::Error> {
        let uri = if self.kind == ProviderKind::VertexAi {
            format!(
                "{}:rawPredict",
                vertex_model_base(self, "anthropic", "count-tokens")
            )
        } else {
            format!("{}/v1/messages/count_tokens", self.endpoint)
        };
        Ok(Uri::try_from(uri)?)
    }

    fn vertex_anthropic_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error> {
        let base = vertex_model_base(self, "anthropic", model);
        let verb = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        Ok(Uri::try_from(format!("{base}:{verb}"))?)
    }

    fn bedrock_uri(&self, model: &str, stream: bool) -> Result<Uri, http::Error> {
        let verb = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        self.bedrock_op_uri(model, verb)
    }

    fn bedrock_op_uri(&self, model: &str, verb: &str) -> Result<Uri, http::Error> {
        Ok(Uri::try_from(format!(
            "{}/model/{}/{verb}",
            self.endpoint,
            uri_encode(model, false)
        ))?)
    }
}

/// The path of `model` from `publisher` on Vertex AI.
fn vertex_model_base(p: &Provider, publisher: &str, model: &str) -> String {
    format!(
        "{}/v1/projects/{}/locations/{}/publishers/{publisher}/models/{}",
        p.endpoint,
        p.project,
        p.region,
        uri_encode(model, false)
    )
}

#[cfg(test)]
mod tests {
    use tollgate_proto as pb;

    use super::*;

    #[test]
    fn chat_uris_are_built_once_except_azures() {
        let mut p = pb::Provider {
            namespace: "ns".into(),
            name: "p".into(),
            r#type: pb::ProviderType::Openai as i32,
            endpoint: "http://127.0.0.1:9/v1/".into(),
            ..Default::default()
        };
        let openai = Provider::try_from(&p).unwrap();
        assert!(openai.chat_completions.is_some());
        assert_eq!(
            openai.chat_uri("gpt-4o").unwrap(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        p.r#type = pb::ProviderType::AzureOpenai as i32;
        p.endpoint = "https://r.openai.azure.com".into();
        p.api_version = "2024-10-21".into();
        let azure = Provider::try_from(&p).unwrap();
        assert!(azure.chat_completions.is_none());
        assert_eq!(
            azure.chat_uri("my deployment").unwrap(),
            "https://r.openai.azure.com/openai/deployments/my%20deployment/chat/completions?api-version=2024-10-21"
        );
    }
}
