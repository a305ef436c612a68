//! What each connected dataplane has applied, from its ACKs and NACKs: the ground truth
//! for the `Programmed` condition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

type Key = (String, String);

#[derive(Debug, Default)]
struct Dataplane {
    node_id: String,
    connected_at_unix: u64,
    acked: HashMap<Key, String>,
    nacked: HashMap<Key, (String, String)>,
}

/// Connected dataplanes and the resource versions each has acknowledged.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<(u64, BTreeMap<u64, Dataplane>)>,
    /// Bumped by every connection, ACK and NACK: lets the status writer skip a round in
    /// which nothing moved.
    changes: AtomicU64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataplaneInfo {
    pub id: String,
    pub connected_at_unix: u64,
}

/// How many dataplanes run an object's current version, and who refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub connected: usize,
    pub applied: usize,
    pub rejections: Vec<String>,
}

/// A replica's account of its own dataplanes, for the leader to add to its own: how many
/// are connected, and the resources not held at their current version by all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckReport {
    /// Version of the whole config the replica serves: lagging entries are relative to it.
    pub config_version: String,
    pub connected: usize,
    /// By `<type URL> <name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lagging: BTreeMap<String, Lag>,
    /// Too many lagging resources to list: count every resource as not applied there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    pub applied: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejections: Vec<String>,
}

/// How a resource is named in [`AckReport::lagging`].
fn lag_key(type_url: &str, name: &str) -> String {
    format!("{type_url} {name}")
}

/// Lagging resources listed at most in one report (the rest make it `truncated`).
pub const MAX_LAGGING: usize = 2_000;

/// Answers "how many dataplanes hold this version": one replica's tracker, or the
/// cluster's view the leader builds from every replica's.
pub trait AckView {
    fn programmed(&self, type_url: &str, name: &str, version: &str) -> Programmed;
}

impl AckView for Tracker {
    fn programmed(&self, type_url: &str, name: &str, version: &str) -> Programmed {
        Tracker::programmed(self, type_url, name, version)
    }
}

/// The leader's own dataplanes plus what the other replicas reported of theirs.
pub struct ClusterAcks<'a> {
    pub own: &'a Tracker,
    /// Reports of the other replicas (fresh ones only).
    pub peers: Vec<&'a AckReport>,
    /// The config version the leader serves.
    pub config_version: &'a str,
}

impl AckView for ClusterAcks<'_> {
    fn programmed(&self, type_url: &str, name: &str, version: &str) -> Programmed {
        let mut p = self.own.programmed(type_url, name, version);
        let key = lag_key(type_url, name);
        for peer in &self.peers {
            p.connected += peer.connected;
            // A replica serving another config (still compiling, or behind on its
            // watches) cannot vouch for this version.
            if peer.truncated || peer.config_version != self.config_version {
                continue;
            }
            match peer.lagging.get(&key) {
                Some(lag) => {
                    p.applied += lag.applied;
                    p.rejections.extend(lag.rejections.iter().cloned());
                }
                None => p.applied += peer.connected,
            }
        }
        p
    }
}

impl Tracker {
    /// This replica's [`AckReport`] for the config it serves.
    pub fn report<'a>(
        &self,
        config_version: &str,
        resources: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> AckReport {
        self.with(|(_, streams)| {
            let mut report = AckReport {
                config_version: config_version.to_string(),
                connected: streams.len(),
                ..AckReport::default()
            };
            for (type_url, name, version) in resources {
                let lag = holding(streams, type_url, name, version);
                if lag.applied == streams.len() && lag.rejections.is_empty() {
                    continue;
                }
                if report.lagging.len() >= MAX_LAGGING {
                    report.lagging.clear();
                    report.truncated = true;
                    break;
                }
                report.lagging.insert(lag_key(type_url, name), lag);
            }
            report
        })
    }

