//! Encryption at rest of the secrets Parley keeps in its database: the generated JWT key,
//! webhooks' `whsec_` signing secrets and webhooks' header values.
//!
//! Each value is sealed with AES-256-GCM under one 256-bit key, with a random 96-bit nonce
//! per value, and stored as text: `enc:v1:<base64 of nonce ‖ ciphertext ‖ tag>`. The
//! associated data names the value's place (`"webhook_secrets.secret:<row id>"`), so a
//! ciphertext copied into another column or row does not open there.
//!
//! The key comes from `PARLEY_SECRET_KEY`, or for SQLite from a key file created once beside
//! the database ([`keyfile`]). [`startup`] checks the key against the database and encrypts
//! (or re-encrypts, during a key rotation) what is stored.
pub mod keyfile;
pub mod startup;

use std::fmt;

use aes_gcm::{
    Aes256Gcm, Key, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use rand::RngCore as _;

/// The text that starts every encrypted value; the version names the format and algorithm.
pub const PREFIX: &str = "enc:v1:";
/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Bytes of an AES-GCM tag.
const TAG_LEN: usize = 16;

/// A 256-bit key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A key from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// A key from the raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads the base64 (standard or URL-safe, padded or not) or hex of 32 bytes; surrounding
    /// whitespace is ignored. The error never contains the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        const EXPECTED: &str = "expected the base64 or hex of 32 random bytes, as printed by \
                                `openssl rand -base64 32`";
        let bytes = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            decode_hex(text)
        } else {
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
        };
        let bytes = bytes.ok_or_else(|| format!("it is neither base64 nor hex; {EXPECTED}"))?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "it decodes to {} bytes, not {KEY_LEN}; {EXPECTED}",
                bytes.len()
            )
        })?;
        Ok(Self(key))
    }

    /// The standard base64 of the key, as written in key files.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(*pair.get(1)?)?))
        .collect()
}

/// Why a stored value could not be opened. No variant carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The value does not start with [`PREFIX`]: it was stored before encryption at rest, or
    /// by something else than Parley.
    #[error("the stored value is not encrypted")]
    NotEncrypted,
    /// The prefix is there but what follows is not a sealed value.
    #[error("the stored value is not a well-formed encrypted value")]
    Malformed,
    /// No key opens it: a different key, a value moved from another place, or tampering.
    #[error(
        "the stored value does not open with the configured key (a different key, a value \
         moved from another row or column, or a modified value)"
    )]
    WrongKeyOrTampered,
}

/// Which key opened a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedWith {
    /// The current key.
    Current,
    /// The previous key of a rotation: the value should be sealed again under the current one.
    Previous,
}

/// Seals and opens the secrets kept in the database. Cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    current: Aes256Gcm,
    /// The key before a rotation: it still opens values, never seals them.
    previous: Option<Aes256Gcm>,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("previous_key", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// A box that seals and opens with `key`.
    pub fn new(key: &SecretKey) -> Self {
        Self {
            current: cipher(key),
            previous: None,
        }
    }

    /// This box, also opening values sealed with `previous` (a key rotation).
    pub fn with_previous(mut self, previous: Option<&SecretKey>) -> Self {
        self.previous = previous.map(cipher);
        self
    }

    /// Whether a stored value is in the encrypted form (it may still not open).
    pub fn is_encrypted(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Seals `plaintext` under the current key with a fresh random nonce, bound to `context`
    /// (the value's place, such as `"webhook_secrets.secret:<id>"`).
    pub fn encrypt(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            // AES-GCM fails only past 64 GiB of plaintext.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed by [`encrypt`](Self::encrypt) with the same `context`.
    pub fn decrypt(&self, stored: &str, context: &str) -> Result<String, CryptoError> {
        self.open(stored, context).map(|(plain, _)| plain)
    }

    /// Opens a value, and says which key opened it.
    pub fn open(&self, stored: &str, context: &str) -> Result<(String, OpenedWith), CryptoError> {
        let encoded = stored
            .strip_prefix(PREFIX)
            .ok_or(CryptoError::NotEncrypted)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let nonce = Nonce::from(nonce);
        let payload = || Payload {
            msg: sealed,
            aad: context.as_bytes(),
        };
        let (plain, with) = match self.current.decrypt(&nonce, payload()) {
            Ok(plain) => (plain, OpenedWith::Current),
            Err(_) => {
                let previous = self
                    .previous
                    .as_ref()
                    .ok_or(CryptoError::WrongKeyOrTampered)?;
                let plain = previous
                    .decrypt(&nonce, payload())
                    .map_err(|_| CryptoError::WrongKeyOrTampered)?;
                (plain, OpenedWith::Previous)
            }
        };
        let plain = String::from_utf8(plain).map_err(|_| CryptoError::Malformed)?;
        Ok((plain, with))
    }
}

fn cipher(key: &SecretKey) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0))
}

/// The associated data of a webhook's signing secret.
pub fn webhook_secret_context(secret_id: uuid::Uuid) -> String {
    format!("webhook_secrets.secret:{secret_id}")
}

