//! The one mapping from a core [`Error`] to an HTTP status and a JSON body
//! `{error, type}`. A 5xx says little to the client and logs the rest.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::core::types::ErrorBody;
use crate::core::Error;

pub fn status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthorized => StatusCode::UNAUTHORIZED,
        Error::Forbidden => StatusCode::FORBIDDEN,
        Error::NotFound { .. } | Error::UnknownModel { .. } => StatusCode::NOT_FOUND,
        Error::AlreadyExists { .. } | Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::WrongTask { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody {
            error: self.message(),
            kind: self.kind().to_owned(),
        };
        let mut resp = (status(&self), Json(body)).into_response();
        if let Error::Overloaded { retry_after } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}
