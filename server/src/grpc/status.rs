//! The one mapping from a core [`Error`] to a gRPC status. The message is the one
//! HTTP gives; the error's kind rides along in the `error-type` metadata.
//!
//! | core error | HTTP | gRPC |
//! |---|---|---|
//! | InvalidInput, TooLarge, WrongTask | 400, 413, 422 | INVALID_ARGUMENT |
//! | NotFound | 404 | NOT_FOUND |
//! | AlreadyExists | 409 | ALREADY_EXISTS |
//! | Conflict | 409 | FAILED_PRECONDITION |
//! | Unauthorized / Forbidden | 401 / 403 | UNAUTHENTICATED / PERMISSION_DENIED |
//! | Overloaded | 429 | RESOURCE_EXHAUSTED (`retry-after` metadata) |
//! | InsufficientStorage (a full disk) | 507 | RESOURCE_EXHAUSTED |
//! | Unavailable (a collection that takes no writes, or did not open) | 503 | UNAVAILABLE |
//! | Timeout | 504 | DEADLINE_EXCEEDED |
//! | MethodNotAllowed | 405 | UNIMPLEMENTED |
//! | Internal | 500 | INTERNAL |

use tonic::{Code, Status};

use crate::core::Error;

pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidInput { .. } | Error::TooLarge { .. } | Error::WrongTask { .. } => {
            Code::InvalidArgument
        }
        Error::NotFound { .. } | Error::UnknownModel { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::Conflict { .. } => Code::FailedPrecondition,
        Error::Unauthorized => Code::Unauthenticated,
        Error::Forbidden => Code::PermissionDenied,
        Error::Overloaded { .. } | Error::InsufficientStorage { .. } => Code::ResourceExhausted,
        Error::Unavailable { .. } => Code::Unavailable,
        Error::Timeout | Error::BodyTimeout { .. } => Code::DeadlineExceeded,
        Error::MethodNotAllowed { .. } => Code::Unimplemented,
        Error::Internal(_) => Code::Internal,
    }
}

pub fn status(e: Error) -> Status {
    if let Error::Internal(detail) = &e {
        tracing::error!(%detail, "internal error");
    }
    let mut s = Status::new(code(&e), e.message());
    s.metadata_mut()
        .insert("error-type", e.kind().parse().expect("kinds are ASCII"));
    if let Error::Overloaded { retry_after } = e {
        s.metadata_mut().insert(
            "retry-after",
            retry_after.to_string().parse().expect("digits"),
        );
    }
    s
}
