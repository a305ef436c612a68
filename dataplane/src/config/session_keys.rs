//! The key the controller sends every dataplane, and sealing with it: what a client is
//! given to bring back (an MCP session, a response id) is sealed with ChaCha20-Poly1305,
//! so any dataplane can open it and no client can read, forge or alter it. Each use binds
//! its own associated data, so a value sealed for one use does not open for another.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

type Held = Option<Arc<(Vec<u8>, Option<Vec<u8>>)>>;

/// The keys sessions are sealed with: the controller's current key, and the one before
/// it, so that sessions sealed just before a change of key still open.
#[derive(Default)]
pub struct Keys {
    keys: ArcSwapOption<(Vec<u8>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("held", &self.keys.load().is_some())
            .finish()
    }
}

impl Keys {
    /// Takes the key of a config response; a different key becomes current and the old
    /// one is kept as the previous. An empty or malformed key is ignored.
    pub fn update(&self, key: &[u8]) {
        if key.len() != 32 {
            return;
        }
        let held = self.keys.load();
        let next = match held.as_deref() {
            Some((current, _)) if current.as_slice() == key => return,
            Some((current, _)) => (key.to_vec(), Some(current.clone())),
            None => (key.to_vec(), None),
        };
        self.keys.store(Some(Arc::new(next)));
    }

    pub fn is_set(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The current key and the one before it, if any key has come.
    pub(crate) fn held(&self) -> arc_swap::Guard<Held> {
        self.keys.load()
    }

    /// `plain` sealed under the current key for the use `aad`: URL-safe base64 of nonce,
    /// ciphertext and tag.
    pub fn seal_bytes(&self, aad: &[u8], plain: &[u8]) -> Result<String, SealError> {
        let held = self.held();
        let (current, _) = held.as_deref().ok_or(SealError::NoKey)?;
        let key = aead_key(current).ok_or(SealError::Crypto)?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Crypto)?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| SealError::Crypto)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// What `sealed` holds, when it was sealed for `aad` with a key held here (the
    /// current or the previous) and is unaltered.
    pub fn open_bytes(&self, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed.trim())
            .ok()?;
        if raw.len() < aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let held = self.held();
        let (current, previous) = held.as_deref()?;
        [Some(current), previous.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|k| open_with(k, aad, &raw))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no sealing key from the controller yet")]
    NoKey,
    #[error("sealing failed")]
    Crypto,
}

fn aead_key(bytes: &[u8]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?,
    ))
}

fn open_with(key: &[u8], aad: &[u8], raw: &[u8]) -> Option<Vec<u8>> {
    let key = aead_key(key)?;
    let (nonce, sealed) = raw.split_at(aead::NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = sealed.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut data).ok()?;
    Some(plain.to_vec())
}
