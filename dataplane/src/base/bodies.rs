//! Reading whole bodies within bounds: request bodies against a size limit, a minimum
//! rate and a process-wide budget of bytes held; upstream answers against a size limit
//! and the attempt's deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The budget's unit: permits are KiB, so that a 1 GiB budget is a million permits.
const UNIT: usize = 1024;

/// Bounds on request bodies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Time a body may take whatever its size...
    pub grace: Duration,
    /// ...plus one second per this many bytes received: a client slower than this is cut.
    pub min_rate: u64,
    /// Bytes of request bodies held at once by the whole process, in [`UNIT`]s: a body
    /// holds its share until the last copy of it is dropped (the request has ended).
    pub budget: Arc<Semaphore>,
}

impl Limits {
    pub fn new(max_bytes: usize, grace: Duration, min_rate: u64, budget_bytes: usize) -> Self {
        Self {
            max_bytes,
            grace,
            min_rate: min_rate.max(1),
            budget: Arc::new(Semaphore::new(
                budget_bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS),
            )),
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooLarge(usize),
    TooSlow,
    /// The process-wide budget of body bytes is spent.
    Busy,
    Broken,
}

/// Body bytes that hold their share of the budget until dropped.
struct Held {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Grows `held` to cover `received` bytes.
fn take(
    limits: &Limits,
    held: &mut Option<OwnedSemaphorePermit>,
    received: usize,
) -> Result<(), Refused> {
    let have = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    let more = received.div_ceil(UNIT).saturating_sub(have);
    if more == 0 {
        return Ok(());
    }
    let more = u32::try_from(more).map_err(|_| Refused::Busy)?;
    let permit = limits
        .budget
        .clone()
        .try_acquire_many_owned(more)
        .map_err(|_| Refused::Busy)?;
    match held {
        Some(p) => p.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Reads a request body whole, within `limits`. A body whose Content-Length (in
/// `headers`) is over the limit is refused before a byte is read.
pub async fn read_request<B>(
    body: B,
    headers: &http::HeaderMap,
    limits: &Limits,
) -> Result<Bytes, Refused>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    read_declared(body, declared, limits).await
}

/// [`read_request`] with the Content-Length already read.
async fn read_declared<B>(
    mut body: B,
    declared: Option<usize>,
    limits: &Limits,
) -> Result<Bytes, Refused>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if declared.is_some_and(|n| n > limits.max_bytes) {
        return Err(Refused::TooLarge(limits.max_bytes));
    }
    let started = Instant::now();
    let mut permit = None;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut received = 0usize;
    loop {
        let allowed =
            limits.grace + Duration::from_secs_f64(received as f64 / limits.min_rate as f64);
        let frame = match tokio::time::timeout_at(started + allowed, body.frame()).await {
            Err(_) => return Err(Refused::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Refused::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received = received.saturating_add(data.len());
        if received > limits.max_bytes {
            return Err(Refused::TooLarge(limits.max_bytes));
        }
        take(limits, &mut permit, received)?;
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined =
                    BytesMut::with_capacity(declared.unwrap_or(0).max(f.len() + data.len()));
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    let bytes = match rest {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    };
    Ok(match permit {
        Some(permit) => Bytes::from_owner(Held {
            bytes,
            _permit: permit,
        }),
        None => bytes,
    })
}

/// Why an upstream answer was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamRead {
    TooLarge(usize),
    Timeout,
    Broken,
}

/// Reads an upstream answer whole, up to `limit` bytes, by `deadline`.
pub async fn read_upstream(
    body: crate::base::Body,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, UpstreamRead> {
    tokio::time::timeout_at(deadline, collect_upstream(body, limit))
        .await
        .unwrap_or(Err(UpstreamRead::Timeout))
}

/// The body's bytes, at most `limit` of them; a body of one frame is not copied.
async fn collect_upstream(
    mut body: crate::base::Body,
    limit: usize,
) -> Result<Bytes, UpstreamRead> {
    use http_body_util::BodyExt;
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| UpstreamRead::Broken)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(UpstreamRead::TooLarge(limit));
        }
        match (&mut joined, first.take()) {
            (Some(all), _) => all.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut all = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                all.extend_from_slice(&earlier);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
        }
    }
    Ok(joined.map_or_else(|| first.unwrap_or_default(), bytes::BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn limits(max: usize, budget: usize) -> Limits {
        Limits::new(max, Duration::from_millis(200), 1000, budget)
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn chunks(parts: &[&'static [u8]]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_and_holds_its_share_until_dropped() {
        let l = limits(10_000, 4096);
        let body = read_declared(chunks(&[&[b'a'; 1500], &[b'b'; 1500]]), None, &l)
            .await
            .unwrap();
        assert_eq!(body.len(), 3000);
        assert_eq!(l.budget.available_permits(), 1);
        let copy = body.slice(10..20);
        drop(body);
        assert_eq!(
            l.budget.available_permits(),
            1,
            "a slice keeps the body held"
        );
        drop(copy);
        assert_eq!(l.budget.available_permits(), 4);
    }

    #[tokio::test]
    async fn bodies_over_the_budget_are_refused_and_give_back_what_they_took() {
        let l = limits(10_000, 2048);
        let held = read_declared(chunks(&[&[b'a'; 1024]]), None, &l)
            .await
            .unwrap();
        let refused = read_declared(chunks(&[&[b'a'; 1024], &[b'b'; 1024]]), None, &l).await;
        assert_eq!(refused, Err(Refused::Busy));
        assert_eq!(l.budget.available_permits(), 1);
        drop(held);
        assert_eq!(l.budget.available_permits(), 2);
    }

    #[tokio::test]
    async fn too_large_declared_or_sent() {
        let l = limits(100, 1 << 20);
        assert_eq!(
            read_declared(chunks(&[]), Some(101), &l).await,
            Err(Refused::TooLarge(100))
        );
        assert_eq!(
            read_declared(chunks(&[&[0; 60], &[0; 60]]), None, &l).await,
            Err(Refused::TooLarge(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_is_cut() {
        let l = limits(1 << 20, 1 << 20);
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let read = read_declared(StreamBody::new(Box::pin(stream)), None, &l).await;
        assert_eq!(read, Err(Refused::TooSlow));
    }
}
