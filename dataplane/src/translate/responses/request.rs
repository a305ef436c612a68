//! A Responses API request as an OpenAI chat request (the pivot), for providers that do
//! not serve the Responses API. The rules are listed in docs/translation.md.

use serde_json::{Map, Value, json};

use super::{Target, reasoning_block};
use crate::translate::{TranslateError, bad};

/// A Responses request in the pivot's terms, and what its answer echoes back.
#[derive(Debug)]
pub struct Translated {
    pub chat: Value,
    pub echo: super::Echo,
}

/// Members that need a response stored by the provider, or a provider-side feature no
/// translated target has: refused when set.
const NEEDS_STORAGE: [&str; 3] = ["previous_response_id", "conversation", "prompt"];

/// Members that change the answer and that no translated target can honour.
const REFUSED: [&str; 4] = [
    "top_logprobs",
    "max_tool_calls",
    "context_management",
    "background",
];

fn set(v: Option<&Value>) -> bool {
    v.is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
}

/// The chat request for the Responses request `obj`, sent to `target`.
pub fn request(obj: &Value, target: Target) -> Result<Translated, TranslateError> {
    let to = target.name();
    for p in NEEDS_STORAGE {
        if set(obj.get(p)) {
            return Err(bad(
                p,
                &format!(
                    "this route's target, {to}, is reached by translation and stores no \
                     responses to continue: send the whole conversation as input instead"
                ),
            ));
        }
    }
    if obj.get("store") == Some(&Value::Bool(true)) {
        return Err(bad(
            "store",
            &format!(
                "this route's target, {to}, is reached by translation and stores no \
                 responses: leave store unset or false, and send the whole conversation as \
                 input"
            ),
        ));
    }
    for p in REFUSED {
        if set(obj.get(p)) && obj.get(p) != Some(&json!(0)) {
            return Err(bad(
                p,
                &format!("not supported for {to} through this gateway"),
            ));
        }
    }
    for (i, inc) in obj
        .get("include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if inc.as_str() != Some("reasoning.encrypted_content") {
            return Err(bad(
                &format!("include[{i}]"),
                &format!("{inc} cannot be included for {to}"),
            ));
        }
    }
    let mut messages = Vec::new();
    match obj.get("instructions") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(bad("instructions", "expected a string")),
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => Input::new(target).walk(items, &mut messages)?,
        None | Some(Value::Null) => return Err(bad("input", "is required")),
        Some(_) => return Err(bad("input", "expected a string or an array of items")),
    }
    if messages.is_empty() {
        return Err(bad("input", "a non-empty input is required"));
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = tools(obj, to)? {
        out.insert("tools".into(), tools);
    }
    if let Some(choice) = tool_choice(obj.get("tool_choice"), to)? {
        out.insert("tool_choice".into(), choice);
    }
    for key in ["parallel_tool_calls", "temperature", "top_p", "user"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if !out.contains_key("user")
        && let Some(id) = obj.get("safety_identifier").filter(|v| v.is_string())
    {
        out.insert("user".into(), id.clone());
    }
    if let Some(format) = response_format(obj.pointer("/text/format"))? {
        out.insert("response_format".into(), format);
    }
    let max = obj.get("max_output_tokens").and_then(Value::as_u64);
    if let Some(n) = max {
        out.insert(target.max_tokens_field().into(), json!(n));
    }
    reasoning(obj.get("reasoning"), target, max, &mut out)?;
    if obj.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Translated {
        chat: Value::Object(out),
        echo: super::Echo::of(obj),
    })
}

/// Claude's thinking budget for an effort, before the output limit bounds it.
fn budget(effort: &str) -> Option<u64> {
    match effort {
        "none" => None,
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        // `high`, `xhigh`
        _ => Some(16384),
    }
}

/// The least thinking budget Claude takes.
const MIN_BUDGET: u64 = 1024;

