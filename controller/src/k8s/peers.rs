//! What each replica's dataplanes hold, for the leader: dataplanes connect to any replica,
//! but only the leader writes `Programmed`, so every replica publishes an [`AckReport`] of
//! its own dataplanes in a ConfigMap (`<lease>-acks-<identity>`, in the Lease's
//! namespace), and the leader watches them and adds them to its own count.
//!
//! A report names only the resources not yet held by all of the replica's dataplanes, so
//! it stays small in a steady state. It is rewritten when it changes and at least every
//! [`HEARTBEAT`]; the leader ignores a report it has not seen change for [`STALE_AFTER`]
//! (its replica is gone, and its dataplanes are reconnecting elsewhere).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::compile::Compiled;
use crate::tracker::{AckReport, Tracker};

/// A report is rewritten at least this often, so the leader can tell a live replica.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A report unchanged for this long is ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// Label naming the Lease a report belongs to.
pub const LABEL: &str = "tollgate.dev/acks-for";
const DATA_KEY: &str = "report";

/// A report as written: the replica and a sequence number, so that every write changes
/// the object (the API sends no watch event for an update that changes nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    pub identity: String,
    pub sequence: u64,
    /// Where this replica's config and usage streams are reached (`--advertise-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Whether this replica leads (keeps the usage ledger).
    #[serde(default)]
    pub leads: bool,
    #[serde(flatten)]
    pub report: AckReport,
}

