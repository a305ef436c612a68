//! Bearer tokens from an OAuth 2 token endpoint: a form is POSTed, `access_token` and
//! `expires_in` are read from the answer (RFC 6749 section 5.1), and the token is cached
//! until shortly before it expires. The Google service-account flow and MCP servers'
//! client credentials both get their tokens here.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::base::upstream::Upstream;

/// Largest token answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint could not be reached")]
    Unreachable,
    #[error("the token endpoint refused the credentials (status {0})")]
    Refused(u16),
    #[error("the token endpoint's answer has no access_token")]
    BadAnswer,
    #[error("signing failed")]
    Sign,
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// What an exchange gives: `Authorization: Bearer <token>` (marked sensitive), and how
/// long the endpoint says the token lasts.
pub type Token = (HeaderValue, Option<Duration>);

/// POSTs `form` (already `application/x-www-form-urlencoded`) to `uri`, with
/// `client_auth` as the `Authorization` header when the client authenticates that way;
/// `timeout` bounds the whole exchange.
pub async fn exchange(
    upstream: &Upstream,
    uri: &Uri,
    form: String,
    client_auth: Option<HeaderValue>,
    timeout: Duration,
) -> Result<Token, TokenError> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    if let Some(auth) = client_auth {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let request = request
        .body(Full::new(Bytes::from(form)))
        .map_err(|_| TokenError::Unreachable)?;
    let exchange = async {
        let response = upstream
            .request(request)
            .await
            .map_err(|_| TokenError::Unreachable)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| TokenError::Unreachable)?
            .to_bytes();
        if !status.is_success() {
            return Err(TokenError::Refused(status.as_u16()));
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| TokenError::BadAnswer)?;
        if answer.access_token.is_empty() {
            return Err(TokenError::BadAnswer);
        }
        let mut value = HeaderValue::try_from(format!("Bearer {}", answer.access_token))
            .map_err(|_| TokenError::BadAnswer)?;
        value.set_sensitive(true);
        Ok((value, answer.expires_in.map(Duration::from_secs)))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TokenError::Unreachable)?
}

/// One credential's token while it is fresh. Callers that find it stale at the same time
/// wait for one exchange.
#[derive(Default)]
pub struct Cached {
    slot: Mutex<Option<(HeaderValue, Instant)>>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").finish_non_exhaustive()
    }
}

impl Cached {
    /// The cached token, or the one `fetch` gets, kept until `early` before it expires
    /// (`lifetime` when the endpoint does not say).
    pub async fn get<F, Fut>(
        &self,
        early: Duration,
        lifetime: Duration,
        fetch: F,
    ) -> Result<HeaderValue, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, TokenError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((value, until)) = slot.as_ref()
            && Instant::now() < *until
        {
            return Ok(value.clone());
        }
        let (value, life) = fetch().await?;
        let until = Instant::now() + life.unwrap_or(lifetime).saturating_sub(early);
        *slot = Some((value.clone(), until));
        Ok(value)
    }

    /// Drops the token (the server rejected it), so the next `get` fetches another.
    pub async fn forget(&self) {
        *self.slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_token_is_kept_until_shortly_before_it_expires_or_is_forgotten() {
        let cache = Cached::default();
        let fetches = std::sync::atomic::AtomicU32::new(0);
        let get = || {
            cache.get(
                Duration::from_secs(30),
                Duration::from_secs(300),
                || async {
                    let n = fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok((
                        HeaderValue::from_str(&format!("Bearer t{n}"))
                            .unwrap_or(HeaderValue::from_static("x")),
                        Some(Duration::from_secs(100)),
                    ))
                },
            )
        };
        assert_eq!(
            get().await.ok(),
            Some(HeaderValue::from_static("Bearer t0"))
        );
        tokio::time::advance(Duration::from_secs(69)).await;
        assert_eq!(
            get().await.ok(),
            Some(HeaderValue::from_static("Bearer t0"))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            get().await.ok(),
            Some(HeaderValue::from_static("Bearer t1")),
            "30 s before the 100 s expiry"
        );
        cache.forget().await;
        assert_eq!(
            get().await.ok(),
            Some(HeaderValue::from_static("Bearer t2"))
        );
    }
}
