//! The deployer's errors, and their one mapping to gRPC status (through the kit's [`ApiError`]).

use hopngo_kit::{
    ApiError,
    error::{database_error, database_label},
};

use crate::backend::BackendError;

/// Everything that can go wrong in the deployer's API.
#[derive(Debug, thiserror::Error)]
pub enum DeployerError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        reason: String,
    },
    /// Nothing was ever applied for the service in the environment.
    #[error("{0}")]
    NotFound(String),
    /// The backend refused the target or cannot act now.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// This replica stands by while another leads (retry: the leader, or this replica once it
    /// takes over, answers).
    #[error("this deployer replica is on standby; another replica leads")]
    Standby,
    /// The deployer's database failed: UNAVAILABLE when it cannot be reached (the scheduler
    /// retries), INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl DeployerError {
    /// Shorthand for [`DeployerError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DeployerError::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The kind of failure, for metrics (`hopngo_grpc_server_errors_total{error}`).
    pub fn label(&self) -> &'static str {
        match self {
            DeployerError::Invalid { .. } | DeployerError::Backend(BackendError::Invalid { .. }) => "invalid",
            DeployerError::NotFound(_) => "not-found",
            DeployerError::Standby => "standby",
            DeployerError::Backend(BackendError::Unavailable(_)) => "backend-unavailable",
            DeployerError::Database(e) => database_label(e),
        }
    }
}

impl From<DeployerError> for tonic::Status {
    fn from(err: DeployerError) -> Self {
        let label = err.label();
        match err {
            DeployerError::Invalid { field, reason }
            | DeployerError::Backend(BackendError::Invalid { field, reason }) => {
                ApiError::InvalidArgument { field, reason }
            }
            DeployerError::NotFound(m) => ApiError::NotFound(m),
            DeployerError::Standby => ApiError::Unavailable(DeployerError::Standby.to_string()),
            DeployerError::Backend(BackendError::Unavailable(m)) => ApiError::Unavailable(m),
            DeployerError::Database(e) => database_error("the deployer's database", &e),
        }
        .labelled(label)
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_not_internal() {
        let status = Status::from(DeployerError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.metadata().get(hopngo_kit::error::ERROR_LABEL).unwrap(), "database-unavailable");
        let status = Status::from(DeployerError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())));
        assert_eq!(status.code(), Code::Unavailable);
        let status = Status::from(DeployerError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
        let status = Status::from(DeployerError::from(BackendError::Unavailable("proxy restarting".into())));
        assert_eq!((status.code(), status.message()), (Code::Unavailable, "proxy restarting"));
    }
}