/// `reasoning.effort` in the pivot: `reasoning_effort` for chat servers and Gemini,
/// `thinking` with a budget for Claude (whose `max_tokens` counts the thinking, as
/// `max_output_tokens` counts reasoning).
fn reasoning(
    r: Option<&Value>,
    target: Target,
    max: Option<u64>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let Some(r) = r.filter(|r| !r.is_null()) else {
        return Ok(());
    };
    let effort = match r.get("effort") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(e)) => e.as_str(),
        Some(_) => return Err(bad("reasoning.effort", "expected a string")),
    };
    match target {
        Target::Chat(_) | Target::Gemini => {
            out.insert("reasoning_effort".into(), json!(effort));
        }
        Target::Claude => {
            let Some(wanted) = budget(effort) else {
                return Ok(());
            };
            let limit = max.unwrap_or(wanted + super::CLAUDE_ANSWER_TOKENS);
            let budget = wanted.min(limit / 2);
            if budget < MIN_BUDGET {
                return Err(bad(
                    "max_output_tokens",
                    &format!(
                        "reasoning on Claude models needs a thinking budget of at least \
                         {MIN_BUDGET} tokens inside max_output_tokens: set it to {} or more, \
                         or leave reasoning unset",
                        MIN_BUDGET * 2
                    ),
                ));
            }
            out.insert("max_tokens".into(), json!(limit));
            out.remove("max_completion_tokens");
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
        Target::NoReasoning => {
            if effort != "none" {
                return Err(bad(
                    "reasoning.effort",
                    &format!("{} cannot be asked to reason", target.name()),
                ));
            }
        }
    }
    Ok(())
}

fn response_format(f: Option<&Value>) -> Result<Option<Value>, TranslateError> {
    let Some(f) = f.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    Ok(match f.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            if !schema.contains_key("name") {
                return Err(bad("text.format.name", "is required"));
            }
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => {
            return Err(bad(
                "text.format.type",
                "must be text, json_object or json_schema",
            ));
        }
    })
}

fn tools(obj: &Value, to: &str) -> Result<Option<Value>, TranslateError> {
    let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| bad("tools", "expected an array"))?;
    if tools.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = t
                    .get("name")
                    .filter(|n| n.is_string())
                    .ok_or_else(|| bad(&format!("tools[{i}].name"), "is required"))?;
                let mut f = Map::new();
                f.insert("name".into(), name.clone());
                for key in ["description", "parameters", "strict"] {
                    if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                        f.insert(key.into(), v.clone());
                    }
                }
                out.push(json!({"type": "function", "function": f}));
            }
            Some(other) => {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    &format!(
                        "{other} tools are run by OpenAI and cannot be used with {to}; only \
                         function tools are translated"
                    ),
                ));
            }
            None => return Err(bad(&format!("tools[{i}].type"), "is required")),
        }
    }
    Ok(Some(Value::Array(out)))
}

fn tool_choice(c: Option<&Value>, to: &str) -> Result<Option<Value>, TranslateError> {
    Ok(match c {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Some(json!(s))
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let name = c
                .get("name")
                .filter(|n| n.is_string())
                .ok_or_else(|| bad("tool_choice.name", "is required"))?;
            Some(json!({"type": "function", "function": {"name": name}}))
        }
        Some(c) => {
            let kind = c.get("type").and_then(Value::as_str).unwrap_or("unknown");
            return Err(bad(
                "tool_choice",
                &format!("a tool choice of type {kind:?} cannot be used with {to}"),
            ));
        }
    })
}

/// The walk over a Responses `input` array. The items of one assistant turn (reasoning,
/// the assistant's message, its function calls) become one assistant message.
struct Input {
    target: Target,
    assistant: Option<Assistant>,
}

#[derive(Default)]
struct Assistant {
    text: String,
    calls: Vec<Value>,
    thinking: Vec<Value>,
}

impl Input {
    fn new(target: Target) -> Self {
        Self {
            target,
            assistant: None,
        }
    }

    fn turn(&mut self) -> &mut Assistant {
        self.assistant.get_or_insert_with(Assistant::default)
    }

    fn flush(&mut self, messages: &mut Vec<Value>) {
        let Some(a) = self.assistant.take() else {
            return;
        };
        if a.text.is_empty() && a.calls.is_empty() {
            // Reasoning with nothing after it has no turn to go with.
            return;
        }
        let mut m = json!({"role": "assistant", "content": a.text});
        if !a.calls.is_empty() {
            if a.text.is_empty() {
                m["content"] = Value::Null;
            }
            m["tool_calls"] = Value::Array(a.calls);
        }
        if !a.thinking.is_empty() {
            m["thinking_blocks"] = Value::Array(a.thinking);
        }
        messages.push(m);
    }

