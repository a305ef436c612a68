//! The dataplane's admin port: `/healthz`, `/readyz` (ready only after the first complete
//! config), `/metrics` (Prometheus), and `/config` (resource names and versions held;
//! never their contents, which include credentials).

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

#[derive(Clone)]
pub struct Admin {
    pub ready: watch::Receiver<bool>,
    /// Set on shutdown: not ready while open requests finish.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: Metrics,
    pub config: Arc<ArcSwap<Snapshot>>,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

impl Admin {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" if self.draining.load(std::sync::atomic::Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
            "/readyz" if *self.ready.borrow() => text(StatusCode::OK, "text/plain", "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "waiting for the first complete config\n",
            ),
            "/metrics" => {
                let mut out = String::new();
                match prometheus::TextEncoder::new()
                    .encode_utf8(&self.metrics.registry.gather(), &mut out)
                {
                    Ok(()) => text(StatusCode::OK, "text/plain; version=0.0.4", out),
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "encoding failed\n",
                    ),
                }
            }
            "/config" => {
                let snapshot = self.config.load();
                let items: Vec<_> = snapshot
                    .versions
                    .iter()
                    .map(|(t, name, version)| serde_json::json!({"type": t, "name": &**name, "version": &**version}))
                    .collect();
                let body = serde_json::to_vec_pretty(&serde_json::json!({ "resources": items }))
                    .unwrap_or_default();
                text(StatusCode::OK, "application/json", body)
            }
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = this.respond(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }
}
