//! Reads the little of a chat request the gateway needs (model, stream) without building
//! the whole document, and rewrites the model in place, leaving every other byte as the
//! client sent it.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::TranslateError;

#[derive(Debug)]
pub struct ChatHead {
    pub model: String,
    /// Byte range of the model's JSON string literal in the body.
    model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage` (OpenAI).
    pub include_usage: bool,
    /// The body has a `stream_options` member.
    has_stream_options: bool,
    /// `response_format` asks for JSON (OpenAI).
    pub json_mode: bool,
    /// The most output tokens a choice may have: the larger of `max_completion_tokens` and
    /// `max_tokens` when both are set (a server configured to take one field receives the
    /// client's value of it, whichever it is).
    pub max_tokens: Option<u64>,
    /// Choices asked for (`n`, OpenAI): each may be as long as `max_tokens`.
    pub choices: u64,
    /// Images, audio and files in the messages: each costs tokens its few bytes of
    /// reference do not bound.
    pub attachments: Attachments,
    /// Server-side web search tools (Anthropic's `web_search_*`): the most searches they
    /// allow (their `max_uses`, summed), and whether one sets no bound.
    pub web_searches: u64,
    pub web_search_unbounded: bool,
    /// `temperature` and `top_p` when they are numbers (for a trace; the provider judges
    /// them).
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// The Responses API's follow-up: the response whose conversation it continues.
    pub previous_response_id: Option<String>,
}

/// The longest model name accepted: longer than any provider's (Bedrock's inference
/// profile ARNs are the longest, under 200 bytes), short enough that error messages and
/// logs that quote it stay small.
pub const MAX_MODEL_NAME: usize = 256;

/// The most output tokens a request may ask for: beyond any model's output, so a larger
/// value is a mistake or an attempt to wrap the gateway's arithmetic.
pub const MAX_OUTPUT_TOKENS: u64 = 1_000_000;
/// The most choices (`n`) a request may ask for, as OpenAI allows.
pub const MAX_CHOICES: u64 = 128;

/// Attachments counted in a request's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Images and audio (`image_url`, `input_audio`, Anthropic `image`).
    pub media: u64,
    /// Files and documents (`file`, Anthropic `document`), which may hold many pages.
    pub files: u64,
    /// Messages (the array's entries), which bound what translating the request builds.
    pub messages: u64,
}

impl Attachments {
    fn add(&mut self, kind: &str) {
        match kind {
            "image_url" | "image" | "input_image" | "input_audio" | "audio" => self.media += 1,
            "file" | "input_file" | "document" => self.files += 1,
            _ => {}
        }
    }
}

/// Reads `messages` for its attachments only: every message's `content` parts by `type`,
/// and the parts inside Anthropic `tool_result` content. Nothing is buffered: a visitor
/// walks the array as it is parsed.
mod walk {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::Attachments;

    /// Where a value stands in a request: the messages array, one message or part (a map
    /// whose `content` and `type` count), or a `content` value (a string, or an array of
    /// parts). Anything else is the provider's to refuse and holds no attachment.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum At {
        Messages,
        Item,
        Content,
    }

    pub struct Node<'c>(pub &'c mut Attachments, pub At);

    impl<'de> DeserializeSeed<'de> for Node<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Node<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(match self.1 {
                At::Messages => "an array of messages",
                At::Item => "a message or a content part",
                At::Content => "content",
            })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            if self.1 == At::Item {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
            } else {
                let top = self.1 == At::Messages;
                while seq
                    .next_element_seed(Node(&mut *self.0, At::Item))?
                    .is_some()
                {
                    if top {
                        self.0.messages += 1;
                    }
                }
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            if self.1 == At::Messages {
                return Err(serde::de::Error::invalid_type(
                    serde::de::Unexpected::Map,
                    &self,
                ));
            }
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match &*key {
                    "content" => map.next_value_seed(Node(&mut *self.0, At::Content))?,
                    "type" => {
                        let kind = map.next_value::<std::borrow::Cow<'de, str>>()?;
                        self.0.add(&kind);
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            self.scalar(serde::de::Unexpected::Str(v))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
            self.scalar(serde::de::Unexpected::Bool(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
            self.scalar(serde::de::Unexpected::Unsigned(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
            self.scalar(serde::de::Unexpected::Signed(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
            self.scalar(serde::de::Unexpected::Float(v))
        }
    }

    impl Node<'_> {
        /// A string or number: no attachment, and only the messages array must be one.
        fn scalar<E: serde::de::Error>(self, v: serde::de::Unexpected<'_>) -> Result<(), E> {
            if self.1 == At::Messages {
                return Err(E::invalid_type(v, &self));
            }
            Ok(())
        }
    }
}

impl<'de> Deserialize<'de> for Attachments {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        let mut out = Attachments::default();
        walk::Node(&mut out, walk::At::Messages).deserialize(d)?;
        Ok(out)
    }
}

/// The Responses API's `input`: a string (no attachments), or items, walked as messages
/// are (a message item's `content` parts count by their `type`).
#[derive(Default)]
struct Input(Attachments);

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Input;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of items")
            }
            fn visit_str<E>(self, _: &str) -> Result<Input, E> {
                Ok(Input::default())
            }
            fn visit_unit<E>(self) -> Result<Input, E> {
                Ok(Input::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Input, A::Error> {
                let mut out = Attachments::default();
                serde::de::Visitor::visit_seq(walk::Node(&mut out, walk::At::Messages), seq)?;
                Ok(Input(out))
            }
        }
        d.deserialize_any(Items)
    }
}

/// `stream_options`: an object (or null); anything else is the client's error, not a
/// set of options.
struct StreamOptions {
    include_usage: Option<bool>,
}

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default)]
            include_usage: Option<bool>,
        }
        struct Options;
        impl<'de> serde::de::Visitor<'de> for Options {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<StreamOptions, A::Error> {
                let fields =
                    Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(StreamOptions {
                    include_usage: fields.include_usage,
                })
            }
        }
        d.deserialize_map(Options)
    }
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// One entry of `tools`: its type, and a server tool's bound on its uses.
#[derive(Deserialize)]
struct ToolHead<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    max_uses: Option<u64>,
}

impl ToolHead<'_> {
    fn is_web_search(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.starts_with("web_search"))
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    /// The Responses API's.
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    messages: Attachments,
    /// The Responses API's items, walked as messages are.
    #[serde(default)]
    input: Input,
    #[serde(default)]
    tools: WebSearches,
    #[serde(default)]
    temperature: AnyNumber,
    #[serde(default)]
    top_p: AnyNumber,
}

/// A member's value when it is a number; anything else is skipped, not refused: the
/// gateway only reads it, and the provider answers for what it accepts.
#[derive(Default)]
struct AnyNumber(Option<f64>);

impl<'de> Deserialize<'de> for AnyNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        struct Number;
        impl<'de> serde::de::Visitor<'de> for Number {
            type Value = AnyNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<AnyNumber, E> {
                Ok(AnyNumber(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<AnyNumber, E> {
                Ok(AnyNumber(Some(v as f64)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<AnyNumber, E> {
                Ok(AnyNumber(Some(v as f64)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyNumber, E> {
                Ok(AnyNumber(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyNumber, E> {
                Ok(AnyNumber(None))
            }
            fn visit_unit<E>(self) -> Result<AnyNumber, E> {
                Ok(AnyNumber(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AnyNumber, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyNumber(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AnyNumber, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyNumber(None))
            }
        }
        d.deserialize_any(Number)
    }
}

/// What `tools` allows of server-side web searches, read entry by entry (no list is
/// built): the sum of the web search tools' `max_uses`, and whether one sets none.
#[derive(Default)]
struct WebSearches {
    most: u64,
    unbounded: bool,
}

impl<'de> Deserialize<'de> for WebSearches {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tools;
        impl<'de> serde::de::Visitor<'de> for Tools {
            type Value = WebSearches;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of tools")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WebSearches, A::Error> {
                let mut out = WebSearches::default();
                while let Some(t) = seq.next_element::<ToolHead<'de>>()? {
                    if t.is_web_search() {
                        match t.max_uses {
                            Some(n) => out.most = out.most.saturating_add(n),
                            None => out.unbounded = true,
                        }
                    }
                }
                Ok(out)
            }
            fn visit_unit<E>(self) -> Result<WebSearches, E> {
                Ok(WebSearches::default())
            }
        }
        d.deserialize_any(Tools)
    }
}

impl ChatHead {
    pub fn parse(body: &[u8]) -> Result<Self, TranslateError> {
        let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
            TranslateError::BadRequest(format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        })?;
        let raw = head.model.ok_or_else(|| {
            TranslateError::BadRequest("you must provide a model parameter".into())
        })?;
        let model: String = serde_json::from_str(raw.get())
            .map_err(|_| TranslateError::BadRequest("model: expected a string".into()))?;
        if model.is_empty() {
            return Err(TranslateError::BadRequest(
                "you must provide a model parameter".into(),
            ));
        }
        if model.len() > MAX_MODEL_NAME {
            return Err(TranslateError::BadRequest(format!(
                "model: a model name has at most {MAX_MODEL_NAME} bytes"
            )));
        }
        let max_tokens = [
            head.max_completion_tokens,
            head.max_tokens,
            head.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .max();
        if max_tokens.is_some_and(|n| n > MAX_OUTPUT_TOKENS) {
            return Err(TranslateError::BadRequest(format!(
                "max_tokens: {} is larger than any model's output; the most is {MAX_OUTPUT_TOKENS}",
                max_tokens.unwrap_or_default()
            )));
        }
        let choices = head.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&choices) {
            return Err(TranslateError::BadRequest(format!(
                "n: {choices} is out of range; it must be between 1 and {MAX_CHOICES}"
            )));
        }
        // The raw value borrows from `body`, so its offset is known without searching.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        Ok(Self {
            model,
            model_span: start..start + raw.get().len(),
            stream: head.stream.unwrap_or(false),
            has_stream_options: head.stream_options.is_some(),
            json_mode: head
                .response_format
                .and_then(|f| f.kind)
                .is_some_and(|k| k == "json_object" || k == "json_schema"),
            include_usage: head
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            max_tokens,
            choices,
            attachments: Attachments {
                media: head.messages.media + head.input.0.media,
                files: head.messages.files + head.input.0.files,
                messages: head.messages.messages + head.input.0.messages,
            },
            web_searches: head.tools.most,
            web_search_unbounded: head.tools.unbounded,
            temperature: head.temperature.0,
            top_p: head.top_p.0,
            previous_response_id: head.previous_response_id,
        })
    }

    /// The body with `max_uses: cap` on each web search tool that sets none, so that the
    /// searches the provider may bill are bounded; the head is read again from it. The
    /// same bytes when every web search tool is bounded.
    pub fn with_search_cap(
        &mut self,
        body: bytes::Bytes,
        cap: u64,
    ) -> Result<bytes::Bytes, TranslateError> {
        if !self.web_search_unbounded {
            return Ok(body);
        }
        let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            TranslateError::BadRequest(format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        })?;
        for tool in v
            .get_mut("tools")
            .and_then(serde_json::Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let search = tool
                .get("type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|k| k.starts_with("web_search"));
            if search && tool.get("max_uses").is_none_or(serde_json::Value::is_null) {
                tool["max_uses"] = serde_json::Value::from(cap);
            }
        }
        let out: bytes::Bytes = serde_json::to_vec(&v)
            .map_err(|_| TranslateError::Internal)?
            .into();
        *self = Self::parse(&out)?;
        Ok(out)
    }

    /// The body with an output limit of `cap` tokens set, for a request that set none:
    /// `"<field>":<cap>,` is written after the opening brace (`max_completion_tokens` for
    /// OpenAI's API, `max_tokens` for Anthropic's), leaving the rest as sent.
    pub fn with_output_cap(&mut self, body: bytes::Bytes, field: &str, cap: u64) -> bytes::Bytes {
        if self.max_tokens.is_some() {
            return body;
        }
        let Some(brace) = body.iter().position(|b| *b == b'{') else {
            return body;
        };
        let member = format!("\"{field}\":{cap},");
        let mut out = Vec::with_capacity(body.len() + member.len());
        out.extend_from_slice(&body[..=brace]);
        out.extend_from_slice(member.as_bytes());
        out.extend_from_slice(&body[brace + 1..]);
        // The model is after the brace: its literal moved by what was written.
        self.model_span = self.model_span.start + member.len()..self.model_span.end + member.len();
        self.max_tokens = Some(cap);
        out.into()
    }

    /// An OpenAI streaming body that asks for the usage chunk, so every stream can be
    /// metered: `"stream_options":{"include_usage":true},` is written after the opening
    /// brace, leaving the rest as sent. A body with other `stream_options` is rebuilt.
    pub fn with_usage_requested(&self, body: bytes::Bytes) -> bytes::Bytes {
        if !self.stream || self.include_usage {
            return body;
        }
        if !self.has_stream_options {
            let Some(brace) = body.iter().position(|b| *b == b'{') else {
                return body;
            };
            const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
            let rest = &body[brace + 1..];
            let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
            let mut out = Vec::with_capacity(body.len() + MEMBER.len() + 1);
            out.extend_from_slice(&body[..=brace]);
            out.extend_from_slice(MEMBER);
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            return out.into();
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return body;
        };
        use crate::base::json::SetKey;
        if let Some(options) = v.object_at("stream_options") {
            options.set_key("include_usage", serde_json::Value::Bool(true));
        }
        serde_json::to_vec(&v).map(Into::into).unwrap_or(body)
    }

    /// The body with `model` in place of the requested one (the same bytes when equal).
    pub fn with_model(&self, body: bytes::Bytes, model: &str) -> bytes::Bytes {
        if model == self.model {
            return body;
        }
        let literal = serde_json::to_string(model).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len() + literal.len());
        out.extend_from_slice(&body[..self.model_span.start]);
        out.extend_from_slice(literal.as_bytes());
        out.extend_from_slice(&body[self.model_span.end..]);
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#;
        let head = ChatHead::parse(body).unwrap();
        assert_eq!(head.model, "gpt-4o");
        assert!(head.stream);
        assert_eq!(head.max_tokens, None);
        let head = ChatHead::parse(br#"{"model":"m","max_tokens":5}"#).unwrap();
        assert_eq!(head.max_tokens, Some(5));
        let head =
            ChatHead::parse(br#"{"model":"m","max_tokens":5,"max_completion_tokens":7}"#).unwrap();
        assert_eq!(head.max_tokens, Some(7));
        // The larger of the two bounds what a server taking either field may produce.
        let head = ChatHead::parse(br#"{"model":"m","max_tokens":900,"max_completion_tokens":7}"#)
            .unwrap();
        assert_eq!(head.max_tokens, Some(900));
        assert_eq!(head.choices, 1);
        assert_eq!(
            ChatHead::parse(br#"{"model":"m","n":4}"#).unwrap().choices,
            4
        );
    }

    #[test]
    fn absurd_limits_and_choices_are_refused() {
        for body in [
            &br#"{"model":"m","max_tokens":18446744073709551615}"#[..],
            br#"{"model":"m","max_completion_tokens":1000001}"#,
            br#"{"model":"m","max_tokens":-1}"#,
            br#"{"model":"m","n":0}"#,
            br#"{"model":"m","n":129}"#,
            br#"{"model":"m","n":-2}"#,
        ] {
            assert!(
                matches!(ChatHead::parse(body), Err(TranslateError::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(ChatHead::parse(br#"{"model":"m","max_tokens":1000000,"n":128}"#).is_ok());
    }

    #[test]
    fn attachments_are_counted_in_every_format() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"look at image_url and file"},
            {"role":"user","content":[
                {"type":"text","text":"what is in these? {\"type\":\"image_url\"}"},
                {"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"high"}},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},
                {"type":"file","file":{"file_id":"file-abc"}}]},
            {"role":"user","content":[
                {"type":"image","source":{"type":"url","url":"https://example.com/b.png"}},
                {"type":"document","source":{"type":"file","file_id":"file_x"}},
                {"type":"tool_result","tool_use_id":"t","content":[
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA"}}]}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}
        ]}"#;
        let head = ChatHead::parse(body).unwrap();
        assert_eq!(
            head.attachments,
            Attachments {
                media: 5,
                files: 2,
                messages: 4
            },
            "text that names a type counts nothing"
        );
        assert!(matches!(
            ChatHead::parse(br#"{"model":"m","messages":"hi"}"#),
            Err(TranslateError::BadRequest(_))
        ));
        // The Responses API's items: a string input holds none.
        let body = br#"{"model":"m","input":[
            {"role":"user","content":[
                {"type":"input_text","text":"these"},
                {"type":"input_image","image_url":"https://example.com/a.png"},
                {"type":"input_file","file_id":"file-1"}]},
            {"type":"function_call_output","call_id":"c","output":"ok"}]}"#;
        assert_eq!(
            ChatHead::parse(body).unwrap().attachments,
            Attachments {
                media: 1,
                files: 1,
                messages: 2
            }
        );
        let plain = ChatHead::parse(br#"{"model":"m","input":"an image_url"}"#).unwrap();
        assert_eq!(plain.attachments, Attachments::default());
        let plain =
            ChatHead::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(
            plain.unwrap().attachments,
            Attachments {
                messages: 1,
                ..Attachments::default()
            }
        );
    }

    #[test]
    fn web_searches_are_bounded_by_their_max_uses() {
        let body = bytes::Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[
                {"name":"get_weather","input_schema":{"type":"object"}},
                {"type":"web_search_20250305","name":"web_search","max_uses":3},
                {"type":"web_search_20250305","name":"web_search_2"}],
                "messages":[{"role":"user","content":"news?"}]}"#,
        );
        let mut head = ChatHead::parse(&body).unwrap();
        assert_eq!((head.web_searches, head.web_search_unbounded), (3, true));
        let capped = head.with_search_cap(body, 5).unwrap();
        assert_eq!((head.web_searches, head.web_search_unbounded), (8, false));
        let v: serde_json::Value = serde_json::from_slice(&capped).unwrap();
        assert_eq!(v["tools"][1]["max_uses"], 3, "kept");
        assert_eq!(v["tools"][2]["max_uses"], 5, "set");
        assert!(v["tools"][0].get("max_uses").is_none());
        assert_eq!(head.with_model(capped.clone(), "m"), {
            let mut v = v.clone();
            v["model"] = "m".into();
            bytes::Bytes::from(serde_json::to_vec(&v).unwrap())
        });
        let openai = ChatHead::parse(
            br#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            (openai.web_searches, openai.web_search_unbounded),
            (0, false)
        );
    }

    #[test]
    fn an_output_cap_is_written_only_where_none_was_set() {
        let body = bytes::Bytes::from_static(br#"{"model":"smart","messages":[]}"#);
        let mut head = ChatHead::parse(&body).unwrap();
        let capped = head.with_output_cap(body, "max_completion_tokens", 4096);
        assert_eq!(
            &capped[..],
            br#"{"max_completion_tokens":4096,"model":"smart","messages":[]}"#
        );
        assert_eq!(head.max_tokens, Some(4096));
        let renamed = head.with_model(capped.clone(), "gpt-4o");
        assert_eq!(
            &renamed[..],
            br#"{"max_completion_tokens":4096,"model":"gpt-4o","messages":[]}"#
        );
        assert_eq!(ChatHead::parse(&renamed).unwrap().max_tokens, Some(4096));
        let same = head.with_output_cap(capped.clone(), "max_tokens", 5);
        assert_eq!(same, capped, "already limited");
    }

    #[test]
    fn rewrites_only_the_model() {
        let body = bytes::Bytes::from_static(
            br#"{ "model" : "smart", "messages":[{"role":"user","content":"model: smart"}] }"#,
        );
        let head = ChatHead::parse(&body).unwrap();
        let out = head.with_model(body.clone(), "gpt-4o-mini");
        assert_eq!(
            &out[..],
            br#"{ "model" : "gpt-4o-mini", "messages":[{"role":"user","content":"model: smart"}] }"#
        );
        let same = head.with_model(body.clone(), "smart");
        assert_eq!(same.as_ptr(), body.as_ptr(), "no copy when unchanged");
    }

    #[test]
    fn usage_is_requested_for_streams_only() {
        let body = bytes::Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let head = ChatHead::parse(&body).unwrap();
        let out = head.with_usage_requested(body);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");

        let body = bytes::Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
        );
        let head = ChatHead::parse(&body).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&head.with_usage_requested(body)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let body = bytes::Bytes::from_static(br#"{"model":"m"}"#);
        let head = ChatHead::parse(&body).unwrap();
        assert_eq!(&head.with_usage_requested(body)[..], br#"{"model":"m"}"#);
    }

    #[test]
    fn escaped_model_names() {
        let body = bytes::Bytes::from_static(br#"{"model":"a\"b"}"#);
        let head = ChatHead::parse(&body).unwrap();
        assert_eq!(head.model, "a\"b");
        assert_eq!(&head.with_model(body, "c")[..], br#"{"model":"c"}"#);
    }

    #[test]
    fn bad_bodies() {
        for body in [
            &b"not json"[..],
            b"{\"model\":1}",
            b"{}",
            b"[]",
            b"{\"model\":\"\"}",
            b"{\"model\":\"a\",\"stream\":\"yes\"}",
            b"{\"model\":\"a\",\"model\":\"b\"}",
        ] {
            assert!(
                matches!(ChatHead::parse(body), Err(TranslateError::BadRequest(_))),
                "{:?}",
                std::str::from_utf8(body)
            );
        }
    }

    #[test]
    fn sampling_parameters_are_read_when_numbers_and_skipped_otherwise() {
        let head = ChatHead::parse(br#"{"model":"m","temperature":0.25,"top_p":1}"#).unwrap();
        assert_eq!((head.temperature, head.top_p), (Some(0.25), Some(1.0)));
        let odd = br#"{"model":"m","temperature":"hot","top_p":{"a":[1,{"b":null}]}}"#;
        let head = ChatHead::parse(odd).unwrap();
        assert_eq!((head.temperature, head.top_p), (None, None));
    }
}
