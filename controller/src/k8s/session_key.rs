//! The MCP session key in Kubernetes mode: the Secret `<lease>-mcp-session` in the
//! Lease's namespace, created with a random key by whichever replica starts first. Every
//! replica reads the same key, so every dataplane seals sessions alike.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use crate::session_key::{self, KeyError, SessionKey};

/// Key of the session key inside the Secret's data.
pub const DATA_KEY: &str = "key";

pub fn secret_name(lease: &str) -> String {
    format!("{lease}-mcp-session")
}

/// Reads the key, creating the Secret when it does not exist. When two replicas create it
/// at once, the one that loses reads the winner's.
pub async fn get_or_create(api: &Api<Secret>, lease: &str) -> Result<SessionKey, KeyError> {
    let name = secret_name(lease);
    let failed = |what, source| KeyError::Api {
        what,
        name: name.clone(),
        source,
    };
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(&name).await.map_err(|e| failed("reading", e))? {
            return secret
                .data
                .as_ref()
                .and_then(|d| d.get(DATA_KEY))
                .and_then(|v| session_key::from_bytes(&v.0))
                .ok_or_else(|| KeyError::SecretMalformed(name.clone()));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(super::managed_labels()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                ByteString(session_key::random()?.to_vec()),
            )])),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => tracing::info!(secret = %name, "created the MCP session key"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(failed("creating", e)),
        }
    }
    Err(KeyError::Churn(name))
}
