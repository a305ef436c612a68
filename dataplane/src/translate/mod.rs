//! Translation between the client's API format and the OpenAI pivot, with no HTTP in it.
//!
//! OpenAI's chat format is the pivot: each provider's translator (in its folder under
//! `provider/`) goes from and to it, and an Anthropic client on a non-Anthropic provider
//! goes through `anthropic_to_openai` first. What every translator shares is here: ONE walk
//! over OpenAI messages and their parts ([`walk_messages`], [`walk_parts`]), tool and
//! JSON-mode helpers, error bodies and stream chunks in the client's format. Same-format
//! traffic passes through `relay`, with only the model rewritten and usage read.

pub mod anthropic_to_openai;
pub mod head;
pub mod ids;
pub mod relay;
pub mod responses;

use serde_json::Value;

use crate::metering::usage::Usage;

/// Why a body could not be translated. `error` in the proxy room turns it into the
/// client's error response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The client's request is not valid in its format, or asks for what the provider's
    /// format cannot carry.
    #[error("{0}")]
    BadRequest(String),
    /// The provider's answer is not what its format promises.
    #[error("the upstream provider's answer could not be read")]
    UpstreamBody,
    /// A body the gateway built could not be written.
    #[error("a translated body could not be written")]
    Internal,
}

/// One step of a translated stream: takes the events of one format, writes SSE text of
/// another, event by event, never holding back what it can already write.
pub trait StreamStep: Send + Sync {
    /// SSE text for one incoming event (often empty).
    fn event(&mut self, event: &crate::base::sse::Event) -> String;
    /// Called when the incoming stream ends: the closing text, or an error event when the
    /// stream ended before the answer was complete.
    fn end(&mut self) -> String;
    /// Usage seen so far.
    fn usage(&self) -> Option<Usage>;
}

/// One event of the pivot's stream, as the steps after a provider's take it: its end
/// (`data: [DONE]`), a chunk, or nothing they read.
pub(crate) enum PivotEvent {
    Done,
    Chunk(Value),
    Other,
}

impl PivotEvent {
    pub(crate) fn of(event: &crate::base::sse::Event) -> Self {
        if event.data.trim() == "[DONE]" {
            return Self::Done;
        }
        match serde_json::from_str::<Value>(&event.data) {
            Ok(c) => Self::Chunk(c),
            Err(_) => Self::Other,
        }
    }
}

/// A pivot chunk as the steps after a provider's read it: the usage it carries, and
/// choice 0's delta with its text and tool-call fragments.
pub(crate) struct PivotChunk<'a> {
    pub usage: Option<Usage>,
    /// Choice 0's delta (none in the usage chunk).
    pub delta: Option<&'a Value>,
    pub finish: Option<&'a str>,
}

impl<'a> PivotChunk<'a> {
    pub(crate) fn of(c: &'a Value) -> Self {
        let choice = c.pointer("/choices/0");
        Self {
            usage: c
                .get("usage")
                .filter(|u| !u.is_null())
                .and_then(Usage::from_openai),
            delta: choice.map(|ch| ch.get("delta").unwrap_or(&Value::Null)),
            finish: choice
                .and_then(|ch| ch.get("finish_reason"))
                .and_then(Value::as_str),
        }
    }

    /// The delta's text, when it has some.
    pub(crate) fn text(&self) -> Option<&'a str> {
        self.delta?
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    }

    /// The delta's tool-call fragments.
    pub(crate) fn calls(&self) -> impl Iterator<Item = &'a Value> {
        self.delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// The delta's piece of a thinking block (Claude's, via the pivot).
    pub(crate) fn thinking(&self) -> Option<&'a Value> {
        self.delta?.get("thinking_block")
    }
}

