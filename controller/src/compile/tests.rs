use serde_json::json;

use super::*;
use crate::objects::SourceObject;

fn obj(origin: &str, v: Value) -> SourceObject {
    SourceObject {
        origin: origin.into(),
        value: v.into(),
    }
}

fn base() -> Vec<SourceObject> {
    vec![
        obj(
            "p.yaml#1",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                "metadata": {"name": "openai"},
                "spec": {"type": "openai", "credentials": [{"secretRef": {"name": "openai-key"}}]}
            }),
        ),
        obj(
            "p.yaml#2",
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "openai-key", "labels": {"tollgate.dev/credential": "true"}},
                "data": {"apiKey": "c2stdXBzdHJlYW0="}
            }),
        ),
        obj(
            "r.yaml#1",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
                "metadata": {"name": "chat"},
                "spec": {"match": {"models": ["gpt-4o"]}, "targets": [{"provider": "openai"}]}
            }),
        ),
        obj(
            "k.yaml#1",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
                "metadata": {"name": "alice", "labels": {"team": "a"}},
                "spec": {"secretRef": {"name": "alice-key"}, "expiresAt": "2030-01-01T00:00:00Z"}
            }),
        ),
        obj(
            "k.yaml#2",
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alice-key", "labels": {"tollgate.dev/credential": "true"}},
                "stringData": {"key": "tg-alice-key-0123456789\n"}
            }),
        ),
    ]
}

fn run(objects: Vec<SourceObject>) -> Compiled {
    compile(
        &Inputs {
            objects,
            errors: vec![],
        },
        &Validator::new(),
        "default",
    )
}

fn report<'a>(c: &'a Compiled, kind: &str, name: &str) -> &'a ObjectReport {
    c.reports()
        .find(|r| r.kind == kind && r.name == name)
        .unwrap_or_else(|| panic!("no report for {kind} {name}"))
}

#[test]
fn valid_objects_become_one_resource_each() {
    let c = run(base());
    assert_eq!(c.resource_count(), 3);
    let p = &c.resources[pb::type_url::PROVIDER]["default/openai"];
    let Some(Body::Provider(body)) = &p.body else {
        panic!()
    };
    assert_eq!(body.endpoint, "https://api.openai.com/v1");
    assert_eq!(body.credentials[0].api_key, "sk-upstream");
    assert_eq!(body.credentials[0].id, "openai-key/apiKey");
    for r in c.reports() {
        assert_eq!(
            r.condition(ConditionType::Accepted).unwrap().status,
            "True",
            "{r:?}"
        );
        assert_eq!(
            r.condition(ConditionType::ResolvedRefs).unwrap().status,
            "True",
            "{r:?}"
        );
    }
}

#[test]
fn virtual_key_sends_only_a_hash_of_the_trimmed_key() {
    let c = run(base());
    let k = &c.resources[pb::type_url::VIRTUAL_KEY]["default/alice"];
    let Some(Body::VirtualKey(body)) = &k.body else {
        panic!()
    };
    assert_eq!(
        body.key_sha256,
        Sha256::digest(b"tg-alice-key-0123456789").to_vec()
    );
    assert_eq!(body.expires_at_unix, 1_893_456_000);
    let encoded = k.encode_to_vec();
    let key = b"tg-alice-key-0123456789";
    assert!(!encoded.windows(key.len()).any(|w| w == key));
}

#[test]
fn invalid_object_is_reported_and_does_not_block_others() {
    let mut objects = base();
    objects.push(obj("bad.yaml#1", json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
        "metadata": {"name": "broken"},
        "spec": {"match": {"models": ["x"]}, "targets": [{"provider": "openai", "weight": "heavy"}]}
    })));
    let c = run(objects);
    let r = report(&c, "LLMRoute", "broken");
    let accepted = r.condition(ConditionType::Accepted).unwrap();
    assert_eq!(
        (accepted.status, accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("spec.targets[0].weight"),
        "{accepted:?}"
    );
    assert_eq!(r.origin, "bad.yaml#1");
    assert!(r.resource.is_none());
    assert!(c.resources[pb::type_url::ROUTE].contains_key("default/chat"));
    assert_eq!(c.resource_count(), 3);
}

