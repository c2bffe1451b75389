//! The notifier's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::{
    ApiError,
    error::{database_error, database_label},
};

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
    /// The caller lacks the permission for what the request touches.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller holds as much as it may (open subscriptions).
    #[error("{0}")]
    Exhausted(String),
    /// The notifier's database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The notifier's database failed: UNAVAILABLE when it cannot be reached, INTERNAL otherwise.
    #[error("the notifier's database: {0}")]
    Database(#[source] sqlx::Error),
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

impl NotifierError {
    /// The kind of failure, for metrics (`hopngo_grpc_server_errors_total{error}`).
    pub fn label(&self) -> &'static str {
        match self {
            NotifierError::Invalid { .. } => "invalid",
            NotifierError::NotFound(_) => "not-found",
            NotifierError::Precondition(_) => "precondition",
            NotifierError::PermissionDenied(_) => "permission-denied",
            NotifierError::Exhausted(_) => "exhausted",
            NotifierError::Unavailable(_) => "unavailable",
            NotifierError::Database(e) => database_label(e),
            NotifierError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for NotifierError {
    fn from(err: sqlx::Error) -> Self {
        NotifierError::Database(err)
    }
}

impl From<NotifierError> for tonic::Status {
    fn from(err: NotifierError) -> Self {
        let label = err.label();
        match err {
            NotifierError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            NotifierError::NotFound(m) => ApiError::NotFound(m),
            NotifierError::Precondition(m) => ApiError::FailedPrecondition(m),
            NotifierError::PermissionDenied(m) => ApiError::PermissionDenied(m),
            NotifierError::Exhausted(m) => ApiError::ResourceExhausted(m),
            NotifierError::Unavailable(m) => ApiError::Unavailable(m),
            NotifierError::Database(e) => database_error("the notifier's database", &e),
            NotifierError::Internal(m) => ApiError::Internal(m),
        }
        .labelled(label)
    }
}
