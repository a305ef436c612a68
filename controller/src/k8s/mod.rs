//! Kubernetes mode: the six Tollgate kinds and Secrets are watched into an index that
//! feeds the same compiler and config streams as local mode; the leader (elected over a
//! Lease) writes status and Events and creates missing VirtualKey Secrets.

#[cfg(test)]
mod api_tests;
pub mod leader;
pub mod peers;
pub mod secrets;
pub mod session_key;
pub mod source;
pub mod status;

/// The labels of every object the controller creates itself (VirtualKey Secrets, the
/// ledger and report ConfigMaps, the MCP session key).
pub fn managed_labels() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "tollgate".to_string(),
    )])
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;

use crate::compile::Compiled;
use crate::publish::Publisher;
use crate::tracker::Tracker;
use leader::Elector;
use source::{ORIGIN, SharedIndex};
use status::StatusWriter;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    /// This replica's name in the Lease and in Events (the pod name).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// How often the leader looks for statuses to write (ACKs arrive between compiles).
    pub status_interval: Duration,
    /// Quiet time after a change before compiling, so a burst compiles once.
    pub debounce: Duration,
    /// Where dataplanes reach this replica (`--advertise-url`), told to those that reach
    /// another replica for the usage stream while this one leads.
    pub advertise_url: Option<String>,
}

/// Handles the rest of the controller needs.
pub struct Shared {
    pub publisher: Publisher,
    pub snapshots: watch::Receiver<Arc<Compiled>>,
    pub tracker: Arc<Tracker>,
    /// Whether this replica leads, as published by the election.
    pub leader: watch::Sender<bool>,
    /// Turns true when the controller stops.
    pub stop: watch::Receiver<bool>,
    /// Budgets whose spend was restored from their status (the ledger was missing).
    pub ledger_notes: status::LedgerNotes,
    /// The other replicas' reports (their dataplanes' ACKs, where the leader is).
    pub peers: peers::Peers,
}

/// Runs Kubernetes mode until `shared.stop` turns true.
pub async fn run(client: kube::Client, settings: Settings, shared: Shared) {
    let Shared {
        publisher,
        snapshots,
        tracker,
        leader,
        stop,
        ledger_notes,
        peers,
    } = shared;
    let scopes = source::scopes(&settings.namespaces);
    let index = SharedIndex::new(scopes.len());
    let mut tasks = tokio::task::JoinSet::new();
    for scope in scopes {
        tasks.spawn(source::watch_scope(client.clone(), scope, index.clone()));
    }
    tasks.spawn(compile_loop(index.clone(), publisher, settings.debounce));
    let elector = Elector {
        api: kube::Api::<Lease>::namespaced(client.clone(), &settings.lease_namespace),
        name: settings.lease_name.clone(),
        identity: settings.identity.clone(),
        duration: settings.lease_duration,
        observed: Default::default(),
    };
    let election = tokio::spawn(elector.run(leader.clone(), stop.clone()));
    let config_maps = kube::Api::<ConfigMap>::namespaced(client.clone(), &settings.lease_namespace);
    tasks.spawn(peers::watch_reports(
        config_maps.clone(),
        settings.lease_name.clone(),
        peers.clone(),
    ));
    let reports = tokio::spawn(peers::publish(
        config_maps,
        settings.lease_name.clone(),
        peers::Me {
            identity: settings.identity.clone(),
            url: settings.advertise_url.clone(),
            leader: leader.subscribe(),
        },
        tracker.clone(),
        snapshots.clone(),
        settings.status_interval,
        stop.clone(),
    ));
    let writer = StatusWriter {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "tollgate-controller".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
        index: index.clone(),
        tracker,
        peers,
        identity: settings.identity.clone(),
        written: HashMap::new(),
        ledger_notes,
        planned: None,
    };
    tasks.spawn(leader_loop(
        writer,
        client,
        index,
        snapshots,
        leader.subscribe(),
        settings.status_interval,
    ));
    let mut stop = stop;
    let _ = stop.wait_for(|s| *s).await;
    // The election releases the Lease and the report is deleted on the way out; the rest
    // just stops.
    let _ = election.await;
    let _ = reports.await;
    tasks.abort_all();
}

