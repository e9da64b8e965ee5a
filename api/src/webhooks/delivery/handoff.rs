//! Deliveries this instance commits go to its own worker in memory, claimed at insert: no
//! poll, no select-then-claim round trip. The table stays the durable record and the path for
//! retries, for other instances' work and for anything the hand-over cannot take: a delivery
//! handed over and then lost (a crash) keeps its claim until the next start releases it or the
//! lease lapses, and the poll sends it then.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::*;

/// Most deliveries handed over and waiting for their slots. Past it, new deliveries are
/// queued unclaimed and the poll takes them when there is room: memory stays bounded however
/// far the receivers fall behind.
const HANDOFF_CAP: usize = 4096;

/// Deliveries of one webhook that may wait for its slots in memory, in multiples of its
/// concurrency: enough to keep it busy between two polls, not a backlog.
const WAITING_PER_SLOT: usize = 4;

/// What an attempt must have left of its claim when it starts, beyond its deadline, so that
/// no other worker can claim the delivery while it is in flight or being recorded.
const CLAIM_SLACK: Duration = Duration::from_millis(500);

/// The in-memory path from the transactions that queue deliveries to the worker.
pub(super) struct Handoff {
    tx: UnboundedSender<Handed>,
    rx: std::sync::Mutex<Option<UnboundedReceiver<Handed>>>,
    /// Handed over and not yet holding their slots.
    waiting: AtomicUsize,
    /// The same, per webhook (only webhooks with some).
    waiting_per_webhook: std::sync::Mutex<HashMap<Uuid, usize>>,
    /// Whether a worker takes what is handed over (then deliveries are claimed at insert).
    running: AtomicBool,
}

impl Handoff {
    pub(super) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            waiting: AtomicUsize::new(0),
            waiting_per_webhook: std::sync::Mutex::new(HashMap::new()),
            running: AtomicBool::new(false),
        }
    }

    fn waiting_for(&self, webhook_id: Uuid) -> usize {
        let map = self
            .waiting_per_webhook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&webhook_id).copied().unwrap_or(0)
    }

    fn add_waiting(&self, webhook_id: Uuid) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut map = self
            .waiting_per_webhook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(webhook_id).or_default() += 1;
    }

    fn remove_waiting(&self, webhook_id: Uuid) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let mut map = self
            .waiting_per_webhook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&webhook_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&webhook_id);
            }
        }
    }

    /// Whether `more` deliveries may be claimed at insert now.
    fn has_room(&self, more: usize) -> bool {
        self.running.load(Ordering::Acquire)
            && self.waiting.load(Ordering::Relaxed) + more < HANDOFF_CAP
    }
}

/// A claimed delivery on its way to the worker.
pub(super) struct Handed {
    delivery: delivery::Model,
    /// Its webhook's `maxPerSecond` was already applied (by the poll's claim).
    paced: bool,
}

/// Clears [`Handoff::running`] when the worker stops, so that nothing more is claimed for it.
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