#[test]
fn missing_refs_are_reported() {
    let mut objects = base();
    objects.retain(|o| o.origin != "p.yaml#2" && o.origin != "k.yaml#2");
    objects.push(obj(
        "r2.yaml#1",
        json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
            "metadata": {"name": "other"},
            "spec": {"match": {"models": ["claude*"]}, "targets": [{"provider": "anthropic"}]}
        }),
    ));
    let c = run(objects);
    let p = report(&c, "LLMProvider", "openai");
    assert_eq!(
        p.condition(ConditionType::ResolvedRefs).unwrap().message,
        "Secret openai-key not found (only Secrets labelled tollgate.dev/credential: \"true\" are read)"
    );
    let r = report(&c, "LLMRoute", "other");
    assert_eq!(
        r.condition(ConditionType::ResolvedRefs).unwrap().message,
        "LLMProvider anthropic not found"
    );
    // Served anyway: the dataplane answers with a clear error for that target.
    assert!(r.resource.is_some());
    // A key without its Secret cannot be checked and is not served.
    let k = report(&c, "VirtualKey", "alice");
    assert_eq!(
        k.condition(ConditionType::ResolvedRefs).unwrap().status,
        "False"
    );
    assert!(k.resource.is_none());
}

#[test]
fn duplicates_keep_the_first() {
    let mut objects = base();
    let mut dup = objects[2].clone();
    dup.origin = "dup.yaml#1".into();
    objects.push(dup);
    let c = run(objects);
    let dups: Vec<_> = c
        .reports()
        .filter(|r| {
            r.name == "chat" && r.condition(ConditionType::Accepted).unwrap().reason == "Duplicate"
        })
        .collect();
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].origin, "dup.yaml#1");
    assert!(
        dups[0]
            .condition(ConditionType::Accepted)
            .unwrap()
            .message
            .contains("r.yaml#1")
    );
}

#[test]
fn versions_change_only_with_content() {
    let a = run(base());
    let b = run(base());
    assert_eq!(
        a.resources[pb::type_url::ROUTE]["default/chat"].version,
        b.resources[pb::type_url::ROUTE]["default/chat"].version
    );
    let mut changed = base();
    std::sync::Arc::make_mut(&mut changed[2].value)["spec"]["targets"][0]["weight"] = json!(5);
    let c = run(changed);
    assert_ne!(
        a.resources[pb::type_url::ROUTE]["default/chat"].version,
        c.resources[pb::type_url::ROUTE]["default/chat"].version
    );
    assert_eq!(
        a.resources[pb::type_url::PROVIDER]["default/openai"].version,
        c.resources[pb::type_url::PROVIDER]["default/openai"].version
    );
}

#[test]
fn selectors_and_times() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
    let mut s = LabelSelector {
        match_labels: Some([("team".to_string(), "a".to_string())].into()),
        ..Default::default()
    };
    assert!(selector_matches(&s, &labels));
    s.match_expressions = Some(vec![LabelSelectorRequirement {
        key: "tier".into(),
        operator: "Exists".into(),
        values: None,
    }]);
    assert!(!selector_matches(&s, &labels));
}

/// One group per object, as Kubernetes mode hands them.
fn groups(objects: &[SourceObject]) -> Change {
    Change {
        groups: objects
            .iter()
            .map(|o| {
                (
                    Arc::from(o.origin.as_str()),
                    Some(GroupInput {
                        objects: vec![o.clone()],
                        errors: vec![],
                    }),
                )
            })
            .collect(),
    }
}

