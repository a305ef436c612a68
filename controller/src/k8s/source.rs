//! Kubernetes mode's source: one watch per kind (and per namespace, when the controller is
//! limited to some) over the six Tollgate kinds and Secrets, kept in an index that hands
//! the compiler the same [`Inputs`] a manifests directory does.
//!
//! Objects are stored reduced to what the compiler reads (type, name, namespace, labels,
//! spec; a Secret's data), so a status write, which changes only `status` and
//! `resourceVersion`, does not cause a recompile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tollgate_crds::Kind;

use crate::compile::{Change, GroupInput};
use crate::objects::SourceObject;

/// Origin of every object read from the API (shown where local mode shows a file).
pub const ORIGIN: &str = "cluster";

/// What a watch is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watched {
    Tollgate(Kind),
    Secret,
}

impl Watched {
    pub fn all() -> impl Iterator<Item = Watched> {
        Kind::ALL
            .into_iter()
            .map(Watched::Tollgate)
            .chain([Watched::Secret])
    }

    pub fn api_resource(self) -> ApiResource {
        use tollgate_crds::{budget, mcp, provider, route, virtual_key};
        match self {
            Watched::Tollgate(Kind::LlmProvider) => {
                ApiResource::erase::<provider::LlmProvider>(&())
            }
            Watched::Tollgate(Kind::LlmRoute) => ApiResource::erase::<route::LlmRoute>(&()),
            Watched::Tollgate(Kind::VirtualKey) => {
                ApiResource::erase::<virtual_key::VirtualKey>(&())
            }
            Watched::Tollgate(Kind::Budget) => ApiResource::erase::<budget::Budget>(&()),
            Watched::Tollgate(Kind::McpServer) => ApiResource::erase::<mcp::McpServer>(&()),
            Watched::Tollgate(Kind::McpToolPolicy) => ApiResource::erase::<mcp::McpToolPolicy>(&()),
            Watched::Secret => ApiResource::erase::<Secret>(&()),
        }
    }
}

/// One object as the index keeps it. What the compiler reads is kept as compact JSON text,
/// to tell a change from a status write: as a tree of values it took about three times
/// the memory (some 600 MB at 200,000 objects), and the compiler keeps what it parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What the compiler reads, as JSON text.
    pub text: Arc<str>,
    pub uid: String,
    pub generation: Option<i64>,
    /// The object's `status` as last seen (Tollgate kinds only).
    pub status: Value,
    /// A VirtualKey with `generateSecret: true`: the Secret it names, and the data key.
    pub generates: Option<(String, String)>,
}

type Key = (Watched, String, String);

/// Which objects a watch covers: a kind, in one namespace or in all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub watched: Watched,
    pub namespace: Option<String>,
}

impl Scope {
    fn covers(&self, key: &Key) -> bool {
        key.0 == self.watched && self.namespace.as_ref().is_none_or(|ns| ns == &key.1)
    }
}

/// Every watched object, with the state of each watch's initial list.
#[derive(Debug, Default)]
pub struct Index {
    objects: BTreeMap<Key, Entry>,
    /// The objects a (re)list in progress has returned so far. Each is applied as it
    /// arrives (so the compiler works while the rest is still being read); those the
    /// list did not return are removed when it completes.
    listing: HashMap<Scope, BTreeSet<Key>>,
    synced: HashSet<Scope>,
    scopes: usize,
    /// Objects added, changed or removed since the compiler last took a change.
    dirty: BTreeSet<Key>,
    /// What the compiler is to read of those added or changed.
    pending: HashMap<Key, Arc<Value>>,
}

impl Index {
    pub fn new(scopes: usize) -> Self {
        Self {
            scopes,
            ..Self::default()
        }
    }

    /// Whether every watch has completed its first list: before that, a compile would see
    /// a partial config and withdraw what is merely not read yet.
    pub fn synced(&self) -> bool {
        self.synced.len() >= self.scopes
    }

