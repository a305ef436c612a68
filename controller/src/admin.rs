//! The controller's admin port: liveness, readiness, `/status` (every object's conditions,
//! with `Programmed` from the dataplanes' ACKs), `/usage`, `/logs` (the live request log,
//! as a list or followed as server-sent events) and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compile::{Compiled, ObjectReport};
use crate::objects::SourceError;
use crate::status::with_programmed;
use crate::tracker::{DataplaneInfo, Tracker};

#[derive(Clone)]
pub struct Admin {
    pub snapshots: watch::Receiver<Arc<Compiled>>,
    pub ready: watch::Receiver<bool>,
    pub tracker: Arc<Tracker>,
    pub registry: prometheus::Registry,
    /// The usage ledger (kept by this replica when it is the leader).
    pub books: Arc<std::sync::Mutex<crate::spend::usage::Books>>,
    /// Who may read `/status`, `/usage` and `/logs`.
    pub access: tollgate_proto::admin::Access,
    /// The live request log.
    pub live: Arc<crate::live::Live>,
}

type Body = BoxBody<Bytes, Infallible>;

/// The web page on `/`: plain HTML and JavaScript, no build step, no outside assets.
const UI: &str = include_str!("ui.html");

fn boxed(r: Response<Full<Bytes>>) -> Response<Body> {
    r.map(BodyExt::boxed)
}

#[derive(Serialize)]
struct StatusView<'a> {
    config_version: &'a str,
    objects: Vec<ObjectReport>,
    errors: &'a [SourceError],
    dataplanes: Vec<DataplaneInfo>,
}

impl Admin {
    /// Every object's report with its `Programmed` condition filled in.
    pub fn status(&self) -> serde_json::Value {
        let snapshot = self.snapshots.borrow().clone();
        let objects = snapshot
            .reports()
            .map(|r| with_programmed(r, &self.tracker))
            .collect();
        let view = StatusView {
            config_version: &snapshot.version,
            objects,
            errors: &snapshot.source_errors,
            dataplanes: self.tracker.dataplanes(),
        };
        serde_json::to_value(view).unwrap_or_default()
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/logs" && req.method() == Method::GET {
            return self.logs(req);
        }
        boxed(self.page(req))
    }

    /// `/logs?key=..&team=..&status=5xx&limit=N[&follow=1]`: the latest records that pass
    /// the filters, oldest first, as a JSON array; with `follow`, as server-sent events,
    /// those and then each new one.
    fn logs(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(refused) = self.refused(req) {
            return boxed(refused);
        }
        let (filter, options) = match crate::live::Filter::parse(req.uri().query().unwrap_or("")) {
            Ok(x) => x,
            Err(e) => {
                let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return boxed(r);
            }
        };
        // Subscribed before the list is read: nothing falls between the two.
        let follower = options.follow.then(|| self.live.follow());
        let kept = self.live.query(&filter, options.limit);
        let Some(follower) = follower else {
            let mut body = String::from("[");
            for (i, e) in kept.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&e.line);
            }
            body.push(']');
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return boxed(r);
        };
        let event = |line: &str| Bytes::from(format!("data: {line}\n\n"));
        let first: Vec<Bytes> = kept.iter().map(|e| event(&e.line)).collect();
        let seen: std::collections::HashSet<String> = kept.iter().map(|e| e.line.clone()).collect();
        let rest = futures_util::stream::unfold(
            (follower, filter, seen),
            move |(mut rx, filter, seen)| async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if filter.passes(e.value()) && !seen.contains(&e.line) => {
                            return Some((event(&e.line), (rx, filter, seen)));
                        }
                        Ok(_) => {}
                        // A slow reader misses records rather than holding them.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        let stream = futures_util::StreamExt::map(
            futures_util::StreamExt::chain(futures_util::stream::iter(first), rest),
            |b| Ok::<_, Infallible>(hyper::body::Frame::data(b)),
        );
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        r
    }

    /// The answer to a request for a private page without the admin token, if it is one.
    fn refused(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let authorization = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let denied = self.access.check(authorization).err()?;
        let mut r = text(StatusCode::OK, denied.message());
        *r.status_mut() = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
        Some(r)
    }

    fn page(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // The web page: objects, budgets and the live log, read from the pages below
            // with the admin token the reader gives it. Nothing in it is secret.
            "/" => {
                let mut r = Response::new(Full::new(Bytes::from_static(UI.as_bytes())));
                let h = r.headers_mut();
                h.insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(
                    hyper::header::HeaderName::from_static("content-security-policy"),
                    hyper::header::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                r
            }
            "/readyz" => {
                if *self.ready.borrow() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "config not loaded yet\n")
                }
            }
            "/status" | "/usage" => {
                if let Some(refused) = self.refused(req) {
                    return refused;
                }
                let view = if req.uri().path() == "/usage" {
                    let mut views = crate::lock(&self.books)
                        .ledger
                        .views(tollgate_proto::time::now_unix_ms());
                    for v in &mut views {
                        v.account = crate::spend::accounts::shown(&v.account);
                    }
                    serde_json::json!({ "accounts": views })
                } else {
                    self.status()
                };
                let body = serde_json::to_vec_pretty(&view).unwrap_or_default();
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            "/metrics" => {
                let mut out = String::new();
                let encoder = prometheus::TextEncoder::new();
                if encoder
                    .encode_utf8(&self.registry.gather(), &mut out)
                    .is_err()
                {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
                }
                let mut r = Response::new(Full::new(Bytes::from(out)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Serves the admin port: a cap on connections, a header-read and keep-alive
    /// timeout, and back-off after accept errors, so that no client can hold it.
    pub async fn serve(self, listener: TcpListener) {
        const MAX_CONNECTIONS: usize = 256;
        const TIMEOUT: Duration = Duration::from_secs(10);
        let this = Arc::new(self);
        let incoming = crate::listener::capped_incoming(listener, MAX_CONNECTIONS, "admin");
        tokio::pin!(incoming);
        while let Some(Ok(stream)) = futures_util::StreamExt::next(&mut incoming).await {
            let this = this.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = this.respond(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // The header-read timeout also closes a keep-alive connection idle that
                // long; a request that stalls its answer cannot happen here (every page
                // is built at once).
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(io, service);
                let _ = tokio::time::timeout(TIMEOUT * 6, connection).await;
            });
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}
