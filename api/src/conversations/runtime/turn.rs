//! One step's transaction: the conversation (read, or as this instance knows it), the engine,
//! the events, the outbox, and the row's update.
use std::sync::Arc;

use chrono::{SubsecRound as _, Utc};
use entity::{
    conversation::{self, ConversationStatus},
    conversation_event, delivery,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QuerySelect,
};
use serde::Deserialize as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Known, Runtime, Step, SyncCall, Transcript, callback_not_found, visitor_not_found};
use crate::{
    conversations::payload::{self, kind},
    db::Deferred,
    engine::{self, ChatMessage, Input, Output, Position, State, StepError},
    error::{ApiError, ApiResult},
    lifecycle,
    opaque::{random_token, token_hash},
    settings::DatabaseKind,
    webhooks::delivery as deliveries,
};

/// What a step's transaction leaves to do once committed: its events, the sync call to
/// make, the deliveries it queued, when the pause it began (if any) is due, and the
/// conversation as it left it (unless it ended).
pub(super) struct StepDone {
    pub(super) events: Vec<conversation_event::Model>,
    pub(super) sync: Option<SyncCall>,
    pub(super) queued: deliveries::Queued,
    pub(super) resume_at: Option<chrono::DateTime<Utc>>,
    pub(super) known: Option<Known>,
    /// The transcript before this step, when the step had it and its flow calls webhooks:
    /// kept, with the step's events, for the conversation's next steps.
    pub(super) transcript: Option<Arc<Transcript>>,
}

impl StepDone {
    /// A step that found nothing to do.
    fn nothing() -> Self {
        Self {
            events: Vec::new(),
            sync: None,
            queued: Default::default(),
            resume_at: None,
            known: None,
            transcript: None,
        }
    }
}

/// Where a step's writes go.
pub(super) enum Writes<'a> {
    /// To the step's transaction, as the step goes.
    Now,
    /// Kept here for the caller to send (a new conversation's first step only, which only
    /// inserts): the step only reads.
    Later(&'a mut Option<Deferred>),
}

/// Why a step's transaction was undone.
pub(super) enum Undone {
    /// The conversation changed since this instance knew it: the step starts again from
    /// the row.
    Stale,
    Failed(ApiError),
}

impl From<sea_orm::DbErr> for Undone {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Failed(e.into())
    }
}

pub(super) fn step_error(e: StepError) -> ApiError {
    match e {
        StepError::AlreadyEnded => ApiError::Conflict("the conversation has ended".into()),
        StepError::NoPendingQuestion => ApiError::Conflict(
            "no question is waiting for an answer: the bot is still working on its reply".into(),
        ),
        other => ApiError::Conflict(other.to_string()),
    }
}

/// The UPDATE a step makes of its conversation's row, to `after`: every column a step changes
/// (`callback_token_hash` only when `callback_changed`), and, when the step started from what
/// this instance knew (`expect`: that `last_seq` and `updated_at`), only if the row still holds
/// that. `after.state` moves into the update (it is left null).
pub(super) fn row_update(
    after: &mut conversation::Model,
    callback_changed: bool,
    expect: Option<(i32, chrono::DateTime<Utc>)>,
) -> sea_orm::UpdateMany<conversation::Entity> {
    let update = conversation::Entity::update_many()
        .set(conversation::ActiveModel {
            state: Set(std::mem::take(&mut after.state)),
            last_seq: Set(after.last_seq),
            status: Set(after.status),
            ended_at: Set(after.ended_at),
            updated_at: Set(after.updated_at),
            resume_at: Set(after.resume_at),
            resume_claimed_by: Set(after.resume_claimed_by.clone()),
            resume_claimed_until: Set(after.resume_claimed_until),
            callback_token_hash: if callback_changed {
                Set(after.callback_token_hash.clone())
            } else {
                sea_orm::ActiveValue::NotSet
            },
            ..Default::default()
        })
        .filter(conversation::Column::Id.eq(after.id));
    match expect {
        Some((last_seq, updated_at)) => update
            .filter(conversation::Column::LastSeq.eq(last_seq))
            .filter(conversation::Column::UpdatedAt.eq(updated_at)),
        None => update,
    }
}

