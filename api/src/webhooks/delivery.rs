//! Webhook delivery: the outbox of async deliveries and its worker, synchronous calls with a
//! deadline, test sends and redeliveries, all recorded attempt by attempt.
//!
//! Every request to a receiver, whoever makes it, holds a slot of the same two limits: the
//! global one (`DeliverySettings::concurrency`) and its webhook's (`per_webhook_concurrency`).
//! Sync calls (a visitor's turn) also hold a slot of their account's
//! (`Limits::max_sync_calls_per_account`, `PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT`), so one account's
//! visitors cannot take every slot. What cannot get its slots:
//! - a sync call waits at most [`Deliveries::slot_wait`] (a quarter of the sync deadline, at
//!   most [`MAX_SLOT_WAIT`]; the wait counts against the deadline), then is refused: its SYNC
//!   delivery is recorded FAILED with one attempt whose error names the limit, and the
//!   conversation goes on as after any failed call;
//! - `testWebhook` waits as long, then its TEST delivery is recorded FAILED the same way;
//! - `redeliver` does not wait: the delivery is queued (PENDING, due now) and the worker sends
//!   it when slots free up; a queued SYNC or TEST delivery gets one attempt, no retries.
use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    delivery::{self, DeliveryMode, DeliveryStatus},
    delivery_attempt, webhook,
};
use rand::Rng as _;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use uuid::Uuid;

use super::{
    client::{
        AttemptOutcome, ClientConfig, DeliveryClient, Disposition, OutgoingRequest, disposition,
    },
    service::{active_secrets_of, open_headers},
    signing,
};
use crate::{
    crypto::SecretBox,
    db::Db,
    engine::{Instruction, WebhookOutcome},
    error::{ApiError, ApiResult},
    settings::{DatabaseKind, DeliverySettings},
};

/// Failed async attempts (at least) before a failing webhook is disabled.
pub const DISABLE_MIN_FAILURES: i32 = 3;

/// Longest wait of a sync call or a test send for its slots, before it is refused.
pub const MAX_SLOT_WAIT: Duration = Duration::from_secs(1);

/// Longest `Retry-After` honoured: a receiver cannot park a delivery for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);
/// Most deliveries claimed by one poll.
const CLAIM_BATCH: usize = 256;
/// How often old deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The delivery module: one HTTP client, the outbox worker's wake-up, and the limits.
pub struct Deliveries {
    db: Db,
    client: DeliveryClient,
    settings: DeliverySettings,
    wake: Notify,
    global: Arc<Semaphore>,
    per_webhook: std::sync::Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    /// Sync calls in flight at once for one account.
    max_sync_calls_per_account: usize,
    per_account: std::sync::Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    /// Webhooks with a `maxPerSecond`: their rate and its limiter on this instance.
    rates: std::sync::Mutex<HashMap<Uuid, (u32, governor::DefaultDirectRateLimiter)>>,
    /// This instance's name in the claims it takes (`claimed_by`).
    instance_id: String,
    /// Opens the webhooks' stored header values and signing secrets.
    secrets: SecretBox,
    /// Endpoints by webhook id, briefly.
    endpoints: moka::sync::Cache<Uuid, Arc<Endpoint>>,
    /// Deliveries committed here, on their way to the worker.
    handoff: handoff::Handoff,
    /// The last poll left due deliveries in the table for want of room: finished attempts
    /// wake it again. Otherwise they do not, since a poll that finds nothing still costs a
    /// read of the outbox's index (on PostgreSQL about a millisecond under load, once per
    /// recorded batch).
    backlog: std::sync::atomic::AtomicBool,
}

/// Deliveries the worker may take at `now`: pending, their time come, and nobody's claim
/// holding them. Any mode: a SYNC or TEST delivery is due only when a redelivery was queued
/// (sync calls and test sends in flight have no `next_attempt_at`).
pub fn due(now: chrono::DateTime<Utc>) -> Condition {
    Condition::all()
        .add(pending())
        .add(delivery::Column::NextAttemptAt.lte(now))
        .add(
            Condition::any()
                .add(delivery::Column::ClaimedUntil.is_null())
                .add(delivery::Column::ClaimedUntil.lt(now)),
        )
}

/// `status = 'PENDING'`, spelled with the literal: the outbox's index holds pending deliveries
/// only, and PostgreSQL's generic plans and SQLite use it only where the query states its
/// condition so (a bound parameter proves nothing to them).
pub fn pending() -> sea_orm::sea_query::SimpleExpr {
    status_is("'PENDING'")
}