    /// Changes whenever what the dataplanes hold may have.
    pub fn epoch(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// [`Tracker::with`] for a change.
    fn change<R>(&self, f: impl FnOnce(&mut (u64, BTreeMap<u64, Dataplane>)) -> R) -> R {
        let r = self.with(f);
        self.changes.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn with<R>(&self, f: impl FnOnce(&mut (u64, BTreeMap<u64, Dataplane>)) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn connect(&self) -> u64 {
        self.change(|(next, streams)| {
            *next += 1;
            let connected_at_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            streams.insert(
                *next,
                Dataplane {
                    connected_at_unix,
                    ..Dataplane::default()
                },
            );
            *next
        })
    }

    pub fn disconnect(&self, stream: u64) {
        self.change(|(_, streams)| streams.remove(&stream));
    }

    pub fn identify(&self, stream: u64, node_id: &str) {
        self.change(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                d.node_id = node_id.to_string();
            }
        });
    }

    /// Records that `stream` holds `version` of a resource.
    pub fn ack(&self, stream: u64, type_url: &str, name: &str, version: &str) {
        self.change(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                let key = (type_url.to_string(), name.to_string());
                d.nacked.remove(&key);
                d.acked.insert(key, version.to_string());
            }
        });
    }

    pub fn removed(&self, stream: u64, type_url: &str, name: &str) {
        self.change(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                let key = (type_url.to_string(), name.to_string());
                d.acked.remove(&key);
                d.nacked.remove(&key);
            }
        });
    }

    pub fn nack(&self, stream: u64, type_url: &str, name: &str, version: &str, message: &str) {
        self.change(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                d.nacked.insert(
                    (type_url.to_string(), name.to_string()),
                    (version.to_string(), message.to_string()),
                );
            }
        });
    }

    pub fn dataplanes(&self) -> Vec<DataplaneInfo> {
        self.with(|(_, streams)| {
            streams
                .values()
                .map(|d| DataplaneInfo {
                    id: d.node_id.clone(),
                    connected_at_unix: d.connected_at_unix,
                })
                .collect()
        })
    }

    pub fn programmed(&self, type_url: &str, name: &str, version: &str) -> Programmed {
        self.with(|(_, streams)| {
            let Lag {
                applied,
                rejections,
            } = holding(streams, type_url, name, version);
            Programmed {
                connected: streams.len(),
                applied,
                rejections,
            }
        })
    }
}

/// How many of `streams` hold `version` of a resource, and the NACKs of that version.
fn holding(streams: &BTreeMap<u64, Dataplane>, type_url: &str, name: &str, version: &str) -> Lag {
    let key = (type_url.to_string(), name.to_string());
    let mut lag = Lag::default();
    for d in streams.values() {
        if d.acked.get(&key).is_some_and(|v| v == version) {
            lag.applied += 1;
        }
        if let Some((v, message)) = d.nacked.get(&key)
            && v == version
        {
            lag.rejections
                .push(format!("dataplane {}: {message}", d.node_id));
        }
    }
    lag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_counts_every_replicas_dataplanes() {
        // Replica B: two dataplanes; one holds r1 v1, the other NACKed it. r2 is fine.
        let b = Tracker::default();
        let (d1, d2) = (b.connect(), b.connect());
        b.identify(d2, "dp-b2");
        for d in [d1, d2] {
            b.ack(d, "t", "r2", "v9");
        }
        b.ack(d1, "t", "r1", "v1");
        b.nack(d2, "t", "r1", "v1", "bad key");
        let resources = [("t", "r1", "v1"), ("t", "r2", "v9")];
        let report = b.report("cfg", resources.into_iter());
        assert_eq!(report.connected, 2);
        assert_eq!(
            report.lagging,
            BTreeMap::from([(
                "t r1".to_string(),
                Lag {
                    applied: 1,
                    rejections: vec!["dataplane dp-b2: bad key".into()]
                }
            )])
        );
        // It travels as JSON.
        let report: AckReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();

        // The leader: one dataplane of its own, holding both.
        let a = Tracker::default();
        let d = a.connect();
        a.ack(d, "t", "r1", "v1");
        a.ack(d, "t", "r2", "v9");
        let view = ClusterAcks {
            own: &a,
            peers: vec![&report],
            config_version: "cfg",
        };
        let p = view.programmed("t", "r2", "v9");
        assert_eq!((p.applied, p.connected), (3, 3));
        let p = view.programmed("t", "r1", "v1");
        assert_eq!((p.applied, p.connected), (2, 3));
        assert_eq!(p.rejections, ["dataplane dp-b2: bad key"]);

        // A replica on another config counts as connected, not applied.
        let behind = ClusterAcks {
            own: &a,
            peers: vec![&report],
            config_version: "newer",
        };
        let p = behind.programmed("t", "r2", "v9");
        assert_eq!((p.applied, p.connected), (1, 3));

        // Too much lag to list: truncated, and nothing counted there.
        let many: Vec<(String, String)> = (0..MAX_LAGGING + 1)
            .map(|i| ("t".to_string(), format!("x{i}")))
            .collect();
        let r = b.report(
            "cfg",
            many.iter().map(|(t, n)| (t.as_str(), n.as_str(), "v")),
        );
        assert!(r.truncated && r.lagging.is_empty());
    }
}
