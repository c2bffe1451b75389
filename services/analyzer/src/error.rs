//! The analyzer's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::{
    ApiError,
    error::{database_error, database_label},
};

/// Everything that can go wrong in the analyzer's API.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    /// A request field is wrong.
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
    /// The database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed: UNAVAILABLE when it cannot be reached, INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl AnalyzerError {
    /// Shorthand for [`AnalyzerError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AnalyzerError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl AnalyzerError {
    /// The kind of failure, for metrics (`hopngo_grpc_server_errors_total{error}`).
    pub fn label(&self) -> &'static str {
        match self {
            AnalyzerError::Invalid { .. } => "invalid",
            AnalyzerError::NotFound(_) => "not-found",
            AnalyzerError::Unavailable(_) => "unavailable",
            AnalyzerError::Database(e) => database_label(e),
            AnalyzerError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for AnalyzerError {
    fn from(err: sqlx::Error) -> Self {
        AnalyzerError::Database(err)
    }
}

impl From<AnalyzerError> for tonic::Status {
    fn from(err: AnalyzerError) -> Self {
        let label = err.label();
        match err {
            AnalyzerError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            AnalyzerError::NotFound(m) => ApiError::NotFound(m),
            AnalyzerError::Unavailable(m) => ApiError::Unavailable(m),
            AnalyzerError::Database(e) => database_error("the analyzer's database", &e),
            AnalyzerError::Internal(m) => ApiError::Internal(m),
        }
        .labelled(label)
    }
}
