//! The compiler's memory between compiles. A source hands over only the groups of objects
//! that changed (a file, or one object read from the API); the compiler re-validates those
//! objects, works out which others depend on them (by name, by label selector, by model
//! pattern, by key value), and rebuilds the reports and resources of exactly that set.
//! Everything else, and the maps that hold it, is shared with the previous result, so a
//! change to one key of 100,000 costs about as much as a config of one key.
//!
//! The rules themselves (what makes an object valid, resolved, served) live in the parent
//! module and are the same for a first compile and for every change after it: the first
//! compile is a change that brings every group.

use std::collections::{BTreeSet, hash_map};

use super::*;

/// Namespace and name.
type NsName = (String, String);
/// Where an object sits in the source: its group and its position in the group.
type Slot = (Arc<str>, usize);
/// An object some other object refers to by name: a Tollgate kind, or a Secret (`None`).
type Target = (Option<Kind>, String, String);
/// How reports are ordered: kind, namespace, name, origin.
pub type ReportKey = (String, String, String, String);

/// The objects of one group, as a source read them.
#[derive(Clone, Debug, Default)]
pub struct GroupInput {
    pub objects: Vec<SourceObject>,
    /// What could not be read at all (a file that is not YAML, say).
    pub errors: Vec<SourceError>,
}

/// What changed in a source: each group given replaces what the compiler held for it;
/// `None` removes it. Groups are ordered by name, and objects within a group by
/// position: where two objects claim the same kind, namespace and name, the first valid
/// one in that order is served.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub groups: Vec<(Arc<str>, Option<GroupInput>)>,
}

