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
mod turn;
mod visitor;

use background::Timers;
pub use caches::Stamp as BotStamp;
use caches::{FlowCache, HooksCache, Known, Recent, Stamped};
use quick::Quick;
use turn::{StepDone, Undone, Writes};

/// Longest visitor answer.
pub const MAX_ANSWER_CHARS: usize = 4000;
/// Largest prefilled `variables` object, serialised.
const MAX_PREFILLED_BYTES: usize = 16 * 1024;
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
        // Every field named: a new one must say whether a quick turn may take it.
        let Self {
            visitor: _,
            create: _,
            bot_name: _,
            settle,
            unless_in_flight,
            resume,
            callback,
            counted,
            hooks: _,
            quick_tried,
            read_at: _,
        } = self;
        settle.is_none()
            && !unless_in_flight
            && !resume
            && callback.is_none()
            && !counted
            && !quick_tried
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

/// The prefilled variables of a start, checked.
fn prefilled(variables: Option<Value>) -> ApiResult<Map<String, Value>> {
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
    Ok(prefilled)
}

/// A new conversation's row, before its first step, and the visitor's token.
fn new_conversation(
    account_id: Uuid,
    bot_id: Uuid,
    version: i32,
    prefilled: Map<String, Value>,
) -> ApiResult<(conversation::Model, String)> {
    let token = random_token();
    let now = Utc::now();
    let conv = conversation::Model {
        id: Uuid::now_v7(),
        account_id,
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
    Ok((conv, token))
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

    /// Starts a conversation on the bot's latest published version and runs it up to its
    /// first question (or its end). The work runs to its end even if the caller goes away (a
    /// request cancelled at its deadline): a turn is never cut in half.
    pub async fn start(
        self: &Arc<Self>,
        on: StartOn,
        variables: Option<Value>,
    ) -> ApiResult<VisitorSession> {
        let this = self.clone();
        tokio::spawn(async move {
            let prefilled = prefilled(variables)?;
            let (bot, read_at) = match on {
                StartOn::Read(bot, read_at) => (bot, read_at),
                StartOn::Seen(seen) => match this.start_seen(&seen, prefilled.clone()).await? {
                    Some(session) => return Ok(session),
                    // The bot changed, or its first step needs the full step: as a bot not
                    // seen. (A start that may not read the bot, its origin checked, never
                    // comes here: it read it.)
                    None => {
                        let read_at = this.bot_stamp();
                        let bot =
                            crate::bots::appearance::bot_for_visitor(this.db.conn(), seen.id, None)
                                .await?;
                        (bot, read_at)
                    }
                },
            };
            // Boxed, as is the full step below: the quick path is the common one, and a
            // future as large as the full step's is copied whole each time it moves (on spawn,
            // in and out of the task), a few percent of the server's CPU in a profile of starts.
            Box::pin(this.start_now(bot, read_at, prefilled)).await
        })
        .await?
    }

    /// A start on a bot as last seen here: written in one go if its first step can be and
    /// the bot's published version is still the one seen; on SQLite, else, with the full
    /// step on the bot as seen (see [`SeenBot`]). `None`, nothing written, if neither.
    async fn start_seen(
        self: &Arc<Self>,
        seen: &SeenBot,
        prefilled: Map<String, Value>,
    ) -> ApiResult<Option<VisitorSession>> {
        let began = std::time::Instant::now();
        let (conv, token) = new_conversation(seen.account_id, seen.id, seen.version, prefilled)?;
        let id = conv.id;
        let quick = if seen.full {
            Ok(Quick::Full { counted: false })
        } else {
            self.quick_start(&conv, Some(&seen.name)).await
        };
        match quick {
            Ok(Quick::Done(done)) => {
                crate::metrics::turn_path("quick_new");
                self.finish(id, "start", began, *done);
                Ok(Some(VisitorSession {
                    conversation_id: id,
                    visitor_token: token,
                }))
            }
            Ok(Quick::Full { .. }) if self.db.kind() == DatabaseKind::Sqlite => {
                let first = Step {
                    create: Some(conv),
                    bot_name: Some(seen.name.clone()),
                    quick_tried: true,
                    ..Step::default()
                };
                Box::pin(self.drive(id, Input::Start, first)).await?;
                Ok(Some(VisitorSession {
                    conversation_id: id,
                    visitor_token: token,
                }))
            }
            Ok(Quick::Full { .. }) | Err(Undone::Stale) => {
                self.seen_bots.invalidate(&seen.id);
                Ok(None)
            }
            Err(Undone::Failed(e)) => Err(e),
        }
    }

    async fn start_now(
        self: &Arc<Self>,
        bot: bot::Model,
        read_at: BotStamp,
        prefilled: Map<String, Value>,
    ) -> ApiResult<VisitorSession> {
        let version = bot.published_version.ok_or_else(|| {
            ApiError::bad_input(
                "this bot is not published yet: publish it before starting conversations",
            )
        })?;
        let (conv, token) = new_conversation(bot.account_id, bot.id, version, prefilled)?;
        let id = conv.id;
        let first = Step {
            create: Some(conv),
            bot_name: Some(bot.name),
            read_at: Some(read_at),
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

    /// A start's full step. On SQLite its account's webhooks are taken first, as kept in
    /// memory or read on a reading connection: every start needs them (who takes
    /// `conversation.started`), and a read in the step would be one more hop in the writer's
    /// line, which every step waits in. Then the step is taken before its write
    /// ([`Self::start_ahead`]). Taken outside the transaction, the webhooks may miss a change
    /// made meanwhile: one deleted makes the step's delivery fail its foreign key, and then
    /// the step is taken again, reading them in its transaction; one created or changed at
    /// the same moment counts as changed just after the start.
    async fn start_step(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        mut step: Step,
    ) -> Result<StepDone, Undone> {
        let account_id = match (&step.create, self.db.kind()) {
            (Some(new), DatabaseKind::Sqlite) => new.account_id,
            _ => return self.step_once(conversation_id, input, step, None).await,
        };
        step.hooks = Some(
            self.hooks
                .get(self.db.conn(), account_id)
                .await
                .map_err(Undone::Failed)?,
        );
        let again = (input.clone(), step.clone());
        match self.start_ahead(conversation_id, input, step).await {
            Err(Undone::Failed(ApiError::Internal(e))) if is_foreign_key_violation(&e) => {
                tracing::info!(conversation.id = %conversation_id, error.cause = ?e, "a start on webhooks read before its step named one gone; taking it again, reading them in the step");
                self.hooks.forget();
                let (input, mut step) = again;
                step.hooks = None;
                match self.step_once(conversation_id, input, step, None).await {
                    // With the webhooks read in the step, only the conversation's own row can
                    // name something gone: its bot, deleted since it was read.
                    Err(Undone::Failed(ApiError::Internal(e))) if is_foreign_key_violation(&e) => {
                        Err(Undone::Failed(ApiError::not_found("bot")))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// SQLite: a start's full step on its account's webhooks read ahead, taken before its
    /// write: the engine and the payloads run here, on the request's thread, and the writer
    /// thread only sends the step's inserts, together with the other writes so prepared that
    /// wait at that moment (see [`crate::db::Db::write_deferred`]). A start only inserts
    /// (its conversation, events and deliveries) and reads nothing the writer's
    /// transaction would have to see.
    async fn start_ahead(
        self: &Arc<Self>,
        conversation_id: Uuid,
        input: Input,
        step: Step,
    ) -> Result<StepDone, Undone> {
        let mut kept = None;
        let done = self
            .step_in(
                self.db.conn(),
                conversation_id,
                input,
                step,
                None,
                Writes::Later(&mut kept),
            )
            .await
            .map_err(Undone::Failed)?
            .ok_or_else(|| {
                Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                    "a new conversation's first step found its row changed"
                )))
            })?;
        let Some(inserts) = kept.filter(|kept| !kept.is_empty()) else {
            return Ok(done);
        };
        match self.db.write_deferred(inserts).await {
            Some(written) => written.map(|()| done).map_err(Undone::from),
            None => Err(Undone::Failed(ApiError::Internal(anyhow::anyhow!(
                "SQLite steps have no writer thread"
            )))),
        }
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

/// Whether `e` is the database refusing a row whose foreign key names a row that is gone.
fn is_foreign_key_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sea_orm::DbErr>()
        .and_then(sea_orm::DbErr::sql_err)
        .is_some_and(|e| matches!(e, sea_orm::SqlErr::ForeignKeyConstraintViolation(_)))
}
