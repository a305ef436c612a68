//! VirtualKey Secrets: a VirtualKey that asks for it (`generateSecret: true`) and whose
//! Secret does not exist gets one, with a fresh random key, owned by the VirtualKey (deleted
//! with it). No other Secret is ever created, adopted or deleted: a VirtualKey without
//! `generateSecret` whose Secret is deleted is revoked, and a Secret applied with the
//! VirtualKey is never raced. The key is written only to the
//! Secret: never to status, logs or Events, and dataplanes receive only its hash (the
//! compiler hashes it when the Secret comes back through the watch).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;
use ring::rand::SecureRandom;
use tollgate_crds::Kind;

use super::source::{Index, Watched};

/// A Secret to create for a VirtualKey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub namespace: String,
    pub secret: String,
    /// Key inside the Secret's data.
    pub key: String,
    pub owner_name: String,
    pub owner_uid: String,
}

/// VirtualKeys that ask for a Secret and whose Secret does not exist. A Secret that exists without the key is the
/// user's: it is left alone (the VirtualKey's `ResolvedRefs` says what is missing).
pub fn missing(index: &Index) -> Vec<Wanted> {
    index
        .of(Watched::Tollgate(Kind::VirtualKey))
        .filter_map(|(ns, name, e)| {
            let (secret, key) = e.generates.as_ref()?;
            if secret.is_empty() || index.get(Watched::Secret, ns, secret).is_some() {
                return None;
            }
            Some(Wanted {
                namespace: ns.to_string(),
                secret: secret.clone(),
                key: key.clone(),
                owner_name: name.to_string(),
                owner_uid: e.uid.clone(),
            })
        })
        .collect()
}

/// A fresh virtual key: `tg-` and 256 random bits, URL-safe base64.
pub fn fresh_key() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

pub fn secret_for(w: &Wanted, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(w.secret.clone()),
            namespace: Some(w.namespace.clone()),
            labels: Some({
                let mut labels = super::managed_labels();
                labels.insert(crate::compile::CREDENTIAL_LABEL.into(), "true".into());
                labels
            }),
            owner_references: Some(vec![OwnerReference {
                api_version: tollgate_crds::API_VERSION.to_string(),
                kind: Kind::VirtualKey.as_str().to_string(),
                name: w.owner_name.clone(),
                uid: w.owner_uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            w.key.clone(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Creates missing Secrets, trying each again only after a pause.
#[derive(Debug, Default)]
pub struct Creator {
    tried: HashMap<(String, String), Instant>,
}

const RETRY_AFTER: Duration = Duration::from_secs(30);

impl Creator {
    pub async fn create_missing(&mut self, client: &kube::Client, wanted: Vec<Wanted>) {
        let now = Instant::now();
        self.tried
            .retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        for w in wanted {
            let id = (w.namespace.clone(), w.secret.clone());
            if self.tried.contains_key(&id) {
                continue;
            }
            self.tried.insert(id, now);
            let key = match fresh_key() {
                Ok(k) => k,
                Err(_) => {
                    tracing::error!("no random source: cannot create VirtualKey Secrets");
                    return;
                }
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), &w.namespace);
            match api
                .create(&PostParams::default(), &secret_for(&w, &key))
                .await
            {
                Ok(_) => tracing::info!(
                    namespace = %w.namespace,
                    secret = %w.secret,
                    virtual_key = %w.owner_name,
                    "created the VirtualKey's Secret with a new key"
                ),
                // Someone created it meanwhile: the watch brings it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::warn!(
                    namespace = %w.namespace,
                    secret = %w.secret,
                    error = %e,
                    "cannot create the VirtualKey's Secret"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::DynamicObject;
    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};

    use crate::k8s::source::Scope;

    fn apply(index: &mut Index, watched: Watched, v: Value) {
        let scope = Scope {
            watched,
            namespace: None,
        };
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        index.apply(&scope, Event::Apply(o));
    }

    #[test]
    fn only_absent_secrets_are_wanted() {
        let mut index = Index::new(0);
        let vk = Watched::Tollgate(Kind::VirtualKey);
        apply(
            &mut index,
            vk,
            json!({"metadata": {"name": "a", "namespace": "n", "uid": "u-a"},
                   "spec": {"secretRef": {"name": "a-key"}, "generateSecret": true}}),
        );
        apply(
            &mut index,
            vk,
            json!({"metadata": {"name": "b", "namespace": "n", "uid": "u-b"},
                   "spec": {"secretRef": {"name": "b-key", "key": "token"}, "generateSecret": true}}),
        );
        // Not asked for: its Secret is the user's to make, and never raced.
        apply(
            &mut index,
            vk,
            json!({"metadata": {"name": "c", "namespace": "n", "uid": "u-c"},
                   "spec": {"secretRef": {"name": "c-key"}}}),
        );
        apply(
            &mut index,
            Watched::Secret,
            json!({"metadata": {"name": "a-key", "namespace": "n"}, "data": {}}),
        );
        assert_eq!(
            missing(&index),
            [Wanted {
                namespace: "n".into(),
                secret: "b-key".into(),
                key: "token".into(),
                owner_name: "b".into(),
                owner_uid: "u-b".into(),
            }]
        );
    }

    #[test]
    fn the_secret_is_owned_by_its_virtual_key_and_keys_differ() {
        let (k1, k2) = (fresh_key().unwrap(), fresh_key().unwrap());
        assert_ne!(k1, k2);
        assert_eq!(k1.len(), 3 + 43);
        let w = Wanted {
            namespace: "n".into(),
            secret: "s".into(),
            key: "key".into(),
            owner_name: "vk".into(),
            owner_uid: "uid-1".into(),
        };
        let s = secret_for(&w, &k1);
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("VirtualKey", "vk", "uid-1")
        );
        assert_eq!(owner.api_version, "tollgate.dev/v1alpha1");
        assert_eq!(s.data.unwrap()["key"].0, k1.as_bytes());
    }
}