#[test]
fn a_change_rebuilds_only_what_it_touches() {
    let mut objects = base();
    objects.push(obj(
        "bad.yaml#1",
        json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
            "metadata": {"name": "broken"},
            "spec": {"match": {"models": ["x"]}, "targets": []}
        }),
    ));
    let validator = Validator::new();
    let mut compiler = Compiler::default();
    let first = compiler.update(&validator, "default", groups(&objects));
    let whole = |objects: &[SourceObject]| {
        compile(
            &Inputs {
                objects: objects.to_vec(),
                errors: vec![],
            },
            &validator,
            "default",
        )
    };
    let plain = whole(&objects);
    assert_eq!(first.report_map, plain.report_map);
    assert_eq!(first.version, plain.version);
    assert_eq!(first.reports_version, plain.reports_version);
    // Nothing handed: nothing changes, and every resource is the same `Arc`.
    let second = compiler.update(&validator, "default", Change::default());
    assert_eq!(second.version, first.version);
    for (type_url, resources) in &second.resources {
        for (name, r) in resources {
            assert!(
                std::sync::Arc::ptr_eq(r, &first.resources[type_url][name]),
                "{name}"
            );
        }
    }
    // A changed object is validated again.
    let mut changed = objects.clone();
    std::sync::Arc::make_mut(&mut changed[2].value)["spec"]["strategy"] = json!("nope");
    let third = compiler.update(&validator, "default", groups(&changed[2..3]));
    assert_eq!(
        report(&third, "LLMRoute", "chat")
            .condition(ConditionType::Accepted)
            .unwrap()
            .status,
        "False"
    );
    assert_eq!(third.report_map, whole(&changed).report_map);
    // A changed body gets a new resource and version; the others keep theirs.
    std::sync::Arc::make_mut(&mut changed[2].value)["spec"]["strategy"] = json!("cost");
    let fourth = compiler.update(&validator, "default", groups(&changed[2..3]));
    let route = |c: &Compiled| {
        c.resources[pb::type_url::ROUTE]
            .get("default/chat")
            .cloned()
    };
    assert_ne!(
        route(&fourth).unwrap().version,
        route(&second).unwrap().version
    );
    let provider = |c: &Compiled| c.resources[pb::type_url::PROVIDER]["default/openai"].clone();
    assert!(Arc::ptr_eq(&provider(&first), &provider(&fourth)));
    assert_eq!(fourth.version, whole(&changed).version);
    // A group removed takes its objects with it.
    let fifth = compiler.update(
        &validator,
        "default",
        Change {
            groups: vec![(Arc::from(changed[2].origin.as_str()), None)],
        },
    );
    assert!(route(&fifth).is_none());
    let mut without = changed.clone();
    without.remove(2);
    let expected = whole(&without);
    assert_eq!(fifth.report_map, expected.report_map);
    assert_eq!(fifth.version, expected.version);
}

#[test]
fn a_key_is_charged_to_the_budgets_that_select_it_and_their_ancestors() {
    let budget = |name: &str, spec: Value| {
        obj(
            &format!("b.yaml#{name}"),
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget",
                "metadata": {"name": name},
                "spec": spec,
            }),
        )
    };
    let mut objects = base();
    objects.extend([
        // An empty selector selects every key of the namespace.
        budget(
            "org",
            json!({"selector": {}, "limit": {"usd": 100}, "period": "month"}),
        ),
        budget(
            "team-a",
            json!({"selector": {"matchLabels": {"team": "a"}}, "parentRef": {"name": "org"},
                   "limit": {"usd": 10}, "period": "day"}),
        ),
        budget(
            "team-b",
            json!({"selector": {"matchLabels": {"team": "b"}}, "parentRef": {"name": "org"},
                   "limit": {"usd": 10}, "period": "day"}),
        ),
        // A cycle does not loop.
        budget(
            "x",
            json!({"parentRef": {"name": "y"}, "limit": {"tokens": 5}, "period": "1h"}),
        ),
        budget(
            "y",
            json!({"parentRef": {"name": "x"}, "limit": {"tokens": 5}, "period": "1h"}),
        ),
    ]);
    std::sync::Arc::make_mut(&mut objects[3].value)["spec"]["budgetRefs"] = json!([{"name": "x"}]);
    let c = run(objects);
    let Some(Body::VirtualKey(k)) = &c.resources[pb::type_url::VIRTUAL_KEY]["default/alice"].body
    else {
        panic!()
    };
    assert_eq!(k.budgets, vec!["org", "team-a", "x", "y"]);
}

