//! Property tests of the security inputs a caller or operator controls: bearer tokens (JWT-shaped
//! or not), the tokens file and the access policy. Whatever arrives is refused with a reason or
//! accepted, never a panic, and nothing unsigned is ever accepted.

use std::time::Duration;

use hopngo_kit::{
    auth::{AuthArgs, parse_tokens},
    authz::{Policy, glob_match},
};
use hopngo_testkit::{
    hostile::{config, text},
    oidc::TestIssuer,
};
use proptest::prelude::*;

const TOKEN_ALPHABET: &str = r"A-Za-z0-9_\-.=+/ ";
const YAML_ALPHABET: &str = r##"a-z0-9 :\-\[\]{},*!|>'"#\n"##;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn authenticator() -> &'static hopngo_kit::auth::Authenticator {
    static AUTH: std::sync::OnceLock<hopngo_kit::auth::Authenticator> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        AuthArgs {
            oidc_issuer: Some(TestIssuer::shared().url().into()),
            oidc_clock_skew: Duration::from_secs(30),
            // Forged key ids must not turn into one JWKS fetch per case.
            oidc_jwks_min_refresh: Duration::from_secs(3600),
            ..AuthArgs::default()
        }
        .authenticator()
        .expect("authenticator")
    })
}

/// A JWT-shaped string: three base64url-ish segments, the header sometimes a real one.
fn jwt_like() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = prop_oneof![
        text(TOKEN_ALPHABET),
        Just(engine.encode(br#"{"alg":"ES256","kid":"ec-1"}"#)),
        Just(engine.encode(br#"{"alg":"none"}"#)),
        Just(engine.encode(br#"{"alg":"RS256","kid":{"nested":[1,2]}}"#)),
        any::<Vec<u8>>().prop_map(move |bytes| engine.encode(bytes)),
    ];
    (header, text(TOKEN_ALPHABET), text(TOKEN_ALPHABET)).prop_map(|(h, p, s)| format!("{h}.{p}.{s}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_forged_token_is_accepted(token in prop_oneof![jwt_like(), text(TOKEN_ALPHABET)]) {
        let result = runtime().block_on(authenticator().authenticate_token(&token));
        let refused = result.err().map(|e| e.0);
        prop_assert!(refused.as_deref().is_some_and(|reason| !reason.is_empty()));
    }

    #[test]
    fn any_tokens_file_is_read_or_refused_with_a_reason(document in text(YAML_ALPHABET)) {
        if let Err(reason) = parse_tokens(&document) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn any_policy_is_read_or_refused_with_a_reason(document in text(YAML_ALPHABET)) {
        if let Err(reason) = Policy::parse(&document) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn globs_without_a_star_match_only_themselves(name in "[a-z0-9-]{0,20}", other in "[a-z0-9-]{0,20}") {
        prop_assert!(glob_match(&name, &name));
        prop_assert_eq!(glob_match(&name, &other), name == other);
        prop_assert!(glob_match("*", &other));
        let prefixed = glob_match(&format!("{name}*"), &format!("{name}{other}"));
        prop_assert!(prefixed);
    }
}
