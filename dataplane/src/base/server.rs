//! The accept loop and connection limits shared by the API and admin listeners.
//!
//! Every connection is bounded so that no client can hold the process's file
//! descriptors or memory by being slow:
//! - a cap on open connections per listener (connections over it are closed at once);
//! - a header-read timeout: an HTTP/1 request head must arrive whole within it, counted
//!   from its first byte;
//! - an idle timeout: a connection with no request in flight and no bytes moving is
//!   closed (a streamed answer counts as in flight until its last byte);
//! - HTTP/2 keep-alive pings, with the connection closed when they go unanswered, and a
//!   cap on concurrent streams and on header size;
//! - back-off after accept errors (descriptor exhaustion) instead of a busy loop.
//!
//! A connection upgraded to another protocol (the Responses API's WebSocket mode) leaves
//! hyper's hands: whoever takes it over takes its [`ConnectionSlot`] too, so it still
//! counts against the cap, and watches [`Draining`] to close when the server drains; the
//! drain waits for it as for any connection.
//!
//! The body-read deadline is applied where bodies are read ([`crate::translate::head`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::base::BoxError;

/// A connection's place under the cap (in each request's extensions). It is given back
/// when the connection ends, unless the handler of an upgrade took it for the upgraded
/// connection's life.
#[derive(Clone, Debug)]
pub struct ConnectionSlot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    /// The slot, for the connection an upgrade hands over.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        crate::base::lock(&self.0).take()
    }
}

/// Turns true when the listener starts draining (in each request's extensions): upgraded
/// connections, which the graceful shutdown of HTTP does not reach, close then.
#[derive(Clone, Debug)]
pub struct Draining(pub tokio::sync::watch::Receiver<bool>);

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Time allowed for an HTTP/1 request head, from its first byte.
    pub header_read: Duration,
    /// A connection with no request in flight and no bytes read or written this long is
    /// closed.
    pub idle: Duration,
    /// Interval of HTTP/2 keep-alive pings; a ping unanswered this long closes the
    /// connection.
    pub h2_keepalive: Duration,
}

impl Limits {
    /// The admin port's limits: a few scrapers and probes, never many clients.
    pub fn admin() -> Self {
        Self {
            max_connections: 256,
            header_read: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

/// Largest HTTP/1 read buffer, which bounds a request head.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest HTTP/2 header list.
const MAX_H2_HEADERS: u32 = 64 * 1024;
/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 256;

/// Counters a listener reports.
#[derive(Clone, Default)]
pub struct Counters {
    /// Connections closed at accept because the cap was reached.
    pub refused: Option<prometheus::IntCounter>,
    /// Connections closed by the header-read or idle timeout.
    pub timed_out: Option<prometheus::IntCounter>,
    /// Connections open now.
    pub open: Option<prometheus::IntGauge>,
}

/// Milliseconds since the first call: a monotonic clock cheap enough to read on every
/// read and write.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // +1 so that 0 can mean "not set".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What the watchdog knows of one connection.
#[derive(Default)]
struct Activity {
    /// When bytes last moved either way.
    last: AtomicU64,
    /// When the first byte of a request head not yet complete arrived (0: none pending).
    head_started: AtomicU64,
    /// Requests whose answer is not yet fully written.
    in_flight: AtomicU32,
}

impl Activity {
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived at `now`: a request head starts with them unless a request is in
    /// flight or a head has already started.
    fn read_at(&self, now: u64, head_possible: bool) {
        self.last.store(now, Ordering::Relaxed);
        if head_possible
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started.store(now, Ordering::Release);
        }
    }

    /// When the connection is to be closed unless something happens first, or `None` if
    /// that is already past.
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        let now = now_ms();
        let at = if self.in_flight.load(Ordering::Acquire) > 0 {
            now + limits.idle.as_millis() as u64
        } else {
            match self.head_started.load(Ordering::Acquire) {
                0 => self.last.load(Ordering::Relaxed) + limits.idle.as_millis() as u64,
                started => started + limits.header_read.as_millis() as u64,
            }
        };
        (at > now).then_some(at)
    }
}

/// What a client sends first: HTTP/2's connection preface, byte for byte, or anything
/// else (HTTP/1).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks, as far as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// The first `n` bytes matched the HTTP/2 preface so far.
    Undecided(usize),
    Http1,
    /// The whole preface came: heads are frames from now on, bounded by the header-list
    /// limit and the keep-alive pings rather than the header-read timeout.
    Http2,
}

impl Protocol {
    fn after(self, bytes: &[u8]) -> Self {
        let Protocol::Undecided(seen) = self else {
            return self;
        };
        let want = &H2_PREFACE[seen..];
        let n = want.len().min(bytes.len());
        if bytes[..n] != want[..n] {
            Protocol::Http1
        } else if seen + n == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Undecided(seen + n)
        }
    }
}

/// A TCP stream that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    protocol: Protocol,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let was = this.protocol;
            this.protocol = was.after(&buf.filled()[before..]);
            if this.protocol == Protocol::Http2 && was != Protocol::Http2 {
                // The preface was the pending "head"; HTTP/2 has no other.
                this.activity.head_started.store(0, Ordering::Release);
            }
            // Until the whole preface has come, it is timed like an HTTP/1 head: a client
            // cannot escape the header-read timeout by starting with "PRI".
            this.activity
                .read_at(now_ms(), this.protocol != Protocol::Http2);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Held by a request from its head until its answer's last byte (or until it is
