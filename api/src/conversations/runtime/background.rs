//! The runtime's background work: ending pauses on time (WAIT blocks, webhook `wait`s), marking
//! idle conversations abandoned, and resuming conversations whose sync call a crash cut off.
//!
//! A pause is stored as `resume_at` on the conversation row, so it survives a restart. Two
//! paths end it: a local timer armed by the step that began it (accurate to the millisecond)
//! and a poll of due rows every [`POLL`] (after a restart, or for another instance's pauses).
//! Either path first **claims** the continuation with a conditional update (`resume_claimed_by`
//! = this instance, `resume_claimed_until` = now + [`CLAIM_LEASE`], only where the row is due
//! and no live claim holds it), so that of several instances sharing PostgreSQL one alone goes
//! on. The step itself then locks the row, checks again that it is still due, and clears
//! `resume_at` and the claim in the same transaction; the engine refuses a `Resume` that is not
//! ending a pause. A continuation never runs twice, and one whose instance crashed is taken by
//! another once the lease lapses (or by the same instance as soon as it restarts).
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entity::{
    conversation::{self, ConversationStatus},
    delivery::{self, DeliveryMode, DeliveryStatus},
};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Runtime, Step};
use crate::{
    engine::{Input, State, WebhookOutcome},
    error::ApiResult,
    lifecycle,
    settings::DatabaseKind,
    webhooks::delivery as deliveries,
};

/// How often due pauses are looked for in the database.
const POLL: Duration = Duration::from_secs(1);
/// How long a claim on a continuation holds before another instance may take it.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Due pauses taken per poll.
const POLL_BATCH: u64 = 100;

type Armed = (Uuid, DateTime<Utc>);

/// Pauses to end on time: the steps that begin them send their due times here, and
/// [`Runtime::run_scheduler`] sleeps until each.
pub(super) struct Timers {
    tx: mpsc::UnboundedSender<Armed>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Armed>>>,
}

impl Default for Timers {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Timers {
    /// Ends the pause of `conversation` at `due`.
    pub(super) fn arm(&self, conversation: Uuid, due: DateTime<Utc>) {
        // Without a running scheduler (a closed channel), the poll of another instance, or of
        // this one after a restart, ends the pause: nothing is lost.
        let _ = self.tx.send((conversation, due));
    }

