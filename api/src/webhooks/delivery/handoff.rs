//! Async deliveries go to the worker in memory, already claimed: those this instance commits
//! are claimed at insert (no poll, no select-then-claim round trip), and those the poll claims
//! from the table (retries, other instances' leftovers) join them. The table stays the durable
//! record: a delivery handed over and then lost (a crash) keeps its claim until the next start
//! releases it or the lease lapses, and the poll sends it then.
//!
//! One dispatcher sends them. It takes a slot only when one is free (`try_acquire`), webhook
//! by webhook in turn, so that sync calls and test sends (a visitor or an admin waiting),
//! which wait for slots in line, always get a freed slot before the outbox does, and one
//! saturated webhook holds nothing that others could use. A webhook's `maxPerSecond` is
//! applied here, when each delivery is sent.
use std::{
    collections::{HashSet, VecDeque},
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::*;

/// Deliveries that may wait in memory, per slot of the global limit. No less than
/// [`WAITING_PER_SLOT`]: else a few webhooks that hang, each with its own slots taken and its
/// waiting room full, would fill the hand-over while global slots sit idle, and every other
/// webhook's deliveries would go through the table.
const WAITING_PER_GLOBAL_SLOT: usize = 16;
const _: () = assert!(WAITING_PER_SLOT <= WAITING_PER_GLOBAL_SLOT);
/// Deliveries of one webhook that may wait in memory, per slot of its own limit: enough to
/// keep it busy between two polls, not a backlog. A poll round takes a few milliseconds, in
/// which a receiver that answers at once takes over a hundred deliveries on 8 slots; with 4
/// per slot the outbox drained at half that pace, waiting for its own polls.
const WAITING_PER_SLOT: usize = 16;
/// A webhook whose receiver takes deliveries faster is fed further ahead: as many may wait as
/// it took in this long at its recent pace (see [`Pace`]), up to
/// [`MAX_WAITING_PER_SLOT`]. A receiver answering at once on 8 slots takes 10,000–20,000 a
/// second, and a poll round of PostgreSQL claimed ~100 in the time those 128 waiting went
/// out: the outbox drained at the pace of its polls. What waits beyond
/// [`WAITING_PER_SLOT`] when the receiver slows down goes back to the table (see
/// [`Deliveries::give_back_excess`]), so that hanging webhooks still cannot fill the
/// hand-over while global slots sit idle.
const FEED_AHEAD: Duration = Duration::from_millis(50);
/// The most of one webhook's deliveries that may wait in memory, per slot of its own limit,
/// however fast it drains.
const MAX_WAITING_PER_SLOT: usize = 64;
/// The window over which a webhook's pace is measured.
const PACE_WINDOW: Duration = Duration::from_millis(100);
/// Webhooks whose pace is kept, before those idle for a minute are forgotten.
const PACES_KEPT: usize = 4096;
/// A claim with less than this left beyond the attempt's deadline is renewed first (a
/// conditional UPDATE), so that no other worker can take the delivery while it is in flight
/// or being recorded.
const RENEW_MARGIN: Duration = Duration::from_secs(5);
/// How soon the dispatcher looks again while deliveries wait only for their webhook's pace.
const PACE_TICK: Duration = Duration::from_millis(50);
/// How soon it looks again in any case.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The in-memory path to the dispatcher.
pub(super) struct Handoff {
    tx: UnboundedSender<delivery::Model>,
    rx: std::sync::Mutex<Option<UnboundedReceiver<delivery::Model>>>,
    /// Most deliveries waiting (handed over, not yet sent).
    cap: usize,
    /// What is in memory, kept under one lock so that its counts always agree.
    ledger: std::sync::Mutex<Ledger>,
    /// Whether the dispatcher runs (then deliveries are claimed at insert).
    running: AtomicBool,
    /// Slots were freed: the dispatcher looks again.
    pub(super) freed: Arc<Notify>,
}

/// Deliveries in memory.
#[derive(Default)]
struct Ledger {
    /// Handed over and not finished: one is never handed over twice (the poll re-claiming one
    /// whose claim ran down while it waited here).
    in_memory: HashSet<Uuid>,
    /// Of those, how many wait for slots (handed over, not yet sent).
    waiting: usize,
    /// The same, per webhook (only webhooks with some).
    waiting_per_webhook: HashMap<Uuid, usize>,
    /// How fast each webhook's deliveries left for their receiver, lately.
    paces: HashMap<Uuid, Pace>,
    /// When `paces` was last rid of webhooks idle for a minute.
    paces_pruned: Option<std::time::Instant>,
}

impl Ledger {
    /// Notes that one delivery of `webhook_id` no longer waits for slots.
    fn stop_waiting(&mut self, webhook_id: Uuid) {
        self.waiting = self.waiting.saturating_sub(1);
        if let Some(n) = self.waiting_per_webhook.get_mut(&webhook_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waiting_per_webhook.remove(&webhook_id);
            }
        }
    }
}

