//! Writes every object's status (observedGeneration, `Accepted`, `ResolvedRefs`,
//! `Programmed`) with server-side apply, and an Event when an object is rejected. Only the
//! leader runs it; an object whose status already says the same is not written.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::{Value, json};
use tollgate_crds::Kind;

use super::peers::Peers;
use super::source::{ORIGIN, SharedIndex, Watched};
use imbl::ordmap::DiffItem;

use crate::compile::{Compiled, Condition, ConditionType, ObjectReport, Reason, ReportKey};
use crate::status::{object_status, programmed, shortened, up_to_date};
use crate::tracker::{AckView, ClusterAcks, Tracker};

/// Budgets whose spend was restored from their status, with what to tell about it.
pub type LedgerNotes = Arc<std::sync::Mutex<BTreeMap<(String, String), String>>>;

/// Field manager of every status this controller writes.
pub const FIELD_MANAGER: &str = "tollgate-controller";

/// Status writes in flight at once (the conditions writer's and the spend writer's).
pub(crate) const CONCURRENCY: usize = 8;

/// One status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub status: Value,
    /// A rejection to announce as an Event: (reason, message).
    pub event: Option<(String, String)>,
}

/// What must be written for `snapshot`, given what each object's status says now (from
/// the index) and what was written already but not yet seen back through the watch.
pub fn plan(
    snapshot: &Compiled,
    index: &SharedIndex,
    acks: &impl AckView,
    written: &HashMap<(Kind, String, String), Value>,
    ledger_notes: &BTreeMap<(String, String), String>,
    now: &str,
    only: Option<&[ReportKey]>,
) -> Vec<Write> {
    let index = index.lock();
    let mut out = Vec::new();
    let reports: Box<dyn Iterator<Item = &ObjectReport>> = match only {
        Some(keys) => Box::new(
            keys.iter()
                .filter_map(|k| snapshot.report_map.get(k).map(|r| &**r)),
        ),
        None => Box::new(snapshot.reports()),
    };
    for report in reports.filter(|r| r.origin == ORIGIN) {
        let Some(kind) = Kind::from_kind(&report.kind) else {
            continue;
        };
        let Some(entry) = index.get(Watched::Tollgate(kind), &report.namespace, &report.name)
        else {
            continue;
        };
        let mut conditions = report.conditions.clone();
        conditions.push(programmed(report, acks));
        if kind == Kind::Budget
            && !ledger_notes.is_empty()
            && let Some(note) = ledger_notes.get(&(report.namespace.clone(), report.name.clone()))
        {
            conditions.push(Condition::new(
                ConditionType::SpendKept,
                false,
                Reason::LedgerNotFound,
                note.clone(),
            ));
        }
        let status = object_status(&conditions, entry.generation, &entry.status, now);
        if up_to_date(&entry.status, &status) {
            continue;
        }
        let key = (kind, report.namespace.clone(), report.name.clone());
        if written.get(&key).is_some_and(|w| up_to_date(w, &status)) {
            continue;
        }
        out.push(Write {
            kind,
            namespace: report.namespace.clone(),
            name: report.name.clone(),
            uid: entry.uid.clone(),
            event: rejection(&conditions, &entry.status),
            status,
        });
    }
    out
}

/// The first failing condition that the object's current status does not already show
/// (so that each rejection is announced once, not at every write).
fn rejection(conditions: &[Condition], current: &Value) -> Option<(String, String)> {
    let failing = conditions.iter().find(|c| {
        c.status == "False"
            && matches!(
                c.reason.as_str(),
                "Invalid" | "Duplicate" | "RefNotFound" | "Rejected" | "NoPrice" | "LedgerNotFound"
            )
    })?;
    let shown = current
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == failing.type_.as_str()
                    && c["status"] == "False"
                    && c["reason"] == failing.reason.as_str()
                    && c["message"] == failing.message.as_str()
            })
        });
    (!shown).then(|| (failing.reason.as_str().to_string(), failing.message.clone()))
}

