//! Checks an object against its generated CRD the way an apiserver does on create: the
//! structural OpenAPI schema (types, required fields, enums, patterns, ranges, lengths, no
//! unknown fields) and then the CEL rules (`x-kubernetes-validations`). Local mode runs
//! every manifest through this, so a file that `kubectl apply` would refuse is refused here
//! too, with the same kind of message.

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{CompiledSchema, Validator as CelValidator, compile_schema};
use regex::Regex;
use serde_json::{Map, Value};

use crate::Kind;

/// One reason an object is invalid, at a field path such as `spec.targets[0].weight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All the reasons, joined for a status message or a log line.
pub fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

struct KindSchema {
    /// The object's schema without `status` (ignored on create).
    schema: Value,
    cel: CompiledSchema,
    /// Whether the schema has CEL rules at all.
    has_rules: bool,
}

/// Compiled schemas of every kind; build once, use for every object.
pub struct Validator {
    kinds: HashMap<Kind, KindSchema>,
    patterns: HashMap<String, Regex>,
    cel: CelValidator,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator").finish_non_exhaustive()
    }
}

const NAME_MAX: usize = 253;

impl Validator {
    /// Validates against the CRDs this crate generates.
    pub fn new() -> Self {
        Self::from_crds(Kind::ALL.into_iter().map(Kind::crd))
    }