/// How fast a webhook's deliveries leave for their receiver: counted over windows of
/// [`PACE_WINDOW`], the last full window's rate, unless the window under way is already
/// slower; none at all once a whole window went by without a delivery sent (a receiver that
/// stopped answering is not fed ahead for long).
#[derive(Clone, Copy, Debug)]
struct Pace {
    since: std::time::Instant,
    last: std::time::Instant,
    count: u32,
    per_second: f64,
}

impl Pace {
    fn new(now: std::time::Instant) -> Self {
        Self {
            since: now,
            last: now,
            count: 0,
            per_second: 0.0,
        }
    }

    /// Notes one delivery sent at `now`.
    fn sent(&mut self, now: std::time::Instant) {
        self.last = now;
        self.count = self.count.saturating_add(1);
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= PACE_WINDOW {
            self.per_second = f64::from(self.count) / elapsed.as_secs_f64();
            self.count = 0;
            self.since = now;
        }
    }

    /// Deliveries per second at `now`.
    fn per_second(&self, now: std::time::Instant) -> f64 {
        if now.saturating_duration_since(self.last) >= PACE_WINDOW {
            return 0.0;
        }
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < PACE_WINDOW {
            return self.per_second;
        }
        self.per_second
            .min(f64::from(self.count) / elapsed.as_secs_f64())
    }

    /// How many of this webhook's deliveries may wait in memory at `now`, with `slots` slots
    /// of its own.
    fn waiting_allowed(&self, slots: usize, now: std::time::Instant) -> usize {
        let ahead = (self.per_second(now) * FEED_AHEAD.as_secs_f64()) as usize;
        ahead.clamp(slots * WAITING_PER_SLOT, slots * MAX_WAITING_PER_SLOT)
    }
}

