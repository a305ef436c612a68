//! `GET /v1/models` and `GET /v1/models/{model}`: the models the caller's key may use.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use serde::Serialize;

use crate::base::{Body, full};
use crate::error::ApiError;
use crate::pipeline::{State, authenticate};

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn respond<B>(
    state: &State,
    req: &Request<B>,
    one: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let snapshot = state.config.load();
    let key = authenticate(&snapshot, req.headers())?;
    let models = snapshot.models_for(key);
    fn entry((id, route): &(String, String)) -> Model<'_> {
        Model {
            id: id.as_str(),
            object: "model",
            created: 0,
            owned_by: route.as_str(),
        }
    }
    match one {
        None => Ok(json(&List {
            object: "list",
            data: models.iter().map(entry).collect(),
        })),
        Some(wanted) => models
            .iter()
            .find(|(id, _)| id == wanted)
            .map(|m| json(&entry(m)))
            .ok_or_else(|| ApiError::ModelNotFound(wanted.to_string())),
    }
}

pub fn list<B>(state: &State, req: &Request<B>) -> Response<Body> {
    respond(state, req, None).unwrap_or_else(|e| e.to_response())
}

pub fn get<B>(state: &State, req: &Request<B>) -> Response<Body> {
    let wanted = req.uri().path().trim_start_matches("/v1/models/");
    respond(state, req, Some(wanted)).unwrap_or_else(|e| e.to_response())
}
