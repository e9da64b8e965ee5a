//! Refusals by a per-client request budget (`PARLEY_REQUEST_RATE_LIMIT` per address, and
//! `PARLEY_API_KEY_RATE_LIMIT` per key on `POST /graphql`, `results.csv` and a WebSocket's
//! `connection_init`) are answered late; so is the refusal of a new client while a limiter
//! tracks as many as it may.
//!
//! A client past that limit is told to retry in a second. One that does not listen (a
//! flood) sends its next request the moment the refusal arrives: answered at once, every
//! connection it holds costs the server a request's parsing and a response per round trip,
//! thousands a second on the cores the honest visitors need. Holding each refusal for a
//! moment (as nginx's `limit_req` delays what exceeds its rate) bounds a flooding connection
//! to a few requests a second, while a client that waits for `Retry-After` loses nothing.
//! A held refusal has read nothing of its request's body. Held refusals are counted: past
//! [`MAX_HELD`], they are answered at once again, so that what they hold stays bounded.
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Refusals held at once, at most: each is a sleeping future beside its connection.
pub const MAX_HELD: usize = 4096;

/// Holds refusals for `delay` (`PARLEY_RATE_LIMIT_DELAY_MS`), up to [`MAX_HELD`] at once.
pub struct Tarpit {
    delay: Duration,
    held: AtomicUsize,
    max_held: usize,
}

/// One held refusal; the count goes down when it is answered (or its request is dropped).
struct Held<'a> {
    count: &'a AtomicUsize,
    _open: crate::metrics::Open,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tarpit {
    /// Holds each refusal for `delay` (zero: answers at once), at most `max_held` at once.
    pub fn new(delay: Duration, max_held: usize) -> Self {
        Self {
            delay,
            held: AtomicUsize::new(0),
            max_held,
        }
    }

    /// `refusal`, answered after the delay, or at once when the delay is zero or too many
    /// refusals are held already.
    pub async fn hold<R>(&self, refusal: R) -> R {
        if let Some(_held) = self.enter() {
            tokio::time::sleep(self.delay).await;
        }
        refusal
    }

    /// A place among the held refusals, if the delay is on and one is free.
    fn enter(&self) -> Option<Held<'_>> {
        if self.delay.is_zero() {
            return None;
        }
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_held).then_some(n + 1)
            })
            .ok()?;
        Some(Held {
            count: &self.held,
            _open: crate::metrics::Open::new("parley_rate_limit_refusals_held"),
        })
    }

    /// Refusals held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use super::*;

    const DELAY: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_refusal_is_answered_after_the_delay() {
        let tarpit = Tarpit::new(DELAY, 10);
        let started = Instant::now();
        assert_eq!(tarpit.hold(429).await, 429);
        assert!(started.elapsed() >= DELAY, "{:?}", started.elapsed());
        assert_eq!(tarpit.held(), 0);
    }

    #[tokio::test]
    async fn a_zero_delay_answers_at_once() {
        let tarpit = Tarpit::new(Duration::ZERO, 10);
        let started = Instant::now();
        tarpit.hold(429).await;
        assert!(started.elapsed() < DELAY, "{:?}", started.elapsed());
        assert_eq!(tarpit.held(), 0);
    }

    #[tokio::test]
    async fn past_the_most_held_refusals_are_answered_at_once_and_places_come_back() {
        let tarpit = Arc::new(Tarpit::new(DELAY, 2));
        let mut holding = Vec::new();
        for _ in 0..2 {
            let t = tarpit.clone();
            holding.push(tokio::spawn(async move { t.hold(429).await }));
        }
        while tarpit.held() < 2 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        tarpit.hold(429).await;
        assert!(started.elapsed() < DELAY, "the third was held");
        assert_eq!(tarpit.held(), 2);
        // A client that goes away gives its place back.
        let gone = holding.pop().expect("spawned");
        gone.abort();
        assert!(gone.await.is_err());
        assert_eq!(tarpit.held(), 1);
        for h in holding {
            assert_eq!(h.await.expect("answered"), 429);
        }
        assert_eq!(tarpit.held(), 0);
        let started = Instant::now();
        tarpit.hold(429).await;
        assert!(started.elapsed() >= DELAY, "not held again");
    }
}
