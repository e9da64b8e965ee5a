//! Rate limits keyed by client address, email or conversation, in bounded memory: each
//! limiter forgets idle keys on a timer, and refuses new keys rather than grow past its bound.
use std::{hash::Hash, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};

use crate::{
    edge::client::ClientAddr,
    error::{ApiError, ApiResult},
    settings::Limits,
};

/// Keys one limiter may track before it refuses newcomers (after pruning idle ones).
const MAX_KEYS: usize = 100_000;
/// How often idle keys are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// A budget of events per key and minute (or second); `None` when the setting turned it off.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: Option<governor::DefaultKeyedRateLimiter<K>>,
    /// Events allowed per `unit`.
    rate: u32,
    unit: &'static str,
    /// What is limited and by which setting, for the refusal's message.
    what: &'static str,
    setting: &'static str,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `per_minute` events per key and minute, in bursts of up to as many; 0 turns it off.
    pub fn per_minute(per_minute: u32, what: &'static str, setting: &'static str) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            rate: per_minute,
            unit: "minute",
            what,
            setting,
        }
    }

    /// `per_second` events per key and second, in bursts of up to as many; 0 turns it off.
    pub fn per_second(per_second: u32, what: &'static str, setting: &'static str) -> Self {
        Self {
            limiter: NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n))),
            rate: per_second,
            unit: "second",
            what,
            setting,
        }
    }

    /// Spends one event of `key`'s budget, or RATE_LIMITED saying which limit and when to retry.
    pub fn check(&self, key: &K) -> ApiResult<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
            if limiter.len() >= MAX_KEYS {
                return Err(ApiError::RateLimited(format!(
                    "the server is refusing new {} for a moment; retry in a minute",
                    self.what
                )));
            }
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited(format!(
                "too many {}: at most {} per {} ({}); retry in {} s",
                self.what,
                self.rate,
                self.unit,
                self.setting,
                wait.as_secs().max(1)
            ))
        })
    }

    /// Forgets keys whose budget is full again.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every per-client and per-conversation limit of one instance.
pub struct Limiters {
    /// HTTP requests per client address, checked at the edge before any parsing.
    pub requests_by_address: KeyedLimit<std::net::IpAddr>,
    /// Log-in and sign-up attempts per client address.
    pub logins_by_address: KeyedLimit<std::net::IpAddr>,
    /// Log-in attempts per (valid, normalised) email.
    pub logins_by_email: KeyedLimit<String>,
    /// New conversations per client address.
    pub starts_by_address: KeyedLimit<std::net::IpAddr>,
    /// Answers per conversation.
    pub answers_by_conversation: KeyedLimit<uuid::Uuid>,
    /// Requests (HTTP requests, WebSocket connections) per API key.
    pub requests_by_api_key: KeyedLimit<uuid::Uuid>,
}

impl Limiters {
    /// The limiters the settings ask for.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            requests_by_address: KeyedLimit::per_second(
                limits.request_rate_limit,
                "requests from this address",
                "PARLEY_REQUEST_RATE_LIMIT",
            ),
            logins_by_address: KeyedLimit::per_minute(
                limits.login_per_address,
                "log-in and sign-up attempts from this address",
                "PARLEY_LOGIN_RATE_LIMIT_PER_ADDRESS",
            ),
            logins_by_email: KeyedLimit::per_minute(
                limits.login_per_email,
                "log-in attempts for this email",
                "PARLEY_LOGIN_RATE_LIMIT_PER_EMAIL",
            ),
            starts_by_address: KeyedLimit::per_minute(
                limits.visitor_rate_limit,
                "new conversations from this address",
                "PARLEY_VISITOR_RATE_LIMIT",
            ),
            answers_by_conversation: KeyedLimit::per_minute(
                limits.answer_rate_limit,
                "answers in this conversation",
                "PARLEY_ANSWER_RATE_LIMIT",
            ),
            requests_by_api_key: KeyedLimit::per_minute(
                limits.api_key_rate_limit,
                "requests with this API key",
                "PARLEY_API_KEY_RATE_LIMIT",
            ),
        })
    }

    /// Spends one attempt of the client's log-in budget.
    pub fn login_from(&self, client: Option<&ClientAddr>) -> ApiResult<()> {
        self.logins_by_address.check(&key_of(client))
    }

    /// Spends one conversation start of the client's budget.
    pub fn start_from(&self, client: Option<&ClientAddr>) -> ApiResult<()> {
        self.starts_by_address.check(&key_of(client))
    }

    /// Forgets idle keys every few seconds, until dropped.
    pub async fn run_pruner(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            self.requests_by_address.prune();
            self.logins_by_address.prune();
            self.logins_by_email.prune();
            self.starts_by_address.prune();
            self.answers_by_conversation.prune();
            self.requests_by_api_key.prune();
        }
    }
}

/// Refuses to add one more of `what` to an account that holds `count` of at most `max`.
pub fn check_quota(what: &str, count: u64, max: u64, setting: &str) -> ApiResult<()> {
    if count >= max {
        return Err(ApiError::RateLimited(format!(
            "this account has reached its quota of {max} {what} ({setting}); delete one to make room"
        )));
    }
    Ok(())
}

/// Requests that did not come through the edge (in-process callers) share one key.
fn key_of(client: Option<&ClientAddr>) -> std::net::IpAddr {
    client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), ClientAddr::limit_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_past_its_budget_is_refused_with_the_setting_named() {
        let limit = KeyedLimit::per_minute(2, "things", "PARLEY_THINGS");
        assert!(limit.check(&1u32).is_ok());
        assert!(limit.check(&1u32).is_ok());
        let err = limit.check(&1u32).expect_err("third is over budget");
        assert_eq!(err.code(), "RATE_LIMITED");
        assert!(err.message().contains("PARLEY_THINGS"), "{}", err.message());
        // Another key has its own budget.
        assert!(limit.check(&2u32).is_ok());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limit = KeyedLimit::per_minute(0, "things", "PARLEY_THINGS");
        for _ in 0..1000 {
            assert!(limit.check(&1u32).is_ok());
        }
        assert!(limit.is_empty());
    }
}
