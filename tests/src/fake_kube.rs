//! An in-process fake of the Kubernetes API server, on loopback, for testing the
//! controller's Kubernetes mode without a cluster: the real controller binary talks to it
//! through a kubeconfig, as it would to a real API server.
//!
//! It keeps objects of any resource in memory and serves what the controller uses: list,
//! watch (from a resourceVersion, with the event log replayed), get, create, replace (with
//! resourceVersion conflicts), merge patch, server-side apply of `status` (field ownership
//! by top-level status field: a manager's apply sets the fields it sends and removes those
//! it sent before and no longer does, leaving other managers' fields), delete, and
//! TokenReview (tokens the
//! test registers). Every request is recorded with the listener it came through, so a test
//! can give two controllers two ports onto the same state and see which one wrote what.
//! `generation` moves only when `spec` changes, as for a CRD with a status subresource.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, Infallible>;

/// Where an object lives: API prefix (`api/v1`, `apis/tollgate.dev/v1alpha1`), resource
/// (plural), namespace ("" for cluster-scoped), name.
pub type ObjectKey = (String, String, String, String);

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub listener: usize,
    pub method: String,
    pub path: String,
    pub query: String,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    key: ObjectKey,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<ObjectKey, Value>,
    log: Vec<Change>,
    requests: Vec<Recorded>,
    /// TokenReview: token -> username.
    tokens: HashMap<String, String>,
    /// Requests refused with 503 while set (to test a controller cut off from the API).
    unavailable: bool,
    /// Top-level status fields each field manager applied last, per object.
    status_owners: HashMap<(ObjectKey, String), Vec<String>>,
}