/// A parse failure of the client's body, worded like the providers word it.
pub(crate) fn parse_client_json(body: &[u8]) -> Result<Value, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        TranslateError::BadRequest(format!(
            "We could not parse the JSON body of your request. ({e})"
        ))
    })?;
    if !v.is_object() {
        return Err(TranslateError::BadRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    Ok(v)
}

pub(crate) fn bad(param: &str, message: &str) -> TranslateError {
    TranslateError::BadRequest(format!("{param}: {message}"))
}

/// A list of numbers in a provider's answer (an embedding), or the answer is malformed.
pub(crate) fn numbers(v: Option<&Value>) -> Result<Vec<f64>, TranslateError> {
    v.and_then(Value::as_array)
        .ok_or(TranslateError::UpstreamBody)?
        .iter()
        .map(|x| x.as_f64().ok_or(TranslateError::UpstreamBody))
        .collect()
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// Text of an OpenAI message `content` (a string or text parts); other parts are refused.
pub(crate) fn openai_text(content: &Value, param: &str) -> Result<String, TranslateError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                _ => Err(bad(param, "only text parts are allowed here")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(bad(param, "expected a string or an array of parts")),
    }
}

/// An image given as an OpenAI `image_url` part.
pub(crate) enum Image<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url(&'a str),
}

pub(crate) fn openai_image<'a>(part: &'a Value, param: &str) -> Result<Image<'a>, TranslateError> {
    let url = part
        .get("image_url")
        .and_then(|i| i.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(param, "image_url.url is required"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad(param, "malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad(param, "data URLs must be base64"))?;
        return Ok(Image::Base64 { media_type, data });
    }
    Ok(Image::Url(url))
}

/// `max_completion_tokens`, else `max_tokens`.
pub(crate) fn openai_max_tokens(obj: &Value) -> Option<u64> {
    obj.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| obj.get("max_tokens").and_then(Value::as_u64))
}

/// `stop` as a list.
pub(crate) fn openai_stop(obj: &Value) -> Option<Vec<Value>> {
    match obj.get("stop") {
        Some(Value::String(s)) => Some(vec![Value::String(s.clone())]),
        Some(Value::Array(a)) if !a.is_empty() => Some(a.clone()),
        _ => None,
    }
}

/// Refuses `n` > 1 for providers that return one choice.
pub(crate) fn refuse_n(obj: &Value, provider: &str) -> Result<(), TranslateError> {
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(bad(
            "n",
            &format!("{provider} models return one choice per request; n must be 1"),
        ));
    }
    Ok(())
}

/// The name of the tool that carries JSON mode's answer when `response_format` asks for
/// `json_object` (a `json_schema` lends its own name).
pub(crate) const JSON_TOOL: &str = "json_response";

/// How a request to a provider without JSON mode (Anthropic, Bedrock) starts: OpenAI-only
/// parameters and `n` refused, and JSON mode as a forced tool ([`json_mode_as_tool`]).
pub(crate) fn checked_with_json_tool<'a>(
    obj: &'a Value,
    provider: &str,
) -> Result<std::borrow::Cow<'a, Value>, TranslateError> {
    refuse_openai_only(obj, provider)?;
    refuse_n(obj, provider)?;
    Ok(match json_mode_as_tool(obj)? {
        Some(v) => std::borrow::Cow::Owned(v),
        None => std::borrow::Cow::Borrowed(obj),
    })
}

