//! Kubernetes resource types of Tollgate (`tollgate.dev/v1alpha1`): the spec and status of
//! the six kinds operators write, the generated CRDs, and a validator that checks an object
//! against those CRDs (OpenAPI schema and CEL rules) the way an apiserver would, so that
//! local mode accepts exactly what a cluster accepts.

// kube's derive takes repeated `printcolumn(...)` arguments, which this lint misreads as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod budget;
pub mod common;
pub mod mcp;
pub mod provider;
pub mod route;
pub mod usage_ledger;
pub mod validate;
pub mod virtual_key;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResourceExt;

pub use budget::{Budget, BudgetSpec};
pub use mcp::{McpServer, McpServerSpec, McpToolPolicy, McpToolPolicySpec};
pub use provider::{LlmProvider, LlmProviderSpec};
pub use route::{LlmRoute, LlmRouteSpec};
pub use usage_ledger::{UsageLedger, UsageLedgerSpec};
pub use virtual_key::{VirtualKey, VirtualKeySpec};

pub const GROUP: &str = "tollgate.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "tollgate.dev/v1alpha1";

/// The six kinds, in the order config is compiled and printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    LlmProvider,
    LlmRoute,
    VirtualKey,
    Budget,
    McpServer,
    McpToolPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::LlmProvider,
        Kind::LlmRoute,
        Kind::VirtualKey,
        Kind::Budget,
        Kind::McpServer,
        Kind::McpToolPolicy,
    ];

    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::LlmProvider => "LLMProvider",
            Kind::LlmRoute => "LLMRoute",
            Kind::VirtualKey => "VirtualKey",
            Kind::Budget => "Budget",
            Kind::McpServer => "MCPServer",
            Kind::McpToolPolicy => "MCPToolPolicy",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn crd(self) -> CustomResourceDefinition {
        let mut crd = match self {
            Kind::LlmProvider => LlmProvider::crd(),
            Kind::LlmRoute => LlmRoute::crd(),
            Kind::VirtualKey => VirtualKey::crd(),
            Kind::Budget => Budget::crd(),
            Kind::McpServer => McpServer::crd(),
            Kind::McpToolPolicy => McpToolPolicy::crd(),
        };
        // An API server checks only that an integer fits 64 bits: a 32-bit field gets
        // its bound written out, so that a larger value is refused on `kubectl apply`
        // rather than by the controller afterwards.
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                && let Ok(mut v) = serde_json::to_value(&*schema)
            {
                bound_32_bit_integers(&mut v);
                if let Ok(bounded) = serde_json::from_value(v) {
                    *schema = bounded;
                }
            }
        }
        // A Budget leads with its spend; its conditions show with `kubectl get -o wide`.
        let priority = (self == Kind::Budget).then_some(1);
        for version in &mut crd.spec.versions {
            version
                .additional_printer_columns
                .get_or_insert_with(Vec::new)
                .extend(status_columns(priority));
        }
        crd
    }
}

/// Sets `maximum` on every `uint32` or `int32` integer schema that has none.
fn bound_32_bit_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let max = match map.get("format").and_then(serde_json::Value::as_str) {
                Some("uint32") => Some(f64::from(u32::MAX)),
                Some("int32") => Some(f64::from(i32::MAX)),
                _ => None,
            };
            if let Some(max) = max
                && !map.contains_key("maximum")
            {
                map.insert("maximum".into(), serde_json::Value::from(max));
            }
            map.values_mut().for_each(bound_32_bit_integers);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(bound_32_bit_integers),
        _ => {}
    }
}