impl Handoff {
    pub(super) fn new(concurrency: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            cap: (concurrency * WAITING_PER_GLOBAL_SLOT).max(64),
            ledger: std::sync::Mutex::new(Ledger::default()),
            running: AtomicBool::new(false),
            freed: Arc::new(Notify::new()),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn waiting(&self) -> usize {
        self.ledger().waiting
    }

    fn waiting_for(&self, webhook_id: Uuid) -> usize {
        self.ledger()
            .waiting_per_webhook
            .get(&webhook_id)
            .copied()
            .unwrap_or(0)
    }

    /// Notes `d` as in memory and waiting; false if it already was in memory.
    fn enter(&self, d: &delivery::Model) -> bool {
        let mut ledger = self.ledger();
        if !ledger.in_memory.insert(d.id) {
            return false;
        }
        ledger.waiting += 1;
        *ledger.waiting_per_webhook.entry(d.webhook_id).or_default() += 1;
        true
    }

    /// Notes that one delivery of `webhook_id` no longer waits for slots.
    fn stop_waiting(&self, webhook_id: Uuid) {
        self.ledger().stop_waiting(webhook_id);
    }

    /// Notes that one delivery of `webhook_id` left for its receiver: it no longer waits, and
    /// counts in its webhook's pace.
    fn sent(&self, webhook_id: Uuid) {
        let now = std::time::Instant::now();
        let mut ledger = self.ledger();
        ledger.stop_waiting(webhook_id);
        if ledger.paces.len() >= PACES_KEPT && !ledger.paces.contains_key(&webhook_id) {
            // At most once a second: past that many webhooks sending at once, the others
            // get the base allowance rather than a sweep of the map on every delivery.
            if ledger
                .paces_pruned
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
            {
                ledger.paces_pruned = Some(now);
                ledger
                    .paces
                    .retain(|_, p| now.saturating_duration_since(p.last) < Duration::from_secs(60));
            }
            if ledger.paces.len() >= PACES_KEPT {
                return;
            }
        }
        ledger
            .paces
            .entry(webhook_id)
            .or_insert_with(|| Pace::new(now))
            .sent(now);
    }

    /// How many of `webhook_id`'s deliveries may wait in memory now, with `slots` slots of
    /// its own.
    fn waiting_allowed(&self, webhook_id: Uuid, slots: usize) -> usize {
        let now = std::time::Instant::now();
        match self.ledger().paces.get(&webhook_id) {
            Some(pace) => pace.waiting_allowed(slots, now),
            None => slots * WAITING_PER_SLOT,
        }
    }

    /// Notes that `id` is finished here (sent, released, or never to be sent).
    fn leave(&self, id: Uuid) {
        self.ledger().in_memory.remove(&id);
    }
}

/// Clears [`Handoff::running`] when the dispatcher stops, so that nothing more is claimed
/// for it.
struct Running<'a>(&'a Handoff);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Deliveries a transaction queued, to pass to [`Deliveries::queued`] once it has committed.
#[derive(Default)]
pub struct Queued {
    claimed: Vec<delivery::Model>,
    unclaimed: bool,
}

impl Queued {
    /// Notes that deliveries were queued unclaimed in the transaction (for the poll).
    pub fn mark(&mut self) {
        self.unclaimed = true;
    }
}

/// Deliveries waiting in the dispatcher, per webhook, and the webhooks' turn.
#[derive(Default)]
pub(super) struct Waiting {
    queues: HashMap<Uuid, VecDeque<delivery::Model>>,
    turn: VecDeque<Uuid>,
}

impl Waiting {
    fn push(&mut self, d: delivery::Model) {
        let queue = self.queues.entry(d.webhook_id).or_default();
        if queue.is_empty() {
            self.turn.push_back(d.webhook_id);
        }
        queue.push_back(d);
    }
}

impl Deliveries {
    /// The row of an async delivery to insert into the outbox, inside the caller's
    /// transaction (with its other writes: see [`crate::db::Deferred`]). It is claimed by this
    /// instance when the dispatcher has room for it in memory; pass `queued` to
    /// [`Self::queued`] after the commit so that it is sent at once.
    pub fn queued_row(
        &self,
        queued: &mut Queued,
        account_id: Uuid,
        webhook_id: Uuid,
        conversation_id: Option<Uuid>,
        block_id: Option<String>,
        payload: Value,
    ) -> delivery::Model {
        let now = Utc::now();
        let same_webhook = queued
            .claimed
            .iter()
            .filter(|d| d.webhook_id == webhook_id)
            .count();
        let claim = self.handoff.running.load(Ordering::Acquire)
            && self.handoff_room() > queued.claimed.len()
            && self.webhook_room(webhook_id) > same_webhook;
        let d = async_row(
            account_id,
            webhook_id,
            conversation_id,
            block_id,
            payload,
            now,
            claim.then(|| {
                (
                    self.instance_id.clone(),
                    self.claim_until(DeliveryMode::Async, now),
                )
            }),
        );
        // Noted before the insert: should it fail, the step fails and `queued` goes with it.
        if claim {
            queued.claimed.push(d.clone());
        } else {
            queued.unclaimed = true;
        }
        d
    }

