//! Webhook signatures as in the Standard Webhooks specification: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! so receivers can use any Standard Webhooks library to verify the sender and refuse replays.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// Prefix of generated secrets (the key is the base64 after it).
pub const SECRET_PREFIX: &str = "whsec_";

/// A new random secret.
pub fn generate_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of a secret: the base64 after `whsec_`, or the secret's own bytes otherwise.
pub fn key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix(SECRET_PREFIX) {
        Some(b64) => {
            STANDARD.decode(b64).map_err(|e| format!("a {SECRET_PREFIX} secret must be base64 after the prefix: {e}"))
        }
        None if secret.len() < 16 => Err("must be at least 16 characters (or empty, to generate one)".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` header value.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert!(key(&generate_secret()).unwrap().len() == 24);
        assert!(key("short").is_err());
        assert!(key("whsec_***").is_err());
        assert_eq!(key("a-long-enough-shared-secret").unwrap(), b"a-long-enough-shared-secret");
    }
}
