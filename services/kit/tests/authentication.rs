//! Bearer-token authentication against a real OIDC issuer served over HTTP (discovery + JWKS):
//! the algorithms, claims and key handling a hostile or careless token exercises.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hopngo_kit::auth::{AuthArgs, Authenticator, STATIC_TOKENS_ISSUER, token_hash};
use hopngo_testkit::oidc::{Signing, TestIssuer};

fn authenticator(issuer: &TestIssuer, min_refresh: Duration) -> Authenticator {
    AuthArgs {
        oidc_issuer: Some(issuer.url().to_string()),
        oidc_clock_skew: Duration::from_secs(30),
        oidc_jwks_min_refresh: min_refresh,
        ..AuthArgs::default()
    }
    .authenticator()
    .expect("authenticator")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn refusal(auth: &Authenticator, token: &str) -> String {
    auth.authenticate_token(token).await.expect_err("refused").0
}

#[tokio::test]
async fn es256_and_rs256_tokens_prove_user_groups_subject_and_issuer() {
    let issuer = TestIssuer::start();
    let auth = authenticator(&issuer, Duration::ZERO);
    let alice =
        auth.authenticate_token(&issuer.token("Alice@Example.com", &["Deployers", "/platform/sre"])).await.unwrap();
    assert_eq!(alice.user, "alice@example.com");
    assert_eq!(alice.groups, vec!["deployers".to_string(), "/platform/sre".to_string()]);
    assert_eq!(alice.subject, "sub-Alice@Example.com");
    assert_eq!(alice.issuer, issuer.url());
    let rsa = issuer.sign(&issuer.claims("bob", &[]), Signing::Rs256);
    assert_eq!(auth.authenticate_token(&rsa).await.unwrap().user, "bob");
    // The keys were fetched once and reused.
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason() {
    let issuer = TestIssuer::start();
    let auth = authenticator(&issuer, Duration::ZERO);
    let mut expired = issuer.claims("alice", &[]);
    expired["exp"] = (now() - 120).into();
    assert_eq!(refusal(&auth, &issuer.sign(&expired, Signing::Es256)).await, "the token has expired");
    // Inside the allowed skew an expired token still passes.
    let mut just_expired = issuer.claims("alice", &[]);
    just_expired["exp"] = (now() - 5).into();
    assert!(auth.authenticate_token(&issuer.sign(&just_expired, Signing::Es256)).await.is_ok());
    let mut early = issuer.claims("alice", &[]);
    early["nbf"] = (now() + 600).into();
    assert!(refusal(&auth, &issuer.sign(&early, Signing::Es256)).await.contains("not valid yet"));
    let mut audience = issuer.claims("alice", &[]);
    audience["aud"] = "another-service".into();
    assert!(refusal(&auth, &issuer.sign(&audience, Signing::Es256)).await.contains("audience"));
    let mut other_issuer = issuer.claims("alice", &[]);
    other_issuer["iss"] = "https://evil.example.com".into();
    assert!(refusal(&auth, &issuer.sign(&other_issuer, Signing::Es256)).await.contains("issuer"));
    let claims = issuer.claims("alice", &[]);
    assert!(refusal(&auth, &issuer.sign(&claims, Signing::None)).await.contains("\"none\" is not accepted"));
    assert!(refusal(&auth, &issuer.sign(&claims, Signing::Hs256)).await.contains("\"HS256\" is not accepted"));
    assert!(refusal(&auth, &issuer.sign(&claims, Signing::UnpublishedKey)).await.contains("does not publish"));
    let mut no_email = issuer.claims("alice", &[]);
    no_email.as_object_mut().unwrap().remove("email");
    assert!(refusal(&auth, &issuer.sign(&no_email, Signing::Es256)).await.contains("\"email\""));
    let mut no_exp = issuer.claims("alice", &[]);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(refusal(&auth, &issuer.sign(&no_exp, Signing::Es256)).await.contains("exp"));
    let mut bad_user = issuer.claims("alice", &[]);
    bad_user["email"] = "alice\u{0}@example.com".into();
    assert!(refusal(&auth, &issuer.sign(&bad_user, Signing::Es256)).await.contains("not a user name"));
    let mut bad_groups = issuer.claims("alice", &[]);
    bad_groups["groups"] = serde_json::json!([1, 2]);
    assert!(refusal(&auth, &issuer.sign(&bad_groups, Signing::Es256)).await.contains("list of strings"));
    // A tampered payload breaks the signature.
    let token = issuer.token("alice", &[]);
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    parts[1] = engine.encode(issuer.claims("mallory", &["admins"]).to_string());
    assert!(refusal(&auth, &parts.join(".")).await.contains("signature"));
    assert!(refusal(&auth, "a.b.c").await.contains("header"));
    assert!(refusal(&auth, "opaque-token").await.contains("static tokens are not accepted"));
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_first_sight_and_a_retired_one_stops_working() {
    let issuer = TestIssuer::start();
    let auth = authenticator(&issuer, Duration::ZERO);
    let before = issuer.token("alice", &[]);
    auth.authenticate_token(&before).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);
    issuer.rotate(true);
    let after = issuer.token("alice", &[]);
    auth.authenticate_token(&after).await.expect("the new key is fetched when a token names it");
    assert_eq!(issuer.jwks_fetches(), 2);
    // The old key was retired in that fetch.
    assert!(refusal(&auth, &before).await.contains("does not publish"));
}

#[tokio::test]
async fn unknown_keys_cannot_make_the_service_hammer_the_issuer() {
    let issuer = TestIssuer::start();
    let auth = authenticator(&issuer, Duration::from_secs(3600));
    auth.authenticate_token(&issuer.token("alice", &[])).await.unwrap();
    let forged = issuer.sign(&issuer.claims("alice", &[]), Signing::UnpublishedKey);
    let attempts = (0..200).map(|_| auth.authenticate_token(&forged));
    for result in futures::future::join_all(attempts).await {
        assert!(result.unwrap_err().0.contains("does not publish"));
    }
    assert_eq!(issuer.jwks_fetches(), 1, "refetches are bounded by --oidc-jwks-min-refresh");
}

#[tokio::test]
async fn static_tokens_and_jwts_work_side_by_side_and_the_file_reloads() {
    let issuer = TestIssuer::start();
    let dir = std::env::temp_dir().join(format!("hopngo-tokens-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.yaml");
    std::fs::write(&file, format!("tokens:\n  - {{sha256: {}, user: ci-bot, groups: [bots]}}\n", token_hash("bot-1")))
        .unwrap();
    let auth = AuthArgs {
        tokens_file: Some(file.clone()),
        oidc_issuer: Some(issuer.url().to_string()),
        ..AuthArgs::default()
    }
    .authenticator()
    .unwrap();
    let bot = auth.authenticate_token("bot-1").await.unwrap();
    assert_eq!((bot.user.as_str(), bot.issuer.as_str()), ("ci-bot", STATIC_TOKENS_ISSUER));
    assert_eq!(auth.authenticate_token(&issuer.token("alice", &[])).await.unwrap().user, "alice");
    // Replace the token; the file is looked at again within a second or so.
    std::fs::write(&file, format!("tokens:\n  - {{sha256: {}, user: ci-bot}}\n", token_hash("bot-2"))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while auth.authenticate_token("bot-1").await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the tokens file was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(auth.authenticate_token("bot-2").await.unwrap().user, "ci-bot");
    // A broken file keeps the last good tokens.
    std::fs::write(&file, "tokens: [{sha256: nope}]\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(auth.authenticate_token("bot-2").await.unwrap().user, "ci-bot");
    std::fs::remove_dir_all(&dir).unwrap();
}
