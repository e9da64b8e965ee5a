//! Calls made on request rather than by the worker: a visitor's sync call, a test send, a
//! redelivery, a recovery. Each takes the same slots as the worker's sends.
use entity::Role;
use sea_orm::sea_query::Expr;

use super::*;
use crate::webhooks::service::find_webhook;

/// A call made on request, before it has a row: what a sent call and a refused one record.
pub(super) struct NewCall {
    pub(super) account_id: Uuid,
    pub(super) webhook_id: Uuid,
    pub(super) conversation_id: Option<Uuid>,
    pub(super) block_id: Option<String>,
    pub(super) mode: DeliveryMode,
    pub(super) payload: Value,
}

impl Deliveries {
    /// The PENDING row of `call` at `now`; claimed by this instance when `claimed`.
    pub(super) fn pending_row(
        &self,
        call: NewCall,
        claimed: bool,
        now: chrono::DateTime<Utc>,
    ) -> delivery::Model {
        delivery::Model {
            id: Uuid::now_v7(),
            account_id: call.account_id,
            webhook_id: call.webhook_id,
            conversation_id: call.conversation_id,
            block_id: call.block_id,
            mode: call.mode,
            status: DeliveryStatus::Pending,
            payload: call.payload,
            attempt_count: 0,
            next_attempt_at: None,
            claimed_until: claimed.then(|| self.claim_until(call.mode, now)),
            claimed_by: claimed.then(|| self.instance_id.clone()),
            created_at: now,
            updated_at: now,
        }
    }

    /// The row of a sync call that a conversation step asks for, PENDING and claimed by
    /// this instance from the start. The step inserts it in its own transaction (with its
    /// other inserts), so the conversation never waits on a call that has no row, and the
    /// call costs no write of its own.
    pub fn sync_row(
        &self,
        account_id: Uuid,
        webhook_id: Uuid,
        conversation_id: Uuid,
        block_id: String,
        payload: Value,
        now: chrono::DateTime<Utc>,
    ) -> delivery::Model {
        let call = NewCall {
            account_id,
            webhook_id,
            conversation_id: Some(conversation_id),
            block_id: Some(block_id),
            mode: DeliveryMode::Sync,
            payload,
        };
        self.pending_row(call, true, now)
    }

    /// Calls the webhook of `d` (a [`Self::sync_row`] already stored) now and waits, up to
    /// the sync deadline, for its reply. Nothing is written here: the outcome for the
    /// conversation, and the [`Settled`] result that the conversation's next step writes
    /// with its own changes. Failures are results, not errors: the conversation goes on. The
    /// call first takes its slots (account, webhook, global), waiting [`Self::slot_wait`] at
    /// most out of its deadline; refused, it fails naming the limit.
    pub async fn call_sync(&self, d: &delivery::Model) -> (WebhookOutcome, Settled) {
        let started = tokio::time::Instant::now();
        let slots = match self
            .admit(Some(d.account_id), d.webhook_id, self.slot_wait())
            .await
        {
            Ok(slots) => slots,
            Err(refusal) => {
                let outcome = refused(&refusal, started.elapsed());
                super::slots::log_refusal(d, &refusal, outcome.duration);
                let settled = Settled::of(d, &outcome, DeliveryStatus::Failed, None);
                return (WebhookOutcome::Failed(refusal.message()), settled);
            }
        };
        // The wait for a slot counts against the deadline: a visitor's turn is no longer for it.
        let timeout = self
            .settings
            .sync_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let outcome = self.attempt(d, timeout).await;
        drop(slots);
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
        let status = match result {
            WebhookOutcome::Failed(_) => DeliveryStatus::Failed,
            _ => DeliveryStatus::Succeeded,
        };
        // A 2xx whose reply cannot be used is FAILED with no error of its own: the notes say why.
        let notes = match &result {
            WebhookOutcome::Failed(reason) if outcome.is_success() => {
                Some(format!("the reply was not used: {reason}"))
            }
            _ => notes_of(&result),
        };
        let settled = Settled::of(d, &outcome, status, notes);
        (result, settled)
    }

    /// Writes `settled` in a transaction of its own: when the step that was to take it
    /// failed, the call's result is still recorded (once; see [`Settled::write`]).
    pub async fn settle_alone(&self, settled: &Settled) {
        let written = async {
            let tx = self.db.write().await?;
            settled.write(&tx.tx).await?;
            tx.commit().await?;
            ApiResult::Ok(())
        }
        .await;
        if let Err(e) = written {
            tracing::error!(
                delivery.id = %settled.delivery_id(),
                error = e.message(),
                "cannot record a sync call's result; the sweeper fails the delivery later"
            );
        }
    }

