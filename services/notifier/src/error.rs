//! The notifier's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::ApiError;

/// Everything that can go wrong in the notifier's API.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        reason: String,
    },
    /// No such webhook or release.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state.
    #[error("{0}")]
    Precondition(String),
    /// The caller holds as much as it may (open subscriptions).
    #[error("{0}")]
    Exhausted(String),
    /// The notifier's database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A bug, or stored data that does not decode.
    #[error("{0}")]
    Internal(String),
}

impl NotifierError {
    /// Shorthand for [`NotifierError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        NotifierError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl From<sqlx::Error> for NotifierError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            _ if hopngo_kit::db::is_unavailable(&err) => {
                NotifierError::Unavailable(format!("the notifier's database is unavailable: {err}"))
            }
            _ => NotifierError::Internal(format!("database: {err}")),
        }
    }
}

impl From<NotifierError> for tonic::Status {
    fn from(err: NotifierError) -> Self {
        match err {
            NotifierError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            NotifierError::NotFound(m) => ApiError::NotFound(m),
            NotifierError::Precondition(m) => ApiError::FailedPrecondition(m),
            NotifierError::Exhausted(m) => ApiError::ResourceExhausted(m),
            NotifierError::Unavailable(m) => ApiError::Unavailable(m),
            NotifierError::Internal(m) => ApiError::Internal(m),
        }
        .into()
    }
}