/// The other replicas' latest reports, with when each was last seen.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    inner: Arc<Mutex<HashMap<String, (Published, Instant)>>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Published, Instant)>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn insert(&self, published: Published, seen: Instant) {
        let mut reports = self.lock();
        if reports
            .get(&published.identity)
            .is_none_or(|(p, _)| p.report != published.report)
        {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reports.insert(published.identity.clone(), (published, seen));
    }

    /// The URL of the replica that last said it leads, if it is not `me` and its report
    /// is fresh.
    pub fn leader_url(&self, me: &str, now: Instant) -> Option<String> {
        self.lock()
            .iter()
            .filter(|(id, (p, seen))| {
                p.leads && id.as_str() != me && now.duration_since(*seen) < STALE_AFTER
            })
            .max_by_key(|(_, (_, seen))| *seen)
            .and_then(|(_, (p, _))| p.url.clone())
    }

    pub fn remove(&self, identity: &str) {
        self.lock().remove(identity);
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes whenever a report's content does (not at a heartbeat).
    pub fn epoch(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fresh reports of every replica but `me`.
    pub fn fresh(&self, me: &str, now: Instant) -> Vec<AckReport> {
        self.lock()
            .iter()
            .filter(|(id, (_, seen))| id.as_str() != me && now.duration_since(*seen) < STALE_AFTER)
            .map(|(_, (p, _))| p.report.clone())
            .collect()
    }
}

pub fn config_map_name(lease: &str, identity: &str) -> String {
    let mut name = format!("{lease}-acks-{identity}").to_ascii_lowercase();
    name.truncate(253);
    name
}

/// This replica's report for `snapshot`.
pub fn report_of(tracker: &Tracker, snapshot: &Compiled) -> AckReport {
    tracker.report(
        &snapshot.version,
        snapshot.resources.iter().flat_map(|(type_url, map)| {
            map.values()
                .map(move |r| (*type_url, r.name.as_str(), r.version.as_str()))
        }),
    )
}

/// This replica, as its report names it.
#[derive(Clone, Debug)]
pub struct Me {
    pub identity: String,
    /// `--advertise-url`.
    pub url: Option<String>,
    pub leader: watch::Receiver<bool>,
}

/// Publishes this replica's report while the controller runs; deletes it on the way out.
/// A change of leadership is published at once.
pub async fn publish(
    api: Api<ConfigMap>,
    lease: String,
    me: Me,
    tracker: Arc<Tracker>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Me {
        identity,
        url,
        mut leader,
    } = me;
    let name = config_map_name(&lease, &identity);
    // The last report written (with whether it said this replica leads), and when.
    let mut last: Option<(AckReport, bool, Instant)> = None;
    let mut sequence = 0u64;
    // (config version, tracker epoch) of the last report built: while they stay the same
    // the report does too, and only the heartbeat makes a write due.
    let mut built: Option<(String, u64)> = None;
    loop {
        let snapshot = snapshots.borrow().clone();
        let state = (snapshot.version.clone(), tracker.epoch());
        let leads = *leader.borrow_and_update();
        let heartbeat = last
            .as_ref()
            .is_none_or(|(_, l, at)| at.elapsed() >= HEARTBEAT || *l != leads);
        if heartbeat || built.as_ref() != Some(&state) {
            built = Some(state);
            let report = report_of(&tracker, &snapshot);
            if heartbeat || last.as_ref().is_none_or(|(r, _, _)| r != &report) {
                sequence += 1;
                let published = Published {
                    identity: identity.clone(),
                    sequence,
                    url: url.clone(),
                    leads,
                    report: report.clone(),
                };
                match write(&api, &name, &lease, &published).await {
                    Ok(()) => last = Some((report, leads, Instant::now())),
                    Err(e) => {
                        tracing::warn!(configmap = %name, error = %e, "cannot publish the dataplanes' ACKs")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = leader.changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = api.delete(&name, &DeleteParams::default()).await;
}

async fn write(
    api: &Api<ConfigMap>,
    name: &str,
    lease: &str,
    published: &Published,
) -> Result<(), kube::Error> {
    let data = serde_json::to_string(published).unwrap_or_default();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some({
                let mut labels = super::managed_labels();
                labels.insert(LABEL.to_string(), lease.to_string());
                labels
            }),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), data)])),
        ..ConfigMap::default()
    };
    match api.replace(name, &PostParams::default(), &cm).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Reads a report ConfigMap, or None if it is not one of `lease`'s.
fn read(cm: &ConfigMap, lease: &str) -> Option<Published> {
    let labels = cm.metadata.labels.as_ref()?;
    if labels.get(LABEL).map(String::as_str) != Some(lease) {
        return None;
    }
    let text = cm.data.as_ref()?.get(DATA_KEY)?;
    serde_json::from_str(text).ok()
}

/// Watches the reports of `lease`'s replicas into `peers`.
pub async fn watch_reports(api: Api<ConfigMap>, lease: String, peers: Peers) {
    let config = watcher::Config::default().labels(&format!("{LABEL}={lease}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                if let Some(p) = read(&cm, &lease) {
                    peers.insert(p, Instant::now());
                }
            }
            Ok(Event::Delete(cm)) => {
                if let Some(p) = read(&cm, &lease) {
                    peers.remove(&p.identity);
                }
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching the replicas' ACK reports failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_go_stale() {
        let published = Published {
            identity: "b".into(),
            sequence: 3,
            url: Some("https://10.0.0.2:18000".into()),
            leads: true,
            report: AckReport {
                config_version: "cfg".into(),
                connected: 2,
                ..AckReport::default()
            },
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(LABEL.to_string(), "lease".to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                serde_json::to_string(&published).unwrap(),
            )])),
            ..ConfigMap::default()
        };
        let p = read(&cm, "lease").unwrap();
        assert_eq!(p, published);
        assert!(read(&cm, "another-lease").is_none());

        let peers = Peers::default();
        let t0 = Instant::now();
        peers.insert(
            Published {
                identity: "a".into(),
                url: Some("https://10.0.0.1:18000".into()),
                leads: false,
                ..published.clone()
            },
            t0,
        );
        peers.insert(p, t0);
        assert_eq!(peers.fresh("a", t0).len(), 1, "not its own");
        assert!(peers.fresh("a", t0 + STALE_AFTER).is_empty());
        // The leader's URL, known from its report, to every replica but itself.
        assert_eq!(
            peers.leader_url("a", t0).as_deref(),
            Some("https://10.0.0.2:18000")
        );
        assert_eq!(peers.leader_url("b", t0), None);
        assert_eq!(peers.leader_url("a", t0 + STALE_AFTER), None);
        assert_eq!(
            config_map_name("tollgate-controller", "Pod-1"),
            "tollgate-controller-acks-pod-1"
        );
    }
}
