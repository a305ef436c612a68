use serde_json::json;

use super::*;

fn route() -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": "chat", "namespace": "default"},
        "spec": {
            "match": {"models": ["gpt-4o*"]},
            "targets": [{"provider": "openai", "weight": 3}, {"provider": "backup"}]
        }
    })
}

fn errors(kind: Kind, v: &Value) -> Vec<String> {
    match Validator::new().validate(kind, v) {
        Ok(()) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn valid_route_passes() {
    assert_eq!(errors(Kind::LlmRoute, &route()), Vec::<String>::new());
}

#[test]
fn unknown_field_is_refused() {
    let mut r = route();
    r["spec"]["targets"][0]["wieght"] = json!(2);
    assert_eq!(
        errors(Kind::LlmRoute, &r),
        vec!["spec.targets[0].wieght: field not declared in schema"]
    );
}

#[test]
fn wrong_type_is_refused() {
    let mut r = route();
    r["spec"]["targets"][0]["weight"] = json!("heavy");
    let e = errors(Kind::LlmRoute, &r);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "spec.targets[0].weight: Invalid value: \"string\": must be of type integer"
        )
    );
}

#[test]
fn bad_enum_is_refused() {
    let mut r = route();
    r["spec"]["strategy"] = json!("random");
    let e = errors(Kind::LlmRoute, &r);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("spec.strategy: Unsupported value: \"random\""),
        "{e:?}"
    );
}

#[test]
fn ranges_lengths_and_required() {
    let mut r = route();
    r["spec"]["targets"][0]["weight"] = json!(10001);
    r["spec"]["match"]["models"] = json!([]);
    r["spec"].as_object_mut().unwrap().remove("targets");
    let e = errors(Kind::LlmRoute, &r);
    assert!(
        e.contains(&"spec.match.models: must have at least 1 items".to_string()),
        "{e:?}"
    );
    assert!(
        e.contains(&"spec.targets: Required value".to_string()),
        "{e:?}"
    );
}

#[test]
fn pattern_is_enforced() {
    let mut r = route();
    r["spec"]["timeouts"] = json!({"request": "ten seconds"});
    let e = errors(Kind::LlmRoute, &r);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("spec.timeouts.request: \"ten seconds\" does not match pattern"));
}

#[test]
fn cel_rule_is_enforced() {
    let p = json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "LLMProvider",
        "metadata": {"name": "azure"},
        "spec": {"type": "azure-openai", "apiVersion": "2024-10-21", "credentials": []}
    });
    let e = errors(Kind::LlmProvider, &p);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("endpoint is required for azure-openai"),
        "{e:?}"
    );

    let mut ok = p.clone();
    ok["spec"]["endpoint"] = json!("https://example.openai.azure.com");
    assert_eq!(errors(Kind::LlmProvider, &ok), Vec::<String>::new());

    let b = json!({
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "Budget",
        "metadata": {"name": "team"},
        "spec": {"selector": {"matchLabels": {"team": "a"}}, "limit": {}, "period": "month"}
    });
    let e = errors(Kind::Budget, &b);
    assert!(
        e.iter()
            .any(|m| m.contains("limit needs usd, tokens, or both")),
        "{e:?}"
    );
}

#[test]
fn metadata_name_must_be_dns() {
    let mut r = route();
    r["metadata"]["name"] = json!("Chat_Route");
    let e = errors(Kind::LlmRoute, &r);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("metadata.name: Invalid value"));
}

#[test]
fn date_time_format() {
    assert!(is_rfc3339("2026-01-31T12:00:00Z"));
    assert!(is_rfc3339("2026-01-31T12:00:00.5+02:00"));
    assert!(!is_rfc3339("2026-01-31"));
    assert!(!is_rfc3339("2026-01-31T12:00:00"));
}

#[test]
fn nulls_are_dropped_and_whole_numbers_are_integers_as_an_api_server_stores_them() {
    let v = Validator::new();
    let mut r = route();
    r["spec"]["strategy"] = Value::Null;
    r["spec"]["targets"][0]["weight"] = json!(2.0);
    assert_eq!(errors(Kind::LlmRoute, &r), Vec::<String>::new());
    let spec = v.normalize_spec(Kind::LlmRoute, &r["spec"]);
    assert!(spec.get("strategy").is_none(), "{spec}");
    assert!(spec["targets"][0]["weight"].is_i64(), "{spec}");
    // A fraction stays a number, and is refused.
    r["spec"]["targets"][0]["weight"] = json!(2.5);
    assert_eq!(
        errors(Kind::LlmRoute, &r),
        vec!["spec.targets[0].weight: Invalid value: \"number\": must be of type integer"]
    );
}

#[test]
fn integers_past_64_signed_bits_and_32_bit_fields_past_theirs_are_refused() {
    let budget = |tokens: Value| {
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget",
               "metadata": {"name": "b"},
               "spec": {"selector": {}, "limit": {"tokens": tokens}, "period": "day"}})
    };
    assert!(errors(Kind::Budget, &budget(json!(i64::MAX))).is_empty());
    assert_eq!(
        errors(Kind::Budget, &budget(json!(u64::MAX))),
        vec!["spec.limit.tokens: Invalid value: \"number\": must be of type integer"]
    );
    let key = json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
                     "metadata": {"name": "k"},
                     "spec": {"secretRef": {"name": "s"}, "limits": {"concurrency": 5_000_000_000u64}}});
    assert_eq!(
        errors(Kind::VirtualKey, &key),
        vec!["spec.limits.concurrency: must be less than or equal to 4294967295"]
    );
}

#[test]
fn label_and_annotation_syntax_is_checked() {
    let mut r = route();
    r["metadata"]["labels"] = json!({"example.com/team": "a-b_c.d", "empty": ""});
    r["metadata"]["annotations"] = json!({"note": "any text at all"});
    assert_eq!(errors(Kind::LlmRoute, &r), Vec::<String>::new());
    for (key, labels) in [
        ("labels", json!({"team": "not a value"})),
        ("labels", json!({"bad key!": "x"})),
        ("labels", json!({"Not_A_Domain/x": "y"})),
        ("labels", json!({"x": "a".repeat(64)})),
        ("annotations", json!({"no spaces": "x"})),
    ] {
        let mut r = route();
        r["metadata"][key] = labels.clone();
        let e = errors(Kind::LlmRoute, &r);
        assert!(
            e.len() == 1 && e[0].starts_with(&format!("metadata.{key}: Invalid value")),
            "{labels}: {e:?}"
        );
    }
}
