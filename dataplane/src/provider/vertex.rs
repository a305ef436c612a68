//! Vertex AI hosts two API families: Google's own models (`provider/gemini`) and Claude
//! (`provider/anthropic`), both under one path per model.

use crate::auth::sigv4::uri_encode;
use crate::config::model::Provider;

/// The path of `model` from `publisher` (`google`, `anthropic`) on Vertex AI.
pub(crate) fn model_base(p: &Provider, publisher: &str, model: &str) -> String {
    format!(
        "{}/v1/projects/{}/locations/{}/publishers/{publisher}/models/{}",
        p.endpoint,
        p.project,
        p.region,
        uri_encode(model, false)
    )
}