/// JSON mode for providers without one (Anthropic, Bedrock): the OpenAI request with
/// `response_format` replaced by a single tool whose input schema is the wanted JSON, and
/// `tool_choice` forcing it. The answer's call becomes the message content again
/// ([`calls_as_content`]). `None` when the request does not ask for JSON.
pub(crate) fn json_mode_as_tool(v: &Value) -> Result<Option<Value>, TranslateError> {
    let Some(format) = v.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let (name, description, schema) = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => (
            JSON_TOOL.to_string(),
            "Give the answer as a JSON object.".to_string(),
            serde_json::json!({"type": "object"}),
        ),
        Some("json_schema") => {
            let s = format
                .get("json_schema")
                .ok_or_else(|| bad("response_format.json_schema", "is required"))?;
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
                .ok_or_else(|| {
                    bad(
                        "response_format.json_schema.name",
                        "must be 1 to 64 letters, digits, _ or -",
                    )
                })?;
            let description = s
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("Give the answer as JSON matching this schema.");
            (
                name.to_string(),
                description.to_string(),
                s.get("schema")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            )
        }
        _ => {
            return Err(bad(
                "response_format.type",
                "must be text, json_object or json_schema",
            ));
        }
    };
    if v.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        return Err(bad(
            "response_format",
            "JSON mode cannot be combined with tools for this model: the gateway asks for the JSON through a tool",
        ));
    }
    let mut out = v.clone();
    if let Some(obj) = out.as_object_mut() {
        obj.remove("response_format");
        obj.insert(
            "tools".into(),
            serde_json::json!([{"type": "function", "function": {
                "name": name, "description": description, "parameters": schema}}]),
        );
        obj.insert(
            "tool_choice".into(),
            serde_json::json!({"type": "function", "function": {"name": name}}),
        );
    }
    Ok(Some(out))
}

/// JSON mode's answer in an OpenAI completion: the forced call's arguments become the
/// message content, and `tool_calls` finishes as `stop`.
pub(crate) fn calls_as_content(completion: &mut Value) {
    let Some(choices) = completion.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let arguments = choice
            .pointer("/message/tool_calls/0/function/arguments")
            .cloned();
        if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut)
            && let Some(arguments) = arguments
        {
            message.remove("tool_calls");
            message.insert("content".into(), arguments);
        }
        if choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls") {
            choice["finish_reason"] = Value::String("stop".into());
        }
    }
}

/// JSON mode's answer in an OpenAI chunk: the forced call's argument fragments become
/// content fragments (its opening, with id and name, an empty one); text beside the call is
/// not part of the JSON and is dropped; `tool_calls` finishes as `stop`. False when the
/// chunk is not a chat chunk.
pub(crate) fn chunk_calls_as_content(chunk: &mut Value) -> bool {
    let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
        return false;
    };
    for choice in choices {
        if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
            let calls = delta.remove("tool_calls");
            let fragment = calls
                .as_ref()
                .and_then(Value::as_array)
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
                })
                .and_then(|c| c.pointer("/function/arguments"))
                .cloned();
            if calls.is_some() || delta.contains_key("content") {
                delta.insert(
                    "content".into(),
                    fragment.unwrap_or_else(|| Value::String(String::new())),
                );
            }
        }
        if choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls") {
            choice["finish_reason"] = Value::String("stop".into());
        }
    }
    true
}

/// OpenAI parameters no other provider can honour: refused with a 400 when set.
const OPENAI_ONLY: [&str; 6] = [
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "audio",
    "prediction",
];

/// Refuses the OpenAI-only parameters that are set (not null or false).
pub(crate) fn refuse_openai_only(obj: &Value, provider: &str) -> Result<(), TranslateError> {
    for p in OPENAI_ONLY {
        if obj
            .get(p)
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(bad(
                p,
                &format!("not supported for {provider} models through this gateway"),
            ));
        }
    }
    Ok(())
}

/// The JSON of a tool call's `arguments` string (an object; `{}` when empty or invalid).
pub(crate) fn arguments_object(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::json!({}))
        }
        Some(v @ Value::Object(_)) => v.clone(),
        _ => serde_json::json!({}),
    }
}