/// `status = 'FAILED'`, spelled with the literal for the index of failed deliveries (see
/// [`pending`]).
pub fn failed() -> sea_orm::sea_query::SimpleExpr {
    status_is("'FAILED'")
}

fn status_is(literal: &'static str) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Expr, ExprTrait as _};
    Expr::col((delivery::Entity, delivery::Column::Status)).eq(Expr::cust(literal))
}

/// The poll's read: ids and webhooks of up to `look` deliveries due at `now`, the longest due
/// first.
fn candidates(now: chrono::DateTime<Utc>, look: usize) -> sea_orm::Select<delivery::Entity> {
    delivery::Entity::find()
        .filter(due(now))
        // A disabled webhook's deliveries are held until `enableWebhook`.
        .filter(
            delivery::Column::WebhookId.not_in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(webhook::Column::Id)
                    .from(webhook::Entity)
                    .and_where(webhook::Column::DisabledAt.is_not_null())
                    .to_owned(),
            ),
        )
        .order_by_asc(delivery::Column::NextAttemptAt)
        .select_only()
        .column(delivery::Column::Id)
        .column(delivery::Column::WebhookId)
        .limit(look as u64)
}

/// `deliveries.id` among `ids`. On PostgreSQL as `= ANY($1)` with one array: a list of
/// parameters would make each number of ids a statement of its own, parsed and planned
/// again whenever the connection's statement cache has let it go.
fn id_in(kind: DatabaseKind, ids: Vec<Uuid>) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Expr, ExprTrait as _, extension::postgres::PgFunc};
    match kind {
        DatabaseKind::Postgres => {
            Expr::col((delivery::Entity, delivery::Column::Id)).eq(PgFunc::any(Expr::val(ids)))
        }
        DatabaseKind::Sqlite => delivery::Column::Id.is_in(ids),
    }
}

/// A new async delivery, pending and due `now`; claimed by `claim` (who, until when) if given.
fn async_row(
    account_id: Uuid,
    webhook_id: Uuid,
    conversation_id: Option<Uuid>,
    block_id: Option<String>,
    payload: Value,
    now: chrono::DateTime<Utc>,
    claim: Option<(String, chrono::DateTime<Utc>)>,
) -> delivery::Model {
    let (claimed_by, claimed_until) = claim.unzip();
    delivery::Model {
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
        claimed_until,
        claimed_by,
        created_at: now,
        updated_at: now,
    }
}

/// The row of an async delivery queued unclaimed, due now; once it is inserted, call
/// [`Deliveries::wake`] after the commit so the worker sends it at once.
pub fn unclaimed_row(
    account_id: Uuid,
    webhook_id: Uuid,
    conversation_id: Option<Uuid>,
    block_id: Option<String>,
    payload: Value,
) -> delivery::Model {
    async_row(
        account_id,
        webhook_id,
        conversation_id,
        block_id,
        payload,
        Utc::now(),
        None,
    )
}

/// Of `conversation_ids`, those with a delivery under a live claim: a sync call still in
/// flight (or whose result the conversation has not taken yet).
pub async fn conversations_with_calls_in_flight(
    db: &impl ConnectionTrait,
    conversation_ids: &[Uuid],
) -> ApiResult<std::collections::HashSet<Uuid>> {
    if conversation_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Option<Uuid>> = delivery::Entity::find()
        .filter(delivery::Column::ConversationId.is_in(conversation_ids.iter().copied()))
        .filter(delivery::Column::Mode.eq(DeliveryMode::Sync))
        .filter(delivery::Column::ClaimedUntil.gt(Utc::now()))
        .select_only()
        .column(delivery::Column::ConversationId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().flatten().collect())
}

/// The `webhook-id` of a delivery: stable across its retries.
pub fn message_id(delivery_id: Uuid) -> String {
    format!("msg_{}", delivery_id.simple())
}

