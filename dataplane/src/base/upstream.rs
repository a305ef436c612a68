//! The pooled HTTP clients used to call providers, MCP servers and token URLs: HTTP/1.1
//! and HTTP/2, TLS with the webpki roots, keep-alive connections reused across requests,
//! and every connection checked against the egress policy ([`crate::base::egress`]). A
//! namespace the policy allows more for has a client (and a connection pool) of its own,
//! so that no other namespace reuses its connections.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::base::egress::{Connector, Policy, Rules};

pub type Upstream = Client<HttpsConnector<Connector>, Full<Bytes>>;

pub fn client(rules: Rules) -> Upstream {
    let mut connector = Connector::new(rules);
    let http = connector.http();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// The clients of every namespace.
#[derive(Clone, Debug)]
pub struct Clients {
    shared: Upstream,
    own: HashMap<String, Upstream>,
}

impl Clients {
    pub fn new(policy: &Policy) -> Self {
        Self {
            shared: client(policy.rules(None)),
            own: policy
                .allow_in
                .keys()
                .map(|ns| (ns.clone(), client(policy.rules(Some(ns)))))
                .collect(),
        }
    }

    /// The client for objects of `namespace`.
    pub fn of(&self, namespace: &str) -> &Upstream {
        if self.own.is_empty() {
            // Most deployments: no namespace has an allowance of its own, nothing to hash.
            return &self.shared;
        }
        self.own.get(namespace).unwrap_or(&self.shared)
    }

    /// The client for the object `id` (`<namespace>/<name>`).
    pub fn for_object(&self, id: &str) -> &Upstream {
        self.of(id.split_once('/').map_or("", |(ns, _)| ns))
    }
}