/// The associated data of a header value of a webhook.
pub fn webhook_header_context(webhook_id: uuid::Uuid, header_name: &str) -> String {
    format!("webhooks.headers:{webhook_id}:{header_name}")
}

/// The associated data of a value of `server_settings`.
pub fn server_setting_context(key: &str) -> String {
    format!("server_settings.value:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes([n; KEY_LEN])
    }

    #[test]
    fn a_value_round_trips_and_never_shows_in_its_sealed_form() {
        let sb = SecretBox::new(&key(1));
        let sealed = sb.encrypt("whsec_abcdefghijklmnop", "webhook_secrets.secret:1");
        assert!(sealed.starts_with("enc:v1:"), "{sealed}");
        assert!(!sealed.contains("abcdefghijklmnop"));
        assert_eq!(
            sb.decrypt(&sealed, "webhook_secrets.secret:1"),
            Ok("whsec_abcdefghijklmnop".to_owned())
        );
        assert_eq!(sb.decrypt(&sb.encrypt("", "c"), "c"), Ok(String::new()));
    }

    #[test]
    fn each_sealing_uses_a_fresh_nonce() {
        let sb = SecretBox::new(&key(1));
        assert_ne!(sb.encrypt("same", "c"), sb.encrypt("same", "c"));
    }

    #[test]
    fn a_modified_value_is_refused() {
        let sb = SecretBox::new(&key(1));
        let sealed = sb.encrypt("Bearer secret-token", "c");
        let mut bytes = STANDARD
            .decode(sealed.strip_prefix(PREFIX).expect("prefix"))
            .expect("base64");
        for i in [0, NONCE_LEN, bytes.len() - 1] {
            bytes[i] ^= 1;
            let tampered = format!("{PREFIX}{}", STANDARD.encode(&bytes));
            assert_eq!(
                sb.decrypt(&tampered, "c"),
                Err(CryptoError::WrongKeyOrTampered),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        let truncated = &sealed[..sealed.len() - 8];
        assert!(sb.decrypt(truncated, "c").is_err());
        assert_eq!(sb.decrypt("enc:v1:AAAA", "c"), Err(CryptoError::Malformed));
        assert_eq!(
            sb.decrypt("enc:v1:not base64!", "c"),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn a_value_does_not_open_in_another_place() {
        let sb = SecretBox::new(&key(1));
        let sealed = sb.encrypt("k-123", &webhook_header_context(uuid::Uuid::nil(), "X-Key"));
        assert_eq!(
            sb.decrypt(&sealed, &webhook_secret_context(uuid::Uuid::nil())),
            Err(CryptoError::WrongKeyOrTampered)
        );
        assert_eq!(
            sb.decrypt(&sealed, &webhook_header_context(uuid::Uuid::max(), "X-Key")),
            Err(CryptoError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn another_key_does_not_open_a_value_unless_given_as_the_previous_one() {
        let old = SecretBox::new(&key(1));
        let sealed = old.encrypt("jwt", "c");
        let new = SecretBox::new(&key(2));
        assert_eq!(
            new.decrypt(&sealed, "c"),
            Err(CryptoError::WrongKeyOrTampered)
        );
        let rotating = SecretBox::new(&key(2)).with_previous(Some(&key(1)));
        assert_eq!(
            rotating.open(&sealed, "c"),
            Ok(("jwt".to_owned(), OpenedWith::Previous))
        );
        let resealed = rotating.encrypt("jwt", "c");
        assert_eq!(
            rotating.open(&resealed, "c"),
            Ok(("jwt".to_owned(), OpenedWith::Current))
        );
        assert!(old.decrypt(&resealed, "c").is_err());
    }

    #[test]
    fn plaintext_is_not_taken_for_a_sealed_value() {
        let sb = SecretBox::new(&key(1));
        assert!(!SecretBox::is_encrypted("whsec_abc"));
        assert_eq!(sb.decrypt("whsec_abc", "c"), Err(CryptoError::NotEncrypted));
    }

    #[test]
    fn keys_parse_from_base64_or_hex_and_errors_do_not_echo_them() {
        let raw = [7u8; KEY_LEN];
        let b64 = STANDARD.encode(raw);
        assert_eq!(SecretKey::parse(&b64), Ok(SecretKey::from_bytes(raw)));
        assert_eq!(
            SecretKey::parse(&format!(" {}\n", URL_SAFE_NO_PAD.encode(raw))),
            Ok(SecretKey::from_bytes(raw))
        );
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(SecretKey::parse(&hex), Ok(SecretKey::from_bytes(raw)));
        assert_eq!(
            SecretKey::parse(&hex.to_uppercase()),
            Ok(SecretKey::from_bytes(raw))
        );
        for bad in ["hunter2-hunter2", &STANDARD.encode([7u8; 16]), ""] {
            let err = SecretKey::parse(bad).expect_err("refused");
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert_eq!(
            format!("{:?}", SecretKey::generate()),
            "SecretKey(<redacted>)"
        );
    }
}
