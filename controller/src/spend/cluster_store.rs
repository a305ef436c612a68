//! Kubernetes mode's durable ledger: one cluster-scoped `UsageLedger` object (named by
//! `--ledger-name`) holding the spend of every Budget and agent session and the last usage
//! batch counted per dataplane, so a new leader counts on exactly where the last one
//! stopped. Being cluster-scoped, its place does not depend on the namespace the
//! controller (and its Lease) is in: a controller reinstalled elsewhere finds it, and says
//! in the log that another controller kept it last.
//!
//! Earlier versions kept the ledger in a ConfigMap beside the Lease (`<lease
//! name>-ledger`): when there is no `UsageLedger` yet, that ConfigMap is read, and deleted
//! once the ledger is written in its new place.
//!
//! When neither is there but Budgets show spend in their status (the ledger was deleted),
//! the spend is not silently counted from zero: it is restored from each Budget's status
//! (the last spend written there, at most a few seconds old), and the Budgets say so
//! (`SpendKept=False`, reason `LedgerNotFound`, an Event) as does the log.
//!
//! Each write is conditioned on the `resourceVersion` this replica last read or wrote: a
//! replica that lost the lead and still writes fails with a conflict instead of overwriting
//! its successor. Rate-limit windows (one minute) are not kept: after a leader change a key
//! may be admitted up to one more minute's allowance. Concurrency accounts spend nothing,
//! so there is nothing of theirs to keep.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use std::collections::BTreeMap;
use tokio::sync::Mutex;

use crate::spend::ledger::{Persisted, Spend};
use tollgate_crds::budget::{Budget, BudgetSpec, BudgetStatus};
use tollgate_crds::{UsageLedger, UsageLedgerSpec};
use tollgate_proto::quantity::Qty;

use crate::k8s::status::LedgerNotes;

/// Why the ledger could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the usage ledger: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Malformed(String),
    #[error("reading the usage ledger file: {0}")]
    File(#[from] std::io::Error),
    #[error("reading the usage ledger file: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why the ledger could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Another replica wrote the ledger since this one read it: it is not the leader's any
    /// more, or was not when it loaded.
    #[error("the ledger was written by another controller replica")]
    Conflict,
    #[error("{0}")]
    Other(String),
}

/// Where to look for Budgets to restore spend from when the ledger is missing.
pub struct Recovery {
    pub client: kube::Client,
    /// Watched namespaces; empty for all.
    pub namespaces: Vec<String>,
    pub notes: LedgerNotes,
}

/// The data key of the ConfigMap earlier versions kept the ledger in.
const LEGACY_KEY: &str = "ledger.json";
/// An object in etcd holds at most about 1.5 MiB; past this the write is refused with a
/// clear error.
pub const MAX_BYTES: usize = 1_000_000;

pub struct LedgerStore {
    api: Api<UsageLedger>,
    name: String,
    /// This controller's Lease, `namespace/name`, written beside the ledger.
    kept_by: String,
    /// Where earlier versions kept the ledger: the ConfigMap `<lease name>-ledger`.
    legacy: (Api<ConfigMap>, String),
    /// The `resourceVersion` last read or written, `None` before the object exists; and
    /// whether the ledger was read from the legacy ConfigMap (deleted after the first
    /// write to the new place).
    version: Mutex<(Option<String>, bool)>,
    recovery: Option<Recovery>,
}

impl LedgerStore {
    /// The `UsageLedger` `name`, kept by the controller whose Lease is `lease_namespace/
    /// lease_name`.
    pub fn new(client: kube::Client, name: &str, lease_namespace: &str, lease_name: &str) -> Self {
        LedgerStore {
            api: Api::all(client.clone()),
            name: name.to_string(),
            kept_by: format!("{lease_namespace}/{lease_name}"),
            legacy: (
                Api::namespaced(client, lease_namespace),
                format!("{lease_name}-ledger"),
            ),
            version: Mutex::new((None, false)),
            recovery: None,
        }
    }

