//! argon2id password hashing, run off the async threads because it is slow on purpose.
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

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

/// Runs argon2 for log-ins, sign-ups and password changes, a bounded number at a time: each
/// hash holds about 19 MiB and a core for a while, so an unbounded number at once would let
/// one request of batched log-ins exhaust the machine. Hashes past the queue are refused at
/// once with RATE_LIMITED instead of waiting.
pub struct Passwords {
    /// Hashes running or waiting.
    admitted: Arc<Semaphore>,
    /// Hashes running.
    running: Arc<Semaphore>,
    queue: usize,
}

impl Passwords {
    /// `running` hashes at once (about one per core), as many more waiting.
    pub fn new(running: usize) -> Self {
        let running = running.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(running * 2)),
            running: Arc::new(Semaphore::new(running)),
            queue: running,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(password.queue = self.queue, "password queue full; refusing");
            ApiError::RateLimited(format!(
                "the server is checking too many passwords at once (PARLEY_PASSWORD_QUEUE={}); \
                 retry in a second",
                self.queue
            ))
        })?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(anyhow!("password semaphore closed: {e}")))?;
        // The permits go with the work: a request cancelled at its deadline does not free a
        // slot while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _held = (admitted, running);
            work()
        })
        .await?
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: Password) -> ApiResult<String> {
        self.run(move || hash_blocking(&password.0)).await
    }

    /// Checks `password` against `stored`; with `None` (unknown user) it checks against a
    /// dummy hash, so that an unknown email costs the same time as a wrong password.
    pub async fn verify(&self, password: &str, stored: Option<String>) -> ApiResult<bool> {
        let password = password.to_owned();
        self.run(move || {
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
        .await
    }
}

fn hash_blocking(password: &str) -> ApiResult<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow!("password hashing failed: {e}")))
}

fn dummy_hash() -> ApiResult<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_blocking("parley-dummy-password-never-matches")?;
    Ok(DUMMY.get_or_init(|| h))
}
