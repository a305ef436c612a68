//! OpenAI's embeddings API from the client; each provider's embeddings API upstream.
//!
//! Rules per parameter (documented in docs/translation.md):
//! - `input`: a string or an array of strings; token arrays only reach OpenAI-format
//!   providers (others take text, so they are refused with a 400);
//! - `dimensions` becomes `outputDimensionality` (Gemini, Vertex AI) or `dimensions`
//!   (Titan); Cohere on Bedrock has no such setting, so it is refused there;
//! - `encoding_format: base64` is honoured by the gateway itself (little-endian f32, as
//!   OpenAI sends it); `user` is dropped; any other member is refused, as OpenAI does.
//! - Usage: Vertex AI's per-instance `token_count`, Titan's `inputTextTokenCount`, or
//!   Bedrock's `x-amzn-bedrock-input-token-count` header; the Gemini API reports none, so
//!   its usage is 0.

use base64::Engine;
use serde_json::{Map, Value, json};

use http::{HeaderMap, Uri};

use super::{bedrock, gemini, openai};
use crate::config::model::{Provider, ProviderKind};
use crate::metering::usage::Usage;
use crate::translate::{TranslateError, bad};

/// An embeddings API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedWire {
    /// OpenAI's `/embeddings` (OpenAI, Azure, OpenAI-compatible servers).
    OpenAi,
    /// The Gemini API's `batchEmbedContents`.
    Gemini,
    /// Vertex AI's `predict` on a text embedding model.
    Vertex,
    /// Bedrock `InvokeModel` on `amazon.titan-embed-*`: one text per call.
    Titan,
    /// Bedrock `InvokeModel` on `cohere.embed-*`: up to 96 texts per call.
    Cohere,
}

impl EmbedWire {
    /// The embeddings API for `model` at `provider`, or why there is none.
    pub fn of(provider: &Provider, model: &str) -> Result<Self, TranslateError> {
        match provider.kind {
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi | ProviderKind::OpenAiCompatible => {
                Ok(Self::OpenAi)
            }
            ProviderKind::Gemini => Ok(Self::Gemini),
            ProviderKind::VertexAi if !model.starts_with("claude") => Ok(Self::Vertex),
            ProviderKind::Bedrock if model.contains("titan-embed") => Ok(Self::Titan),
            ProviderKind::Bedrock if model.contains("cohere.embed") => Ok(Self::Cohere),
            ProviderKind::Bedrock => Err(bad(
                "model",
                &format!(
                    "`{model}` on Bedrock is not an embedding model the gateway can call (amazon.titan-embed-* or cohere.embed-*)"
                ),
            )),
            ProviderKind::Anthropic | ProviderKind::VertexAi => Err(bad(
                "model",
                &format!("`{model}` is a Claude model, and Anthropic offers no embeddings API"),
            )),
        }
    }

    /// Where the embeddings of `model` at `provider` are asked for.
    pub fn uri(self, provider: &Provider, model: &str) -> Result<Uri, http::Error> {
        match self {
            Self::OpenAi => openai::embeddings_uri(provider, model),
            Self::Gemini => gemini::method_uri(provider, model, "batchEmbedContents"),
            Self::Vertex => gemini::method_uri(provider, model, "predict"),
            Self::Titan | Self::Cohere => bedrock::op_uri(provider, model, "invoke"),
        }
    }

    /// A refusal from this API as an OpenAI error body (status `status`).
    pub fn error(self, body: &[u8], status: u16, headers: &HeaderMap) -> Vec<u8> {
        match self {
            Self::OpenAi => body.to_vec(),
            Self::Gemini | Self::Vertex => gemini::translate::error(body, status),
            Self::Titan | Self::Cohere => {
                bedrock::translate::error(body, status, bedrock::error_type(headers))
            }
        }
    }