pub struct StatusWriter {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub index: SharedIndex,
    pub tracker: Arc<Tracker>,
    /// The other replicas' dataplanes, counted in `Programmed` too.
    pub peers: Peers,
    pub identity: String,
    /// Statuses written and not yet seen back through the watch.
    pub written: HashMap<(Kind, String, String), Value>,
    /// Budgets whose spend was restored from their status.
    pub ledger_notes: LedgerNotes,
    /// What the last round planned for: the next one plans only what changed since.
    pub planned: Option<Planned>,
}

/// What the status rounds of this term have planned for, and what is left to look at.
pub struct Planned {
    snapshot: Arc<Compiled>,
    dataplanes: Vec<String>,
    peers: u64,
    notes: BTreeMap<(String, String), String>,
    full_at: Instant,
    /// Objects to look at, those changed most recently first. A round looks at a bounded
    /// share of it, so a new change waits for one round, not for the whole backlog (every
    /// object's first status after a start, say).
    due: VecDeque<ReportKey>,
    /// Served objects not yet applied by every dataplane: their `Programmed` moves with
    /// ACKs, not with the config, so they are looked at again when an ACK arrives.
    unsettled: HashSet<ReportKey>,
    /// The dataplanes' ACK count when `unsettled` was last looked at.
    acks_seen: u64,
    /// Objects whose write failed, tried again after [`RETRY`].
    failed: HashSet<ReportKey>,
    failed_at: Instant,
}

/// How often a round plans every object even when nothing it knows of changed (a status
/// edited by someone else is put back by then).
const FULL_ROUND: Duration = Duration::from_secs(60);
/// Most status writes in one round.
const ROUND_WRITES: usize = 256;
/// Most objects looked at in one round.
const ROUND_LOOKS: usize = 4096;
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

impl Planned {
    /// Every object of `snapshot` to look at, those with a problem first (their status is
    /// news; a served object's mostly says it is served).
    fn full(
        snapshot: &Arc<Compiled>,
        dataplanes: Vec<String>,
        peers: u64,
        notes: BTreeMap<(String, String), String>,
        acks_seen: u64,
    ) -> Self {
        let problem = |r: &ObjectReport| r.conditions.iter().any(|c| c.status != "True");
        let keys = |with_problem: bool| {
            snapshot
                .report_map
                .iter()
                .filter(move |(_, r)| problem(r) == with_problem)
                .map(|(k, _)| k.clone())
        };
        Planned {
            snapshot: snapshot.clone(),
            dataplanes,
            peers,
            notes,
            full_at: Instant::now(),
            due: keys(true).chain(keys(false)).collect(),
            unsettled: HashSet::new(),
            acks_seen,
            failed: HashSet::new(),
            failed_at: Instant::now(),
        }
    }
}

impl StatusWriter {
    /// Whether objects are left to look at: the next round should come at once.
    pub fn behind(&self) -> bool {
        self.planned.as_ref().is_some_and(|p| !p.due.is_empty())
    }