    /// Restores spend from the Budgets' status when the ledger is missing.
    pub fn recovering(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// Where the ledger is kept.
    pub fn place(&self) -> String {
        format!("UsageLedger {}", self.name)
    }

    pub async fn load(&self) -> Result<Persisted, LoadError> {
        let mut version = self.version.lock().await;
        if let Some(ledger) = self.api.get_opt(&self.name).await? {
            *version = (ledger.metadata.resource_version.clone(), false);
            if let Some(by) = ledger
                .spec
                .kept_by
                .as_deref()
                .filter(|by| *by != self.kept_by)
            {
                tracing::warn!(
                    ledger = %self.place(),
                    last_kept_by = by,
                    now_kept_by = %self.kept_by,
                    "the usage ledger was last kept by another controller (moved or reinstalled elsewhere): counting on from it; two gateways in one cluster each need their own --ledger-name"
                );
            }
            return serde_json::from_str(&ledger.spec.ledger).map_err(|e| {
                LoadError::Malformed(format!(
                    "{}: spec.ledger is not a usage ledger: {e}",
                    self.place()
                ))
            });
        }
        *version = (None, false);
        {
            let (api, name) = &self.legacy;
            match api.get_opt(name).await {
                Ok(Some(cm)) => {
                    let text = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(LEGACY_KEY))
                        .map(String::as_str)
                        .unwrap_or("{}");
                    let persisted = serde_json::from_str(text).map_err(|e| {
                        LoadError::Malformed(format!(
                            "ConfigMap {name}: {LEGACY_KEY} is not a usage ledger: {e}"
                        ))
                    })?;
                    tracing::info!(
                        from = %format!("ConfigMap {}/{name}", api.namespace().unwrap_or_default()),
                        to = %self.place(),
                        "read the usage ledger from where earlier versions kept it; it moves on the next write"
                    );
                    version.1 = true;
                    return Ok(persisted);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for the usage ledger where earlier versions kept it")
                }
            }
        }
        self.recover().await
    }

    /// The spend the Budgets' status shows, when there is no ledger.
    async fn recover(&self) -> Result<Persisted, LoadError> {
        let Some(r) = &self.recovery else {
            return Ok(Persisted::default());
        };
        let apis: Vec<kube::Api<Budget>> = if r.namespaces.is_empty() {
            vec![kube::Api::all(r.client.clone())]
        } else {
            r.namespaces
                .iter()
                .map(|ns| kube::Api::namespaced(r.client.clone(), ns))
                .collect()
        };
        let now = tollgate_proto::time::now_unix_ms();
        let mut restored = Persisted::default();
        let mut notes = BTreeMap::new();
        for api in apis {
            for b in api.list(&Default::default()).await? {
                let ns = b.metadata.namespace.clone().unwrap_or_default();
                let name = b.metadata.name.clone().unwrap_or_default();
                let Some(spend) = b.status.as_ref().and_then(|s| spend_of(&b.spec, s, now)) else {
                    continue;
                };
                let shown = b
                    .status
                    .as_ref()
                    .and_then(|s| s.spent.clone())
                    .unwrap_or_default();
                notes.insert(
                    (ns.clone(), name.clone()),
                    format!(
                        "no usage ledger at {} when this controller started to keep the books; the spend was restored from this Budget's status (USD {}, {} tokens), which may miss the last seconds of usage before",
                        self.place(),
                        shown.usd.unwrap_or(0.0),
                        shown.tokens.unwrap_or(0)
                    ),
                );
                restored
                    .accounts
                    .insert(format!("budget/{ns}/{name}"), spend);
            }
        }
        if !notes.is_empty() {
            tracing::error!(
                ledger = %self.place(),
                budgets = notes.len(),
                "no usage ledger where one was expected, but Budgets show spend: restored the spend from their status instead of counting from zero (was it deleted?)"
            );
        }
        *crate::lock(&r.notes) = notes;
        Ok(restored)
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
                "the ledger is {} bytes, over the {MAX_BYTES} one object holds (too many live agent sessions)",
                text.len()
            )));
        }
        let mut version = self.version.lock().await;
        let ledger = UsageLedger {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version.0.clone(),
                labels: Some(crate::k8s::managed_labels()),
                ..ObjectMeta::default()
            },
            spec: UsageLedgerSpec {
                ledger: text,
                kept_by: Some(self.kept_by.clone()),
            },
        };
        let pp = PostParams {
            field_manager: Some(crate::k8s::status::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let written = match version.0.as_ref() {
            Some(_) => self.api.replace(&self.name, &pp, &ledger).await,
            None => self.api.create(&pp, &ledger).await,
        };
        match written {
            Ok(l) => {
                version.0 = l.metadata.resource_version;
                if std::mem::take(&mut version.1) {
                    let (api, name) = &self.legacy;
                    match api.delete(name, &DeleteParams::default()).await {
                        Ok(_) => tracing::info!(
                            ledger = %self.place(),
                            "the usage ledger moved; deleted ConfigMap {name}"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "the usage ledger moved, but ConfigMap {name} where it was is not deleted")
                        }
                    }
                }
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(SaveError::Conflict),
            // Deleted meanwhile: the next write creates it again from what this leader
            // holds. Not found on a create: the kind itself is missing.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                Err(SaveError::Other(if version.0.take().is_some() {
                    format!("{} was deleted; writing it again", self.place())
                } else {
                    format!(
                        "cannot create {}: the UsageLedger kind is not installed (apply charts/tollgate/crds/usageledgers.tollgate.dev.yaml; helm upgrade does not add CRDs)",
                        self.place()
                    )
                }))
            }
            Err(e) => Err(SaveError::Other(e.to_string())),
        }
    }
}

