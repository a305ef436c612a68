//! The live request log: the audit records every dataplane sends with its usage, merged,
//! the latest kept in a bounded ring and passed on to whoever follows `/logs`.
//!
//! A record is kept once: a batch sent again after a reconnect brings records already
//! kept, which are known by their `request_id`. This is a view for operators, not the
//! record of audit: that is each dataplane's standard output.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

/// Records kept by default.
pub const DEFAULT_KEPT: usize = 10_000;

/// One record: its text as the dataplane wrote it, and its members for filtering.
#[derive(Debug)]
pub struct Entry {
    pub line: String,
    value: Value,
}

impl Entry {
    pub fn value(&self) -> &Value {
        &self.value
    }
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    ids: HashSet<String>,
}

/// The live log. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Live {
    kept: usize,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Entry>>,
}

impl Live {
    pub fn new(kept: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            kept: kept.max(1),
            ring: Mutex::new(Ring::default()),
            tx,
        }
    }

    /// Adds the records of one usage batch; what is not a JSON object with a
    /// `request_id`, or is kept already, is skipped.
    pub fn add(&self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let mut ring = crate::lock(&self.ring);
        for line in lines {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(id) = value["request_id"].as_str().map(str::to_string) else {
                continue;
            };
            if !ring.ids.insert(id) {
                continue;
            }
            if ring.entries.len() == self.kept
                && let Some(old) = ring.entries.pop_front()
                && let Some(id) = old.value["request_id"].as_str()
            {
                ring.ids.remove(id);
            }
            let entry = Arc::new(Entry {
                line: line.clone(),
                value,
            });
            ring.entries.push_back(entry.clone());
            // Nobody following is not an error.
            let _ = self.tx.send(entry);
        }
    }

    /// The latest `limit` records that `filter` passes, oldest first.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<Arc<Entry>> {
        let ring = crate::lock(&self.ring);
        let mut out: Vec<Arc<Entry>> = ring
            .entries
            .iter()
            .rev()
            .filter(|e| filter.passes(&e.value))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Records as they are added from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.tx.subscribe()
    }
}

/// Which records a reader wants: every member given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The key's name, or `namespace/name`.
    pub key: Option<String>,
    pub namespace: Option<String>,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub user: Option<String>,
    /// The model asked for or the model that served.
    pub model: Option<String>,
    pub route: Option<String>,
    pub provider: Option<String>,
    pub session: Option<String>,
    /// A status (`429`) or a class (`5xx`).
    pub status: Option<String>,
    /// `llm` or `mcp_tool_call`.
    pub kind: Option<String>,
}

impl Filter {
    /// The filter of a query string (`key=demo&status=5xx`); an unknown member is an
    /// error, so that a mistyped filter does not pass everything.
    pub fn parse(query: &str) -> Result<(Self, Options), String> {
        let mut f = Self::default();
        let mut o = Options::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).ok_or_else(|| format!("{name}: not percent-encoded text"))?;
            let slot = match name {
                "key" => &mut f.key,
                "namespace" => &mut f.namespace,
                "team" => &mut f.team,
                "customer" => &mut f.customer,
                "user" => &mut f.user,
                "model" => &mut f.model,
                "route" => &mut f.route,
                "provider" => &mut f.provider,
                "session" => &mut f.session,
                "status" => &mut f.status,
                "kind" => &mut f.kind,
                "limit" => {
                    o.limit = value
                        .parse()
                        .map_err(|_| format!("limit: a number of records, not {value:?}"))?;
                    continue;
                }
                "follow" => {
                    o.follow = matches!(value.as_str(), "1" | "true" | "");
                    continue;
                }
                other => return Err(format!("unknown filter {other:?}")),
            };
            *slot = Some(value).filter(|v| !v.is_empty());
        }
        Ok((f, o))
    }

    pub fn passes(&self, v: &Value) -> bool {
        let is = |member: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| v[member].as_str() == Some(w))
        };
        let key = self.key.as_deref().is_none_or(|w| match w.split_once('/') {
            Some((ns, k)) => v["namespace"] == ns && v["key"] == k,
            None => v["key"] == w,
        });
        let model = self
            .model
            .as_deref()
            .is_none_or(|w| v["requested_model"] == w || v["served_model"] == w);
        let status = self.status.as_deref().is_none_or(|w| {
            let got = v["status"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default();
            match w.strip_suffix("xx") {
                Some(class) => got.starts_with(class) && got.len() == 3,
                None => got == w,
            }
        });
        key && model
            && status
            && is("namespace", &self.namespace)
            && is("team", &self.team)
            && is("customer", &self.customer)
            && is("user", &self.user)
            && is("route", &self.route)
            && is("provider", &self.provider)
            && is("session", &self.session)
            && is("kind", &self.kind)
    }
}

