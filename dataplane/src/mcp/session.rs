//! MCP sessions that any dataplane can serve: the `Mcp-Session-Id` a client gets is the
//! session itself (the key it belongs to, the protocol version, and the session id of
//! each upstream server), sealed with ChaCha20-Poly1305 under the key the controller
//! sends every dataplane. No dataplane keeps session state, so a session goes on when the
//! next request lands on another replica or after a restart. A client cannot read the
//! upstream session ids nor forge or alter a session (that fails authentication).

use serde::{Deserialize, Serialize};

pub use crate::config::session_keys::{Keys, SealError};

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

/// Sealing and opening live beside what they seal; the keys come with the config.
impl Keys {
    /// The session id for `session`: URL-safe base64 of nonce, ciphertext and tag.
    pub fn seal(&self, session: &Session) -> Result<String, SealError> {
        let plain = serde_json::to_vec(session).map_err(|_| SealError::Crypto)?;
        self.seal_bytes(AAD, &plain)
    }

    /// The session a session id carries, when it was sealed with a key held here and is
    /// unaltered.
    pub fn open(&self, id: &str) -> Option<Session> {
        serde_json::from_slice(&self.open_bytes(AAD, id)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

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
