//! One embeddings attempt: passed through to OpenAI-format providers with only the model
//! rewritten, translated for Gemini, Vertex AI and Bedrock (`provider::embeddings`; Titan
//! and Cohere take one request per input, sent together). The attempt loop gives it the
//! route's retries, credentials and fallbacks.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::attempt::{Answered, Billed, Ctx, Step, Whole, fetch};
use super::balance;
use super::record::Labels;
use crate::base::{Api, Body};
use crate::error::ApiError;
use crate::metering::usage::Usage;
use crate::provider::embeddings::{self, Answer, EmbedRequest, EmbedWire};

/// The most requests of one attempt in flight at once: Titan takes one text per call, and
/// a client's request may carry 2,048 texts.
const MAX_IN_FLIGHT: usize = 32;

/// The provider's requests for this attempt (one, or one per input), where they go, and
/// the client's request as read (for formats other than OpenAI's).
type Requests = (http::Uri, Vec<Bytes>, Option<EmbedRequest>);

fn requests(ctx: &Ctx, c: &balance::Candidate, wire: EmbedWire) -> Result<Requests, ApiError> {
    let (provider, model) = (&c.provider, &*c.model);
    let uri = wire.uri(provider, model).map_err(|_| ApiError::Internal)?;
    if wire == EmbedWire::OpenAi {
        let body = provider
            .compat
            .apply(ctx.head.with_model(ctx.body.clone(), model), false);
        return Ok((uri, vec![body], None));
    }
    let request = embeddings::parse(&ctx.body)?;
    let bodies = embeddings::upstream_bodies(&request, wire, model)?;
    Ok((
        uri,
        bodies.into_iter().map(Bytes::from).collect(),
        Some(request),
    ))
}

/// The client's answer from the provider's: the first refusal in OpenAI's format (its
/// status kept), or the embeddings and their usage.
fn answer_of(
    request: Option<&EmbedRequest>,
    wire: EmbedWire,
    model: &str,
    answers: &[Whole],
) -> Result<(StatusCode, HeaderMap, Bytes, Option<Usage>), ApiError> {
    if wire == EmbedWire::OpenAi {
        let up = &answers[0];
        let usage = up
            .status
            .is_success()
            .then(|| crate::metering::usage::usage_member(&up.body, Api::OpenAi))
            .flatten();
        let mut headers = up.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        return Ok((up.status, headers, up.body.clone(), usage));
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(refused) = answers.iter().find(|a| !a.status.is_success()) {
        let status = refused.status.as_u16();
        let body = wire.error(&refused.body, status, &refused.headers);
        return Ok((refused.status, headers, body.into(), None));
    }
    let request = request.ok_or(ApiError::Internal)?;
    let read: Vec<Answer<'_>> = answers
        .iter()
        .map(|a| Answer {
            body: &a.body,
            header_tokens: wire.header_tokens(&a.headers),
        })
        .collect();
    let (out, usage) = embeddings::response(request, wire, model, &read)?;
    Ok((StatusCode::OK, headers, out.into(), Some(usage)))
}

/// One embeddings attempt on candidate `c`.
pub(crate) async fn attempt(
    ctx: &Ctx,
    c: &balance::Candidate,
    attempts: u32,
    labels: &Labels,
) -> Result<Response<Body>, Step> {
    let p = ctx.begin(c)?;
    let (state, provider, model) = (&ctx.state, &c.provider, &*c.model);
    let wire = EmbedWire::of(provider, model).map_err(|e| Step::Final(e.into()))?;
    let (uri, bodies, request) = requests(ctx, c, wire).map_err(Step::Final)?;
    let mut upstream = Vec::with_capacity(bodies.len());
    for body in bodies {
        upstream.push(ctx.request(&p, uri.clone(), body).await?);
    }
    // Once sent, the provider bills the input: an attempt that times out, breaks or is
    // left by its client is charged its worst case.
    let mut billed = Billed::new(ctx.current(), labels);
    let inflight = c.endpoint.start();
    let sent = p.sent(state);
    let answers: Result<Vec<Whole>, ApiError> =
        futures_util::stream::iter(upstream.into_iter().map(|r| fetch(state, &p, r)))
            .buffered(MAX_IN_FLIGHT)
            .try_collect()
            .await;
    drop(inflight);
    let answers = match answers {
        Ok(a) => a,
        Err(e) => {
            billed.failed(&e);
            return Err(sent.failed(p.class_of(&e), Err(e), None));
        }
    };
    billed.settled();
    let credential_limited = sent.limit_credential(answers.iter().find_map(Whole::exhausted_for));
    let (status, headers, body, usage) =
        answer_of(request.as_ref(), wire, model, &answers).map_err(Step::Final)?;
    let failure = answers
        .iter()
        .find(|a| !a.status.is_success())
        .and_then(Whole::failure);
    let answered = Answered {
        status,
        headers,
        body,
        usage,
        price: provider.price_of(model),
        failure,
        credential_limited,
    };
    sent.answered(ctx, labels, attempts, answered)
}