impl Deliveries {
    /// Inserts an async delivery into the outbox, inside the caller's transaction. It is
    /// claimed by this instance when the worker has room for it in memory; pass `queued` to
    /// [`Self::queued`] after the commit so that it is sent at once.
    #[expect(
        clippy::too_many_arguments,
        reason = "the delivery's columns, each needed"
    )]
    pub async fn enqueue(
        &self,
        tx: &impl ConnectionTrait,
        queued: &mut Queued,
        account_id: Uuid,
        webhook_id: Uuid,
        conversation_id: Option<Uuid>,
        block_id: Option<String>,
        payload: Value,
    ) -> ApiResult<Uuid> {
        let now = Utc::now();
        let claim = self.handoff.has_room(queued.claimed.len());
        let d = delivery::Model {
            id: Uuid::now_v7(),
            account_id,
            webhook_id,
            conversation_id,
            block_id,
            mode: DeliveryMode::Async,
            status: DeliveryStatus::Pending,
            payload,
            attempt_count: 0,
            next_attempt_at: Some(now),
            claimed_until: claim.then(|| self.claim_until(DeliveryMode::Async, now)),
            claimed_by: claim.then(|| self.instance_id.clone()),
            created_at: now,
            updated_at: now,
        };
        let id = d.id;
        if claim {
            delivery::Entity::insert(delivery::ActiveModel::from(d.clone()))
                .exec_without_returning(tx)
                .await?;
            queued.claimed.push(d);
        } else {
            delivery::Entity::insert(delivery::ActiveModel::from(d))
                .exec_without_returning(tx)
                .await?;
            queued.unclaimed = true;
        }
        Ok(id)
    }

    /// After the commit of a transaction that queued deliveries: hands those claimed to the
    /// worker, and wakes the poll for the others.
    pub fn queued(&self, queued: Queued) {
        self.hand_over(queued.claimed, false);
        if queued.unclaimed {
            self.wake();
        }
    }

    /// Hands claimed deliveries to the worker, which sends each once it has its slots;
    /// `paced`: their webhook's `maxPerSecond` was already applied.
    pub(super) fn hand_over(&self, claimed: Vec<delivery::Model>, paced: bool) {
        for delivery in claimed {
            let webhook_id = delivery.webhook_id;
            self.handoff.add_waiting(webhook_id);
            crate::metrics::handed_over();
            if self.handoff.tx.send(Handed { delivery, paced }).is_err() {
                // The worker is gone (shutting down): the claim lapses and a poll sends it.
                self.handoff.remove_waiting(webhook_id);
            }
        }
    }

    /// How many more claimed deliveries may wait in memory now.
    pub(super) fn handoff_room(&self) -> usize {
        HANDOFF_CAP.saturating_sub(self.handoff.waiting.load(Ordering::Relaxed))
    }

    /// How many more of a webhook's deliveries a poll may claim now: its free slots, plus a
    /// few rounds' worth waiting in memory, less those already waiting.
    pub(super) fn webhook_room(&self, webhook_id: Uuid) -> usize {
        let per_webhook = self.settings.per_webhook_concurrency.max(1);
        (self.webhook_gate(webhook_id).available_permits() + per_webhook * WAITING_PER_SLOT)
            .saturating_sub(self.handoff.waiting_for(webhook_id))
    }

    /// Takes what is handed over and sends each as soon as it gets its slots, until the
    /// channel closes. Attempts go to the recorder like the poll's.
    pub(super) async fn run_handoff(self: Arc<Self>, done: tokio::sync::mpsc::Sender<Done>) {
        let Some(mut rx) = self
            .handoff
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            tracing::error!("the delivery hand-over is taken by another worker");
            return;
        };
        self.handoff.running.store(true, Ordering::Release);
        let _running = Running(&self.handoff);
        let mut tasks = tokio::task::JoinSet::new();
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            while tasks.try_join_next().is_some() {}
            for handed in batch.drain(..) {
                tasks.spawn(self.clone().send_handed(handed, done.clone()));
            }
        }
    }

    /// One handed-over delivery: its slots (waiting, in turn with the others), then one
    /// attempt; or, when it cannot go now, its claim released for the poll.
    async fn send_handed(self: Arc<Self>, handed: Handed, done: tokio::sync::mpsc::Sender<Done>) {
        let Handed { delivery: d, paced } = handed;
        // The webhook's slot first: a delivery waiting for a saturated endpoint holds none of
        // the global slots that others could use. Acquiring only fails if a semaphore were
        // closed, which never happens; then the claim lapses.
        let Ok(gate) = self.webhook_gate(d.webhook_id).acquire_owned().await else {
            return;
        };
        let Ok(global) = self.global.clone().acquire_owned().await else {
            return;
        };
        self.handoff.remove_waiting(d.webhook_id);
        let endpoint = self.endpoint(d.webhook_id).await;
        let timeout = self.timeout_of(&d);
        let slack = chrono::Duration::from_std(timeout + CLAIM_SLACK).unwrap_or_default();
        let lapsing = d
            .claimed_until
            .is_none_or(|until| until - Utc::now() < slack);
        let (held, too_fast) = match &endpoint {
            Ok(e) => (
                e.disabled,
                !paced && !self.rate_allows(d.webhook_id, e.max_per_second),
            ),
            Err(_) => (false, false),
        };
        if lapsing || held || too_fast {
            drop((global, gate));
            // A disabled webhook's delivery waits for `enableWebhook` (which wakes the poll); a
            // paced one for the poll's next round; one whose claim ran down is due now.
            self.unclaim(d.id).await;
            if lapsing {
                self.wake();
            }
            return;
        }
        let result = self.process(d, endpoint).await;
        drop((global, gate));
        // Only fails when the recorder is gone (shutting down): the claim lapses and the
        // delivery is sent again.
        let _ = done.send(result).await;
    }
}
