//! Webhook signatures in the Standard Webhooks format
//! (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, signed
//! with HMAC-SHA256 and sent as `webhook-signature: v1,<base64>`. During a
//! secret rotation several signatures are sent, space-separated, so that the
//! receiver can verify with either its old or its new secret.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The text that starts every secret, as the Standard Webhooks libraries
/// expect it.
pub const SECRET_PREFIX: &str = "whsec_";

/// The shortest key accepted, in bytes (the spec's lower bound).
pub const MIN_KEY_LEN: usize = 24;

/// Length of keys made by [`SigningSecret::generate`], in bytes.
const GENERATED_KEY_LEN: usize = 32;

/// Why a signing secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The text does not start with `whsec_`.
    #[error("a signing secret must start with {SECRET_PREFIX}")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("a signing secret must be {SECRET_PREFIX} followed by standard base64")]
    InvalidBase64,
    /// The decoded key is too short to be safe.
    #[error("a signing secret's key must be at least {MIN_KEY_LEN} bytes, not {0}")]
    TooShort(usize),
}

/// A webhook signing secret, `whsec_` followed by the base64 of the key.
///
/// `Debug` does not print the key, so secrets can sit in structs that get
/// logged.
#[derive(Clone)]
pub struct SigningSecret {
    text: String,
    key: Vec<u8>,
    /// Keyed once here: HMAC's key schedule then costs nothing per delivery.
    mac: HmacSha256,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSecret")
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .finish()
    }
}

impl SigningSecret {
    /// A new secret with a random 32-byte key from the thread-local CSPRNG.
    pub fn generate() -> Self {
        // A key shorter than the hash's 64-byte block is zero-padded by HMAC
        // itself, so keying with the padded block is the same HMAC and avoids
        // the fallible slice constructor.
        let mut block = [0u8; 64];
        rand::rng().fill_bytes(&mut block[..GENERATED_KEY_LEN]);
        let key = block[..GENERATED_KEY_LEN].to_vec();
        let mac = <HmacSha256 as KeyInit>::new(&block.into());
        Self {
            text: format!("{SECRET_PREFIX}{}", BASE64.encode(&key)),
            key,
            mac,
        }
    }

    /// Parses `whsec_<standard base64>`; the key must be at least
    /// [`MIN_KEY_LEN`] bytes. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let text = text.trim();
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::MissingPrefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SigningError::InvalidBase64)?;
        if key.len() < MIN_KEY_LEN {
            return Err(SigningError::TooShort(key.len()));
        }
        // HMAC takes keys of any length, so this error cannot happen; it is
        // mapped rather than unwrapped to keep this function panic-free.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&key)
            .map_err(|_| SigningError::TooShort(key.len()))?;
        Ok(Self {
            text: text.to_owned(),
            key,
            mac,
        })
    }

    /// The full secret text, `whsec_…`, as shown to the receiver's owner.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The raw key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

/// The `v1,<base64>` signature of one message with one secret.
pub fn signature(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = secret.mac.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per secret,
/// space-separated (several during a rotation).
pub fn signature_header(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| signature(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// Written straight from the spec, sharing no code with the module.
    fn independent_signature(secret_text: &str, msg_id: &str, ts: i64, body: &[u8]) -> String {
        let key = BASE64
            .decode(secret_text.trim_start_matches("whsec_"))
            .expect("base64 key");
        let mut mac = HmacSha256::new_from_slice(&key).expect("any key length");
        let mut content = format!("{msg_id}.{ts}.").into_bytes();
        content.extend_from_slice(body);
        mac.update(&content);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn the_official_test_vector_signs_correctly() {
        let secret = SigningSecret::parse(SPEC_SECRET).expect("spec secret parses");
        assert_eq!(
            signature(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_eq!(
            independent_signature(SPEC_SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn a_two_secret_header_carries_both_signatures_in_order() {
        let old = SigningSecret::parse(SPEC_SECRET).expect("spec secret parses");
        let new = SigningSecret::generate();
        let header = signature_header(
            &[old.clone(), new.clone()],
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert_eq!(
            parts[1],
            independent_signature(new.as_str(), SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY)
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn generated_secrets_are_random_32_byte_keys_that_round_trip() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert!(a.as_str().starts_with("whsec_"));
        assert_eq!(a.key().len(), 32);
        assert_ne!(a.key(), b.key());
        let reparsed = SigningSecret::parse(a.as_str()).expect("generated secret parses");
        assert_eq!(reparsed.key(), a.key());
        assert_eq!(
            signature(&a, "msg_1", 1, b"{}"),
            signature(&reparsed, "msg_1", 1, b"{}"),
            "the padded-block keying must equal slice keying"
        );
    }

    #[test]
    fn keys_longer_than_a_hash_block_sign_like_the_reference() {
        let text = format!("whsec_{}", BASE64.encode([7u8; 100]));
        let secret = SigningSecret::parse(&text).expect("long key parses");
        assert_eq!(
            signature(&secret, "msg_2", -5, b"x"),
            independent_signature(&text, "msg_2", -5, b"x")
        );
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|_| ()),
            Err(SigningError::MissingPrefix)
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!").map(|_| ()),
            Err(SigningError::InvalidBase64)
        );
        assert_eq!(
            SigningSecret::parse(&format!("whsec_{}", BASE64.encode([1u8; 16]))).map(|_| ()),
            Err(SigningError::TooShort(16))
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let secret = SigningSecret::parse(SPEC_SECRET).expect("spec secret parses");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn an_empty_secret_list_gives_an_empty_header() {
        assert_eq!(signature_header(&[], "m", 0, b""), "");
    }
}
