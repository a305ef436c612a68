//! The benchmark's load generator and process probes.
//!
//! Fixed-rate runs are open loop: request `i` is due at `start + i / rate` whatever happened
//! to earlier ones, and its latency is measured from that due time, not from when it was
//! actually sent, so a stall in the system under test shows in the percentiles instead of
//! silently lowering the rate (coordinated omission). Max-throughput runs are closed loop:
//! a fixed number of workers each send the next request as soon as the last one finished.
//!
//! Due times are kept by a thread of their own, with the operating system's high-resolution
//! sleep, not by tokio's timer: that timer ticks once a millisecond, so at 2,000 rps it
//! would release requests in pairs, each up to 1 ms after its due time, and how late
//! depends on where a slice's start falls between two ticks. That lateness is counted in
//! every sample (latency runs from the due time), and it moved the median of a slice by a
//! few tenths of a millisecond from one slice to the next: as much as the targets.

pub mod proc;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(100_000)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http)
}

/// One kind of request, sent again and again.
#[derive(Clone, Debug)]
pub struct Target {
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Target {
    fn request(&self) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        builder.body(Full::new(self.body.clone()))
    }
}

/// What one request measured, in microseconds from its start (its due time at fixed rate).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    ok: bool,
    latency_us: u64,
    first_chunk_us: Option<u64>,
}

async fn send(client: &HttpClient, target: &Target, start: Instant) -> Sample {
    let failed = Sample {
        ok: false,
        latency_us: start.elapsed().as_micros() as u64,
        first_chunk_us: None,
    };
    let Ok(request) = target.request() else {
        return failed;
    };
    let Ok(response) = client.request(request).await else {
        return failed;
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if first.is_none() && f.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = Some(start.elapsed().as_micros() as u64);
                }
            }
            Err(_) => {
                return Sample {
                    first_chunk_us: first,
                    ..failed
                };
            }
        }
    }
    Sample {
        ok,
        latency_us: start.elapsed().as_micros() as u64,
        first_chunk_us: first,
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The result of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Successful requests per second.
    pub rps: f64,
    pub latency_ms: Percentiles,
    /// Time to the first body chunk (streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<Percentiles>,
}

/// Percentiles and rates of samples gathered over `seconds` of measurement.
pub fn summarize(samples: &[Sample], seconds: f64) -> Run {
    let new = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3);
    let (Ok(mut latency), Ok(mut first)) = (new(), new()) else {
        return Run::default();
    };
    let mut errors = 0;
    let mut any_first = false;
    for s in samples {
        if !s.ok {
            errors += 1;
            continue;
        }
        let _ = latency.record(s.latency_us.max(1));
        if let Some(f) = s.first_chunk_us {
            any_first = true;
            let _ = first.record(f.max(1));
        }
    }
    let ok = samples.len() as u64 - errors;
    Run {
        requests: samples.len() as u64,
        errors,
        seconds,
        rps: ok as f64 / seconds.max(f64::EPSILON),
        latency_ms: Percentiles::of(&latency),
        first_chunk_ms: any_first.then(|| Percentiles::of(&first)),
    }
}

/// Sends `rate` requests per second for `duration` after an unrecorded `warmup`.
pub async fn fixed_rate(
    client: &HttpClient,
    target: &Target,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Vec<Sample> {
    let target = Arc::new(target.clone());
    let total_warm = (rate * warmup.as_secs_f64()) as u64;
    let total = (rate * duration.as_secs_f64()) as u64;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(10);
    let due = move |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    // The pacer: sleeps until each request is due and hands its number over.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel();
    let pacer = std::thread::spawn(move || {
        for i in 0..total_warm + total {
            let at = due(i).into_std();
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if due_tx.send(i).is_err() {
                break;
            }
        }
    });
    while let Some(i) = due_rx.recv().await {
        let (client, target, tx) = (client.clone(), target.clone(), tx.clone());
        tokio::spawn(async move {
            let sample = send(&client, &target, due(i)).await;
            let _ = tx.send((i >= total_warm, sample));
        });
    }
    let _ = pacer.join();
    drop(tx);
    let mut samples = Vec::with_capacity(total as usize);
    while let Some((recorded, sample)) = rx.recv().await {
        if recorded {
            samples.push(sample);
        }
    }
    samples
}

/// `concurrency` workers send back to back for `duration` after an unrecorded `warmup`.
pub async fn max_throughput(
    client: &HttpClient,
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Vec<Sample> {
    let target = Arc::new(target.clone());
    let begin = Instant::now();
    let record_from = begin + warmup;
    let end = record_from + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, target) = (client.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let sample = send(&client, &target, now).await;
                if now >= record_from && Instant::now() <= end {
                    samples.push(sample);
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(mut s) = w.await {
            samples.append(&mut s);
        }
    }
    samples
}