impl Change {
    /// Everything in `inputs`, as one group.
    pub fn whole(inputs: &Inputs) -> Self {
        Self {
            groups: vec![(
                Arc::from(""),
                Some(GroupInput {
                    objects: inputs.objects.clone(),
                    errors: inputs.errors.clone(),
                }),
            )],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// What the objects at each slot claim for one kind, namespace and name, in slot order:
/// almost always one.
#[derive(Debug)]
struct Slots<T>(Vec<(Slot, T)>);

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Slots<T> {
    fn insert(&mut self, slot: Slot, value: T) {
        match self.0.binary_search_by(|(s, _)| s.cmp(&slot)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (slot, value)),
        }
    }

    fn remove(&mut self, slot: &Slot) {
        if let Ok(i) = self.0.binary_search_by(|(s, _)| s.cmp(slot)) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &(Slot, T)> {
        self.0.iter()
    }
}

/// One object as read, at one slot.
#[derive(Debug)]
struct Claim {
    origin: String,
    prepared: Prepared,
}

/// The object served for a kind, namespace and name: the first valid claim.
#[derive(Clone, Debug)]
struct Current {
    slot: Slot,
    origin: String,
    labels: Arc<BTreeMap<String, String>>,
    spec: Spec,
}

impl Current {
    fn same(&self, other: &Current) -> bool {
        self.slot == other.slot
            && self.origin == other.origin
            && Arc::ptr_eq(&self.labels, &other.labels)
            && self.spec.same(&other.spec)
    }

    fn parsed<T>(&self, key: &ObjectKey, spec: &Arc<T>) -> Parsed<T> {
        Parsed {
            namespace: key.1.clone(),
            name: key.2.clone(),
            labels: self.labels.clone(),
            spec: spec.clone(),
        }
    }
}

impl Spec {
    fn route(&self) -> Option<&Arc<route::LlmRouteSpec>> {
        match self {
            Spec::Route(r) => Some(r),
            _ => None,
        }
    }

    fn key(&self) -> Option<&Arc<virtual_key::VirtualKeySpec>> {
        match self {
            Spec::Key(k) => Some(k),
            _ => None,
        }
    }

    fn same(&self, other: &Spec) -> bool {
        match (self, other) {
            (Spec::Provider(a), Spec::Provider(b)) => Arc::ptr_eq(a, b),
            (Spec::Route(a), Spec::Route(b)) => Arc::ptr_eq(a, b),
            (Spec::Key(a), Spec::Key(b)) => Arc::ptr_eq(a, b),
            (Spec::Budget(a), Spec::Budget(b)) => Arc::ptr_eq(a, b),
            (Spec::McpServer(a), Spec::McpServer(b)) => Arc::ptr_eq(a, b),
            (Spec::McpPolicy(a), Spec::McpPolicy(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The objects this one names: what it must be rebuilt after.
    fn targets(&self, namespace: &str) -> Vec<Target> {
        let at = |kind: Option<Kind>, name: &str| (kind, namespace.to_string(), name.to_string());
        match self {
            Spec::Provider(p) => p
                .credentials
                .iter()
                .map(|c| at(None, &c.secret_ref.name))
                .collect(),
            Spec::Route(r) => r
                .targets
                .iter()
                .map(|t| &t.provider)
                .chain(r.fallbacks.iter().map(|f| &f.provider))
                .map(|p| at(Some(Kind::LlmProvider), p))
                .collect(),
            Spec::Key(k) => std::iter::once(at(None, &k.secret_ref.name))
                .chain(
                    k.budget_refs
                        .iter()
                        .map(|b| at(Some(Kind::Budget), &b.name)),
                )
                .chain(
                    k.mcp_tool_policy_ref
                        .iter()
                        .map(|p| at(Some(Kind::McpToolPolicy), &p.name)),
                )
                .collect(),
            Spec::Budget(b) => b
                .parent_ref
                .iter()
                .map(|p| at(Some(Kind::Budget), &p.name))
                .collect(),
            Spec::McpServer(s) => {
                let mut out = Vec::new();
                if let Some(auth) = &s.auth {
                    if let Some(h) = &auth.header {
                        out.push(at(None, &h.secret_ref.name));
                    }
                    if let Some(o) = &auth.oauth {
                        out.push(at(None, &o.client_secret_ref.name));
                    }
                }
                out
            }
            Spec::McpPolicy(p) => p
                .rules
                .iter()
                .map(|r| at(Some(Kind::McpServer), &r.server))
                .collect(),
        }
    }
}

/// What one slot of a group holds.
#[derive(Debug)]
enum Held {
    Object(ObjectKey),
    Secret(NsName),
    Nothing,
}

/// A key value as read from its Secret: its length and SHA-256, or why it cannot be read.
type KeyValue = Result<(usize, [u8; 32]), String>;

/// The result of compiling the served object of a kind, namespace and name.
enum Outcome {
    Served {
        body: Option<Box<Body>>,
        missing: Vec<String>,
        extra: Vec<Condition>,
    },
    Refused(Reason, String),
}

/// What an object read from a source is.
enum Class {
    Secret,
    Object(Kind),
    /// In a Tollgate API group, of a kind that does not exist: why.
    Unknown(String),
    /// Anything else (a ConfigMap in the same directory, say): ignored.
    Other,
}

fn classify(v: &Value) -> Class {
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind_name = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version == "v1" && kind_name == "Secret" {
        return Class::Secret;
    }
    match Kind::from_kind(kind_name).filter(|_| api_version == API_VERSION) {
        Some(kind) => Class::Object(kind),
        None if api_version.starts_with("tollgate.dev/") => {
            Class::Unknown(format!("unknown kind {kind_name:?} in {api_version}"))
        }
        None => Class::Other,
    }
}

/// Namespace and name of an object; `default_namespace` when it names none.
fn names(v: &Value, default_namespace: &str) -> NsName {
    let meta = v.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    (
        field("namespace").unwrap_or(default_namespace).to_string(),
        field("name").unwrap_or("").to_string(),
    )
}

/// An object validated ahead of its turn.
#[derive(Default)]
enum Ready {
    #[default]
    Nothing,
    Object(Prepared),
    Secret(SecretRead),
}

/// Below this many objects a change is read on the compiling thread.
const PARALLEL_FROM: usize = 2_000;

/// Validates and parses the objects of a large change (a first compile, a directory
/// rewritten) on every core: each object on its own, before any is compiled. Objects
/// handed again unchanged are validated again this way, which costs nothing next to a
/// change this large. `None` for a small change.
fn read_in_parallel(validator: &Validator, change: &Change) -> Option<Vec<Vec<Ready>>> {
    let objects: Vec<(usize, usize, &Value)> = change
        .groups
        .iter()
        .enumerate()
        .flat_map(|(g, (_, input))| {
            input
                .iter()
                .flat_map(|i| i.objects.iter().enumerate())
                .map(move |(i, o)| (g, i, &*o.value))
        })
        .collect();
    if objects.len() < PARALLEL_FROM {
        return None;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = objects.len().div_ceil(threads);
    let done: Vec<Vec<Ready>> = std::thread::scope(|scope| {
        let workers: Vec<_> = objects
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(_, _, v)| match classify(v) {
                            Class::Secret => Ready::Secret(read_secret(v)),
                            Class::Object(kind) => Ready::Object(prepare(validator, kind, v)),
                            Class::Unknown(_) | Class::Other => Ready::Nothing,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut out: Vec<Vec<Ready>> = change
        .groups
        .iter()
        .map(|(_, input)| {
            let n = input.as_ref().map_or(0, |i| i.objects.len());
            (0..n).map(|_| Ready::Nothing).collect()
        })
        .collect();
    for ((g, i, _), ready) in objects.into_iter().zip(done.into_iter().flatten()) {
        out[g][i] = ready;
    }
    Some(out)
}

fn boxed(body: Body) -> Option<Box<Body>> {
    Some(Box::new(body))
}

/// Objects and Secrets whose claims changed in an update.
#[derive(Default)]
struct Touched {
    objects: HashSet<ObjectKey>,
    secrets: HashSet<NsName>,
}

/// Holds credentials: deliberately not `Debug`.
#[derive(Default)]
pub struct Compiler {
    groups: HashMap<Arc<str>, Vec<Held>>,
    claims: HashMap<ObjectKey, Slots<Claim>>,
    secret_claims: HashMap<NsName, Slots<SecretRead>>,
    /// Errors by group, then 0 for the group's own and 1 + position for an object's.
    errors: BTreeMap<(Arc<str>, usize, usize), SourceError>,
    secrets: Secrets,
    current: HashMap<ObjectKey, Current>,
    /// Names of the served objects of each kind in each namespace.
    members: HashMap<(Kind, String), BTreeSet<String>>,
    /// Who names each object, to rebuild them when it changes.
    referrers: HashMap<Target, HashSet<ObjectKey>>,
    /// Routes by namespace and the [`shape`] of each model pattern; and those without
    /// header matches, which can shadow others.
    patterns: HashMap<NsName, BTreeSet<String>>,
    headerless: HashMap<NsName, BTreeSet<String>>,
    /// Keys limited to certain routes, by namespace: shadowing is not judged there.
    limited: HashMap<String, BTreeSet<String>>,
    key_values: HashMap<NsName, KeyValue>,
    holders: HashMap<[u8; 32], Vec<NsName>>,
    /// Keys that name a Budget or are charged to one, by namespace: what a Budget change
    /// may affect besides the keys its selector matches.
    charged: HashMap<String, BTreeSet<String>>,
    /// The keys each MCPToolPolicy applies to.
    policy_keys: HashMap<NsName, BTreeSet<String>>,
    /// Policies whose own spec changed: their keys are found again.
    rescan: HashSet<NsName>,
    /// Origins of the reports held for each kind, namespace and name.
    reported: HashMap<ObjectKey, Vec<String>>,
    reports: imbl::OrdMap<ReportKey, Arc<ObjectReport>>,
    resources: BTreeMap<&'static str, ResourceMap>,
    /// XOR of a digest per resource and per report: content-defined versions kept up to
    /// date in constant time per change.
    resources_digest: [u8; 8],
    reports_digest: [u8; 8],
}

fn digest8(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn xor(acc: &mut [u8; 8], d: [u8; 8]) {
    for (a, b) in acc.iter_mut().zip(d) {
        *a ^= b;
    }
}

fn resource_digest(type_url: &str, r: &pb::Resource) -> [u8; 8] {
    digest8(&[type_url.as_bytes(), r.name.as_bytes(), r.version.as_bytes()])
}

fn report_digest(r: &ObjectReport) -> [u8; 8] {
    let mut parts: Vec<&[u8]> = vec![
        r.kind.as_bytes(),
        r.namespace.as_bytes(),
        r.name.as_bytes(),
        r.origin.as_bytes(),
    ];
    for c in &r.conditions {
        parts.extend([
            c.type_.as_str().as_bytes(),
            c.status.as_bytes(),
            c.reason.as_str().as_bytes(),
            c.message.as_bytes(),
        ]);
    }
    digest8(&parts)
}

fn type_url_of(kind: Kind) -> &'static str {
    match kind {
        Kind::LlmProvider => pb::type_url::PROVIDER,
        Kind::LlmRoute => pb::type_url::ROUTE,
        Kind::VirtualKey => pb::type_url::VIRTUAL_KEY,
        Kind::Budget => pb::type_url::BUDGET,
        Kind::McpServer => pb::type_url::MCP_SERVER,
        Kind::McpToolPolicy => pb::type_url::MCP_TOOL_POLICY,
    }
}

fn add_to<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<String>>, at: K, name: &str) {
    map.entry(at).or_default().insert(name.to_string());
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<String>>, at: K, name: &str) {
    if let hash_map::Entry::Occupied(mut e) = map.entry(at) {
        e.get_mut().remove(name);
        if e.get().is_empty() {
            e.remove();
        }
    }
}

impl Compiler {
    /// Applies `change` and returns the whole compiled config. Objects without a
    /// namespace go to `default_namespace`.
    pub fn update(
        &mut self,
        validator: &Validator,
        default_namespace: &str,
        change: Change,
    ) -> Compiled {
        let mut touched = Touched::default();
        let mut ready = read_in_parallel(validator, &change);
        for (i, (group, input)) in change.groups.into_iter().enumerate() {
            self.replace_group(
                validator,
                default_namespace,
                group,
                input,
                ready.as_mut().map(|r| std::mem::take(&mut r[i])),
                &mut touched,
            );
        }
        let mut dirty: HashSet<ObjectKey> = HashSet::default();
        for at in touched.secrets {
            self.resolve_secret(&at);
            if let Some(by) = self.referrers.get(&(None, at.0, at.1)) {
                dirty.extend(by.iter().cloned());
            }
        }
        for key in touched.objects {
            self.resolve_object(&key, &mut dirty);
        }
        // Key values next: a key whose value changed changes what every other holder of
        // its old and new value reports.
        let keys: Vec<ObjectKey> = dirty
            .iter()
            .filter(|k| k.0 == Kind::VirtualKey)
            .cloned()
            .collect();
        for key in keys {
            self.read_key_value(&key, &mut dirty);
        }
        for key in &dirty {
            self.rebuild(key);
        }
        self.compiled()
    }

    fn compiled(&self) -> Compiled {
        let mut resources = self.resources.clone();
        for type_url in pb::type_url::ALL {
            resources.entry(type_url).or_default();
        }
        Compiled {
            resources,
            report_map: self.reports.clone(),
            source_errors: self.errors.values().cloned().collect(),
            version: to_hex(&self.resources_digest),
            reports_version: to_hex(&self.reports_digest),
            trace: None,
        }
    }

    fn replace_group(
        &mut self,
        validator: &Validator,
        default_namespace: &str,
        group: Arc<str>,
        input: Option<GroupInput>,
        mut ready: Option<Vec<Ready>>,
        touched: &mut Touched,
    ) {
        // What the group held is dropped; what it holds now is validated afresh (a
        // changed file, or one object read from the API: little to validate again).
        if let Some(held) = self.groups.remove(&group) {
            for (i, h) in held.into_iter().enumerate() {
                let slot = (group.clone(), i);
                match h {
                    Held::Object(key) => {
                        if let hash_map::Entry::Occupied(mut e) = self.claims.entry(key.clone()) {
                            e.get_mut().remove(&slot);
                            if e.get().is_empty() {
                                e.remove();
                            }
                        }
                        touched.objects.insert(key);
                    }
                    Held::Secret(at) => {
                        if let hash_map::Entry::Occupied(mut e) =
                            self.secret_claims.entry(at.clone())
                        {
                            e.get_mut().remove(&slot);
                            if e.get().is_empty() {
                                e.remove();
                            }
                        }
                        touched.secrets.insert(at);
                    }
                    Held::Nothing => {}
                }
            }
            let stale: Vec<_> = self
                .errors
                .range((group.clone(), 0, 0)..=(group.clone(), usize::MAX, usize::MAX))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.errors.remove(&k);
            }
        }
        let Some(input) = input else {
            return;
        };
        for (j, e) in input.errors.into_iter().enumerate() {
            self.errors.insert((group.clone(), 0, j), e);
        }
        let mut held = Vec::with_capacity(input.objects.len());
        for (i, object) in input.objects.into_iter().enumerate() {
            let slot = (group.clone(), i);
            let v = &object.value;
            let mut done = ready
                .as_mut()
                .map(|r| std::mem::replace(&mut r[i], Ready::Nothing))
                .unwrap_or(Ready::Nothing);
            let (namespace, name) = names(v, default_namespace);
            match classify(v) {
                Class::Secret => {
                    let at = (namespace, name);
                    let read = match std::mem::replace(&mut done, Ready::Nothing) {
                        Ready::Secret(read) => read,
                        _ => read_secret(v),
                    };
                    if let SecretRead::Unreadable(message) = &read {
                        self.errors.insert(
                            (group.clone(), i + 1, 0),
                            SourceError {
                                origin: object.origin.clone(),
                                message: format!("Secret {}/{}: {message}", at.0, at.1),
                            },
                        );
                    }
                    self.secret_claims
                        .entry(at.clone())
                        .or_default()
                        .insert(slot, read);
                    touched.secrets.insert(at.clone());
                    held.push(Held::Secret(at));
                }
                Class::Unknown(message) => {
                    self.errors.insert(
                        (group.clone(), i + 1, 0),
                        SourceError {
                            origin: object.origin.clone(),
                            message,
                        },
                    );
                    held.push(Held::Nothing);
                }
                Class::Other => held.push(Held::Nothing),
                Class::Object(kind) => {
                    let key = (kind, namespace, name);
                    let prepared = match done {
                        Ready::Object(prepared) => prepared,
                        _ => prepare(validator, kind, v),
                    };
                    self.claims.entry(key.clone()).or_default().insert(
                        slot,
                        Claim {
                            origin: object.origin,
                            prepared,
                        },
                    );
                    touched.objects.insert(key.clone());
                    held.push(Held::Object(key));
                }
            }
        }
        self.groups.insert(group, held);
    }

    /// A Secret's data is that of its last readable credential copy (a later document
    /// overrides an earlier one, as `kubectl apply` of both would).
    fn resolve_secret(&mut self, at: &NsName) {
        let claims = self.secret_claims.get(at);
        let marked = claims.and_then(|c| {
            c.iter().rev().find_map(|(_, r)| match r {
                SecretRead::Data(d) => Some(d.clone()),
                _ => None,
            })
        });
        let unmarked =
            claims.is_some_and(|c| c.iter().any(|(_, r)| matches!(r, SecretRead::Unmarked)));
        match marked {
            Some(d) => self.secrets.marked.insert(at.clone(), d),
            None => self.secrets.marked.remove(at),
        };
        if unmarked {
            self.secrets.unmarked.insert(at.clone());
        } else {
            self.secrets.unmarked.remove(at);
        }
    }

    /// Finds which claim of `key` is served now; when that changed, updates the indexes
    /// and marks what depends on it.
    fn resolve_object(&mut self, key: &ObjectKey, dirty: &mut HashSet<ObjectKey>) {
        dirty.insert(key.clone());
        let winner = self.claims.get(key).and_then(|cs| {
            cs.iter().find_map(|(slot, c)| match &c.prepared {
                Prepared::Valid(labels, spec) => Some(Current {
                    slot: slot.clone(),
                    origin: c.origin.clone(),
                    labels: labels.clone(),
                    spec: spec.clone(),
                }),
                Prepared::Invalid(_) => None,
            })
        });
        let old = self.current.get(key).cloned();
        if let (Some(a), Some(b)) = (&old, &winner)
            && a.same(b)
        {
            return;
        }
        let (kind, ns, name) = key;
        if let Some(by) = self.referrers.get(&(Some(*kind), ns.clone(), name.clone())) {
            dirty.extend(by.iter().cloned());
        }
        if let Some(o) = &old {
            for t in o.spec.targets(ns) {
                if let hash_map::Entry::Occupied(mut e) = self.referrers.entry(t) {
                    e.get_mut().remove(key);
                    if e.get().is_empty() {
                        e.remove();
                    }
                }
            }
        }
        if let Some(w) = &winner {
            for t in w.spec.targets(ns) {
                self.referrers.entry(t).or_default().insert(key.clone());
            }
        }
        match &winner {
            Some(w) => {
                self.current.insert(key.clone(), w.clone());
                add_to(&mut self.members, (*kind, ns.clone()), name);
            }
            None => {
                self.current.remove(key);
                remove_from(&mut self.members, (*kind, ns.clone()), name);
            }
        }
        match kind {
            Kind::LlmRoute => self.route_changed(key, old.as_ref(), winner.as_ref(), dirty),
            Kind::VirtualKey => self.key_changed(key, old.as_ref(), winner.as_ref(), dirty),
            Kind::Budget => self.budget_changed(key, old.as_ref(), winner.as_ref(), dirty),
            Kind::McpToolPolicy => {
                self.rescan.insert((ns.clone(), name.clone()));
            }
            Kind::LlmProvider | Kind::McpServer => {}
        }
    }

    fn route_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&Current>,
        new: Option<&Current>,
        dirty: &mut HashSet<ObjectKey>,
    ) {
        let (_, ns, name) = key;
        let route = |c: Option<&Current>| c.and_then(|c| c.spec.route()).cloned();
        let (old, new) = (route(old), route(new));
        for r in old.iter() {
            for m in &r.route_match.models {
                remove_from(&mut self.patterns, (ns.clone(), shape(m)), name);
                if r.route_match.headers.is_empty() {
                    remove_from(&mut self.headerless, (ns.clone(), shape(m)), name);
                }
            }
        }
        for r in new.iter() {
            for m in &r.route_match.models {
                add_to(&mut self.patterns, (ns.clone(), shape(m)), name);
                if r.route_match.headers.is_empty() {
                    add_to(&mut self.headerless, (ns.clone(), shape(m)), name);
                }
            }
        }
        // Routes with a pattern of the same shape as one of this one's may be shadowed by
        // it, or no longer.
        for r in old.iter().chain(new.iter()) {
            for m in &r.route_match.models {
                if let Some(names) = self.patterns.get(&(ns.clone(), shape(m))) {
                    dirty.extend(
                        names
                            .iter()
                            .map(|n| (Kind::LlmRoute, ns.clone(), n.clone())),
                    );
                }
            }
        }
    }

    fn key_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&Current>,
        new: Option<&Current>,
        dirty: &mut HashSet<ObjectKey>,
    ) {
        let (_, ns, name) = key;
        // Limited to certain routes: a namespace that gains its first such key, or loses
        // its last, judges shadowing differently for every route in it.
        let is_limited = new
            .and_then(|c| c.spec.key())
            .is_some_and(|k| !k.routes.is_empty());
        let was_limited = self.limited.contains_key(ns);
        if is_limited {
            add_to(&mut self.limited, ns.clone(), name);
        } else {
            remove_from(&mut self.limited, ns.clone(), name);
        }
        if was_limited != self.limited.contains_key(ns)
            && let Some(routes) = self.members.get(&(Kind::LlmRoute, ns.clone()))
        {
            dirty.extend(
                routes
                    .iter()
                    .map(|n| (Kind::LlmRoute, ns.clone(), n.clone())),
            );
        }
        // The policies that apply to the key.
        let policies: Vec<String> = self
            .members
            .get(&(Kind::McpToolPolicy, ns.clone()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for p in policies {
            let applies = new.is_some_and(|c| self.policy_applies(ns, &p, c));
            let set = self.policy_keys.entry((ns.clone(), p.clone())).or_default();
            let changed = if applies {
                set.insert(name.clone())
            } else {
                set.remove(name)
            };
            if changed {
                dirty.insert((Kind::McpToolPolicy, ns.clone(), p));
            }
        }
        if old.is_some() && new.is_none() {
            self.charged
                .get_mut(ns)
                .map(|s| s.remove(name))
                .unwrap_or_default();
        }
    }

    fn budget_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&Current>,
        new: Option<&Current>,
        dirty: &mut HashSet<ObjectKey>,
    ) {
        let ns = &key.1;
        // Parents are resolved among the budgets of the namespace (few).
        if let Some(budgets) = self.members.get(&(Kind::Budget, ns.clone())) {
            dirty.extend(
                budgets
                    .iter()
                    .map(|n| (Kind::Budget, ns.clone(), n.clone())),
            );
        }
        // Keys charged to any budget here may be charged differently now (an ancestor
        // changed); keys its selector matches, before or after, may start or stop.
        if let Some(keys) = self.charged.get(ns) {
            dirty.extend(
                keys.iter()
                    .map(|n| (Kind::VirtualKey, ns.clone(), n.clone())),
            );
        }
        let selectors: Vec<LabelSelector> = [old, new]
            .into_iter()
            .flatten()
            .filter_map(|c| match &c.spec {
                Spec::Budget(b) => b.selector.clone(),
                _ => None,
            })
            .collect();
        if selectors.is_empty() {
            return;
        }
        for k in self.keys_in(ns) {
            let Some(c) = self.current.get(&(Kind::VirtualKey, ns.clone(), k.clone())) else {
                continue;
            };
            if selectors.iter().any(|s| selector_matches(s, &c.labels)) {
                dirty.insert((Kind::VirtualKey, ns.clone(), k));
            }
        }
    }

    fn keys_in(&self, ns: &str) -> Vec<String> {
        self.members
            .get(&(Kind::VirtualKey, ns.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn policy_applies(&self, ns: &str, policy: &str, key: &Current) -> bool {
        let Some(Current {
            spec: Spec::McpPolicy(p),
            ..
        }) = self
            .current
            .get(&(Kind::McpToolPolicy, ns.to_string(), policy.to_string()))
        else {
            return false;
        };
        let Some(k) = key.spec.key() else {
            return false;
        };
        selector_matches(&p.selector, &key.labels)
            || k.mcp_tool_policy_ref
                .as_ref()
                .is_some_and(|r| r.name == policy)
    }

    fn read_key_value(&mut self, key: &ObjectKey, dirty: &mut HashSet<ObjectKey>) {
        let at = (key.1.clone(), key.2.clone());
        let value: Option<KeyValue> = match self.current.get(key).map(|c| &c.spec) {
            Some(Spec::Key(k)) => Some(
                secret_value(&self.secrets, &key.1, &k.secret_ref, VIRTUAL_KEY_SECRET_KEY).map(
                    |v| {
                        let v = v.trim_ascii();
                        (v.len(), Sha256::digest(v).into())
                    },
                ),
            ),
            _ => None,
        };
        let old_digest = self
            .key_values
            .get(&at)
            .and_then(|v| v.as_ref().ok())
            .map(|(_, d)| *d);
        let new_digest = value
            .as_ref()
            .and_then(|v| v.as_ref().ok())
            .map(|(_, d)| *d);
        match value {
            Some(v) => self.key_values.insert(at.clone(), v),
            None => self.key_values.remove(&at),
        };
        if old_digest == new_digest {
            return;
        }
        let mut others = Vec::new();
        if let Some(d) = old_digest
            && let hash_map::Entry::Occupied(mut e) = self.holders.entry(d)
        {
            e.get_mut().retain(|h| *h != at);
            others.extend(e.get().iter().cloned());
            if e.get().is_empty() {
                e.remove();
            }
        }
        if let Some(d) = new_digest {
            let set = self.holders.entry(d).or_default();
            others.extend(set.iter().cloned());
            set.push(at);
        }
        dirty.extend(
            others
                .into_iter()
                .map(|(ns, name)| (Kind::VirtualKey, ns, name)),
        );
    }

    /// Rebuilds every report of `key` and its resource.
    fn rebuild(&mut self, key: &ObjectKey) {
        let (kind, ns, name) = key;
        let kind_name = kind.to_string();
        for origin in self.reported.remove(key).unwrap_or_default() {
            let rk = (kind_name.clone(), ns.clone(), name.clone(), origin);
            if let Some(r) = self.reports.remove(&rk) {
                xor(&mut self.reports_digest, report_digest(&r));
            }
        }
        let outcome = self
            .current
            .get(key)
            .cloned()
            .map(|c| (self.outcome(key, &c), c));
        let mut reports = Vec::new();
        let mut body = None;
        if let Some(claims) = self.claims.get(key) {
            let mut first: Option<&str> = None;
            for (slot, claim) in claims.iter() {
                let report = |conditions: Vec<Condition>| ObjectReport {
                    kind: kind_name.clone(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    origin: claim.origin.clone(),
                    conditions,
                    resource: None,
                };
                let refused = |reason: Reason, message: String| {
                    report(vec![Condition::new(
                        ConditionType::Accepted,
                        false,
                        reason,
                        message,
                    )])
                };
                match &claim.prepared {
                    Prepared::Invalid(message) => {
                        reports.push(refused(Reason::Invalid, message.clone()))
                    }
                    Prepared::Valid(..) => match first {
                        Some(origin) => reports.push(refused(
                            Reason::Duplicate,
                            format!("{kind} {ns}/{name} is already defined in {origin}"),
                        )),
                        None => {
                            first = Some(&claim.origin);
                            let Some((outcome, current)) = &outcome else {
                                continue;
                            };
                            debug_assert_eq!(&current.slot, slot);
                            match outcome {
                                Outcome::Refused(reason, message) => {
                                    reports.push(refused(*reason, message.clone()))
                                }
                                Outcome::Served {
                                    body: b,
                                    missing,
                                    extra,
                                } => {
                                    let mut conditions = vec![Condition::new(
                                        ConditionType::Accepted,
                                        true,
                                        Reason::Accepted,
                                        "",
                                    )];
                                    conditions.push(if missing.is_empty() {
                                        Condition::new(
                                            ConditionType::ResolvedRefs,
                                            true,
                                            Reason::ResolvedRefs,
                                            "",
                                        )
                                    } else {
                                        Condition::new(
                                            ConditionType::ResolvedRefs,
                                            false,
                                            Reason::RefNotFound,
                                            missing.join("; "),
                                        )
                                    });
                                    conditions.extend(extra.iter().cloned());
                                    body = b.as_deref().cloned();
                                    reports.push(report(conditions));
                                }
                            }
                        }
                    },
                }
            }
        }
        // The resource: kept as it was when the body is the same, so that its version
        // and every map node above it stay shared with the previous result.
        let type_url = type_url_of(*kind);
        let resource_name = format!("{ns}/{name}");
        let map = self.resources.entry(type_url).or_default();
        let served = match body {
            Some(body) => {
                let resource = match map.get(&resource_name) {
                    Some(r) if r.body.as_ref() == Some(&body) => Some(r.clone()),
                    _ => None,
                };
                let resource = match resource {
                    Some(r) => r,
                    None => {
                        let r = Arc::new(pb::Resource {
                            name: resource_name.clone(),
                            version: version_of(&body),
                            body: Some(body),
                        });
                        xor(&mut self.resources_digest, resource_digest(type_url, &r));
                        if let Some(old) = map.insert(resource_name.clone(), r.clone()) {
                            xor(&mut self.resources_digest, resource_digest(type_url, &old));
                        }
                        r
                    }
                };
                Some(ServedAs {
                    type_url,
                    name: resource_name,
                    version: resource.version.clone(),
                })
            }
            None => {
                if let Some(old) = map.remove(&resource_name) {
                    xor(&mut self.resources_digest, resource_digest(type_url, &old));
                }
                None
            }
        };
        let mut origins = Vec::with_capacity(reports.len());
        for mut r in reports {
            if r.conditions[0].status == "True" {
                r.resource = served.clone();
            }
            xor(&mut self.reports_digest, report_digest(&r));
            origins.push(r.origin.clone());
            self.reports.insert(
                (
                    kind_name.clone(),
                    ns.clone(),
                    name.clone(),
                    r.origin.clone(),
                ),
                Arc::new(r),
            );
        }
        if !origins.is_empty() {
            self.reported.insert(key.clone(), origins);
        }
    }

    /// Compiles the served object of `key`.
    fn outcome(&mut self, key: &ObjectKey, c: &Current) -> Outcome {
        let (_, ns, name) = key;
        match &c.spec {
            Spec::Provider(spec) => {
                let (body, missing) = compile_provider(&c.parsed(key, spec), &self.secrets);
                Outcome::Served {
                    body: boxed(Body::Provider(body)),
                    missing,
                    extra: vec![],
                }
            }
            Spec::Route(spec) => {
                let r = c.parsed(key, spec);
                let missing: Vec<String> = spec
                    .targets
                    .iter()
                    .map(|t| &t.provider)
                    .chain(spec.fallbacks.iter().map(|f| &f.provider))
                    .filter(|p| {
                        !self
                            .current
                            .contains_key(&(Kind::LlmProvider, ns.clone(), (*p).clone()))
                    })
                    .map(|p| format!("LLMProvider {p} not found"))
                    .collect();
                let providers = |name: &str| match self
                    .current
                    .get(&(Kind::LlmProvider, ns.clone(), name.to_string()))
                    .map(|c| &c.spec)
                {
                    Some(Spec::Provider(p)) => Some(p.clone()),
                    _ => None,
                };
                let reachable = match self.shadowed_by(ns, name, spec) {
                    Some(by) => Condition::new(
                        ConditionType::Reachable,
                        false,
                        Reason::Shadowed,
                        format!(
                            "every model it matches is taken first by LLMRoute {by} (exact names win over globs, globs with more literal characters over those with fewer, then the route name), and no VirtualKey is limited to routes that would reach it"
                        ),
                    ),
                    None => Condition::new(ConditionType::Reachable, true, Reason::Reachable, ""),
                };
                Outcome::Served {
                    body: boxed(Body::Route(compile_route(&r))),
                    missing,
                    extra: vec![prices_known(&r, providers), reachable],
                }
            }
            Spec::Key(spec) => self.key_outcome(key, c, spec),
            Spec::Budget(spec) => {
                let mut missing = Vec::new();
                if let Some(parent) = &spec.parent_ref
                    && !self
                        .current
                        .contains_key(&(Kind::Budget, ns.clone(), parent.name.clone()))
                {
                    missing.push(format!("Budget {} not found", parent.name));
                }
                Outcome::Served {
                    body: boxed(Body::Budget(compile_budget(&c.parsed(key, spec)))),
                    missing,
                    extra: vec![],
                }
            }
            Spec::McpServer(spec) => {
                let (body, missing) = compile_mcp_server(&c.parsed(key, spec), &self.secrets);
                Outcome::Served {
                    body: boxed(Body::McpServer(body)),
                    missing,
                    extra: vec![],
                }
            }
            Spec::McpPolicy(spec) => {
                let at = (ns.clone(), name.clone());
                if self.rescan.remove(&at) {
                    let keys: BTreeSet<String> = self
                        .keys_in(ns)
                        .into_iter()
                        .filter(|k| {
                            self.current
                                .get(&(Kind::VirtualKey, ns.clone(), k.clone()))
                                .is_some_and(|kc| self.policy_applies(ns, name, kc))
                        })
                        .collect();
                    self.policy_keys.insert(at.clone(), keys);
                }
                let missing: Vec<String> = spec
                    .rules
                    .iter()
                    .filter(|r| {
                        !self
                            .current
                            .contains_key(&(Kind::McpServer, ns.clone(), r.server.clone()))
                    })
                    .map(|r| format!("MCPServer {} not found", r.server))
                    .collect();
                let keys = self
                    .policy_keys
                    .get(&at)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                Outcome::Served {
                    body: boxed(Body::McpToolPolicy(compile_policy(
                        &c.parsed(key, spec),
                        keys,
                    ))),
                    missing,
                    extra: vec![],
                }
            }
        }
    }

    fn key_outcome(
        &mut self,
        key: &ObjectKey,
        c: &Current,
        spec: &Arc<virtual_key::VirtualKeySpec>,
    ) -> Outcome {
        let (_, ns, name) = key;
        let k = c.parsed(key, spec);
        let mut missing = Vec::new();
        for b in &spec.budget_refs {
            if !self
                .current
                .contains_key(&(Kind::Budget, ns.clone(), b.name.clone()))
            {
                missing.push(format!("Budget {} not found", b.name));
            }
        }
        if let Some(p) = &spec.mcp_tool_policy_ref
            && !self
                .current
                .contains_key(&(Kind::McpToolPolicy, ns.clone(), p.name.clone()))
        {
            missing.push(format!("MCPToolPolicy {} not found", p.name));
        }
        let value = self
            .key_values
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_else(|| Err(format!("Secret {} not found", spec.secret_ref.name)));
        let mut charged = !spec.budget_refs.is_empty();
        // Without its Secret a key cannot be checked, so it is not served at all.
        let outcome = match value {
            Ok((len, _)) if len < MIN_KEY_LEN => Outcome::Refused(
                Reason::KeyTooShort,
                format!(
                    "the key in Secret {} has fewer than {MIN_KEY_LEN} characters; use a random key of 32 or more",
                    spec.secret_ref.name
                ),
            ),
            Ok((_, digest)) if self.holders.get(&digest).is_some_and(|h| h.len() > 1) => {
                Outcome::Refused(
                Reason::DuplicateKey,
                    "another VirtualKey has the same key value; every VirtualKey holding it is refused until each has its own".into(),
                )
            }
            Ok((_, digest)) => {
                let budgets: Vec<Parsed<budget::BudgetSpec>> = self
                    .members
                    .get(&(Kind::Budget, ns.clone()))
                    .into_iter()
                    .flatten()
                    .filter_map(|b| {
                        let bk = (Kind::Budget, ns.clone(), b.clone());
                        let bc = self.current.get(&bk)?;
                        match &bc.spec {
                            Spec::Budget(s) => Some(bc.parsed(&bk, s)),
                            _ => None,
                        }
                    })
                    .collect();
                let mut body = compile_virtual_key(&k, &digest);
                body.budgets = key_budgets(&k, &budgets);
                body.usd_limited |= budgets
                    .iter()
                    .any(|b| b.spec.limit.usd.is_some() && body.budgets.contains(&b.name));
                charged |= !body.budgets.is_empty();
                Outcome::Served {
                    body: boxed(Body::VirtualKey(body)),
                    missing,
                    extra: vec![],
                }
            }
            Err(message) => {
                missing.insert(0, message);
                Outcome::Served {
                    body: None,
                    missing,
                    extra: vec![],
                }
            }
        };
        if charged {
            add_to(&mut self.charged, ns.clone(), name);
        } else {
            remove_from(&mut self.charged, ns.clone(), name);
        }
        outcome
    }

    /// The route that takes every request `name` would match, if any: for each of its
    /// model patterns, a route without header matches, named before it, with a pattern
    /// that matches every name this one does and is not less specific (see [`shape`]). A
    /// namespace where some key is limited to certain routes is not judged.
    fn shadowed_by(&self, ns: &str, name: &str, spec: &route::LlmRouteSpec) -> Option<String> {
        if self.limited.contains_key(ns) || spec.route_match.models.is_empty() {
            return None;
        }
        let mut by = None;
        for m in &spec.route_match.models {
            let first = self
                .headerless
                .get(&(ns.to_string(), shape(m)))?
                .iter()
                .take_while(|n| n.as_str() < name)
                .find(|n| {
                    self.current
                        .get(&(Kind::LlmRoute, ns.to_string(), n.to_string()))
                        .and_then(|c| c.spec.route())
                        .is_some_and(|r| r.route_match.models.iter().any(|q| covers(q, m)))
                })?;
            by.get_or_insert_with(|| first.clone());
        }
        by
    }
}

/// What decides whether one model pattern can take every request of another: an exact
/// name only from the same name; a glob (`*` matching any run of characters) only from a
/// glob with the same literal characters in the same order. A glob with more literal
/// characters wins over one with fewer but cannot match the fewer's shortest names, and
/// one with fewer never wins; so only patterns of the same shape can shadow each other.
fn shape(pattern: &str) -> String {
    if pattern.contains('*') {
        format!("*{}", pattern.replace('*', ""))
    } else {
        format!("={pattern}")
    }
}

/// Where a glob's `*`s are: after how many of its literal characters.
fn star_gaps(pattern: &str) -> BTreeSet<usize> {
    let mut literals = 0;
    let mut gaps = BTreeSet::new();
    for c in pattern.chars() {
        if c == '*' {
            gaps.insert(literals);
        } else {
            literals += 1;
        }
    }
    gaps
}

/// Whether pattern `q` matches every model name pattern `p` does, with the same
/// specificity: the same shape, and a `*` wherever `p` has one.
fn covers(q: &str, p: &str) -> bool {
    shape(q) == shape(p) && star_gaps(q).is_superset(&star_gaps(p))
}
