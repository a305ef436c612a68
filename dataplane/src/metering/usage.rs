//! Token counts as providers report them, read into one shape: [`Usage`], in OpenAI's
//! terms, from a whole answer's bytes, a parsed `usage` object, or Anthropic's stream.

use serde::Deserialize;
use serde_json::Value;

use crate::base::Api;

/// Tokens of one answer, in OpenAI's terms: `input` includes `cached`, `output` includes
/// `reasoning`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    /// Input tokens written to the prompt cache (Anthropic, Bedrock), billed at their own
    /// rate.
    pub cache_write: u64,
    pub reasoning: u64,
    /// Server-side web searches (Anthropic), billed per search.
    pub web_searches: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object (as [`usage_member`] reads it from bytes).
    pub fn from_openai(u: &Value) -> Option<Self> {
        u.as_object()?;
        counts::OpenAi::deserialize(u).ok().map(|c| c.usage())
    }

    /// Reads a Responses API `usage` object (`input_tokens` includes the cached ones,
    /// `output_tokens` the reasoning ones, as in OpenAI's chat).
    pub fn from_responses(u: &Value) -> Option<Self> {
        u.as_object()?;
        counts::Responses::deserialize(u).ok().map(|c| c.usage())
    }

    /// Reads a Gemini `usageMetadata` object.
    pub fn from_gemini(u: &Value) -> Option<Self> {
        u.as_object()?;
        counts::Gemini::deserialize(u).ok().map(|c| c.usage())
    }

    /// Reads an Anthropic `usage` object (input there excludes cache reads and writes).
    pub fn from_anthropic(u: &Value) -> Option<Self> {
        u.as_object()?;
        counts::Anthropic::deserialize(u).ok().map(|c| c.usage())
    }

    /// The OpenAI `usage` object.
    pub fn to_openai(self) -> Value {
        let mut v = serde_json::json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        });
        if self.reasoning > 0 {
            v["completion_tokens_details"] =
                serde_json::json!({"reasoning_tokens": self.reasoning});
        }
        v
    }
}