/// The events a step appends.
pub(super) async fn insert_events(
    tx: &impl ConnectionTrait,
    events: &[conversation_event::Model],
) -> Result<(), sea_orm::DbErr> {
    events_insert(events).exec_without_returning(tx).await?;
    Ok(())
}

/// The insert of `events`, to run now ([`insert_events`]) or with a step's other inserts.
fn events_insert(
    events: &[conversation_event::Model],
) -> sea_orm::InsertMany<conversation_event::ActiveModel> {
    conversation_event::Entity::insert_many(
        events
            .iter()
            .cloned()
            .map(conversation_event::ActiveModel::from),
    )
}

/// A stored engine state.
fn parse_state(stored: &Value) -> ApiResult<State> {
    State::deserialize(stored)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored state does not parse: {e}")))
}

/// The event row of a message the engine said.
pub(super) fn event_row(
    conv: &conversation::Model,
    seq: i32,
    msg: ChatMessage,
    at: chrono::DateTime<Utc>,
    block_id: Option<String>,
) -> conversation_event::Model {
    let (kind, text, input) = match msg {
        ChatMessage::BotMessage { text } => (kind::BOT_MESSAGE, Some(text), None),
        ChatMessage::Question {
            text,
            question_type,
            choices,
        } => {
            // Choices without their `next`: visitors see labels and values, not the flow.
            let choices = choices.map(|cs| {
                cs.into_iter()
                    .map(|c| json!({ "label": c.label, "value": c.value }))
                    .collect::<Vec<_>>()
            });
            let input = json!({ "type": question_type, "choices": choices });
            (kind::QUESTION, Some(text), Some(input))
        }
        ChatMessage::VisitorMessage { text } => (kind::VISITOR_MESSAGE, Some(text), None),
        ChatMessage::InvalidAnswer { text } => (kind::INVALID_ANSWER, Some(text), None),
        ChatMessage::Redirect { url } => (kind::REDIRECT, Some(url), None),
        ChatMessage::Ended { error } => (kind::ENDED, error, None),
    };
    conversation_event::Model {
        conversation_id: conv.id,
        seq,
        account_id: conv.account_id,
        kind: kind.to_owned(),
        text,
        input,
        at,
        block_id,
    }
}

impl Runtime {
    /// [`Self::step_in`], with a conversation found changed as [`Undone::Stale`] (which
    /// undoes the step's writes).
    pub(super) async fn advance_in(
        &self,
        tx: &DatabaseTransaction,
        conversation_id: Uuid,
        input: Input,
        step: Step,
        known: Option<Arc<Known>>,
    ) -> Result<StepDone, Undone> {
        match self
            .step_in(tx, conversation_id, input, step, known, Writes::Now)
            .await
        {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(Undone::Stale),
            Err(e) => Err(Undone::Failed(e)),
        }
    }

