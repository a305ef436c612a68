//! The resources a dataplane holds, by type and name, as last accepted. Applying a
//! response converts each resource on its own: the valid ones replace what was held, a
//! rejected one keeps its previous version and is reported back in the NACK.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tollgate_proto::resource::Body;
use tollgate_proto::{self as pb, DeltaConfigResponse, ResourceError, type_url};

use crate::config::mcp::{McpServer, ToolPolicy};
use crate::config::model::{ConvertError, Provider, Route, VirtualKey};
use crate::config::snapshot::{RouteTable, Snapshot};
use crate::config::tool_policy::KeyPolicy;

#[derive(Clone, Debug)]
enum Item {
    Provider(Arc<Provider>),
    Route(Arc<Route>),
    Key(Arc<VirtualKey>),
    McpServer(Arc<McpServer>),
    McpPolicy(Arc<ToolPolicy>),
    /// Kinds the dataplane does not use (Budgets live in the controller); held so
    /// versions resume correctly.
    Other,
}

#[derive(Clone, Debug)]
struct Held {
    /// Shared with every snapshot's list of versions, as the name (the map's key) is.
    version: Arc<str>,
    item: Item,
}

#[derive(Debug, Default)]
pub struct Store {
    types: HashMap<String, BTreeMap<Arc<str>, Held>>,
}

/// What applying one response did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub changed: bool,
    pub errors: Vec<ResourceError>,
}

fn convert(type_url: &str, body: Option<&Body>) -> Result<Item, ConvertError> {
    let body = body.ok_or(ConvertError::MissingBody)?;
    if body.type_url() != type_url {
        return Err(ConvertError::WrongType {
            expected: type_url.to_string(),
            found: body.type_url(),
        });
    }
    Ok(match body {
        Body::Provider(p) => Item::Provider(Arc::new(Provider::try_from(p)?)),
        Body::Route(r) => Item::Route(Arc::new(Route::try_from(r)?)),
        Body::VirtualKey(k) => Item::Key(Arc::new(VirtualKey::try_from(k)?)),
        Body::McpServer(m) => Item::McpServer(Arc::new(McpServer::try_from(m)?)),
        Body::McpToolPolicy(p) => Item::McpPolicy(Arc::new(ToolPolicy::from(p))),
        Body::Budget(_) => Item::Other,
    })
}

impl Store {
    /// Name -> version of every resource held of a type, sent when (re)subscribing.
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.types
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(n, h)| (n.to_string(), h.version.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn apply(&mut self, response: &DeltaConfigResponse) -> Applied {
        let mut applied = Applied::default();
        let held = self.types.entry(response.type_url.clone()).or_default();
        for resource in &response.resources {
            match convert(&response.type_url, resource.body.as_ref()) {
                Ok(item) => {
                    held.insert(
                        Arc::from(resource.name.as_str()),
                        Held {
                            version: Arc::from(resource.version.as_str()),
                            item,
                        },
                    );
                    applied.changed = true;
                }
                Err(e) => applied.errors.push(ResourceError {
                    name: resource.name.clone(),
                    version: resource.version.clone(),
                    message: e.to_string(),
                }),
            }
        }
        for name in &response.removed_resources {
            applied.changed |= held.remove(name.as_str()).is_some();
        }
        applied
    }

    pub fn resource_count(&self, type_url: &str) -> usize {
        self.types.get(type_url).map_or(0, BTreeMap::len)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let empty = BTreeMap::new();
        let of = |t: &str| self.types.get(t).unwrap_or(&empty);
        for held in of(type_url::PROVIDER).values() {
            if let Item::Provider(p) = &held.item {
                snapshot.providers.insert(p.id.to_string(), p.clone());
            }
        }
        snapshot.keys.reserve(of(type_url::VIRTUAL_KEY).len());
        for held in of(type_url::VIRTUAL_KEY).values() {
            if let Item::Key(k) = &held.item {
                snapshot.keys.insert(k.hash, k.clone());
            }
        }
        for held in of(type_url::MCP_SERVER).values() {
            if let Item::McpServer(m) = &held.item {
                snapshot.mcp_servers.insert(m.id.clone(), m.clone());
            }
        }
        // Each key's tool rules: those of every policy that selected it.
        let mut rules: HashMap<String, KeyPolicy> = HashMap::new();
        for held in of(type_url::MCP_TOOL_POLICY).values() {
            if let Item::McpPolicy(p) = &held.item {
                for k in &p.keys {
                    let policy = rules.entry(k.clone()).or_default();
                    policy.rules.0.extend(p.rules.iter().cloned());
                    policy.compact_schemas |= p.compact_schemas;
                    policy.log_arguments |= p.log_arguments;
                }
            }
        }
        snapshot.mcp_rules = rules.into_iter().map(|(k, r)| (k, Arc::new(r))).collect();
        let mut by_namespace: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for held in of(type_url::ROUTE).values() {
            if let Item::Route(r) = &held.item {
                by_namespace
                    .entry(r.namespace.clone())
                    .or_default()
                    .push(r.clone());
            }
        }
        snapshot.routes = by_namespace
            .into_iter()
            .map(|(ns, routes)| (ns, RouteTable::new(routes)))
            .collect();
        snapshot.versions = Vec::with_capacity(self.types.values().map(BTreeMap::len).sum());
        for t in type_url::ALL {
            for (name, held) in of(t) {
                snapshot
                    .versions
                    .push((t, name.clone(), held.version.clone()));
            }
        }
        snapshot
    }
}

/// Builds a resource for tests and tools.
pub fn resource(name: &str, version: &str, body: Body) -> pb::Resource {
    pb::Resource {
        name: name.into(),
        version: version.into(),
        body: Some(body),
    }
}

#[cfg(test)]
mod tests;
