//! The dashboard's errors and the one mapping to HTTP answers (`{"error": ..., "code": ...}`).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// What can go wrong answering a page.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// No session cookie.
    #[error("sign in first")]
    SignedOut,
    /// A change that may come from another site.
    #[error("{0}")]
    CrossSite(String),
    /// Bad input, named by its field.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The control plane's answer.
    #[error("{}", .0.message())]
    Api(#[from] tonic::Status),
    /// The token or an address cannot be used.
    #[error("{0}")]
    Client(#[from] hopngo_client::ClientError),
}

impl DashboardError {
    /// Bad input in `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DashboardError::Invalid { field, reason: reason.into() }
    }

    fn status_and_code(&self) -> (StatusCode, String) {
        use tonic::Code;
        match self {
            DashboardError::SignedOut => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED".into()),
            DashboardError::CrossSite(_) => (StatusCode::FORBIDDEN, "CROSS_SITE".into()),
            DashboardError::Invalid { .. } => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT".into()),
            DashboardError::Client(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT".into()),
            DashboardError::Api(status) => {
                let http = match status.code() {
                    Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                    Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                    Code::PermissionDenied => StatusCode::FORBIDDEN,
                    Code::NotFound => StatusCode::NOT_FOUND,
                    Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
                    Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                (http, code_name(status.code()))
            }
        }
    }
}

/// `PermissionDenied` → `PERMISSION_DENIED`, as gRPC names its codes.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "a page's call failed");
        }
        (status, Json(serde_json::json!({ "error": self.to_string(), "code": code }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_refusals_keep_their_meaning() {
        let answer = |e: DashboardError| e.status_and_code();
        assert_eq!(
            answer(tonic::Status::permission_denied("viewer").into()),
            (StatusCode::FORBIDDEN, "PERMISSION_DENIED".into())
        );
        assert_eq!(answer(tonic::Status::not_found("x").into()).0, StatusCode::NOT_FOUND);
        assert_eq!(answer(tonic::Status::failed_precondition("x").into()).0, StatusCode::CONFLICT);
        assert_eq!(answer(tonic::Status::unavailable("x").into()).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(DashboardError::SignedOut).0, StatusCode::UNAUTHORIZED);
        assert_eq!(answer(DashboardError::invalid("reason", "too long")).1, "INVALID_ARGUMENT");
    }
}
