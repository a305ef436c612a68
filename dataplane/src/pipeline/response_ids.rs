//! Conversations of the Responses API across provider accounts and replicas. A response
//! is stored by the provider account (provider and credential) that made it, and only
//! that account can continue it (`previous_response_id`) or read it back. So the ids a
//! client gets are the gateway's own: the tenant (namespace), the provider, the credential
//! and the provider's id, sealed with the key every dataplane holds (as MCP sessions are),
//! so any replica can route a follow-up to the account that stores its conversation and
//! no client can forge or alter one. A follow-up keeps its route's other rules; when that
//! account cannot take it, the client is told so, never answered without its history.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::lock;
use crate::config::model::{Credential, Provider, Route};
use crate::config::session_keys::Keys;
use crate::error::ApiError;
use crate::translate::head::ChatHead;
use crate::translate::ids::IdSeal;

/// Bound into every sealed id: a value sealed for another use does not open as one.
const AAD: &[u8] = b"tollgate/response-id/v1";

/// The gateway's ids look like OpenAI's (`resp_` and letters, digits, `_`, `-`), and
/// never like one of a provider's, which are hexadecimal after `resp_`.
pub(crate) const PREFIX: &str = "resp_tg_";

/// Where a response is stored, as its sealed id says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The namespace of the key that made it: only its keys can use it.
    #[serde(rename = "n")]
    pub namespace: String,
    /// The LLMProvider, `<namespace>/<name>`.
    #[serde(rename = "p")]
    pub provider: String,
    /// The credential (its id: `<secret>/<key>`), which names the account.
    #[serde(rename = "c")]
    pub credential: String,
    /// The provider's own id.
    #[serde(rename = "i")]
    pub id: String,
}

/// What a sealed id says, when this gateway sealed it and it is unaltered.
pub(crate) fn open(keys: &Keys, id: &str) -> Option<Stored> {
    let sealed = id.strip_prefix(PREFIX)?;
    serde_json::from_slice(&keys.open_bytes(AAD, sealed)?).ok()
}

/// The namespace of a key's `<namespace>/<name>`.
pub(crate) fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// The ids of one answer from one account, sealed once each (an id in several events of
/// a stream stays one id).
#[derive(Debug)]
pub(crate) struct Sealer {
    keys: Arc<Keys>,
    at: Stored,
    known: Mutex<Vec<(String, String)>>,
}

impl Sealer {
    /// Seals the ids of an answer from `credential` at `provider`, for a key of
    /// `namespace`; the follow-up's `pin` is known already (the answer names it again).
    pub(crate) fn new(
        keys: Arc<Keys>,
        key: &str,
        provider: &Provider,
        credential: Option<&Credential>,
        pin: Option<&Pin>,
    ) -> Self {
        let known = pin
            .map(|p| vec![(p.stored.id.clone(), p.sealed.clone())])
            .unwrap_or_default();
        Self {
            keys,
            at: Stored {
                namespace: namespace_of(key).to_string(),
                provider: provider.id.to_string(),
                credential: credential.map(|c| c.id.clone()).unwrap_or_default(),
                id: String::new(),
            },
            known: Mutex::new(known),
        }
    }
}

impl IdSeal for Sealer {
    fn seal(&self, raw: &str) -> Option<String> {
        if raw.starts_with(PREFIX) {
            return None;
        }
        let mut known = lock(&self.known);
        if let Some((_, sealed)) = known.iter().find(|(r, _)| r == raw) {
            return Some(sealed.clone());
        }
        let stored = Stored {
            id: raw.to_string(),
            ..self.at.clone()
        };
        let plain = serde_json::to_vec(&stored).ok()?;
        // Without a key from the controller yet, the provider's id goes as it is: a
        // follow-up with it is refused, which says why.
        let sealed = format!("{PREFIX}{}", self.keys.seal_bytes(AAD, &plain).ok()?);
        known.push((raw.to_string(), sealed.clone()));
        Some(sealed)
    }
}

/// A follow-up's previous response: where it is stored, and the id the client sent.
#[derive(Debug)]
pub(crate) struct Pin {
    pub stored: Stored,
    pub sealed: String,
}

