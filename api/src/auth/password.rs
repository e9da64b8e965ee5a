//! argon2id password hashing, run off the async threads because it is slow on purpose.
use std::sync::OnceLock;

use anyhow::anyhow;
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};

use crate::error::{ApiError, ApiResult};

/// A password that meets the rules (8 to 256 characters).
pub struct Password(String);

impl Password {
    /// Checks the rules; the upper bound keeps hashing cost bounded.
    pub fn parse(raw: &str) -> ApiResult<Self> {
        let n = raw.chars().count();
        if n < 8 {
            return Err(ApiError::bad_input(
                "password must be at least 8 characters long",
            ));
        }
        if n > 256 {
            return Err(ApiError::bad_input(
                "password must be at most 256 characters long",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// Hashes a new password into a PHC string.
pub async fn hash(password: Password) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password.0)).await?
}

fn hash_blocking(password: &str) -> ApiResult<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow!("password hashing failed: {e}")))
}

/// Checks `password` against `stored`; with `None` (unknown user) it checks against a dummy
/// hash, so that an unknown email costs the same time as a wrong password.
pub async fn verify(password: &str, stored: Option<String>) -> ApiResult<bool> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = match stored {
            Some(h) => h,
            None => dummy_hash()?.to_owned(),
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok();
        Ok(known && ok)
    })
    .await?
}

fn dummy_hash() -> ApiResult<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_blocking("parley-dummy-password-never-matches")?;
    Ok(DUMMY.get_or_init(|| h))
}