    /// After the commit of a transaction that queued deliveries: hands those claimed to the
    /// dispatcher, and wakes the poll for the others.
    pub fn queued(&self, queued: Queued) {
        self.hand_over(queued.claimed, "insert");
        if queued.unclaimed {
            self.wake();
        }
    }

    /// Hands claimed deliveries to the dispatcher; `path` (`insert` or `poll`) is for the
    /// metrics. One already in memory is not handed over again (its claim was renewed by the
    /// poll's).
    pub(super) fn hand_over(&self, claimed: Vec<delivery::Model>, path: &'static str) {
        for d in claimed {
            if !self.handoff.enter(&d) {
                continue;
            }
            let (id, webhook_id) = (d.id, d.webhook_id);
            crate::metrics::handed_over(path);
            if self.handoff.tx.send(d).is_err() {
                // The dispatcher is gone (shutting down): the claim lapses and a poll sends it.
                self.handoff.stop_waiting(webhook_id);
                self.handoff.leave(id);
            }
        }
    }

    /// How many more claimed deliveries may wait in memory now.
    pub(super) fn handoff_room(&self) -> usize {
        self.handoff.cap.saturating_sub(self.handoff.waiting())
    }

    /// How many more of a webhook's deliveries may be claimed now: its free slots, plus a
    /// few rounds' worth waiting in memory (more for a receiver that takes them fast), less
    /// those already waiting.
    pub(super) fn webhook_room(&self, webhook_id: Uuid) -> usize {
        (self.webhook_gate(webhook_id).available_permits() + self.waiting_allowed(webhook_id))
            .saturating_sub(self.handoff.waiting_for(webhook_id))
    }

    /// How many of a webhook's deliveries may wait in memory now: [`WAITING_PER_SLOT`] per
    /// slot of its own, more for a receiver that takes them fast.
    fn waiting_allowed(&self, webhook_id: Uuid) -> usize {
        let slots = self.settings.per_webhook_concurrency.max(1);
        self.handoff.waiting_allowed(webhook_id, slots)
    }