    /// The input tokens an answer's headers report (Bedrock's `InvokeModel`).
    pub fn header_tokens(self, headers: &HeaderMap) -> Option<u64> {
        headers
            .get(bedrock::INPUT_TOKENS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// A translated embeddings request.
#[derive(Debug)]
pub struct EmbedRequest {
    pub inputs: Vec<String>,
    pub base64: bool,
    pub dimensions: Option<u64>,
}

fn bad_input() -> TranslateError {
    bad(
        "input",
        "expected a non-empty string or an array of 1 to 2048 non-empty strings",
    )
}

/// Reads and checks an OpenAI embeddings request bound for a non-OpenAI provider.
pub fn parse(body: &[u8]) -> Result<EmbedRequest, TranslateError> {
    let v = crate::translate::parse_client_json(body)?;
    let Some(obj) = v.as_object() else {
        return Err(TranslateError::Internal);
    };
    if let Some(k) = obj.keys().find(|k| {
        !matches!(
            k.as_str(),
            "model" | "input" | "encoding_format" | "dimensions" | "user"
        )
    }) {
        return Err(TranslateError::BadRequest(format!(
            "Unrecognized request argument supplied: {k}"
        )));
    }
    let inputs = match obj.get("input") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 2048 => {
            if items.iter().any(|i| i.is_number() || i.is_array()) {
                return Err(bad(
                    "input",
                    "token arrays can be embedded only by OpenAI-format providers; send text",
                ));
            }
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(bad_input()),
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(bad_input()),
    };
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => return Err(bad("encoding_format", "must be float or base64")),
    };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .filter(|d| *d >= 1)
                .ok_or_else(|| bad("dimensions", "must be a positive integer"))?,
        ),
    };
    Ok(EmbedRequest {
        inputs,
        base64,
        dimensions,
    })
}

/// The bodies to send upstream, one per call.
pub fn upstream_bodies(
    req: &EmbedRequest,
    wire: EmbedWire,
    model: &str,
) -> Result<Vec<Vec<u8>>, TranslateError> {
    let (texts, dimensions) = (&req.inputs, req.dimensions);
    let bodies: Vec<Value> = match wire {
        EmbedWire::OpenAi => return Err(TranslateError::Internal),
        EmbedWire::Gemini => vec![gemini::embed_body(model, texts, dimensions)],
        EmbedWire::Vertex => vec![gemini::vertex_embed_body(texts, dimensions)],
        EmbedWire::Titan => bedrock::titan_embed_bodies(texts, dimensions),
        EmbedWire::Cohere => bedrock::cohere_embed_bodies(texts, dimensions)?,
    };
    bodies
        .iter()
        .map(|b| serde_json::to_vec(b).map_err(|_| TranslateError::Internal))
        .collect()
}

/// One upstream answer: its body and the token count from Bedrock's header, if any.
pub struct Answer<'a> {
    pub body: &'a [u8],
    pub header_tokens: Option<u64>,
}