/// Compiles after each change of the index, once every watch has listed.
async fn compile_loop(index: SharedIndex, publisher: Publisher, debounce: Duration) {
    let publisher = Arc::new(Mutex::new(publisher));
    let mut changes = index.subscribe();
    // The watches may have listed everything before this task subscribed: look once
    // without waiting for a change, or the first compile would wait for the next one.
    changes.mark_changed();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(debounce).await;
        changes.borrow_and_update();
        // Until every watch has listed, what has arrived is compiled but not published: a
        // partial config would withdraw what is merely not read yet. Compiling it while
        // the rest is still being listed makes the first config ready sooner.
        let (change, synced) = {
            let mut index = index.lock();
            (index.take_change(), index.synced())
        };
        let publisher = publisher.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut p = match publisher.lock() {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
            if synced {
                p.publish([change], ORIGIN);
            } else {
                p.stage(change);
            }
        })
        .await;
    }
}

/// Longest time between two full status rounds.
const FULL_ROUND: Duration = Duration::from_secs(10);

/// While this replica leads: write statuses and create missing VirtualKey Secrets, after
/// each new snapshot and every `interval` (ACKs change `Programmed` between snapshots).
async fn leader_loop(
    mut writer: StatusWriter,
    client: kube::Client,
    index: SharedIndex,
    mut snapshots: watch::Receiver<Arc<Compiled>>,
    mut leader: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut creator = secrets::Creator::default();
    // What the last full round saw; a round that would see the same is skipped, except
    // every FULL_ROUND (a report going stale, a status edited by someone else).
    let mut last: Option<(String, u64, u64, Instant)> = None;
    loop {
        if !*leader.borrow() {
            // Another replica may have written statuses meanwhile: the next term starts
            // with a full round.
            writer.planned = None;
        }
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        let snapshot = snapshots.borrow_and_update().clone();
        // The reports' version, not only the served one: an object that changes nothing
        // served (a new invalid one, say) gets its status at once too.
        let seen = (
            format!("{}/{}", snapshot.version, snapshot.reports_version),
            writer.tracker.epoch(),
            writer.peers.epoch(),
        );
        let unchanged = last.as_ref().is_some_and(|(v, t, p, at)| {
            (v, *t, *p) == (&seen.0, seen.1, seen.2) && at.elapsed() < FULL_ROUND
        });
        // Before every watch has listed, a Secret not seen yet is not a missing one.
        let due = !unchanged || !writer.written.is_empty() || writer.behind();
        if index.lock().synced() && due {
            if !unchanged {
                let wanted = secrets::missing(&index.lock());
                creator.create_missing(&client, wanted).await;
                last = Some((seen.0, seen.1, seen.2, Instant::now()));
            }
            writer.sync(&snapshot).await;
        }
        if writer.behind() {
            // Statuses are left to write: the next round at once, after a look at what
            // changed meanwhile (which it writes first).
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_compile_does_not_wait_for_a_change_once_the_watches_have_listed() {
        // No watches: listed already, before the loop subscribes to changes.
        let index = SharedIndex::new(0);
        let (snapshots, _) = watch::channel(Arc::new(Compiled::default()));
        let (ready, mut ready_rx) = watch::channel(false);
        let publisher = Publisher::new(
            "default",
            snapshots,
            ready,
            prometheus::IntCounter::new("c", "c").unwrap(),
            prometheus::IntGaugeVec::new(prometheus::Opts::new("o", "o"), &["kind", "accepted"])
                .unwrap(),
        );
        tokio::spawn(compile_loop(index, publisher, Duration::ZERO));
        tokio::time::timeout(Duration::from_secs(5), ready_rx.wait_for(|r| *r))
            .await
            .expect("the first compile happened")
            .unwrap();
    }
}