#[test]
fn a_key_label_changes_what_is_sent_only_through_the_budgets_it_selects() {
    let version = |team: &str, budget: bool| {
        let mut objects = base();
        std::sync::Arc::make_mut(&mut objects[3].value)["metadata"]["labels"] =
            json!({"team": team, "tier": "gold"});
        if budget {
            objects.push(obj(
                "b.yaml#1",
                json!({
                    "apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget",
                    "metadata": {"name": "team-b"},
                    "spec": {"selector": {"matchLabels": {"team": "b"}},
                             "limit": {"usd": 10}, "period": "day"},
                }),
            ));
        }
        run(objects).resources[pb::type_url::VIRTUAL_KEY]["default/alice"]
            .version
            .clone()
    };
    // Labels select Budgets in the controller; the dataplane is sent the result only.
    assert_eq!(version("a", false), version("b", false));
    assert_ne!(version("a", true), version("b", true));
}

#[test]
fn a_tool_policy_applies_to_the_keys_it_selects_and_to_the_keys_that_name_it() {
    let mut objects = base();
    objects.extend([
        obj(
            "m.yaml#1",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "MCPServer",
                "metadata": {"name": "ledger"},
                "spec": {"url": "http://127.0.0.1:9/mcp"}
            }),
        ),
        obj(
            "m.yaml#2",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "MCPToolPolicy",
                "metadata": {"name": "finance"},
                "spec": {"selector": {"matchLabels": {"team": "a"}},
                         "rules": [{"server": "ledger", "allow": ["read_*"]},
                                   {"server": "ledger", "allow": ["send_*"],
                                    "limits": {"callsPerMinute": 5}}]}
            }),
        ),
        obj(
            "m.yaml#3",
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
                "metadata": {"name": "bob"},
                "spec": {"secretRef": {"name": "bob-key"}, "mcpToolPolicyRef": {"name": "finance"}}
            }),
        ),
        obj(
            "m.yaml#4",
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bob-key", "labels": {"tollgate.dev/credential": "true"}},
                "stringData": {"key": "tg-bob-key-0123456789"}
            }),
        ),
    ]);
    let c = run(objects);
    let policy = &c
        .resources_of(tollgate_proto::type_url::MCP_TOOL_POLICY)
        .unwrap()["default/finance"];
    let Some(Body::McpToolPolicy(p)) = &policy.body else {
        panic!("{policy:?}")
    };
    assert_eq!(
        p.virtual_keys,
        ["alice", "bob"],
        "alice by label, bob by name"
    );
    // A rule's callsPerMinute defines the ledger accounts that count each key's calls.
    use crate::spend::ledger::Definitions;
    let defs = crate::spend::accounts::ConfigDefs(std::sync::Arc::new(c));
    let def = defs
        .define("tool/default/finance/1/default/alice/send_mail")
        .expect("the limited rule defines an account");
    assert_eq!(def.limit.requests, 5);
    assert!(matches!(
        def.window,
        crate::spend::ledger::Window::Rolling { ms: 60_000 }
    ));
    for undefined in [
        "tool/default/finance/0/default/alice/read_x",
        "tool/default/finance/2/default/alice/send_mail",
        "tool/default/other/1/default/alice/send_mail",
        "tool/default/finance/x/default/alice/send_mail",
    ] {
        assert!(defs.define(undefined).is_none(), "{undefined}");
    }
}

