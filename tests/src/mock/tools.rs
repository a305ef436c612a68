//! Tool calls in mock-llm, the same in every wire format: when a request offers tools and
//! the conversation holds no tool result yet, the answer calls the first tool with
//! arguments made from its schema; once a tool result is there, the answer quotes it
//! ("Mock reply to: tool result: ..."), which shows the result crossed intact.

use serde_json::{Map, Value, json};

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// Arguments for a JSON schema: each required property gets a value of its type.
pub fn arguments_for(schema: Option<&Value>) -> Value {
    let mut out = Map::new();
    let Some(schema) = schema else {
        return Value::Object(out);
    };
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        let kind = schema
            .pointer(&format!("/properties/{name}/type"))
            .and_then(Value::as_str)
            .unwrap_or("string")
            .to_ascii_lowercase();
        let value = match kind.as_str() {
            "integer" | "number" => json!(1),
            "boolean" => json!(true),
            "array" => json!([]),
            "object" => json!({}),
            _ => json!("Paris"),
        };
        out.insert(name.to_string(), value);
    }
    Value::Object(out)
}

/// The call the answer makes, if any.
pub fn decide(
    first_tool: Option<(String, Option<Value>)>,
    has_tool_result: bool,
) -> Option<ToolCall> {
    if has_tool_result {
        return None;
    }
    let (name, schema) = first_tool?;
    Some(ToolCall {
        arguments: arguments_for(schema.as_ref()),
        name,
    })
}

/// The arguments as a JSON string, cut in two for streaming.
pub fn argument_pieces(call: &ToolCall) -> [String; 2] {
    let text = call.arguments.to_string();
    let mid = text.len() / 2;
    let mid = (0..=mid)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    [text[..mid].to_string(), text[mid..].to_string()]
}
