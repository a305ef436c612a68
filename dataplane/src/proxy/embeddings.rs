//! `POST /v1/embeddings` (OpenAI): passed through to OpenAI-format providers with only the
//! model rewritten, translated for Gemini, Vertex AI and Bedrock (Titan, Cohere).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::metering::usage::Usage;
use crate::pipeline::State;
use crate::pipeline::attempt::{Billed, respond, send};
use crate::pipeline::record::{Completion, Labels, answer};
use crate::pipeline::route::{Resolved, resolve};
use crate::provider::request::build_upstream;
use crate::provider::urls::Urls;
use crate::translate::embeddings::{self, Answer, EmbedWire};

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let mut labels = Labels::default();
    let result = forward(state, req, started, &mut labels).await;
    answer(state, result, Api::OpenAi, started, labels)
}

/// One upstream answer, read whole.
struct Upstream {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn call(
    state: &State,
    to: &Resolved,
    client_headers: &HeaderMap,
    uri: http::Uri,
    body: Bytes,
    deadline: Instant,
) -> Result<Upstream, ApiError> {
    let upstream = build_upstream(
        state.upstream.for_object(&to.provider.id),
        &to.provider,
        to.credential(),
        client_headers,
        Api::OpenAi,
        uri,
        body,
    )
    .await?;
    let response = send(state, &to.provider, upstream, deadline).await?;
    let (parts, body) = response.into_parts();
    let body = crate::pipeline::attempt::read_answer(state, body, deadline).await?;
    Ok(Upstream {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    started: Instant,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let (body, head, to, snapshot, key) = resolve(state, &parts, body, labels).await?;
    // Charged to the key's budgets and limits like a chat request, with no output.
    let reservation = match crate::pipeline::admission::admit(
        state,
        &snapshot,
        &key,
        &parts.headers,
        &head,
        &to.route,
        (state.worst.input(body.len(), &head), 0),
    )
    .await
    {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return Ok(crate::pipeline::record::refused(
                state,
                &key,
                e,
                Api::OpenAi,
                started,
                labels,
            ));
        }
    };
    drop(snapshot);
    let wire = EmbedWire::of(&to.provider, &to.model)?;
    let deadline = to.deadline(started);
    // Once sent, the provider bills the input: an attempt that times out, breaks or is
    // left by its client is charged its worst case.
    let billed_labels = labels.clone();
    let mut billed = Billed::new(reservation.clone(), &billed_labels);
    let model: &str = &to.model;
    let done = |labels: &mut Labels, status: StatusCode, usage: Option<Usage>| {
        Completion {
            metrics: state.metrics.clone(),
            labels: std::mem::take(labels),
            status,
            started,
            usage,
            credential: None,
            reservation: Some(reservation.clone()),
            price: to.provider.price_of(model),
            counted: None,
        }
        .record();
    };

    if wire == EmbedWire::OpenAi {
        let uri = to
            .provider
            .embeddings_uri(model)
            .map_err(|_| ApiError::Internal)?;
        let up = call(
            state,
            &to,
            &parts.headers,
            uri,
            to.provider
                .compat
                .apply(head.with_model(body, model), false),
            deadline,
        )
        .await
        .inspect_err(|e| billed.failed(e))?;
        billed.settled();
        let usage = up
            .status
            .is_success()
            .then(|| crate::metering::usage::usage_member(&up.body, Api::OpenAi))
            .flatten();
        done(labels, up.status, usage);
        let mut headers = up.headers;
        headers.remove(header::CONTENT_LENGTH);
        let mut response = respond(up.status, crate::base::full(up.body), &headers, &to);
        crate::pipeline::admission::quota_headers(state, &key, response.headers_mut());
        return Ok(response);
    }

    let request = embeddings::parse(&body)?;
    let uri = match wire {
        EmbedWire::Gemini => to.provider.google_uri(model, "batchEmbedContents"),
        EmbedWire::Vertex => to.provider.google_uri(model, "predict"),
        EmbedWire::Titan | EmbedWire::Cohere | EmbedWire::OpenAi => {
            to.provider.bedrock_op_uri(model, "invoke")
        }
    }
    .map_err(|_| ApiError::Internal)?;
    let bodies = embeddings::upstream_bodies(&request, wire, model)?;
    let answers = try_join_all(bodies.into_iter().map(|b| {
        call(
            state,
            &to,
            &parts.headers,
            uri.clone(),
            Bytes::from(b),
            deadline,
        )
    }))
    .await
    .inspect_err(|e| billed.failed(e))?;
    billed.settled();

    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The first refusal, in OpenAI's format (the provider's status kept).
    if let Some(refused) = answers.iter().find(|a| !a.status.is_success()) {
        let status = refused.status.as_u16();
        let body = if matches!(wire, EmbedWire::Gemini | EmbedWire::Vertex) {
            crate::translate::openai_to_gemini::error(&refused.body, status)
        } else {
            crate::translate::openai_to_bedrock::error(
                &refused.body,
                status,
                crate::provider::request::aws_error_type(&refused.headers),
            )
        };
        done(labels, refused.status, None);
        return Ok(respond(
            refused.status,
            crate::base::full(body.into()),
            &headers,
            &to,
        ));
    }
    let read: Vec<Answer<'_>> = answers
        .iter()
        .map(|a| Answer {
            body: &a.body,
            header_tokens: a
                .headers
                .get("x-amzn-bedrock-input-token-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        })
        .collect();
    let (out, usage) = embeddings::response(&request, wire, model, &read)?;
    done(labels, StatusCode::OK, Some(usage));
    let mut response = respond(StatusCode::OK, crate::base::full(out.into()), &headers, &to);
    crate::pipeline::admission::quota_headers(state, &key, response.headers_mut());
    Ok(response)
}