/// dropped): while any is held, the connection is not idle.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Closes the connection once its deadline passes with nothing happening. It looks
/// again at least once per header-read timeout, as a head may start while it sleeps.
async fn watchdog(activity: Arc<Activity>, limits: Limits) {
    while let Some(at) = activity.deadline(&limits) {
        let wait = Duration::from_millis(at.saturating_sub(now_ms())).min(limits.header_read);
        tokio::time::sleep(wait).await;
    }
}

/// The peer address of a request's connection, in the request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub std::net::SocketAddr);

/// Accepts connections on `listener` and serves each with `handler`, within `limits`,
/// until `shutdown` resolves; then stops accepting and lets open connections finish for
/// at most `drain`.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: Limits,
    counters: Counters,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.h2_keepalive)
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_H2_HEADERS);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (draining, drain_signal) = tokio::sync::watch::channel(false);
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    (stream, peer)
                }
                Err(e) => {
                    // Out of descriptors, most often: wait for connections to close
                    // rather than spin on the error.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tracing::warn!(error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(c) = &counters.refused {
                c.inc();
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        activity.touch();
        let io = Watched {
            inner: stream,
            activity: activity.clone(),
            protocol: Protocol::Undecided(0),
        };
        let handler = handler.clone();
        let on_request = activity.clone();
        let slot = ConnectionSlot(Arc::new(std::sync::Mutex::new(Some(slot))));
        let held = slot.clone();
        let drain_signal = drain_signal.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddress(peer));
            // Only a request that asks for an upgrade can take the connection over.
            if req.headers().contains_key(http::header::UPGRADE) {
                req.extensions_mut().insert(held.clone());
                req.extensions_mut().insert(Draining(drain_signal.clone()));
            }
            let in_flight = InFlight::new(&on_request);
            let answer = handler(req);
            async move {
                let response = answer.await;
                Ok::<_, Infallible>(response.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let counters = counters.clone();
        tokio::spawn(async move {
            if let Some(g) = &counters.open {
                g.inc();
            }
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = watchdog(activity, limits) => {
                    if let Some(c) = &counters.timed_out {
                        c.inc();
                    }
                    tracing::debug!("connection closed: header-read or idle timeout");
                }
            }
            if let Some(g) = &counters.open {
                g.dec();
            }
            drop(slot.take());
        });
    }
    drop(listener);
    tracing::info!(?drain, "draining open connections");
    let _ = draining.send(true);
    // Every slot back: HTTP connections drained, upgraded ones closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = slots.acquire_many(all).await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!("drain timed out; closing the remaining connections");
    }
}

/// The default connection cap: half of what the descriptor limit leaves after a reserve
/// for the admin port, config stream and logs, as each client connection may need one
/// upstream connection too. The soft descriptor limit is first raised to the hard one.
pub fn default_max_connections() -> usize {
    const RESERVE: u64 = 512;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the plain struct passed; a failure
    // leaves the limit as it was.
    #[allow(unsafe_code)]
    let nofile = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            1024
        } else {
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
            limit.rlim_cur
        }
    };
    (nofile.saturating_sub(RESERVE) / 2).clamp(64, 1 << 20) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read: Duration::from_millis(500),
            idle: Duration::from_secs(60),
            h2_keepalive: Duration::from_secs(20),
        }
    }

    #[test]
    fn an_idle_connection_is_given_the_idle_timeout() {
        let a = Activity::default();
        a.touch();
        let at = a.deadline(&limits()).unwrap();
        assert!(at >= now_ms() + 59_000, "{at}");
    }

    #[test]
    fn a_started_head_is_given_the_header_timeout_and_then_expires() {
        let a = Activity::default();
        a.touch();
        a.head_started.store(now_ms(), Ordering::Release);
        let at = a.deadline(&limits()).unwrap();
        assert!(at <= now_ms() + 500, "{at}");
        std::thread::sleep(Duration::from_millis(520));
        assert_eq!(a.deadline(&limits()), None);
    }

    #[test]
    fn a_request_in_flight_keeps_the_connection_whatever_the_clock() {
        let a = Arc::new(Activity::default());
        a.last.store(1, Ordering::Relaxed);
        a.head_started.store(1, Ordering::Release);
        let guard = InFlight::new(&a);
        assert!(a.deadline(&limits()).is_some());
        drop(guard);
        // The end of the answer counts as activity: the idle clock starts again.
        assert!(a.deadline(&limits()).unwrap() > now_ms() + 59_000);
    }

    #[test]
    fn only_the_whole_preface_makes_a_connection_http2() {
        let split = [&H2_PREFACE[..4], &H2_PREFACE[4..17], &H2_PREFACE[17..]];
        let mut p = Protocol::Undecided(0);
        for part in split {
            assert_ne!(p, Protocol::Http2);
            p = p.after(part);
        }
        assert_eq!(p, Protocol::Http2);
        assert_eq!(
            Protocol::Undecided(0).after(b"PRI "),
            Protocol::Undecided(4)
        );
        assert_eq!(Protocol::Undecided(4).after(b"xyz"), Protocol::Http1);
        assert_eq!(
            Protocol::Undecided(0).after(b"POST / HTTP/1.1"),
            Protocol::Http1
        );
        assert_eq!(Protocol::Http1.after(H2_PREFACE), Protocol::Http1);
    }
}