    /// The result of a sync call of `d` that is not made, because `reason` (a turn past its
    /// calls, say): a failed attempt that says why.
    pub fn not_called(d: &delivery::Model, reason: &str) -> Settled {
        let outcome = AttemptOutcome {
            status: None,
            duration: Duration::ZERO,
            error: Some(reason.to_owned()),
            body: Vec::new(),
            body_truncated: false,
            retry_after: None,
        };
        Settled::of(d, &outcome, DeliveryStatus::Failed, None)
    }

    /// The row of a call about to be made, claimed by this instance from the start: a call in
    /// flight is this instance's, not the worker's, a redelivery's or a sweeper's.
    pub(super) async fn insert_now(&self, call: NewCall) -> ApiResult<delivery::Model> {
        let d = self.pending_row(call, true, Utc::now());
        delivery::Entity::insert(delivery::ActiveModel::from(d.clone()))
            .exec_without_returning(self.db.writer())
            .await?;
        Ok(d)
    }

    /// Sends the sample payload to a webhook now (ADMIN) and returns the recorded delivery.
    /// It takes the webhook's and the global slot like any call, waiting [`Self::slot_wait`]
    /// at most; refused, it is recorded as a failed delivery naming the limit.
    pub async fn test_webhook(&self, viewer: Uuid, webhook_id: Uuid) -> ApiResult<delivery::Model> {
        let view = find_webhook(self.db.conn(), viewer, webhook_id, Role::Admin).await?;
        let call = NewCall {
            account_id: view.webhook.account_id,
            webhook_id,
            conversation_id: None,
            block_id: None,
            mode: DeliveryMode::Test,
            payload: sample_payload(&view.webhook),
        };
        let started = tokio::time::Instant::now();
        let slots = match self.admit(None, webhook_id, self.slot_wait()).await {
            Ok(slots) => slots,
            Err(refusal) => return self.record_refusal(call, refusal, started.elapsed()).await,
        };
        let d = self.insert_now(call).await?;
        let outcome = self.attempt(&d, self.settings.async_timeout).await;
        drop(slots);
        let status = if outcome.is_success() {
            DeliveryStatus::Succeeded
        } else {
            DeliveryStatus::Failed
        };
        self.record(&d, &outcome, status, None).await
    }

    /// Sends any delivery again now, as a new attempt (ADMIN); a success settles it, a failure
    /// leaves a pending delivery on its schedule. When the webhook's or the global limit is
    /// full, the delivery is queued instead: PENDING and due now, sent by the worker as soon as
    /// a slot frees up (a queued SYNC or TEST delivery gets that one attempt, no retries).
    pub async fn redeliver(&self, viewer: Uuid, delivery_id: Uuid) -> ApiResult<delivery::Model> {
        let d = find_delivery(&self.db, viewer, delivery_id, Role::Admin)
            .await?
            .delivery;
        // Claimed first, like the worker claims: a delivery that the worker, a sync call or
        // another redelivery holds is in flight, and is never sent twice at once.
        let d = self.claim_one(&d).await?.ok_or_else(|| {
            ApiError::Conflict(
                "this delivery is being sent right now; try again when it finishes".into(),
            )
        })?;
        let slots = match self.admit(None, d.webhook_id, Duration::ZERO).await {
            Ok(slots) => slots,
            Err(refusal) => return self.queue_redelivery(d, refusal).await,
        };
        let outcome = self.attempt(&d, self.timeout_of(&d)).await;
        drop(slots);
        let (status, next) = if outcome.is_success() {
            (DeliveryStatus::Succeeded, None)
        } else if d.status == DeliveryStatus::Pending {
            (DeliveryStatus::Pending, d.next_attempt_at)
        } else {
            (DeliveryStatus::Failed, None)
        };
        self.record(&d, &outcome, status, next).await
    }

