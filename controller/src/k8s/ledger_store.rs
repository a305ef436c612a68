//! Kubernetes mode's durable ledger: one ConfigMap (`<lease name>-ledger` beside the
//! election Lease) holding the spend of every Budget and agent session and the last usage
//! batch counted per dataplane, so a new leader counts on exactly where the last one
//! stopped.
//!
//! Each write is conditioned on the `resourceVersion` this replica last read or wrote: a
//! replica that lost the lead and still writes fails with a conflict instead of overwriting
//! its successor. Rate-limit windows (one minute) are not kept: after a leader change a key
//! may be admitted up to one more minute's allowance. Concurrency accounts spend nothing,
//! so there is nothing of theirs to keep.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use std::collections::BTreeMap;
use tokio::sync::Mutex;

use crate::ledger::Persisted;
use crate::usage::SaveError;

/// The data key the ledger is kept under.
const KEY: &str = "ledger.json";
/// A ConfigMap holds at most 1 MiB; past this the write is refused with a clear error.
pub const MAX_BYTES: usize = 1_000_000;

pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    name: String,
    /// The `resourceVersion` last read or written; `None` before the object exists.
    version: Mutex<Option<String>>,
}

impl ConfigMapStore {
    pub fn new(api: Api<ConfigMap>, lease_name: &str) -> Self {
        ConfigMapStore {
            api,
            name: format!("{lease_name}-ledger"),
            version: Mutex::new(None),
        }
    }

    pub async fn load(&self) -> anyhow::Result<Persisted> {
        let mut version = self.version.lock().await;
        let Some(cm) = self.api.get_opt(&self.name).await? else {
            *version = None;
            return Ok(Persisted::default());
        };
        *version = cm.metadata.resource_version.clone();
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .map(String::as_str)
            .unwrap_or("{}");
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("ConfigMap {}: {KEY} is not a usage ledger: {e}", self.name)
        })
    }

    pub async fn save(&self, p: &Persisted) -> Result<(), SaveError> {
        let kept = Persisted {
            accounts: p
                .accounts
                .iter()
                .filter(|(name, _)| !name.starts_with("rate/") && !name.starts_with("conc/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sequences: p.sequences.clone(),
        };
        let text = serde_json::to_string(&kept).map_err(|e| SaveError::Other(e.to_string()))?;
        if text.len() > MAX_BYTES {
            return Err(SaveError::Other(format!(
                "the ledger is {} bytes, over the {MAX_BYTES} a ConfigMap holds (too many live agent sessions)",
                text.len()
            )));
        }
        let mut version = self.version.lock().await;
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version.clone(),
                labels: Some(super::managed_labels()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(KEY.to_string(), text)])),
            ..ConfigMap::default()
        };
        let pp = PostParams {
            field_manager: Some(super::status::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let written = match version.as_ref() {
            Some(_) => self.api.replace(&self.name, &pp, &cm).await,
            None => self.api.create(&pp, &cm).await,
        };
        match written {
            Ok(cm) => {
                *version = cm.metadata.resource_version;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(SaveError::Conflict),
            Err(e) => Err(SaveError::Other(e.to_string())),
        }
    }
}
