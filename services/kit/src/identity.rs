//! User and group names as the control plane compares and stores them. Who a caller is comes
//! only from [`crate::auth`]: a verified token or a control-plane certificate.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise(" ALICE "), "alice");
        assert!(same_name("Bob", " bob") && !same_name("bob", "bobby"));
    }

    #[test]
    fn credential_names_are_bounded() {
        assert!(valid_user("alice+ops@example.com") && !valid_user("al ice") && !valid_user(""));
        assert!(!valid_user(&"a".repeat(257)));
        assert!(valid_group("/platform/sre") && !valid_group("a,b") && !valid_group("a\u{0}"));
    }
}
