//! OAuth access tokens for Vertex AI from a service-account key: a JWT signed with the
//! key (RS256) is exchanged at the key's `token_uri` (the JWT-bearer grant, RFC 7523), and
//! the token is cached until shortly before it expires.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;

use super::token::{Cached, exchange};
use crate::base::upstream::Upstream;

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Tokens are renewed this long before they expire.
const EARLY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the service-account key is not JSON with client_email, private_key and token_uri")]
    Shape,
    #[error("the service-account private key is not a PEM PKCS#8 RSA key")]
    PrivateKey,
    #[error("token_uri is not an absolute http(s) URL")]
    TokenUri,
}

pub use super::token::TokenError;

#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// A service account, ready to mint tokens.
pub struct ServiceAccount {
    pub client_email: String,
    token_uri: http::Uri,
    key: RsaKeyPair,
    cached: Cached,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// The DER bytes inside a PEM block.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    STANDARD.decode(body).ok()
}

impl ServiceAccount {
    pub fn from_json(text: &str) -> Result<Arc<Self>, KeyError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|_| KeyError::Shape)?;
        let der = pem_der(&file.private_key).ok_or(KeyError::PrivateKey)?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| KeyError::PrivateKey)?;
        let token_uri: http::Uri = file.token_uri.parse().map_err(|_| KeyError::TokenUri)?;
        if !matches!(token_uri.scheme_str(), Some("http" | "https")) {
            return Err(KeyError::TokenUri);
        }
        Ok(Arc::new(Self {
            client_email: file.client_email,
            token_uri,
            key,
            cached: Cached::default(),
        }))
    }

    /// The signed JWT assertion for the token exchange.
    pub fn assertion(&self, now_unix: i64) -> Result<String, TokenError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now_unix,
            "exp": now_unix + 3600,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| TokenError::Sign)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// `Authorization: Bearer <token>`, from the cache or a new exchange.
    pub async fn authorization(&self, upstream: &Upstream) -> Result<HeaderValue, TokenError> {
        self.cached
            .get(EARLY, Duration::from_secs(3600), || async {
                let assertion = self.assertion(crate::base::now_unix())?;
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
                );
                exchange(upstream, &self.token_uri, form, None, Duration::from_secs(30)).await
            })
            .await
    }
}
