//! GraphQL surface of conversations: visitors start and answer, team members read and watch.
use async_graphql::{
    Context, Enum, ID, Json, Object, SimpleObject, Subscription,
    connection::{Connection, Edge},
    futures_util::{StreamExt as _, stream::BoxStream},
};
use chrono::{DateTime, Utc};
use entity::{Role, conversation};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{
    payload::kind,
    runtime::{REPLAY_PAGE, StartOn},
    watch,
};
use crate::{
    accounts::AccountAccess,
    auth::{Auth, Viewer, viewer},
    bots::{
        appearance::{bot_for_visitor, check_origin},
        flow_gql::{ChoiceOut, QuestionTypeGql},
        graphql::Bot,
        service as bots,
    },
    edge::{caller, origin::RequestOrigin},
    engine::model::QuestionType,
    error::{ApiError, ApiResult, Found as _},
    events::{Notice, SharedEvent},
    ids::{parse_id, to_id},
    pagination::{page_size, parse_cursor},
    state::{AppState, state},
};

/// What happened in a conversation.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ChatEventKind {
    BotMessage,
    Question,
    VisitorMessage,
    InvalidAnswer,
    Ended,
    /// The bot sends the visitor to the address in `text` (the widget opens it).
    Redirect,
}

/// Where a conversation stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(
    name = "ConversationStatus",
    remote = "entity::conversation::ConversationStatus"
)]
pub enum ConversationStatusGql {
    Active,
    Completed,
    Abandoned,
}

/// What a QUESTION expects.
#[derive(SimpleObject)]
pub struct QuestionInput {
    #[graphql(name = "type")]
    kind: QuestionTypeGql,
    choices: Option<Vec<ChoiceOut>>,
}

/// One event of a conversation, numbered by `seq` without gaps.
pub struct ChatEvent(pub SharedEvent);

#[Object]
impl ChatEvent {
    async fn seq(&self) -> i32 {
        self.0.seq
    }
    async fn conversation_id(&self) -> ID {
        to_id(self.0.conversation_id)
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    async fn kind(&self) -> ChatEventKind {
        match self.0.kind.as_str() {
            "BOT_MESSAGE" => ChatEventKind::BotMessage,
            "QUESTION" => ChatEventKind::Question,
            "VISITOR_MESSAGE" => ChatEventKind::VisitorMessage,
            "INVALID_ANSWER" => ChatEventKind::InvalidAnswer,
            "REDIRECT" => ChatEventKind::Redirect,
            _ => ChatEventKind::Ended,
        }
    }
    async fn text(&self) -> Option<&str> {
        self.0.text.as_deref()
    }
    /// For a QUESTION: the expected answer.
    async fn input(&self) -> Option<QuestionInput> {
        let input = self.0.input.as_ref()?;
        let kind: QuestionType = serde_json::from_value(input.get("type")?.clone()).ok()?;
        let choices = input.get("choices").and_then(|c| c.as_array()).map(|list| {
            list.iter()
                .map(|c| ChoiceOut {
                    label: c
                        .get("label")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    value: c.get("value").and_then(|v| v.as_str()).map(str::to_owned),
                    next: None,
                })
                .collect()
        });
        Some(QuestionInput {
            kind: kind.into(),
            choices,
        })
    }
}

/// Who is looking at a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A member of the bot's team.
    Team,
    /// The visitor, by its token: their transcript and their own answers only.
    Visitor,
}

/// A conversation, as its team (or its visitor) sees it.
pub struct Conversation(pub conversation::Model, pub Reader);

