//! Authentication of callers: bearer tokens checked by one tower layer in front of every business
//! service. A token is either an OIDC JWT (RS256/ES256, keys from the issuer's JWKS) or a static
//! token whose SHA-256 is listed in a tokens file. The layer attaches the proven [`Principal`];
//! health and reflection stay open so probes and grpcurl-style clients can discover the API.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest as _;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{
    args::{format_duration, parse_duration},
    authz::{Authorizer, MTLS_ISSUER, Scope},
    http::HttpClient,
    identity::{normalise, valid_group, valid_user},
    limits::{LimitArgs, Limits, hold_while_streaming},
    reload::Reloading,
    tls::{PeerInfo, Tls, TlsArgs},
};

/// Issuer recorded for callers proven by the static tokens file.
pub const STATIC_TOKENS_ISSUER: &str = "hopngo:static-tokens";
/// Longest bearer token read (JWTs from common issuers are well under 4 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most groups taken from one credential.
const MAX_GROUPS: usize = 256;
/// Largest clock skew accepted as a setting.
const MAX_SKEW: Duration = Duration::from_secs(300);
/// How long fetched signing keys are used before they are fetched again.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Deadline of each call to the issuer.
const ISSUER_TIMEOUT: Duration = Duration::from_secs(5);

const DEFAULT_AUDIENCE: &str = "hopngo";
const DEFAULT_USER_CLAIM: &str = "email";
const DEFAULT_GROUPS_CLAIM: &str = "groups";
const DEFAULT_SKEW: &str = "60s";
const DEFAULT_MIN_REFRESH: &str = "10s";
const DEFAULT_ADMIN_GROUP: &str = "hopngo:admins";
const DEFAULT_SCHEDULER: &str = "scheduler";

/// How callers prove who they are; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// File of static tokens (SHA-256 of each token → user and groups); reloaded when it changes.
    #[arg(long = "auth-tokens", env = "HOPNGO_AUTH_TOKENS")]
    pub tokens_file: Option<PathBuf>,
    /// OIDC issuer URL whose JWTs are accepted (https, or http on loopback).
    #[arg(long = "oidc-issuer", env = "HOPNGO_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Audience the JWTs must be issued for.
    #[arg(long = "oidc-audience", env = "HOPNGO_OIDC_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub oidc_audience: String,
    /// Claim naming the user.
    #[arg(long = "oidc-user-claim", env = "HOPNGO_OIDC_USER_CLAIM", default_value = DEFAULT_USER_CLAIM)]
    pub oidc_user_claim: String,
    /// Claim listing the user's groups.
    #[arg(long = "oidc-groups-claim", env = "HOPNGO_OIDC_GROUPS_CLAIM", default_value = DEFAULT_GROUPS_CLAIM)]
    pub oidc_groups_claim: String,
    /// Clock skew allowed on `exp` and `nbf` (at most 5m).
    #[arg(long = "oidc-clock-skew", env = "HOPNGO_OIDC_CLOCK_SKEW", default_value = DEFAULT_SKEW, value_parser = parse_duration)]
    pub oidc_clock_skew: Duration,
    /// Least time between two JWKS fetches caused by tokens signed with an unknown key.
    #[arg(long = "oidc-jwks-min-refresh", env = "HOPNGO_OIDC_JWKS_MIN_REFRESH", default_value = DEFAULT_MIN_REFRESH, value_parser = parse_duration)]
    pub oidc_jwks_min_refresh: Duration,
    /// Extra CA certificates (PEM) trusted for the issuer's HTTPS.
    #[arg(long = "oidc-ca-file", env = "HOPNGO_OIDC_CA_FILE", value_delimiter = ',')]
    pub oidc_ca_files: Vec<PathBuf>,
    /// Access policy (roles of users and groups per environment and service); reloaded when it
    /// changes. Without it only the admin group and the scheduler may act.
    #[arg(long = "policy", env = "HOPNGO_POLICY")]
    pub policy_file: Option<PathBuf>,
    /// Group whose members hold every permission everywhere, whatever the policy says.
    #[arg(long = "admin-group", env = "HOPNGO_ADMIN_GROUP", default_value = DEFAULT_ADMIN_GROUP)]
    pub admin_group: String,
    /// Common Name of the scheduler's certificate: the only caller, besides admins, of the
    /// internal RPCs (apply targets, run migrations, publish events).
    #[arg(long = "scheduler-identity", env = "HOPNGO_SCHEDULER_IDENTITY", default_value = DEFAULT_SCHEDULER)]
    pub scheduler_identity: String,
}

