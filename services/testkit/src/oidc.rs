//! An OIDC issuer for tests: serves discovery and a JWKS over HTTP on loopback and mints JWTs.
//! ES256 keys are generated at start and on [`TestIssuer::rotate`]; the RS256 key is a fixture
//! (ring cannot generate RSA keys). The issuer runs on its own thread, so one issuer per test
//! process ([`TestIssuer::shared`]) outlives every test's runtime.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair},
};
use serde_json::{Value, json};

/// The audience tokens are minted for (the services' default `--oidc-audience`).
pub const AUDIENCE: &str = "hopngo";
const RSA_KEY: &[u8] = include_bytes!("../fixtures/rs256-test-key.der");
const RSA_KID: &str = "rsa-fixture";

/// How a token is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// ES256 with the issuer's current key.
    Es256,
    /// RS256 with the fixture key.
    Rs256,
    /// `alg: none`, no signature.
    None,
    /// HS256 with a shared secret (which an attacker might try with a public key as secret).
    Hs256,
    /// ES256 with a key the issuer does not publish.
    UnpublishedKey,
}

struct EcKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl EcKey {
    fn generate(kid: String) -> EcKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("own key");
        EcKey { kid, pkcs8: pkcs8.as_ref().to_vec(), public: pair.public_key().as_ref().to_vec() }
    }

    fn jwk(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.public[33..65]),
        })
    }
}

struct State {
    /// Published ES256 keys; the last one signs.
    ec: Vec<EcKey>,
    unpublished: EcKey,
    generation: usize,
}

/// A running test issuer.
pub struct TestIssuer {
    url: String,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl TestIssuer {
    /// Starts an issuer on a free loopback port.
    pub fn start() -> TestIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the issuer");
        let url = format!("http://{}", listener.local_addr().expect("issuer address"));
        let state = Arc::new(Mutex::new(State {
            ec: vec![EcKey::generate("ec-1".into())],
            unpublished: EcKey::generate("ec-unpublished".into()),
            generation: 1,
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let served = (url.clone(), state.clone(), jwks_fetches.clone());
        std::thread::Builder::new()
            .name("test-oidc-issuer".into())
            .spawn(move || {
                let (url, state, fetches) = served;
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (url, state, fetches) = (url.clone(), state.clone(), fetches.clone());
                    std::thread::spawn(move || answer(stream, &url, &state, &fetches));
                }
            })
            .expect("issuer thread");
        TestIssuer { url, state, jwks_fetches }
    }

    /// The issuer shared by every test of this process.
    pub fn shared() -> &'static TestIssuer {
        static SHARED: OnceLock<TestIssuer> = OnceLock::new();
        SHARED.get_or_init(TestIssuer::start)
    }

    /// The issuer URL (`iss` of its tokens).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Flags making a service accept this issuer's tokens (unknown keys are looked up at once).
    pub fn service_args(&self) -> Vec<String> {
        vec!["--oidc-issuer".into(), self.url.clone(), "--oidc-jwks-min-refresh".into(), "0s".into()]
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token for `user` in `groups`, valid for an hour from now.
    pub fn claims(&self, user: &str, groups: &[&str]) -> Value {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        json!({
            "iss": self.url, "aud": AUDIENCE, "sub": format!("sub-{user}"), "email": user,
            "groups": groups, "iat": now, "nbf": now, "exp": now + 3600,
        })
    }

    /// An ES256 token for `user` in `groups`.
    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(user, groups), Signing::Es256)
    }

    /// `claims` signed as `signing` says.
    pub fn sign(&self, claims: &Value, signing: Signing) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let es256 = |key: &EcKey| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(key.kid.clone());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&key.pkcs8)).expect("ES256 signs")
        };
        match signing {
            Signing::Es256 => es256(state.ec.last().expect("a current key")),
            Signing::UnpublishedKey => es256(&state.unpublished),
            Signing::Rs256 => {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(RSA_KID.into());
                jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(RSA_KEY)).expect("RS256 signs")
            }
            Signing::Hs256 => {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(state.ec.last().expect("a current key").kid.clone());
                jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(b"public-key-as-secret"))
                    .expect("HS256 signs")
            }
            Signing::None => {
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let body = URL_SAFE_NO_PAD.encode(claims.to_string());
                format!("{header}.{body}.")
            }
        }
    }

    /// Publishes a new ES256 key that signs from now on; with `retire_old`, the previous keys are
    /// no longer published (tokens they signed stop verifying once services refetch).
    pub fn rotate(&self, retire_old: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        let key = EcKey::generate(format!("ec-{}", state.generation));
        if retire_old {
            state.ec.clear();
        }
        state.ec.push(key);
    }
}

fn rsa_jwk() -> Value {
    let pair = RsaKeyPair::from_der(RSA_KEY).expect("the fixture is a PKCS#1 RSA key");
    let public = pair.public();
    use ring::rsa::PublicKeyComponents;
    let components: PublicKeyComponents<Vec<u8>> = public.into();
    json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": RSA_KID,
        "n": URL_SAFE_NO_PAD.encode(&components.n),
        "e": URL_SAFE_NO_PAD.encode(&components.e),
    })
}

fn answer(mut stream: std::net::TcpStream, url: &str, state: &Mutex<State>, fetches: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/.well-known/openid-configuration" => (
            200,
            json!({"issuer": url, "jwks_uri": format!("{url}/jwks"), "id_token_signing_alg_values_supported": ["ES256", "RS256"]}),
        ),
        "/jwks" => {
            fetches.fetch_add(1, Ordering::SeqCst);
            let state = state.lock().unwrap_or_else(|e| e.into_inner());
            let mut keys: Vec<Value> = state.ec.iter().map(EcKey::jwk).collect();
            keys.push(rsa_jwk());
            // A key of a kind the services do not use; it must be skipped, not break the set.
            keys.push(json!({"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"}));
            (200, json!({ "keys": keys }))
        }
        _ => (404, json!({"error": "not found"})),
    };
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
