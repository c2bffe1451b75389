//! The migrator's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::{
    ApiError,
    error::{database_error, database_label},
};

use crate::executor::ExecError;

/// Everything that can go wrong in the migrator's API.
#[derive(Debug, thiserror::Error)]
pub enum MigratorError {
    /// A request field (or a script it points at) is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        reason: String,
    },
    /// No such run.
    #[error("{0}")]
    NotFound(String),
    /// The target database or its history does not allow it now.
    #[error("{0}")]
    Precondition(String),
    /// A database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The migrator's own database failed: UNAVAILABLE when it cannot be reached, INTERNAL
    /// otherwise.
    #[error("the migrator's database: {0}")]
    Database(#[source] sqlx::Error),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl MigratorError {
    /// Shorthand for [`MigratorError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        MigratorError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl MigratorError {
    /// The kind of failure, for metrics (`hopngo_grpc_server_errors_total{error}`).
    pub fn label(&self) -> &'static str {
        match self {
            MigratorError::Invalid { .. } => "invalid",
            MigratorError::NotFound(_) => "not-found",
            MigratorError::Precondition(_) => "precondition",
            MigratorError::Unavailable(_) => "unavailable",
            MigratorError::Database(e) => database_label(e),
            MigratorError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for MigratorError {
    fn from(err: sqlx::Error) -> Self {
        MigratorError::Database(err)
    }
}

impl From<ExecError> for MigratorError {
    fn from(err: ExecError) -> Self {
        match err {
            ExecError::Invalid { field, reason } => MigratorError::Invalid { field, reason },
            ExecError::Unavailable(m) => MigratorError::Unavailable(m),
            ExecError::Precondition(m) | ExecError::Failed(m) => MigratorError::Precondition(m),
        }
    }
}

impl From<MigratorError> for tonic::Status {
    fn from(err: MigratorError) -> Self {
        let label = err.label();
        match err {
            MigratorError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            MigratorError::NotFound(m) => ApiError::NotFound(m),
            MigratorError::Precondition(m) => ApiError::FailedPrecondition(m),
            MigratorError::Unavailable(m) => ApiError::Unavailable(m),
            MigratorError::Database(e) => database_error("the migrator's database", &e),
            MigratorError::Internal(m) => ApiError::Internal(m),
        }
        .labelled(label)
    }
}
