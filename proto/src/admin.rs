//! Who may read an admin port's private pages (the controller's `/status` and `/usage`,
//! a dataplane's `/config`): anyone presenting the admin token, or, when no token is
//! set, anyone at all only if the port listens on loopback. Probes (`/healthz`,
//! `/readyz`) and `/metrics` stay open: their contents are bounded and name no secret.

use std::net::SocketAddr;
use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Clone, Debug)]
pub struct Access {
    token: Option<Vec<u8>>,
    loopback: bool,
}

/// Why a private page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// A token is set and the request did not present it.
    Unauthorized,
    /// No token is set and the port is not on loopback.
    NoToken,
}

impl Denied {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::NoToken => 403,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Unauthorized => "this page needs the admin token: Authorization: Bearer TOKEN\n",
            Self::NoToken => {
                "this page is served only on a loopback admin address, or with --admin-token-file set\n"
            }
        }
    }
}

impl Access {
    /// Reads the token from `token_file` when given (surrounding white space trimmed).
    pub fn new(token_file: Option<&Path>, listen: SocketAddr) -> std::io::Result<Self> {
        let token = match token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                let token = text.trim();
                if token.len() < 16 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: an admin token has at least 16 characters",
                            path.display()
                        ),
                    ));
                }
                Some(token.as_bytes().to_vec())
            }
            None => None,
        };
        Ok(Self {
            token,
            loopback: listen.ip().is_loopback(),
        })
    }

    /// Whether a request with this `Authorization` header value may read private pages.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        match &self.token {
            Some(token) => {
                let presented = authorization
                    .and_then(|v| v.strip_prefix(b"Bearer ".as_slice()))
                    .unwrap_or_default();
                if bool::from(presented.ct_eq(token)) {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
            None if self.loopback => Ok(()),
            None => Err(Denied::NoToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_without_a_token_is_open_and_elsewhere_closed() {
        let local = Access::new(None, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(local.check(None), Ok(()));
        let wide = Access::new(None, "0.0.0.0:1".parse().unwrap()).unwrap();
        assert_eq!(wide.check(None), Err(Denied::NoToken));
        assert_eq!(wide.check(Some(b"Bearer x")), Err(Denied::NoToken));
    }

    #[test]
    fn with_a_token_only_the_token_opens() {
        let dir = std::env::temp_dir().join(format!("tollgate-admin-{}", std::process::id()));
        std::fs::write(&dir, "admin-token-0123456789\n").unwrap();
        let a = Access::new(Some(&dir), "127.0.0.1:1".parse().unwrap()).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(a.check(None), Err(Denied::Unauthorized));
        assert_eq!(
            a.check(Some(b"Bearer admin-token-012345678")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            a.check(Some(b"admin-token-0123456789")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(a.check(Some(b"Bearer admin-token-0123456789")), Ok(()));
    }
}