    /// Validates against the given CRDs (for instance the YAML committed under `crds/`).
    /// Kinds without a CRD here are refused.
    pub fn from_crds(crds: impl IntoIterator<Item = CustomResourceDefinition>) -> Self {
        let mut kinds = HashMap::new();
        let mut patterns = HashMap::new();
        for crd in crds {
            let Some(kind) = Kind::from_kind(&crd.spec.names.kind) else {
                continue;
            };
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            collect_patterns(&schema, &mut patterns);
            let cel = compile_schema(&schema);
            let has_rules = serde_json::to_string(&schema)
                .is_ok_and(|t| t.contains("x-kubernetes-validations"));
            let mut schema = schema;
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("status");
            }
            kinds.insert(
                kind,
                KindSchema {
                    schema,
                    cel,
                    has_rules,
                },
            );
        }
        Self {
            kinds,
            patterns,
            cel: CelValidator::new(),
        }
    }

    /// `spec` as an API server stores it before validating: a `null` where the schema does
    /// not allow one is dropped (so the field's default applies), and a number with no
    /// fraction where an integer is wanted (`2.0`) becomes that integer.
    pub fn normalize_spec(&self, kind: Kind, spec: &Value) -> Value {
        let mut spec = spec.clone();
        if let Some(schema) = self
            .kinds
            .get(&kind)
            .and_then(|ks| ks.schema.get("properties"))
            .and_then(|p| p.get("spec"))
        {
            normalize(schema, &mut spec);
        }
        spec
    }

    /// Validates a whole object (`apiVersion`, `kind`, `metadata`, `spec`; `status` is
    /// ignored, as the apiserver ignores it on create when the status subresource is on),
    /// as [`Validator::normalize_spec`] leaves it.
    pub fn validate(&self, kind: Kind, object: &Value) -> Result<(), Vec<FieldError>> {
        self.validate_normalized(kind, object).map(|_| ())
    }

    /// [`Validator::validate`], giving the normalized `spec` (`null` when there is none)
    /// of a valid object.
    pub fn validate_normalized(
        &self,
        kind: Kind,
        object: &Value,
    ) -> Result<Value, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(ks) = self.kinds.get(&kind) else {
            return Err(vec![FieldError {
                path: String::new(),
                message: format!("no schema for kind {kind}"),
            }]);
        };
        let Some(obj) = object.as_object() else {
            return Err(vec![err("", "object must be a mapping")]);
        };
        check_metadata(obj.get("metadata"), &mut errors);
        let mut body = Map::new();
        for (key, value) in obj {
            match key.as_str() {
                "status" | "metadata" | "apiVersion" | "kind" => {}
                "spec" => {
                    body.insert(key.clone(), self.normalize_spec(kind, value));
                }
                _ => {
                    body.insert(key.clone(), value.clone());
                }
            }
        }
        let body = Value::Object(body);
        self.check(&ks.schema, &body, "", &mut errors);
        if errors.is_empty() && ks.has_rules {
            // CEL rules assume a structurally valid object.
            if let Err(cel_errors) = self.cel.validate_compiled(&ks.cel, &body, None) {
                for e in cel_errors {
                    errors.push(FieldError {
                        path: e.field_path.clone(),
                        message: e.message.clone(),
                    });
                }
            }
        }
        if errors.is_empty() {
            let Value::Object(mut body) = body else {
                return Ok(Value::Null);
            };
            Ok(body.remove("spec").unwrap_or(Value::Null))
        } else {
            Err(errors)
        }
    }

    fn check(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        let Some(s) = schema.as_object() else {
            return;
        };
        if value.is_null() {
            if !s.get("nullable").and_then(Value::as_bool).unwrap_or(false) {
                errors.push(err(path, "must not be null"));
            }
            return;
        }
        let int_or_string = s
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if int_or_string {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                errors.push(err(path, "must be an integer or a string"));
            }
            return;
        }
        let preserve = s
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match s.get("type").and_then(Value::as_str) {
            Some("object") => match value.as_object() {
                Some(map) => self.check_object(s, map, path, preserve, errors),
                None => errors.push(type_err(path, "object", value)),
            },
            Some("array") => match value.as_array() {
                Some(items) => self.check_array(s, items, path, errors),
                None => errors.push(type_err(path, "array", value)),
            },
            Some("string") => match value.as_str() {
                Some(text) => self.check_string(s, text, path, errors),
                None => errors.push(type_err(path, "string", value)),
            },
            Some("integer") => {
                // An API server keeps integers as signed 64-bit numbers.
                if value.is_i64() {
                    check_number(s, value, path, errors);
                } else {
                    errors.push(type_err(path, "integer", value));
                }
            }
            Some("number") => {
                if value.is_number() {
                    check_number(s, value, path, errors);
                } else {
                    errors.push(type_err(path, "number", value));
                }
            }
            Some("boolean") if !value.is_boolean() => {
                errors.push(type_err(path, "boolean", value));
            }
            _ => {}
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            let allowed: Vec<String> = options.iter().map(Value::to_string).collect();
            errors.push(err(
                path,
                &format!(
                    "Unsupported value: {value}: supported values: {}",
                    allowed.join(", ")
                ),
            ));
        }
        for sub in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(sub, value, path, errors);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(subs) = s.get(key).and_then(Value::as_array) {
                let passing = subs
                    .iter()
                    .filter(|sub| {
                        let mut e = Vec::new();
                        self.check(sub, value, path, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = if key == "anyOf" {
                    passing > 0
                } else {
                    passing == 1
                };
                if !ok {
                    errors.push(err(path, &format!("must match {key} of its schemas")));
                }
            }
        }
    }

    fn check_object(
        &self,
        s: &Map<String, Value>,
        map: &Map<String, Value>,
        path: &str,
        preserve: bool,
        errors: &mut Vec<FieldError>,
    ) {
        let props = s.get("properties").and_then(Value::as_object);
        let additional = s.get("additionalProperties");
        for (key, value) in map {
            let child = join(path, key);
            if let Some(prop) = props.and_then(|p| p.get(key)) {
                self.check(prop, value, &child, errors);
            } else if let Some(extra) = additional {
                if extra.is_object() {
                    self.check(extra, value, &child, errors);
                } else if extra == &Value::Bool(false) && !preserve {
                    errors.push(err(&child, "field not declared in schema"));
                }
            } else if !preserve {
                errors.push(err(&child, "field not declared in schema"));
            }
        }
        for required in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = required.as_str()
                && !map.contains_key(name)
            {
                errors.push(err(&join(path, name), "Required value"));
            }
        }
        let len = map.len() as u64;
        if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
            && len < min
        {
            errors.push(err(path, &format!("must have at least {min} properties")));
        }
        if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
            && len > max
        {
            errors.push(err(path, &format!("must have at most {max} properties")));
        }
    }

    fn check_array(
        &self,
        s: &Map<String, Value>,
        items: &[Value],
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let len = items.len() as u64;
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && len < min
        {
            errors.push(err(path, &format!("must have at least {min} items")));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && len > max
        {
            errors.push(err(
                path,
                &format!("Too many: {len}: must have at most {max} items"),
            ));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }

    fn check_string(
        &self,
        s: &Map<String, Value>,
        text: &str,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(err(
                path,
                &format!("must be at least {min} characters long"),
            ));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(err(
                path,
                &format!("Too long: may not be more than {max} characters"),
            ));
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
            && let Some(re) = self.patterns.get(pattern)
            && !re.is_match(text)
        {
            errors.push(err(
                path,
                &format!("{text:?} does not match pattern {pattern}"),
            ));
        }
        if s.get("format").and_then(Value::as_str) == Some("date-time") && !is_rfc3339(text) {
            errors.push(err(path, "must be an RFC 3339 date-time"));
        }
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

fn check_number(s: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(v) = value.as_f64() else {
        return;
    };
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        let exclusive = s
            .get("exclusiveMinimum")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if v < min || (exclusive && v == min) {
            errors.push(err(
                path,
                &format!("must be greater than or equal to {min}"),
            ));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        let exclusive = s
            .get("exclusiveMaximum")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if v > max || (exclusive && v == max) {
            errors.push(err(path, &format!("must be less than or equal to {max}")));
        }
    }
}

/// Drops `null`s the schema does not allow and makes whole numbers integers where the
/// schema wants an integer, as an API server does before validating.
fn normalize(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties");
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            map.retain(|key, v| {
                let child = props.and_then(|p| p.get(key)).or(additional);
                !(v.is_null()
                    && child.is_some_and(|c| c.get("nullable") != Some(&Value::Bool(true))))
            });
            for (key, v) in map.iter_mut() {
                if let Some(child) = props.and_then(|p| p.get(key)).or(additional) {
                    normalize(child, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                items.iter_mut().for_each(|v| normalize(item, v));
            }
        }
        Value::Number(n) if schema.get("type") == Some(&Value::from("integer")) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        _ => {}
    }
}

fn check_metadata(metadata: Option<&Value>, errors: &mut Vec<FieldError>) {
    let Some(meta) = metadata.and_then(Value::as_object) else {
        errors.push(err("metadata", "Required value"));
        return;
    };
    match meta.get("name").and_then(Value::as_str) {
        Some(name) if is_dns_subdomain(name) => {}
        Some(name) => errors.push(err(
            "metadata.name",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        )),
        None => errors.push(err("metadata.name", "Required value")),
    }
    if let Some(ns) = meta.get("namespace") {
        match ns.as_str() {
            Some(ns) if is_dns_label(ns) => {}
            _ => errors.push(err(
                "metadata.namespace",
                "must be a lowercase RFC 1123 label",
            )),
        }
    }
    for key in ["labels", "annotations"] {
        let path = format!("metadata.{key}");
        let Some(map) = meta.get(key) else {
            continue;
        };
        let Some(map) = map.as_object().filter(|m| m.values().all(Value::is_string)) else {
            errors.push(err(&path, "must be a map of strings"));
            continue;
        };
        for (k, v) in map {
            if let Err(why) = qualified_name(k) {
                errors.push(err(&path, &format!("Invalid value: {k:?}: {why}")));
            }
            let v = v.as_str().unwrap_or_default();
            if key == "labels" && !is_label_value(v) {
                errors.push(err(
                    &path,
                    &format!(
                        "Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters"
                    ),
                ));
            }
        }
    }
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at
/// most 63 alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn qualified_name(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return Err("prefix part must be a lowercase RFC 1123 subdomain");
    }
    if name.is_empty() || name.len() > 63 || !is_label_value(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters",
        );
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting and
/// ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// RFC 1123 subdomain, as Kubernetes object names must be.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_MAX && name.split('.').all(is_dns_label_part)
}

/// RFC 1123 label, as namespaces must be.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_label_part(name)
}

fn is_dns_label_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_rfc3339(text: &str) -> bool {
    // 2026-01-31T12:00:00Z, with optional fraction and a Z or ±hh:mm offset.
    let b = text.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let date_ok = digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10);
    let sep_ok = matches!(b[10], b'T' | b't' | b' ');
    let time_ok =
        digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19);
    if !(date_ok && sep_ok && time_ok) {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

fn collect_patterns(schema: &Value, out: &mut HashMap<String, Regex>) {
    match schema {
        Value::Object(map) => {
            if let Some(p) = map.get("pattern").and_then(Value::as_str)
                && let Ok(re) = Regex::new(p)
            {
                out.insert(p.to_string(), re);
            }
            for v in map.values() {
                collect_patterns(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn err(path: &str, message: &str) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.to_string(),
    }
}

fn type_err(path: &str, expected: &str, got: &Value) -> FieldError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    err(
        path,
        &format!("Invalid value: {got:?}: must be of type {expected}"),
    )
}

#[cfg(test)]
mod tests;
