//! Starts and answers that only make the bot speak, written without a read.
//!
//! Most turns of a chat only make the bot speak: the visitor's message and the next question.
//! For a conversation this instance knows (see [`super::caches::Recent`]), such a turn needs no
//! read: the engine runs before the write, outside the database's thread, and the write
//! updates the row, if unchanged, and appends the events. On PostgreSQL that is one statement:
//! one round trip and one commit instead of BEGIN, two statements and COMMIT. On SQLite it is
//! two statements in the writer's batch, without the savepoint a full step takes. A start
//! whose first step only makes the bot speak is written the same way (the row inserted), and
//! so is an answer that ends the conversation: each makes a lifecycle event
//! (`conversation.started`, `conversation.completed`), so its write applies only if no webhook
//! of the account asked for that event, checked by the same statement. When one did, nothing
//! is written and the turn takes the full step, which queues the event. A start's write also
//! checks that its bot's published version is still the one it starts on, so that a start
//! on a bot this instance has seen lately need not read the bot first (`Runtime::seen_bot`).
//! On PostgreSQL a start may also queue async webhooks: their deliveries go in the same
//! statement (see [`Runtime::quick_start`]); so may a turn of a conversation whose transcript
//! this instance knows, which may also call a sync webhook (the call's delivery goes in the
//! statement, claimed), and the step that takes the call's reply writes the call's result
//! with its own statement (see [`Runtime::quick_known`]): a hooked turn is two statements, not
//! two transactions. Whatever else a turn does (a pause, a callback, a NOTIFY for other
//! instances, a conversation changed elsewhere) takes the full transaction.
//!
//! On PostgreSQL, quick turns that wait at the same time are written together ([`QuickWriter`]).
use std::{borrow::Borrow, sync::Arc};

use chrono::{SubsecRound as _, Utc};
use entity::{
    bot,
    conversation::{self, ConversationStatus},
    conversation_event, delivery,
};
use sea_orm::{DbErr, EntityTrait as _, QuerySelect as _};
use serde::Deserialize as _;
use serde_json::Value;
use uuid::Uuid;

use super::{Known, Runtime, StepDone, SyncCall, Transcript, Undone, visitor_not_found};
use crate::{
    conversations::payload,
    engine::{self, CompiledFlow, Input, Output, Position, State, WebhookOutcome},
    error::ApiError,
    lifecycle::{self, AccountHooks},
    settings::DatabaseKind,
    webhooks::delivery::{Queued, Settled},
};

use super::turn::{event_row, insert_events, row_update};
pub(super) use writer::QuickWriter;

mod statement;
mod writer;

/// What became of a turn offered to the quick path.
pub(super) enum Quick {
    /// Written: the step is done.
    Done(Box<StepDone>),
    /// Not for the quick path: nothing was written. `counted`: the answer was already counted
    /// against the conversation's budget (the full step must not count it again).
    Full { counted: bool },
}

/// How a quick write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrote {
    Written,
    /// The row no longer held what the turn expected: nothing was written.
    Changed,
    /// A webhook of the account asked for this lifecycle event of the turn: nothing was
    /// written.
    Subscribed(&'static str),
    /// A start on a bot version that is no longer the bot's published one (or a bot that is
    /// gone): nothing was written.
    BotChanged,
}

impl Runtime {
    /// Takes `text` as the answer to `known` without a read if the turn only makes the bot
    /// speak (and perhaps ends the conversation, or, on PostgreSQL, calls or queues webhooks:
    /// see [`Self::quick_known`]); [`Quick::Full`] when the turn needs the full step (nothing
    /// was written then), [`Undone::Stale`] when the engine refused the answer or the row
    /// changed since: the step is taken again from the row (in the second case the answer was
    /// counted against the conversation's budget and is counted again: rare, and only ever
    /// against that visitor's own budget).
    pub(super) async fn quick_answer(
        &self,
        known: &Known,
        visitor: &str,
        text: &str,
    ) -> Result<Quick, Undone> {
        if visitor != known.conv.visitor_token_hash {
            return Err(Undone::Failed(visitor_not_found()));
        }
        if matches!(known.state.position, Position::AwaitingCallback { .. }) {
            return Ok(Quick::Full { counted: false });
        }
        self.quick_known(known, Input::Answer(text.to_owned()), None)
            .await
    }

