//! The library's error type: one enum a caller can match on, with an exit code per kind so that
//! `spacectl` gives scripts stable codes (documented in docs/CLI.md).

use std::path::PathBuf;

use crate::policy::PolicyError;
use crate::store::ChunkId;

/// Everything that can go wrong inside the store, pipeline and policy layers.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("{0}")]
    Policy(#[from] PolicyError),

    #[error("not found: {0}")]
    NotFound(String),

    #[error("already exists: {0}")]
    AlreadyExists(String),

    #[error("directory not empty: {0}")]
    NotEmpty(String),

    #[error("not a directory: {0}")]
    NotADirectory(String),

    #[error("is a directory: {0}")]
    IsADirectory(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Stored bytes failed authentication or did not match their id: never serve them.
    #[error("integrity error in {context}: chunk {chunk}: {reason}")]
    Integrity {
        context: String,
        chunk: ChunkId,
        reason: String,
    },

    #[error("wrong key: {0}")]
    WrongKey(String),

    #[error("store at {path} is not usable: {reason}")]
    BadStore { path: PathBuf, reason: String },

    #[error("{0}")]
    Transform(String),

    #[error("metadata database: {0}")]
    Meta(#[from] rusqlite::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SpaceError {
    /// Wraps an I/O error with what we were doing, so messages say which file failed.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SpaceError::Io {
            context: context.into(),
            source,
        }
    }

    /// Stable process exit codes for `spacectl` (see docs/CLI.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            SpaceError::Policy(_) | SpaceError::InvalidArgument(_) => 2,
            SpaceError::NotFound(_) => 3,
            SpaceError::AlreadyExists(_) => 4,
            SpaceError::NotEmpty(_)
            | SpaceError::NotADirectory(_)
            | SpaceError::IsADirectory(_) => 5,
            SpaceError::Integrity { .. } => 6,
            SpaceError::WrongKey(_) => 7,
            SpaceError::Transform(_) => 8,
            SpaceError::BadStore { .. } => 9,
            // The reader of our output went away (`spacectl get … | head`): as if by SIGPIPE.
            SpaceError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe => 141,
            SpaceError::Meta(_) | SpaceError::Io { .. } => 1,
        }
    }

    /// The errno a filesystem frontend should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            SpaceError::NotFound(_) => libc::ENOENT,
            SpaceError::AlreadyExists(_) => libc::EEXIST,
            SpaceError::NotEmpty(_) => libc::ENOTEMPTY,
            SpaceError::NotADirectory(_) => libc::ENOTDIR,
            SpaceError::IsADirectory(_) => libc::EISDIR,
            SpaceError::InvalidArgument(_) | SpaceError::Policy(_) => libc::EINVAL,
            SpaceError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = SpaceError> = std::result::Result<T, E>;