#[Object]
impl Conversation {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }
    async fn bot(&self, ctx: &Context<'_>) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let view = bots::find_bot(st.db.conn(), viewer(ctx)?, self.0.bot_id, Role::Member).await?;
        Ok(Bot(view))
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn status(&self) -> ConversationStatusGql {
        self.0.status.into()
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.0.ended_at
    }
    /// Last activity.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The answers collected, by `saveAnswerTo` name.
    async fn answers(&self) -> Json<serde_json::Value> {
        Json(
            self.0
                .state
                .get("answers")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        )
    }
    /// The context variables (answers, webhook replies, and the visitor's prefilled values
    /// under `visitor`); for team members only: what a webhook returned reaches a visitor
    /// only through what the bot says.
    async fn variables(&self) -> async_graphql::Result<Json<serde_json::Value>> {
        if self.1 == Reader::Visitor {
            return Err(ApiError::Forbidden(
                "variables are for the bot's team; a visitor reads the transcript and their answers"
                    .into(),
            )
            .into());
        }
        Ok(Json(
            self.0
                .state
                .get("variables")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        ))
    }
    /// The transcript: events after `afterSeq`, `first` of them (at most 1000, a
    /// conversation's most; all when absent).
    #[graphql(
        complexity = "crate::pagination::list_cost(first.map_or(crate::pagination::LIST_COST_ITEMS, |n| n.clamp(1, 1000) as usize), child_complexity)"
    )]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 0)] after_seq: i32,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<ChatEvent>> {
        let st = state(ctx)?;
        let first = match first {
            None => crate::pagination::MAX_LIST,
            Some(n) if (1..=1000).contains(&n) => n as u64,
            Some(n) => {
                return Err(ApiError::bad_input(format!(
                    "first must be between 1 and 1000, not {n}"
                ))
                .into());
            }
        };
        let events = st
            .runtime
            .events_page(self.0.id, after_seq.max(0), first)
            .await?;
        Ok(events
            .into_iter()
            .map(|e| ChatEvent(SharedEvent::new(e)))
            .collect())
    }
}

/// `Bot.conversations`: newest first.
pub async fn bot_conversations(
    ctx: &Context<'_>,
    bot_id: Uuid,
    first: Option<i32>,
    after: Option<String>,
    filter: crate::results::ResultsFilter,
) -> async_graphql::Result<Connection<String, Conversation>> {
    let st = state(ctx)?;
    let first = page_size(first)?;
    let after = parse_cursor(after.as_deref())?;
    filter.check()?;
    let mut q = conversation::Entity::find()
        .filter(conversation::Column::BotId.eq(bot_id))
        .filter(filter.condition())
        .order_by_desc(conversation::Column::Id);
    if let Some(after) = after {
        q = q.filter(conversation::Column::Id.lt(after));
    }
    let mut rows = q
        .limit(first + 1)
        .all(st.db.conn())
        .await
        .map_err(ApiError::from)?;
    let more = rows.len() as u64 > first;
    rows.truncate(first as usize);
    let mut page = Connection::new(after.is_some(), more);
    page.edges.extend(
        rows.into_iter()
            .map(|c| Edge::new(c.id.to_string(), Conversation(c, Reader::Team))),
    );
    Ok(page)
}

/// A visitor's handle on a new conversation.
#[derive(SimpleObject)]
pub struct VisitorSession {
    conversation_id: ID,
    /// Secret: sent with every answer and subscription of the visitor.
    visitor_token: String,
}