/// The fake API server. Dropping it stops nothing: its tasks end with the test's runtime.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            changes: broadcast::channel(65_536).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Serves the API on a new loopback port; requests through it are recorded as coming
    /// from listener `id`. Returns its address.
    pub async fn listen(&self, id: usize) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.handle(id, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Ok(addr)
    }

    /// Writes a kubeconfig that points at `addr`.
    pub fn kubeconfig(
        dir: &Path,
        name: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-admin\n"
            ),
        )?;
        Ok(path)
    }

    /// Accepts `token` in TokenReviews as `username`.
    pub fn add_token(&self, token: &str, username: &str) {
        self.state()
            .tokens
            .insert(token.to_string(), username.to_string());
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    pub fn get(&self, prefix: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&key(prefix, resource, namespace, name))
            .cloned()
    }

    /// Every object of a resource.
    pub fn list(&self, prefix: &str, resource: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == prefix && k.1 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or updates an object as `kubectl apply` would (the status is kept).
    pub fn apply(&self, prefix: &str, resource: &str, object: Value) -> Value {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let k = key(prefix, resource, &ns, &name);
        let mut state = self.state();
        let mut object = object;
        object["metadata"]["namespace"] = json!(ns);
        match state.objects.get(&k).cloned() {
            Some(old) => {
                if let Some(status) = old.get("status") {
                    object["status"] = status.clone();
                }
                store_update(&mut state, &self.changes, &k, &old, object)
            }
            None => store_create(&mut state, &self.changes, &k, object),
        }
    }

    pub fn delete(&self, prefix: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let k = key(prefix, resource, namespace, name);
        let mut state = self.state();
        store_delete(&mut state, &self.changes, &k)
    }

    async fn handle(&self, listener: usize, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        {
            let mut state = self.state();
            state.requests.push(Recorded {
                listener,
                method: parts.method.to_string(),
                path: path.clone(),
                query: query.clone(),
            });
            if state.unavailable {
                return status_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "unavailable",
                );
            }
        }
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", "body"),
        };
        let Some(target) = parse_path(&path) else {
            return status_error(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        let params: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let input: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
                }
            }
        };
        match (&parts.method, target.name.as_deref()) {
            (&Method::GET, None)
                if params.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                self.watch(&target, &params)
            }
            (&Method::GET, None) => self.list_response(&target, &params),
            (&Method::GET, Some(name)) => {
                let k = key(&target.prefix, &target.resource, &target.namespace, name);
                match self.state().objects.get(&k) {
                    Some(v) => json_response(StatusCode::OK, v),
                    None => not_found(name),
                }
            }
            (&Method::POST, None) if target.resource == "tokenreviews" => self.token_review(input),
            (&Method::POST, None) => {
                let name = input["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        input["metadata"]["generateName"]
                            .as_str()
                            .map(|p| format!("{p}{}", self.state().uid + 1))
                    });
                let Some(name) = name else {
                    return status_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name is required",
                    );
                };
                let k = key(&target.prefix, &target.resource, &target.namespace, &name);
                let mut state = self.state();
                if state.objects.contains_key(&k) {
                    return status_error(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{name} already exists"),
                    );
                }
                let mut object = input;
                object["metadata"]["name"] = json!(name);
                if !target.namespace.is_empty() {
                    object["metadata"]["namespace"] = json!(target.namespace);
                }
                let stored = store_create(&mut state, &self.changes, &k, object);
                json_response(StatusCode::CREATED, &stored)
            }
            (&Method::PUT, Some(name)) => {
                let k = key(&target.prefix, &target.resource, &target.namespace, name);
                let mut state = self.state();
                let Some(old) = state.objects.get(&k).cloned() else {
                    return not_found(name);
                };
                let given = input["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !given.is_empty() && old["metadata"]["resourceVersion"] != given {
                    return status_error(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
                }
                let mut object = input;
                if target.subresource.as_deref() != Some("status") {
                    object["status"] = old.get("status").cloned().unwrap_or(Value::Null);
                }
                let stored = store_update(&mut state, &self.changes, &k, &old, object);
                json_response(StatusCode::OK, &stored)
            }
            (&Method::PATCH, Some(name)) => {
                let k = key(&target.prefix, &target.resource, &target.namespace, name);
                let mut state = self.state();
                let Some(old) = state.objects.get(&k).cloned() else {
                    return not_found(name);
                };
                let mut object = old.clone();
                if target.subresource.as_deref() == Some("status") {
                    let manager = params.get("fieldManager").cloned().unwrap_or_default();
                    let applied = input.get("status").cloned().unwrap_or(Value::Null);
                    let sent: Vec<String> = applied
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    let before = state
                        .status_owners
                        .insert((k.clone(), manager), sent.clone())
                        .unwrap_or_default();
                    let mut status = match old.get("status") {
                        Some(Value::Object(m)) => m.clone(),
                        _ => serde_json::Map::new(),
                    };
                    for field in before.iter().filter(|f| !sent.contains(f)) {
                        status.remove(field);
                    }
                    if let Value::Object(m) = applied {
                        status.extend(m);
                    }
                    object["status"] = Value::Object(status);
                } else {
                    merge(&mut object, &input);
                }
                let stored = store_update(&mut state, &self.changes, &k, &old, object);
                json_response(StatusCode::OK, &stored)
            }
            (&Method::DELETE, Some(name)) => {
                let k = key(&target.prefix, &target.resource, &target.namespace, name);
                let mut state = self.state();
                if store_delete(&mut state, &self.changes, &k) {
                    json_response(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    )
                } else {
                    not_found(name)
                }
            }
            _ => status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported",
            ),
        }
    }

    /// A list, in pages of `limit` objects when asked (as the API server does: a client
    /// lists a large collection page by page, with the `continue` token of the last).
    fn list_response(&self, target: &Target, params: &HashMap<String, String>) -> Response<Body> {
        let matches = Matcher::of(target);
        let state = self.state();
        let limit: usize = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        // The token: the list's resource version and the last key sent, hex-encoded JSON
        // (the query is not percent-decoded here).
        let resumed: Option<(u64, ObjectKey)> = params
            .get("continue")
            .filter(|c| !c.is_empty())
            .and_then(|c| {
                let bytes: Option<Vec<u8>> = (0..c.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
                    .collect();
                serde_json::from_slice(&bytes?).ok()
            });
        let rv = resumed.as_ref().map_or(state.rv, |(rv, _)| *rv);
        let after = resumed.map(|(_, k)| k);
        // Items are serialized from the store, not cloned: a list of 100,000 objects is
        // the bench's own load on cores it shares with the controller.
        let mut items: Vec<&Value> = Vec::new();
        let mut last = None;
        let mut more = false;
        let from = match &after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        for (k, v) in state
            .objects
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(k, _)| matches.covers(k))
        {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(v);
            last = Some(k.clone());
        }
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if more && let Some(last) = last {
            let token = serde_json::to_vec(&(rv, last)).unwrap_or_default();
            metadata["continue"] =
                json!(token.iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct List<'a> {
            api_version: &'a str,
            kind: &'a str,
            metadata: Value,
            items: Vec<&'a Value>,
        }
        bytes_response(
            StatusCode::OK,
            serde_json::to_vec(&List {
                api_version: "v1",
                kind: "List",
                metadata,
                items,
            })
            .unwrap_or_default(),
        )
    }

    fn watch(&self, target: &Target, params: &HashMap<String, String>) -> Response<Body> {
        let matches = Matcher::of(target);
        let since: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
        // Subscribe before reading the log, so nothing falls between the two.
        let mut live = self.changes.subscribe();
        let backlog: Vec<Change> = self
            .state()
            .log
            .iter()
            .filter(|c| c.rv > since && matches.covers(&c.key))
            .cloned()
            .collect();
        tokio::spawn(async move {
            let mut last = since;
            let line = |c: &Change| {
                let mut text = serde_json::to_vec(&json!({"type": c.type_, "object": c.object}))
                    .unwrap_or_default();
                text.push(b'\n');
                Ok(Frame::data(Bytes::from(text)))
            };
            for c in &backlog {
                last = c.rv;
                if tx.send(line(c)).await.is_err() {
                    return;
                }
            }
            let end = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(end);
            loop {
                tokio::select! {
                    () = &mut end => return,
                    c = live.recv() => match c {
                        Ok(c) if c.rv > last && matches.covers(&c.key) => {
                            last = c.rv;
                            if tx.send(line(&c)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind or closed: end the watch; the client relists.
                        Err(_) => return,
                    },
                }
            }
        });
        let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    fn token_review(&self, input: Value) -> Response<Body> {
        let token = input["spec"]["token"].as_str().unwrap_or("");
        let audiences = input["spec"]["audiences"].clone();
        let user = self.state().tokens.get(token).cloned();
        let status = match user {
            Some(username) => json!({
                "authenticated": true,
                "user": {"username": username},
                "audiences": audiences,
            }),
            None => json!({"authenticated": false, "error": "invalid token"}),
        };
        let mut out = input;
        out["status"] = status;
        out["spec"]["token"] = json!("");
        json_response(StatusCode::CREATED, &out)
    }
}

/// A fake API server on its own runtime (so that tests may block), with `listeners`
/// loopback ports onto the same state.
pub struct Running {
    pub api: FakeApi,
    pub addrs: Vec<SocketAddr>,
    _runtime: tokio::runtime::Runtime,
}

impl Running {
    pub fn start(listeners: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let api = FakeApi::new();
        let addrs = runtime.block_on(async {
            let mut addrs = Vec::new();
            for id in 0..listeners {
                addrs.push(api.listen(id).await?);
            }
            anyhow::Ok(addrs)
        })?;
        Ok(Self {
            api,
            addrs,
            _runtime: runtime,
        })
    }
}

fn key(prefix: &str, resource: &str, namespace: &str, name: &str) -> ObjectKey {
    (
        prefix.to_string(),
        resource.to_string(),
        namespace.to_string(),
        name.to_string(),
    )
}

/// Logs a change at the current resourceVersion and sends it to the watches.
fn publish(
    state: &mut State,
    changes: &broadcast::Sender<Change>,
    key: &ObjectKey,
    type_: &'static str,
    object: &Value,
) {
    let c = Change {
        rv: state.rv,
        key: key.clone(),
        type_,
        object: object.clone(),
    };
    state.log.push(c.clone());
    let _ = changes.send(c);
}

/// As the API server does: a Secret's `stringData` is merged into `data`, base64-encoded.
fn string_data_to_data(object: &mut Value) {
    use base64::Engine;
    let Some(string_data) = object.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if let Value::Object(entries) = string_data {
        for (k, v) in entries {
            let text = v.as_str().unwrap_or_default();
            object["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

fn store_create(
    state: &mut State,
    changes: &broadcast::Sender<Change>,
    k: &ObjectKey,
    mut object: Value,
) -> Value {
    string_data_to_data(&mut object);
    state.rv += 1;
    state.uid += 1;
    object["metadata"]["uid"] = json!(format!("uid-{}", state.uid));
    object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    object["metadata"]["generation"] = json!(1);
    object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    state.objects.insert(k.clone(), object.clone());
    publish(state, changes, k, "ADDED", &object);
    object
}

fn store_update(
    state: &mut State,
    changes: &broadcast::Sender<Change>,
    k: &ObjectKey,
    old: &Value,
    mut object: Value,
) -> Value {
    string_data_to_data(&mut object);
    state.rv += 1;
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let generation = if object.get("spec") != old.get("spec") {
        generation + 1
    } else {
        generation
    };
    for field in ["uid", "creationTimestamp"] {
        object["metadata"][field] = old["metadata"][field].clone();
    }
    object["metadata"]["generation"] = json!(generation);
    object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    if object.get("status").is_some_and(Value::is_null)
        && let Some(m) = object.as_object_mut()
    {
        m.remove("status");
    }
    state.objects.insert(k.clone(), object.clone());
    publish(state, changes, k, "MODIFIED", &object);
    object
}

fn store_delete(state: &mut State, changes: &broadcast::Sender<Change>, k: &ObjectKey) -> bool {
    let Some(mut old) = state.objects.remove(k) else {
        return false;
    };
    state.rv += 1;
    old["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    publish(state, changes, k, "DELETED", &old);
    true
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Which objects a list or watch is over.
struct Matcher {
    prefix: String,
    resource: String,
    namespace: String,
}

impl Matcher {
    fn of(target: &Target) -> Self {
        Self {
            prefix: target.prefix.clone(),
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
        }
    }

    fn covers(&self, k: &ObjectKey) -> bool {
        k.0 == self.prefix
            && k.1 == self.resource
            && (self.namespace.is_empty() || k.2 == self.namespace)
    }
}

struct Target {
    prefix: String,
    resource: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1/...` or `/apis/<group>/<version>/...`, then `[namespaces/<ns>/]<resource>
/// [/<name>[/<subresource>]]`.
fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (parts.get(..2)?.join("/"), parts.get(2..)?),
        "apis" => (parts.get(..3)?.join("/"), parts.get(3..)?),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (resource, rest) = rest.split_first()?;
    Some(Target {
        prefix,
        resource: resource.to_string(),
        namespace,
        name: rest.first().map(|s| s.to_string()),
        subresource: rest.get(1).map(|s| s.to_string()),
    })
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    bytes_response(status, serde_json::to_vec(v).unwrap_or_default())
}

fn bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status_error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": status.as_u16(),
        }),
    )
}

fn not_found(name: &str) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{name} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/apis/tollgate.dev/v1alpha1/namespaces/a/llmroutes/r/status").unwrap();
        assert_eq!(
            (t.prefix.as_str(), t.resource.as_str(), t.namespace.as_str()),
            ("apis/tollgate.dev/v1alpha1", "llmroutes", "a")
        );
        assert_eq!(
            (t.name.as_deref(), t.subresource.as_deref()),
            (Some("r"), Some("status"))
        );
        let t = parse_path("/api/v1/secrets").unwrap();
        assert_eq!(
            (
                t.prefix.as_str(),
                t.resource.as_str(),
                t.namespace.as_str(),
                t.name
            ),
            ("api/v1", "secrets", "", None)
        );
        let t = parse_path("/apis/authentication.k8s.io/v1/tokenreviews").unwrap();
        assert_eq!(t.resource, "tokenreviews");
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn lists_come_in_pages_of_the_size_asked_for() {
        let api = FakeApi::new();
        for name in ["a", "b", "c", "d", "e"] {
            api.apply(
                "api/v1",
                "secrets",
                json!({"metadata": {"name": name, "namespace": "n"}}),
            );
        }
        api.apply(
            "api/v1",
            "configmaps",
            json!({"metadata": {"name": "other", "namespace": "n"}}),
        );
        let target = parse_path("/api/v1/secrets").unwrap();
        let page = |params: &[(&str, &str)]| -> Value {
            let params = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let response = api.list_response(&target, &params);
            let Ok(body) = block_on(response.into_body().collect());
            let body = body.to_bytes();
            serde_json::from_slice(&body).unwrap()
        };
        let mut names = Vec::new();
        let mut token = String::new();
        let mut versions = Vec::new();
        loop {
            let p = page(&[("limit", "2"), ("continue", &token)]);
            let items = p["items"].as_array().unwrap();
            assert!(items.len() <= 2);
            names.extend(items.iter().map(|i| i["metadata"]["name"].clone()));
            versions.push(p["metadata"]["resourceVersion"].clone());
            match p["metadata"]["continue"].as_str() {
                Some(t) => token = t.to_string(),
                None => break,
            }
        }
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert_eq!(versions.len(), 3);
        assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
        let all = page(&[]);
        assert_eq!(all["items"].as_array().unwrap().len(), 5);
        assert!(all["metadata"].get("continue").is_none());
    }

    /// Runs a future to completion on a current-thread runtime.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn merge_patch() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge(&mut v, &json!({"a": {"b": null, "e": 4}, "d": [1]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 4}, "d": [1]}));
    }
}
