//! OpenAI's API family: OpenAI, Azure OpenAI and any OpenAI-compatible server. OpenAI's
//! chat format is the gateway's pivot, so there is no translator here: a client's OpenAI
//! request passes with the model rewritten and the provider's compatibility settings
//! applied (`config::model::Compat`).

use http::Uri;

use crate::auth::sigv4::uri_encode;
use crate::config::model::{Provider, ProviderKind};

/// The URI of a chat completion for `model`: built once from the endpoint, except on
/// Azure, where the model (a deployment) is in the path.
pub fn chat_uri(p: &Provider, model: &str) -> Result<Uri, http::Error> {
    if let Some(uri) = &p.chat_completions {
        return Ok(uri.clone());
    }
    Ok(Uri::try_from(format!(
        "{}/openai/deployments/{}/chat/completions?api-version={}",
        p.endpoint,
        uri_encode(model, false),
        p.api_version
    ))?)
}

/// The URI of the Responses API: OpenAI's, or an Azure resource's v1 API (which names the
/// deployment in the body's `model`, not in the path).
pub fn responses_uri(p: &Provider) -> Result<Uri, http::Error> {
    let uri = match p.kind {
        ProviderKind::AzureOpenAi => format!("{}/openai/v1/responses", p.endpoint),
        _ => format!("{}/responses", p.endpoint),
    };
    Ok(Uri::try_from(uri)?)
}

/// The URI of the embeddings API (an Azure deployment's, for Azure).
pub fn embeddings_uri(p: &Provider, model: &str) -> Result<Uri, http::Error> {
    let uri = match p.kind {
        ProviderKind::AzureOpenAi => format!(
            "{}/openai/deployments/{}/embeddings?api-version={}",
            p.endpoint,
            uri_encode(model, false),
            p.api_version
        ),
        _ => format!("{}/embeddings", p.endpoint),
    };
    Ok(Uri::try_from(uri)?)
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
            chat_uri(&openai, "gpt-4o").unwrap(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        p.r#type = pb::ProviderType::AzureOpenai as i32;
        p.endpoint = "https://r.openai.azure.com".into();
        p.api_version = "2024-10-21".into();
        let azure = Provider::try_from(&p).unwrap();
        assert!(azure.chat_completions.is_none());
        assert_eq!(
            chat_uri(&azure, "my deployment").unwrap(),
            "https://r.openai.azure.com/openai/deployments/my%20deployment/chat/completions?api-version=2024-10-21"
        );
    }
}
