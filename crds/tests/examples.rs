//! Every manifest under `examples/` is valid against the CRD YAML committed under `crds/`
//! (what `kubectl apply` would check), and the same objects with an unknown field, a
//! wrong type or a bad enum value are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_crds::Kind;
use tollgate_crds::validate::Validator;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn committed_validator() -> Validator {
    let mut files = Vec::new();
    yaml_files(&root().join("crds"), &mut files);
    let crds: Vec<_> = files
        .iter()
        .flat_map(|f| documents(f))
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    assert_eq!(
        crds.len(),
        tollgate_crds::all_crds().len(),
        "one committed CRD per kind, and the usage ledger's"
    );
    Validator::from_crds(crds)
}

fn examples() -> Vec<(String, Kind, Value)> {
    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    assert!(!files.is_empty());
    let mut out = Vec::new();
    for file in files {
        for (i, doc) in documents(&file).into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if doc["apiVersion"] == "v1" && kind == "Secret" {
                continue;
            }
            assert_eq!(
                doc["apiVersion"],
                "tollgate.dev/v1alpha1",
                "{}#{}",
                file.display(),
                i + 1
            );
            let kind = Kind::from_kind(kind)
                .unwrap_or_else(|| panic!("unknown kind in {}", file.display()));
            out.push((format!("{}#{}", file.display(), i + 1), kind, doc));
        }
    }
    out
}

#[test]
fn every_example_is_valid() {
    let validator = committed_validator();
    for (origin, kind, doc) in examples() {
        if let Err(errors) = validator.validate(kind, &doc) {
            panic!("{origin}: {errors:?}");
        }
    }
}

/// The first string leaf under `spec`, as a JSON pointer.
fn first_string(v: &Value, at: String) -> Option<String> {
    match v {
        Value::String(_) => Some(at),
        Value::Object(m) => m
            .iter()
            .find_map(|(k, v)| first_string(v, format!("{at}/{k}"))),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_string(v, format!("{at}/{i}"))),
        _ => None,
    }
}

#[test]
fn broken_examples_are_refused() {
    let validator = committed_validator();
    let mut enum_cases = 0;
    for (origin, kind, doc) in examples() {
        let mut unknown = doc.clone();
        unknown["spec"]["notAField"] = json!(true);
        let errors = validator.validate(kind, &unknown).unwrap_err();
        assert!(
            errors.iter().any(|e| e.path == "spec.notAField"),
            "{origin}: {errors:?}"
        );

        let mut wrong_type = doc.clone();
        let pointer = first_string(&doc["spec"], "/spec".into()).unwrap();
        *wrong_type.pointer_mut(&pointer).unwrap() = json!(12345);
        let errors = validator.validate(kind, &wrong_type).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("must be of type string")),
            "{origin} {pointer}: {errors:?}"
        );

        let enum_field = match kind {
            Kind::LlmProvider => Some("/spec/type"),
            Kind::LlmRoute => Some("/spec/strategy"),
            _ => None,
        };
        if let Some(field) = enum_field {
            let mut bad_enum = doc.clone();
            if bad_enum.pointer(field).is_none() {
                bad_enum["spec"]["strategy"] = json!("weighted");
            }
            *bad_enum.pointer_mut(field).unwrap() = json!("no-such-value");
            let errors = validator.validate(kind, &bad_enum).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.message.starts_with("Unsupported value")),
                "{origin}: {errors:?}"
            );
            enum_cases += 1;
        }
    }
    assert!(enum_cases >= 3);
}

#[test]
fn committed_crds_match_the_types() {
    for (name, yaml) in tollgate_crds::crd_files().unwrap() {
        let committed =
            std::fs::read_to_string(root().join("crds").join(&name)).unwrap_or_default();
        assert!(
            committed == yaml,
            "crds/{name} is stale: run `make generate`"
        );
    }
}

/// `compatibility` belongs to OpenAI-format providers only, and its header names are
/// checked before any dataplane sees them.
#[test]
fn compatibility_is_checked() {
    let validator = committed_validator();
    let (origin, _, doc) = examples()
        .into_iter()
        .find(|(origin, _, d)| {
            origin.contains("openai-compatible") && d["metadata"]["name"] == "openrouter"
        })
        .unwrap();
    let mut on_bedrock = doc.clone();
    on_bedrock["spec"]["type"] = json!("bedrock");
    on_bedrock["spec"]["region"] = json!("us-east-1");
    let errors = validator
        .validate(Kind::LlmProvider, &on_bedrock)
        .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("compatibility applies to")),
        "{origin}: {errors:?}"
    );
    let mut bad_header = doc.clone();
    bad_header["spec"]["compatibility"]["headers"][0]["name"] = json!("bad name");
    assert!(validator.validate(Kind::LlmProvider, &bad_header).is_err());
    let mut bad_field = doc;
    bad_field["spec"]["compatibility"]["maxTokensField"] = json!("tokens");
    assert!(validator.validate(Kind::LlmProvider, &bad_field).is_err());
}