impl Default for AuthArgs {
    /// What the flags default to (no tokens file, no issuer, no policy).
    fn default() -> Self {
        let duration = |text| parse_duration(text).expect("the defaults parse");
        AuthArgs {
            tokens_file: None,
            oidc_issuer: None,
            oidc_audience: DEFAULT_AUDIENCE.into(),
            oidc_user_claim: DEFAULT_USER_CLAIM.into(),
            oidc_groups_claim: DEFAULT_GROUPS_CLAIM.into(),
            oidc_clock_skew: duration(DEFAULT_SKEW),
            oidc_jwks_min_refresh: duration(DEFAULT_MIN_REFRESH),
            oidc_ca_files: Vec::new(),
            policy_file: None,
            admin_group: DEFAULT_ADMIN_GROUP.into(),
            scheduler_identity: DEFAULT_SCHEDULER.into(),
        }
    }
}

impl AuthArgs {
    /// The authenticator these flags describe.
    pub fn authenticator(&self) -> Result<Authenticator, String> {
        let tokens = self.tokens_file.as_deref().map(StaticTokens::load).transpose()?;
        let oidc = match &self.oidc_issuer {
            None => None,
            Some(issuer) => {
                if self.oidc_clock_skew > MAX_SKEW {
                    return Err(format!(
                        "--oidc-clock-skew {} is more than {}",
                        format_duration(self.oidc_clock_skew),
                        format_duration(MAX_SKEW)
                    ));
                }
                for (flag, claim) in
                    [("--oidc-user-claim", &self.oidc_user_claim), ("--oidc-groups-claim", &self.oidc_groups_claim)]
                {
                    if claim.is_empty() || claim.len() > 64 || claim.chars().any(|c| c.is_control()) {
                        return Err(format!("{flag} {claim:?} is not a claim name"));
                    }
                }
                if self.oidc_audience.is_empty() || self.oidc_audience.len() > 256 {
                    return Err("--oidc-audience must be 1-256 bytes".into());
                }
                let http = HttpClient::with_roots(&self.oidc_ca_files)?;
                Some(Oidc::new(issuer, self, http)?)
            }
        };
        let authorizer = Authorizer::load(self.policy_file.as_deref(), &self.admin_group, &self.scheduler_identity)?;
        Ok(Authenticator { inner: Arc::new(Inner { tokens, oidc, authorizer }) })
    }
}

/// How a service proves itself and checks its callers: tokens, policy, TLS and per-caller limits.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SecurityArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What [`SecurityArgs`] loaded.
#[derive(Clone)]
pub struct Security {
    /// Checks callers.
    pub authenticator: Authenticator,
    /// This service's certificate, for serving and for calling other services.
    pub tls: Option<Tls>,
    /// How much one caller may do.
    pub limits: Limits,
}

impl SecurityArgs {
    /// Loads tokens, issuer settings, policy and certificates. At least one way in is required:
    /// a service that can authenticate nobody would refuse every call.
    pub fn load(&self) -> Result<Security, String> {
        let tls = self.tls.load()?;
        if self.auth.tokens_file.is_none() && self.auth.oidc_issuer.is_none() && tls.is_none() {
            return Err(
                "no way to authenticate callers: give --auth-tokens FILE, --oidc-issuer URL or --tls-cert (for the scheduler's calls)".into(),
            );
        }
        Ok(Security { authenticator: self.auth.authenticator()?, tls, limits: self.limits.limits()? })
    }
}

/// Who a credential proves the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// User name (`alice@example.com`, `ci-bot`, `scheduler`), normalised.
    pub user: String,
    /// Groups the credential lists, normalised.
    pub groups: Vec<String>,
    /// Who vouches for the user: the OIDC issuer, [`STATIC_TOKENS_ISSUER`] or
    /// [`crate::authz::MTLS_ISSUER`].
    pub issuer: String,
    /// The issuer's id of the user (the JWT `sub`; the user name otherwise).
    pub subject: String,
}

