//! The conversation runtime: each visitor turn is one transaction that takes the
//! conversation (locked, or as this instance's last step left it, the update then applying
//! only to an unchanged row), runs the engine on the cached flow of its version, appends the
//! events with the next `seq`s, stores the state and writes async deliveries to the outbox.
//! Sync webhooks are called between two transactions, never inside one.
use std::{sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    bot,
    conversation::{self, ConversationStatus},
    delivery,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    db::Db,
    engine::{Input, State, WebhookOutcome},
    error::{ApiError, ApiResult},
    events::{EventBus, SharedEvent},
    lifecycle,
    limits::Limiters,
    nul::map_holds_nul,
    opaque::{random_token, token_hash},
    settings::{DatabaseKind, Settings},
    webhooks::delivery::{Deliveries, Settled},
};

mod background;
mod caches;
mod quick;
mod start;
mod turn;
mod visitor;

use background::Timers;
pub use caches::Stamp as BotStamp;
use caches::{FlowCache, HooksCache, Known, Recent, Stamped, Transcript};
use quick::Quick;
use turn::{StepDone, Undone, Writes};

/// Longest visitor answer.
pub const MAX_ANSWER_CHARS: usize = 4000;
/// Sync webhook calls one visitor turn may make; past this, further calls count as failed.
const MAX_SYNC_CALLS_PER_TURN: usize = 10;
/// Events read at once when a subscription replays or catches up; a longer gap is read page
/// by page, so a replay never holds a whole long transcript in memory.
pub const REPLAY_PAGE: u64 = 100;
/// A sync webhook call the engine asked for, to make after the commit.
enum SyncCall {
    /// Its delivery row, stored (claimed) by the step that asked for the call.
    Call(delivery::Model),
    /// Why the call cannot be made at all (its webhook is gone): it counts as failed.
    Failed(String),
}

/// What one step may do besides running the engine.
#[derive(Clone, Default)]
struct Step {
    /// Refuse a conversation whose token hash is not this one.
    visitor: Option<String>,
    /// Insert this new conversation first, in the step's transaction: a conversation never
    /// exists without the events of its first step.
    create: Option<conversation::Model>,
    /// The bot's name, when the caller has just read it (a start): a webhook's payload
    /// carries it, and the step need not read it again.
    bot_name: Option<String>,
    /// Write this sync call's result, which the step takes (and so release its claim).
    settle: Option<Settled>,
    /// Do nothing if a sync call of the conversation is still in flight (the sweeper).
    unless_in_flight: bool,
    /// The scheduler ends a pause: do nothing unless the conversation is pausing and due.
    resume: bool,
    /// A callback with a token of this hash: refuse it unless it is the conversation's.
    callback: Option<String>,
    /// The answer was already counted against the conversation's budget (by a quick turn that
    /// then found it needs the full step).
    counted: bool,
    /// The account's webhooks, read before the step on a reading connection (see
    /// [`Runtime::start_step`]); the step reads them in its transaction when `None`.
    hooks: Option<Arc<lifecycle::AccountHooks>>,
    /// The quick path was tried and said the step needs the full one.
    quick_tried: bool,
    /// A start on a bot just read: when the read began (see [`BotStamp`]), so that the bot
    /// may be remembered for the next starts.
    read_at: Option<BotStamp>,
}

impl Step {
    /// Whether the step does nothing besides what a start or an answer does (a quick turn may
    /// take it): no sync result to write, no sweeper's or scheduler's or callback's condition,
    /// no answer counted already.
    fn is_plain(&self) -> bool {
        self.settle.is_none() && self.is_plain_but_settle()
    }

    /// Whether the step does nothing besides what a start, an answer or a sync call's result
    /// does (and write that result): [`Self::is_plain`] but for `settle`.
    fn is_plain_but_settle(&self) -> bool {
        // Every field named: a new one must say whether a quick turn may take it.
        let Self {
            visitor: _,
            create: _,
            bot_name: _,
            settle: _,
            unless_in_flight,
            resume,
            callback,
            counted,
            hooks: _,
            quick_tried,
            read_at: _,
        } = self;
        !unless_in_flight && !resume && callback.is_none() && !counted && !quick_tried
    }
}