/// The text of a `tool` message's content.
pub(crate) fn tool_result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A content part of an OpenAI message, as [`walk_parts`] hands it on.
pub(crate) enum Part<'a> {
    Text(&'a str),
    Image(Image<'a>),
}

/// The walk over an OpenAI message's content that every translator from OpenAI's format
/// shares: a string is one text part; each part of an array is handed on with its path
/// (`...content[i]`) and the part itself (for members a provider keeps, such as
/// `cache_control`). Parts `model` (as in "an Anthropic model") cannot take are refused.
pub(crate) fn walk_parts<'a>(
    content: &'a Value,
    param: &str,
    model: &str,
    mut visit: impl FnMut(&str, Part<'a>, Option<&'a Value>) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(()),
        Value::String(s) => visit(param, Part::Text(s), None),
        Value::Null => Ok(()),
        Value::Array(parts) => {
            for (i, p) in parts.iter().enumerate() {
                let at = format!("{param}[{i}]");
                let part = match p.get("type").and_then(Value::as_str) {
                    Some("text") => Part::Text(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image_url") => Part::Image(openai_image(p, &at)?),
                    Some(other) => {
                        return Err(bad(
                            &at,
                            &format!("content parts of type {other:?} cannot be sent to {model}"),
                        ));
                    }
                    None => return Err(bad(&at, "type is required")),
                };
                visit(&at, part, Some(p))?;
            }
            Ok(())
        }
        _ => Err(bad(param, "expected a string or an array of parts")),
    }
}

/// One message of an OpenAI chat request, as [`walk_messages`] hands it on.
pub(crate) enum Turn<'a> {
    /// A `system` or `developer` message's content.
    System(&'a Value),
    /// A `user` message's content.
    User(&'a Value),
    /// An `assistant` message (for its tool calls and other members) and its content.
    Assistant(&'a Value, &'a Value),
    /// A `tool` message: the id of the call it answers, and its content.
    Tool(&'a str, &'a Value),
    /// A deprecated `function` message.
    Function,
}

/// The walk over an OpenAI request's `messages` that every translator from OpenAI's
/// format shares: each message in order, with its parameter path (`messages[i]`), read
/// into a [`Turn`]. An unknown role or a tool message without its call's id is refused
/// here.
pub(crate) fn walk_messages<'a>(
    obj: &'a Value,
    mut visit: impl FnMut(&str, Turn<'a>) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "a non-empty array is required"))?;
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let content = m.get("content").unwrap_or(&Value::Null);
        let turn = match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => Turn::System(content),
            "user" => Turn::User(content),
            "assistant" => Turn::Assistant(m, content),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{param}.tool_call_id"), "is required"))?;
                Turn::Tool(id, content)
            }
            "function" => Turn::Function,
            _ => return Err(unknown_role(&param)),
        };
        visit(&param, turn)?;
    }
    Ok(())
}

/// The refusal of a message whose role no translation takes.
pub(crate) fn unknown_role(param: &str) -> TranslateError {
    bad(
        &format!("{param}.role"),
        "must be system, developer, user, assistant or tool",
    )
}

/// The turns of a translated conversation, built as the message walk goes. Items for the
/// same role as the last turn join it: tool results and the user's next words belong to
/// one user turn, and providers refuse two turns of one role in a row.
pub(crate) struct Turns {
    /// The member that holds a turn's items (`content`, `parts`).
    key: &'static str,
    /// A turn with no items is sent (Anthropic) rather than left out.
    keep_empty: bool,
    pub list: Vec<Value>,
}

impl Turns {
    pub(crate) fn new(key: &'static str, keep_empty: bool) -> Self {
        Self {
            key,
            keep_empty,
            list: Vec::new(),
        }
    }

    /// A turn of `role` with `items`, joined to the last turn when that has the same role.
    pub(crate) fn push(&mut self, role: &str, items: Vec<Value>) {
        if items.is_empty() && !self.keep_empty {
            return;
        }
        if let Some(last) = self.list.last_mut()
            && last.get("role").and_then(Value::as_str) == Some(role)
            && let Some(existing) = last.get_mut(self.key).and_then(Value::as_array_mut)
        {
            existing.extend(items);
            return;
        }
        let mut turn = serde_json::Map::new();
        turn.insert("role".into(), Value::String(role.to_string()));
        turn.insert(self.key.into(), Value::Array(items));
        self.list.push(Value::Object(turn));
    }

