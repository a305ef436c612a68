//! The dataplane's connection to the controller, shared by the config stream and the usage
//! stream: a channel that presents the token (read at each connection, as a projected
//! ServiceAccount token is rotated by the kubelet), and reconnection with capped, jittered
//! backoff.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("connect: {0}")]
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

/// Connects to the controller and reads the token to present.
pub(crate) async fn connect(
    controller: &str,
    token_file: &Path,
) -> Result<Authorized, StreamError> {
    let channel = Endpoint::from_shared(controller.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let token = std::fs::read_to_string(token_file).map_err(StreamError::TokenFile)?;
    let token: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| StreamError::Token)?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}

/// Runs `once` forever: after it ends (`lost` is told why), waits a backoff that doubles
/// up to 5 s, with jitter, and starts again from 100 ms after a stream that lasted 10 s.
pub(crate) async fn run_forever<F, Fut>(mut once: F, mut lost: impl FnMut(StreamError))
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StreamError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        lost(match once().await {
            Ok(()) => StreamError::Closed,
            Err(e) => e,
        });
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = fastrand::u64(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