fn key_with(ns: &str, name: &str, value: &str) -> [SourceObject; 2] {
    [
        obj(
            &format!("{ns}-{name}.yaml#1"),
            json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"secretRef": {"name": format!("{name}-key")}}
            }),
        ),
        obj(
            &format!("{ns}-{name}.yaml#2"),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-key"), "namespace": ns,
                             "labels": {"tollgate.dev/credential": "true"}},
                "stringData": {"key": value}
            }),
        ),
    ]
}

#[test]
fn one_key_value_in_two_namespaces_refuses_both_and_names_neither() {
    let mut objects = base();
    objects.extend(key_with("team-a", "app", "tg-shared-value-0123456789"));
    objects.extend(key_with("team-b", "thief", "tg-shared-value-0123456789"));
    objects.extend(key_with("team-b", "own", "tg-own-value-0123456789"));
    let c = run(objects);
    for (ns, name) in [("team-a", "app"), ("team-b", "thief")] {
        let r = c
            .reports()
            .find(|r| r.namespace == ns && r.name == name)
            .unwrap();
        let accepted = r.condition(ConditionType::Accepted).unwrap();
        assert_eq!(
            (accepted.status, accepted.reason.as_str()),
            ("False", "DuplicateKey")
        );
        for leak in ["team-a", "team-b", "app", "thief", "tg-shared"] {
            assert!(!accepted.message.contains(leak), "{}", accepted.message);
        }
        assert!(r.resource.is_none());
    }
    let own = c.reports().find(|r| r.name == "own").unwrap();
    assert!(own.resource.is_some());
    assert!(report(&c, "VirtualKey", "alice").resource.is_some());
}

#[test]
fn a_short_key_is_refused() {
    let mut objects = base();
    objects.extend(key_with("team-a", "short", "tg-123456789"));
    let c = run(objects);
    let r = c.reports().find(|r| r.name == "short").unwrap();
    assert_eq!(
        r.condition(ConditionType::Accepted).unwrap().reason,
        "KeyTooShort"
    );
    assert!(r.resource.is_none());
}

#[test]
fn a_secret_without_the_credential_label_is_no_credential() {
    let mut objects = base();
    // The provider's Secret loses its label: a database password, say.
    std::sync::Arc::make_mut(&mut objects[1].value)["metadata"]["labels"] = json!({});
    let c = run(objects);
    let p = report(&c, "LLMProvider", "openai");
    let refs = p.condition(ConditionType::ResolvedRefs).unwrap();
    assert_eq!(refs.status, "False");
    assert!(
        refs.message
            .contains("add the label tollgate.dev/credential"),
        "{}",
        refs.message
    );
    let Some(Body::Provider(body)) = p
        .resource
        .as_ref()
        .and_then(|r| c.resources.get(r.type_url)?.get(&r.name)?.body.clone())
    else {
        panic!("the provider is served, without the credential")
    };
    assert!(!format!("{body:?}").contains("sk-upstream"));
}

fn route_obj(name: &str, models: Value, headers: Value) -> SourceObject {
    obj(
        &format!("{name}.yaml#1"),
        json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
            "metadata": {"name": name},
            "spec": {"match": {"models": models, "headers": headers}, "targets": [{"provider": "openai"}]}
        }),
    )
}

