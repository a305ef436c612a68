//! MCP sessions that any dataplane can serve: the `Mcp-Session-Id` a client gets is the
//! session itself (the key it belongs to, the protocol version, and the session id of
//! each upstream server), sealed with ChaCha20-Poly1305 under the key the controller
//! sends every dataplane. No dataplane keeps session state, so a session goes on when the
//! next request lands on another replica or after a restart. A client cannot read the
//! upstream session ids nor forge or alter a session (that fails authentication).

use base64::Engine;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

pub use crate::config::session_keys::Keys;

/// Bound into every sealed session: a sealed value from another use of the key, or from
/// a later incompatible format, does not open.
const AAD: &[u8] = b"tollgate/mcp-session/v1";

/// What a session id carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The VirtualKey (`<namespace>/<name>`) that began the session; another key cannot
    /// use it.
    #[serde(rename = "k")]
    pub key: String,
    /// The protocol version agreed with the client.
    #[serde(rename = "v")]
    pub version: String,
    /// Each upstream the session reaches, in the order they were initialized.
    #[serde(rename = "u")]
    pub upstreams: Vec<Upstream>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The MCPServer, `<namespace>/<name>`.
    #[serde(rename = "s")]
    pub server: String,
    /// The server's `Mcp-Session-Id`; empty when it keeps no sessions.
    #[serde(rename = "i", default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// The protocol version the server agreed to.
    #[serde(rename = "v")]
    pub version: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no MCP session key from the controller yet")]
    NoKey,
    #[error("sealing failed")]
    Crypto,
}

/// Sealing and opening live beside what they seal; the keys come with the config.
impl Keys {
    /// The session id for `session`: URL-safe base64 of nonce, ciphertext and tag.
    pub fn seal(&self, session: &Session) -> Result<String, SealError> {
        let held = self.held();
        let (current, _) = held.as_deref().ok_or(SealError::NoKey)?;
        let key = aead_key(current).ok_or(SealError::Crypto)?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Crypto)?;
        let mut data = serde_json::to_vec(session).map_err(|_| SealError::Crypto)?;
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        )
        .map_err(|_| SealError::Crypto)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// The session a session id carries, when it was sealed with a key held here and is
    /// unaltered.
    pub fn open(&self, id: &str) -> Option<Session> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id.trim())
            .ok()?;
        if raw.len() < aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let held = self.held();
        let (current, previous) = held.as_deref()?;
        [Some(current), previous.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|k| open_with(k, &raw))
    }
}

fn aead_key(bytes: &[u8]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?,
    ))
}

fn open_with(key: &[u8], raw: &[u8]) -> Option<Session> {
    let key = aead_key(key)?;
    let (nonce, sealed) = raw.split_at(aead::NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = sealed.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(AAD), &mut data).ok()?;
    serde_json::from_slice(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            key: "ns/agent".into(),
            version: "2025-06-18".into(),
            upstreams: vec![
                Upstream {
                    server: "ns/time".into(),
                    session_id: "0b5e7c1d-upstream".into(),
                    version: "2025-06-18".into(),
                },
                Upstream {
                    server: "ns/stateless".into(),
                    session_id: String::new(),
                    version: "2025-03-26".into(),
                },
            ],
        }
    }

    #[test]
    fn a_sealed_session_opens_on_any_holder_of_the_key_and_hides_its_contents() {
        let a = Keys::default();
        assert_eq!(a.seal(&session()), Err(SealError::NoKey));
        a.update(&[7u8; 32]);
        let id = a.seal(&session()).unwrap();
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII"
        );
        assert!(!id.contains("upstream"));
        assert_ne!(a.seal(&session()).unwrap(), id, "a fresh nonce each time");

        // Another dataplane with the same key.
        let b = Keys::default();
        b.update(&[7u8; 32]);
        assert_eq!(b.open(&id), Some(session()));

        // Another key does not open it.
        let other = Keys::default();
        other.update(&[8u8; 32]);
        assert_eq!(other.open(&id), None);
    }

    #[test]
    fn an_altered_or_garbled_id_does_not_open() {
        let k = Keys::default();
        k.update(&[1u8; 32]);
        let id = k.seal(&session()).unwrap();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&id)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.open(&altered), None);
        for garbage in ["", "x", "!!!!", &id[..10]] {
            assert_eq!(k.open(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn after_a_change_of_key_the_previous_still_opens() {
        let k = Keys::default();
        k.update(&[1u8; 32]);
        let old = k.seal(&session()).unwrap();
        k.update(&[2u8; 32]);
        k.update(&[2u8; 32]);
        assert_eq!(k.open(&old), Some(session()));
        let new = k.seal(&session()).unwrap();
        k.update(&[3u8; 32]);
        assert_eq!(k.open(&new), Some(session()));
        assert_eq!(k.open(&old), None, "two changes ago");
        k.update(b"short");
        assert_eq!(k.open(&new), Some(session()), "a malformed key is ignored");
    }
}
