//! The client-facing HTTP server: OpenAI-compatible endpoints, dispatched by path.

pub mod chat;
pub mod count_tokens;
pub mod embeddings;
pub mod models;
pub mod responses_ws;

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::pipeline::State;

async fn handle(server: Arc<Server>, req: Request<Incoming>) -> Response<Body> {
    let state = &server.state;
    if !*state.ready.borrow() {
        return ApiError::NotReady.to_response();
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => chat::handle(state, req, Api::OpenAi).await,
        (&Method::POST, "/v1/messages") => chat::handle(state, req, Api::Anthropic).await,
        (&Method::POST, "/v1/responses") => chat::handle(state, req, Api::Responses).await,
        (&Method::GET, "/v1/responses") if responses_ws::is_upgrade(&req) => {
            responses_ws::handle(state, req).await
        }
        (&Method::POST, "/v1/responses/input_tokens") => {
            let answer = crate::pipeline::responses::input_tokens(state, req).await;
            count(state, answer.unwrap_or_else(|e| e.to_response()))
        }
        (_, p) if p.starts_with("/v1/responses/") => {
            let answer = crate::pipeline::responses::stored(state, req).await;
            count(state, answer.unwrap_or_else(|e| e.to_response()))
        }
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens::handle(state, req).await,
        (&Method::POST, "/v1/embeddings") => embeddings::handle(state, req).await,
        (&Method::GET, "/v1/models") => count(state, models::list(state, &req)),
        (_, "/mcp") => crate::mcp::gateway::handle(state, &server.mcp, req).await,
        (&Method::GET, p) if p.starts_with("/v1/models/") => count(state, models::get(state, &req)),
        (method, path) => count(
            state,
            ApiError::UnknownPath {
                method: method.to_string(),
                path: path.to_string(),
            }
            .to_response(),
        ),
    }
}

/// Counts a request that has no route, provider or model.
fn count(state: &State, response: Response<Body>) -> Response<Body> {
    state
        .metrics
        .requests
        .with_label_values(&["", "", "", response.status().as_str()])
        .inc();
    response
}

/// What the API endpoints work with: the shared request state, and the MCP gateway's own.
pub struct Server {
    pub state: Arc<State>,
    /// The MCP endpoint's upstream client, session keys and tool-call limits.
    pub mcp: crate::mcp::gateway::Gateway,
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves, then lets
/// open connections finish their requests for at most `drain`.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    limits: crate::base::server::Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: std::time::Duration,
) {
    let counters = server.state.metrics.listener("api");
    let handler = move |req| {
        let server = server.clone();
        handle(server, req)
    };
    crate::base::server::serve(listener, limits, counters, handler, shutdown, drain).await;
}