#[test]
fn a_route_whose_every_model_is_taken_first_is_shadowed() {
    let mut objects = base();
    // `chat` (from base) serves gpt-4o without header matches and sorts before `later`.
    objects.push(route_obj("later", json!(["gpt-4o"]), json!([])));
    // Split by header: reachable only when it comes first, which it does not here.
    objects.push(route_obj(
        "planner",
        json!(["gpt-4o"]),
        json!([{"name": "x-step", "value": "plan"}]),
    ));
    // One of its models is its own.
    objects.push(route_obj("partly", json!(["gpt-4o", "gpt-5"]), json!([])));
    // A name before `chat`: it takes gpt-4o, and `chat` is the shadowed one.
    let c = run(objects.clone());
    let reachable = |c: &Compiled, name: &str| {
        let cond = report(c, "LLMRoute", name)
            .condition(ConditionType::Reachable)
            .unwrap()
            .clone();
        (cond.status, cond.reason, cond.message)
    };
    let (status, reason, message) = reachable(&c, "later");
    assert_eq!((status, reason.as_str()), ("False", "Shadowed"));
    assert!(message.contains("LLMRoute chat"), "{message}");
    assert_eq!(reachable(&c, "planner").0, "False");
    assert_eq!(reachable(&c, "partly").0, "True");
    assert_eq!(reachable(&c, "chat").0, "True");

    // Header matches, and named before `chat`: tried first, so reachable.
    objects.push(route_obj(
        "a-agent",
        json!(["gpt-4o"]),
        json!([{"name": "x-step", "value": "plan"}]),
    ));
    assert_eq!(reachable(&run(objects.clone()), "a-agent").0, "True");
    objects.retain(|o| o.origin != "a-agent.yaml#1");

    objects.push(route_obj("a-first", json!(["gpt-4o"]), json!([])));
    let c = run(objects.clone());
    assert_eq!(reachable(&c, "chat").0, "False");
    assert_eq!(reachable(&c, "a-first").0, "True");

    // A key limited to some routes may reach any of them: nothing is called shadowed.
    objects.push(obj(
        "k2.yaml#1",
        json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
            "metadata": {"name": "bob"},
            "spec": {"secretRef": {"name": "alice-key"}, "routes": ["later"]}
        }),
    ));
    let c = run(objects);
    assert_eq!(reachable(&c, "later").0, "True");
}

#[test]
fn a_glob_is_shadowed_by_one_as_specific_that_matches_every_name_it_does() {
    let reachable = |objects: &[SourceObject], name: &str| {
        let c = run(objects.to_vec());
        let cond = report(&c, "LLMRoute", name)
            .condition(ConditionType::Reachable)
            .unwrap()
            .clone();
        (cond.status, cond.message)
    };
    let mut objects = base();
    // `*gpt-4o*` has the same literal characters as `gpt-4o*` and a `*` wherever it has
    // one: every name `tail` matches goes to `a-wide` first (same specificity, and its
    // name sorts first).
    objects.push(route_obj("a-wide", json!(["*gpt-4o*"]), json!([])));
    objects.push(route_obj("tail", json!(["gpt-4o*"]), json!([])));
    let (status, message) = reachable(&objects, "tail");
    assert_eq!(status, "False");
    assert!(message.contains("LLMRoute a-wide"), "{message}");
    assert_eq!(reachable(&objects, "a-wide").0, "True");
    // `gpt-4o*` does not match `xgpt-4o`, so it does not shadow `*gpt-4o*` even when named
    // first; a less specific glob never shadows a more specific one, whatever its name.
    objects.push(route_obj("0-any", json!(["*"]), json!([])));
    objects.push(route_obj("0-prefix", json!(["gpt-4o*"]), json!([])));
    objects.push(route_obj("z-wide", json!(["*gpt-4o*"]), json!([])));
    assert_eq!(
        reachable(&objects, "z-wide").0,
        "False",
        "a-wide is the same"
    );
    objects.retain(|o| o.origin != "a-wide.yaml#1");
    assert_eq!(reachable(&objects, "z-wide").0, "True");
    let (status, message) = reachable(&objects, "tail");
    assert_eq!(status, "False");
    assert!(message.contains("LLMRoute 0-prefix"), "{message}");
    // The exact name still wins over every glob.
    assert_eq!(reachable(&objects, "chat").0, "True");
}

