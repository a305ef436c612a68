//! The dataplane's connection to the controller, shared by the config stream and the usage
//! stream: a channel that presents the token (read at each connection, as a projected
//! ServiceAccount token is rotated by the kubelet), and reconnection with capped, jittered
//! backoff.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("cannot read the token file: {0}")]
    TokenFile(std::io::Error),
    #[error("invalid token: it cannot be sent as a header")]
    Token,
    #[error("stream closed by the controller")]
    Closed,
}

/// An error and its causes, outermost first: tonic's own text ("transport error") says
/// nothing of why (an unknown certificate issuer, a refused connection).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(tollgate_proto::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

pub(crate) type Authorized = InterceptedService<Channel, Bearer>;

/// Where the controller is and how to reach it.
#[derive(Clone)]
pub struct Controller {
    /// `https://host:port` (or `http://` with no TLS).
    pub url: String,
    /// The token presented, read at each connection: a projected ServiceAccount token is
    /// rotated by the kubelet.
    pub token_file: PathBuf,
    /// How the controller's certificate is checked (and the client certificate shown,
    /// for mutual TLS); `None` for a plaintext connection.
    pub tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Connects to the controller and reads the token to present.
pub(crate) async fn connect(controller: &Controller) -> Result<Authorized, StreamError> {
    let mut endpoint = Endpoint::from_shared(controller.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &controller.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let channel = endpoint.connect().await?;
    let token = std::fs::read_to_string(&controller.token_file).map_err(StreamError::TokenFile)?;
    let token: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| StreamError::Token)?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}

impl StreamError {
    /// The controller replica reached is not the one that serves this stream (the usage
    /// stream goes to the leader): another connection, which the Service may send to
    /// another replica, is worth trying at once.
    pub(crate) fn wrong_replica(&self) -> bool {
        matches!(self, StreamError::Status(s) if s.code() == tonic::Code::FailedPrecondition)
    }

    /// The leader's URL, when the replica that refused the stream named it.
    pub(crate) fn leader_url(&self) -> Option<String> {
        let StreamError::Status(s) = self else {
            return None;
        };
        if s.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        s.metadata()
            .get(tollgate_proto::LEADER_URL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Controller {
    /// The same controller reached at `url` (a replica's own address), with the same token
    /// and TLS: the certificate is still checked for the name the configured URL gives
    /// (or --controller-server-name). `None` when `url` would drop TLS or is not a URL.
    pub fn at(&self, url: &str) -> Option<Controller> {
        let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if scheme(url)? != scheme(&self.url)? || url.parse::<http::Uri>().is_err() {
            return None;
        }
        Some(Controller {
            url: url.to_string(),
            ..self.clone()
        })
    }
}

/// Connections tried in quick succession while landing on the wrong replica, before
/// backing off as for any other failure.
const QUICK_TRIES: u32 = 50;

/// Runs `once` forever: after it ends (`lost` is told why), waits a backoff that doubles
/// up to 5 s, with jitter, and starts again from 100 ms after a stream that lasted 10 s. A
/// stream refused by the wrong replica is tried again after 20-40 ms, up to
/// [`QUICK_TRIES`] times in a row.
pub(crate) async fn run_forever<F, Fut>(mut once: F, mut lost: impl FnMut(StreamError))
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StreamError>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut quick = 0;
    loop {
        let started = tokio::time::Instant::now();
        let e = match once().await {
            Ok(()) => StreamError::Closed,
            Err(e) => e,
        };
        let wrong_replica = e.wrong_replica();
        lost(e);
        if wrong_replica && quick < QUICK_TRIES {
            quick += 1;
            tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..=20))).await;
            continue;
        }
        quick = 0;
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = fastrand::u64(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_refusal_by_the_wrong_replica_is_tried_again_at_once() {
        let tries = AtomicU32::new(0);
        let until = |refusal: fn() -> StreamError| {
            let tries = &tries;
            async move {
                tries.store(0, Ordering::Relaxed);
                let run = run_forever(
                    || async {
                        tries.fetch_add(1, Ordering::Relaxed);
                        Err::<(), _>(refusal())
                    },
                    |_| {},
                );
                // Virtual time: how many tries fit in 2 s.
                let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
                tries.load(Ordering::Relaxed)
            }
        };
        let wrong =
            until(|| StreamError::Status(tonic::Status::failed_precondition("not the leader")))
                .await;
        let down = until(|| StreamError::Status(tonic::Status::unavailable("down"))).await;
        assert!(
            wrong >= QUICK_TRIES,
            "{wrong} tries while refused by the wrong replica"
        );
        assert!(
            down <= 6,
            "{down} tries while the controller is down (backing off)"
        );
    }

    #[test]
    fn a_refusal_names_the_leader_and_tls_is_kept_on_the_way_there() {
        let mut refused = tonic::Status::failed_precondition("not the leader");
        refused.metadata_mut().insert(
            tollgate_proto::LEADER_URL,
            "https://10.0.0.7:18000".parse().unwrap(),
        );
        let e = StreamError::Status(refused);
        assert_eq!(e.leader_url().as_deref(), Some("https://10.0.0.7:18000"));
        assert_eq!(
            StreamError::Status(tonic::Status::unavailable("down")).leader_url(),
            None
        );
        let c = Controller {
            url: "https://tollgate-controller.tollgate.svc:18000".into(),
            token_file: "/t".into(),
            tls: Some(ClientTlsConfig::new()),
        };
        let at = c.at("https://10.0.0.7:18000").unwrap();
        assert_eq!(at.url, "https://10.0.0.7:18000");
        assert!(at.tls.is_some());
        // Never from TLS to plaintext, and never to something that is not a URL.
        assert!(c.at("http://10.0.0.7:18000").is_none());
        assert!(c.at("not a url").is_none());
    }
}