/// A caller the authentication layer let through: who they are, what they called, and the policy
/// that says what they may do (handlers check the environment and service a call touches with it).
#[derive(Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The access policy in force.
    pub authorizer: Authorizer,
    /// The RPC called (`/hopngo.release.v1.ReleaseService/CreateRelease`).
    pub rpc: String,
}

/// The RPC a passed call is for, as the layer saw it.
#[derive(Clone, Debug)]
struct CalledRpc(String);

/// A call the layer refused, as an audit log records it.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The RPC called.
    pub rpc: String,
    /// `Unauthenticated`, `PermissionDenied`, or `ResourceExhausted` (a limit).
    pub code: tonic::Code,
    /// Why, as the caller was told.
    pub reason: String,
    /// Who the credential proved, when it proved someone.
    pub principal: Option<Principal>,
    /// Where the call came from.
    pub remote: Option<std::net::SocketAddr>,
}

/// Where the layer reports the calls it refuses. It is called on the request path and must not
/// wait (queue the entry, drop it when the queue is full).
pub trait RefusalLog: Send + Sync {
    /// Records one refusal.
    fn refused(&self, refusal: Refusal);
}

impl Caller {
    /// The caller of `req`. A request without one did not pass [`AuthLayer`] (a server built
    /// without it) and is refused rather than served anonymously.
    #[allow(clippy::result_large_err)]
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        let extensions = req.extensions();
        match (extensions.get::<Principal>(), extensions.get::<Authorizer>(), extensions.get::<CalledRpc>()) {
            (Some(principal), Some(authorizer), Some(CalledRpc(rpc))) => {
                Ok(Caller { principal: principal.clone(), authorizer: authorizer.clone(), rpc: rpc.clone() })
            }
            _ => Err(tonic::Status::unauthenticated("the call was not authenticated")),
        }
    }

    /// Whether the caller may use `permission` in `scope`; the refusal names what is missing.
    pub fn check(&self, permission: crate::authz::Permission, scope: Scope<'_>) -> Result<(), String> {
        self.authorizer.check(&self.principal, permission, scope)
    }
}

impl Principal {
    /// The principal the authentication layer attached to a request, if it passed one.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Principal> {
        req.extensions().get::<Principal>()
    }

    /// Whether the caller is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| crate::identity::same_name(g, group))
    }
}

/// Why a credential was not accepted; the message is what the caller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

fn refuse(message: impl Into<String>) -> AuthError {
    AuthError(message.into())
}

/// Checks credentials. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: Option<StaticTokens>,
    oidc: Option<Oidc>,
    authorizer: Authorizer,
}

impl Authenticator {
    /// The policy side.
    pub fn authorizer(&self) -> &Authorizer {
        &self.inner.authorizer
    }

    /// The identity a request proves: its bearer token, or else the control-plane service whose
    /// certificate the connection presented.
    pub async fn authenticate_request(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Principal, AuthError> {
        if !headers.contains_key(http::header::AUTHORIZATION)
            && let Some(service) = peer.and_then(|p| p.service.as_deref())
        {
            if !valid_user(service) {
                return Err(refuse(format!("the client certificate's name {service:?} is not a service name")));
            }
            return Ok(Principal {
                user: normalise(service),
                groups: Vec::new(),
                issuer: MTLS_ISSUER.into(),
                subject: service.to_string(),
            });
        }
        self.authenticate(headers).await
    }

    /// The identity proven by the request's `authorization: Bearer` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| refuse("no credentials: send `authorization: Bearer <token>`"))?;
        let value = value.to_str().map_err(|_| refuse("the authorization header is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| refuse("the authorization header is not `Bearer <token>`"))?
            .trim();
        self.authenticate_token(token).await
    }

    /// The identity a bearer token proves.
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(refuse(format!("the bearer token must be 1-{MAX_TOKEN_LEN} bytes")));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refuse("the bearer token has characters a token cannot have"));
        }
        let looks_like_jwt = token.split('.').count() == 3;
        if looks_like_jwt {
            return match &self.inner.oidc {
                Some(oidc) => oidc.verify(token).await,
                None => Err(refuse("JWTs are not accepted here: no OIDC issuer is configured")),
            };
        }
        match &self.inner.tokens {
            Some(tokens) => tokens.identify(token),
            None => Err(refuse("static tokens are not accepted here: no tokens file is configured")),
        }
    }
}

