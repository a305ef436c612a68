//! Tool-schema compaction (opt-in per MCPToolPolicy): tool lists cost agents tokens on
//! every turn, and much of a schema is for people, not models. Compaction keeps what a
//! model needs to call a tool correctly (names, types, required fields, enums, defaults,
//! constraints) and trims the rest: `$schema`, `$comment`, `title` and `examples`
//! anywhere in a schema, a tool's `title` and `annotations`, and every description cut to
//! its first sentence.

use serde_json::{Map, Value};

/// Keys of a JSON Schema object that only help people.
const SCHEMA_NOISE: [&str; 4] = ["$schema", "$comment", "title", "examples"];

/// The first sentence of a description (up to the first ". " or line break), at most
/// `MAX_DESCRIPTION` characters.
const MAX_DESCRIPTION: usize = 160;

fn first_sentence(s: &str) -> String {
    let s = s.trim();
    let end = [s.find(". ").map(|i| i + 1), s.find('\n')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(s.len());
    let cut: String = s[..end].chars().take(MAX_DESCRIPTION).collect();
    cut.trim_end().to_string()
}

/// Compacts a JSON Schema in place.
fn schema(v: &mut Value) {
    match v {
        Value::Object(o) => {
            // A schema object: these are keywords here (a field named `title` lives in
            // `properties`, which is walked below as a map, not as a schema).
            for k in SCHEMA_NOISE {
                o.remove(k);
            }
            if let Some(Value::String(d)) = o.get_mut("description") {
                *d = first_sentence(d);
            }
            for (k, child) in o.iter_mut() {
                if k == "properties" || k == "$defs" || k == "definitions" {
                    // A map of names to schemas: each value is a schema.
                    if let Value::Object(props) = child {
                        for s in props.values_mut() {
                            schema(s);
                        }
                    }
                } else if k != "enum" && k != "const" && k != "default" {
                    schema(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(schema),
        _ => {}
    }
}

/// Compacts one tool of a `tools/list` result.
pub fn tool(t: &Value) -> Value {
    let Value::Object(o) = t else {
        return t.clone();
    };
    let mut out = Map::new();
    for (k, v) in o {
        match k.as_str() {
            "title" | "annotations" | "icons" | "_meta" => {}
            "description" => {
                if let Some(d) = v.as_str() {
                    out.insert(k.clone(), Value::String(first_sentence(d)));
                }
            }
            "inputSchema" | "outputSchema" => {
                let mut s = v.clone();
                schema(&mut s);
                out.insert(k.clone(), s);
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Tokens of a tool list before and after compaction (counted with `o200k_base`).
pub fn reduction(before: &[Value], after: &[Value]) -> (u64, u64) {
    let count = |tools: &[Value]| {
        crate::metering::tokens::count("gpt-4o", &Value::from(tools.to_vec()).to_string())
    };
    (count(before), count(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_model_needs_stays_and_the_rest_goes() {
        let t = json!({
            "name": "search_invoices",
            "title": "Search invoices",
            "description": "Searches invoices by customer. Results are paged; see the finance handbook for the meaning of each status and for examples.\nMore text.",
            "annotations": {"readOnlyHint": true, "title": "Search"},
            "inputSchema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "title": "SearchArgs",
                "properties": {
                    "customer": {"type": "string", "description": "Customer id. Looks like C-123.", "examples": ["C-1"]},
                    "status": {"type": "string", "enum": ["open", "paid"], "default": "open"},
                    "title": {"type": "string", "description": "A field named title."}
                },
                "required": ["customer"],
                "additionalProperties": false
            }
        });
        let c = tool(&t);
        assert_eq!(
            c,
            json!({
                "name": "search_invoices",
                "description": "Searches invoices by customer.",
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "customer": {"type": "string", "description": "Customer id."},
                        "status": {"type": "string", "enum": ["open", "paid"], "default": "open"},
                        "title": {"type": "string", "description": "A field named title."}
                    },
                    "required": ["customer"],
                    "additionalProperties": false
                }
            })
        );
        let (before, after) = reduction(&[t], &[c]);
        assert!(after < before * 2 / 3, "{before} -> {after} tokens");
    }
}