    /// Writes what `snapshot` calls for: what changed since the last round first, then a
    /// bounded share of what is left to look at ([`StatusWriter::behind`] says whether
    /// anything is).
    pub async fn sync(&mut self, snapshot: &Arc<Compiled>) {
        let now = Timestamp::now().to_string();
        // What the watch has caught up with needs no memory.
        {
            let index = self.index.lock();
            self.written.retain(|(kind, ns, name), w| {
                index
                    .get(Watched::Tollgate(*kind), ns, name)
                    .is_some_and(|e| !up_to_date(&e.status, w))
            });
        }
        let peers = self.peers.fresh(&self.identity, std::time::Instant::now());
        let acks = ClusterAcks {
            own: &self.tracker,
            peers: peers.iter().collect(),
            config_version: &snapshot.version,
        };
        let notes = crate::lock(&self.ledger_notes).clone();
        let dataplanes: Vec<String> = self
            .tracker
            .dataplanes()
            .into_iter()
            .map(|d| d.id)
            .collect();
        let peers_epoch = self.peers.epoch();
        let acks_epoch = self.tracker.epoch();
        // Only what changed since the last round, what waits on ACKs or on a failed
        // write, and what is left, unless the dataplanes, the other replicas or the
        // restored-spend notes moved (those change every object's status) or a full round
        // is due.
        let mut state = match self.planned.take() {
            Some(mut p)
                if p.dataplanes == dataplanes
                    && p.peers == peers_epoch
                    && p.notes == notes
                    && p.full_at.elapsed() < FULL_ROUND =>
            {
                let changed: Vec<ReportKey> = p
                    .snapshot
                    .report_map
                    .diff(&snapshot.report_map)
                    .filter_map(|d| match d {
                        DiffItem::Add(k, _) | DiffItem::Update { new: (k, _), .. } => {
                            Some(k.clone())
                        }
                        DiffItem::Remove(..) => None,
                    })
                    .collect();
                for k in changed.into_iter().rev() {
                    p.due.push_front(k);
                }
                if p.acks_seen != acks_epoch {
                    p.acks_seen = acks_epoch;
                    p.due.extend(p.unsettled.drain());
                }
                if p.failed_at.elapsed() >= RETRY {
                    p.failed_at = Instant::now();
                    p.due.extend(p.failed.drain());
                }
                p.snapshot = snapshot.clone();
                p
            }
            _ => Planned::full(snapshot, dataplanes, peers_epoch, notes, acks_epoch),
        };
        let mut writes = Vec::new();
        let mut looked: HashSet<ReportKey> = HashSet::new();
        while writes.len() < ROUND_WRITES && looked.len() < ROUND_LOOKS {
            let Some(key) = state.due.pop_front() else {
                break;
            };
            if !looked.insert(key.clone()) {
                continue;
            }
            let Some(report) = snapshot.report_map.get(&key) else {
                continue;
            };
            let served = report.resource.is_some()
                && report
                    .condition(ConditionType::Accepted)
                    .is_some_and(|c| c.status == "True");
            if served && programmed(report, &acks).status != "True" {
                state.unsettled.insert(key.clone());
            }
            writes.extend(plan(
                snapshot,
                &self.index,
                &acks,
                &self.written,
                &state.notes,
                &now,
                Some(std::slice::from_ref(&key)),
            ));
        }
        let client = &self.client;
        let recorder = &self.recorder;
        let results: Vec<(Write, bool)> = futures_util::stream::iter(writes)
            .map(|w| async move {
                let ok = write(client, recorder, &w).await;
                (w, ok)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (w, ok) in results {
            if ok {
                self.written.insert((w.kind, w.namespace, w.name), w.status);
            } else {
                state
                    .failed
                    .insert((w.kind.to_string(), w.namespace, w.name, ORIGIN.to_string()));
            }
        }
        self.planned = Some(state);
    }
}

/// Applies `status` to an object's status subresource (server-side apply, forced) as
/// `manager`, which owns the fields it sends. An object gone meanwhile is not an error
/// worth logging: the watch will drop it.
pub(crate) async fn apply_status(
    client: &kube::Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    status: &Value,
    manager: &str,
) -> bool {
    let ar = Watched::Tollgate(kind).api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let patch = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": name, "namespace": namespace},
        "status": status,
    });
    let params = PatchParams::apply(manager).force();
    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => true,
        Err(e) => {
            if !matches!(&e, kube::Error::Api(a) if a.code == 404) {
                tracing::warn!(%kind, object = %format!("{namespace}/{name}"), error = %e, manager, "cannot write status");
            }
            false
        }
    }
}

