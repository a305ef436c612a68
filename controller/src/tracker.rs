//! What each connected dataplane has applied, from its ACKs and NACKs: the ground truth
//! for the `Programmed` condition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

impl Tracker {
    fn with<R>(&self, f: impl FnOnce(&mut (u64, BTreeMap<u64, Dataplane>)) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn connect(&self) -> u64 {
        self.with(|(next, streams)| {
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
        self.with(|(_, streams)| streams.remove(&stream));
    }

    pub fn identify(&self, stream: u64, node_id: &str) {
        self.with(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                d.node_id = node_id.to_string();
            }
        });
    }

    /// Records that `stream` holds `version` of a resource.
    pub fn ack(&self, stream: u64, type_url: &str, name: &str, version: &str) {
        self.with(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                let key = (type_url.to_string(), name.to_string());
                d.nacked.remove(&key);
                d.acked.insert(key, version.to_string());
            }
        });
    }

    pub fn removed(&self, stream: u64, type_url: &str, name: &str) {
        self.with(|(_, streams)| {
            if let Some(d) = streams.get_mut(&stream) {
                let key = (type_url.to_string(), name.to_string());
                d.acked.remove(&key);
                d.nacked.remove(&key);
            }
        });
    }

    pub fn nack(&self, stream: u64, type_url: &str, name: &str, version: &str, message: &str) {
        self.with(|(_, streams)| {
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
            let key = (type_url.to_string(), name.to_string());
            let mut p = Programmed {
                connected: streams.len(),
                applied: 0,
                rejections: vec![],
            };
            for d in streams.values() {
                if d.acked.get(&key).is_some_and(|v| v == version) {
                    p.applied += 1;
                }
                if let Some((v, message)) = d.nacked.get(&key)
                    && v == version
                {
                    p.rejections
                        .push(format!("dataplane {}: {message}", d.node_id));
                }
            }
            p
        })
    }
}
