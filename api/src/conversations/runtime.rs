//! The conversation runtime: each visitor turn is one transaction that locks the
//! conversation, runs the engine on the cached flow of its version, appends the events with
//! the next `seq`s, stores the state and writes async deliveries to the outbox. Sync webhooks
//! are called between two transactions, never inside one.
use std::{sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    bot, bot_version,
    conversation::{self, ConversationStatus},
    conversation_event, webhook,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::payload::{self, kind};
use crate::{
    db::Db,
    engine::{
        self, ChatMessage, CompiledFlow, Input, Output, Position, State, StepError, WebhookOutcome,
    },
    error::{ApiError, ApiResult},
    events::{EventBus, SharedEvent},
    lifecycle,
    limits::Limiters,
    opaque::{random_token, token_hash},
    settings::{DatabaseKind, Settings},
    webhooks::delivery::{self as deliveries, Deliveries},
};

mod background;

use background::Timers;

/// Longest visitor answer.
pub const MAX_ANSWER_CHARS: usize = 4000;
/// Largest prefilled `variables` object, serialised.
const MAX_PREFILLED_BYTES: usize = 16 * 1024;
/// Sync webhook calls one visitor turn may make; past this, further calls count as failed.
const MAX_SYNC_CALLS_PER_TURN: usize = 10;
/// Events read at once when a subscription replays or catches up; a longer gap is read page
/// by page, so a replay never holds a whole long transcript in memory.
pub const REPLAY_PAGE: u64 = 100;
/// Bytes of published flows (as stored JSON, a proxy for their parsed size) kept in memory.
const FLOW_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Parsed flows of published versions, bounded in bytes. Versions never change, so entries
/// never go stale.
struct FlowCache(moka::sync::Cache<(Uuid, i32), (Arc<CompiledFlow>, u32)>);

impl Default for FlowCache {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(FLOW_CACHE_BYTES)
                .weigher(|_, (_, bytes): &(Arc<CompiledFlow>, u32)| *bytes)
                .build(),
        )
    }
}

impl FlowCache {
    async fn get(
        &self,
        db: &impl ConnectionTrait,
        bot_id: Uuid,
        version: i32,
    ) -> ApiResult<Arc<CompiledFlow>> {
        if let Some((flow, _)) = self.0.get(&(bot_id, version)) {
            return Ok(flow);
        }
        let row = bot_version::Entity::find_by_id((bot_id, version))
            .one(db)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("bot {bot_id} has no version {version}"))
            })?;
        let flow = crate::bots::service::parse_stored_flow(&row.flow)?;
        let bytes = u32::try_from(row.flow.to_string().len()).unwrap_or(u32::MAX);
        let compiled = Arc::new(CompiledFlow::new(flow));
        self.0.insert((bot_id, version), (compiled.clone(), bytes));
        Ok(compiled)
    }
}

/// A sync webhook call the engine asked for, to make after the commit.
struct SyncCall {
    webhook_id: String,
    block_id: String,
    account_id: Uuid,
    payload: Value,
    /// Why the call cannot be made at all (its webhook is gone): it counts as failed.
    failed: Option<String>,
}

/// What a step's transaction leaves to do once committed: its events, the sync call to
/// make, the deliveries it queued, and when the pause it began (if any) is due.
type StepDone = (
    Vec<conversation_event::Model>,
    Option<SyncCall>,
    deliveries::Queued,
    Option<chrono::DateTime<Utc>>,
);

/// What one step may do besides running the engine.
#[derive(Default)]
struct Step {
    /// Refuse a conversation whose token hash is not this one.
    visitor: Option<String>,
    /// Insert this new conversation first, in the step's transaction: a conversation never
    /// exists without the events of its first step.
    create: Option<conversation::Model>,
    /// Release the claim of this sync delivery, whose result the step takes.
    release: Option<Uuid>,
    /// Do nothing if a sync call of the conversation is still in flight (the sweeper).
    unless_in_flight: bool,
    /// The scheduler ends a pause: do nothing unless the conversation is pausing and due.
    resume: bool,
    /// A callback with a token of this hash: refuse it unless it is the conversation's.
    callback: Option<String>,
}

/// Drives conversations.
pub struct Runtime {
    db: Db,
    deliveries: Arc<Deliveries>,
    bus: Arc<dyn EventBus>,
    flows: FlowCache,
    limiters: Arc<Limiters>,
    abandon_after: Duration,
    sync_timeout: Duration,
    /// Events one conversation may hold; the last one is the ENDED that says so.
    max_events: i32,
    /// Where this server is reached from outside, for callback URLs (`PARLEY_PUBLIC_URL`).
    public_url: String,
    /// This instance's name on the continuation claims it takes (`PARLEY_INSTANCE_ID`).
    instance_id: String,
    /// Local timers that end pauses on time (the database poll is the fallback).
    timers: Timers,
}

