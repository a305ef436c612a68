//! The steps between a client format and a provider's wire format, for requests,
//! answers, errors and streams. OpenAI's format is the pivot: an Anthropic client on a
//! Gemini model is translated Anthropic -> OpenAI -> Gemini, and its answer back the same
//! way. Same-format pairs pass through, with only the model rewritten and usage read.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::base::Api;
use crate::base::sse;
use crate::config::model::{ProviderKind, Wire};
use crate::metering::usage::Usage;
use crate::translate::StreamStep;
use crate::translate::TranslateError;

/// One request's way across the gateway.
#[derive(Clone, Debug)]
pub struct Plan {
    pub client: Api,
    pub wire: Wire,
    pub provider: ProviderKind,
    /// The model sent upstream (shared with the request's metric labels).
    pub model: Arc<str>,
    pub stream: bool,
    /// The OpenAI client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Seconds since the epoch, for `created`.
    pub created: i64,
    /// An id for answers whose provider gives none (Bedrock).
    pub id: String,
    /// The OpenAI client asked for JSON (`response_format`); for providers without JSON
    /// mode it is asked for through a forced tool, whose call is the answer's content.
    pub json_mode: bool,
    /// A passed-through Responses answer's ids become the client's (see
    /// [`crate::translate::ids`]).
    pub ids: Option<Arc<dyn crate::translate::ids::IdSeal>>,
    /// A translated Responses request: what its answer echoes (set by [`Plan::request`]).
    pub echo: Option<Arc<crate::translate::responses::Echo>>,
}

impl Plan {
    /// The id the gateway gives answers on `wire`: one for Bedrock, whose answers carry
    /// none; empty for the others.
    pub fn answer_id(wire: Wire) -> String {
        if wire == Wire::Bedrock {
            super::request::next_id()
        } else {
            String::new()
        }
    }

    /// The request body leaves as the client sent it (model rewritten at most).
    pub fn passes_request(&self) -> bool {
        matches!(
            (self.client, self.wire),
            (Api::OpenAi, Wire::OpenAi) | (Api::Anthropic, Wire::Anthropic)
        ) || self.serves_responses()
    }

    /// A Responses API request to a provider that serves the API itself (OpenAI, Azure
    /// OpenAI): passed through both ways.
    pub fn serves_responses(&self) -> bool {
        self.client == Api::Responses
            && matches!(
                self.provider,
                ProviderKind::OpenAi | ProviderKind::AzureOpenAi
            )
    }

    /// The answer reaches the client as the provider sent it.
    pub fn passes_response(&self) -> bool {
        matches!(
            (self.client, self.wire),
            (Api::OpenAi, Wire::OpenAi) | (Api::Anthropic, Wire::Anthropic | Wire::VertexAnthropic)
        ) || self.serves_responses()
    }

    /// The body sent upstream for a translated request (`passes_request` is false).
    pub fn request(&mut self, body: &[u8]) -> Result<Vec<u8>, TranslateError> {
        let out = self.request_value(crate::translate::parse_client_json(body)?)?;
        serde_json::to_vec(&out).map_err(|_| TranslateError::Internal)
    }

    /// [`Plan::request`] on a parsed body.
    pub fn request_value(&mut self, client: Value) -> Result<Value, TranslateError> {
        Ok(match (self.client, self.wire) {
            (Api::Anthropic, Wire::VertexAnthropic) => super::anthropic::vertex_body(client),
            (Api::Anthropic, _) => {
                let field = if matches!(
                    self.provider,
                    ProviderKind::OpenAi | ProviderKind::AzureOpenAi
                ) {
                    crate::translate::anthropic_to_openai::MaxTokensField::MaxCompletionTokens
                } else {
                    crate::translate::anthropic_to_openai::MaxTokensField::MaxTokens
                };
                let openai = crate::translate::anthropic_to_openai::request_value(
                    &client,
                    &self.model,
                    field,
                    self.wire == Wire::Bedrock,
                )?;
                self.openai_to_wire(&openai)?
            }
            (Api::OpenAi, _) => self.openai_to_wire(&client)?,
            (Api::Responses, _) => {
                let mut translated = crate::translate::responses::request::request(
                    &client,
                    self.responses_target(),
                )?;
                self.json_mode = translated.echo.json_mode();
                self.echo = Some(Arc::new(translated.echo));
                translated.chat["model"] = Value::String(self.model.to_string());
                self.openai_to_wire(&translated.chat)?
            }
        })
    }