/// Objects of every kind that name, select and shadow each other, in two namespaces:
/// the pool that random edits draw from.
fn pool() -> Vec<Value> {
    let mut out = Vec::new();
    let meta = |name: &str, ns: &str, labels: Value| json!({"name": name, "namespace": ns, "labels": labels});
    for ns in ["a", "b"] {
        for (name, labels) in [
            ("s1", json!({"tollgate.dev/credential": "true"})),
            ("s2", json!({})),
        ] {
            for value in [
                "tg-value-one-0123456789",
                "tg-value-two-0123456789",
                "short",
            ] {
                out.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(name, ns, labels.clone()),
                                "stringData": {"key": value, "apiKey": value, "token": value}}));
            }
        }
        out.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("s1", ns, json!({"tollgate.dev/credential": "true"})),
                        "data": {"key": 5}}));
        for (name, secret) in [("p1", "s1"), ("p1", "s2"), ("p2", "s1")] {
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider", "metadata": meta(name, ns, json!({})),
                            "spec": {"type": "openai", "credentials": [{"secretRef": {"name": secret}}],
                                     "models": [{"name": "m-priced", "inputPerMillionUsd": 1.0, "outputPerMillionUsd": 2.0}]}}));
        }
        for (name, models, headers, provider, model) in [
            ("r1", json!(["gpt-4o"]), json!([]), "p1", json!("m-priced")),
            (
                "r0",
                json!(["gpt-4o", "x*"]),
                json!([]),
                "p2",
                json!("unpriced"),
            ),
            (
                "r2",
                json!(["gpt-4o"]),
                json!([{"name": "x-t", "value": "1"}]),
                "p3",
                Value::Null,
            ),
            ("r3", json!(["x*"]), json!([]), "p1", json!("m-priced")),
            ("q", json!(["*x*"]), json!([]), "p1", json!("m-priced")),
        ] {
            let mut target = json!({"provider": provider});
            if !model.is_null() {
                target["model"] = model;
            }
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute", "metadata": meta(name, ns, json!({})),
                            "spec": {"match": {"models": models, "headers": headers}, "targets": [target]}}));
        }
        out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute", "metadata": meta("r1", ns, json!({})),
                        "spec": {"match": {"models": ["x"]}, "targets": []}}));
        for (name, labels, spec) in [
            (
                "k1",
                json!({"team": "x"}),
                json!({"secretRef": {"name": "s1"}}),
            ),
            (
                "k1",
                json!({"team": "y"}),
                json!({"secretRef": {"name": "s1"}, "budgetRefs": [{"name": "b2"}], "mcpToolPolicyRef": {"name": "t1"}}),
            ),
            (
                "k2",
                json!({"team": "x"}),
                json!({"secretRef": {"name": "s2"}, "routes": ["r1"]}),
            ),
            (
                "k2",
                json!({}),
                json!({"secretRef": {"name": "s1", "key": "token"}, "budgetRefs": [{"name": "b9"}]}),
            ),
            (
                "k3",
                json!({"team": "y"}),
                json!({"secretRef": {"name": "s1", "key": "apiKey"}}),
            ),
        ] {
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey", "metadata": meta(name, ns, labels),
                            "spec": spec}));
        }
        for (name, spec) in [
            (
                "b1",
                json!({"period": "day", "limit": {"usd": 5.0}, "selector": {"matchLabels": {"team": "x"}}}),
            ),
            (
                "b1",
                json!({"period": "day", "limit": {"tokens": 5}, "parentRef": {"name": "b2"}}),
            ),
            (
                "b2",
                json!({"period": "month", "limit": {"usd": 50.0}, "parentRef": {"name": "b3"}}),
            ),
            (
                "b2",
                json!({"period": "month", "limit": {"tokens": 50}, "selector": {"matchLabels": {"team": "y"}}}),
            ),
            (
                "b3",
                json!({"period": "month", "limit": {"tokens": 500}, "parentRef": {"name": "b1"}}),
            ),
        ] {
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget", "metadata": meta(name, ns, json!({})),
                            "spec": spec}));
        }
        for (name, secret) in [("m1", "s1"), ("m1", "s2"), ("m2", "s9")] {
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "MCPServer", "metadata": meta(name, ns, json!({})),
                            "spec": {"url": "http://127.0.0.1:1/mcp", "auth": {"header": {"name": "authorization", "secretRef": {"name": secret}}}}}));
        }
        for (name, selector, server) in [
            ("t1", json!({"matchLabels": {"team": "x"}}), "m1"),
            ("t1", json!({}), "m2"),
            ("t2", json!({"matchLabels": {"team": "y"}}), "m3"),
        ] {
            out.push(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "MCPToolPolicy", "metadata": meta(name, ns, json!({})),
                            "spec": {"selector": selector, "rules": [{"server": server, "allow": ["*"]}]}}));
        }
    }
    out.push(
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Gadget", "metadata": {"name": "g"}}),
    );
    out
}

