//! The core's one error type. Each variant carries what a caller needs to act on
//! it; the transports map it to an HTTP status (`http::error`) or a gRPC code
//! (`grpc::status`), each in one place, and never look inside the message.

use aside_adapters::AdapterError;
use aside_index::IndexError;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A field of the request is malformed or out of range.
    InvalidInput { field: String, reason: String },
    /// No such adapter, collection, document or adapter version; `within` names
    /// the collection a document was looked for in.
    NotFound {
        what: &'static str,
        name: String,
        within: Option<String>,
    },
    /// A model name a compatible client sent that is neither the backbone nor an
    /// adapter; `known` lists what is.
    UnknownModel { name: String, known: Vec<String> },
    /// A collection (or other named thing) of that name exists already.
    AlreadyExists { what: &'static str, name: String },
    /// The request conflicts with current state (e.g. a re-embedding is running).
    Conflict { reason: String },
    /// More inputs, tokens or bytes than the limits allow.
    TooLarge { reason: String },
    /// The adapter exists but serves another task than the operation needs.
    WrongTask {
        adapter: String,
        has: String,
        needs: String,
    },
    /// The route exists, but not for this method.
    MethodNotAllowed { method: String, path: String },
    /// No or an unknown API key.
    Unauthorized,
    /// The key may not do this.
    Forbidden,
    /// The disk is full (or a quota is reached): this write was not stored.
    InsufficientStorage { reason: String },
    /// The target cannot take this now (a collection whose log failed, a
    /// collection that could not be opened).
    Unavailable { reason: String },
    /// Too many requests in flight; retry after this many seconds.
    Overloaded { retry_after: u64 },
    /// The request took longer than the request timeout.
    Timeout,
    /// The client did not send its request body within the body timeout.
    BodyTimeout { secs: u64 },
    /// A fault of the server; the detail is logged, not shown.
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
            within: None,
        }
    }

    pub fn no_document(collection: &str, id: &str) -> Self {
        Error::NotFound {
            what: "document",
            name: id.to_owned(),
            within: Some(collection.to_owned()),
        }
    }

    pub fn too_large(reason: impl Into<String>) -> Self {
        Error::TooLarge {
            reason: reason.into(),
        }
    }

    pub fn conflict(reason: impl Into<String>) -> Self {
        Error::Conflict {
            reason: reason.into(),
        }
    }

    /// The short, stable name of the kind (the `type` of an error body, the
    /// `error-type` of a gRPC status).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_request",
            Error::NotFound { .. } | Error::UnknownModel { .. } => "not_found",
            Error::AlreadyExists { .. } | Error::Conflict { .. } => "conflict",
            Error::TooLarge { .. } => "too_large",
            Error::WrongTask { .. } => "unprocessable",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden => "forbidden",
            Error::Overloaded { .. } => "overloaded",
            Error::InsufficientStorage { .. } => "insufficient_storage",
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout => "timeout",
            Error::BodyTimeout { .. } => "body_timeout",
            Error::Internal(_) => "internal",
        }
    }

    /// What the client is told (an internal fault's detail stays in the log).
    pub fn message(&self) -> String {
        match self {
            Error::InvalidInput { field, reason } if field.is_empty() => reason.clone(),
            Error::InvalidInput { field, reason } => format!("{field}: {reason}"),
            Error::NotFound {
                what: "route",
                name,
                ..
            } => format!("no route {name} (the API is listed at /openapi.json)"),
            Error::MethodNotAllowed { method, path } => {
                format!("{path} does not take {method} (the API is listed at /openapi.json)")
            }
            Error::NotFound {
                what,
                name,
                within: Some(c),
            } => format!("no {what} `{name}` in collection `{c}`"),
            Error::NotFound { what, name, .. } => format!("no {what} named `{name}`"),
            Error::UnknownModel { name, known } => format!(
                "no model named `{name}`; this server has {}",
                known.join(", ")
            ),
            Error::AlreadyExists { what, name } => {
                format!("a {what} named `{name}` already exists")
            }
            Error::Conflict { reason }
            | Error::TooLarge { reason }
            | Error::Unavailable { reason } => reason.clone(),
            Error::InsufficientStorage { reason } => {
                format!("the disk is full; nothing was stored and the server keeps serving reads ({reason})")
            }
            Error::WrongTask {
                adapter,
                has,
                needs,
            } => format!(
                "adapter `{adapter}` has task {has}, this operation needs a {needs} adapter"
            ),
            Error::Unauthorized => "missing or unknown API key".into(),
            Error::Forbidden => "this API key may not do that".into(),
            Error::Overloaded { .. } => "too many requests in flight; retry later".into(),
            Error::Timeout => "the request took too long".into(),
            Error::BodyTimeout { secs } => {
                format!("the request body did not arrive within {secs} s")
            }
            Error::Internal(_) => "internal error".into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Internal(d) => write!(f, "internal error: {d}"),
            e => f.write_str(&e.message()),
        }
    }
}

impl std::error::Error for Error {}

impl From<AdapterError> for Error {
    fn from(e: AdapterError) -> Self {
        match e {
            AdapterError::NotFound(name) => Error::not_found("adapter", name),
            AdapterError::VersionNotFound { name, version } => {
                Error::not_found("adapter version", format!("{name}@{version}"))
            }
            AdapterError::Oversized { .. } => Error::too_large(e.to_string()),
            AdapterError::BadName(_) | AdapterError::ReservedName(_) => {
                Error::invalid("name", e.to_string())
            }
            AdapterError::TaskChange {
                ref name,
                ref current,
                ref new,
            } => Error::WrongTask {
                adapter: name.clone(),
                has: new.clone(),
                needs: current.clone(),
            },
            AdapterError::Io { ref source, .. } if aside_common::is_no_space(source) => {
                Error::InsufficientStorage {
                    reason: e.to_string(),
                }
            }
            AdapterError::Io { .. } | AdapterError::Store(_) | AdapterError::Candle(_) => {
                Error::Internal(e.to_string())
            }
            _ => Error::invalid("", e.to_string()),
        }
    }
}

impl From<IndexError> for Error {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::UnknownCollection(name) => Error::not_found("collection", name),
            IndexError::CollectionExists(name) => Error::AlreadyExists {
                what: "collection",
                name,
            },
            IndexError::BadName(_) => Error::invalid("name", e.to_string()),
            IndexError::BadFilter(_) => Error::invalid("filter", e.to_string()),
            _ if e.is_no_space() => Error::InsufficientStorage {
                reason: e.to_string(),
            },
            IndexError::ReadOnly(_) | IndexError::Unavailable(_) | IndexError::InUse(_) => {
                Error::Unavailable {
                    reason: e.to_string(),
                }
            }
            IndexError::TooLarge(reason) => Error::TooLarge { reason },
            IndexError::Backend(m) => Error::Internal(m),
            IndexError::Io { .. } | IndexError::Corrupt(_) => Error::Internal(e.to_string()),
            _ => Error::invalid("", e.to_string()),
        }
    }
}

impl From<aside_backbone::Error> for Error {
    fn from(e: aside_backbone::Error) -> Self {
        match e {
            aside_backbone::Error::Input(m) => Error::invalid("", m),
            other => Error::Internal(other.to_string()),
        }
    }
}
