//! The server's domain error: what went wrong, in corral's terms. Only the `api` layer turns it
//! into an HTTP status; every other module returns this.

use crate::store::StoreError;

/// Why an operation did not happen. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with current state (a port taken, a host disconnected).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but cannot be carried out (a Compose file corral cannot deploy, replicas
    /// that cannot be placed, images missing on the chosen hosts).
    #[error("{0}")]
    Refused(String),
    /// The host's agent answered that it could not do it, or answered something unreadable.
    #[error("{0}")]
    Agent(String),
    /// The host did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The datastore failed, or holds something this build cannot read.
    #[error(transparent)]
    Store(StoreError),
    /// A state the server should never be in (a value it cannot encode).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// [`Error::Invalid`] with a message.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }

    /// [`Error::Conflict`] with a message.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::Conflict(message.into())
    }

    /// [`Error::Internal`] from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Error::NotFound(m),
            StoreError::Conflict(m) => Error::Conflict(m),
            other => Error::Store(other),
        }
    }
}

/// The result of an operation that may finish after the answer was sent.
#[derive(Debug)]
pub enum Progress<T> {
    /// Done: this is the outcome.
    Done(T),
    /// Accepted and under way (a host disconnected or slow); this is the state so far.
    Accepted(T),
}

/// Results of the server's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
