//! The scheduler's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::{
    ApiError,
    error::{database_error, database_label},
};

use crate::domain::machine::ActionError;

/// Everything that can go wrong in the scheduler's API and engine.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        reason: String,
    },
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Not in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not.
    #[error("{0}")]
    PermissionDenied(String),
    /// Database or dependency down, or a row lock not obtained in time.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed: UNAVAILABLE when it cannot be reached, INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl SchedulerError {
    /// Shorthand for [`SchedulerError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SchedulerError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl From<sqlx::Error> for SchedulerError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                SchedulerError::Unavailable("the release is busy (being advanced); retry".into())
            }
            sqlx::Error::Database(db) if db.constraint() == Some("releases_request_id") => {
                SchedulerError::invalid("request_id", "already used for a different release")
            }
            _ => SchedulerError::Database(err),
        }
    }
}

impl From<ActionError> for SchedulerError {
    fn from(err: ActionError) -> Self {
        match err {
            ActionError::NotNow(m) => SchedulerError::FailedPrecondition(m),
            ActionError::Forbidden(m) => SchedulerError::PermissionDenied(m),
            ActionError::Invalid { field, reason } => SchedulerError::invalid(field, reason),
        }
    }
}

impl SchedulerError {
    /// The kind of failure, for metrics (`hopngo_grpc_server_errors_total{error}`).
    pub fn label(&self) -> &'static str {
        match self {
            SchedulerError::Invalid { .. } => "invalid",
            SchedulerError::NotFound(_) => "not-found",
            SchedulerError::FailedPrecondition(_) => "precondition",
            SchedulerError::PermissionDenied(_) => "permission-denied",
            SchedulerError::Unavailable(_) => "unavailable",
            SchedulerError::Database(e) => database_label(e),
            SchedulerError::Internal(_) => "internal",
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(err: SchedulerError) -> Self {
        match err {
            SchedulerError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            SchedulerError::NotFound(m) => ApiError::NotFound(m),
            SchedulerError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            SchedulerError::PermissionDenied(m) => ApiError::PermissionDenied(m),
            SchedulerError::Unavailable(m) => ApiError::Unavailable(m),
            SchedulerError::Database(e) => database_error("the scheduler's database", &e),
            SchedulerError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<SchedulerError> for tonic::Status {
    fn from(err: SchedulerError) -> Self {
        let label = err.label();
        ApiError::from(err).labelled(label)
    }
}
