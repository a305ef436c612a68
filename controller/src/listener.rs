//! The controller's listeners (the config stream's and the admin port): a cap on open
//! connections, and back-off after accept errors instead of a busy loop.

use std::time::Duration;

/// A connection of a capped listener, holding one of the listener's slots until it
/// closes.
pub struct Capped {
    inner: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connections of `listener`, at most `cap` open at once: one over it is closed as it
/// is accepted. Accept errors (out of descriptors) back off instead of spinning.
pub fn capped_incoming(
    listener: tokio::net::TcpListener,
    cap: usize,
    name: &'static str,
) -> impl futures_util::Stream<Item = std::io::Result<Capped>> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    futures_util::stream::unfold(
        (listener, slots, Duration::ZERO, None),
        move |(listener, slots, mut backoff, mut warned)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff = Duration::ZERO;
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            // Said once per burst, not per connection: a flood of them
                            // must not flood the log.
                            let now = std::time::Instant::now();
                            if warned.is_none_or(|at: std::time::Instant| {
                                now - at > Duration::from_secs(10)
                            }) {
                                warned = Some(now);
                                tracing::warn!(
                                    cap,
                                    "config stream connections refused: at the cap"
                                );
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let capped = Capped {
                            inner: stream,
                            _slot: slot,
                        };
                        return Some((Ok(capped), (listener, slots, backoff, warned)));
                    }
                    Err(e) => {
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                        tracing::warn!(listener = name, error = %e, ?backoff, "accept failed");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_as_accepted() {
        use futures_util::StreamExt;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(capped_incoming(listener, 1, "test"));
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let held = incoming.next().await.unwrap().unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accept = tokio::spawn(async move {
            let _ = incoming.next().await;
        });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the second connection is closed"
        );
        drop(held);
        accept.abort();
    }
}