pub(crate) async fn write(client: &kube::Client, recorder: &Recorder, w: &Write) -> bool {
    if !apply_status(
        client,
        w.kind,
        &w.namespace,
        &w.name,
        &w.status,
        FIELD_MANAGER,
    )
    .await
    {
        return false;
    }
    let ar = Watched::Tollgate(w.kind).api_resource();
    if let Some((reason, message)) = &w.event {
        let reference = ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some(ar.kind.clone()),
            name: Some(w.name.clone()),
            namespace: Some(w.namespace.clone()),
            uid: Some(w.uid.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            // An Event's note is at most 1 kB.
            note: Some(shortened(message, 1000)),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "cannot publish an event");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{ObjectReport, ServedAs};
    use crate::k8s::source::Scope;
    use kube::runtime::watcher::Event as WatchEvent;

    fn snapshot(accepted: bool) -> Compiled {
        let mut conditions = vec![Condition {
            type_: ConditionType::Accepted,
            status: if accepted { "True" } else { "False" },
            reason: if accepted {
                Reason::Accepted
            } else {
                Reason::Invalid
            },
            message: if accepted {
                ""
            } else {
                "spec.targets: required"
            }
            .into(),
        }];
        if accepted {
            conditions.push(Condition {
                type_: ConditionType::ResolvedRefs,
                status: "True",
                reason: Reason::ResolvedRefs,
                message: String::new(),
            });
        }
        let report = ObjectReport {
            kind: "LLMRoute".into(),
            namespace: "n".into(),
            name: "r".into(),
            origin: ORIGIN.into(),
            conditions,
            resource: accepted.then(|| ServedAs {
                type_url: "t",
                name: "n/r".into(),
                version: "v1".into(),
            }),
        };
        Compiled {
            report_map: [(
                ("LLMRoute".into(), "n".into(), "r".into(), ORIGIN.into()),
                std::sync::Arc::new(report),
            )]
            .into_iter()
            .collect(),
            ..Compiled::default()
        }
    }

    fn index_with(status: Value) -> SharedIndex {
        let index = SharedIndex::new(0);
        let o: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "n", "uid": "u", "generation": 2},
            "spec": {}, "status": status,
        }))
        .unwrap();
        index.lock().apply(
            &Scope {
                watched: Watched::Tollgate(Kind::LlmRoute),
                namespace: None,
            },
            WatchEvent::Apply(o),
        );
        index
    }

    #[test]
    fn a_round_limited_to_some_objects_plans_only_those() {
        let tracker = Tracker::default();
        let index = index_with(Value::Null);
        let written = HashMap::new();
        let snapshot = snapshot(false);
        let key: ReportKey = ("LLMRoute".into(), "n".into(), "r".into(), ORIGIN.into());
        let plan = |only: Option<&[ReportKey]>| {
            plan(
                &snapshot,
                &index,
                &tracker,
                &written,
                &BTreeMap::new(),
                "t1",
                only,
            )
        };
        assert_eq!(plan(None).len(), 1);
        assert!(plan(Some(&[])).is_empty());
        assert_eq!(plan(Some(std::slice::from_ref(&key))), plan(None));
    }

    #[test]
    fn a_status_is_written_once_and_a_rejection_announced_once() {
        let tracker = Tracker::default();
        let index = index_with(Value::Null);
        let mut written = HashMap::new();
        // No Budget spend restored here.
        let plan = |accepted, index: &SharedIndex, written: &HashMap<_, _>, now| {
            plan(
                &snapshot(accepted),
                index,
                &tracker,
                written,
                &BTreeMap::new(),
                now,
                None,
            )
        };
        let writes = plan(false, &index, &written, "t1");
        assert_eq!(writes.len(), 1);
        let w = &writes[0];
        assert_eq!(w.status["observedGeneration"], 2);
        assert_eq!(w.status["conditions"][0]["reason"], "Invalid");
        assert_eq!(w.status["conditions"][1]["type"], "Programmed");
        assert_eq!(
            w.event,
            Some(("Invalid".into(), "spec.targets: required".into()))
        );
        // Written, not yet seen back: not written again.
        written.insert((Kind::LlmRoute, "n".into(), "r".into()), w.status.clone());
        assert!(plan(false, &index, &written, "t2").is_empty());
        // Seen back: nothing to do, and no second Event even if something else moves.
        let index = index_with(w.status.clone());
        assert!(plan(false, &index, &HashMap::new(), "t2").is_empty());

        // Fixed: Accepted, and Programmed once the one dataplane ACKs.
        let writes = plan(true, &index, &HashMap::new(), "t3");
        assert_eq!(writes[0].event, None);
        assert_eq!(writes[0].status["conditions"][2]["reason"], "NoDataplanes");
        let dp = tracker.connect();
        tracker.ack(dp, "t", "n/r", "v1");
        let writes = plan(true, &index, &HashMap::new(), "t4");
        let programmed = &writes[0].status["conditions"][2];
        assert_eq!(programmed["status"], "True");
        assert_eq!(programmed["message"], "applied by 1 of 1 dataplanes");
    }
}
