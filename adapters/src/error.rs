//! The adapters crate's one error type. Every variant names the fault precisely:
//! which tensor, which key, which shape.

/// Why an adapter file (or a registry operation) was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    #[error("file is truncated: {0}")]
    Truncated(String),
    #[error("file is too large: {size} bytes (the limit is {limit})")]
    Oversized { size: u64, limit: u64 },
    #[error("metadata `{key}`: {message}")]
    Metadata { key: String, message: String },
    #[error("missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    #[error("unexpected tensor `{name}`: {why}")]
    UnexpectedTensor { name: String, why: String },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}{hint}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
        hint: String,
    },
    #[error("tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 are accepted")]
    WrongDtype { name: String, dtype: String },
    #[error("tensor `{name}` is not finite: element {index} is {value}")]
    NotFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("adapter was trained on backbone {expected}, but the loaded backbone is {loaded}")]
    BackboneMismatch { expected: String, loaded: String },
    #[error("PEFT adapter: {0}")]
    Peft(String),
    #[error("invalid adapter name `{0}`: use 1-64 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("adapter name `{0}` is reserved for the store's own files; choose another")]
    ReservedName(String),
    #[error("adapter `{name}` serves {current}; a new version cannot change its task to {new} (upload it under a new name)")]
    TaskChange {
        name: String,
        current: String,
        new: String,
    },
    #[error("no adapter named `{0}`")]
    NotFound(String),
    #[error("adapter `{name}` has no version {version}")]
    VersionNotFound { name: String, version: String },
    #[error("adapter store: {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("adapter store is corrupt: {0}")]
    Store(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

impl From<aside_common::BadName> for AdapterError {
    fn from(e: aside_common::BadName) -> Self {
        AdapterError::BadName(e.0)
    }
}

impl From<aside_common::IoAt> for AdapterError {
    fn from(e: aside_common::IoAt) -> Self {
        AdapterError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AdapterError + '_ {
    move |source| AdapterError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn meta_err(key: &str, message: impl Into<String>) -> AdapterError {
    AdapterError::Metadata {
        key: key.to_owned(),
        message: message.into(),
    }
}