/// The SHA-256 (lowercase hex) of a token: what a tokens file lists instead of the token.
pub fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a tokens file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// Parses a tokens file: `tokens: [{sha256, user, groups}]`.
pub fn parse_tokens(yaml: &str) -> Result<HashMap<String, Principal>, String> {
    if yaml.len() > 4 << 20 {
        return Err("the tokens file is larger than 4 MiB".into());
    }
    let file: TokensFile = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let mut by_hash = HashMap::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = format!("tokens[{i}]");
        let hash = entry.sha256.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{at}.sha256: not 64 hex digits (hopctl token new prints one)"));
        }
        if !valid_user(&entry.user) {
            return Err(format!("{at}.user: {:?} is not a user name", entry.user));
        }
        if entry.groups.len() > MAX_GROUPS {
            return Err(format!("{at}.groups: more than {MAX_GROUPS}"));
        }
        if let Some(bad) = entry.groups.iter().find(|g| !valid_group(g)) {
            return Err(format!("{at}.groups: {bad:?} is not a group name"));
        }
        let identity = Principal {
            user: normalise(&entry.user),
            subject: normalise(&entry.user),
            issuer: STATIC_TOKENS_ISSUER.into(),
            groups: entry.groups.iter().map(|g| normalise(g)).collect(),
        };
        if by_hash.insert(hash, identity).is_some() {
            return Err(format!("{at}.sha256: the same token is listed twice"));
        }
    }
    Ok(by_hash)
}

/// The tokens file, reloaded when it changes.
struct StaticTokens {
    by_hash: Reloading<HashMap<String, Principal>>,
}

impl StaticTokens {
    fn load(path: &Path) -> Result<StaticTokens, String> {
        let file = path.to_owned();
        let by_hash = Reloading::new("tokens file", &[path], move || {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            parse_tokens(&text).map_err(|e| format!("{}: {e}", file.display()))
        })?;
        Ok(StaticTokens { by_hash })
    }

    fn identify(&self, token: &str) -> Result<Principal, AuthError> {
        self.by_hash.current().get(&token_hash(token)).cloned().ok_or_else(|| refuse("unknown token"))
    }
}