impl Deliveries {
    /// The module, with its HTTP client.
    pub fn new(
        db: Db,
        settings: DeliverySettings,
        max_sync_calls_per_account: usize,
        allow_private: bool,
        instance_id: String,
        secrets: SecretBox,
    ) -> anyhow::Result<Arc<Self>> {
        let client = DeliveryClient::new(ClientConfig {
            allow_private,
            connect_timeout: settings.connect_timeout,
            max_body_bytes: 64 * 1024,
            user_agent: format!(
                "Parley-Webhooks/{} (+https://github.com/parley)",
                env!("CARGO_PKG_VERSION")
            ),
        })?;
        let handoff = handoff::Handoff::new(settings.concurrency.max(1));
        Ok(Arc::new(Self {
            db,
            client,
            global: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            wake: Notify::new(),
            per_webhook: std::sync::Mutex::new(HashMap::new()),
            max_sync_calls_per_account: max_sync_calls_per_account.max(1),
            per_account: std::sync::Mutex::new(HashMap::new()),
            rates: std::sync::Mutex::new(HashMap::new()),
            instance_id,
            secrets,
            endpoints: endpoints::cache(),
            handoff,
            backlog: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// What seals and opens the secrets kept in the database.
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    /// How long a claim on a delivery of `mode` lasts: always longer than an attempt's
    /// deadline, so that a delivery in flight is never handed to another worker.
    fn lease(&self, mode: DeliveryMode) -> Duration {
        let deadline = match mode {
            DeliveryMode::Sync => self.settings.sync_timeout,
            _ => self.settings.async_timeout,
        };
        // A sync call's claim is taken by the step that asks for it, before that step's
        // commit and the wait for a slot: the margin covers them.
        self.settings.lease.max(deadline + Duration::from_secs(5))
    }

    /// `now` plus the lease of `mode`.
    fn claim_until(&self, mode: DeliveryMode, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease(mode)).unwrap_or_default()
    }

    /// Releases the claims this instance held when it last stopped (a crash leaves them
    /// behind), so that what was in flight is sent again now rather than when the leases
    /// lapse. On SQLite there is one instance: every claim is released. On PostgreSQL only
    /// those taken under this instance's id; other instances' claims are theirs.
    pub async fn release_stale_claims(&self) -> ApiResult<u64> {
        let mut q = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::ClaimedUntil,
                Option::<chrono::DateTime<Utc>>::None.into(),
            )
            .col_expr(delivery::Column::ClaimedBy, Option::<String>::None.into())
            .filter(delivery::Column::ClaimedUntil.is_not_null());
        if self.db.kind() == DatabaseKind::Postgres {
            q = q.filter(delivery::Column::ClaimedBy.eq(self.instance_id.as_str()));
        }
        let released = q.exec(self.db.writer()).await?.rows_affected;
        if released > 0 {
            tracing::info!(
                instance.id = %self.instance_id,
                claims.released = released,
                "released the delivery claims of this instance's previous run"
            );
        }
        Ok(released)
    }

    /// Tells the worker that deliveries are due now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends one attempt of `d` and returns its outcome. Never fails: every problem (a webhook
    /// gone, a secret unreadable, the network) becomes the attempt's error.
    async fn attempt(&self, d: &delivery::Model, timeout: Duration) -> AttemptOutcome {
        let endpoint = self.endpoint(d.webhook_id).await;
        self.attempt_to(d, endpoint, timeout).await
    }

    /// Sends one attempt of `d` to its (already loaded) endpoint.
    async fn attempt_to(
        &self,
        d: &delivery::Model,
        endpoint: Result<Arc<Endpoint>, String>,
        timeout: Duration,
    ) -> AttemptOutcome {
        let span = tracing::info_span!(
            "webhook.attempt",
            webhook.id = %d.webhook_id,
            delivery.id = %d.id,
            attempt = d.attempt_count + 1,
            mode = ?d.mode,
            status = tracing::field::Empty,
        );
        async {
            let outcome = match endpoint.and_then(|e| e.request(d)) {
                Ok(request) => self.client.send(&request, timeout).await,
                Err(error) => AttemptOutcome::refused(error),
            };
            crate::metrics::attempt(outcome.error.is_none(), outcome.duration);
            let span = tracing::Span::current();
            span.record("status", outcome.status.unwrap_or(0));
            if let Some(error) = &outcome.error {
                tracing::warn!(error, "webhook attempt failed");
            } else {
                tracing::info!(
                    duration_ms = outcome.duration.as_millis() as u64,
                    "webhook attempt done"
                );
            }
            outcome
        }
        .instrument(span)
        .await
    }

    /// Stores an attempt and the delivery's new state in one transaction.
    async fn record(
        &self,
        d: &delivery::Model,
        outcome: &AttemptOutcome,
        status: DeliveryStatus,
        next_attempt_at: Option<chrono::DateTime<Utc>>,
    ) -> ApiResult<delivery::Model> {
        let now = Utc::now();
        let n = d.attempt_count + 1;
        let tx = self.db.write().await?;
        delivery_attempt::Entity::insert(delivery_attempt::ActiveModel::from(attempt_row(
            d, outcome, None, now,
        )))
        .exec_without_returning(&tx.tx)
        .await?;
        delivery::Entity::update(delivery::ActiveModel {
            id: Set(d.id),
            status: Set(status),
            attempt_count: Set(n),
            next_attempt_at: Set(next_attempt_at),
            claimed_until: Set(None),
            claimed_by: Set(None),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec(&tx.tx)
        .await?;
        tx.commit().await?;
        Ok(delivery::Model {
            status,
            attempt_count: n,
            next_attempt_at,
            claimed_until: None,
            claimed_by: None,
            updated_at: now,
            ..d.clone()
        })
    }

    /// When to try again after a retryable failure, or `None` when the schedule is spent.
    fn next_attempt(
        &self,
        attempts_made: i32,
        retry_after: Option<Duration>,
    ) -> Option<chrono::DateTime<Utc>> {
        let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
        let base = *self.settings.retry_schedule.get(index)?;
        // ±10 % jitter, so that deliveries failed together do not retry together.
        let jitter = rand::rng().random_range(0.9..1.1);
        let mut delay = base.mul_f64(jitter);
        if let Some(after) = retry_after {
            delay = delay.max(after.min(MAX_RETRY_AFTER));
        }
        Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
    }

    /// The deadline of an attempt of `d`.
    fn timeout_of(&self, d: &delivery::Model) -> Duration {
        match d.mode {
            DeliveryMode::Sync => self.settings.sync_timeout,
            _ => self.settings.async_timeout,
        }
    }

    /// Claims due deliveries with a lease, so that concurrent workers (other instances) never
    /// take the same one while the lease runs, and a crashed worker's claims lapse. Also
    /// whether due deliveries may have been left in the table for want of room.
    async fn claim(&self, limit: usize) -> ApiResult<(Vec<delivery::Model>, bool)> {
        let now = Utc::now();
        let due = || due(now);
        // Look further than `limit`, then keep only what each webhook has room for (what it
        // can send now and a few rounds more waiting): claiming a saturated endpoint's
        // backlog would only hold it in memory until the claims run down.
        let look = limit * 4;
        let candidates: Vec<(Uuid, Uuid)> = candidates(now, look)
            .into_tuple()
            .all(self.db.conn())
            .await?;
        let seen = candidates.len();
        let mut hooks: Vec<Uuid> = candidates.iter().map(|(_, w)| *w).collect();
        hooks.sort_unstable();
        hooks.dedup();
        let endpoints = self.endpoints(&hooks).await?;
        // Of a webhook with a `maxPerSecond`, no more than that per round either: its pace
        // itself is applied when each is sent, and claiming more would only hold them in
        // memory.
        let mut room: HashMap<Uuid, usize> = hooks
            .iter()
            .map(|&hook| {
                let pace = endpoints
                    .get(&hook)
                    .and_then(|e| e.max_per_second)
                    .and_then(|rate| usize::try_from(rate.max(1)).ok());
                (
                    hook,
                    self.webhook_room(hook).min(pace.unwrap_or(usize::MAX)),
                )
            })
            .collect();
        let ids: Vec<Uuid> = candidates
            .into_iter()
            .filter(|(_, webhook)| match room.get_mut(webhook) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            })
            .map(|(id, _)| id)
            .take(limit)
            .collect();
        let left_behind = seen == look || ids.len() < seen;
        if ids.is_empty() {
            return Ok((Vec::new(), left_behind));
        }
        // A lease shorter than an attempt would hand a delivery still in flight to another
        // worker: it always outlasts the attempt's deadline.
        // Any mode may be due here (a queued redelivery of a sync call): the longer lease.
        let lease = self
            .claim_until(DeliveryMode::Async, now)
            .max(self.claim_until(DeliveryMode::Sync, now));
        // Re-checking `due` in the UPDATE makes the claim atomic: of two workers that selected
        // the same ids, only the first to update gets each row back. One statement: no
        // transaction around it.
        let claimed = delivery::Entity::update_many()
            .col_expr(delivery::Column::ClaimedUntil, lease.into())
            .col_expr(
                delivery::Column::ClaimedBy,
                Some(self.instance_id.clone()).into(),
            )
            .filter(id_in(self.db.kind(), ids))
            .filter(due())
            .exec_with_returning(self.db.writer())
            .await?;
        Ok((claimed, left_behind))
    }

    /// Releases this instance's claims on deliveries (never another instance's).
    async fn unclaim(&self, ids: &[Uuid]) {
        let result = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::ClaimedUntil,
                Option::<chrono::DateTime<Utc>>::None.into(),
            )
            .col_expr(delivery::Column::ClaimedBy, Option::<String>::None.into())
            .filter(id_in(self.db.kind(), ids.to_vec()))
            .filter(delivery::Column::ClaimedBy.eq(self.instance_id.as_str()))
            .exec(self.db.writer())
            .await;
        if let Err(e) = result {
            tracing::warn!(delivery.ids = ?ids, error.cause = ?e, "cannot release claims; they will lapse");
        }
    }

    /// The outbox worker: sends due deliveries with bounded concurrency, overall and per
    /// webhook, until dropped. Tasks in flight are aborted with it; their claims lapse and the
    /// deliveries are sent again.
    pub async fn run_worker(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(RECORD_BATCH * 4);
        tasks.spawn(self.clone().run_dispatcher(done_tx.clone()));
        tasks.spawn(self.clone().run_recorder(done_rx));
        let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY;
        loop {
            while tasks.try_join_next().is_some() {}
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!(error.cause = ?e, "pruning old deliveries failed");
                }
            }
            // Claimed deliveries wait for their slots in memory, like those handed over at
            // insert: a round claims what the hand-over has room for, not only what can be
            // sent this instant, so a busy outbox is not polled a few deliveries at a time.
            let free = self.handoff_room().min(CLAIM_BATCH);
            let mut busy = false;
            // Until this poll says otherwise, there may be due deliveries it cannot take: set
            // before the claim, so that attempts recorded while it runs wake the next one.
            self.backlog
                .store(true, std::sync::atomic::Ordering::Release);
            if free > 0 {
                match self.claim(free).await {
                    Ok((batch, left_behind)) => {
                        busy = batch.len() == free;
                        self.backlog
                            .store(left_behind, std::sync::atomic::Ordering::Release);
                        self.hand_over(batch, "poll");
                    }
                    Err(e) => tracing::error!(error.cause = ?e, "cannot claim deliveries"),
                }
            }
            if !busy {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                }
            }
        }
    }

    /// Deletes finished deliveries older than the retention period.
    async fn prune(&self) -> ApiResult<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(self.settings.retention).unwrap_or_default();
        let result = delivery::Entity::delete_many()
            .filter(delivery::Column::CreatedAt.lt(cutoff))
            .filter(delivery::Column::Status.ne(DeliveryStatus::Pending))
            .exec(self.db.writer())
            .await?;
        Ok(result.rows_affected)
    }
}

