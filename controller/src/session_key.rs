//! The key dataplanes seal MCP session ids with. Every dataplane of a controller (and of
//! every replica of it) must hold the same key, so that a session begun on one dataplane
//! can go on at another, and the key must outlive a controller restart, so that a
//! restart does not end every session. It is kept in `--state-dir` in local mode and in a
//! Secret in Kubernetes mode; without either it is random for the life of the process.
//! The key travels only on the authenticated config stream and is never logged.

use std::path::Path;

use ring::rand::SecureRandom;

pub const KEY_BYTES: usize = 32;

pub type SessionKey = [u8; KEY_BYTES];

/// File name of the key in `--state-dir`.
pub const FILE_NAME: &str = "mcp-session.key";

/// Why the session key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no random numbers for the MCP session key")]
    NoRandom,
    #[error("{0} is not a {KEY_BYTES}-byte key")]
    Malformed(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("Secret {0} has no {KEY_BYTES}-byte `key`")]
    SecretMalformed(String),
    #[error("{what} Secret {name}: {source}")]
    Api {
        what: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("Secret {0} is created and deleted again and again")]
    Churn(String),
}

pub fn random() -> Result<SessionKey, KeyError> {
    let mut key = [0u8; KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::NoRandom)?;
    Ok(key)
}

/// Reads the key kept in `dir`, or creates it (readable by the owner only).
pub fn in_dir(dir: &Path) -> Result<SessionKey, KeyError> {
    let path = dir.join(FILE_NAME);
    let io = |what, source| KeyError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            from_bytes(&bytes).ok_or_else(|| KeyError::Malformed(path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random()?;
            write_private(&path, &key).map_err(|e| io("writing", e))?;
            Ok(key)
        }
        Err(e) => Err(io("reading", e)),
    }
}

pub fn from_bytes(bytes: &[u8]) -> Option<SessionKey> {
    bytes.try_into().ok()
}

fn write_private(path: &Path, key: &SessionKey) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(key)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_in_a_directory_is_made_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tollgate-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = in_dir(&dir).unwrap();
        assert_eq!(in_dir(&dir).unwrap(), first, "read back, not made again");
        assert_ne!(random().unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by the owner only");
        }
        std::fs::write(dir.join(FILE_NAME), b"short").unwrap();
        assert!(in_dir(&dir).is_err(), "a damaged key stops the controller");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
