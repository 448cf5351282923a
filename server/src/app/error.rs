//! The API's one error type and its mapping to HTTP status and a JSON body
//! `{error, type}`, in one place. A 5xx says little to the client and logs the rest.

use aside_adapters::AdapterError;
use aside_index::IndexError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or invalid.
    BadRequest(String),
    /// 401: no or unknown API key.
    Unauthorized,
    /// 403: the key may not do this.
    Forbidden,
    /// 404
    NotFound(String),
    /// 409: conflicts with current state.
    Conflict(String),
    /// 413
    TooLarge(String),
    /// 422: a well-formed request the target cannot serve (e.g. wrong adapter task).
    Unprocessable(String),
    /// 429, with Retry-After seconds.
    Overloaded(u64),
    /// 504
    Timeout,
    /// 500: detail is logged, not returned.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::Unprocessable(m) => m.clone(),
            ApiError::Unauthorized => "missing or unknown API key".into(),
            ApiError::Forbidden => "this API key may not do that".into(),
            ApiError::Overloaded(_) => "too many requests in flight; retry later".into(),
            ApiError::Timeout => "the request took too long".into(),
            ApiError::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = serde_json::json!({"error": self.message(), "type": self.kind()});
        let mut resp = (self.status(), Json(body)).into_response();
        if let ApiError::Overloaded(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AdapterError> for ApiError {
    fn from(e: AdapterError) -> Self {
        match e {
            AdapterError::NotFound(_) | AdapterError::VersionNotFound { .. } => {
                ApiError::NotFound(e.to_string())
            }
            AdapterError::Oversized { .. } => ApiError::TooLarge(e.to_string()),
            AdapterError::Io { .. } | AdapterError::Store(_) | AdapterError::Candle(_) => {
                ApiError::Internal(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::UnknownCollection(_) => ApiError::NotFound(e.to_string()),
            IndexError::CollectionExists(_) => ApiError::Conflict(e.to_string()),
            IndexError::Io { .. } | IndexError::Corrupt(_) => ApiError::Internal(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<aside_backbone::Error> for ApiError {
    fn from(e: aside_backbone::Error) -> Self {
        match e {
            aside_backbone::Error::Input(m) => ApiError::BadRequest(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