/// The conversation if the caller is its visitor (by token, from a website the bot allows)
/// or a member of its account.
async fn authorize(
    st: &AppState,
    auth: &Auth,
    origin: Option<&RequestOrigin>,
    id: Uuid,
    visitor_token: Option<&str>,
) -> ApiResult<conversation::Model> {
    if let Some(token) = visitor_token {
        let conv = st.runtime.find_for_visitor(id, token).await?;
        visitor_origin(st, origin, &conv).await?;
        return Ok(conv);
    }
    let user = match auth {
        Auth::User(_) => auth.user_id()?,
        Auth::Anonymous => {
            return Err(ApiError::Unauthenticated(
                "send a visitorToken, or log in as a member of the bot's team".into(),
            ));
        }
        Auth::Invalid(why) => return Err(ApiError::Unauthenticated((*why).to_owned())),
    };
    let conv = crate::db::by_key(conversation::Entity::find_by_id(id), st.db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    AccountAccess::require(st.db.conn(), user, conv.account_id, Role::Member)
        .await
        .map_err(|e| e.not_found_as("conversation"))?;
    Ok(conv)
}

/// `FORBIDDEN` when the conversation's bot does not allow the request's website.
async fn visitor_origin(
    st: &AppState,
    origin: Option<&RequestOrigin>,
    conv: &conversation::Model,
) -> ApiResult<()> {
    // Most visitors' requests (no `Origin`, or the hosted chat page's own) pass whatever
    // the bot lists: no read.
    let Some(origin) = origin.filter(|o| o.restricts()) else {
        return Ok(());
    };
    // A conversation goes with its bot: no bot, no conversation.
    let bot = crate::db::by_key(entity::bot::Entity::find_by_id(conv.bot_id), st.db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    check_origin(&bot, Some(origin))
}

/// The viewer of a team subscription, with its session checked now: a socket can outlive a
/// log-out, and a new operation on it must not start.
async fn active_viewer(st: &AppState, auth: &Auth) -> ApiResult<Viewer> {
    let viewer = *auth.viewer()?;
    st.sessions.require_open(&st.db, &viewer, false).await?;
    Ok(viewer)
}

/// Queries of conversations.
#[derive(Default)]
pub struct ConversationsQuery;

#[Object]
impl ConversationsQuery {
    /// A conversation of the viewer's team, or the visitor's own with `visitorToken`.
    async fn conversation(
        &self,
        ctx: &Context<'_>,
        id: ID,
        visitor_token: Option<String>,
    ) -> async_graphql::Result<Option<Conversation>> {
        let st = state(ctx)?;
        let auth = caller::auth(ctx).clone();
        let Ok(id) = parse_id(&id, "conversation") else {
            return Ok(None);
        };
        let reader = if visitor_token.is_some() {
            Reader::Visitor
        } else {
            Reader::Team
        };
        let origin = caller::origin(ctx);
        let conv = authorize(st, &auth, origin, id, visitor_token.as_deref())
            .await
            .found()?;
        Ok(conv.map(|c| Conversation(c, reader)))
    }
}

/// Mutations of conversations (no login: visitors).
#[derive(Default)]
pub struct ConversationsMutation;

#[Object]
impl ConversationsMutation {
    /// Starts a conversation on the bot's latest published version; its first events are
    /// stored and replayed to the first subscription.
    async fn start_conversation(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
        variables: Option<Json<serde_json::Value>>,
    ) -> async_graphql::Result<VisitorSession> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        let origin = caller::origin(ctx);
        // A bot this instance started conversations on lately needs no read: the start's
        // write checks that its version is still the published one. Unless the request's
        // origin can be refused: then the bot's list decides.
        let on = match st
            .runtime
            .seen_bot(bot_id)
            .filter(|_| !origin.is_some_and(RequestOrigin::restricts))
        {
            Some(seen) => StartOn::Seen(seen),
            None => {
                let read_at = st.runtime.bot_stamp();
                StartOn::Read(
                    bot_for_visitor(st.db.conn(), bot_id, origin).await?,
                    read_at,
                )
            }
        };
        st.limiters.start_from(caller::client(ctx))?;
        let session = st.runtime.start(on, variables.map(|v| v.0)).await?;
        Ok(VisitorSession {
            conversation_id: to_id(session.conversation_id),
            visitor_token: session.visitor_token,
        })
    }

    /// The visitor's answer to the pending question; returns the visitor's message as stored.
    async fn send_answer(
        &self,
        ctx: &Context<'_>,
        conversation_id: ID,
        visitor_token: String,
        text: String,
    ) -> async_graphql::Result<ChatEvent> {
        let st = state(ctx)?;
        let id = parse_id(&conversation_id, "conversation")?;
        // Only a browser on another website has anything to check (see `RequestOrigin::allows`).
        if let Some(origin) = caller::origin(ctx).filter(|o| o.restricts()) {
            let conv = st.runtime.visitors_conversation(id, &visitor_token).await?;
            visitor_origin(st, Some(origin), &conv).await?;
        }
        Ok(ChatEvent(
            st.runtime.answer(id, &visitor_token, &text).await?,
        ))
    }
}

/// Live events.
#[derive(Default)]
pub struct ConversationsSubscription;

#[Subscription]
impl ConversationsSubscription {
    /// Every stored event after `afterSeq`, then new ones as they happen: no gap, no repeat.
    async fn conversation_events(
        &self,
        ctx: &Context<'_>,
        conversation_id: ID,
        visitor_token: Option<String>,
        #[graphql(default = 0)] after_seq: i32,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<ChatEvent>>> {
        let st = state(ctx)?.clone();
        let auth = caller::auth(ctx).clone();
        let id = parse_id(&conversation_id, "conversation")?;
        // A team member's watch lasts as long as their access; a visitor's as their token.
        // The checks' futures are boxed: async-graphql keeps this resolver's future inline in
        // the subscription's stream for the subscription's whole life, and their queries
        // would size every idle subscription for the instant they run.
        let team = match visitor_token {
            Some(_) => None,
            None => Some(Box::pin(active_viewer(&st, &auth)).await?),
        };
        let origin = caller::origin(ctx);
        let conv = match visitor_token.as_deref() {
            // Only what never changes is checked (its token, its bot): what this instance
            // knows of the conversation will do.
            Some(token) => {
                let conv = Box::pin(st.runtime.visitors_conversation(id, token)).await?;
                Box::pin(visitor_origin(&st, origin, &conv)).await?;
                conv
            }
            None => Box::pin(authorize(&st, &auth, origin, id, None)).await?,
        };
        // Subscribe before reading the stored events: whatever is committed in between shows
        // up in both, and `seq` drops the repeat.
        let mut live = st.runtime.bus().subscribe_conversation(id);
        let runtime = st.runtime.clone();
        // Events up to here exist, unless the conversation is gone (its bot was deleted) since
        // it was found (perhaps in what this instance knew).
        let stored_until = conv.last_seq;
        let events = async_stream::stream! {
            let _open = crate::metrics::Open::new("parley_subscriptions_open");
            let mut last = after_seq.max(0);
            // First the stored events, then whenever notices show a gap (or were missed), the
            // database again from the last `seq` sent: nothing is skipped or sent twice.
            let mut read_stored = true;
            loop {
                if read_stored {
                    // Boxed: the query's future is large, and inline it would size the state
                    // of every idle subscription (about 4.5 KB each), though it is only alive
                    // while the stored events are read.
                    match Box::pin(runtime.events_after(id, last)).await {
                        Ok(stored) if stored.is_empty() && last < stored_until => {
                            yield Err(ApiError::not_found("conversation").into());
                            return;
                        }
                        Ok(stored) => {
                            // A full page means there may be more: read on before waiting.
                            let full = stored.len() as u64 >= REPLAY_PAGE;
                            for e in stored {
                                last = e.seq;
                                let ended = e.kind == kind::ENDED;
                                yield Ok(ChatEvent(e));
                                if ended {
                                    return;
                                }
                            }
                            if full {
                                continue;
                            }
                        }
                        Err(e) => { yield Err(e.into()); return; }
                    }
                }
                read_stored = match live.recv().await {
                    Ok(Notice::Event(event)) if event.seq <= last => false,
                    Ok(Notice::Event(event)) if event.seq == last + 1 => {
                        last = event.seq;
                        let ended = event.kind == kind::ENDED;
                        yield Ok(ChatEvent(event));
                        if ended {
                            // The conversation is over: the subscription completes.
                            return;
                        }
                        false
                    }
                    Ok(Notice::Event(_)) | Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                };
            }
        };
        Ok(match team {
            Some(viewer) => watch::guard(st, viewer, conv.account_id, events),
            None => events.boxed(),
        })
    }

    /// Every new event of the account's bots (team members).
    async fn account_events(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<ChatEvent>>> {
        let st = state(ctx)?.clone();
        let auth = caller::auth(ctx).clone();
        // Boxed for the reason given in `conversation_events`.
        let viewer = Box::pin(active_viewer(&st, &auth)).await?;
        let account_id = parse_id(&account_id, "account")?;
        Box::pin(AccountAccess::require(
            st.db.conn(),
            viewer.user_id,
            account_id,
            Role::Member,
        ))
        .await?;
        let mut live = st.runtime.bus().subscribe_account(account_id);
        let events = async_stream::stream! {
            let _open = crate::metrics::Open::new("parley_subscriptions_open");
            loop {
                match live.recv().await {
                    Ok(Notice::Event(event)) => yield Ok(ChatEvent(event)),
                    Ok(Notice::Resync) => {
                        tracing::warn!(account.id = %account_id, "account subscriber may have missed events while a listener reconnected");
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(account.id = %account_id, skipped = n, "account subscriber lagged");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        };
        Ok(watch::guard(st, viewer, account_id, events))
    }
}