    /// PostgreSQL: takes a sync call's `outcome` in `known` without a read, writing the call's
    /// result (`settled`) with the step's one statement, as [`Self::quick_known`] can; else
    /// [`Quick::Full`] (nothing written: the full step writes the result).
    pub(super) async fn quick_result(
        &self,
        known: &Known,
        outcome: WebhookOutcome,
        settled: Option<Settled>,
    ) -> Result<Quick, Undone> {
        if self.db.kind() != DatabaseKind::Postgres {
            return Ok(Quick::Full { counted: false });
        }
        self.quick_known(known, Input::WebhookResult(outcome), settled)
            .await
    }

    /// One step of a conversation this instance knows, written without a read if the step
    /// only makes the bot speak (and perhaps ends the conversation). On PostgreSQL it may also
    /// call a sync webhook or queue async ones, when the conversation's transcript is known
    /// ([`Known::transcript`]: payloads carry it) and every webhook it names is among the
    /// account's as kept here: the deliveries go in the same statement, the sync call's
    /// claimed, as the full step's are; the statement checks that the bot still has the name
    /// the payloads carry (else the full step reads it), and a webhook deleted
    /// elsewhere fails its delivery's foreign key (then the full step reads them). An answer
    /// is counted against the conversation's budget once it is known to be written this way.
    async fn quick_known(
        &self,
        known: &Known,
        input: Input,
        settle: Option<Settled>,
    ) -> Result<Quick, Undone> {
        let conv = &known.conv;
        let answer = matches!(input, Input::Answer(_));
        let full = Quick::Full { counted: false };
        let flow = self
            .flows
            .get(self.db.conn(), conv.bot_id, conv.version)
            .await
            .map_err(Undone::Failed)?;
        let mut state = known.state.clone();
        let Ok(result) = engine::step(&flow, &mut state, input) else {
            // Refused by what is known here only: the row decides whether the refusal stands
            // (the conversation may have moved on on another instance). Nothing was counted.
            return Err(Undone::Stale);
        };
        // Kept on PostgreSQL only (see `Runtime::finish`).
        let transcript = known.transcript.as_ref();
        let Some((events, calls, now)) = self.says_only(
            conv,
            &state,
            result.outputs,
            result.say_blocks,
            Calls {
                queued: transcript.is_some(),
                sync: transcript.is_some(),
            },
        ) else {
            return Ok(full);
        };
        let ended = state.is_ended();
        if ended
            && self
                .hooked
                .contains_key(&(conv.account_id, lifecycle::CONVERSATION_COMPLETED))
        {
            return Ok(full);
        }
        let mut rows = CallRows::default();
        if let (false, Some(transcript)) = (calls.is_empty(), transcript) {
            let hooks = self
                .hooks
                .get(self.db.conn(), conv.account_id)
                .await
                .map_err(Undone::Failed)?;
            let Some(taken) = self.call_rows(
                conv,
                &flow,
                &state,
                &hooks,
                (&transcript.events, &transcript.bot_name),
                (&events, calls, now),
            ) else {
                return Ok(full);
            };
            rows = taken;
        }
        if answer {
            self.limiters
                .answers_by_conversation
                .check(&conv.id)
                .map_err(Undone::Failed)?;
        }
        for note in &result.notes {
            tracing::info!(conversation.id = %conv.id, note, "engine note");
        }
        let mut after = conversation::Model {
            state: serde_json::to_value(&state)
                .map_err(|e| Undone::Failed(ApiError::Internal(e.into())))?,
            last_seq: conv.last_seq + events.len() as i32,
            status: if ended {
                ConversationStatus::Completed
            } else {
                ConversationStatus::Active
            },
            ended_at: ended.then_some(now),
            updated_at: now,
            resume_at: None,
            resume_claimed_by: None,
            resume_claimed_until: None,
            ..conv.clone()
        };
        let CallRows {
            deliveries,
            queued,
            sync,
        } = rows;
        let calls_any = !deliveries.is_empty();
        let write = QuickWrite {
            row: conversation::Model {
                state: std::mem::take(&mut after.state),
                ..after.clone()
            },
            expect: Some((conv.last_seq, conv.updated_at)),
            events,
            deliveries,
            // Checked by the statement: payloads carry it.
            bot_name: transcript.filter(|_| calls_any).map(|t| t.bot_name.clone()),
            unless: if ended {
                vec![lifecycle::CONVERSATION_COMPLETED]
            } else {
                Vec::new()
            },
            settle,
        };
        let events = match self.write(write).await {
            Ok((Wrote::Written, events)) => events,
            Ok((Wrote::Changed, _)) => return Err(Undone::Stale),
            Ok((Wrote::Subscribed(event), _)) => {
                self.hooked.insert((conv.account_id, event), ());
                return Ok(Quick::Full { counted: answer });
            }
            // The bot was renamed (or deleted) since its name was read for the transcript: the
            // full step reads it (and the transcript), and keeps them for the next steps.
            Ok((Wrote::BotChanged, _)) if calls_any => {
                return Ok(Quick::Full { counted: answer });
            }
            Ok((Wrote::BotChanged, _)) => {
                return Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "a write of a known conversation checked its bot"
                ))));
            }
            // A webhook deleted on another instance since it was kept here: the full step
            // reads them.
            Err(Undone::Failed(ApiError::Internal(e)))
                if calls_any && super::start::is_foreign_key_violation(&e) =>
            {
                tracing::info!(conversation.id = %conv.id, error.cause = ?e, "a step on webhooks kept here named one gone; taking the full step");
                self.hooks.forget();
                return Ok(Quick::Full { counted: answer });
            }
            Err(e) => return Err(e),
        };
        Ok(Quick::Done(Box::new(StepDone {
            events,
            sync,
            queued,
            resume_at: None,
            known: (!ended).then(|| Known::new(after, state)),
            transcript: known.transcript.clone().filter(|_| !ended),
        })))
    }

    /// Inserts `new` (a conversation not stored yet) with its first step, without the full
    /// step's transaction, if that step only makes the bot speak (and perhaps ends the
    /// conversation) and no webhook of the account takes its lifecycle events
    /// (`conversation.started`, and `conversation.completed` if it ends); else
    /// [`Quick::Full`], nothing written. [`Undone::Stale`], nothing written, if `new`'s
    /// version is not its bot's published one (any more).
    ///
    /// On PostgreSQL the step may also queue async webhooks (its deliveries go in the same
    /// statement, claimed by this instance as the full step's are), when the bot's name is
    /// known (`bot_name`: payloads carry it) and every webhook the step names is among the
    /// account's webhooks as kept here ([`super::caches::HooksCache`]). The statement itself
    /// checks what another instance may have changed since: a lifecycle subscriber added
    /// (nothing written), a webhook deleted (its delivery's foreign key fails, and the start
    /// takes the full step, which reads them). On SQLite such a start takes the full step,
    /// which is written without a read there (see `Runtime::start_ahead`).
    pub(super) async fn quick_start(
        &self,
        new: &conversation::Model,
        bot_name: Option<&str>,
    ) -> Result<Quick, Undone> {
        let full = Quick::Full { counted: false };
        if self
            .hooked
            .contains_key(&(new.account_id, lifecycle::CONVERSATION_STARTED))
        {
            return Ok(full);
        }
        // A bot remembered but deleted since has no versions left: the bot is read again, and
        // the start answers as one on a missing bot does.
        let Ok(flow) = self
            .flows
            .get(self.db.conn(), new.bot_id, new.version)
            .await
        else {
            return Err(Undone::Stale);
        };
        let Ok(mut state) = State::deserialize(&new.state) else {
            return Ok(full);
        };
        let Ok(result) = engine::step(&flow, &mut state, Input::Start) else {
            // The full step says why.
            return Ok(full);
        };
        let ended = state.is_ended();
        if ended
            && self
                .hooked
                .contains_key(&(new.account_id, lifecycle::CONVERSATION_COMPLETED))
        {
            return Ok(full);
        }
        let calls = Calls {
            queued: self.db.kind() == DatabaseKind::Postgres,
            sync: false,
        };
        let Some((events, calls, now)) =
            self.says_only(new, &state, result.outputs, result.say_blocks, calls)
        else {
            return Ok(full);
        };
        let mut rows = CallRows::default();
        if !calls.is_empty() {
            let Some(bot_name) = bot_name else {
                return Ok(full);
            };
            let hooks = self
                .hooks
                .get(self.db.conn(), new.account_id)
                .await
                .map_err(Undone::Failed)?;
            let lifecycle_taken = !hooks
                .subscribers(lifecycle::CONVERSATION_STARTED)
                .is_empty()
                || (ended
                    && !hooks
                        .subscribers(lifecycle::CONVERSATION_COMPLETED)
                        .is_empty());
            if lifecycle_taken {
                return Ok(full);
            }
            // Nothing is stored before a first step.
            let none: &[conversation_event::Model] = &[];
            let Some(taken) = self.call_rows(
                new,
                &flow,
                &state,
                &hooks,
                (none, bot_name),
                (&events, calls, now),
            ) else {
                return Ok(full);
            };
            rows = taken;
        }
        let CallRows {
            deliveries, queued, ..
        } = rows;
        for note in &result.notes {
            tracing::info!(conversation.id = %new.id, note, "engine note");
        }
        let row = conversation::Model {
            state: serde_json::to_value(&state)
                .map_err(|e| Undone::Failed(ApiError::Internal(e.into())))?,
            last_seq: events.len() as i32,
            status: if ended {
                ConversationStatus::Completed
            } else {
                ConversationStatus::Active
            },
            ended_at: ended.then_some(now),
            updated_at: now,
            ..new.clone()
        };
        let mut unless = vec![lifecycle::CONVERSATION_STARTED];
        if ended {
            unless.push(lifecycle::CONVERSATION_COMPLETED);
        }
        let queued_any = !deliveries.is_empty();
        let write = QuickWrite {
            row: row.clone(),
            expect: None,
            events,
            // Checked by the statement: a bot renamed on another instance is read again.
            bot_name: bot_name.filter(|_| queued_any).map(str::to_owned),
            deliveries,
            unless,
            settle: None,
        };
        match self.write(write).await {
            Ok((Wrote::Written, events)) => Ok(Quick::Done(Box::new(StepDone {
                events,
                sync: None,
                queued,
                resume_at: None,
                known: (!ended).then(|| {
                    Known::new(
                        conversation::Model {
                            state: Value::Null,
                            ..row
                        },
                        state,
                    )
                }),
                // Nothing was stored before a first step.
                transcript: bot_name
                    .filter(|_| !ended && flow.has_webhooks())
                    .map(|name| {
                        Arc::new(Transcript {
                            events: Vec::new(),
                            bot_name: name.to_owned(),
                        })
                    }),
            }))),
            Ok((Wrote::Subscribed(event), _)) => {
                self.hooked.insert((new.account_id, event), ());
                Ok(full)
            }
            Ok((Wrote::BotChanged, _)) => Err(Undone::Stale),
            Ok((Wrote::Changed, _)) => Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                "a new conversation was not inserted"
            )))),
            // A webhook deleted on another instance since it was kept here (or, rarely, the
            // bot deleted since its version was checked): the full step reads them.
            Err(Undone::Failed(ApiError::Internal(e)))
                if queued_any && super::start::is_foreign_key_violation(&e) =>
            {
                tracing::info!(conversation.id = %new.id, error.cause = ?e, "a start on webhooks kept here named one gone; taking the full step");
                self.hooks.forget();
                Ok(full)
            }
            Err(e) => Err(e),
        }
    }

    /// The delivery rows of a quick step's webhooks (`calls`, from [`Self::says_only`], with
    /// the step's `events` stamped `now`), their payloads built on `stored` (the events
    /// stored before the step, and the bot's name); the sync call's row is also its
    /// [`SyncCall`]. `None` if one of them is for the full step: a webhook not among the
    /// account's `hooks` as kept here (perhaps created on another instance since: the full
    /// step reads them), or one before a CALLBACK block, whose one-time URL the full step
    /// mints.
    fn call_rows<S: Borrow<conversation_event::Model>>(
        &self,
        conv: &conversation::Model,
        flow: &CompiledFlow,
        state: &State,
        hooks: &AccountHooks,
        (stored, bot_name): (&[S], &str),
        (events, calls, now): (
            &[conversation_event::Model],
            Vec<QueuedCall>,
            chrono::DateTime<Utc>,
        ),
    ) -> Option<CallRows> {
        let mut rows = CallRows::default();
        for call in calls {
            let hook = Uuid::parse_str(&call.webhook_id)
                .ok()
                .filter(|id| hooks.contains(*id) && !flow.goes_to_callback(&call.block_id))?;
            let said = &events[..call.said_before];
            let body = payload::build(conv, bot_name, state, stored, said, None);
            if call.sync {
                let d = self.deliveries.sync_row(
                    conv.account_id,
                    hook,
                    conv.id,
                    call.block_id,
                    body,
                    now,
                );
                rows.deliveries.push(d.clone());
                rows.sync = Some(SyncCall::Call(d));
            } else {
                rows.deliveries.push(self.deliveries.queued_row(
                    &mut rows.queued,
                    conv.account_id,
                    hook,
                    Some(conv.id),
                    Some(call.block_id),
                    body,
                ));
            }
        }
        Some(rows)
    }

    /// The events of a step that only makes the bot speak (and may end the conversation),
    /// stamped now, the webhooks it queues or calls, as far as `calls` allows them, and now;
    /// `None` if it does anything else: calls or queues a webhook `calls` does not allow,
    /// pauses, waits for a callback, says nothing and calls nothing, reaches the event limit,
    /// or must be announced to other instances.
    fn says_only(
        &self,
        conv: &conversation::Model,
        state: &State,
        outputs: Vec<Output>,
        say_blocks: Vec<Option<String>>,
        calls: Calls,
    ) -> Option<(
        Vec<conversation_event::Model>,
        Vec<QueuedCall>,
        chrono::DateTime<Utc>,
    )> {
        let simple = outputs.iter().all(|o| match o {
            Output::Say(_) => true,
            Output::QueueWebhook { .. } => calls.queued,
            Output::CallWebhook { .. } => calls.sync,
        }) && !matches!(
            state.position,
            Position::Waiting { .. } | Position::AwaitingCallback { .. }
        );
        let said = outputs
            .iter()
            .filter(|o| matches!(o, Output::Say(_)))
            .count();
        let last_seq = conv.last_seq + said as i32;
        if !simple || outputs.is_empty() || last_seq >= self.max_events {
            return None;
        }
        let now = Utc::now().trunc_subsecs(6);
        let mut events = Vec::with_capacity(said);
        let mut webhooks = Vec::new();
        let mut say_blocks = say_blocks.into_iter();
        for output in outputs {
            let (webhook_id, block_id, sync) = match output {
                Output::Say(msg) => {
                    let seq = conv.last_seq + 1 + events.len() as i32;
                    let block = say_blocks.next().flatten();
                    events.push(event_row(conv, seq, msg, now, block));
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
            webhooks.push(QueuedCall {
                webhook_id,
                block_id,
                said_before: events.len(),
                sync,
            });
        }
        self.bus
            .announcement(&events)
            .is_none()
            .then_some((events, webhooks, now))
    }

    /// Writes a quick turn: inserts its row (a start) or updates it unless it no longer holds
    /// what the turn expects, and appends its events and (PostgreSQL) deliveries; nothing if a
    /// webhook of the account asked for one of the turn's lifecycle events. Gives the events
    /// back.
    async fn write(
        &self,
        write: QuickWrite,
    ) -> Result<(Wrote, Vec<conversation_event::Model>), Undone> {
        if self.db.kind() == DatabaseKind::Postgres {
            let Some(quick) = &self.quick else {
                return Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "PostgreSQL steps have no runtime of their own"
                ))));
            };
            let events = write.events.clone();
            return match quick.write(write).await {
                Ok(wrote) => Ok((wrote, events)),
                Err(e) => Err(Undone::Failed(e.into())),
            };
        }
        // SQLite: in the writer's batch, without a savepoint of its own, since nothing is
        // written unless the check and the update apply, and the inserts, of a new id or on a
        // fresh `seq` after the row's `last_seq`, fail only with the database itself.
        let QuickWrite {
            mut row,
            expect,
            events,
            deliveries,
            unless,
            bot_name: _,
            settle,
        } = write;
        if !deliveries.is_empty() || settle.is_some() {
            // A delivery's insert may fail (its webhook gone), and without a savepoint that
            // would leave the rest of the turn written: SQLite's starts that queue webhooks
            // take the full step (see `quick_start`).
            return Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                "a quick turn on SQLite cannot write deliveries"
            ))));
        }
        let write = self.db.write_grouped_unsaved(move |tx| {
            Box::pin(async move {
                for event in unless {
                    if lifecycle::subscribed(tx, row.account_id, event).await? {
                        return Ok::<_, DbErr>((Wrote::Subscribed(event), events));
                    }
                }
                match expect {
                    None => {
                        let published: Option<Option<i32>> = bot::Entity::find_by_id(row.bot_id)
                            .select_only()
                            .column(bot::Column::PublishedVersion)
                            .into_tuple()
                            .one(tx)
                            .await?;
                        if published.flatten() != Some(row.version) {
                            return Ok((Wrote::BotChanged, events));
                        }
                        conversation::Entity::insert(conversation::ActiveModel::from(row))
                            .exec_without_returning(tx)
                            .await?;
                    }
                    Some(expect) => {
                        let update = row_update(&mut row, false, Some(expect));
                        if update.exec(tx).await?.rows_affected == 0 {
                            return Ok((Wrote::Changed, events));
                        }
                    }
                }
                insert_events(tx, &events).await?;
                Ok((Wrote::Written, events))
            })
        });
        match write.await {
            Some(written) => Ok(written?),
            None => Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                "SQLite steps have no writer thread"
            )))),
        }
    }
}