    fn take(&self) -> Option<mpsc::UnboundedReceiver<Armed>> {
        self.rx.lock().ok().and_then(|mut rx| rx.take())
    }
}

impl Runtime {
    /// Ends pauses when they are due, until dropped: local timers for the pauses this
    /// instance began, and a poll of the database for every other due one.
    pub async fn run_scheduler(self: Arc<Self>) {
        let Some(mut armed) = self.timers.take() else {
            tracing::error!("the pause scheduler runs once per runtime");
            return;
        };
        // Claims this instance held when it stopped are free again now, not at their lapse.
        if let Err(e) = conversation::Entity::update_many()
            .col_expr(
                conversation::Column::ResumeClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(conversation::Column::ResumeClaimedBy.eq(self.instance_id.as_str()))
            .exec(self.db.writer())
            .await
        {
            tracing::warn!(error = %e, "cannot release this instance's pause claims");
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Timers and continuations live in this set, so that dropping the scheduler (a
        // shutdown, a crash in tests) stops them all: what was pending is the poll's after a
        // restart.
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Some((id, due)) = armed.recv() => {
                    let this = self.clone();
                    tasks.spawn(async move {
                        let wait = (due - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await;
                        this.resume_if_due(id).await;
                    });
                }
                _ = tick.tick() => match self.due().await {
                    Ok(due) => {
                        for id in due {
                            let this = self.clone();
                            // Each on its own: a sync webhook after a pause must not hold
                            // up the others.
                            tasks.spawn(async move { this.resume_if_due(id).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = e.message(), "cannot look for due pauses"),
                },
                Some(_) = tasks.join_next() => {}
            }
        }
    }

    /// Conversations whose pause is due and unclaimed, the longest due first.
    async fn due(&self) -> ApiResult<Vec<Uuid>> {
        let now = Utc::now();
        Ok(conversation::Entity::find()
            .filter(conversation::Column::ResumeAt.lte(now))
            .filter(
                Condition::any()
                    .add(conversation::Column::ResumeClaimedUntil.is_null())
                    .add(conversation::Column::ResumeClaimedUntil.lt(now)),
            )
            .order_by_asc(conversation::Column::ResumeAt)
            .select_only()
            .column(conversation::Column::Id)
            .limit(POLL_BATCH)
            .into_tuple()
            .all(self.db.conn())
            .await?)
    }

    /// Claims the continuation of `id` and, if this instance got it, ends its pause.
    async fn resume_if_due(self: &Arc<Self>, id: Uuid) {
        match self.claim_resume(id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(conversation.id = %id, error = e.message(), "cannot claim a due pause");
                return;
            }
        }
        let step = Step {
            resume: true,
            ..Step::default()
        };
        if let Err(e) = self.drive(id, Input::Resume, step).await {
            tracing::warn!(conversation.id = %id, error = e.message(), "cannot end a pause");
            // The step did not commit (a busy database, say): let the next poll try again
            // rather than wait for the lease to lapse.
            let released = conversation::Entity::update_many()
                .col_expr(
                    conversation::Column::ResumeClaimedUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(conversation::Column::Id.eq(id))
                .filter(conversation::Column::ResumeClaimedBy.eq(self.instance_id.as_str()))
                .exec(self.db.writer())
                .await;
            if let Err(e) = released {
                tracing::warn!(conversation.id = %id, error = %e, "cannot release a pause claim");
            }
        }
    }

    /// Takes the claim on a due, unclaimed continuation; `false` if it is not due (or no
    /// longer pausing) or another instance holds it.
    async fn claim_resume(&self, id: Uuid) -> ApiResult<bool> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(CLAIM_LEASE).unwrap_or_default();
        let claimed = conversation::Entity::update_many()
            .col_expr(
                conversation::Column::ResumeClaimedBy,
                Expr::value(Some(self.instance_id.clone())),
            )
            .col_expr(
                conversation::Column::ResumeClaimedUntil,
                Expr::value(Some(until)),
            )
            .filter(conversation::Column::Id.eq(id))
            .filter(conversation::Column::ResumeAt.lte(now))
            .filter(
                Condition::any()
                    .add(conversation::Column::ResumeClaimedUntil.is_null())
                    .add(conversation::Column::ResumeClaimedUntil.lt(now)),
            )
            .exec(self.db.writer())
            .await?
            .rows_affected;
        Ok(claimed == 1)
    }

    /// Marks conversations idle since `idle` abandoned, a batch at a time, each with its
    /// `conversation.abandoned` event in the same transaction.
    async fn abandon_idle(&self, idle: chrono::DateTime<Utc>) -> ApiResult<()> {
        const BATCH: u64 = 200;
        loop {
            let tx = self.db.write().await?;
            let batch = conversation::Entity::find()
                .filter(conversation::Column::Status.eq(ConversationStatus::Active))
                .filter(conversation::Column::UpdatedAt.lt(idle))
                .limit(BATCH)
                .all(&tx.tx)
                .await?;
            let full = batch.len() as u64 == BATCH;
            let mut queued = false;
            for conv in batch {
                // Another instance may have swept it meanwhile: only the one that changed it
                // reports it.
                let changed = conversation::Entity::update_many()
                    .col_expr(
                        conversation::Column::Status,
                        Expr::value(ConversationStatus::Abandoned),
                    )
                    .filter(conversation::Column::Id.eq(conv.id))
                    .filter(conversation::Column::Status.eq(ConversationStatus::Active))
                    .exec(&tx.tx)
                    .await?
                    .rows_affected;
                if changed == 0 {
                    continue;
                }
                let hooks = lifecycle::subscribers(
                    &tx.tx,
                    conv.account_id,
                    lifecycle::CONVERSATION_ABANDONED,
                )
                .await?;
                if hooks.is_empty() {
                    continue;
                }
                let state: State = serde_json::from_value(conv.state.clone()).unwrap_or_default();
                let conv = conversation::Model {
                    status: ConversationStatus::Abandoned,
                    ..conv
                };
                let data = lifecycle::conversation_data(&tx.tx, &conv, &state, &[]).await?;
                queued |= lifecycle::enqueue(
                    &tx.tx,
                    conv.account_id,
                    &hooks,
                    Some(conv.id),
                    lifecycle::CONVERSATION_ABANDONED,
                    data,
                )
                .await?;
            }
            tx.commit().await?;
            if queued {
                self.deliveries.wake();
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Marks idle conversations abandoned, and resumes those whose sync call was cut off by a
    /// crash (the call is treated as failed: the conversation goes on to the next block).
    pub async fn sweep(self: &Arc<Self>) -> ApiResult<()> {
        let now = Utc::now();
        let idle = now - chrono::Duration::from_std(self.abandon_after).unwrap_or_default();
        self.abandon_idle(idle).await?;

        // Well past any live call's deadline: only calls cut off by a crash are this old.
        let grace = self.sync_timeout + self.sync_timeout.max(Duration::from_secs(1));
        let stale = now - chrono::Duration::from_std(grace).unwrap_or_default();
        delivery::Entity::update_many()
            .col_expr(
                delivery::Column::Status,
                Expr::value(DeliveryStatus::Failed),
            )
            .filter(delivery::Column::Mode.eq(DeliveryMode::Sync))
            .filter(crate::webhooks::delivery::pending())
            // A queued redelivery (due at some time) is the worker's, not a cut-off call.
            .filter(delivery::Column::NextAttemptAt.is_null())
            .filter(delivery::Column::CreatedAt.lt(stale))
            // A call still in flight holds a live claim, however old (another instance may
            // wait longer than this one's deadline); a crashed call's claim lapses, or is
            // released when its instance restarts.
            .filter(
                Condition::any()
                    .add(delivery::Column::ClaimedUntil.is_null())
                    .add(delivery::Column::ClaimedUntil.lt(now)),
            )
            .exec(self.db.writer())
            .await?;
        let awaiting = match self.db.kind() {
            DatabaseKind::Postgres => {
                Expr::cust("state -> 'position' ->> 'type' = 'awaitingWebhook'")
            }
            DatabaseKind::Sqlite => {
                Expr::cust("json_extract(state, '$.position.type') = 'awaitingWebhook'")
            }
        };
        let stuck: Vec<Uuid> = conversation::Entity::find()
            .filter(conversation::Column::Status.eq(ConversationStatus::Active))
            .filter(conversation::Column::UpdatedAt.lt(stale))
            .filter(awaiting)
            .select_only()
            .column(conversation::Column::Id)
            .limit(100)
            .into_tuple()
            .all(self.db.conn())
            .await?;
        let in_flight =
            deliveries::conversations_with_calls_in_flight(self.db.conn(), &stuck).await?;
        for id in stuck.into_iter().filter(|id| !in_flight.contains(id)) {
            let outcome = WebhookOutcome::Failed("the call was interrupted by a restart".into());
            let step = Step {
                unless_in_flight: true,
                ..Step::default()
            };
            if let Err(e) = self.drive(id, Input::WebhookResult(outcome), step).await {
                tracing::warn!(conversation.id = %id, error = e.message(), "cannot resume a conversation");
            }
        }
        Ok(())
    }

    /// Sweeps now and then, until dropped.
    pub async fn run_sweeper(self: Arc<Self>) {
        let every = (self.abandon_after / 4)
            .min(self.sync_timeout)
            .clamp(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = e.message(), "conversation sweep failed");
            }
            tokio::time::sleep(every).await;
        }
    }
}