    /// The model's turn (`role`) for OpenAI assistant message `m` (at `param`): its content
    /// `items`, then one item per tool call, made by `call`.
    pub(crate) fn assistant<'a>(
        &mut self,
        role: &str,
        m: &'a Value,
        param: &str,
        mut items: Vec<Value>,
        call: impl FnMut(CallIn<'a>) -> Value,
    ) -> Result<(), TranslateError> {
        items.extend(openai_tool_calls(m, param)?.into_iter().map(call));
        self.push(role, items);
        Ok(())
    }

    /// A tool's result, which every provider takes in a user turn.
    pub(crate) fn tool_result(&mut self, item: Value) {
        self.push("user", vec![item]);
    }
}

/// A function tool offered in an OpenAI request.
pub(crate) struct Function<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub parameters: Option<&'a Value>,
    /// The whole tool, for members some providers keep (`cache_control`).
    pub tool: &'a Value,
}

/// A request's `tools` (OpenAI's or Anthropic's): absent or null is none, anything but an
/// array is refused.
pub(crate) fn tools_array(obj: &Value) -> Result<Option<&Vec<Value>>, TranslateError> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) => Ok(Some(list)),
        Some(_) => Err(bad("tools", "expected an array")),
    }
}

/// The function tools of an OpenAI request; other tool types are refused.
pub(crate) fn openai_functions<'a>(
    obj: &'a Value,
    provider: &str,
) -> Result<Option<Vec<Function<'a>>>, TranslateError> {
    let Some(list) = tools_array(obj)? else {
        return Ok(None);
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(
                    &at,
                    &format!("only function tools can be sent to a {provider} model"),
                ));
            }
            let f = t
                .get("function")
                .ok_or_else(|| bad(&at, "function is required"))?;
            Ok(Function {
                name: f
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{at}.function.name"), "is required"))?,
                description: f.get("description").and_then(Value::as_str),
                parameters: f.get("parameters"),
                tool: t,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// OpenAI's `tool_choice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    Auto,
    Required,
    None,
    Function(&'a str),
}

pub(crate) fn openai_tool_choice(obj: &Value) -> Result<Option<ToolChoice<'_>>, TranslateError> {
    Ok(Some(match obj.get("tool_choice") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => ToolChoice::None,
            _ => {
                return Err(bad(
                    "tool_choice",
                    "must be auto, required, none or a function",
                ));
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => ToolChoice::Function(name),
            None => return Err(bad("tool_choice", "function.name is required")),
        },
    }))
}

/// A tool call of an assistant message in an OpenAI request.
pub(crate) struct CallIn<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The parsed `arguments` (an object).
    pub arguments: Value,
}

/// The `tool_calls` of OpenAI message `m` (at `param`, for errors).
pub(crate) fn openai_tool_calls<'a>(
    m: &'a Value,
    param: &str,
) -> Result<Vec<CallIn<'a>>, TranslateError> {
    m.get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(j, call)| {
            let at = format!("{param}.tool_calls[{j}]");
            Ok(CallIn {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{at}.id"), "is required"))?,
                name: call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{at}.function.name"), "is required"))?,
                arguments: arguments_object(call.pointer("/function/arguments")),
            })
        })
        .collect()
}

/// An OpenAI tool call in an answer; `input` is serialised as `arguments`.
pub(crate) fn openai_call(id: Value, name: Value, input: Option<&Value>) -> Value {
    serde_json::json!({
        "id": id,
        "type": "function",
        "function": {
            "name": name,
            "arguments": input.map(Value::to_string).unwrap_or_else(|| "{}".into()),
        }
    })
}

