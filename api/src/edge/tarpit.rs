//! Refusals by the per-address request limit (`PARLEY_REQUEST_RATE_LIMIT`) are answered late.
//!
//! A client past that limit is told to retry in a second. One that does not listen (a
//! flood) sends its next request the moment the refusal arrives: answered at once, every
//! connection it holds costs the server a request's parsing and a response per round trip,
//! thousands a second on the cores the honest visitors need. Holding each refusal for a
//! moment (as nginx's `limit_req` delays what exceeds its rate) bounds a flooding connection
//! to a few requests a second, while a client that waits for `Retry-After` loses nothing.
//! Held refusals are counted: past [`MAX_HELD`], they are answered at once again, so that
//! holding them never costs more memory than the connections themselves.
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Refusals held at once, at most; a few hundred bytes each.
pub const MAX_HELD: usize = 4096;

/// Holds refusals for `delay` (`PARLEY_RATE_LIMIT_DELAY_MS`), up to [`MAX_HELD`] at once.
pub struct Tarpit {
    delay: Duration,
    held: AtomicUsize,
    max_held: usize,
}

/// One held refusal; the count goes down when it is answered or its client goes away.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        let held = Held(&self.held);
        (before < self.max_held).then_some(held)
    }

    /// Refusals held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
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
        assert_eq!(tarpit.held(), 2, "the third gave back a place it never had");
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