    /// The dispatcher: takes what is handed over and sends each delivery when its webhook
    /// has a free slot, a global slot is free and its pace allows, until dropped. Attempts go
    /// to the recorder.
    pub(super) async fn run_dispatcher(self: Arc<Self>, done: tokio::sync::mpsc::Sender<Done>) {
        let Some(mut rx) = self
            .handoff
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            tracing::error!("the delivery dispatcher runs already");
            return;
        };
        self.handoff.running.store(true, Ordering::Release);
        let _running = Running(&self.handoff);
        let mut waiting = Waiting::default();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            while let Ok(d) = rx.try_recv() {
                waiting.push(d);
            }
            let paced = self.dispatch(&mut waiting, &mut tasks, &done).await;
            let tick = if paced { PACE_TICK } else { IDLE_TICK };
            tokio::select! {
                got = rx.recv() => match got {
                    Some(d) => waiting.push(d),
                    None => return,
                },
                () = self.handoff.freed.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Sends what can go now, one delivery per webhook in turn; whether some wait only for
    /// their webhook's pace.
    async fn dispatch(
        self: &Arc<Self>,
        waiting: &mut Waiting,
        tasks: &mut tokio::task::JoinSet<()>,
        done: &tokio::sync::mpsc::Sender<Done>,
    ) -> bool {
        let mut paced = false;
        let mut progress = true;
        while progress && !waiting.turn.is_empty() {
            progress = false;
            for _ in 0..waiting.turn.len() {
                let Some(hook) = waiting.turn.pop_front() else {
                    break;
                };
                let endpoint = self.endpoint(hook).await;
                if endpoint.as_ref().is_ok_and(|e| e.disabled) {
                    // Held until `enableWebhook`, in the table: release them all.
                    for d in waiting.queues.remove(&hook).unwrap_or_default() {
                        self.handoff.stop_waiting(hook);
                        self.unclaim(&[d.id]).await;
                        self.handoff.leave(d.id);
                    }
                    continue;
                }
                let Ok(gate) = self.webhook_gate(hook).try_acquire_owned() else {
                    self.give_back_excess(hook, waiting).await;
                    waiting.turn.push_back(hook);
                    continue;
                };
                let Ok(global) = self.global.clone().try_acquire_owned() else {
                    // Nothing can go before a slot frees.
                    waiting.turn.push_front(hook);
                    return paced;
                };
                let rate = endpoint.as_ref().ok().and_then(|e| e.max_per_second);
                if !self.rate_allows(hook, rate) {
                    paced = true;
                    waiting.turn.push_back(hook);
                    continue;
                }
                let Some(queue) = waiting.queues.get_mut(&hook) else {
                    continue;
                };
                let Some(d) = queue.pop_front() else {
                    waiting.queues.remove(&hook);
                    continue;
                };
                if queue.is_empty() {
                    waiting.queues.remove(&hook);
                } else {
                    waiting.turn.push_back(hook);
                }
                self.handoff.sent(hook);
                let slots = Slots::of(vec![gate, global], self.handoff.freed.clone());
                tasks.spawn(self.clone().send_claimed(d, slots, endpoint, done.clone()));
                progress = true;
            }
        }
        paced
    }

    /// A webhook whose slots are all taken and which has more waiting than it may have now
    /// (its receiver slowed down, so it is no longer fed ahead): what waits beyond that goes
    /// back to the table, the latest first, for a poll to claim again when there is room.
    pub(super) async fn give_back_excess(&self, hook: Uuid, waiting: &mut Waiting) {
        let Some(queue) = waiting.queues.get_mut(&hook) else {
            return;
        };
        // Checked on every pass that finds the webhook's slots taken: within the base
        // allowance (the common case) it need not take the ledger's lock for the pace.
        let base = self.settings.per_webhook_concurrency.max(1) * WAITING_PER_SLOT;
        if queue.len() <= base {
            return;
        }
        let allowed = self.waiting_allowed(hook);
        if queue.len() <= allowed {
            return;
        }
        let excess: Vec<Uuid> = queue.split_off(allowed).iter().map(|d| d.id).collect();
        // Out of memory before the claims go: a poll that claims one meanwhile hands it over
        // again instead of finding it still here.
        for &id in &excess {
            self.handoff.stop_waiting(hook);
            self.handoff.leave(id);
        }
        tracing::info!(webhook.id = %hook, deliveries = excess.len(), "its receiver slowed down: deliveries waiting beyond its allowance go back to the outbox");
        self.unclaim(&excess).await;
    }

    /// One attempt of a claimed delivery holding its slots; its claim renewed first if it
    /// ran low while the delivery waited, and nothing sent if the claim is no longer ours.
    async fn send_claimed(
        self: Arc<Self>,
        d: delivery::Model,
        slots: Slots,
        endpoint: Result<Arc<Endpoint>, String>,
        done: tokio::sync::mpsc::Sender<Done>,
    ) {
        let id = d.id;
        let margin =
            chrono::Duration::from_std(self.timeout_of(&d) + RENEW_MARGIN).unwrap_or_default();
        let ours = match d.claimed_until {
            Some(until) if until - Utc::now() >= margin => true,
            _ => self.renew_claim(&d).await,
        };
        if ours {
            let result = self.process(d, endpoint).await;
            drop(slots);
            // Only fails when the recorder is gone (shutting down): the claim lapses and the
            // delivery is sent again.
            let _ = done.send(result).await;
        }
        self.handoff.leave(id);
    }

    /// Extends this instance's claim on `d`; false when it is no longer this instance's
    /// (another worker took it after it ran down) or the delivery is no longer pending.
    async fn renew_claim(&self, d: &delivery::Model) -> bool {
        let until = self.claim_until(d.mode, Utc::now());
        let renewed = delivery::Entity::update_many()
            .col_expr(delivery::Column::ClaimedUntil, Some(until).into())
            .filter(delivery::Column::Id.eq(d.id))
            .filter(delivery::Column::ClaimedBy.eq(self.instance_id.as_str()))
            .filter(delivery::Column::Status.eq(DeliveryStatus::Pending))
            .exec(self.db.writer())
            .await;
        match renewed {
            Ok(r) => r.rows_affected == 1,
            Err(e) => {
                tracing::warn!(delivery.id = %d.id, error.cause = ?e, "cannot renew a delivery claim; not sending it now");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{MAX_WAITING_PER_SLOT, PACE_WINDOW, Pace, WAITING_PER_SLOT};

    /// `pace` after `n` deliveries sent evenly over `over`, from `start`; the time of the last.
    fn sent_evenly(pace: &mut Pace, start: Instant, n: u32, over: Duration) -> Instant {
        let mut at = start;
        for i in 1..=n {
            at = start + over.mul_f64(f64::from(i) / f64::from(n));
            pace.sent(at);
        }
        at
    }

    #[test]
    fn a_webhook_never_measured_or_slow_gets_the_base_allowance() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        assert_eq!(pace.waiting_allowed(8, start), 8 * WAITING_PER_SLOT);
        // 50 a second: feeding it ahead would mean two or three deliveries.
        let last = sent_evenly(&mut pace, start, 10, Duration::from_millis(200));
        assert_eq!(pace.waiting_allowed(8, last), 8 * WAITING_PER_SLOT);
    }

    #[test]
    fn a_fast_receiver_is_fed_further_ahead_up_to_the_cap() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        // 4,000 a second: 50 ms of that is 200.
        let last = sent_evenly(&mut pace, start, 800, Duration::from_millis(200));
        let allowed = pace.waiting_allowed(8, last);
        assert!(
            (195..=205).contains(&allowed),
            "{allowed} allowed at 4,000 a second"
        );
        // 40,000 a second: capped.
        let mut pace = Pace::new(start);
        let last = sent_evenly(&mut pace, start, 8_000, Duration::from_millis(200));
        assert_eq!(pace.waiting_allowed(8, last), 8 * MAX_WAITING_PER_SLOT);
    }

    #[test]
    fn a_receiver_that_stops_taking_deliveries_falls_back_to_the_base_within_a_window() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        let last = sent_evenly(&mut pace, start, 8_000, Duration::from_millis(200));
        assert_eq!(pace.waiting_allowed(8, last), 8 * MAX_WAITING_PER_SLOT);
        // Still fed ahead while the window under way is young...
        assert_eq!(
            pace.waiting_allowed(8, last + PACE_WINDOW / 2),
            8 * MAX_WAITING_PER_SLOT
        );
        // ...and no longer once a whole window went by with nothing sent.
        assert_eq!(
            pace.waiting_allowed(8, last + PACE_WINDOW * 2),
            8 * WAITING_PER_SLOT
        );
    }

    #[test]
    fn a_receiver_that_stops_in_the_middle_of_a_window_falls_back_as_soon() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        let closed = sent_evenly(&mut pace, start, 4_000, Duration::from_millis(100));
        // Half a window more at the same pace, then nothing.
        let last = sent_evenly(&mut pace, closed, 2_000, PACE_WINDOW / 2);
        assert_eq!(pace.waiting_allowed(8, last), 8 * MAX_WAITING_PER_SLOT);
        assert_eq!(
            pace.waiting_allowed(8, last + PACE_WINDOW),
            8 * WAITING_PER_SLOT
        );
    }
}
