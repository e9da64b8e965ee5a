//! Webhook delivery: the outbox of async deliveries and its worker, synchronous calls with a
//! deadline, test sends and redeliveries, all recorded attempt by attempt.
use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    Role,
    delivery::{self, DeliveryMode, DeliveryStatus},
    delivery_attempt, webhook,
};
use rand::Rng as _;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument as _;
use uuid::Uuid;

use super::{
    client::{
        AttemptOutcome, ClientConfig, DeliveryClient, Disposition, OutgoingRequest, disposition,
    },
    service::{active_secrets_of, find_webhook, parse_headers},
    signing,
};
use crate::{
    db::Db,
    engine::{Instruction, WebhookOutcome},
    error::{ApiError, ApiResult},
    settings::DeliverySettings,
};

/// Longest `Retry-After` honoured: a receiver cannot park a delivery for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);
/// Most deliveries claimed by one poll.
const CLAIM_BATCH: usize = 100;
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
}

/// The result of a synchronous call, for the conversation engine.
pub struct SyncResult {
    pub delivery_id: Uuid,
    pub outcome: WebhookOutcome,
}

/// Inserts an async delivery into the outbox, inside the caller's transaction; call
/// [`Deliveries::wake`] after the commit so the worker sends it at once.
pub async fn enqueue(
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    webhook_id: Uuid,
    conversation_id: Option<Uuid>,
    block_id: Option<String>,
    payload: Value,
) -> ApiResult<Uuid> {
    let now = Utc::now();
    let id = Uuid::now_v7();
    delivery::Entity::insert(delivery::ActiveModel {
        id: Set(id),
        account_id: Set(account_id),
        webhook_id: Set(webhook_id),
        conversation_id: Set(conversation_id),
        block_id: Set(block_id),
        mode: Set(DeliveryMode::Async),
        status: Set(DeliveryStatus::Pending),
        payload: Set(payload),
        attempt_count: Set(0),
        next_attempt_at: Set(Some(now)),
        claimed_until: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(tx)
    .await?;
    Ok(id)
}

/// The `webhook-id` of a delivery: stable across its retries.
pub fn message_id(delivery_id: Uuid) -> String {
    format!("msg_{}", delivery_id.simple())
}

/// What is needed to call a webhook: its URL, headers and signing secrets.
pub struct Endpoint {
    url: url::Url,
    headers: Vec<(String, String)>,
    secrets: Vec<signing::SigningSecret>,
}

impl Endpoint {
    /// The signed request of a delivery, stamped now.
    fn request(&self, d: &delivery::Model) -> Result<OutgoingRequest, String> {
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let msg_id = message_id(d.id);
        let timestamp = Utc::now().timestamp();
        let signature = signing::signature_header(&self.secrets, &msg_id, timestamp, &body);
        Ok(OutgoingRequest {
            url: self.url.clone(),
            headers: self.headers.clone(),
            body,
            msg_id,
            timestamp,
            signature,
        })
    }
}

/// The endpoints of some webhooks, in two queries whatever their number; a webhook that no
/// longer exists is absent.
async fn endpoints(db: &Db, ids: &[Uuid]) -> ApiResult<HashMap<Uuid, Arc<Endpoint>>> {
    let hooks = webhook::Entity::find()
        .filter(webhook::Column::Id.is_in(ids.iter().copied()))
        .all(db.conn())
        .await?;
    let mut secrets = active_secrets_of(db.conn(), ids).await?;
    let mut out = HashMap::new();
    for hook in hooks {
        let url = url::Url::parse(&hook.url).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored webhook URL is invalid: {e}"))
        })?;
        let headers = parse_headers(&hook.headers)
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let secrets = secrets.remove(&hook.id).unwrap_or_default();
        out.insert(
            hook.id,
            Arc::new(Endpoint {
                url,
                headers,
                secrets,
            }),
        );
    }
    Ok(out)
}

/// An attempt made by the worker, waiting to be recorded.
struct Done {
    delivery: delivery::Model,
    outcome: AttemptOutcome,
    status: DeliveryStatus,
    next_attempt_at: Option<chrono::DateTime<Utc>>,
}

/// Most attempts recorded in one transaction.
const RECORD_BATCH: usize = 256;