/// The log row of an attempt that ended at `now`.
fn attempt_row(
    d: &delivery::Model,
    outcome: &AttemptOutcome,
    notes: Option<String>,
    now: chrono::DateTime<Utc>,
) -> delivery_attempt::Model {
    delivery_attempt::Model {
        id: Uuid::now_v7(),
        delivery_id: d.id,
        n: d.attempt_count + 1,
        at: now - chrono::Duration::from_std(outcome.duration).unwrap_or_default(),
        response_status: outcome.status.map(i32::from),
        duration_ms: i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX),
        error: outcome.error.clone(),
        response_body: outcome.body_excerpt(),
        notes,
    }
}

/// What a sync reply held that the engine skips, for the delivery log.
fn notes_of(outcome: &WebhookOutcome) -> Option<String> {
    let WebhookOutcome::Responses(list) = outcome else {
        return None;
    };
    let skipped: Vec<String> = list
        .iter()
        .filter_map(|i| match i {
            Instruction::Unknown(what) => Some(format!("skipped unknown instruction {what}")),
            _ => None,
        })
        .collect();
    (!skipped.is_empty()).then(|| skipped.join("; "))
}

mod calls;
mod endpoints;
mod handoff;
mod health;
mod log;
mod recorder;
mod slots;
mod succeeded;

pub use calls::Settled;
use endpoints::Endpoint;
pub use handoff::Queued;
use recorder::{Done, RECORD_BATCH};
use slots::{Refusal, Slots};

pub use log::{DeliveryView, attempts, find_delivery, list_deliveries, sample_payload};

#[cfg(test)]
mod tests;