    /// One engine step in `tx`, from the row or from `known` (then `None` if the row changed
    /// since). The visitor's token (hash) is checked in it too, which saves a turn its own
    /// read. With [`Writes::Later`], `tx` is only read from.
    pub(super) async fn step_in(
        &self,
        tx: &impl ConnectionTrait,
        conversation_id: Uuid,
        input: Input,
        step: Step,
        known: Option<Arc<Known>>,
        writes: Writes<'_>,
    ) -> ApiResult<Option<StepDone>> {
        let Step {
            visitor,
            create,
            bot_name,
            settle,
            unless_in_flight,
            resume,
            callback,
            counted,
            hooks,
            quick_tried: _,
            read_at: _,
        } = step;
        let created = create.is_some();
        let kept_for_later = matches!(writes, Writes::Later(_));
        if kept_for_later
            && (!created || settle.is_some() || unless_in_flight || resume || callback.is_some())
        {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "only a new conversation's first step may leave its writes for later"
            )));
        }
        // What the row must still hold for the step's UPDATE to apply (when not read here).
        let mut expect = None;
        let mut transcript = None;
        let (conv, mut state) = if let Some(new) = create {
            // Inserted below, once, as the step leaves it.
            let state = parse_state(&new.state)?;
            (new, state)
        } else if let Some(known) = known {
            expect = Some((known.conv.last_seq, known.conv.updated_at));
            transcript.clone_from(&known.transcript);
            (known.conv.clone(), known.state.clone())
        } else {
            let mut query = conversation::Entity::find_by_id(conversation_id);
            if self.db.kind() == DatabaseKind::Postgres {
                // Serialises turns of one conversation across instances; SQLite's single
                // writer already does.
                query = query.lock_exclusive();
            }
            let conv = crate::db::by_key(query, tx)
                .await?
                .ok_or_else(visitor_not_found)?;
            let state = parse_state(&conv.state)?;
            (conv, state)
        };
        if visitor.is_some_and(|hash| hash != conv.visitor_token_hash) {
            return Err(visitor_not_found());
        }
        if unless_in_flight
            && deliveries::conversations_with_calls_in_flight(tx, &[conv.id])
                .await?
                .contains(&conv.id)
        {
            // The call was not cut off after all: whoever makes it takes its result.
            return Ok(Some(StepDone::nothing()));
        }
        if callback.is_some() && conv.callback_token_hash.as_deref() != callback.as_deref() {
            if expect.is_some() {
                // Known here only: the row decides (another instance may have minted it).
                return Ok(None);
            }
            // Used meanwhile by a concurrent request, or spent by a timeout.
            return Err(callback_not_found());
        }
        if resume && conv.resume_at.is_none_or(|due| due > Utc::now()) {
            // Continued already (another timer, another instance), or pausing again.
            return Ok(Some(StepDone::nothing()));
        }
        if let Some(settled) = &settle {
            settled.write(tx).await?;
        }
        if matches!(input, Input::Answer(_)) && !counted {
            // Counted only once the token matched: a stranger cannot spend a visitor's budget.
            // A step restarted from the row counts again (rare: the conversation changed on
            // another instance).
            self.limiters.answers_by_conversation.check(&conv.id)?;
        }
        let flow = self.flows.get(tx, conv.bot_id, conv.version).await?;
        let was_awaiting_callback = matches!(state.position, Position::AwaitingCallback { .. });
        let result = match engine::step(&flow, &mut state, input) {
            Ok(result) => result,
            // A refusal of what is known here only is not final: the conversation may have
            // moved on elsewhere (a callback or a pause ended on another instance).
            Err(_) if expect.is_some() => return Ok(None),
            Err(e) => return Err(step_error(e)),
        };
        for note in &result.notes {
            tracing::info!(conversation.id = %conv.id, note, "engine note");
        }

        // Whole microseconds, as PostgreSQL stores them: `updated_at` is compared with what
        // this instance remembers (see [`Recent`]).
        let now = Utc::now().trunc_subsecs(6);
        let mut seq = conv.last_seq;
        let mut new_events = Vec::new();
        let mut reads = Reads {
            hooks,
            // Nothing is stored before a conversation's first step.
            stored: bot_name
                .filter(|_| conv.last_seq == 0)
                .map(|name| (Vec::new(), name)),
        };
        let mut queued = deliveries::Queued::default();
        // The inserts (deliveries, a new conversation's row, events) go together at the end.
        let mut inserts = Deferred::new(tx.get_database_backend());
        let mut sync = None;
        let mut say_blocks = result.say_blocks.into_iter();
        // What to store as the callback token's hash, if it changes: a step that leaves a
        // CALLBACK (called back, or timed out) spends its token; a webhook before a CALLBACK
        // mints a new one (below).
        let mut callback_hash: Option<Option<String>> = (was_awaiting_callback
            && !matches!(state.position, Position::AwaitingCallback { .. }))
        .then_some(None);
        for output in result.outputs {
            let (webhook_id, block_id, is_sync) = match output {
                Output::Say(msg) => {
                    seq += 1;
                    let block = say_blocks.next().flatten();
                    new_events.push(event_row(&conv, seq, msg, now, block));
                    continue;
                }
                Output::QueueWebhook {
                    webhook_id,
                    block_id,
                } => (webhook_id, block_id, false),
                Output::CallWebhook {
                    webhook_id,
                    block_id,
                } => (webhook_id, block_id, true),
            };
            // A published flow is checked against the account's webhooks, but should one
            // still name a webhook that is gone, its block counts as a failed call and the
            // flow goes on: the visitor never gets an internal error for it.
            let hooks = reads.hooks(tx, conv.account_id).await?;
            let found = Uuid::parse_str(&webhook_id)
                .ok()
                .filter(|id| hooks.contains(*id));
            let Some(hook_id) = found else {
                tracing::warn!(
                    conversation.id = %conv.id,
                    bot.id = %conv.bot_id,
                    bot.version = conv.version,
                    block.id = %block_id,
                    webhook.id = %webhook_id,
                    webhook.sync = is_sync,
                    "the flow names a webhook that does not exist; the call counts as failed"
                );
                if is_sync {
                    sync = Some(SyncCall::Failed(
                        "the webhook does not exist (it was deleted)".into(),
                    ));
                }
                continue;
            };
            let (transcript, bot_name) = reads.stored(tx, &conv).await?;
            // The rule for `conversation.callback_url`: a WEBHOOK block whose `next` is a
            // CALLBACK block sends that CALLBACK's one-time URL. The token is minted now and
            // its hash stored in this step; the URL works once the conversation waits at a
            // CALLBACK, until it is used or the CALLBACK times out.
            let callback_url = flow.goes_to_callback(&block_id).then(|| {
                let token = random_token();
                callback_hash = Some(Some(token_hash(&token)));
                format!("{}/callbacks/{token}", self.public_url)
            });
            let body = payload::build(
                &conv,
                bot_name,
                &state,
                transcript,
                &new_events,
                callback_url.as_deref(),
            );
            if is_sync {
                sync = Some(SyncCall::Call(self.deliveries.sync_row(
                    conv.account_id,
                    hook_id,
                    conv.id,
                    block_id,
                    body,
                    now,
                )));
            } else {
                let d = self.deliveries.queued_row(
                    &mut queued,
                    conv.account_id,
                    hook_id,
                    Some(conv.id),
                    Some(block_id),
                    body,
                );
                inserts.push(&delivery::Entity::insert(delivery::ActiveModel::from(d)));
            }
        }

        if seq > self.max_events || (seq == self.max_events && !state.is_ended()) {
            // No room left but for the ENDED that says why: a visitor cannot grow one
            // conversation (and its webhook payloads) without bound.
            let room = usize::try_from(self.max_events - 1 - conv.last_seq).unwrap_or(0);
            new_events.truncate(room);
            seq = conv.last_seq + new_events.len() as i32 + 1;
            let reason = format!(
                "This conversation reached its limit of {} messages and has ended.",
                self.max_events
            );
            tracing::warn!(conversation.id = %conv.id, max_events = self.max_events, "conversation ended at its event limit");
            new_events.push(event_row(
                &conv,
                seq,
                ChatMessage::Ended {
                    error: Some(reason),
                },
                now,
                new_events.last().and_then(|e| e.block_id.clone()),
            ));
            state.position = Position::Ended;
            sync = None;
        }
        let ended = state.is_ended();
        // A step that ends pausing has just begun the pause (a pause only takes `Resume`,
        // which leaves it): it is due `seconds` from now. Every step drops the claim.
        let resume_at = match &state.position {
            Position::Waiting { seconds, .. } => {
                Some(now + chrono::Duration::seconds(i64::from(*seconds)))
            }
            // A CALLBACK's timeout is a pause like any other for the scheduler.
            Position::AwaitingCallback {
                timeout_seconds, ..
            } => Some(now + chrono::Duration::seconds(i64::from(*timeout_seconds))),
            _ => None,
        };
        let status = if ended {
            ConversationStatus::Completed
        } else {
            ConversationStatus::Active
        };
        let ended_at = ended.then(|| conv.ended_at.unwrap_or(now));
        let mut after = conversation::Model {
            state: serde_json::to_value(&state).map_err(anyhow::Error::from)?,
            last_seq: seq,
            status,
            ended_at,
            updated_at: now,
            resume_at,
            resume_claimed_by: None,
            resume_claimed_until: None,
            callback_token_hash: callback_hash
                .clone()
                .unwrap_or_else(|| conv.callback_token_hash.clone()),
            ..conv.clone()
        };
        if created {
            inserts.push(&conversation::Entity::insert(
                conversation::ActiveModel::from(after.clone()),
            ));
        } else {
            let update = row_update(&mut after, callback_hash.is_some(), expect);
            if update.exec(tx).await?.rows_affected == 0 {
                if expect.is_some() {
                    return Ok(None);
                }
                return Err(visitor_not_found());
            }
        }
        if let Some(SyncCall::Call(d)) = &sync {
            // Stored with the step that asks for the call: from the commit on, the call is
            // this instance's (its claim), and its result is written by the step that takes
            // it. No write of its own.
            inserts.push(&delivery::Entity::insert(delivery::ActiveModel::from(
                d.clone(),
            )));
        }
        // Lifecycle events, in this transaction: the outbox never reports what did not happen.
        let mut lifecycle_events = Vec::new();
        if created {
            lifecycle_events.push((lifecycle::CONVERSATION_STARTED, conv.clone()));
        }
        if ended && conv.status != ConversationStatus::Completed {
            let completed = conversation::Model {
                status: ConversationStatus::Completed,
                ended_at: Some(conv.ended_at.unwrap_or(now)),
                ..conv.clone()
            };
            lifecycle_events.push((lifecycle::CONVERSATION_COMPLETED, completed));
        }
        for (event, subject) in lifecycle_events {
            let hooks = reads.hooks(tx, conv.account_id).await?.subscribers(event);
            if hooks.is_empty() {
                continue;
            }
            let (transcript, bot_name) = reads.stored(tx, &conv).await?;
            let data = payload::build(&subject, bot_name, &state, transcript, &new_events, None);
            for d in lifecycle::rows(conv.account_id, &hooks, Some(conv.id), event, data) {
                inserts.push(&delivery::Entity::insert(delivery::ActiveModel::from(d)));
                queued.mark();
            }
        }
        if !new_events.is_empty() {
            inserts.push(&events_insert(&new_events));
        }
        match writes {
            Writes::Now => inserts.run(tx).await?,
            Writes::Later(kept) => *kept = Some(inserts),
        }
        if let Some(announce) = self.bus.announcement(&new_events) {
            if kept_for_later {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "a step that must be announced cannot leave its writes for later"
                )));
            }
            tx.execute_raw(announce).await?;
        }
        let known = (!ended).then(|| {
            // Kept parsed: the row's JSON copy is not needed in memory.
            after.state = Value::Null;
            Known::new(after, state)
        });
        // What this step read is the freshest; else what was known is carried on.
        let transcript = match reads.stored {
            _ if known.is_none() || !flow.has_webhooks() => None,
            Some((events, bot_name)) => Some(Arc::new(Transcript {
                events: events.into_iter().map(Arc::new).collect(),
                bot_name,
            })),
            None => transcript,
        };
        Ok(Some(StepDone {
            events: new_events,
            sync,
            queued,
            resume_at,
            known,
            transcript,
        }))
    }
}

/// What a step reads from the database at most once, when it first needs it.
struct Reads {
    /// The account's webhooks: whether those the flow names exist, and who takes lifecycle
    /// events.
    hooks: Option<Arc<lifecycle::AccountHooks>>,
    /// The conversation's events stored before this step, and its bot's name: for payloads.
    stored: Option<(Vec<conversation_event::Model>, String)>,
}

impl Reads {
    async fn hooks(
        &mut self,
        tx: &impl ConnectionTrait,
        account_id: Uuid,
    ) -> ApiResult<&lifecycle::AccountHooks> {
        let hooks = match self.hooks.take() {
            Some(hooks) => hooks,
            None => Arc::new(lifecycle::AccountHooks::read(tx, account_id).await?),
        };
        Ok(self.hooks.insert(hooks))
    }

    async fn stored(
        &mut self,
        tx: &impl ConnectionTrait,
        conv: &conversation::Model,
    ) -> ApiResult<&(Vec<conversation_event::Model>, String)> {
        let stored = match self.stored.take() {
            Some(stored) => stored,
            None => payload::stored(tx, conv).await?,
        };
        Ok(self.stored.insert(stored))
    }
}