/// The columns every kind shows after its own: whether it is accepted and programmed, how
/// many dataplanes hold it (with `-o wide`), and its age.
fn status_columns(conditions_priority: Option<i32>) -> [CustomResourceColumnDefinition; 5] {
    let column =
        |name: &str, type_: &str, json_path: &str, priority| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            priority,
            description: None,
            format: None,
        };
    let condition =
        |type_: &str, field: &str| format!(".status.conditions[?(@.type==\"{type_}\")].{field}");
    [
        column(
            "Accepted",
            "string",
            &condition("Accepted", "status"),
            conditions_priority,
        ),
        // Beside Accepted: an object can be accepted and served while a reference is
        // missing (a route whose provider does not exist answers 503).
        column(
            "Resolved",
            "string",
            &condition("ResolvedRefs", "status"),
            conditions_priority,
        ),
        column(
            "Programmed",
            "string",
            &condition("Programmed", "status"),
            conditions_priority,
        ),
        CustomResourceColumnDefinition {
            description: Some(
                "How many connected dataplanes hold the current version (kubectl get -o wide)"
                    .into(),
            ),
            ..column(
                "Dataplanes",
                "string",
                &condition("Programmed", "message"),
                Some(1),
            )
        },
        column("Age", "date", ".metadata.creationTimestamp", None),
    ]
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The generated CRD YAML of every kind, as committed under `crds/`: file name and content.
/// Mapping keys that YAML 1.1 readers (kubectl, Helm, PyYAML) take for booleans or null
/// unless quoted; the emitter, which writes YAML 1.2, leaves them bare.
const YAML11_SPECIAL: [&str; 25] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
];

/// `yaml` with every block-mapping key that YAML 1.1 would read as a boolean or null
/// quoted: the schema property `on` (an LLMRoute's `retries.on`) otherwise becomes the
/// key `true` once kubectl or Helm has read the CRD.
pub fn quote_yaml11_keys(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() + 16);
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_start_matches(' ');
        let indent = &line[..line.len() - body.len()];
        let quoted = YAML11_SPECIAL.iter().find_map(|k| {
            let rest = body.strip_prefix(k)?.strip_prefix(':')?;
            (rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\n'))
                .then(|| format!("{indent}'{k}':{rest}"))
        });
        match quoted {
            Some(q) => out.push_str(&q),
            None => out.push_str(line),
        }
    }
    out
}

pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = quote_yaml11_keys(&serde_yaml::to_string(&crd)?);
            Ok((
                format!("{name}.yaml"),
                format!("# Generated by `make generate` from crds/src; do not edit.\n{yaml}"),
            ))
        })
        .collect()
}

/// Every CRD Tollgate installs: the six kinds operators write, and the controller's own
/// usage ledger.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    Kind::ALL
        .into_iter()
        .map(Kind::crd)
        .chain([UsageLedger::crd()])
        .collect()
}

#[cfg(test)]
mod yaml_tests {
    use super::*;

    #[test]
    fn keys_yaml_11_reads_as_booleans_are_quoted_and_nothing_else_changes() {
        let yaml =
            "on:\n  type: array\nitems:\n  enum:\n  - on\n  - 'yes'\nno: 1\nnote: on\nonly: x\n";
        assert_eq!(
            quote_yaml11_keys(yaml),
            "'on':\n  type: array\nitems:\n  enum:\n  - on\n  - 'yes'\n'no': 1\nnote: on\nonly: x\n"
        );
    }

    #[test]
    fn the_crds_mean_the_same_with_the_keys_quoted() {
        for kind in Kind::ALL {
            let plain = serde_yaml::to_string(&kind.crd()).unwrap();
            let quoted = quote_yaml11_keys(&plain);
            let a: serde_yaml::Value = serde_yaml::from_str(&plain).unwrap();
            let b: serde_yaml::Value = serde_yaml::from_str(&quoted).unwrap();
            assert_eq!(a, b, "{}", kind.as_str());
        }
        let routes = crd_files()
            .unwrap()
            .into_iter()
            .find(|(name, _)| name.starts_with("llmroutes"))
            .unwrap()
            .1;
        assert!(routes.contains("'on':"), "retries.on is quoted");
    }
}