/// For a Responses request with `previous_response_id`: the previous response, opened
/// and checked against the key's namespace; the body carries the provider's own id, and
/// the route keeps only the targets on the provider that stores it.
pub(crate) fn follow_up(
    keys: &Keys,
    key: &str,
    (route, body, head): (&mut Arc<Route>, &mut bytes::Bytes, &mut ChatHead),
) -> Result<Option<Arc<Pin>>, ApiError> {
    let Some(sealed) = head.previous_response_id.clone() else {
        return Ok(None);
    };
    let stored = open(keys, &sealed)
        .filter(|s| s.namespace == namespace_of(key))
        .ok_or_else(|| ApiError::UnknownResponseId(crate::base::clip(&sealed, 64).into()))?;
    let on = |p: &str| p == stored.provider;
    if !route.targets.iter().any(|t| on(&t.provider))
        && !route.fallbacks.iter().any(|f| on(&f.target.provider))
    {
        return Err(ApiError::BadRequest(format!(
            "previous_response_id names a response stored at provider `{}`, which route `{}` does not send to.",
            stored.provider, route.id
        )));
    }
    let mut kept = (**route).clone();
    kept.targets.retain(|t| on(&t.provider));
    kept.fallbacks.retain(|f| on(&f.target.provider));
    *route = Arc::new(kept);
    *body = with_previous(body, &sealed, &stored.id)?;
    *head = ChatHead::parse(body)?;
    Ok(Some(Arc::new(Pin { stored, sealed })))
}

/// `body` with its `previous_response_id` set to `raw`.
fn with_previous(body: &[u8], sealed: &str, raw: &str) -> Result<bytes::Bytes, ApiError> {
    let quoted = format!("\"{sealed}\"");
    if let Some(at) = memchr::memmem::find(body, quoted.as_bytes()) {
        let mut out = Vec::with_capacity(body.len());
        out.extend_from_slice(&body[..at]);
        out.extend_from_slice(format!("\"{raw}\"").as_bytes());
        out.extend_from_slice(&body[at + quoted.len()..]);
        return Ok(out.into());
    }
    // Written with escapes: rebuilt.
    let mut v: serde_json::Value = crate::translate::parse_client_json(body)?;
    v["previous_response_id"] = serde_json::Value::String(raw.to_string());
    Ok(serde_json::to_vec(&v)
        .map_err(|_| ApiError::Internal)?
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_id_opens_anywhere_with_the_key_and_not_altered() {
        let keys = Arc::new(Keys::default());
        keys.update(&[3u8; 32]);
        let stored = Stored {
            namespace: "team-a".into(),
            provider: "team-a/openai".into(),
            credential: "openai-keys/second".into(),
            id: "resp_67c9fdcecf488190".into(),
        };
        let sealed = format!(
            "{PREFIX}{}",
            keys.seal_bytes(AAD, &serde_json::to_vec(&stored).unwrap())
                .unwrap()
        );
        assert!(!sealed.contains("openai") && !sealed.contains("67c9"));
        let other = Keys::default();
        other.update(&[3u8; 32]);
        assert_eq!(open(&other, &sealed), Some(stored));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(open(&keys, &String::from_utf8(altered).unwrap()), None);
        assert_eq!(
            open(&keys, "resp_67c9fdcecf488190"),
            None,
            "a provider's id"
        );
        // Sealed for another use (an MCP session), it does not open as a response id.
        let mcp = keys.seal_bytes(b"tollgate/mcp-session/v1", b"{}").unwrap();
        assert_eq!(open(&keys, &format!("{PREFIX}{mcp}")), None);
    }

    #[test]
    fn the_previous_id_is_swapped_in_the_body() {
        let body = br#"{"model":"m","previous_response_id":"resp_tg_abc","input":"x"}"#;
        let out = with_previous(body, "resp_tg_abc", "resp_123").unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"m","previous_response_id":"resp_123","input":"x"}"#
        );
        let escaped = br#"{"model":"m","previous_response_id":"\u0072esp_tg_abc"}"#;
        let out = with_previous(escaped, "resp_tg_abc", "resp_123").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["previous_response_id"], "resp_123");
    }
}