    /// Applies one watch event; returns whether the compiler's view changed.
    pub fn apply(&mut self, scope: &Scope, event: Event<DynamicObject>) -> bool {
        let watched = scope.watched;
        match event {
            Event::Init => {
                self.listing.insert(scope.clone(), BTreeSet::new());
                false
            }
            Event::InitApply(o) => {
                let Some((key, entry, value)) = reduce(watched, o) else {
                    return false;
                };
                self.listing
                    .entry(scope.clone())
                    .or_default()
                    .insert(key.clone());
                self.put(key, entry, value)
            }
            Event::InitDone => {
                let listed = self.listing.remove(scope).unwrap_or_default();
                let gone: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| scope.covers(k) && !listed.contains(*k))
                    .cloned()
                    .collect();
                let changed = !gone.is_empty();
                for k in gone {
                    self.objects.remove(&k);
                    self.pending.remove(&k);
                    self.dirty.insert(k);
                }
                let first = self.synced.insert(scope.clone());
                changed || first
            }
            Event::Apply(o) => {
                let Some((key, entry, value)) = reduce(watched, o) else {
                    return false;
                };
                self.put(key, entry, value)
            }
            Event::Delete(o) => {
                let Some((key, _, _)) = reduce(watched, o) else {
                    return false;
                };
                let removed = self.objects.remove(&key).is_some();
                self.pending.remove(&key);
                if removed {
                    self.dirty.insert(key);
                }
                removed
            }
        }
    }

    /// Keeps `entry`; returns whether what the compiler reads of it changed (a status
    /// write alone does not).
    fn put(&mut self, key: Key, mut entry: Entry, value: Value) -> bool {
        let changed = match self.objects.get(&key) {
            Some(old) if old.text == entry.text => {
                entry.text = old.text.clone();
                false
            }
            _ => true,
        };
        if changed {
            self.dirty.insert(key.clone());
            self.pending.insert(key.clone(), Arc::new(value));
        }
        self.objects.insert(key, entry);
        changed
    }

    /// What changed since the last call: one group per object, named by its kind,
    /// namespace and name.
    pub fn take_change(&mut self) -> Change {
        let mut change = Change::default();
        for key in std::mem::take(&mut self.dirty) {
            let group = match key.0 {
                Watched::Tollgate(kind) => format!("{kind}/{}/{}", key.1, key.2),
                Watched::Secret => format!("Secret/{}/{}", key.1, key.2),
            };
            let input = self.pending.remove(&key).map(|value| GroupInput {
                objects: vec![SourceObject {
                    origin: ORIGIN.to_string(),
                    value,
                }],
                errors: vec![],
            });
            change.groups.push((Arc::from(group), input));
        }
        change
    }

    pub fn get(&self, watched: Watched, namespace: &str, name: &str) -> Option<&Entry> {
        self.objects
            .get(&(watched, namespace.to_string(), name.to_string()))
    }

    /// Every object of one kind: (namespace, name, entry).
    pub fn of(&self, watched: Watched) -> impl Iterator<Item = (&str, &str, &Entry)> {
        self.objects
            .iter()
            .filter(move |(k, _)| k.0 == watched)
            .map(|(k, e)| (k.1.as_str(), k.2.as_str(), e))
    }
}

/// The index shared by the watches, the compile loop and the status writer.
#[derive(Clone, Debug)]
pub struct SharedIndex {
    inner: Arc<Mutex<Index>>,
    changed: watch::Sender<u64>,
}

impl SharedIndex {
    pub fn new(scopes: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Index::new(scopes))),
            changed: watch::Sender::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Index> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Changes whenever the compiler's view does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn apply(&self, scope: &Scope, event: Event<DynamicObject>) {
        let changed = self.lock().apply(scope, event);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Reduces an object from the API to what the compiler reads (also returned as a value);
/// `None` for an object without a name.
fn reduce(watched: Watched, o: DynamicObject) -> Option<(Key, Entry, Value)> {
    let name = o.metadata.name.clone()?;
    let namespace = o.metadata.namespace.clone().unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    if let Some(labels) = &o.metadata.labels {
        metadata.insert("labels".into(), json!(labels));
    }
    let data = o.data;
    let value = match watched {
        Watched::Secret => {
            let mut v = Map::new();
            v.insert("apiVersion".into(), json!("v1"));
            v.insert("kind".into(), json!("Secret"));
            v.insert("metadata".into(), Value::Object(metadata));
            for field in ["data", "type"] {
                if let Some(x) = data.get(field) {
                    v.insert(field.into(), x.clone());
                }
            }
            Value::Object(v)
        }
        Watched::Tollgate(kind) => {
            json!({
                "apiVersion": tollgate_crds::API_VERSION,
                "kind": kind.as_str(),
                "metadata": metadata,
                "spec": data.get("spec").cloned().unwrap_or(Value::Null),
            })
        }
    };
    let status = data.get("status").cloned().unwrap_or(Value::Null);
    let spec = &value["spec"];
    let generates = (watched == Watched::Tollgate(Kind::VirtualKey)
        && spec["generateSecret"] == Value::Bool(true))
    .then(|| {
        let r = &spec["secretRef"];
        (
            r["name"].as_str().unwrap_or_default().to_string(),
            r["key"]
                .as_str()
                .unwrap_or(crate::compile::VIRTUAL_KEY_SECRET_KEY)
                .to_string(),
        )
    });
    Some((
        (watched, namespace, name),
        Entry {
            text: Arc::from(value.to_string()),
            uid: o.metadata.uid.unwrap_or_default(),
            generation: o.metadata.generation,
            status,
            generates,
        },
        value,
    ))
}

/// The watches to run: every kind, in all namespaces or in each of `namespaces`.
pub fn scopes(namespaces: &[String]) -> Vec<Scope> {
    let mut out = Vec::new();
    for watched in Watched::all() {
        if namespaces.is_empty() {
            out.push(Scope {
                watched,
                namespace: None,
            });
        } else {
            for ns in namespaces {
                out.push(Scope {
                    watched,
                    namespace: Some(ns.clone()),
                });
            }
        }
    }
    out
}