/// The spend a Budget's status shows for the period `now_ms` is in, as a ledger account;
/// `None` when it shows nothing spent, or a calendar period that is over.
fn spend_of(spec: &BudgetSpec, status: &BudgetStatus, now_ms: i64) -> Option<Spend> {
    let spent = status.spent.as_ref()?;
    let qty = Qty {
        usd: (spent.usd.unwrap_or(0.0).max(0.0) * 1e9).round() as u64,
        tokens: spent.tokens.unwrap_or(0),
        requests: 0,
    };
    if qty.usd == 0 && qty.tokens == 0 {
        return None;
    }
    let ms = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
    };
    let calendar = matches!(spec.period.as_str(), "day" | "week" | "month");
    if calendar {
        let start = ms(&status.period_start)?;
        if ms(&status.period_end).is_none_or(|end| end <= now_ms) {
            return None;
        }
        Some(Spend {
            period_start: start,
            spent: qty,
            buckets: vec![],
            last_used_ms: now_ms,
        })
    } else {
        // A rolling window: its buckets are gone with the ledger; the whole spend is
        // counted as made now, so it leaves the window last (never early).
        Some(Spend {
            period_start: 0,
            spent: Qty::default(),
            buckets: vec![(now_ms, qty)],
            last_used_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::budget::Amount;

    fn spec(period: &str) -> BudgetSpec {
        serde_json::from_value(serde_json::json!({
            "selector": {}, "limit": {"usd": 10}, "period": period
        }))
        .unwrap()
    }

    fn status(usd: f64, start: Option<&str>, end: Option<&str>) -> BudgetStatus {
        BudgetStatus {
            spent: Some(Amount {
                usd: Some(usd),
                tokens: Some(40),
            }),
            period_start: start.map(Into::into),
            period_end: end.map(Into::into),
            ..BudgetStatus::default()
        }
    }

    #[test]
    fn spend_is_restored_for_the_current_period_only() {
        let now = "2026-12-03T12:00:00Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let day = spec("day");
        let s = spend_of(
            &day,
            &status(
                1.25,
                Some("2026-12-03T00:00:00Z"),
                Some("2026-12-04T00:00:00Z"),
            ),
            now,
        )
        .unwrap();
        assert_eq!((s.spent.usd, s.spent.tokens), (1_250_000_000, 40));
        assert_eq!(s.period_start, now - 12 * 3_600_000);
        // Yesterday's period is over: nothing to restore.
        assert!(
            spend_of(
                &day,
                &status(
                    1.25,
                    Some("2026-12-02T00:00:00Z"),
                    Some("2026-12-03T00:00:00Z")
                ),
                now
            )
            .is_none()
        );
        // Nothing spent: nothing restored.
        assert!(spend_of(&day, &BudgetStatus::default(), now).is_none());
        // A rolling window keeps it in one bucket made now.
        let s = spend_of(&spec("1h"), &status(2.0, None, None), now).unwrap();
        assert_eq!(
            s.buckets,
            vec![(
                now,
                Qty {
                    usd: 2_000_000_000,
                    tokens: 40,
                    requests: 0
                }
            )]
        );
    }
}
