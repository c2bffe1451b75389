//! The caller's identity. Today it comes from request metadata (`x-hopngo-user`,
//! `x-hopngo-roles`); real authentication replaces [`interceptor`] and nothing else.

use tonic::{Request, Status};

/// Metadata key carrying the user name.
pub const USER_HEADER: &str = "x-hopngo-user";
/// Metadata key carrying comma-separated roles.
pub const ROLES_HEADER: &str = "x-hopngo-roles";
/// User name of a caller that sent no identity.
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name (`alice`, `ci-bot`); [`ANONYMOUS`] when none was sent.
    pub user: String,
    /// Roles held.
    pub roles: Vec<String>,
}

impl Identity {
    /// The identity the interceptor attached, or anonymous.
    pub fn of<T>(req: &Request<T>) -> Identity {
        req.extensions().get::<Identity>().cloned().unwrap_or_else(Identity::anonymous)
    }

    /// A caller without identity.
    pub fn anonymous() -> Identity {
        Identity { user: ANONYMOUS.to_string(), roles: Vec::new() }
    }

    /// Whether the caller sent no identity.
    pub fn is_anonymous(&self) -> bool {
        self.user == ANONYMOUS
    }

    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| same_name(r, role))
    }
}

/// A user or role name as the control plane stores and compares it: trimmed and case-folded,
/// so `ALICE` and `alice ` are one person (the four-eyes rule depends on it).
pub fn normalise(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Whether two names (as sent, or as stored before names were normalised) are the same person.
pub fn same_name(a: &str, b: &str) -> bool {
    normalise(a) == normalise(b)
}

/// Whether `s` may name a user proven by a credential: 1-256 of `A-Z a-z 0-9 - _ . @ : +`
/// (e-mail addresses included).
pub fn valid_user(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty()
        && s.len() <= 256
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '+'))
}

/// Whether `s` may name a group: 1-256 printable ASCII characters without spaces or commas
/// (issuers use paths such as `/platform/sre`).
pub fn valid_group(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
}

/// Interceptor for every business service: parses the identity metadata and attaches an
/// [`Identity`] to the request. Malformed metadata is rejected rather than treated as anonymous.
#[allow(clippy::result_large_err)]
pub fn interceptor(mut req: Request<()>) -> Result<Request<()>, Status> {
    let meta = req.metadata();
    let user = match meta.get(USER_HEADER) {
        None => ANONYMOUS.to_string(),
        Some(v) => {
            let user = v.to_str().map_err(|_| Status::unauthenticated("x-hopngo-user is not ASCII"))?.trim();
            if !valid_name(user) {
                return Err(Status::unauthenticated(format!(
                    "x-hopngo-user: {user:?} is not a valid user name (1-128 of A-Z a-z 0-9 - _ . @ :)"
                )));
            }
            normalise(user)
        }
    };
    let roles = match meta.get(ROLES_HEADER) {
        None => Vec::new(),
        Some(v) => {
            let raw = v.to_str().map_err(|_| Status::unauthenticated("x-hopngo-roles is not ASCII"))?;
            let mut roles = Vec::new();
            for role in raw.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                if !valid_name(role) {
                    return Err(Status::unauthenticated(format!("x-hopngo-roles: {role:?} is not a valid role")));
                }
                roles.push(normalise(role));
            }
            roles
        }
    };
    req.extensions_mut().insert(Identity { user, roles });
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_roles() {
        let mut req = Request::new(());
        req.metadata_mut().insert(USER_HEADER, "alice".parse().unwrap());
        req.metadata_mut().insert(ROLES_HEADER, "release-manager, sre".parse().unwrap());
        let req = interceptor(req).unwrap();
        let id = Identity::of(&req);
        assert_eq!(id.user, "alice");
        assert!(id.has_role("sre") && id.has_role("release-manager"));
    }

    #[test]
    fn names_are_normalised() {
        let mut req = Request::new(());
        req.metadata_mut().insert(USER_HEADER, " ALICE ".parse().unwrap());
        req.metadata_mut().insert(ROLES_HEADER, "Release-Manager".parse().unwrap());
        let id = Identity::of(&interceptor(req).unwrap());
        assert_eq!(id.user, "alice");
        assert_eq!(id.roles, vec!["release-manager".to_string()]);
        assert!(id.has_role("RELEASE-MANAGER"));
        assert!(same_name("Bob", " bob") && !same_name("bob", "bobby"));
    }

    #[test]
    fn credential_names_are_bounded() {
        assert!(valid_user("alice+ops@example.com") && !valid_user("al ice") && !valid_user(""));
        assert!(!valid_user(&"a".repeat(257)));
        assert!(valid_group("/platform/sre") && !valid_group("a,b") && !valid_group("a\u{0}"));
    }

    #[test]
    fn missing_is_anonymous_and_malformed_is_refused() {
        let req = interceptor(Request::new(())).unwrap();
        assert!(Identity::of(&req).is_anonymous());
        let mut bad = Request::new(());
        bad.metadata_mut().insert(USER_HEADER, "al ice".parse().unwrap());
        assert_eq!(interceptor(bad).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