    /// How a translated Responses request's target takes reasoning and its token limit.
    fn responses_target(&self) -> crate::translate::responses::Target {
        use crate::translate::responses::Target;
        match self.wire {
            Wire::OpenAi => {
                Target::Chat(crate::translate::anthropic_to_openai::MaxTokensField::MaxTokens)
            }
            Wire::Anthropic | Wire::VertexAnthropic => Target::Claude,
            Wire::Bedrock if self.model.contains("claude") => Target::Claude,
            Wire::Bedrock => Target::NoReasoning,
            Wire::Gemini => Target::Gemini,
        }
    }

    /// Claude's thinking is kept in the pivot (as `thinking_blocks`) for clients that can
    /// carry it back: Anthropic's, and the Responses API's reasoning items.
    fn keeps_thinking(&self) -> bool {
        self.client != Api::OpenAi
    }

    /// JSON mode went through a forced tool (the translators for these wire formats send
    /// one), so the answer's call is its content.
    fn json_by_tool(&self) -> bool {
        self.json_mode
            && self.client != Api::Anthropic
            && matches!(
                self.wire,
                Wire::Anthropic | Wire::VertexAnthropic | Wire::Bedrock
            )
    }

    fn openai_to_wire(&self, v: &Value) -> Result<Value, TranslateError> {
        Ok(match self.wire {
            Wire::OpenAi => v.clone(),
            Wire::Anthropic => super::anthropic::translate::request_value(v, &self.model)?,
            Wire::VertexAnthropic => super::anthropic::vertex_body(
                super::anthropic::translate::request_value(v, &self.model)?,
            ),
            Wire::Gemini => super::gemini::translate::request_value(v)?,
            Wire::Bedrock => super::bedrock::translate::request_value(v)?,
        })
    }

    /// A successful JSON answer in the client's format, and its usage. A same-format
    /// answer is returned as the same bytes; only its `usage` member is read.
    pub fn response(&self, body: Bytes) -> Result<(Bytes, Option<Usage>), TranslateError> {
        if self.passes_response() {
            #[derive(Deserialize)]
            struct UsageOnly {
                #[serde(default)]
                usage: Option<Value>,
            }
            let usage = match crate::metering::usage::usage_member(&body, self.client) {
                Some(usage) => Some(usage),
                None => serde_json::from_slice::<UsageOnly>(&body)
                    .map_err(|_| TranslateError::UpstreamBody)?
                    .usage
                    .as_ref()
                    .and_then(match self.client {
                        Api::OpenAi => Usage::from_openai,
                        Api::Anthropic => Usage::from_anthropic,
                        Api::Responses => Usage::from_responses,
                    }),
            };
            let body = match &self.ids {
                Some(ids) => {
                    crate::translate::ids::rewrite(&body, ids.as_ref()).map_or(body, Bytes::from)
                }
                None => body,
            };
            return Ok((body, usage));
        }
        let upstream: Value =
            serde_json::from_slice(&body).map_err(|_| TranslateError::UpstreamBody)?;
        let openai = match self.wire {
            Wire::OpenAi => upstream,
            Wire::Anthropic | Wire::VertexAnthropic => super::anthropic::translate::response_value(
                &upstream,
                self.created,
                self.keeps_thinking(),
            ),
            Wire::Gemini => {
                super::gemini::translate::response_value(&upstream, &self.model, self.created)
            }
            Wire::Bedrock => super::bedrock::translate::response_value(
                &upstream,
                &self.model,
                &self.id,
                self.created,
                self.keeps_thinking(),
            ),
        };
        let mut openai = openai;
        if self.json_by_tool() {
            crate::translate::calls_as_content(&mut openai);
        }
        let usage = openai.get("usage").and_then(Usage::from_openai);
        let out = match self.client {
            Api::OpenAi => openai,
            Api::Anthropic => crate::translate::anthropic_to_openai::response_value(&openai),
            Api::Responses => crate::translate::responses::response(
                &openai,
                self.echo.as_deref().ok_or(TranslateError::Internal)?,
            ),
        };
        Ok((
            serde_json::to_vec(&out)
                .map_err(|_| TranslateError::Internal)?
                .into(),
            usage,
        ))
    }

    /// A provider's error body (status `status`, with its `headers`) in the client's
    /// format.
    pub fn error(&self, status: u16, body: Bytes, headers: &http::HeaderMap) -> Bytes {
        if self.passes_response() {
            return body;
        }
        let openai: Bytes = match self.wire {
            Wire::OpenAi => body,
            Wire::Anthropic | Wire::VertexAnthropic => {
                super::anthropic::translate::error(&body).into()
            }
            Wire::Gemini => super::gemini::translate::error(&body, status).into(),
            Wire::Bedrock => {
                let kind = super::bedrock::error_type(headers);
                super::bedrock::translate::error(&body, status, kind).into()
            }
        };
        match self.client {
            // The Responses API's errors are OpenAI's.
            Api::OpenAi | Api::Responses => openai,
            Api::Anthropic => crate::translate::anthropic_to_openai::error(&openai, status).into(),
        }
    }