/// How many, and whether to keep following.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub limit: usize,
    pub follow: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limit: 100,
            follow: false,
        }
    }
}

/// Percent-decoding of a query value (`+` is a space, as forms send it).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, key: &str, status: u16, model: &str) -> String {
        serde_json::json!({"kind": "llm", "request_id": id, "namespace": "default", "key": key,
            "team": "t", "status": status, "requested_model": model, "served_model": "m-served"})
        .to_string()
    }

    #[test]
    fn records_are_kept_once_and_the_oldest_go_first() {
        let live = Live::new(3);
        let mut follower = live.follow();
        live.add(&[record("a", "k", 200, "x"), record("b", "k", 200, "x")]);
        // A batch sent again after a reconnect.
        live.add(&[
            record("b", "k", 200, "x"),
            record("c", "k", 200, "x"),
            "not json".into(),
        ]);
        live.add(&[record("d", "k", 200, "x")]);
        let ids: Vec<String> = live
            .query(&Filter::default(), 10)
            .iter()
            .map(|e| e.value["request_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["b", "c", "d"]);
        assert_eq!(
            live.query(&Filter::default(), 1)[0].value["request_id"],
            "d"
        );
        let mut followed = vec![];
        while let Ok(e) = follower.try_recv() {
            followed.push(e.value["request_id"].as_str().unwrap().to_string());
        }
        assert_eq!(followed, ["a", "b", "c", "d"]);
        // "a" went out of the ring: it would be kept again if it came back.
        live.add(&[record("a", "k", 200, "x")]);
        assert_eq!(live.query(&Filter::default(), 10).len(), 3);
    }

    #[test]
    fn filters_match_every_member_given() {
        let live = Live::new(10);
        live.add(&[
            record("1", "alpha", 200, "gpt-4o"),
            record("2", "beta", 503, "gpt-4o"),
            record("3", "alpha", 429, "claude"),
        ]);
        let ids = |q: &str| -> Vec<String> {
            let (f, o) = Filter::parse(q).unwrap();
            live.query(&f, o.limit)
                .iter()
                .map(|e| e.value["request_id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids("key=alpha"), ["1", "3"]);
        assert_eq!(ids("key=default%2Falpha&status=4xx"), ["3"]);
        assert_eq!(ids("status=5xx"), ["2"]);
        assert_eq!(ids("status=200"), ["1"]);
        assert_eq!(ids("model=m-served&limit=2"), ["2", "3"]);
        assert_eq!(ids("model=claude"), ["3"]);
        assert_eq!(ids("team=t&key=beta"), ["2"]);
        assert_eq!(ids("team=other"), Vec::<String>::new());
        assert!(Filter::parse("kee=alpha").is_err());
        assert!(Filter::parse("limit=many").is_err());
        assert!(Filter::parse("follow=1").unwrap().1.follow);
        assert_eq!(decode("a+b%2Fc"), Some("a b/c".into()));
        assert_eq!(decode("%zz"), None);
    }
}
