//! Authentication of the config and usage streams. A dataplane presents
//! `authorization: Bearer <token>`, checked before any gRPC method runs:
//!
//! - a token shared with the dataplanes (local mode reads it from a file), compared in
//!   constant time; or
//! - in Kubernetes, the dataplane's projected ServiceAccount token, checked with a
//!   TokenReview for the configured audience and accepted only for the dataplane's own
//!   ServiceAccounts. A token that passed is remembered (by its hash) for a minute, so a
//!   reconnecting fleet does not flood the API server.
//!
//! An unauthenticated client gets `UNAUTHENTICATED` and nothing else.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A token shared with the dataplanes.
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

    pub fn verify(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(&self.token))
    }
}

/// How long a reviewed token is trusted without asking again.
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// Reviewed tokens remembered at most (a fleet of dataplanes, with rotation).
const REVIEW_CACHE: usize = 10_000;

/// ServiceAccount tokens, checked with the Kubernetes TokenReview API.
pub struct TokenReviewer {
    pub client: kube::Client,
    /// The audience the dataplanes' projected tokens are issued for.
    pub audience: String,
    /// Usernames accepted: `system:serviceaccount:<namespace>:<name>`.
    pub allowed: HashSet<String>,
    passed: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// `service_accounts` as `namespace/name`.
    pub fn new(client: kube::Client, audience: &str, service_accounts: &[String]) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            allowed: service_accounts
                .iter()
                .map(|sa| format!("system:serviceaccount:{}", sa.replacen('/', ":", 1)))
                .collect(),
            passed: Mutex::new(HashMap::new()),
        }
    }

    fn passed(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        match self.passed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub async fn verify(&self, presented: &str) -> bool {
        if presented.is_empty() {
            return false;
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let now = Instant::now();
        if self.passed().get(&hash).is_some_and(|t| now < *t) {
            return true;
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(presented.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let status = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r.status,
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed; refusing the dataplane");
                return false;
            }
        };
        let Some(status) = status else {
            return false;
        };
        let user = status
            .user
            .as_ref()
            .and_then(|u| u.username.as_deref())
            .unwrap_or("");
        // An answer without audiences means the token is valid for the API server's own
        // audience, not the one asked for: a token issued to talk to the API server must
        // not open the config stream.
        let ok = status.authenticated == Some(true)
            && self.allowed.contains(user)
            && status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|x| x == &self.audience));
        if ok {
            let mut passed = self.passed();
            passed.retain(|_, t| now < *t);
            if passed.len() < REVIEW_CACHE {
                passed.insert(hash, now + REVIEW_TTL);
            }
        } else {
            tracing::warn!(user, "a config stream client was refused");
        }
        ok
    }
}

/// Whichever check this controller runs.
#[derive(Debug)]
pub enum Authenticator {
    Token(TokenCheck),
    Review(Box<TokenReviewer>),
}

impl Authenticator {
    pub async fn verify(&self, presented: &str) -> bool {
        match self {
            Authenticator::Token(t) => t.verify(presented),
            Authenticator::Review(r) => r.verify(presented).await,
        }
    }
}

/// The bearer token of a request, or "".
fn bearer(headers: &http::HeaderMap) -> &str {
    headers
        .get(tollgate_proto::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// A tower layer over the gRPC server that refuses unauthenticated requests.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service answers this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let token = bearer(request.headers());
            if auth.verify(token).await {
                inner.call(request).await
            } else {
                // Never the token itself: whether one came, and from where.
                let remote = request
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
                    .or_else(|| {
                        request
                            .extensions()
                            .get::<tonic::transport::server::TlsConnectInfo<
                                tonic::transport::server::TcpConnectInfo,
                            >>()
                            .and_then(|i| i.get_ref().remote_addr())
                    });
                tracing::warn!(
                    ?remote,
                    token_presented = !token.is_empty(),
                    "a config stream client was refused: a valid dataplane token is required"
                );
                Ok(
                    tonic::Status::unauthenticated("a valid dataplane token is required")
                        .into_http(),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_passes() {
        let check = TokenCheck::new("s3cret\n");
        assert!(check.verify("s3cret"));
        assert!(!check.verify("s3cre"));
        assert!(!check.verify(""));
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), "");
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&headers), "s3cret");
        headers.insert("authorization", "Basic s3cret".parse().unwrap());
        assert_eq!(bearer(&headers), "");
    }
}