#[test]
fn any_sequence_of_changes_compiles_to_what_a_first_compile_of_the_result_does() {
    let pool = pool();
    let validator = Validator::new();
    for seed in 0..6 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut compiler = Compiler::default();
        // Group name -> its objects (or an unreadable file).
        let mut state: BTreeMap<String, Result<Vec<Arc<Value>>, String>> = BTreeMap::new();
        for step in 0..150 {
            let mut change = Change::default();
            for _ in 0..rng.usize(1..=3) {
                let group = format!("g{:02}", rng.usize(0..16));
                let content = match rng.usize(0..10) {
                    0 => None,
                    1 => Some(Err("not YAML".to_string())),
                    _ => Some(Ok((0..rng.usize(1..=4))
                        .map(|_| Arc::new(pool[rng.usize(0..pool.len())].clone()))
                        .collect::<Vec<_>>())),
                };
                let input = content.as_ref().map(|c| match c {
                    Ok(objects) => GroupInput {
                        objects: objects
                            .iter()
                            .enumerate()
                            .map(|(i, v)| SourceObject {
                                origin: format!("{group}#{}", i + 1),
                                value: v.clone(),
                            })
                            .collect(),
                        errors: vec![],
                    },
                    Err(message) => GroupInput {
                        objects: vec![],
                        errors: vec![SourceError {
                            origin: group.clone(),
                            message: message.clone(),
                        }],
                    },
                });
                match content {
                    Some(c) => state.insert(group.clone(), c),
                    None => state.remove(&group),
                };
                change.groups.push((Arc::from(group.as_str()), input));
            }
            let got = compiler.update(&validator, "default", change);
            let mut whole = Inputs::default();
            for (group, content) in &state {
                match content {
                    Ok(objects) => {
                        whole
                            .objects
                            .extend(objects.iter().enumerate().map(|(i, v)| SourceObject {
                                origin: format!("{group}#{}", i + 1),
                                value: v.clone(),
                            }))
                    }
                    Err(message) => whole.errors.push(SourceError {
                        origin: group.clone(),
                        message: message.clone(),
                    }),
                }
            }
            let want = compile(&whole, &validator, "default");
            let context = format!("seed {seed} step {step}");
            for (k, r) in want.report_map.iter() {
                assert_eq!(got.report_map.get(k), Some(r), "{context}: report {k:?}");
            }
            assert_eq!(got.report_map.len(), want.report_map.len(), "{context}");
            for t in pb::type_url::ALL {
                let names = |c: &Compiled| -> Vec<(String, String)> {
                    c.resources[t]
                        .iter()
                        .map(|(n, r)| (n.clone(), r.version.clone()))
                        .collect()
                };
                assert_eq!(names(&got), names(&want), "{context}: {t}");
            }
            assert_eq!(got.version, want.version, "{context}");
            assert_eq!(got.reports_version, want.reports_version, "{context}");
            let errors = |c: &Compiled| {
                let mut e: Vec<String> = c
                    .source_errors
                    .iter()
                    .map(|e| format!("{}: {}", e.origin, e.message))
                    .collect();
                e.sort();
                e
            };
            assert_eq!(errors(&got), errors(&want), "{context}");
        }
    }
}