impl Deliveries {
    /// The module, with its HTTP client.
    pub fn new(
        db: Db,
        settings: DeliverySettings,
        allow_private: bool,
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
        Ok(Arc::new(Self {
            db,
            client,
            global: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            wake: Notify::new(),
            per_webhook: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Tells the worker that deliveries are due now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends one attempt of `d` and returns its outcome. Never fails: every problem (a webhook
    /// gone, a secret unreadable, the network) becomes the attempt's error.
    async fn attempt(&self, d: &delivery::Model, timeout: Duration) -> AttemptOutcome {
        let endpoint = endpoints(&self.db, &[d.webhook_id])
            .await
            .map(|mut e| e.remove(&d.webhook_id));
        let endpoint = match endpoint {
            Ok(Some(endpoint)) => Ok(endpoint),
            Ok(None) => Err("the webhook was deleted".to_owned()),
            Err(e) => Err(format!("{e:?}")),
        };
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
        notes: Option<String>,
    ) -> ApiResult<delivery::Model> {
        let now = Utc::now();
        let n = d.attempt_count + 1;
        let tx = self.db.write().await?;
        delivery_attempt::Entity::insert(delivery_attempt::ActiveModel::from(attempt_row(
            d, outcome, notes, now,
        )))
        .exec_without_returning(&tx.tx)
        .await?;
        delivery::Entity::update(delivery::ActiveModel {
            id: Set(d.id),
            status: Set(status),
            attempt_count: Set(n),
            next_attempt_at: Set(next_attempt_at),
            claimed_until: Set(None),
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

    /// One async attempt of a claimed delivery, and what follows from it.
    async fn process(&self, d: delivery::Model, endpoint: Result<Arc<Endpoint>, String>) -> Done {
        let outcome = self
            .attempt_to(&d, endpoint, self.settings.async_timeout)
            .await;
        let (status, next_attempt_at) = match disposition(&outcome) {
            Disposition::Succeeded => (DeliveryStatus::Succeeded, None),
            Disposition::Failed => (DeliveryStatus::Failed, None),
            Disposition::Retry { after } => match self.next_attempt(d.attempt_count + 1, after) {
                Some(at) => (DeliveryStatus::Pending, Some(at)),
                None => (DeliveryStatus::Failed, None),
            },
        };
        Done {
            delivery: d,
            outcome,
            status,
            next_attempt_at,
        }
    }

    /// Records finished attempts, many per transaction: under load, one commit serves a whole
    /// batch instead of one each.
    async fn run_recorder(self: Arc<Self>, mut done: tokio::sync::mpsc::Receiver<Done>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while done.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            if let Err(e) = self.record_batch(&batch).await {
                // The claims lapse and the deliveries are sent again: at least once, never lost.
                tracing::error!(error.cause = ?e, count = batch.len(), "cannot record webhook attempts");
            }
            batch.clear();
            // Finished attempts may have made room for due deliveries.
            self.wake();
        }
    }

    async fn record_batch(&self, batch: &[Done]) -> ApiResult<()> {
        let now = Utc::now();
        let tx = self.db.write().await?;
        delivery_attempt::Entity::insert_many(batch.iter().map(|d| {
            delivery_attempt::ActiveModel::from(attempt_row(&d.delivery, &d.outcome, None, now))
        }))
        .exec_without_returning(&tx.tx)
        .await?;
        for d in batch {
            delivery::Entity::update(delivery::ActiveModel {
                id: Set(d.delivery.id),
                status: Set(d.status),
                attempt_count: Set(d.delivery.attempt_count + 1),
                next_attempt_at: Set(d.next_attempt_at),
                claimed_until: Set(None),
                updated_at: Set(now),
                ..Default::default()
            })
            .exec(&tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims due deliveries with a lease, so that concurrent workers (other instances) never
    /// take the same one while the lease runs, and a crashed worker's claims lapse.
    async fn claim(&self, limit: usize) -> ApiResult<Vec<delivery::Model>> {
        let now = Utc::now();
        let due = || {
            Condition::all()
                .add(delivery::Column::Status.eq(DeliveryStatus::Pending))
                .add(delivery::Column::Mode.eq(DeliveryMode::Async))
                .add(delivery::Column::NextAttemptAt.lte(now))
                .add(
                    Condition::any()
                        .add(delivery::Column::ClaimedUntil.is_null())
                        .add(delivery::Column::ClaimedUntil.lt(now)),
                )
        };
        // Look further than `limit`, then keep only what the per-webhook limits let run now:
        // claiming deliveries of a saturated endpoint would only mean releasing them again.
        let candidates: Vec<(Uuid, Uuid)> = delivery::Entity::find()
            .filter(due())
            .order_by_asc(delivery::Column::NextAttemptAt)
            .select_only()
            .column(delivery::Column::Id)
            .column(delivery::Column::WebhookId)
            .limit((limit * 4) as u64)
            .into_tuple()
            .all(self.db.conn())
            .await?;
        let mut room: HashMap<Uuid, usize> = HashMap::new();
        let ids: Vec<Uuid> = candidates
            .into_iter()
            .filter(|(_, webhook)| {
                let left = room
                    .entry(*webhook)
                    .or_insert_with(|| self.webhook_gate(*webhook).available_permits());
                let fits = *left > 0;
                *left = left.saturating_sub(1);
                fits
            })
            .map(|(id, _)| id)
            .take(limit)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A lease shorter than an attempt would hand a delivery still in flight to another
        // worker: it always outlasts the attempt's deadline.
        let lease = self
            .settings
            .lease
            .max(self.settings.async_timeout + Duration::from_secs(1));
        let lease = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let tx = self.db.write().await?;
        // Re-checking `due` in the UPDATE makes the claim atomic: of two workers that selected
        // the same ids, only the first to update gets each row back.
        let claimed = delivery::Entity::update_many()
            .col_expr(delivery::Column::ClaimedUntil, lease.into())
            .filter(delivery::Column::Id.is_in(ids))
            .filter(due())
            .exec_with_returning(&tx.tx)
            .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn unclaim(&self, id: Uuid) {
        let result = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::ClaimedUntil,
                Option::<chrono::DateTime<Utc>>::None.into(),
            )
            .filter(delivery::Column::Id.eq(id))
            .exec(self.db.writer())
            .await;
        if let Err(e) = result {
            tracing::warn!(delivery.id = %id, error.cause = ?e, "cannot release a claim; it will lapse");
        }
    }

    fn webhook_gate(&self, webhook_id: Uuid) -> Arc<Semaphore> {
        let mut map = self.per_webhook.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| {
            Arc::strong_count(s) > 1
                || s.available_permits() < self.settings.per_webhook_concurrency
        });
        map.entry(webhook_id)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.settings.per_webhook_concurrency.max(1)))
            })
            .clone()
    }

    /// The outbox worker: sends due deliveries with bounded concurrency, overall and per
    /// webhook, until dropped. Tasks in flight are aborted with it; their claims lapse and the
    /// deliveries are sent again.
    pub async fn run_worker(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(RECORD_BATCH * 4);
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
            let free = self.global.available_permits().min(CLAIM_BATCH);
            let mut busy = false;
            if free > 0 {
                match self.claim(free).await {
                    Ok(batch) => {
                        busy = batch.len() == free;
                        let mut ids: Vec<Uuid> = batch.iter().map(|d| d.webhook_id).collect();
                        ids.sort_unstable();
                        ids.dedup();
                        let loaded = endpoints(&self.db, &ids)
                            .await
                            .map_err(|e| format!("{e:?}"));
                        for d in batch {
                            let Ok(global) = self.global.clone().try_acquire_owned() else {
                                self.unclaim(d.id).await;
                                continue;
                            };
                            let Ok(gate) = self.webhook_gate(d.webhook_id).try_acquire_owned()
                            else {
                                // This endpoint is saturated: leave the delivery for a later
                                // round rather than hold a slot others could use.
                                self.unclaim(d.id).await;
                                continue;
                            };
                            let endpoint = match &loaded {
                                Ok(map) => map
                                    .get(&d.webhook_id)
                                    .cloned()
                                    .ok_or_else(|| "the webhook was deleted".to_owned()),
                                Err(e) => Err(e.clone()),
                            };
                            let (this, done_tx) = (self.clone(), done_tx.clone());
                            tasks.spawn(async move {
                                let done = this.process(d, endpoint).await;
                                drop((global, gate));
                                // Only fails when the recorder is gone, i.e. shutting down; the
                                // claim then lapses and the delivery is sent again.
                                let _ = done_tx.send(done).await;
                            });
                        }
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

    /// Calls a webhook now and waits (up to the sync deadline) for its reply, recording it as
    /// a SYNC delivery. Failures are results, not errors: the conversation goes on.
    pub async fn call_sync(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        conversation_id: Option<Uuid>,
        block_id: Option<String>,
        payload: Value,
    ) -> ApiResult<SyncResult> {
        let d = self
            .insert_now(
                account_id,
                webhook_id,
                conversation_id,
                block_id,
                DeliveryMode::Sync,
                payload,
            )
            .await?;
        let outcome = self.attempt(&d, self.settings.sync_timeout).await;
        let result =
            if outcome.is_success() {
                WebhookOutcome::from_body(&outcome.body)
            } else {
                WebhookOutcome::Failed(outcome.error.clone().unwrap_or_else(
                    || match outcome.status {
                        Some(s) => format!("the endpoint answered {s}"),
                        None => "no response".into(),
                    },
                ))
            };
        let notes = notes_of(&result);
        let status = match result {
            WebhookOutcome::Failed(_) => DeliveryStatus::Failed,
            _ => DeliveryStatus::Succeeded,
        };
        self.record(&d, &outcome, status, None, notes).await?;
        Ok(SyncResult {
            delivery_id: d.id,
            outcome: result,
        })
    }

    async fn insert_now(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        conversation_id: Option<Uuid>,
        block_id: Option<String>,
        mode: DeliveryMode,
        payload: Value,
    ) -> ApiResult<delivery::Model> {
        let now = Utc::now();
        let d = delivery::Model {
            id: Uuid::now_v7(),
            account_id,
            webhook_id,
            conversation_id,
            block_id,
            mode,
            status: DeliveryStatus::Pending,
            payload,
            attempt_count: 0,
            next_attempt_at: None,
            claimed_until: None,
            created_at: now,
            updated_at: now,
        };
        delivery::Entity::insert(delivery::ActiveModel::from(d.clone()))
            .exec_without_returning(self.db.writer())
            .await?;
        Ok(d)
    }

    /// Sends the sample payload to a webhook now (ADMIN) and returns the recorded delivery.
    pub async fn test_webhook(&self, viewer: Uuid, webhook_id: Uuid) -> ApiResult<delivery::Model> {
        let view = find_webhook(self.db.conn(), viewer, webhook_id, Role::Admin).await?;
        let d = self
            .insert_now(
                view.webhook.account_id,
                webhook_id,
                None,
                None,
                DeliveryMode::Test,
                sample_payload(&view.webhook),
            )
            .await?;
        let outcome = self.attempt(&d, self.settings.async_timeout).await;
        let status = if outcome.is_success() {
            DeliveryStatus::Succeeded
        } else {
            DeliveryStatus::Failed
        };
        self.record(&d, &outcome, status, None, None).await
    }

    /// Sends any delivery again now, as a new attempt (ADMIN); a success settles it, a failure
    /// leaves a pending delivery on its schedule.
    pub async fn redeliver(&self, viewer: Uuid, delivery_id: Uuid) -> ApiResult<delivery::Model> {
        let d = find_delivery(&self.db, viewer, delivery_id, Role::Admin)
            .await?
            .delivery;
        let timeout = match d.mode {
            DeliveryMode::Sync => self.settings.sync_timeout,
            _ => self.settings.async_timeout,
        };
        let outcome = self.attempt(&d, timeout).await;
        let (status, next) = if outcome.is_success() {
            (DeliveryStatus::Succeeded, None)
        } else if d.status == DeliveryStatus::Pending {
            (DeliveryStatus::Pending, d.next_attempt_at)
        } else {
            (DeliveryStatus::Failed, None)
        };
        self.record(&d, &outcome, status, next, None).await
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

/// The contract's payload shape with placeholder answers, for `testWebhook`.
pub fn sample_payload(hook: &webhook::Model) -> Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let answers = json!({ "email": "jo@example.com", "phone_number": "+33 6 12 34 56 78" });
    json!({
        "email": "jo@example.com",
        "phone_number": "+33 6 12 34 56 78",
        "conversation": {
            "id": "00000000-0000-0000-0000-000000000000",
            "bot_id": "00000000-0000-0000-0000-000000000000",
            "bot_name": "Sample bot",
            "account_id": hook.account_id.to_string(),
            "started_at": now,
            "answers": answers,
            "variables": answers,
            "messages": [
                { "seq": 1, "from": "bot", "text": "Hi! What is your email?", "at": now },
                { "seq": 2, "from": "visitor", "text": "jo@example.com", "at": now }
            ],
            "test": true
        }
    })
}

/// A delivery with the viewer's role.
pub struct DeliveryView {
    pub delivery: delivery::Model,
    pub role: Role,
}

/// A delivery the viewer may see with at least `at_least`, or NOT_FOUND.
pub async fn find_delivery(
    db: &Db,
    viewer: Uuid,
    id: Uuid,
    at_least: Role,
) -> ApiResult<DeliveryView> {
    let d = delivery::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let view = find_webhook(db.conn(), viewer, d.webhook_id, at_least)
        .await
        .map_err(|e| e.not_found_as("delivery"))?;
    Ok(DeliveryView {
        delivery: d,
        role: view.role,
    })
}

/// A page of a webhook's deliveries, newest first, after the cursor `after` (a delivery id).
pub async fn list_deliveries(
    db: &Db,
    webhook_id: Uuid,
    first: u64,
    after: Option<Uuid>,
    status: Option<DeliveryStatus>,
) -> ApiResult<(Vec<delivery::Model>, bool)> {
    let mut q = delivery::Entity::find()
        .filter(delivery::Column::WebhookId.eq(webhook_id))
        .order_by_desc(delivery::Column::Id);
    if let Some(after) = after {
        q = q.filter(delivery::Column::Id.lt(after));
    }
    if let Some(status) = status {
        q = q.filter(delivery::Column::Status.eq(status));
    }
    let mut rows = q.limit(first + 1).all(db.conn()).await?;
    let more = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok((rows, more))
}

/// The attempts of a delivery, oldest first.
pub async fn attempts(db: &Db, delivery_id: Uuid) -> ApiResult<Vec<delivery_attempt::Model>> {
    Ok(delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::N)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}