/// A quick turn's write.
struct QuickWrite {
    /// The row as the turn leaves it.
    row: conversation::Model,
    /// What the row must still hold (`last_seq`, `updated_at`); `None`: a new conversation,
    /// inserted.
    expect: Option<(i32, chrono::DateTime<Utc>)>,
    /// The events to append.
    events: Vec<conversation_event::Model>,
    /// The async deliveries the turn queues (PostgreSQL only).
    deliveries: Vec<delivery::Model>,
    /// The bot's name its deliveries' payloads carry, as this instance last read it: nothing
    /// is written unless the bot still has it (a start's [`Wrote::BotChanged`]).
    bot_name: Option<String>,
    /// The lifecycle events the turn makes: nothing is written if a webhook of the account
    /// asked for one of them (the full step queues it).
    unless: Vec<&'static str>,
    /// The sync call's result the turn takes (PostgreSQL only), written with it.
    settle: Option<Settled>,
}

/// An async webhook a quick start queues.
struct QueuedCall {
    webhook_id: String,
    block_id: String,
    /// How many of the step's events come before it (its payload's transcript).
    said_before: usize,
    /// A sync call (the step's last output), not a queued one.
    sync: bool,
}

/// What a quick step writes for its webhooks (see [`Runtime::call_rows`]).
#[derive(Default)]
struct CallRows {
    deliveries: Vec<delivery::Model>,
    /// The async ones, to hand to the worker once written.
    queued: Queued,
    /// The sync call to make once written.
    sync: Option<SyncCall>,
}

/// The webhooks a quick step may call or queue.
struct Calls {
    /// Async ones (queued).
    queued: bool,
    /// A sync one.
    sync: bool,
}
