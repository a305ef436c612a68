//! Every error a client can get, and the one place that turns it into a response in
//! OpenAI's error format with the right status code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::base::{Api, Body, full};
use crate::translate::TranslateError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "You didn't provide an API key. Provide your key in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY), or in an x-api-key or api-key header."
    )]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,
    #[error("This API key has expired.")]
    ExpiredKey,
    #[error("This API key is disabled.")]
    DisabledKey,
    #[error("This API key is not allowed to use the model `{0}`.")]
    ModelNotAllowed(String),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error(
        "The model `{0}` has no price, and this API key's spend is limited in USD: its cost could not be counted. Ask the gateway's operator to price it (LLMProvider spec.models) or to mark the provider's unpriced models free."
    )]
    PriceUnknown(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    #[error(
        "This request is too large for the gateway to translate to the provider's format: {0}. Send it to a model served in the request's own format, or make it smaller."
    )]
    TooLargeToTranslate(String),
    #[error("The request body arrived too slowly.")]
    BodyTooSlow,
    #[error("The gateway is holding as many request bodies as it may; retry shortly.")]
    Overloaded,
    #[error("The upstream provider's answer is larger than the limit of {0} bytes.")]
    UpstreamTooLarge(usize),
    #[error("Unknown request URL: {method} {path}.")]
    UnknownPath { method: String, path: String },
    #[error("The gateway has not received its configuration yet.")]
    NotReady,
    #[error("Route `{0}` has no target that can take requests.")]
    NoTarget(String),
    #[error("Every credential of provider `{0}` is at its rate limit; retry later.")]
    NoCredential(String),
    #[error(
        "previous_response_id `{0}` was not issued by this gateway to this namespace, or was altered. Use the id of a response this gateway returned, or send the whole conversation as input."
    )]
    UnknownResponseId(String),
    #[error(
        "Response with id '{0}' not found. Only responses stored by a provider that serves the Responses API (OpenAI, Azure OpenAI) can be read back; answers translated from other providers are not stored."
    )]
    ResponseNotFound(String),
    #[error(
        "The provider account that stores the previous response ({0}) cannot take requests now, and no other account holds that conversation. Retry later, or send the whole conversation as input without previous_response_id."
    )]
    StoredAccountUnavailable(String),
    #[error("Provider type `{0}` is not supported for this API yet.")]
    UnsupportedProvider(&'static str),
    #[error("The upstream provider's stream could not be read.")]
    UpstreamBody,
    #[error("The upstream provider could not be reached.")]
    UpstreamUnreachable,
    #[error("The upstream provider did not answer in time.")]
    UpstreamTimeout,
    #[error("The upstream provider rejected the gateway's credentials (status {0}).")]
    UpstreamAuth(u16),
    #[error("The gateway could not get an access token for the upstream provider.")]
    UpstreamToken,
    #[error("The upstream provider failed (status {0}).")]
    UpstreamStatus(u16),
    #[error("Budget `{0}` is exhausted for this period.")]
    BudgetExceeded(String),
    #[error("This agent session has reached its limit.")]
    SessionBudgetExceeded,
    #[error("Rate limit reached for this API key: {0}. Please try again later.")]
    RateLimited(&'static str),
    #[error("The gateway cannot check budget `{0}` right now; retry later.")]
    QuotaUnavailable(String),
    #[error("Internal gateway error.")]
    Internal,
}

impl From<TranslateError> for ApiError {
    fn from(e: TranslateError) -> Self {
        match e {
            TranslateError::BadRequest(message) => Self::BadRequest(message),
            TranslateError::UpstreamBody => Self::UpstreamBody,
            TranslateError::Internal => Self::Internal,
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::ExpiredKey | Self::DisabledKey => {
                StatusCode::UNAUTHORIZED
            }
            Self::ModelNotAllowed(_) | Self::PriceUnknown(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::UnknownPath { .. } | Self::ResponseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::BadRequest(_) | Self::UnknownResponseId(_) => StatusCode::BAD_REQUEST,
            Self::StoredAccountUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge(_) | Self::TooLargeToTranslate(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotReady | Self::NoTarget(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoCredential(_)
            | Self::BudgetExceeded(_)
            | Self::SessionBudgetExceeded
            | Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnsupportedProvider(_) => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamUnreachable
            | Self::UpstreamToken
            | Self::UpstreamAuth(_)
            | Self::UpstreamStatus(_)
            | Self::UpstreamBody
            | Self::UpstreamTooLarge(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        if matches!(self, Self::BudgetExceeded(_) | Self::SessionBudgetExceeded) {
            // OpenAI's type for a spent quota; a client tells it from a rate limit by it.
            return "insufficient_quota";
        }
        match self.status().as_u16() {
            401 => "invalid_request_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The error's code, or its type when it has none: what audit records call it.
    pub(crate) fn code_or_type(&self) -> &'static str {
        self.code().unwrap_or_else(|| self.kind())
    }

    fn code(&self) -> Option<&'static str> {
        Some(match self {
            Self::MissingKey | Self::InvalidKey => "invalid_api_key",
            Self::ExpiredKey => "expired_api_key",
            Self::DisabledKey => "disabled_api_key",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::PriceUnknown(_) => "model_price_unknown",
            Self::ModelNotFound(_) => "model_not_found",
            Self::ResponseNotFound(_) => "not_found",
            Self::BodyTooLarge(_) | Self::TooLargeToTranslate(_) => "request_too_large",
            Self::BodyTooSlow => "request_timeout",
            Self::Overloaded => "gateway_overloaded",
            Self::UpstreamTooLarge(_) => "upstream_response_too_large",
            Self::UnknownPath { .. } => "unknown_url",
            Self::NotReady => "gateway_not_ready",
            Self::NoTarget(_) => "no_target_available",
            Self::NoCredential(_) | Self::RateLimited(_) => "rate_limit_exceeded",
            Self::UnknownResponseId(_) => "previous_response_not_found",
            Self::StoredAccountUnavailable(_) => "stored_response_unavailable",
            Self::BudgetExceeded(_) | Self::SessionBudgetExceeded => "budget_exceeded",
            Self::QuotaUnavailable(_) => "budget_unavailable",
            Self::UnsupportedProvider(_) => "unsupported_provider",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamAuth(_) | Self::UpstreamToken => "upstream_auth_failed",
            Self::UpstreamStatus(_) | Self::UpstreamBody => "upstream_error",
            Self::BadRequest(_) | Self::Internal => return None,
        })
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelNotAllowed(_) | Self::ModelNotFound(_) | Self::PriceUnknown(_) => {
                Some("model")
            }
            Self::UnknownResponseId(_) | Self::StoredAccountUnavailable(_) => {
                Some("previous_response_id")
            }
            _ => None,
        }
    }

    /// The error in OpenAI's format.
    pub fn to_response(&self) -> Response<Body> {
        self.to_response_for(Api::OpenAi)
    }

    /// The error in the format of the API the client called.
    pub fn to_response_for(&self, api: Api) -> Response<Body> {
        if api == Api::Anthropic {
            let kind = crate::translate::anthropic_to_openai::error_type(self.status().as_u16());
            let body = serde_json::to_vec(&serde_json::json!({
                "type": "error",
                "error": {"type": kind, "message": self.to_string()}
            }))
            .unwrap_or_default();
            let mut response = Response::new(full(Bytes::from(body)));
            *response.status_mut() = self.status();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return response;
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        let body = serde_json::to_vec(&Envelope {
            error: Inner {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        })
        .unwrap_or_default();
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn openai_error_shape() {
        let r = ApiError::ModelNotFound("gpt-9".into()).to_response();
        assert_eq!(r.status(), 404);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(
            v["error"]["message"],
            "The model `gpt-9` does not exist or you do not have access to it."
        );
        assert_eq!(ApiError::UpstreamTimeout.status(), 504);
        assert_eq!(ApiError::UpstreamUnreachable.status(), 502);
    }
}