/// Accepts JWTs of one OIDC issuer.
struct Oidc {
    issuer: String,
    audience: String,
    user_claim: String,
    groups_claim: String,
    skew: Duration,
    min_refresh: Duration,
    http: HttpClient,
    keys: tokio::sync::RwLock<SigningKeys>,
    /// One fetch at a time; callers that waited use what it fetched.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SigningKeys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    without_kid: Vec<(Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

/// Whether `url` may be fetched: https anywhere, http only on loopback.
fn acceptable_issuer_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) => {
            Ok(())
        }
        _ => Err(format!("{url:?}: an issuer is reached over https (http only on loopback)")),
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Oidc {
    fn new(issuer: &str, args: &AuthArgs, http: HttpClient) -> Result<Oidc, String> {
        let issuer = issuer.trim_end_matches('/').to_string();
        acceptable_issuer_url(&issuer).map_err(|e| format!("--oidc-issuer {e}"))?;
        Ok(Oidc {
            issuer,
            audience: args.oidc_audience.clone(),
            user_claim: args.oidc_user_claim.clone(),
            groups_claim: args.oidc_groups_claim.clone(),
            skew: args.oidc_clock_skew,
            min_refresh: args.oidc_jwks_min_refresh,
            http,
            keys: tokio::sync::RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.send("GET", url, &[], bytes::Bytes::new(), ISSUER_TIMEOUT).await?;
        if response.status != 200 {
            return Err(format!("GET {url}: HTTP {}", response.status));
        }
        if response.body.len() > 1 << 20 {
            return Err(format!("GET {url}: larger than 1 MiB"));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("GET {url}: {e}"))
    }

    /// Fetches discovery and the JWKS. Keys of other types or algorithms are skipped.
    async fn fetch_keys(&self) -> Result<SigningKeys, String> {
        let discovery: Discovery = self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer)).await?;
        if discovery.issuer.trim_end_matches('/') != self.issuer {
            return Err(format!("the discovery document names issuer {:?}, not {:?}", discovery.issuer, self.issuer));
        }
        acceptable_issuer_url(&discovery.jwks_uri).map_err(|e| format!("jwks_uri {e}"))?;
        let jwks: serde_json::Value = self.get_json(&discovery.jwks_uri).await?;
        let mut keys = SigningKeys { fetched: Some(Instant::now()), ..SigningKeys::default() };
        for raw in jwks.get("keys").and_then(|k| k.as_array()).into_iter().flatten().take(100) {
            let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(raw.clone()) else { continue };
            if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
                continue;
            }
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            match jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid, (algorithm, key));
                }
                None => keys.without_kid.push((algorithm, key)),
            }
        }
        if keys.by_kid.is_empty() && keys.without_kid.is_empty() {
            return Err(format!("{} has no RS256 or ES256 signing key", discovery.jwks_uri));
        }
        Ok(keys)
    }

    /// The key for `kid`, fetching the JWKS when the key is unknown (at most once per
    /// `min_refresh`) or the keys are older than [`KEYS_MAX_AGE`].
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let find = |keys: &SigningKeys| -> Option<DecodingKey> {
            match kid {
                Some(kid) => keys.by_kid.get(kid).filter(|(a, _)| *a == alg).map(|(_, k)| k.clone()),
                None => keys.without_kid.iter().find(|(a, _)| *a == alg).map(|(_, k)| k.clone()),
            }
        };
        let fresh = |keys: &SigningKeys| keys.fetched.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
        {
            let keys = self.keys.read().await;
            if fresh(&keys)
                && let Some(key) = find(&keys)
            {
                return Ok(key);
            }
        }
        let _one_fetch = self.fetching.lock().await;
        let recently_fetched = {
            let keys = self.keys.read().await;
            if fresh(&keys)
                && let Some(key) = find(&keys)
            {
                return Ok(key);
            }
            keys.fetched.is_some_and(|at| at.elapsed() < self.min_refresh)
        };
        if !recently_fetched {
            match self.fetch_keys().await {
                Ok(fetched) => *self.keys.write().await = fetched,
                Err(error) => {
                    tracing::warn!(issuer = %self.issuer, %error, "fetching the issuer's signing keys failed");
                    // A failed fetch also counts against the rate, so a flood of tokens cannot
                    // turn into a flood of requests to the issuer.
                    self.keys.write().await.fetched.get_or_insert_with(Instant::now);
                    let keys = self.keys.read().await;
                    return find(&keys)
                        .ok_or_else(|| refuse(format!("the issuer's signing keys are unavailable: {error}")));
                }
            }
        }
        let keys = self.keys.read().await;
        find(&keys).ok_or_else(|| match kid {
            Some(kid) => refuse(format!("the token is signed with key {kid:?}, which the issuer does not publish")),
            None => refuse("the token names no key and the issuer publishes no key without an id for its algorithm"),
        })
    }

    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = token.split('.').next().unwrap_or_default();
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| refuse("the token's header is not base64url JSON"))?;
        let alg = match header.get("alg").and_then(|a| a.as_str()) {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(other) => {
                return Err(refuse(format!("token algorithm {other:?} is not accepted (RS256 or ES256)")));
            }
            None => return Err(refuse("the token's header names no algorithm")),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(kid)) if kid.len() <= 256 => Some(kid.as_str()),
            Some(_) => return Err(refuse("the token's key id is not a short string")),
        };
        let key = self.key(kid, alg).await?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer, &format!("{}/", self.issuer)]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.skew.as_secs();
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                refuse(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                    ErrorKind::InvalidAudience => format!("the token is not for audience {:?}", self.audience),
                    ErrorKind::InvalidIssuer => format!("the token is not from issuer {:?}", self.issuer),
                    ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
                    ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
                    other => format!("the token is not valid: {other:?}"),
                })
            })?
            .claims;
        let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or_default();
        if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
            return Err(refuse("the token's subject is empty, too long or has control characters"));
        }
        let user = claims
            .get(&self.user_claim)
            .and_then(|u| u.as_str())
            .ok_or_else(|| refuse(format!("the token has no {:?} claim naming the user", self.user_claim)))?;
        if !valid_user(user) {
            return Err(refuse(format!("the token's {:?} claim {user:?} is not a user name", self.user_claim)));
        }
        let groups = match claims.get(&self.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(group)) => vec![group.clone()],
            Some(serde_json::Value::Array(items)) if items.len() <= MAX_GROUPS => {
                items.iter().map(|g| g.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                    refuse(format!("the token's {:?} claim is not a list of strings", self.groups_claim))
                })?
            }
            Some(_) => {
                return Err(refuse(format!(
                    "the token's {:?} claim is not a list of at most {MAX_GROUPS} strings",
                    self.groups_claim
                )));
            }
        };
        if let Some(bad) = groups.iter().find(|g| !valid_group(g)) {
            return Err(refuse(format!("the token's group {bad:?} is not a group name")));
        }
        Ok(Principal {
            user: normalise(user),
            groups: groups.iter().map(|g| normalise(g)).collect(),
            issuer: self.issuer.clone(),
            subject: subject.to_string(),
        })
    }
}