/// The counts of the top-level `usage` object of a JSON answer in `api`'s format, read
/// without parsing the rest: the last `"usage"` key (providers write it last, and inside a
/// JSON string a quote is always escaped, so the bytes `"usage"` followed by a colon are a
/// key), then its value, straight into counts (no document is built). `None` when there is
/// no such key or its value is not an object; the caller then parses the whole answer.
pub(crate) fn usage_member(body: &[u8], api: Api) -> Option<Usage> {
    let mut end = body.len();
    while let Some(at) = memchr::memmem::rfind(&body[..end], b"\"usage\"") {
        end = at;
        let rest = &body[at + 7..];
        let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest[colon] != b':' {
            continue;
        }
        let value = &rest[colon + 1..];
        let open = value.iter().position(|b| !b.is_ascii_whitespace())?;
        if value[open] != b'{' {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(&value[open..]);
        return match api {
            Api::OpenAi => serde::Deserialize::deserialize(&mut de)
                .ok()
                .map(|u: counts::OpenAi| u.usage()),
            Api::Anthropic => serde::Deserialize::deserialize(&mut de)
                .ok()
                .map(|u: counts::Anthropic| u.usage()),
            Api::Responses => serde::Deserialize::deserialize(&mut de)
                .ok()
                .map(|u: counts::Responses| u.usage()),
        };
    }
    None
}

/// `usage` objects, read from bytes or from a document. A count that is missing, null or
/// not a non-negative integer reads as 0.
pub(crate) mod counts {
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::Usage;

    /// A field that reads any value it does not expect as its default, so one odd value
    /// does not cost the whole `usage` object.
    trait Lenient: Default {
        const EXPECTING: &'static str;

        fn from_u64(_: u64) -> Self {
            Self::default()
        }

        fn from_map<'de, A: MapAccess<'de>>(mut a: A) -> Result<Self, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Self::default())
        }
    }

    struct LenientVisitor<T>(PhantomData<T>);

    impl<'de, T: Lenient> Visitor<'de> for LenientVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_u64<E>(self, n: u64) -> Result<T, E> {
            Ok(T::from_u64(n))
        }
        fn visit_i64<E>(self, n: i64) -> Result<T, E> {
            Ok(u64::try_from(n).map_or_else(|_| T::default(), T::from_u64))
        }
        fn visit_f64<E>(self, _: f64) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_bool<E>(self, _: bool) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_unit<E>(self) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_none<E>(self) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<T, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(T::default())
        }
        fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<T, A::Error> {
            T::from_map(a)
        }
    }

    /// A token count: a non-negative integer, anything else reads as 0.
    #[derive(Default, Clone, Copy)]
    pub struct Count(pub u64);

    impl Lenient for Count {
        const EXPECTING: &'static str = "a token count";
        fn from_u64(n: u64) -> Self {
            Count(n)
        }
    }

    impl<'de> Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(LenientVisitor(PhantomData))
        }
    }

    /// A details object: only objects count, anything else reads as empty. Read field by
    /// field rather than through an untagged enum, which would buffer the value first on
    /// every metered answer.
    #[derive(Default)]
    pub struct Details {
        cached_tokens: u64,
        reasoning_tokens: u64,
    }

    impl Lenient for Details {
        const EXPECTING: &'static str = "a details object";
        fn from_map<'de, A: MapAccess<'de>>(mut a: A) -> Result<Self, A::Error> {
            #[derive(Deserialize)]
            #[serde(field_identifier, rename_all = "snake_case")]
            enum Field {
                CachedTokens,
                ReasoningTokens,
                #[serde(other)]
                Other,
            }
            let mut out = Details::default();
            while let Some(field) = a.next_key::<Field>()? {
                match field {
                    Field::CachedTokens => out.cached_tokens = a.next_value::<Count>()?.0,
                    Field::ReasoningTokens => out.reasoning_tokens = a.next_value::<Count>()?.0,
                    Field::Other => {
                        a.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }

    impl<'de> Deserialize<'de> for Details {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(LenientVisitor(PhantomData))
        }
    }

    #[derive(Deserialize)]
    pub struct OpenAi {
        #[serde(default)]
        prompt_tokens: Count,
        #[serde(default)]
        completion_tokens: Count,
        #[serde(default)]
        prompt_tokens_details: Details,
        #[serde(default)]
        completion_tokens_details: Details,
    }

    impl OpenAi {
        pub fn usage(&self) -> Usage {
            Usage {
                input: self.prompt_tokens.0,
                output: self.completion_tokens.0,
                cached: self.prompt_tokens_details.cached_tokens,
                cache_write: 0,
                reasoning: self.completion_tokens_details.reasoning_tokens,
                web_searches: 0,
            }
        }
    }

    /// The Responses API's `usage`.
    #[derive(Deserialize)]
    pub struct Responses {
        #[serde(default)]
        input_tokens: Count,
        #[serde(default)]
        output_tokens: Count,
        #[serde(default)]
        input_tokens_details: Details,
        #[serde(default)]
        output_tokens_details: Details,
    }

    impl Responses {
        pub fn usage(&self) -> Usage {
            Usage {
                input: self.input_tokens.0,
                output: self.output_tokens.0,
                cached: self.input_tokens_details.cached_tokens,
                cache_write: 0,
                reasoning: self.output_tokens_details.reasoning_tokens,
                web_searches: 0,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Anthropic {
        #[serde(default)]
        input_tokens: Count,
        #[serde(default)]
        output_tokens: Count,
        #[serde(default)]
        cache_read_input_tokens: Count,
        #[serde(default)]
        cache_creation_input_tokens: Count,
        #[serde(default)]
        server_tool_use: Option<ServerToolUse>,
    }

    /// Anthropic's server-side tool calls, billed per use.
    #[derive(Deserialize)]
    pub struct ServerToolUse {
        #[serde(default)]
        web_search_requests: Count,
    }

    impl Anthropic {
        pub fn usage(&self) -> Usage {
            super::AnthropicUsage {
                input: self.input_tokens.0,
                output: self.output_tokens.0,
                cache_read: self.cache_read_input_tokens.0,
                cache_creation: self.cache_creation_input_tokens.0,
                web_searches: self
                    .server_tool_use
                    .as_ref()
                    .map_or(0, |s| s.web_search_requests.0),
                seen: true,
            }
            .total()
        }
    }

    /// Gemini's `usageMetadata`: thoughts count as output (and as reasoning).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Gemini {
        #[serde(default)]
        prompt_token_count: Count,
        #[serde(default)]
        tool_use_prompt_token_count: Count,
        #[serde(default)]
        candidates_token_count: Count,
        #[serde(default)]
        thoughts_token_count: Count,
        #[serde(default)]
        cached_content_token_count: Count,
    }

    impl Gemini {
        pub fn usage(&self) -> Usage {
            let reasoning = self.thoughts_token_count.0;
            Usage {
                input: self.prompt_token_count.0 + self.tool_use_prompt_token_count.0,
                output: self.candidates_token_count.0 + reasoning,
                cached: self.cached_content_token_count.0,
                cache_write: 0,
                reasoning,
                web_searches: 0,
            }
        }
    }
}

/// Anthropic usage as it arrives in a stream: `message_start` has the input side,
/// `message_delta` the output side (and, in newer versions, updated input counts).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AnthropicUsage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    web_searches: u64,
    seen: bool,
}

impl AnthropicUsage {
    /// Takes the counts present (and not null) in a `usage` object.
    pub fn merge(&mut self, u: &Value) {
        if !u.is_object() {
            return;
        }
        self.seen = true;
        for (field, key) in [
            (&mut self.input, "input_tokens"),
            (&mut self.output, "output_tokens"),
            (&mut self.cache_read, "cache_read_input_tokens"),
            (&mut self.cache_creation, "cache_creation_input_tokens"),
        ] {
            if let Some(n) = u.get(key).and_then(Value::as_u64) {
                *field = n;
            }
        }
        if let Some(n) = u
            .pointer("/server_tool_use/web_search_requests")
            .and_then(Value::as_u64)
        {
            self.web_searches = n;
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.seen.then(|| self.total())
    }

    /// The usage, zero when none was seen.
    pub fn total(&self) -> Usage {
        Usage {
            input: self.input + self.cache_read + self.cache_creation,
            output: self.output,
            cached: self.cache_read,
            cache_write: self.cache_creation,
            reasoning: 0,
            web_searches: self.web_searches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Usage, usage_member};
    use crate::base::Api;

    #[test]
    fn usage_is_read_from_the_end_without_parsing_the_rest() {
        let openai = br#"{"id":"c","choices":[{"message":{"content":"the \"usage\": {\"x\":1} of it"}}],"usage" : {"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":1}}}"#;
        assert_eq!(
            usage_member(openai, Api::OpenAi),
            Some(Usage {
                input: 3,
                output: 4,
                cached: 2,
                cache_write: 0,
                reasoning: 1,
                web_searches: 0
            })
        );
        // The same counts from the object as a document.
        let doc: serde_json::Value = serde_json::from_slice(openai).unwrap();
        assert_eq!(
            Usage::from_openai(&doc["usage"]),
            Some(Usage {
                input: 3,
                output: 4,
                cached: 2,
                cache_write: 0,
                reasoning: 1,
                web_searches: 0
            })
        );
        // No usage object: the caller falls back to parsing the whole answer.
        assert_eq!(usage_member(br#"{"usage":null}"#, Api::OpenAi), None);
        assert_eq!(usage_member(br#"{"usage":[1,2]}"#, Api::OpenAi), None);
        assert_eq!(usage_member(br#"{"choices":[]}"#, Api::OpenAi), None);
        let anthropic = br#"{"a":"usage","usage":{"input_tokens":2,"cache_read_input_tokens":5,"cache_creation_input_tokens":1,"output_tokens":7,"server_tool_use":{"web_search_requests":1}}}"#;
        assert_eq!(
            usage_member(anthropic, Api::Anthropic),
            Some(Usage {
                input: 8,
                output: 7,
                cached: 5,
                cache_write: 1,
                reasoning: 0,
                web_searches: 1
            })
        );
        // Broken after the usage: still read (the bytes pass to the client as sent).
        assert_eq!(
            usage_member(br#"{"usage":{"input_tokens":2}"#, Api::Anthropic),
            Some(Usage {
                input: 2,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn odd_counts_read_as_zero_from_bytes_and_from_a_document() {
        let only = |input, output| {
            Some(Usage {
                input,
                output,
                ..Usage::default()
            })
        };
        for (body, want) in [
            (
                r#"{"usage":{"prompt_tokens":null,"completion_tokens":-1,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":"x"}}}"#,
                only(0, 0),
            ),
            (
                r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":[3],"prompt_tokens_details":[],"completion_tokens_details":{"reasoning_tokens":{"a":1}}}}"#,
                only(0, 0),
            ),
            (
                r#"{"usage":{"prompt_tokens":7,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":true}}}"#,
                only(7, 2),
            ),
            (
                r#"{"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":"x","completion_tokens_details":4}}"#,
                only(5, 1),
            ),
            (
                r#"{"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":{"audio":{"a":[1,{"b":2}]},"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":2,"x":null}}}"#,
                Some(Usage {
                    input: 5,
                    output: 3,
                    cached: 2,
                    cache_write: 0,
                    reasoning: 2,
                    web_searches: 0,
                }),
            ),
        ] {
            assert_eq!(usage_member(body.as_bytes(), Api::OpenAi), want, "{body}");
            let doc: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(Usage::from_openai(&doc["usage"]), want, "{body}");
        }
        // Gemini's counts, as leniently.
        let doc = serde_json::json!({"promptTokenCount": 9, "toolUsePromptTokenCount": 1, "candidatesTokenCount": "x", "thoughtsTokenCount": 2, "cachedContentTokenCount": null, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}]});
        assert_eq!(
            Usage::from_gemini(&doc),
            Some(Usage {
                input: 10,
                output: 2,
                cached: 0,
                cache_write: 0,
                reasoning: 2,
                web_searches: 0,
            })
        );
        assert_eq!(Usage::from_gemini(&serde_json::json!("9")), None);
        // Not an object: no usage, either way.
        assert_eq!(Usage::from_openai(&serde_json::json!([1, 2])), None);
        assert_eq!(Usage::from_anthropic(&serde_json::Value::Null), None);
        let doc = serde_json::json!({"input_tokens": 2, "cache_read_input_tokens": 5, "output_tokens": null});
        assert_eq!(
            Usage::from_anthropic(&doc),
            Some(Usage {
                input: 7,
                output: 0,
                cached: 5,
                cache_write: 0,
                reasoning: 0,
                web_searches: 0
            })
        );
    }
}
