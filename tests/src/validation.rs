//! The validation parity table (`tests/validation/cases.yaml`): objects that local mode and
//! a real API server must judge alike.

use serde::Deserialize;
use serde_json::Value;

use crate::harness::workspace;

#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    pub valid: bool,
    /// The field path the refusal names.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub why: Option<String>,
    pub object: Value,
}

impl Case {
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    /// What is wrong with `judge`'s verdict, or `None` when it is the table's.
    pub fn disagreement(&self, verdict: &Result<(), String>, judge: &str) -> Option<String> {
        (!self.agrees(verdict)).then(|| {
            format!(
                "{} {}: table says {} {:?}, {judge} {verdict:?}",
                self.kind(),
                self.name(),
                if self.valid { "valid" } else { "invalid at" },
                self.path.as_deref().unwrap_or("")
            )
        })
    }

    /// Whether a verdict (`Ok` or the refusal's message) is the table's: the same outcome,
    /// and a refusal that names the path.
    pub fn agrees(&self, verdict: &Result<(), String>) -> bool {
        match (verdict, self.valid) {
            (Ok(()), true) => true,
            (Err(message), false) => self.path.as_ref().is_none_or(|p| names_path(message, p)),
            _ => false,
        }
    }
}

/// Whether `message` names `path` as the field at fault (`path:`, `path ` or `"path"` as
/// in the API server's "spec.x: Invalid value", "spec.x in body" and `unknown field
/// "spec.x"`).
fn names_path(message: &str, path: &str) -> bool {
    message.match_indices(path).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + path.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '.' || c == ']' || c == '[')
            && matches!(after, Some(':' | ' ' | '"') | None)
    })
}

pub fn cases() -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(workspace().join("tests/validation/cases.yaml"))?;
    Ok(serde_yaml::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_named_only_as_a_whole_field() {
        assert!(names_path("spec.limit: Invalid value", "spec.limit"));
        assert!(names_path("x; spec.limit in body", "spec.limit"));
        assert!(!names_path("spec.limit.usd: Invalid value", "spec.limit"));
        assert!(!names_path("spec.targets[0].weight: x", "spec.targets"));
        assert!(!names_path("a spec: b", "spec.x"));
        assert!(names_path("spec: Invalid value", "spec"));
        assert!(names_path("unknown field \"spec.x\"", "spec.x"));
        assert!(!names_path("spec.limit: x", "spec"));
    }

    #[test]
    fn every_case_is_named_once_and_says_what_it_refuses() {
        let cases = cases().unwrap();
        let mut names = std::collections::HashSet::new();
        for c in &cases {
            assert!(names.insert(c.name().to_string()), "{} twice", c.name());
            assert_eq!(
                c.valid,
                c.path.is_none(),
                "{}: a path exactly when invalid",
                c.name()
            );
        }
        assert!(cases.len() >= 27, "{} cases", cases.len());
    }
}
