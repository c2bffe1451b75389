//! The one mapping from domain errors to `tonic::Status`. Every service converts its own
//! `thiserror` enum into [`ApiError`]; the edge turns that into a status here, so codes and the
//! shape of messages are the same across services.

use tonic::{Code, Status};

/// A failure classified by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; `field` names the offending field (a path like `steps[2].weight`).
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller uses as much of something as it may (open streams); release some first.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (database, another service) cannot be reached right now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A concurrent change got there first; retry.
    #[error("{0}")]
    Aborted(String),
    /// A bug or an unexpected failure; the detail is logged, not returned.
    #[error("{0}")]
    Internal(String),
}

/// Response metadata naming the kind of failure with a short label (`database-unavailable`,
/// `invalid`): the `error` label of `hopngo_grpc_server_errors_total`, and something a client can
/// act on without parsing the message.
pub const ERROR_LABEL: &str = "hopngo-error";

impl ApiError {
    /// Shorthand for [`ApiError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// The status for this error, carrying `label` as [`ERROR_LABEL`] metadata.
    pub fn labelled(self, label: &'static str) -> Status {
        let mut status = Status::from(self);
        status.metadata_mut().insert(ERROR_LABEL, tonic::metadata::MetadataValue::from_static(label));
        status
    }
}

/// The classification every service gives an error of its own database (`whose`: "the
/// notifier's database"): it cannot be reached (UNAVAILABLE, retry later), or something else went
/// wrong (INTERNAL, logged).
pub fn database_error(whose: &str, err: &sqlx::Error) -> ApiError {
    if crate::db::is_unavailable(err) {
        ApiError::Unavailable(format!("{whose} is unavailable: {err}"))
    } else {
        ApiError::Internal(format!("{whose}: {err}"))
    }
}

/// The label of a database error (see [`database_error`]).
pub fn database_label(err: &sqlx::Error) -> &'static str {
    if crate::db::is_unavailable(err) { "database-unavailable" } else { "database" }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let code = match &err {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Aborted(_) => Code::Aborted,
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                return Status::internal("internal error; see the server log");
            }
        };
        Status::new(code, bounded_message(err.to_string()))
    }
}

/// Longest status message sent. Messages echo what the caller sent (values are shown cut to 80
/// characters where they are echoed); this is the backstop, so no message can outgrow a client's
/// header limit and hide the real code behind RESOURCE_EXHAUSTED.
pub const MAX_MESSAGE_BYTES: usize = 2048;

fn bounded_message(mut message: String) -> String {
    hopngo_proto::check::cut(&mut message, MAX_MESSAGE_BYTES);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(ApiError::invalid("steps[2].weight", "130 is not in 0..=100"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "steps[2].weight: 130 is not in 0..=100");
    }

    #[test]
    fn long_messages_are_cut() {
        let status = Status::from(ApiError::NotFound(format!("no service {}", "é".repeat(1 << 20))));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES && status.message().ends_with('…'));
    }

    #[test]
    fn database_errors_are_unavailable_only_when_the_database_cannot_be_reached() {
        let down = sqlx::Error::PoolTimedOut;
        let status = database_error("the database", &down).labelled(database_label(&down));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(ERROR_LABEL).unwrap(), "database-unavailable");
        let broken = sqlx::Error::RowNotFound;
        let status = database_error("the database", &broken).labelled(database_label(&broken));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.metadata().get(ERROR_LABEL).unwrap(), "database");
    }

    #[test]
    fn internal_detail_is_not_leaked() {
        let status = Status::from(ApiError::Internal("password=hunter2".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
