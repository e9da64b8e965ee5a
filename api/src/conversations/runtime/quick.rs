//! Answers that only make the bot speak, written without a read.
//!
//! Most turns of a chat only make the bot speak: the visitor's message and the next question.
//! For a conversation this instance knows (see [`super::caches::Recent`]), such a turn needs no
//! read: the engine runs before the write, outside the database's thread, and the write
//! updates the row, if unchanged, and appends the events. On PostgreSQL that is one statement:
//! one round trip and one commit instead of BEGIN, two statements and COMMIT. On SQLite it is
//! two statements in the writer's batch, without the savepoint a full step takes.
//! Whatever else a turn does (a webhook, an end, a pause, a NOTIFY for other instances, a
//! conversation changed elsewhere) takes the full transaction.
use chrono::{SubsecRound as _, Utc};
use entity::{
    conversation::{self, ConversationStatus},
    conversation_event,
};
use sea_orm::{ActiveEnum as _, DatabaseBackend, DbErr, Statement};

use super::{Known, Runtime, StepDone, Undone, visitor_not_found};
use crate::{
    engine::{self, Input, Output, Position},
    error::ApiError,
    settings::DatabaseKind,
};

use super::turn::{event_row, insert_events, row_update};

impl Runtime {
    /// Takes `text` as the answer to `known` without a read if the turn only makes the bot
    /// speak; `None` when the turn needs the full step (nothing was written then, and nothing
    /// counted), [`Undone::Stale`] when the engine refused the answer or the row changed
    /// since: the step is taken again from the row (in the second case the answer was counted
    /// against the conversation's budget and is counted again: rare, and only ever against
    /// that visitor's own budget).
    pub(super) async fn quick_answer(
        &self,
        known: &Known,
        visitor: &str,
        text: &str,
    ) -> Result<Option<StepDone>, Undone> {
        let conv = &known.conv;
        if visitor != conv.visitor_token_hash {
            return Err(Undone::Failed(visitor_not_found()));
        }
        if matches!(known.state.position, Position::AwaitingCallback { .. }) {
            return Ok(None);
        }
        let flow = self
            .flows
            .get(self.db.conn(), conv.bot_id, conv.version)
            .await
            .map_err(Undone::Failed)?;
        let mut state = known.state.clone();
        let Ok(result) = engine::step(&flow, &mut state, Input::Answer(text.to_owned())) else {
            // Refused by what is known here only: the row decides whether the refusal stands
            // (the conversation may have moved on on another instance). Nothing was counted.
            return Err(Undone::Stale);
        };
        let simple = result.outputs.iter().all(|o| matches!(o, Output::Say(_)))
            && !state.is_ended()
            && !matches!(
                state.position,
                Position::Waiting { .. } | Position::AwaitingCallback { .. }
            );
        let last_seq = conv.last_seq + result.outputs.len() as i32;
        if !simple || result.outputs.is_empty() || last_seq >= self.max_events {
            return Ok(None);
        }
        let now = Utc::now().trunc_subsecs(6);
        let events: Vec<conversation_event::Model> = result
            .outputs
            .into_iter()
            .zip(result.say_blocks)
            .zip(conv.last_seq + 1..)
            .filter_map(|((output, block), seq)| match output {
                Output::Say(msg) => Some(event_row(conv, seq, msg, now, block)),
                _ => None,
            })
            .collect();
        if self.bus.announcement(&events).is_some() {
            return Ok(None);
        }
        self.limiters
            .answers_by_conversation
            .check(&conv.id)
            .map_err(Undone::Failed)?;
        for note in &result.notes {
            tracing::info!(conversation.id = %conv.id, note, "engine note");
        }
        let mut after = conversation::Model {
            state: serde_json::to_value(&state)
                .map_err(|e| Undone::Failed(ApiError::Internal(e.into())))?,
            last_seq,
            status: ConversationStatus::Active,
            ended_at: None,
            updated_at: now,
            resume_at: None,
            resume_claimed_by: None,
            resume_claimed_until: None,
            ..conv.clone()
        };
        let expect = (conv.last_seq, conv.updated_at);
        let Some(events) = self.write(&mut after, expect, events).await? else {
            return Err(Undone::Stale);
        };
        Ok(Some(StepDone {
            events,
            sync: None,
            queued: Default::default(),
            resume_at: None,
            known: Some(Known { conv: after, state }),
        }))
    }
}

impl Runtime {
    /// Writes a turn's row (as `after`, whose state moves out) and events, unless the row no
    /// longer holds `expect` (its `last_seq` and `updated_at`; then `None`).
    async fn write(
        &self,
        after: &mut conversation::Model,
        expect: (i32, chrono::DateTime<Utc>),
        events: Vec<conversation_event::Model>,
    ) -> Result<Option<Vec<conversation_event::Model>>, Undone> {
        if self.db.kind() == DatabaseKind::Postgres {
            let statement = statement(after, expect, &events);
            let Some(written) = self.db.step_statement(statement).await else {
                return Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "PostgreSQL steps have no runtime of their own"
                ))));
            };
            return match written? {
                n if n == events.len() as u64 => Ok(Some(events)),
                0 => Ok(None),
                n => Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "a one-statement turn wrote {n} of {} events",
                    events.len()
                )))),
            };
        }
        // SQLite: in the writer's batch, without a savepoint of its own, since nothing is
        // written unless the update applies, and the events' insert, on a fresh `seq` after
        // the row's `last_seq`, fails only with the database itself.
        let update = row_update(after, false, Some(expect));
        let write = self.db.write_grouped_unsaved(move |tx| {
            Box::pin(async move {
                if update.exec(tx).await?.rows_affected == 0 {
                    return Ok::<_, DbErr>(None);
                }
                insert_events(tx, &events).await?;
                Ok(Some(events))
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

/// The row's update, applied only if it still holds what this instance knows, and the events'
/// insert, which inserts nothing unless the update applied: as the full step writes them.
fn statement(
    after: &mut conversation::Model,
    (last_seq, updated_at): (i32, chrono::DateTime<Utc>),
    events: &[conversation_event::Model],
) -> Statement {
    // A quick turn leaves no end, pause or claim: those columns are null.
    let mut values: Vec<sea_orm::Value> = vec![
        std::mem::take(&mut after.state).into(),
        after.last_seq.into(),
        after.status.to_value().into(),
        after.updated_at.into(),
        after.id.into(),
        last_seq.into(),
        updated_at.into(),
    ];
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        let n = values.len();
        rows.push(format!(
            "(${}::uuid, ${}::int4, ${}::uuid, ${}::text, ${}::text, ${}::jsonb, ${}::timestamptz, ${}::text)",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6,
            n + 7,
            n + 8
        ));
        values.extend([
            e.conversation_id.into(),
            e.seq.into(),
            e.account_id.into(),
            e.kind.clone().into(),
            e.text.clone().into(),
            e.input.clone().into(),
            e.at.into(),
            e.block_id.clone().into(),
        ]);
    }
    let sql = format!(
        "WITH moved AS (\
           UPDATE conversations SET state = $1, last_seq = $2, status = $3, ended_at = NULL, \
             updated_at = $4, resume_at = NULL, resume_claimed_by = NULL, resume_claimed_until = NULL \
           WHERE id = $5 AND last_seq = $6 AND updated_at = $7 RETURNING id) \
         INSERT INTO conversation_events (conversation_id, seq, account_id, kind, text, input, at, block_id) \
         SELECT v.* FROM moved CROSS JOIN (VALUES {}) \
           AS v(conversation_id, seq, account_id, kind, text, input, at, block_id)",
        rows.join(", ")
    );
    Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
}
