//! The analyzer's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::ApiError;

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

impl From<sqlx::Error> for AnalyzerError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            _ if hopngo_kit::db::is_unavailable(&err) => {
                AnalyzerError::Unavailable(format!("database unavailable: {err}"))
            }
            _ => AnalyzerError::Internal(format!("database: {err}")),
        }
    }
}

impl From<AnalyzerError> for tonic::Status {
    fn from(err: AnalyzerError) -> Self {
        match err {
            AnalyzerError::Invalid { field, reason } => ApiError::InvalidArgument { field, reason },
            AnalyzerError::NotFound(m) => ApiError::NotFound(m),
            AnalyzerError::Unavailable(m) => ApiError::Unavailable(m),
            AnalyzerError::Internal(m) => ApiError::Internal(m),
        }
        .into()
    }
}