/// A new conversation's id and the visitor's secret token.
pub struct VisitorSession {
    pub conversation_id: Uuid,
    pub visitor_token: String,
}

/// The one answer for a token that is unknown, used, or spent by a timeout.
fn callback_not_found() -> ApiError {
    ApiError::NotFound(
        "this callback URL is unknown, was already used, or its wait timed out".into(),
    )
}

/// The one answer for a missing conversation and a wrong visitor token: it reveals nothing.
fn visitor_not_found() -> ApiError {
    ApiError::NotFound("conversation not found, or the visitor token does not match it".into())
}

fn step_error(e: StepError) -> ApiError {
    match e {
        StepError::AlreadyEnded => ApiError::Conflict("the conversation has ended".into()),
        StepError::NoPendingQuestion => ApiError::Conflict(
            "no question is waiting for an answer: the bot is still working on its reply".into(),
        ),
        other => ApiError::Conflict(other.to_string()),
    }
}

/// The event row of a message the engine said.
fn event_row(
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
    /// The runtime over the shared database, delivery module and event bus.
    pub fn new(
        db: Db,
        deliveries: Arc<Deliveries>,
        bus: Arc<dyn EventBus>,
        limiters: Arc<Limiters>,
        settings: &Settings,
        instance_id: String,
        public_url: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            deliveries,
            bus,
            flows: FlowCache::default(),
            limiters,
            abandon_after: settings.abandon_after,
            sync_timeout: settings.delivery.sync_timeout,
            max_events: settings.limits.max_conversation_events.max(2),
            instance_id,
            public_url: public_url.trim_end_matches('/').to_owned(),
            timers: Timers::default(),
        })
    }

    /// The event bus, for subscriptions.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Starts a conversation on the bot's latest published version and runs it up to its
    /// first question (or its end). The work runs to its end even if the caller goes away
    /// (a request cancelled at its deadline): a turn is never cut in half.
    pub async fn start(
        self: &Arc<Self>,
        bot_id: Uuid,
        variables: Option<Value>,
    ) -> ApiResult<VisitorSession> {
        let this = self.clone();
        tokio::spawn(async move { this.start_now(bot_id, variables).await }).await?
    }

    async fn start_now(
        self: &Arc<Self>,
        bot_id: Uuid,
        variables: Option<Value>,
    ) -> ApiResult<VisitorSession> {
        let prefilled = match variables {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(ApiError::bad_input("variables must be a JSON object")),
        };
        if serde_json::to_vec(&prefilled).map_or(0, |v| v.len()) > MAX_PREFILLED_BYTES {
            return Err(ApiError::bad_input(format!(
                "variables must be at most {MAX_PREFILLED_BYTES} bytes of JSON"
            )));
        }
        let bot = bot::Entity::find_by_id(bot_id)
            .one(self.db.conn())
            .await?
            .ok_or_else(|| ApiError::not_found("bot"))?;
        let version = bot.published_version.ok_or_else(|| {
            ApiError::bad_input(
                "this bot is not published yet: publish it before starting conversations",
            )
        })?;
        let token = random_token();
        let now = Utc::now();
        let conv = conversation::Model {
            id: Uuid::now_v7(),
            account_id: bot.account_id,
            bot_id,
            version,
            status: ConversationStatus::Active,
            state: serde_json::to_value(State::for_visitor(prefilled, rand::random()))
                .map_err(anyhow::Error::from)?,
            last_seq: 0,
            visitor_token_hash: token_hash(&token),
            started_at: now,
            ended_at: None,
            updated_at: now,
            resume_at: None,
            resume_claimed_by: None,
            resume_claimed_until: None,
            callback_token_hash: None,
        };
        let id = conv.id;
        let first = Step {
            create: Some(conv),
            ..Step::default()
        };
        self.drive(id, Input::Start, first).await?;
        Ok(VisitorSession {
            conversation_id: id,
            visitor_token: token,
        })
    }

    /// Takes a call of a callback URL: the posted object's keys become variables and the
    /// conversation goes on from its CALLBACK block. The token works once. Like `answer`, the
    /// turn runs to its end even if the caller goes away.
    pub async fn callback(
        self: &Arc<Self>,
        token: &str,
        posted: Map<String, Value>,
    ) -> ApiResult<Uuid> {
        let this = self.clone();
        let token = token.to_owned();
        tokio::spawn(async move {
            let hash = token_hash(token.trim());
            let id: Uuid = conversation::Entity::find()
                .filter(conversation::Column::CallbackTokenHash.eq(hash.as_str()))
                .select_only()
                .column(conversation::Column::Id)
                .into_tuple()
                .all(this.db.conn())
                .await?
                .pop()
                .ok_or_else(callback_not_found)?;
            let step = Step {
                callback: Some(hash),
                ..Step::default()
            };
            this.drive(id, Input::Callback(posted), step).await?;
            Ok(id)
        })
        .await?
    }

    /// A conversation, if `visitor_token` is its token.
    pub async fn find_for_visitor(
        &self,
        conversation_id: Uuid,
        visitor_token: &str,
    ) -> ApiResult<conversation::Model> {
        let conv = conversation::Entity::find_by_id(conversation_id)
            .one(self.db.conn())
            .await?
            .ok_or_else(visitor_not_found)?;
        if conv.visitor_token_hash != token_hash(visitor_token.trim()) {
            return Err(visitor_not_found());
        }
        Ok(conv)
    }

    /// Takes a visitor's answer; returns the visitor's message as recorded. Like `start`, the
    /// turn runs to its end even if the caller goes away.
    pub async fn answer(
        self: &Arc<Self>,
        conversation_id: Uuid,
        visitor_token: &str,
        text: &str,
    ) -> ApiResult<SharedEvent> {
        let this = self.clone();
        let (token, text) = (visitor_token.to_owned(), text.to_owned());
        tokio::spawn(async move { this.answer_now(conversation_id, &token, &text).await }).await?
    }

    async fn answer_now(
        self: &Arc<Self>,
        conversation_id: Uuid,
        visitor_token: &str,
        text: &str,
    ) -> ApiResult<SharedEvent> {
        if text.chars().count() > MAX_ANSWER_CHARS {
            return Err(ApiError::bad_input(format!(
                "an answer must be at most {MAX_ANSWER_CHARS} characters"
            )));
        }
        let visitor = token_hash(visitor_token.trim());
        let step = Step {
            visitor: Some(visitor),
            ..Step::default()
        };
        let events = self
            .drive(conversation_id, Input::Answer(text.to_owned()), step)
            .await?;
        events
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("an answer produced no event")))
    }

    /// Runs one input, then any sync webhook calls it leads to; returns every event emitted.
    /// `first` says what the first step may do besides (see [`Step`]).
    async fn drive(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        first: Step,
    ) -> ApiResult<Vec<SharedEvent>> {
        let (mut events, mut call) = self.advance(conversation_id, input, first).await?;
        let mut calls = 0;
        while let Some(sync) = call.take() {
            calls += 1;
            let (outcome, delivery) = if let Some(reason) = sync.failed {
                (WebhookOutcome::Failed(reason), None)
            } else if calls > MAX_SYNC_CALLS_PER_TURN {
                let reason = "too many webhook calls in one turn".into();
                (WebhookOutcome::Failed(reason), None)
            } else {
                self.call(conversation_id, sync).await
            };
            let step = Step {
                release: delivery,
                ..Step::default()
            };
            let (more, next) = self
                .advance(conversation_id, Input::WebhookResult(outcome), step)
                .await?;
            events.extend(more);
            call = next;
        }
        Ok(events)
    }

    /// Makes a sync call; its outcome, and its delivery (claimed until the next step).
    async fn call(&self, conversation_id: Uuid, sync: SyncCall) -> (WebhookOutcome, Option<Uuid>) {
        let Ok(webhook_id) = Uuid::parse_str(&sync.webhook_id) else {
            let reason = format!("{:?} is not a webhook id", sync.webhook_id);
            return (WebhookOutcome::Failed(reason), None);
        };
        match self
            .deliveries
            .call_sync(
                sync.account_id,
                webhook_id,
                Some(conversation_id),
                Some(sync.block_id),
                sync.payload,
            )
            .await
        {
            Ok(result) => (result.outcome, Some(result.delivery_id)),
            Err(e) => {
                let reason = e.message().to_owned();
                if let ApiError::Internal(cause) = &e {
                    tracing::error!(conversation.id = %conversation_id, error.cause = ?cause, "sync webhook call failed");
                }
                (WebhookOutcome::Failed(reason), None)
            }
        }
    }

    /// One engine step in one transaction (grouped with others on SQLite), then its events
    /// published.
    async fn advance(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> ApiResult<(Vec<SharedEvent>, Option<SyncCall>)> {
        let this = self.clone();
        let kind = match &input {
            Input::Start => "start",
            Input::Answer(_) => "answer",
            Input::WebhookResult(_) => "webhook_result",
            Input::Resume => "resume",
            Input::Callback(_) => "callback",
        };
        let began = std::time::Instant::now();
        let (new_events, sync, queued, resume_at) = self
            .db
            .write_grouped(move |tx| {
                Box::pin(async move { this.advance_in(tx, conversation_id, input, step).await })
            })
            .await?;
        crate::metrics::turn(kind, began.elapsed());
        let shared: Vec<SharedEvent> = new_events.into_iter().map(Arc::new).collect();
        self.bus.publish(&shared);
        if let Some(due) = resume_at {
            self.timers.arm(conversation_id, due);
        }
        self.deliveries.queued(queued);
        Ok((shared, sync))
    }

    /// One engine step in `tx`; the visitor's token (hash) is checked in it too, which saves
    /// a turn its own read. Returns the new events, the sync call to make, whether the outbox
    /// got work, and when the pause it began (if any) is due.
    async fn advance_in(
        &self,
        tx: &DatabaseTransaction,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> ApiResult<StepDone> {
        let Step {
            visitor,
            create,
            release,
            unless_in_flight,
            resume,
            callback,
        } = step;
        let created = create.is_some();
        if let Some(new) = create {
            conversation::Entity::insert(conversation::ActiveModel::from(new))
                .exec_without_returning(tx)
                .await?;
        }
        let mut query = conversation::Entity::find_by_id(conversation_id);
        if self.db.kind() == DatabaseKind::Postgres {
            // Serialises turns of one conversation across instances; SQLite's single writer
            // already does.
            query = query.lock_exclusive();
        }
        // `.all()` rather than `.one()`: `.one()` binds `LIMIT ?`, which makes SQLite re-plan
        // the cached statement on every run; the primary key yields one row at most anyway.
        let conv = query.all(tx).await?.pop().ok_or_else(visitor_not_found)?;
        if visitor.is_some_and(|hash| hash != conv.visitor_token_hash) {
            return Err(visitor_not_found());
        }
        if unless_in_flight
            && deliveries::conversations_with_calls_in_flight(tx, &[conv.id])
                .await?
                .contains(&conv.id)
        {
            // The call was not cut off after all: whoever makes it takes its result.
            return Ok((Vec::new(), None, Default::default(), None));
        }
        if callback.is_some() && conv.callback_token_hash.as_deref() != callback.as_deref() {
            // Used meanwhile by a concurrent request, or spent by a timeout.
            return Err(callback_not_found());
        }
        if resume && conv.resume_at.is_none_or(|due| due > Utc::now()) {
            // Continued already (another timer, another instance), or pausing again.
            return Ok((Vec::new(), None, Default::default(), None));
        }
        if let Some(delivery_id) = release {
            deliveries::release_claim(tx, delivery_id).await?;
        }
        if matches!(input, Input::Answer(_)) {
            // Counted only once the token matched: a stranger cannot spend a visitor's budget.
            self.limiters.answers_by_conversation.check(&conv.id)?;
        }
        let flow = self.flows.get(tx, conv.bot_id, conv.version).await?;
        let mut state: State = serde_json::from_value(conv.state.clone())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored state does not parse: {e}")))?;
        let was_awaiting_callback = matches!(state.position, Position::AwaitingCallback { .. });
        let result = engine::step(&flow, &mut state, input).map_err(step_error)?;
        for note in &result.notes {
            tracing::info!(conversation.id = %conv.id, note, "engine note");
        }

        let now = Utc::now();
        let mut seq = conv.last_seq;
        let mut new_events = Vec::new();
        let mut transcript: Option<Vec<conversation_event::Model>> = None;
        let mut bot_name: Option<String> = None;
        let mut queued = deliveries::Queued::default();
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
            let found = match Uuid::parse_str(&webhook_id) {
                Ok(id) => webhook::Entity::find_by_id(id)
                    .select_only()
                    .column(webhook::Column::Id)
                    .into_tuple::<Uuid>()
                    .all(tx)
                    .await?
                    .pop(),
                Err(_) => None,
            };
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
                    sync = Some(SyncCall {
                        webhook_id,
                        block_id,
                        account_id: conv.account_id,
                        payload: Value::Null,
                        failed: Some("the webhook does not exist (it was deleted)".into()),
                    });
                }
                continue;
            };
            if transcript.is_none() {
                // Payloads carry only the latest messages: read no more than they can hold.
                let mut recent = conversation_event::Entity::find()
                    .filter(conversation_event::Column::ConversationId.eq(conv.id))
                    .order_by_desc(conversation_event::Column::Seq)
                    .limit(payload::MAX_MESSAGES as u64)
                    .all(tx)
                    .await?;
                recent.reverse();
                transcript = Some(recent);
            }
            if bot_name.is_none() {
                bot_name = bot::Entity::find_by_id(conv.bot_id)
                    .one(tx)
                    .await?
                    .map(|b| b.name);
            }
            let mut messages = transcript.clone().unwrap_or_default();
            messages.extend(new_events.iter().cloned());
            // The rule for `conversation.callback_url`: a WEBHOOK block whose `next` is a
            // CALLBACK block sends that CALLBACK's one-time URL. The token is minted now and
            // its hash stored in this step; the URL works once the conversation waits at a
            // CALLBACK, until it is used or the CALLBACK times out.
            let goes_to_callback = flow
                .block(&block_id)
                .and_then(|b| b.next.as_deref())
                .and_then(|next| flow.block(next))
                .is_some_and(|b| b.kind == engine::BlockKind::Callback);
            let callback_url = goes_to_callback.then(|| {
                let token = random_token();
                callback_hash = Some(Some(token_hash(&token)));
                format!("{}/callbacks/{token}", self.public_url)
            });
            let body = payload::build(
                &conv,
                bot_name.as_deref().unwrap_or_default(),
                &state,
                &messages,
                callback_url.as_deref(),
            );
            if is_sync {
                sync = Some(SyncCall {
                    webhook_id,
                    block_id,
                    account_id: conv.account_id,
                    payload: body,
                    failed: None,
                });
            } else {
                self.deliveries
                    .enqueue(
                        tx,
                        &mut queued,
                        conv.account_id,
                        hook_id,
                        Some(conv.id),
                        Some(block_id),
                        body,
                    )
                    .await?;
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
        conversation::Entity::update(conversation::ActiveModel {
            id: Set(conv.id),
            state: Set(serde_json::to_value(&state).map_err(anyhow::Error::from)?),
            last_seq: Set(seq),
            status: Set(if ended {
                ConversationStatus::Completed
            } else {
                ConversationStatus::Active
            }),
            ended_at: Set(if ended {
                Some(conv.ended_at.unwrap_or(now))
            } else {
                None
            }),
            updated_at: Set(now),
            resume_at: Set(resume_at),
            resume_claimed_by: Set(None),
            resume_claimed_until: Set(None),
            callback_token_hash: match callback_hash {
                Some(hash) => Set(hash),
                None => sea_orm::ActiveValue::NotSet,
            },
            ..Default::default()
        })
        .exec(tx)
        .await?;
        // Lifecycle events, in this transaction: the outbox never reports what did not happen.
        if created
            && lifecycle::conversation_event(
                tx,
                &conv,
                &state,
                &new_events,
                lifecycle::CONVERSATION_STARTED,
            )
            .await?
        {
            queued.mark();
        }
        if ended
            && conv.status != ConversationStatus::Completed
            && lifecycle::conversation_event(
                tx,
                &conversation::Model {
                    status: ConversationStatus::Completed,
                    ended_at: Some(conv.ended_at.unwrap_or(now)),
                    ..conv.clone()
                },
                &state,
                &new_events,
                lifecycle::CONVERSATION_COMPLETED,
            )
            .await?
        {
            queued.mark();
        }
        if !new_events.is_empty() {
            conversation_event::Entity::insert_many(
                new_events
                    .iter()
                    .cloned()
                    .map(conversation_event::ActiveModel::from),
            )
            .exec_without_returning(tx)
            .await?;
        }
        if let Some(announce) = self.bus.announcement(&new_events) {
            tx.execute_raw(announce).await?;
        }
        Ok((new_events, sync, queued, resume_at))
    }

    /// The stored events of a conversation after `after_seq`, in order.
    pub async fn events_after(
        &self,
        conversation_id: Uuid,
        after_seq: i32,
    ) -> ApiResult<Vec<conversation_event::Model>> {
        self.events_page(conversation_id, after_seq, REPLAY_PAGE)
            .await
    }

    /// At most `limit` events with `seq > after_seq`, in order.
    pub async fn events_page(
        &self,
        conversation_id: Uuid,
        after_seq: i32,
        limit: u64,
    ) -> ApiResult<Vec<conversation_event::Model>> {
        Ok(conversation_event::Entity::find()
            .filter(conversation_event::Column::ConversationId.eq(conversation_id))
            .filter(conversation_event::Column::Seq.gt(after_seq))
            .order_by_asc(conversation_event::Column::Seq)
            .limit(limit)
            .all(self.db.conn())
            .await?)
    }
}