    /// The stream translation for this plan: a relay of the bytes as they are for
    /// same-format pairs, the steps between the formats otherwise.
    pub fn stream(&self) -> Chain {
        if self.passes_response() && !self.json_by_tool() {
            return Chain::Relay(match self.client {
                Api::OpenAi => crate::translate::relay::Relay::openai(self.include_usage),
                Api::Anthropic => crate::translate::relay::Relay::anthropic(),
                Api::Responses => crate::translate::relay::Relay::responses(self.ids.clone()),
            });
        }
        let decoder = if self.wire == Wire::Bedrock {
            Decoder::Aws(crate::base::eventstream::Decoder::default())
        } else {
            Decoder::Sse(sse::Parser::default())
        };
        // A second step turns OpenAI chunks into Anthropic events; it needs usage in them.
        let second: Option<Box<dyn StreamStep>> = match (self.client, self.passes_response()) {
            (Api::Anthropic, false) => Some(Box::new(
                crate::translate::anthropic_to_openai::StreamTranslator::new(),
            )),
            (Api::Responses, false) => {
                // The echo is set when the request is translated, which comes first.
                let echo = self.echo.clone().unwrap_or_else(|| {
                    Arc::new(crate::translate::responses::Echo::of(&Value::Null))
                });
                Some(Box::new(crate::translate::responses::stream::Stream::new(
                    echo,
                    self.created,
                )))
            }
            _ => None,
        };
        let usage_in_chunks = self.include_usage || second.is_some();
        let first: Box<dyn StreamStep> = match (self.client, self.wire) {
            // Same-format pairs are relayed (above); an Anthropic client on an OpenAI model
            // reads OpenAI's chunks with their usage.
            (_, Wire::OpenAi) => Box::new(OpenAiMeter::new(usage_in_chunks)),
            (_, Wire::Anthropic | Wire::VertexAnthropic) => {
                Box::new(super::anthropic::translate::StreamTranslator::new(
                    self.created,
                    usage_in_chunks,
                    self.keeps_thinking(),
                ))
            }
            (_, Wire::Gemini) => Box::new(super::gemini::translate::StreamTranslator::new(
                &self.model,
                self.created,
                usage_in_chunks,
            )),
            (_, Wire::Bedrock) => Box::new(super::bedrock::translate::StreamTranslator::new(
                &self.id,
                &self.model,
                self.created,
                usage_in_chunks,
                self.keeps_thinking(),
            )),
        };
        let first = if self.json_by_tool() {
            Box::new(JsonAsContent(first))
        } else {
            first
        };
        Chain::Steps(Steps {
            decoder,
            first,
            second: second.map(|s| (sse::Parser::default(), s)),
        })
    }
}

/// JSON mode through a forced tool, in a stream: the translated OpenAI chunks have the
/// call's fragments moved into content (see [`crate::translate::chunk_calls_as_content`]).
struct JsonAsContent(Box<dyn StreamStep>);

impl JsonAsContent {
    fn rewrite(out: String) -> String {
        let mut rewritten = String::with_capacity(out.len());
        for event in out.split_inclusive("\n\n") {
            let data = event.strip_prefix("data: ").map(str::trim_end);
            match data.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
                Some(mut chunk) => {
                    if crate::translate::chunk_calls_as_content(&mut chunk) {
                        rewritten.push_str(&crate::translate::sse_data(&chunk));
                    } else {
                        rewritten.push_str(event);
                    }
                }
                None => rewritten.push_str(event),
            }
        }
        rewritten
    }
}

impl StreamStep for JsonAsContent {
    fn event(&mut self, event: &sse::Event) -> String {
        Self::rewrite(self.0.event(event))
    }

    fn end(&mut self) -> String {
        Self::rewrite(self.0.end())
    }

    fn usage(&self) -> Option<Usage> {
        self.0.usage()
    }
}