/// Whether a gRPC path is open without credentials: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// Tower layer authenticating and authorising every call but health and reflection: a caller
/// who proves nobody is answered `UNAUTHENTICATED`, one who holds the RPC's permission nowhere
/// `PERMISSION_DENIED`, here, before any handler. Passed calls carry the [`Principal`] and the
/// [`Authorizer`] (for handlers' scoped checks) in their extensions.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Option<Authenticator>,
    refusals: Option<Arc<dyn RefusalLog>>,
    limits: Limits,
}

impl AuthLayer {
    /// Authenticates with `authenticator`; `None` lets every call through unauthenticated.
    pub fn new(authenticator: Option<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator, refusals: None, limits: Limits::default() }
    }

    /// Limits each caller's changes and open streams with `limits`.
    pub fn with_limits(mut self, limits: Limits) -> AuthLayer {
        self.limits = limits;
        self
    }

    /// Reports every refused call to `log`.
    pub fn with_refusal_log(mut self, log: Option<Arc<dyn RefusalLog>>) -> AuthLayer {
        self.refusals = log;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
            refusals: self.refusals.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// Service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Option<Authenticator>,
    refusals: Option<Arc<dyn RefusalLog>>,
    limits: Limits,
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(authenticator) = self.authenticator.clone() else {
            return Box::pin(inner.call(req));
        };
        let log = self.refusals.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            if is_open_path(req.uri().path()) {
                return inner.call(req).await;
            }
            let path = req.uri().path().to_owned();
            let peer: Option<&PeerInfo> = req.extensions().get();
            let remote = peer.and_then(|p| p.remote_addr);
            let report = |code, reason: &str, principal: Option<&Principal>| {
                if let Some(log) = &log {
                    let principal = principal.cloned();
                    log.refused(Refusal { rpc: path.clone(), code, reason: reason.to_string(), principal, remote });
                }
            };
            let identity = match authenticator.authenticate_request(req.headers(), peer).await {
                Ok(identity) => identity,
                Err(AuthError(message)) => {
                    tracing::info!(%path, reason = %message, "unauthenticated call refused");
                    report(tonic::Code::Unauthenticated, &message, None);
                    return Ok(refusal(tonic::Status::unauthenticated(message), "unauthenticated"));
                }
            };
            let authorizer = authenticator.authorizer();
            let required = crate::authz::required(&path);
            let allowed = match required {
                None => Err(format!("{path} is not in the permission table")),
                Some(permission) => authorizer.check(&identity, permission, Scope::default()),
            };
            if let Err(message) = allowed {
                tracing::info!(%path, user = %identity.user, issuer = %identity.issuer, reason = %message, "call refused");
                report(tonic::Code::PermissionDenied, &message, Some(&identity));
                return Ok(refusal(tonic::Status::permission_denied(message), "permission_denied"));
            }
            // The control plane's own calls are not limited: throttling them would stall releases.
            let limited = !authorizer.is_scheduler(&identity);
            if limited
                && required.is_some_and(crate::authz::is_change)
                && let Err(message) = limits.take_change(&identity.user)
            {
                tracing::info!(%path, user = %identity.user, "call refused: rate limited");
                report(tonic::Code::ResourceExhausted, &message, Some(&identity));
                return Ok(refusal(tonic::Status::resource_exhausted(message), "rate_limited"));
            }
            let stream = if limited && crate::authz::STREAMING_RPCS.contains(&path.as_str()) {
                match limits.open_stream(&identity.user) {
                    Ok(guard) => Some(guard),
                    Err(message) => {
                        report(tonic::Code::ResourceExhausted, &message, Some(&identity));
                        return Ok(refusal(tonic::Status::resource_exhausted(message), "too_many_streams"));
                    }
                }
            } else {
                None
            };
            req.extensions_mut().insert(authorizer.clone());
            req.extensions_mut().insert(identity);
            req.extensions_mut().insert(CalledRpc(path));
            let response = inner.call(req).await?;
            Ok(match stream {
                None => response,
                Some(guard) => {
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, hold_while_streaming(body, guard))
                }
            })
        })
    }
}

