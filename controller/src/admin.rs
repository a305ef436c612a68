//! The controller's admin port: liveness, readiness, `/status` (every object's conditions,
//! with `Programmed` from the dataplanes' ACKs) and Prometheus `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
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
    /// Who may read `/status` and `/usage`.
    pub access: tollgate_proto::admin::Access,
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

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if *self.ready.borrow() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "config not loaded yet\n")
                }
            }
            "/status" | "/usage" => {
                let authorization = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if let Err(denied) = self.access.check(authorization) {
                    let mut r = text(StatusCode::OK, denied.message());
                    *r.status_mut() =
                        StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
                    return r;
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
