use super::*;

fn route(name: &str, model: &str, provider: &str) -> Body {
    Body::Route(pb::Route {
        namespace: "default".into(),
        name: name.into(),
        models: vec![model.into()],
        targets: vec![pb::Target {
            provider: provider.into(),
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn response(nonce: &str, resources: Vec<pb::Resource>, removed: Vec<&str>) -> DeltaConfigResponse {
    DeltaConfigResponse {
        type_url: type_url::ROUTE.into(),
        system_version_info: String::new(),
        resources,
        removed_resources: removed.into_iter().map(String::from).collect(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn target_of(store: &Store, model: &str) -> Option<String> {
    let snapshot = store.snapshot();
    let key = VirtualKey::try_from(&pb::VirtualKey {
        namespace: "default".into(),
        key_sha256: vec![0; 32],
        ..Default::default()
    })
    .ok()?;
    snapshot
        .route(&key, model, &http::HeaderMap::new())
        .map(|r| r.targets[0].provider.clone())
}

#[test]
fn nacked_resource_keeps_previous_version_while_the_rest_applies() {
    let mut store = Store::default();
    let first = store.apply(&response(
        "1",
        vec![resource("default/a", "v1", route("a", "model-a", "p1"))],
        vec![],
    ));
    assert!(first.errors.is_empty());
    assert_eq!(target_of(&store, "model-a").as_deref(), Some("default/p1"));

    // One response: a broken v2 of `a` (a regex that does not compile) and a valid `b`.
    let mut broken = route("a", "model-a", "p2");
    if let Body::Route(r) = &mut broken {
        r.headers.push(pb::HeaderMatch {
            name: "x-agent-step".into(),
            value: "(unclosed".into(),
            regex: true,
        });
    }
    let second = store.apply(&response(
        "2",
        vec![
            resource("default/a", "v2", broken),
            resource("default/b", "v1", route("b", "model-b", "p3")),
        ],
        vec![],
    ));
    assert_eq!(second.errors.len(), 1);
    assert_eq!(second.errors[0].name, "default/a");
    assert_eq!(second.errors[0].version, "v2");
    assert!(
        second.errors[0].message.contains("x-agent-step"),
        "{:?}",
        second.errors
    );
    assert!(second.changed);

    // `a` is still v1 (same target as before); `b` is applied.
    assert_eq!(
        store
            .versions(type_url::ROUTE)
            .get("default/a")
            .map(String::as_str),
        Some("v1")
    );
    assert_eq!(target_of(&store, "model-a").as_deref(), Some("default/p1"));
    assert_eq!(target_of(&store, "model-b").as_deref(), Some("default/p3"));
}

#[test]
fn removals_and_wrong_types() {
    let mut store = Store::default();
    store.apply(&response(
        "1",
        vec![resource("default/a", "v1", route("a", "m", "p"))],
        vec![],
    ));
    let wrong = store.apply(&response(
        "2",
        vec![resource(
            "default/k",
            "v1",
            Body::VirtualKey(pb::VirtualKey::default()),
        )],
        vec!["default/a"],
    ));
    assert_eq!(wrong.errors.len(), 1);
    assert!(wrong.errors[0].message.contains("but the response is for"));
    assert_eq!(store.resource_count(type_url::ROUTE), 0);
    assert_eq!(target_of(&store, "m"), None);
}

#[test]
fn bad_key_hash_is_refused() {
    let mut store = Store::default();
    let applied = store.apply(&DeltaConfigResponse {
        type_url: type_url::VIRTUAL_KEY.into(),
        resources: vec![resource(
            "default/k",
            "v1",
            Body::VirtualKey(pb::VirtualKey {
                key_sha256: vec![1, 2, 3],
                ..Default::default()
            }),
        )],
        ..Default::default()
    });
    assert_eq!(
        applied.errors[0].message,
        "key hash must be 32 bytes, got 3"
    );
    assert!(!applied.changed);
}

#[test]
fn mcp_servers_and_each_keys_tool_rules_are_in_the_snapshot() {
    let mut store = Store::default();
    let resource = |name: &str, body: Body| pb::Resource {
        name: name.into(),
        version: "v1".into(),
        body: Some(body),
    };
    let server = |name: &str, url: &str| {
        Body::McpServer(pb::McpServer {
            namespace: "ns".into(),
            name: name.into(),
            url: url.into(),
            tool_prefix: name.into(),
            ..Default::default()
        })
    };
    let applied = store.apply(&DeltaConfigResponse {
        type_url: type_url::MCP_SERVER.into(),
        resources: vec![
            resource("ns/time", server("time", "http://127.0.0.1:1/mcp")),
            resource("ns/bad", server("bad", "ftp://nowhere")),
        ],
        ..Default::default()
    });
    assert_eq!(applied.errors.len(), 1, "the bad URL is NACKed");
    let policy = |name: &str, keys: &[&str], allow: &str| {
        Body::McpToolPolicy(pb::McpToolPolicy {
            namespace: "ns".into(),
            name: name.into(),
            virtual_keys: keys.iter().map(|k| k.to_string()).collect(),
            rules: vec![pb::ToolRule {
                server: "time".into(),
                allow: vec![allow.into()],
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    store.apply(&DeltaConfigResponse {
        type_url: type_url::MCP_TOOL_POLICY.into(),
        resources: vec![
            resource("ns/a", policy("a", &["agent", "other"], "now")),
            resource("ns/b", policy("b", &["agent"], "zones")),
            resource(
                "ns/c",
                match policy("c", &["other"], "none") {
                    Body::McpToolPolicy(p) => Body::McpToolPolicy(pb::McpToolPolicy {
                        compact_schemas: true,
                        ..p
                    }),
                    _ => unreachable!(),
                },
            ),
        ],
        ..Default::default()
    });
    let s = store.snapshot();
    assert_eq!(s.mcp_servers.keys().collect::<Vec<_>>(), ["ns/time"]);
    let agent = &s.mcp_rules["ns/agent"];
    assert!(agent.rules.permits("ns/time", "now") && agent.rules.permits("ns/time", "zones"));
    assert!(!agent.compact_schemas);
    let other = &s.mcp_rules["ns/other"];
    assert!(other.rules.permits("ns/time", "now") && !other.rules.permits("ns/time", "zones"));
    assert!(other.compact_schemas, "one of its policies asks for it");
    assert!(!s.mcp_rules.contains_key("ns/nobody"));
}
