//! The index crate's one error type; variants name the fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("document `{id}`: vector has dimension {got}, the collection's is {expected}")]
    WrongDimension {
        id: String,
        expected: usize,
        got: usize,
    },
    #[error("query vector has dimension {got}, the collection's is {expected}")]
    WrongQueryDimension { expected: usize, got: usize },
    #[error("document `{id}`: vector element {index} is not finite")]
    NotFinite { id: String, index: usize },
    #[error("document `{id}`: a zero vector has no direction for cosine similarity")]
    ZeroVector { id: String },
    #[error("document id `{0}` appears more than once in one batch")]
    DuplicateId(String),
    #[error("document ids must be 1-512 bytes; got {0} bytes")]
    BadId(usize),
    #[error("no collection named `{0}`")]
    UnknownCollection(String),
    #[error("a collection named `{0}` already exists")]
    CollectionExists(String),
    #[error("invalid collection name `{0}`: use 1-64 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("invalid collection settings: {0}")]
    BadConfig(String),
    #[error("invalid filter: {0}")]
    BadFilter(String),
    #[error("invalid search: {0}")]
    BadSearch(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("collection data is corrupt: {0}")]
    Corrupt(String),
    #[error("the collection takes no writes until the server restarts: {0}")]
    ReadOnly(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("{0} is open in another process (its LOCK file is held): two processes writing one collection's log would corrupt it")]
    InUse(String),
    #[error("{0}")]
    Backend(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl IndexError {
    /// An I/O error for want of space (a full disk or quota).
    pub fn is_no_space(&self) -> bool {
        matches!(self, IndexError::Io { source, .. } if aside_common::is_no_space(source))
    }
}

impl From<aside_common::BadName> for IndexError {
    fn from(e: aside_common::BadName) -> Self {
        IndexError::BadName(e.0)
    }
}

impl From<aside_common::IoAt> for IndexError {
    fn from(e: aside_common::IoAt) -> Self {
        IndexError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_owned(),
        source,
    }
}
