//! Authentication of the config and usage streams: a bearer token shared with the
//! dataplanes (local mode reads it from a file), compared in constant time.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor that admits only requests carrying `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct TokenCheck {
    token: Arc<[u8]>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(<redacted>)")
    }
}

impl TokenCheck {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.trim().as_bytes().into(),
        }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let presented = request
            .metadata()
            .get(tollgate_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(&self.token)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "a valid dataplane token is required",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_passes() {
        let check = TokenCheck::new("s3cret\n");
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check.check(ok).is_ok());
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer s3cre".parse().unwrap());
        assert_eq!(
            check.check(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(check.check(Request::new(())).is_err());
    }
}
