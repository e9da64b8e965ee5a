//! The worker's second half: each attempt's outcome decided, and finished attempts recorded,
//! many per transaction.
use super::*;

/// An attempt made by the worker, waiting to be recorded.
#[derive(Clone)]
pub(super) struct Done {
    pub(super) delivery: delivery::Model,
    pub(super) outcome: AttemptOutcome,
    pub(super) status: DeliveryStatus,
    pub(super) next_attempt_at: Option<chrono::DateTime<Utc>>,
}

/// Most attempts recorded in one transaction.
pub(super) const RECORD_BATCH: usize = 256;

impl Deliveries {
    /// One attempt of a claimed delivery, and what follows from it. Only async deliveries are
    /// retried on their schedule; a queued redelivery of a SYNC or TEST one gets one attempt.
    pub(super) async fn process(
        &self,
        d: delivery::Model,
        endpoint: Result<Arc<Endpoint>, String>,
    ) -> Done {
        let outcome = self.attempt_to(&d, endpoint, self.timeout_of(&d)).await;
        let (status, next_attempt_at) = match disposition(&outcome) {
            Disposition::Succeeded => (DeliveryStatus::Succeeded, None),
            Disposition::Failed => (DeliveryStatus::Failed, None),
            Disposition::Retry { .. } if d.mode != DeliveryMode::Async => {
                (DeliveryStatus::Failed, None)
            }
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
    pub(super) async fn run_recorder(self: Arc<Self>, mut done: tokio::sync::mpsc::Receiver<Done>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while done.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            // Failures may have queued lifecycle events (`delivery.failed`,
            // `webhook.disabled`) in the table, and a retry may be due at once (a schedule
            // that starts at zero): the poll takes them now, not at its next tick.
            let unsettled = batch.iter().any(|d| d.status != DeliveryStatus::Succeeded);
            let shared: Arc<[Done]> = std::mem::take(&mut batch).into();
            if let Err(e) = self.record_batch(shared.clone()).await {
                if shared.len() == 1 {
                    // The claim lapses and the delivery is sent again: at least once, never
                    // lost.
                    tracing::error!(error.cause = ?e, delivery.id = %shared[0].delivery.id, "cannot record a webhook attempt");
                } else if refused_whole(&e) {
                    // One bad row (a delivery deleted with its webhook meanwhile) must not
                    // fail the others: record them one by one.
                    tracing::warn!(error.cause = ?e, count = shared.len(), "cannot record webhook attempts together; recording them one by one");
                    for one in shared.iter() {
                        let one: Arc<[Done]> = Arc::new([one.clone()]);
                        if let Err(e) = self.record_batch(one.clone()).await {
                            tracing::error!(error.cause = ?e, delivery.id = %one[0].delivery.id, "cannot record a webhook attempt");
                        }
                    }
                } else {
                    // A lost connection or an unread reply may have come after the commit:
                    // recorded again, each attempt would count twice. (And with no connection
                    // to be had, each of them would wait for one in turn.) Unrecorded, their
                    // claims lapse and the deliveries are sent again: at least once.
                    tracing::error!(error.cause = ?e, count = shared.len(), "webhook attempts recorded together may or may not have been recorded");
                }
            }
            // Finished attempts made room for the due deliveries the last poll left behind.
            if unsettled || self.backlog.load(std::sync::atomic::Ordering::Acquire) {
                self.wake();
            }
        }
    }

    /// Records a batch in one transaction (on PostgreSQL, a batch of successes in one
    /// statement: see [`succeeded`]). It runs where conversation steps are written (see
    /// [`crate::db::Db::write_grouped`]): on SQLite, in the writer thread's next batch, so it
    /// never holds the one writing connection across hops through the request runtime while
    /// the steps wait for it.
    pub(super) async fn record_batch(self: &Arc<Self>, batch: Arc<[Done]>) -> ApiResult<()> {
        // Successes (the common case) have nothing to decide: on PostgreSQL, one statement.
        if batch.iter().all(|d| d.status == DeliveryStatus::Succeeded) {
            let successes = batch.clone();
            let recorded = self
                .db
                .on_steps(move |pool| Box::pin(succeeded::record(pool, successes, Utc::now())))
                .await;
            if let Some(recorded) = recorded {
                return Ok(recorded?);
            }
        }
        let this = self.clone();
        let disabled = self
            .db
            .write_grouped(move |tx| Box::pin(async move { this.record_in(tx, &batch).await }))
            .await?;
        // Their deliveries are held from now on, also those waiting in memory.
        for hook in disabled {
            self.forget_endpoint(hook);
        }
        Ok(())
    }

    /// [`Self::record_batch`]'s writes in `tx`; the webhooks it disabled.
    pub(super) async fn record_in(
        &self,
        tx: &DatabaseTransaction,
        batch: &[Done],
    ) -> ApiResult<Vec<Uuid>> {
        let now = Utc::now();
        delivery_attempt::Entity::insert_many(batch.iter().map(|d| {
            delivery_attempt::ActiveModel::from(attempt_row(&d.delivery, &d.outcome, None, now))
        }))
        .exec_without_returning(tx)
        .await?;
        // Finished deliveries (the common case) are updated in one statement per status;
        // only those scheduled for a retry, each at its own time, one by one.
        let mut finished: HashMap<DeliveryStatus, Vec<Uuid>> = HashMap::new();
        for d in batch {
            if d.next_attempt_at.is_none() {
                finished.entry(d.status).or_default().push(d.delivery.id);
                continue;
            }
            delivery::Entity::update(delivery::ActiveModel {
                id: Set(d.delivery.id),
                status: Set(d.status),
                attempt_count: Set(d.delivery.attempt_count + 1),
                next_attempt_at: Set(d.next_attempt_at),
                claimed_until: Set(None),
                claimed_by: Set(None),
                updated_at: Set(now),
                ..Default::default()
            })
            .exec(tx)
            .await?;
        }
        for (status, ids) in finished {
            use sea_orm::sea_query::{Expr, ExprTrait as _};
            // The claim keeps every other attempt of these deliveries out while this one
            // runs, so incrementing in SQL gives the count the attempt was numbered with.
            delivery::Entity::update_many()
                .col_expr(delivery::Column::Status, Expr::value(status))
                .col_expr(
                    delivery::Column::AttemptCount,
                    Expr::col(delivery::Column::AttemptCount).add(1),
                )
                .col_expr(
                    delivery::Column::NextAttemptAt,
                    Option::<chrono::DateTime<Utc>>::None.into(),
                )
                .col_expr(
                    delivery::Column::ClaimedUntil,
                    Option::<chrono::DateTime<Utc>>::None.into(),
                )
                .col_expr(delivery::Column::ClaimedBy, Option::<String>::None.into())
                .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
                .filter(id_in(self.db.kind(), ids))
                .exec(tx)
                .await?;
        }
        let disabled = self.track_health_batch(tx, batch, now).await?;
        for d in batch {
            if d.status == DeliveryStatus::Failed
                && d.delivery.mode == DeliveryMode::Async
                && !(d.delivery.block_id.is_none()
                    && d.delivery.payload.get("type").and_then(|t| t.as_str())
                        == Some(crate::lifecycle::DELIVERY_FAILED))
            {
                let hooks = crate::lifecycle::subscribers(
                    tx,
                    d.delivery.account_id,
                    crate::lifecycle::DELIVERY_FAILED,
                )
                .await?;
                let data = serde_json::json!({
                    "delivery_id": d.delivery.id,
                    "webhook_id": d.delivery.webhook_id,
                    "conversation_id": d.delivery.conversation_id,
                    "event_type": d.delivery.payload.get("type"),
                    "attempts": d.delivery.attempt_count + 1,
                    "last_status": d.outcome.status,
                    "last_error": d.outcome.error,
                });
                crate::lifecycle::enqueue(
                    tx,
                    d.delivery.account_id,
                    &hooks,
                    d.delivery.conversation_id,
                    crate::lifecycle::DELIVERY_FAILED,
                    data,
                )
                .await?;
            }
        }
        Ok(disabled)
    }
}

/// Whether recording a batch failed with nothing of it written (the database refused it,
/// see [`crate::db::refused_by_server`]), so that it may be recorded again in parts.
pub(super) fn refused_whole(e: &ApiError) -> bool {
    matches!(e, ApiError::Internal(e) if e.downcast_ref::<sea_orm::DbErr>().is_some_and(crate::db::refused_by_server))
}