/// Drives conversations.
pub struct Runtime {
    db: Db,
    deliveries: Arc<Deliveries>,
    bus: Arc<dyn EventBus>,
    flows: FlowCache,
    recent: Recent,
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
    /// PostgreSQL: writes quick turns that wait at the same time together.
    quick: Option<quick::QuickWriter>,
    /// Bots read lately for starts (see [`SeenBot`]); a publish, a rename or a deletion of a
    /// bot is a change for all of them.
    seen_bots: Stamped<Uuid, SeenBot>,
    /// Accounts found lately with a webhook that takes a lifecycle event (`conversation.started`,
    /// `conversation.completed`): the turns that make it go straight to the full step, which
    /// queues it, instead of trying the one-go write first. A hint only: a turn that tries
    /// the one-go write still checks.
    hooked: moka::sync::Cache<(Uuid, &'static str), ()>,
    /// SQLite: accounts' webhooks, for starts.
    hooks: HooksCache,
}

/// What a start knows of its bot.
pub enum StartOn {
    /// The bot's row, just read (and its origin checked), and when its read began.
    Read(bot::Model, BotStamp),
    /// The bot as this instance last read it for a start (see [`Runtime::seen_bot`]).
    Seen(SeenBot),
}

/// What a start needs of a bot, as this instance last read it: its published version may
/// have changed since, so a start written in one go checks it. On SQLite, where every
/// publish and rename goes through this instance, which then forgets the bot
/// ([`Runtime::forget_seen_bot`]), a start that takes the full step uses it as it is.
#[derive(Clone)]
pub struct SeenBot {
    id: Uuid,
    account_id: Uuid,
    version: i32,
    /// For webhooks' payloads.
    name: String,
    /// SQLite: its last start took the full step: the next one goes straight to it.
    full: bool,
}

/// Bots remembered for starts; each is read again at least this often. On PostgreSQL a bot
/// whose starts cannot be written in one go (the first step calls a webhook, a webhook takes
/// `conversation.started`) is not remembered.
const SEEN_BOTS: u64 = 10_000;
const SEEN_BOT_TTL: Duration = Duration::from_secs(60);
/// How long an account found with a lifecycle webhook skips the one-go writes it would refuse.
const HOOKED_TTL: Duration = Duration::from_secs(10);

/// A new conversation's id and the visitor's secret token.
pub struct VisitorSession {
    pub conversation_id: Uuid,
    pub visitor_token: String,
}

/// The bot of a start's step on a bot just read, and when that read began, as it may be
/// remembered for the next start on it.
fn seen_of(step: &Step, full: bool) -> Option<(BotStamp, SeenBot)> {
    let (new, name) = (step.create.as_ref()?, step.bot_name.as_ref()?);
    let seen = SeenBot {
        id: new.bot_id,
        account_id: new.account_id,
        version: new.version,
        name: name.clone(),
        full,
    };
    Some((step.read_at?, seen))
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
            quick: quick::QuickWriter::start(&db),
            db,
            deliveries,
            bus,
            flows: FlowCache::default(),
            recent: Recent::default(),
            limiters,
            abandon_after: settings.abandon_after,
            sync_timeout: settings.delivery.sync_timeout,
            max_events: settings.limits.max_conversation_events.max(2),
            instance_id,
            public_url: public_url.trim_end_matches('/').to_owned(),
            timers: Timers::default(),
            seen_bots: Stamped::new(SEEN_BOTS, SEEN_BOT_TTL),
            hooked: moka::sync::Cache::builder()
                .max_capacity(SEEN_BOTS)
                .time_to_live(HOOKED_TTL)
                .build(),
            hooks: HooksCache::default(),
        })
    }

    /// The bot `id` as this instance last read it for a start, if it did lately and no bot
    /// was published or renamed since.
    pub fn seen_bot(&self, id: Uuid) -> Option<SeenBot> {
        self.seen_bots.get(&id)
    }

    /// Now, for a read of a bot that a start is about to make.
    pub fn bot_stamp(&self) -> BotStamp {
        self.seen_bots.stamp()
    }

    /// Forgets what this instance knows of a bot that was just deleted, and of its
    /// conversations, which went with it.
    pub fn forget_bot(&self, bot_id: Uuid) {
        self.forget_seen_bot(bot_id);
        self.recent.forget_bot(bot_id);
    }

    /// Forgets what this instance knows of accounts' webhooks: one was created, changed or
    /// deleted (and that is committed).
    pub fn forget_webhooks(&self) {
        self.hooks.forget();
    }

    /// Forgets the bot `bot_id` as seen for starts: it was published or renamed.
    pub fn forget_seen_bot(&self, bot_id: Uuid) {
        self.seen_bots.changed();
        self.seen_bots.invalidate(&bot_id);
    }

    /// The event bus, for subscriptions.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Takes a call of a callback URL: the posted object's keys become variables and the
    /// conversation goes on from its CALLBACK block. The token works once. Like `answer`, the
    /// turn runs to its end even if the caller goes away.
    pub async fn callback(
        self: &Arc<Self>,
        token: &str,
        posted: Map<String, Value>,
    ) -> ApiResult<Uuid> {
        // Refused before the token is looked at: the conversation keeps waiting for a body it
        // can store.
        if map_holds_nul(&posted) {
            return Err(ApiError::bad_input(
                "a callback body must not contain the NUL character (U+0000)",
            ));
        }
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

    /// What this instance knows of a conversation, if that is how it is stored (see
    /// [`Known::is_current`]).
    fn current(&self, conversation_id: Uuid) -> Option<Arc<Known>> {
        self.recent
            .get(&conversation_id)
            .filter(|known| known.is_current(self.bus.alone_since()))
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
            let (outcome, settle) = match sync {
                SyncCall::Failed(reason) => (WebhookOutcome::Failed(reason), None),
                SyncCall::Call(d) if calls > MAX_SYNC_CALLS_PER_TURN => {
                    let reason = "too many webhook calls in one turn";
                    let settled = Deliveries::not_called(&d, reason);
                    (WebhookOutcome::Failed(reason.into()), Some(settled))
                }
                SyncCall::Call(d) => {
                    let (outcome, settled) = self.deliveries.call_sync(&d).await;
                    (outcome, Some(settled))
                }
            };
            let kept = settle.clone();
            let step = Step {
                settle,
                ..Step::default()
            };
            let (more, next) = match self
                .advance(conversation_id, Input::WebhookResult(outcome), step)
                .await
            {
                Ok(done) => done,
                Err(e) => {
                    // The step that was to record the call's result with its own changes failed:
                    // the result is recorded anyway, so that the delivery log tells what happened.
                    if let Some(settled) = kept {
                        self.deliveries.settle_alone(&settled).await;
                    }
                    return Err(e);
                }
            };
            events.extend(more);
            call = next;
        }
        Ok(events)
    }

    /// One engine step in one transaction (grouped with others on SQLite), then its events
    /// published.
    async fn advance(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> ApiResult<(Vec<SharedEvent>, Option<SyncCall>)> {
        let kind = match &input {
            Input::Start => "start",
            Input::Answer(_) => "answer",
            Input::WebhookResult(_) => "webhook_result",
            Input::Resume => "resume",
            Input::Callback(_) => "callback",
        };
        let began = std::time::Instant::now();
        // Pauses and the sweeper are rare and race with steps by design: they read the row.
        let known = (!step.resume && !step.unless_in_flight && step.create.is_none())
            .then(|| self.recent.get(&conversation_id))
            .flatten();
        let quick = match (&known, &input, &step) {
            (
                Some(known),
                Input::Answer(text),
                Step {
                    visitor: Some(visitor),
                    create: None,
                    ..
                },
            ) if step.is_plain() => self.quick_answer(known, visitor, text).await,
            (
                None,
                Input::Start,
                Step {
                    visitor: None,
                    create: Some(new),
                    ..
                },
            ) if step.is_plain() => self.quick_start(new, step.bot_name.as_deref()).await,
            (
                Some(known),
                Input::WebhookResult(outcome),
                Step {
                    visitor: None,
                    create: None,
                    settle,
                    ..
                },
            ) if step.is_plain_but_settle() => {
                self.quick_result(known, outcome.clone(), settle.clone())
                    .await
            }
            _ => Ok(Quick::Full { counted: false }),
        };
        let quick = match quick {
            // A start whose bot changed since it was read (republished, deleted) takes the full
            // step on the version read, as every start did before the one-go write; a start on
            // a bot remembered does not come here (see `start_seen`).
            Err(Undone::Stale) if step.create.is_some() => Ok(Quick::Full { counted: false }),
            other => other,
        };
        let mut step = step;
        let done = match (quick, known) {
            (Ok(Quick::Done(done)), _) => {
                let done = *done;
                match &step.create {
                    Some(new) => {
                        crate::metrics::turn_path("quick_new");
                        // Written in one go: the next start on this bot may skip its read.
                        if let Some((read_at, seen)) = seen_of(&step, false) {
                            self.seen_bots.insert(new.bot_id, read_at, seen);
                        }
                    }
                    None => crate::metrics::turn_path("quick"),
                }
                Ok(done)
            }
            (Err(Undone::Stale), _) => self.restart(conversation_id, input, step).await,
            (Err(failed), _) => Err(failed),
            (Ok(Quick::Full { counted }), None) if step.create.is_some() => {
                step.counted = counted;
                crate::metrics::turn_path("new");
                // SQLite: the next start on this bot may skip its read too (see `SeenBot`).
                let seen = seen_of(&step, true).filter(|_| self.db.kind() == DatabaseKind::Sqlite);
                let done = self.start_step(conversation_id, input, step).await;
                if let (Ok(_), Some((read_at, seen))) = (&done, seen) {
                    self.seen_bots.insert(seen.id, read_at, seen);
                }
                done
            }
            (Ok(Quick::Full { counted }), None) => {
                step.counted = counted;
                crate::metrics::turn_path("read");
                self.step_once(conversation_id, input, step, None).await
            }
            (Ok(Quick::Full { counted }), Some(known)) => {
                step.counted = counted;
                crate::metrics::turn_path("known");
                let again = (input.clone(), step.clone());
                match self
                    .step_once(conversation_id, input, step, Some(known))
                    .await
                {
                    Err(Undone::Stale) => self.restart(conversation_id, again.0, again.1).await,
                    other => other,
                }
            }
        };
        let done = match done {
            Ok(done) => done,
            Err(failed) => {
                // Whatever this instance knew of the conversation may be why.
                self.recent.forget(&conversation_id);
                return Err(match failed {
                    Undone::Failed(e) => e,
                    Undone::Stale => ApiError::Internal(anyhow::anyhow!(
                        "a step that read its conversation found it changed"
                    )),
                });
            }
        };
        Ok(self.finish(conversation_id, kind, began, done))
    }

    /// What follows a step's commit: it is counted, remembered, published, its pause timed,
    /// its deliveries handed over.
    fn finish(
        &self,
        conversation_id: Uuid,
        kind: &'static str,
        began: std::time::Instant,
        done: StepDone,
    ) -> (Vec<SharedEvent>, Option<SyncCall>) {
        crate::metrics::turn(kind, began.elapsed());
        let shared: Vec<SharedEvent> = done.events.into_iter().map(Arc::new).collect();
        match done.known {
            Some(mut known) => {
                // Only PostgreSQL's quick steps use it (see `Runtime::quick_known`).
                known.transcript = done
                    .transcript
                    .filter(|_| self.db.kind() == DatabaseKind::Postgres)
                    .map(|t| Arc::new(t.then(&shared)));
                known.last_events = shared.clone();
                known.at = std::time::Instant::now();
                self.recent.remember(known);
            }
            None => self.recent.forget(&conversation_id),
        }
        self.bus.publish(&shared);
        if let Some(due) = done.resume_at {
            self.timers.arm(conversation_id, due);
        }
        self.deliveries.queued(done.queued);
        (shared, done.sync)
    }

    /// The step again, from the row: the conversation changed since this instance knew it.
    async fn restart(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> Result<StepDone, Undone> {
        crate::metrics::turn_path("restarted");
        self.recent.forget(&conversation_id);
        self.step_once(conversation_id, input, step, None).await
    }

    /// One step in one transaction (grouped with others on SQLite), from `known` if given.
    async fn step_once(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
        known: Option<Arc<Known>>,
    ) -> Result<StepDone, Undone> {
        let this = self.clone();
        self.db
            .write_grouped(move |tx| {
                Box::pin(async move {
                    this.advance_in(tx, conversation_id, input, step, known)
                        .await
                })
            })
            .await
    }
}
