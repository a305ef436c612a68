//! `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic): the stages
//! in [`crate::pipeline::stages`], and the answer to a request that failed.

use std::sync::Arc;

use http::{Request, Response};
use tokio::time::Instant;

use crate::base::{Api, Body};
use crate::pipeline::State;
use crate::pipeline::record::{Labels, answer};

pub async fn handle<B>(state: &Arc<State>, req: Request<B>, api: Api) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let started = Instant::now();
    let mut labels = Labels::begin(state, &req, crate::pipeline::attempt::Operation::Chat, api);
    let result = crate::pipeline::stages::chat(state, req, api, started, &mut labels).await;
    answer(state, result, api, started, labels)
}