fn refusal(status: tonic::Status, label: &'static str) -> Response<Body> {
    let mut response = status.into_http::<Body>();
    response.headers_mut().insert(crate::error::ERROR_LABEL, http::HeaderValue::from_static(label));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lists_hashes_and_refuses_mistakes() {
        let hash = token_hash("s3cret");
        let tokens = parse_tokens(&format!("tokens:\n  - sha256: {hash}\n    user: Alice\n    groups: [Deployers]\n"))
            .expect("parses");
        let alice = &tokens[&hash];
        assert_eq!((alice.user.as_str(), alice.groups.as_slice()), ("alice", &["deployers".to_string()][..]));
        assert_eq!(alice.issuer, STATIC_TOKENS_ISSUER);
        assert!(parse_tokens("tokens:\n  - sha256: s3cret\n    user: alice\n").unwrap_err().contains("64 hex"));
        let twice = format!("tokens:\n  - {{sha256: {hash}, user: a}}\n  - {{sha256: {hash}, user: b}}\n");
        assert!(parse_tokens(&twice).unwrap_err().contains("twice"));
        let bad_user = format!("tokens:\n  - {{sha256: {hash}, user: \"a b\"}}\n");
        assert!(parse_tokens(&bad_user).unwrap_err().contains("user"));
        assert!(parse_tokens("tokens:\n  - {sha256: x, user: a, token: plain}\n").is_err());
    }

    #[test]
    fn issuers_are_reached_over_https_or_loopback_http() {
        assert!(acceptable_issuer_url("https://login.example.com/realms/x").is_ok());
        assert!(acceptable_issuer_url("http://127.0.0.1:8080").is_ok());
        assert!(acceptable_issuer_url("http://[::1]:8080").is_ok());
        assert!(acceptable_issuer_url("http://localhost:8080").is_ok());
        assert!(acceptable_issuer_url("http://login.example.com").is_err());
        assert!(acceptable_issuer_url("file:///etc/passwd").is_err());
    }

    #[tokio::test]
    async fn bearer_header_is_required_and_well_formed() {
        let dir = std::env::temp_dir().join(format!("hopngo-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.yaml");
        std::fs::write(&file, format!("tokens:\n  - {{sha256: {}, user: ci-bot}}\n", token_hash("t0ken"))).unwrap();
        let auth = AuthArgs { tokens_file: Some(file.clone()), ..AuthArgs::default() }.authenticator().unwrap();
        let mut headers = HeaderMap::new();
        assert!(auth.authenticate(&headers).await.unwrap_err().0.contains("no credentials"));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(auth.authenticate(&headers).await.unwrap_err().0.contains("Bearer"));
        headers.insert(http::header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(auth.authenticate(&headers).await.unwrap_err().0, "unknown token");
        headers.insert(http::header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert_eq!(auth.authenticate(&headers).await.unwrap().user, "ci-bot");
        headers.insert(http::header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        assert!(auth.authenticate(&headers).await.unwrap_err().0.contains("no OIDC issuer"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