/// An OpenAI assistant message: `content` is null when there are only tool calls.
pub(crate) fn openai_message(text: String, calls: Vec<Value>) -> Value {
    let mut message = serde_json::json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// An OpenAI chat completion.
pub(crate) fn openai_completion(
    id: String,
    created: i64,
    model: Value,
    choices: Vec<Value>,
    usage: Usage,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage.to_openai(),
    })
}

/// The message of an error event that closes a stream cut short.
pub(crate) const STREAM_CUT: &str = "The provider's stream ended before the answer was complete.";

fn openai_error(message: &str, kind: &str, code: Value) -> Value {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// An OpenAI error body.
pub(crate) fn openai_error_body(message: &str, kind: &str, code: Value) -> Vec<u8> {
    serde_json::to_vec(&openai_error(message, kind, code)).unwrap_or_default()
}

/// An OpenAI error chunk (how OpenAI reports an error inside a stream).
/// A stream's closing error event in the client's format: an OpenAI chunk with an
/// `error` object, or Anthropic's `event: error`.
pub(crate) fn stream_error_event(client: crate::base::Api, message: &str) -> String {
    match client {
        crate::base::Api::OpenAi => openai_error_chunk(message, "server_error", Value::Null),
        crate::base::Api::Anthropic => anthropic_error_event(message),
        crate::base::Api::Responses => responses_error_event(message, "server_error", 0),
    }
}

/// The Responses API's stream error event (`event: error`), numbered `sequence` (the one
/// after the last event the client got).
pub(crate) fn responses_error_event(message: &str, code: &str, sequence: u64) -> String {
    sse_event(
        "error",
        &serde_json::json!({"type": "error", "code": code, "message": message, "param": null, "sequence_number": sequence}),
    )
}

/// Anthropic's stream error event (`event: error`, type `api_error`).
pub(crate) fn anthropic_error_event(message: &str) -> String {
    sse_event(
        "error",
        &serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}}),
    )
}

pub(crate) fn openai_error_chunk(message: &str, kind: &str, code: Value) -> String {
    sse_data(&openai_error(message, kind, code))
}

/// OpenAI's error type for a status, for errors from providers with their own format.
pub(crate) fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Writes OpenAI chunks for one stream.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    pub id: String,
    pub model: Value,
    pub created: i64,
    /// The client asked for the usage chunk: every chunk then has `usage` (null but in
    /// the last one), as OpenAI sends them.
    pub include_usage: bool,
}

impl ChunkWriter {
    pub fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut v = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&v)
    }

    /// The template of a chunk that only carries text for choice 0, for the stream's id
    /// and model as they are now: the events that are most of a stream then cost a copy.
    pub fn text_template(&self) -> TextChunk {
        TextChunk {
            prefix: format!(
                "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":",
                Value::String(self.id.clone()),
                self.created,
                self.model
            ),
            suffix: if self.include_usage {
                "},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
            } else {
                "},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
            },
        }
    }

    /// A chunk with one delta for choice 0.
    pub fn delta(&self, delta: Value, finish: Option<&str>) -> String {
        self.chunk(
            serde_json::json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }

    /// The end of the stream: the usage chunk (when asked for) and `[DONE]`.
    pub fn close(&self, usage: Usage) -> String {
        let mut out = String::new();
        if self.include_usage {
            out += &self.chunk(serde_json::json!([]), Some(usage.to_openai()));
        }
        out + "data: [DONE]\n\n"
    }
}

/// A text chunk's SSE event around its text (see [`ChunkWriter::text_template`]).
#[derive(Debug)]
pub(crate) struct TextChunk {
    prefix: String,
    suffix: &'static str,
}

impl TextChunk {
    /// The SSE event of a chunk with `text` as its content delta.
    pub fn with(&self, text: &str) -> String {
        let text = serde_json::to_string(text).unwrap_or_default();
        let mut out = String::with_capacity(self.prefix.len() + text.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(&text);
        out.push_str(self.suffix);
        out
    }
}