    fn walk(&mut self, items: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
        for (i, item) in items.iter().enumerate() {
            let at = format!("input[{i}]");
            let kind = match item.get("type").and_then(Value::as_str) {
                Some(k) => k,
                None if item.get("role").is_some() => "message",
                None => return Err(bad(&format!("{at}.type"), "is required")),
            };
            match kind {
                "message" => self.message(item, &at, messages)?,
                "function_call" => {
                    let field = |k: &str| {
                        item.get(k)
                            .filter(|v| v.is_string())
                            .cloned()
                            .ok_or_else(|| bad(&format!("{at}.{k}"), "is required"))
                    };
                    let call = json!({
                        "id": field("call_id")?,
                        "type": "function",
                        "function": {"name": field("name")?, "arguments": field("arguments")?},
                    });
                    self.turn().calls.push(call);
                }
                "function_call_output" => {
                    self.flush(messages);
                    let id = item
                        .get("call_id")
                        .filter(|v| v.is_string())
                        .ok_or_else(|| bad(&format!("{at}.call_id"), "is required"))?;
                    let output = output_text(item.get("output"), &format!("{at}.output"))?;
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
                }
                "reasoning" => {
                    // Claude's thinking goes back with its signature; reasoning from
                    // another model (or without the gateway's content) cannot be checked
                    // by this one and is left out.
                    if self.target == Target::Claude
                        && let Some(block) = item
                            .get("encrypted_content")
                            .and_then(Value::as_str)
                            .and_then(reasoning_block)
                    {
                        self.turn().thinking.push(block);
                    }
                }
                "item_reference" => {
                    return Err(bad(
                        &at,
                        &format!(
                            "{} stores no items to refer to; send the item itself",
                            self.target.name()
                        ),
                    ));
                }
                other => {
                    return Err(bad(
                        &format!("{at}.type"),
                        &format!(
                            "items of type {other} cannot be sent to {}",
                            self.target.name()
                        ),
                    ));
                }
            }
        }
        self.flush(messages);
        Ok(())
    }

    fn message(
        &mut self,
        item: &Value,
        at: &str,
        messages: &mut Vec<Value>,
    ) -> Result<(), TranslateError> {
        let role = item.get("role").and_then(Value::as_str).unwrap_or("");
        let content = item.get("content").unwrap_or(&Value::Null);
        if role == "assistant" {
            let text = assistant_text(content, &format!("{at}.content"))?;
            self.turn().text.push_str(&text);
            return Ok(());
        }
        self.flush(messages);
        let role = match role {
            "user" | "system" | "developer" => role,
            _ => {
                return Err(bad(
                    &format!("{at}.role"),
                    "must be user, assistant, system or developer",
                ));
            }
        };
        let content = match content {
            Value::String(s) => json!(s),
            Value::Array(parts) => Value::Array(input_parts(
                parts,
                &format!("{at}.content"),
                self.target.name(),
            )?),
            _ => {
                return Err(bad(
                    &format!("{at}.content"),
                    "expected a string or an array of parts",
                ));
            }
        };
        messages.push(json!({"role": role, "content": content}));
        Ok(())
    }
}

/// A user, system or developer message's parts as chat parts.
fn input_parts(parts: &[Value], at: &str, to: &str) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let here = format!("{at}[{i}]");
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text") => {
                let text = p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{here}.text"), "is required"))?;
                out.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                    return Err(bad(
                        &here,
                        &format!(
                            "only images given by image_url (a URL or a data: URL) can be sent \
                             to {to}; file_id needs OpenAI's file storage"
                        ),
                    ));
                };
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some(other) => {
                return Err(bad(
                    &format!("{here}.type"),
                    &format!("content parts of type {other} cannot be sent to {to}"),
                ));
            }
            None => return Err(bad(&format!("{here}.type"), "is required")),
        }
    }
    Ok(out)
}

/// An assistant message's text: its `output_text` parts (and refusals) joined.
fn assistant_text(content: &Value, at: &str) -> Result<String, TranslateError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("output_text" | "input_text") => {
                        text.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("refusal") => {
                        text.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""));
                    }
                    _ => {
                        return Err(bad(
                            &format!("{at}[{i}].type"),
                            "an assistant message holds output_text and refusal parts",
                        ));
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(bad(at, "expected a string or an array of parts")),
    }
}

/// A function call's output as the tool message's text.
fn output_text(output: Option<&Value>, at: &str) -> Result<String, TranslateError> {
    match output {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => {
                        texts.push(p.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    _ => {
                        return Err(bad(
                            &format!("{at}[{i}].type"),
                            "only text can be a function call's output for this model",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(bad(at, "is required: a string or an array of text parts")),
    }
}
