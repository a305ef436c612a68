//! The dataplane's admin port: `/healthz`, `/readyz` (ready only after the first complete
//! config), `/metrics` (Prometheus), `/config` (resource names and versions held;
//! never their contents, which include credentials), and `/audit` (the latest audit
//! records).

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::base::metrics::Metrics;
use crate::config::snapshot::Snapshot;

#[derive(Clone)]
pub struct Admin {
    pub ready: watch::Receiver<bool>,
    /// Set on shutdown: not ready while open requests finish.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: Metrics,
    pub config: Arc<ArcSwap<Snapshot>>,
    /// Who may read `/config` and `/audit`.
    pub access: tollgate_proto::admin::Access,
    /// The audit records kept, for `/audit`.
    pub audit: Option<Arc<crate::base::audit::Auditor>>,
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

fn authorization<B>(req: &Request<B>) -> Option<&[u8]> {
    req.headers()
        .get(header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes)
}

impl Admin {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        }
        // What the gateway holds and what it served: only with the admin token (or on a
        // loopback address without one).
        if matches!(req.uri().path(), "/config" | "/audit")
            && let Err(denied) = self.access.check(authorization(req))
        {
            return text(
                StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN),
                "text/plain",
                denied.message(),
            );
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
            "/audit" => self.audit(req.uri().query()),
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

    /// The latest audit records kept, oldest first, as a JSON array: `?limit=N` (at most
    /// what the ring holds; 100 by default).
    fn audit(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let Some(audit) = &self.audit else {
            return text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "audit records are not kept (--audit-ring 0, or --audit off)\n",
            );
        };
        let limit = query
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("limit="))
            .map_or(Ok(100), str::parse::<usize>);
        let Ok(limit) = limit else {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "limit: a number of records\n",
            );
        };
        let lines = audit.recent(limit);
        let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 2).sum::<usize>() + 2);
        body.push('[');
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(line);
        }
        body.push(']');
        text(StatusCode::OK, "application/json", body)
    }

    /// Serves the admin port within its own limits, so that probes keep answering when
    /// the API's connections are at their cap.
    pub async fn serve(self, listener: TcpListener) {
        let counters = self.metrics.listener("admin");
        let this = Arc::new(self);
        let handler = move |req: Request<hyper::body::Incoming>| {
            let response = this.respond(&req);
            async move { response }
        };
        crate::base::server::serve(
            listener,
            crate::base::server::Limits::admin(),
            counters,
            handler,
            std::future::pending(),
            std::time::Duration::ZERO,
        )
        .await;
    }
}
