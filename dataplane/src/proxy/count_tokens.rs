//! `POST /v1/messages/count_tokens` (Anthropic): the stages in
//! [`crate::pipeline::stages::answered_whole`], and the answer to a request that failed.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::{Api, Body};
use crate::pipeline::State;
use crate::pipeline::attempt::Operation;
use crate::pipeline::record::{Labels, answer};

pub async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::begin(state, &req, Operation::CountTokens, Api::Anthropic);
    let result = crate::pipeline::stages::answered_whole(
        state,
        req,
        Operation::CountTokens,
        started,
        &mut labels,
    )
    .await;
    answer(state, result, Api::Anthropic, started, labels)
}