/// The vectors and input tokens in the upstream answers.
fn vectors(
    wire: EmbedWire,
    answers: &[Answer<'_>],
) -> Result<(Vec<Vec<f64>>, u64), TranslateError> {
    let mut out = Vec::new();
    let mut tokens = 0;
    for a in answers {
        let v: Value = serde_json::from_slice(a.body).map_err(|_| TranslateError::UpstreamBody)?;
        tokens += a.header_tokens.unwrap_or(0);
        match wire {
            EmbedWire::OpenAi => return Err(TranslateError::Internal),
            EmbedWire::Gemini => gemini::embed_vectors(&v, &mut out)?,
            EmbedWire::Vertex => tokens += gemini::vertex_embed_vectors(&v, &mut out)?,
            EmbedWire::Titan => {
                tokens += bedrock::titan_embed_vectors(&v, a.header_tokens, &mut out)?
            }
            EmbedWire::Cohere => bedrock::cohere_embed_vectors(&v, &mut out)?,
        }
    }
    Ok((out, tokens))
}

/// OpenAI's embeddings answer from the provider's, and its usage.
pub fn response(
    req: &EmbedRequest,
    wire: EmbedWire,
    model: &str,
    answers: &[Answer<'_>],
) -> Result<(Vec<u8>, Usage), TranslateError> {
    let (vectors, tokens) = vectors(wire, answers)?;
    if vectors.len() != req.inputs.len() {
        return Err(TranslateError::UpstreamBody);
    }
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, vector)| {
            let embedding = if req.base64 {
                let mut bytes = Vec::with_capacity(vector.len() * 4);
                for x in vector {
                    bytes.extend_from_slice(&(x as f32).to_le_bytes());
                }
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::Array(vector.into_iter().map(Value::from).collect())
            };
            let mut item = Map::new();
            item.insert("object".into(), json!("embedding"));
            item.insert("index".into(), json!(i));
            item.insert("embedding".into(), embedding);
            Value::Object(item)
        })
        .collect();
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    let usage = Usage {
        input: tokens,
        ..Usage::default()
    };
    Ok((
        serde_json::to_vec(&out).map_err(|_| TranslateError::Internal)?,
        usage,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Result<EmbedRequest, TranslateError> {
        parse(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn requests_are_checked() {
        for body in [
            json!({"model": "m"}),
            json!({"model": "m", "input": ""}),
            json!({"model": "m", "input": []}),
            json!({"model": "m", "input": ["a", ""]}),
            json!({"model": "m", "input": [1, 2]}),
            json!({"model": "m", "input": [[1, 2]]}),
            json!({"model": "m", "input": "a", "encoding_format": "hex"}),
            json!({"model": "m", "input": "a", "dimensions": 0}),
            json!({"model": "m", "input": "a", "task": "x"}),
        ] {
            assert!(
                matches!(req(body.clone()), Err(TranslateError::BadRequest(_))),
                "{body}"
            );
        }
        // Titan takes one text per call: the count of texts bounds the provider calls a
        // client's one request makes.
        let texts = |n: usize| json!({"model": "m", "input": vec!["a"; n]});
        assert_eq!(req(texts(2048)).unwrap().inputs.len(), 2048);
        assert!(matches!(
            req(texts(2049)),
            Err(TranslateError::BadRequest(_))
        ));
        let r = req(json!({"model": "m", "input": ["a", "b"], "dimensions": 8, "user": "u", "encoding_format": "base64"})).unwrap();
        assert_eq!(r.inputs, ["a", "b"]);
        assert!(r.base64);
        assert_eq!(r.dimensions, Some(8));
    }

    #[test]
    fn each_wire_gets_its_body() {
        let r = req(json!({"model": "m", "input": ["a", "b"], "dimensions": 8})).unwrap();
        let body = |wire| -> Vec<Value> {
            upstream_bodies(&r, wire, "text-embedding-004")
                .unwrap()
                .iter()
                .map(|b| serde_json::from_slice(b).unwrap())
                .collect()
        };
        assert_eq!(
            body(EmbedWire::Gemini),
            [json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8},
            ]})]
        );
        assert_eq!(
            body(EmbedWire::Vertex),
            [
                json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 8}})
            ]
        );
        assert_eq!(
            body(EmbedWire::Titan),
            [
                json!({"inputText": "a", "dimensions": 8}),
                json!({"inputText": "b", "dimensions": 8})
            ]
        );
        assert!(upstream_bodies(&r, EmbedWire::Cohere, "cohere.embed-english-v3").is_err());
        let many = EmbedRequest {
            inputs: (0..100).map(|i| i.to_string()).collect(),
            base64: false,
            dimensions: None,
        };
        let bodies = upstream_bodies(&many, EmbedWire::Cohere, "m").unwrap();
        assert_eq!(bodies.len(), 2, "96 texts per call");
    }

    #[test]
    fn answers_become_openai_lists() {
        let r = EmbedRequest {
            inputs: vec!["a".into(), "b".into()],
            base64: true,
            dimensions: None,
        };
        let one = br#"{"embedding":[0.5,-0.25],"inputTextTokenCount":3}"#;
        let two = br#"{"embedding":[1.0,0.125],"inputTextTokenCount":4}"#;
        let (out, usage) = response(
            &r,
            EmbedWire::Titan,
            "amazon.titan-embed-text-v2:0",
            &[
                Answer {
                    body: one,
                    header_tokens: None,
                },
                Answer {
                    body: two,
                    header_tokens: None,
                },
            ],
        )
        .unwrap();
        assert_eq!(usage.input, 7);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["data"][1]["index"], 1);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["data"][1]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), 0.125f32.to_le_bytes()].concat()
        );

        // A count mismatch is the provider's fault, not a silent short answer.
        let short = response(
            &r,
            EmbedWire::Vertex,
            "m",
            &[Answer {
                body: br#"{"predictions":[{"embeddings":{"values":[1.0]}}]}"#,
                header_tokens: None,
            }],
        );
        assert!(matches!(short, Err(TranslateError::UpstreamBody)));
    }
}