/// Runs one watch forever, feeding `index`. The watcher relists after an error, with
/// backoff; the index swaps a relist in whole.
pub async fn watch_scope(client: kube::Client, scope: Scope, index: SharedIndex) {
    let ar = scope.watched.api_resource();
    let api: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    // Only Secrets marked as credentials are read: the others are none of Tollgate's
    // business, and their data never reaches this process.
    let config = match scope.watched {
        Watched::Secret => {
            watcher::Config::default().labels(&format!("{}=true", crate::compile::CREDENTIAL_LABEL))
        }
        _ => watcher::Config::default(),
    };
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(e) => index.apply(&scope, e),
            Err(e) => tracing::warn!(
                kind = %ar.kind,
                namespace = scope.namespace.as_deref().unwrap_or("*"),
                error = %e,
                "watch failed; retrying"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, spec: Value, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "a", "uid": format!("uid-{name}"),
                         "generation": 3, "resourceVersion": rv},
            "spec": spec,
            "status": {"observedGeneration": 2},
        }))
        .unwrap()
    }

    /// What the compiler is given next: each group's name and the object it reads, if any.
    fn changes(index: &mut Index) -> Vec<(String, Option<Value>)> {
        index
            .take_change()
            .groups
            .into_iter()
            .map(|(group, input)| {
                (
                    group.to_string(),
                    input.map(|i| (*i.objects[0].value).clone()),
                )
            })
            .collect()
    }

    #[test]
    fn a_status_write_is_not_a_change_and_a_relist_replaces_its_scope() {
        let routes = Scope {
            watched: Watched::Tollgate(Kind::LlmRoute),
            namespace: None,
        };
        let secrets = Scope {
            watched: Watched::Secret,
            namespace: None,
        };
        let mut index = Index::new(2);
        let spec = json!({"match": {"models": ["m"]}});
        assert!(!index.apply(&routes, Event::Init));
        assert!(index.apply(&routes, Event::InitApply(object("r1", spec.clone(), "1"))));
        assert!(index.apply(&routes, Event::InitDone), "first list");
        assert!(!index.synced(), "the Secrets are not listed yet");
        index.apply(&secrets, Event::Init);
        assert!(
            index.apply(&secrets, Event::InitDone),
            "first list, even empty"
        );
        assert!(index.synced());

        let entry = index
            .get(Watched::Tollgate(Kind::LlmRoute), "a", "r1")
            .unwrap();
        assert_eq!(entry.generation, Some(3));
        assert_eq!(entry.uid, "uid-r1");
        assert_eq!(entry.status, json!({"observedGeneration": 2}));
        let r1 = json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
                        "metadata": {"name": "r1", "namespace": "a"}, "spec": spec});
        assert_eq!(*entry.text, r1.to_string());
        assert_eq!(changes(&mut index), [("LLMRoute/a/r1".into(), Some(r1))]);
        assert!(changes(&mut index).is_empty(), "taken once");

        // Only the status and resourceVersion moved: nothing to recompile.
        assert!(!index.apply(&routes, Event::Apply(object("r1", spec.clone(), "2"))));
        assert!(index.apply(&routes, Event::Apply(object("r1", json!({"x": 1}), "3"))));

        // A relist that lost r1 and found r2 replaces the routes, not the Secrets.
        changes(&mut index);
        index.apply(
            &secrets,
            Event::Apply(
                serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "a"},
                                              "data": {"key": "eA=="}, "type": "Opaque"}))
                .unwrap(),
            ),
        );
        index.apply(&routes, Event::Init);
        index.apply(&routes, Event::InitApply(object("r2", spec.clone(), "4")));
        assert!(index.apply(&routes, Event::InitDone));
        let mut changed = changes(&mut index);
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            changed,
            [
                ("LLMRoute/a/r1".into(), None),
                (
                    "LLMRoute/a/r2".into(),
                    Some(
                        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
                                "metadata": {"name": "r2", "namespace": "a"}, "spec": spec})
                    )
                ),
                (
                    "Secret/a/s".into(),
                    Some(json!({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "s", "namespace": "a"},
                                "data": {"key": "eA=="}, "type": "Opaque"}))
                ),
            ]
        );
        // The same relist again: no change.
        index.apply(&routes, Event::Init);
        index.apply(&routes, Event::InitApply(object("r2", spec, "5")));
        assert!(!index.apply(&routes, Event::InitDone));
        assert!(index.apply(&routes, Event::Delete(object("r2", json!({}), "6"))));
    }

    #[test]
    fn scopes_cover_every_kind_in_each_namespace() {
        assert_eq!(scopes(&[]).len(), 7);
        let two = scopes(&["a".into(), "b".into()]);
        assert_eq!(two.len(), 14);
        let key = (Watched::Secret, "b".to_string(), "x".to_string());
        assert_eq!(two.iter().filter(|s| s.covers(&key)).count(), 1);
    }
}