/// Frames of the provider's stream.
enum Decoder {
    Sse(sse::Parser),
    Aws(crate::base::eventstream::Decoder),
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Sse(#[from] sse::TooLarge),
    #[error("event stream: {0}")]
    Aws(#[from] crate::base::eventstream::DecodeError),
}

/// One stream's way from the provider's format to the client's.
#[derive(Debug)]
pub enum Chain {
    /// Same format: the bytes as they are, metered.
    Relay(crate::translate::relay::Relay),
    /// Translated: decoded into events, then through the steps.
    Steps(Steps),
}

impl Chain {
    /// The client's bytes for the provider's `bytes`, written as soon as they complete an
    /// event (the same buffer, for most frames of a relayed stream).
    pub fn feed_bytes(&mut self, bytes: Bytes) -> Result<Bytes, StreamError> {
        match self {
            Self::Relay(r) => Ok(r.feed(bytes)?),
            Self::Steps(s) => Ok(s.feed(&bytes)?.into()),
        }
    }

    /// [`Chain::feed_bytes`] as text.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<String, StreamError> {
        match self {
            Self::Relay(r) => {
                Ok(String::from_utf8_lossy(&r.feed(Bytes::copy_from_slice(bytes))?).into_owned())
            }
            Self::Steps(s) => s.feed(bytes),
        }
    }

    /// The closing bytes when the provider's stream ends.
    pub fn end_bytes(&mut self) -> Bytes {
        match self {
            Self::Relay(r) => r.end(),
            Self::Steps(s) => s.end().into(),
        }
    }

    /// The closing bytes when the provider's stream broke: a translated stream's end
    /// (which reports an unfinished answer as an error event), or a relayed stream's rest
    /// and an error event in the client's format.
    pub fn cut_bytes(&mut self) -> Bytes {
        match self {
            Self::Relay(r) => r.cut(),
            Self::Steps(s) => s.end().into(),
        }
    }

    /// [`Chain::end_bytes`] as text.
    pub fn end(&mut self) -> String {
        String::from_utf8_lossy(&self.end_bytes()).into_owned()
    }

    /// Usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::Relay(r) => r.usage(),
            Self::Steps(s) => s.first.usage(),
        }
    }
}

/// Decoder and steps of one translated stream.
pub struct Steps {
    decoder: Decoder,
    first: Box<dyn StreamStep>,
    second: Option<(sse::Parser, Box<dyn StreamStep>)>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps").finish_non_exhaustive()
    }
}

impl Steps {
    fn through_second(&mut self, text: String) -> String {
        let Some((parser, step)) = self.second.as_mut() else {
            return text;
        };
        let mut out = String::new();
        // Text written by the first step is well-formed and small: it cannot be too large.
        for event in parser.feed(text.as_bytes()).unwrap_or_default() {
            out += &step.event(&event);
        }
        out
    }

    /// The client's bytes for the provider's `bytes`, written as soon as they are complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<String, StreamError> {
        let events = match &mut self.decoder {
            Decoder::Sse(p) => p.feed(bytes)?,
            Decoder::Aws(d) => d.feed(bytes)?.iter().map(|m| m.to_event()).collect(),
        };
        let mut first = String::new();
        for event in &events {
            first += &self.first.event(event);
        }
        Ok(self.through_second(first))
    }

    /// The closing bytes when the provider's stream ends.
    pub fn end(&mut self) -> String {
        let mut first = String::new();
        if let Decoder::Sse(p) = &mut self.decoder
            && let Some(event) = p.finish()
        {
            first += &self.first.event(&event);
        }
        first += &self.first.end();
        let mut out = self.through_second(first);
        if let Some((_, step)) = self.second.as_mut() {
            out += &step.end();
        }
        out
    }
}

/// SSE text of an event as parsed.
fn reemit(event: &sse::Event) -> String {
    let mut out = String::with_capacity(event.data.len() + event.name.len() + 16);
    if !event.name.is_empty() {
        out.push_str("event: ");
        out.push_str(&event.name);
        out.push('\n');
    }
    for line in event.data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Passes an OpenAI stream through, reading its usage chunk, and drops that chunk when
/// the gateway asked for it on the client's behalf.
#[derive(Debug)]
pub struct OpenAiMeter {
    client_wants_usage: bool,
    usage: Option<Usage>,
}

impl OpenAiMeter {
    pub fn new(client_wants_usage: bool) -> Self {
        Self {
            client_wants_usage,
            usage: None,
        }
    }
}

impl StreamStep for OpenAiMeter {
    fn event(&mut self, event: &sse::Event) -> String {
        // Only the usage chunk has a usage object; the others have none or null.
        if (event.data.contains("\"usage\":{") || event.data.contains("\"usage\": {"))
            && let Ok(v) = serde_json::from_str::<Value>(&event.data)
            && let Some(u) = v.get("usage").and_then(Usage::from_openai)
        {
            {
                self.usage = Some(u);
                let no_choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if no_choices && !self.client_wants_usage {
                    return String::new();
                }
            }
        }
        reemit(event)
    }

    fn end(&mut self) -> String {
        String::new()
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
