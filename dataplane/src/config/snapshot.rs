//! An immutable view of the whole config, built from the store after each change and
//! swapped in atomically; a request keeps the snapshot it started with.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base::glob;
use crate::config::model::{Provider, Route, VirtualKey};

/// The routes of one namespace, indexed by the model names they match.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    /// Glob patterns, most specific first.
    globs: Vec<(String, Arc<Route>)>,
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = Arc<Route>>) -> Self {
        let mut table = Self::default();
        for route in routes {
            for pattern in &route.models {
                if glob::is_glob(pattern) {
                    table.globs.push((pattern.clone(), route.clone()));
                } else {
                    table
                        .exact
                        .entry(pattern.clone())
                        .or_default()
                        .push(route.clone());
                }
            }
        }
        for routes in table.exact.values_mut() {
            routes.sort_by(|a, b| a.id.cmp(&b.id));
        }
        table.globs.sort_by(|(pa, ra), (pb, rb)| {
            glob::specificity(pb)
                .cmp(&glob::specificity(pa))
                .then_with(|| ra.id.cmp(&rb.id))
        });
        table
    }

    /// Routes that match `model`, in precedence order: exact names (by route name), then
    /// globs (most literal characters first, then by route name).
    fn candidates<'a, 'm>(
        &'a self,
        model: &'m str,
    ) -> impl Iterator<Item = &'a Arc<Route>> + use<'a, 'm> {
        self.exact.get(model).into_iter().flatten().chain(
            self.globs
                .iter()
                .filter(move |(pattern, _)| glob::matches(pattern, model))
                .map(|(_, route)| route),
        )
    }
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub keys: HashMap<[u8; 32], Arc<VirtualKey>>,
    pub providers: HashMap<String, Arc<Provider>>,
    pub routes: HashMap<String, RouteTable>,
    /// MCPServers by `<namespace>/<name>`.
    pub mcp_servers: HashMap<String, Arc<crate::config::mcp::McpServer>>,
    /// The MCP tool rules of each VirtualKey (`<namespace>/<name>`) some policy selects.
    pub mcp_rules: HashMap<String, Arc<crate::config::tool_policy::KeyPolicy>>,
    /// Every resource name and version, for `/config` on the admin port.
    pub versions: Vec<(&'static str, Arc<str>, Arc<str>)>,
    /// The secret values above, made ready to search for when a request first asks.
    redactor: std::sync::OnceLock<crate::config::redact::Redactor>,
}

/// Why a presented key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Expired,
    Disabled,
}

impl Snapshot {
    /// Text a policy asked to record, with every secret this snapshot holds redacted.
    pub fn redact(&self, text: &str) -> String {
        self.redactor
            .get_or_init(|| {
                crate::config::redact::Redactor::new(
                    self.providers.values(),
                    self.mcp_servers.values(),
                )
            })
            .redact(text, &self.keys)
    }

    /// Finds the virtual key for a presented secret by its SHA-256, then compares the
    /// hashes in constant time.
    pub fn authenticate(
        &self,
        presented: &[u8],
        now_unix: i64,
    ) -> Result<&Arc<VirtualKey>, KeyRefusal> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let key = self.keys.get(&hash).ok_or(KeyRefusal::Unknown)?;
        if !bool::from(key.hash.ct_eq(&hash)) {
            return Err(KeyRefusal::Unknown);
        }
        if key.disabled {
            return Err(KeyRefusal::Disabled);
        }
        if key.expires_at.is_some_and(|t| now_unix >= t) {
            return Err(KeyRefusal::Expired);
        }
        Ok(key)
    }

    /// The route a request for `model` from `key` takes.
    pub fn route(
        &self,
        key: &VirtualKey,
        model: &str,
        headers: &http::HeaderMap,
    ) -> Option<&Arc<Route>> {
        self.routes
            .get(key.namespace())?
            .candidates(model)
            .find(|r| key.allows_route(r) && r.headers_match(headers))
    }

    /// Model names `key` may ask for: the literal names of the routes it may use.
    pub fn models_for(&self, key: &VirtualKey) -> Vec<(String, String)> {
        let Some(table) = self.routes.get(key.namespace()) else {
            return vec![];
        };
        let mut out: Vec<(String, String)> = table
            .exact
            .iter()
            .filter(|(model, routes)| {
                key.allows_model(model) && routes.iter().any(|r| key.allows_route(r))
            })
            .map(|(model, routes)| (model.clone(), routes[0].name.clone()))
            .collect();
        out.sort();
        out
    }
}
