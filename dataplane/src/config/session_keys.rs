//! The keys MCP sessions are sealed with, as the controller sends them (sealing itself is
//! in the MCP room).

use std::sync::Arc;

use arc_swap::ArcSwapOption;

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
}