    /// Puts every FAILED delivery of a webhook created at or after `since` back in the
    /// outbox, due now (ADMIN); how many. A delivery that is pending (or held by a live call)
    /// is left alone, so nothing is sent twice. Each gets one more attempt, or its remaining
    /// retries.
    pub async fn recover(
        &self,
        viewer: Uuid,
        webhook_id: Uuid,
        since: chrono::DateTime<Utc>,
    ) -> ApiResult<u64> {
        find_webhook(self.db.conn(), viewer, webhook_id, Role::Admin).await?;
        let now = Utc::now();
        let done = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::Status,
                sea_orm::sea_query::Expr::value(DeliveryStatus::Pending),
            )
            .col_expr(delivery::Column::NextAttemptAt, Some(now).into())
            .col_expr(delivery::Column::UpdatedAt, now.into())
            .filter(delivery::Column::WebhookId.eq(webhook_id))
            .filter(super::failed())
            .filter(delivery::Column::CreatedAt.gte(since))
            .filter(
                Condition::any()
                    .add(delivery::Column::ClaimedUntil.is_null())
                    .add(delivery::Column::ClaimedUntil.lt(now)),
            )
            .exec(self.db.writer())
            .await?;
        if done.rows_affected > 0 {
            self.wake();
        }
        Ok(done.rows_affected)
    }

    /// Claims one delivery unless someone holds a live claim on it; the claimed row.
    pub(super) async fn claim_one(
        &self,
        d: &delivery::Model,
    ) -> ApiResult<Option<delivery::Model>> {
        let now = Utc::now();
        let tx = self.db.write().await?;
        let mut claimed = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::ClaimedUntil,
                Some(self.claim_until(d.mode, now)).into(),
            )
            .col_expr(
                delivery::Column::ClaimedBy,
                Some(self.instance_id.clone()).into(),
            )
            .filter(delivery::Column::Id.eq(d.id))
            .filter(
                Condition::any()
                    .add(delivery::Column::ClaimedUntil.is_null())
                    .add(delivery::Column::ClaimedUntil.lt(now)),
            )
            .exec_with_returning(&tx.tx)
            .await?;
        tx.commit().await?;
        Ok(claimed.pop())
    }

    /// Puts a delivery back in the outbox, due now, for the worker to send when a slot frees.
    pub(super) async fn queue_redelivery(
        &self,
        d: delivery::Model,
        refusal: Refusal,
    ) -> ApiResult<delivery::Model> {
        let now = Utc::now();
        delivery::Entity::update(delivery::ActiveModel {
            id: Set(d.id),
            status: Set(DeliveryStatus::Pending),
            next_attempt_at: Set(Some(now)),
            claimed_until: Set(None),
            claimed_by: Set(None),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec(self.db.writer())
        .await?;
        tracing::info!(
            account.id = %d.account_id,
            webhook.id = %d.webhook_id,
            delivery.id = %d.id,
            delivery.mode = ?d.mode,
            limit.name = refusal.name(),
            limit.value = refusal.value(),
            "redelivery queued: a concurrency limit is full"
        );
        self.wake();
        Ok(delivery::Model {
            status: DeliveryStatus::Pending,
            next_attempt_at: Some(now),
            claimed_until: None,
            claimed_by: None,
            updated_at: now,
            ..d
        })
    }
}

/// What a refusal by a limit records as the attempt.
pub(super) fn refused(refusal: &Refusal, waited: Duration) -> AttemptOutcome {
    AttemptOutcome {
        status: None,
        duration: waited,
        error: Some(refusal.message()),
        body: Vec::new(),
        body_truncated: false,
        retry_after: None,
    }
}

/// A sync call's result, to be written by the conversation step that takes it: its attempt,
/// and its delivery settled with the claim released (from then on, a redelivery or a
/// recovery may take it).
#[derive(Clone, Debug)]
pub struct Settled {
    attempt: delivery_attempt::Model,
    status: DeliveryStatus,
    at: chrono::DateTime<Utc>,
}

impl Settled {
    fn of(
        d: &delivery::Model,
        outcome: &AttemptOutcome,
        status: DeliveryStatus,
        notes: Option<String>,
    ) -> Self {
        let at = Utc::now();
        Self {
            attempt: attempt_row(d, outcome, notes, at),
            status,
            at,
        }
    }

    /// The delivery's id.
    pub fn delivery_id(&self) -> Uuid {
        self.attempt.delivery_id
    }

    /// The attempt it records (its `n` is the delivery's attempt count once settled).
    pub fn attempt(&self) -> &delivery_attempt::Model {
        &self.attempt
    }

    /// The delivery's status once settled.
    pub fn status(&self) -> DeliveryStatus {
        self.status
    }

    /// When it was settled: the delivery's `updated_at`.
    pub fn at(&self) -> chrono::DateTime<Utc> {
        self.at
    }

    /// Writes the attempt and the delivery's result in `tx`, unless the delivery is gone
    /// (its webhook deleted meanwhile) or already settled: writing it twice is harmless.
    /// (PostgreSQL's quick turns write the same with their one statement.)
    pub async fn write(&self, tx: &impl ConnectionTrait) -> ApiResult<()> {
        let none = Option::<chrono::DateTime<Utc>>::None;
        let settled = delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(self.status))
            .col_expr(delivery::Column::AttemptCount, Expr::value(self.attempt.n))
            .col_expr(delivery::Column::NextAttemptAt, Expr::value(none))
            .col_expr(delivery::Column::ClaimedUntil, Expr::value(none))
            .col_expr(
                delivery::Column::ClaimedBy,
                Expr::value(Option::<String>::None),
            )
            .col_expr(delivery::Column::UpdatedAt, Expr::value(self.at))
            .filter(delivery::Column::Id.eq(self.attempt.delivery_id))
            .filter(delivery::Column::AttemptCount.lt(self.attempt.n))
            .exec(tx)
            .await?;
        if settled.rows_affected > 0 {
            delivery_attempt::Entity::insert(delivery_attempt::ActiveModel::from(
                self.attempt.clone(),
            ))
            .exec_without_returning(tx)
            .await?;
        }
        Ok(())
    }
}
