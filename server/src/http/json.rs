//! The JSON body extractor whose rejections are the API's `{error, type}` bodies,
//! with serde's message (which names the field and the fault).

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::core::Error;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::too_large(r.body_text()))
            }
            Err(r) => Err(Error::invalid("", body_message(&r.body_text()))),
        }
    }
}

/// serde's message without axum's preamble.
fn body_message(text: &str) -> String {
    match text.split_once(": ") {
        Some((head, rest)) if head.starts_with("Failed to") => format!("invalid JSON body: {rest}"),
        _ => text.to_owned(),
    }
}

/// A JSON body that may be absent (empty or whitespace: the default value).
pub fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::invalid("", format!("invalid JSON body: {e}")))
}

/// A JSON value read as `T`, with the same message as a body that does not fit.
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::invalid("", format!("invalid JSON body: {e}")))
}
