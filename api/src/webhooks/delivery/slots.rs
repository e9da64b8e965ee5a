//! The slots every request to a receiver holds (global, per webhook, and for sync calls per
//! account), and what is recorded when a request cannot get them.
use super::{calls::NewCall, *};

/// The slots a request holds while it is in flight; dropping them frees them and tells the
/// outbox's dispatcher, which only takes slots that are free.
pub(super) struct Slots {
    held: Vec<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Slots {
    pub(super) fn of(held: Vec<OwnedSemaphorePermit>, freed: Arc<Notify>) -> Self {
        Self { held, freed }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // Freed first, then told: told first, the dispatcher could look before they are.
        self.held.clear();
        self.freed.notify_one();
    }
}

/// A limit that refused a request: it was full for the whole wait.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// The account's sync calls in flight (`PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT`).
    Account(usize),
    /// The webhook's requests in flight.
    Webhook(usize),
    /// Every request in flight on this instance.
    Global(usize),
}

impl Refusal {
    /// The limit's name, for the logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Account(_) => "max_sync_calls_per_account",
            Self::Webhook(_) => "per_webhook_concurrency",
            Self::Global(_) => "concurrency",
        }
    }

    pub(super) fn value(self) -> usize {
        match self {
            Self::Account(n) | Self::Webhook(n) | Self::Global(n) => n,
        }
    }

    /// The attempt's error: that nothing was sent, and which limit said no.
    pub(super) fn message(self) -> String {
        match self {
            Self::Account(n) => format!(
                "not sent: {n} sync calls of this account already in flight \
                 (account's sync-call limit, PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT={n})"
            ),
            Self::Webhook(n) => {
                format!("not sent: {n} calls to this webhook already in flight (per-webhook limit)")
            }
            Self::Global(n) => format!(
                "not sent: {n} webhook calls already in flight on this server (global delivery limit)"
            ),
        }
    }
}

/// The semaphore of `key` in `map`, created with `permits` if absent. Entries that nobody
/// holds or waits on are removed on the way, so the map only keeps keys in use.
pub(super) fn gate_of(
    map: &std::sync::Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    key: Uuid,
    permits: usize,
) -> Arc<Semaphore> {
    let permits = permits.max(1);
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    // Held permits and waiters keep a clone: a count of one is the map's own, an idle entry.
    map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < permits);
    map.entry(key)
        .or_insert_with(|| Arc::new(Semaphore::new(permits)))
        .clone()
}

/// A permit of `gate`, waiting until `deadline` at most.
pub(super) async fn take(
    gate: Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = gate.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::time::timeout_at(deadline, gate.acquire_owned())
        .await
        .ok()?
        .ok()
}

impl Deliveries {
    /// How long a sync call or a test send waits for its slots before it is refused: a
    /// quarter of the sync deadline, at most [`MAX_SLOT_WAIT`]. A visitor is waiting, and a
    /// receiver that keeps every slot busy will not free one soon.
    pub fn slot_wait(&self) -> Duration {
        (self.settings.sync_timeout / 4).min(MAX_SLOT_WAIT)
    }

    /// Takes the slots of a request to `webhook_id`, in the order account (for sync calls),
    /// webhook, global, waiting `wait` at most in all; or the limit that stayed full.
    pub(super) async fn admit(
        &self,
        account_id: Option<Uuid>,
        webhook_id: Uuid,
        wait: Duration,
    ) -> Result<Slots, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut permits = Vec::with_capacity(3);
        if let Some(account_id) = account_id {
            let cap = self.max_sync_calls_per_account;
            let gate = gate_of(&self.per_account, account_id, cap);
            permits.push(take(gate, deadline).await.ok_or(Refusal::Account(cap))?);
        }
        let gate = self.webhook_gate(webhook_id);
        permits.push(take(gate, deadline).await.ok_or(Refusal::Webhook(
            self.settings.per_webhook_concurrency.max(1),
        ))?);
        permits.push(
            take(self.global.clone(), deadline)
                .await
                .ok_or(Refusal::Global(self.settings.concurrency.max(1)))?,
        );
        Ok(Slots::of(permits, self.handoff.freed.clone()))
    }

    /// Records a request refused by a limit: a FAILED delivery with one attempt that says
    /// which limit, in one transaction; and logs it.
    pub(super) async fn record_refusal(
        &self,
        call: NewCall,
        refusal: Refusal,
        waited: Duration,
    ) -> ApiResult<delivery::Model> {
        let now = Utc::now();
        let pending = self.pending_row(call, false, now);
        let outcome = super::calls::refused(&refusal, waited);
        log_refusal(&pending, &refusal, waited);
        let attempt = attempt_row(&pending, &outcome, None, now);
        let d = delivery::Model {
            status: DeliveryStatus::Failed,
            attempt_count: 1,
            ..pending
        };
        let tx = self.db.write().await?;
        delivery::Entity::insert(delivery::ActiveModel::from(d.clone()))
            .exec_without_returning(&tx.tx)
            .await?;
        delivery_attempt::Entity::insert(delivery_attempt::ActiveModel::from(attempt))
            .exec_without_returning(&tx.tx)
            .await?;
        tx.commit().await?;
        Ok(d)
    }

    /// The gate of a webhook, shared by the worker, sync calls, test sends and redeliveries.
    pub(super) fn webhook_gate(&self, webhook_id: Uuid) -> Arc<Semaphore> {
        gate_of(
            &self.per_webhook,
            webhook_id,
            self.settings.per_webhook_concurrency,
        )
    }
}

/// Logs a call refused by a limit, once, where it is recorded.
pub(super) fn log_refusal(d: &delivery::Model, refusal: &Refusal, waited: Duration) {
    tracing::warn!(
        account.id = %d.account_id,
        webhook.id = %d.webhook_id,
        delivery.id = %d.id,
        delivery.mode = ?d.mode,
        conversation.id = d.conversation_id.map(tracing::field::display),
        limit.name = refusal.name(),
        limit.value = refusal.value(),
        waited_ms = waited.as_millis() as u64,
        "webhook call refused by a concurrency limit"
    );
}
