//! GraphQL surface of bots and flows: thin resolvers over `service`, and the typed mirror of
//! the engine's flow model.
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{Role, bot, bot_version};
use uuid::Uuid;

use super::{
    appearance::{self, Appearance},
    flow_gql::{FlowInput, FlowOut},
    service::{self, BotView},
};
use crate::{
    accounts::{AccountAccess, graphql::Account, service as accounts},
    auth::viewer,
    edge::caller,
    error::{ApiError, Found as _, Problem},
    ids::{parse_id, to_id},
    state::state,
};

/// A problem or warning about a flow.
#[derive(SimpleObject)]
pub struct FlowProblem {
    block_id: Option<String>,
    field: String,
    message: String,
}

impl From<Problem> for FlowProblem {
    fn from(p: Problem) -> Self {
        Self {
            block_id: p.block_id,
            field: p.field,
            message: p.message,
        }
    }
}

/// A bot's funnel.
#[derive(SimpleObject)]
pub struct BotStats {
    started: i64,
    completed: i64,
    abandoned: i64,
    /// `completed / started`, 0 when none started.
    completion_rate: f64,
    /// Conversations not completed whose events predate block tracking (their block is
    /// unknown).
    dropped_off_unknown: i64,
    blocks: Vec<BlockStats>,
}

/// One block of a bot's funnel.
#[derive(SimpleObject)]
pub struct BlockStats {
    block_id: String,
    /// Conversations that reached this block.
    reached: i64,
    /// Conversations not completed that stopped at this block.
    dropped_off: i64,
}

/// A bot, as seen by a member of its account.
pub struct Bot(pub BotView);

#[Object]
impl Bot {
    async fn id(&self) -> ID {
        to_id(self.0.bot.id)
    }
    async fn name(&self) -> &str {
        &self.0.bot.name
    }
    async fn account(&self, ctx: &Context<'_>) -> async_graphql::Result<Account> {
        let st = state(ctx)?;
        let account = accounts::account_for(&st.db, viewer(ctx)?, self.0.bot.account_id)
            .await?
            .ok_or_else(|| ApiError::not_found("account"))?;
        Ok(Account(account))
    }
    /// The draft's revision, bumped by every `saveFlow`.
    async fn revision(&self) -> i32 {
        self.0.bot.revision
    }
    /// The draft flow.
    async fn flow(&self) -> async_graphql::Result<FlowOut> {
        Ok(service::parse_stored_flow(&self.0.bot.draft_flow)?.into())
    }
    /// What is allowed but probably a mistake in the draft, such as unreachable blocks.
    async fn flow_warnings(&self) -> async_graphql::Result<Vec<FlowProblem>> {
        let flow = service::parse_stored_flow(&self.0.bot.draft_flow)?;
        Ok(service::flow_warnings(&flow)
            .into_iter()
            .map(Into::into)
            .collect())
    }
    /// The latest published version.
    async fn published(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<BotVersion>> {
        let Some(v) = self.0.bot.published_version else {
            return Ok(None);
        };
        let st = state(ctx)?;
        Ok(service::version(st.db.conn(), self.0.bot.id, v)
            .await?
            .map(BotVersion))
    }
    /// Published versions, newest first: `first` of them (at most 100), older than `before`
    /// when given.
    #[graphql(complexity = "crate::pagination::page_cost(Some(first), child_complexity)")]
    async fn versions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        before: Option<i32>,
    ) -> async_graphql::Result<Vec<BotVersion>> {
        let st = state(ctx)?;
        let first = crate::pagination::page_size(Some(first))?;
        Ok(service::versions(&st.db, self.0.bot.id, first, before)
            .await?
            .into_iter()
            .map(BotVersion)
            .collect())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.bot.created_at
    }
    /// The bot's conversations, newest first; with `from`/`to`, those started in `[from, to)`.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn conversations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<crate::conversations::graphql::ConversationStatusGql>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<
        async_graphql::connection::Connection<String, crate::conversations::graphql::Conversation>,
    > {
        let filter = crate::results::ResultsFilter {
            from,
            to,
            status: status.map(Into::into),
        };
        crate::conversations::graphql::bot_conversations(ctx, self.0.bot.id, first, after, filter)
            .await
    }
    /// The funnel of conversations started in `[from, to)`: started, completed, abandoned,
    /// and per block (the latest version's in flow order, then older versions' blocks) how
    /// many conversations reached it and how many not completed stopped there.
    async fn stats(
        &self,
        ctx: &Context<'_>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<BotStats> {
        let st = state(ctx)?;
        let s = crate::stats::bot_stats(&st.db, self.0.bot.id, from, to).await?;
        Ok(BotStats {
            started: s.started,
            completed: s.completed,
            abandoned: s.abandoned,
            completion_rate: if s.started == 0 {
                0.0
            } else {
                s.completed as f64 / s.started as f64
            },
            dropped_off_unknown: s.dropped_off_unknown,
            blocks: s
                .blocks
                .into_iter()
                .map(|b| BlockStats {
                    block_id: b.block_id,
                    reached: b.reached,
                    dropped_off: b.dropped_off,
                })
                .collect(),
        })
    }
    /// Every `saveAnswerTo` name across the bot's published versions: the oldest version's in
    /// flow order first, then names that later versions added. The columns of the results
    /// export after its fixed ones.
    async fn result_fields(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        let st = state(ctx)?;
        Ok(crate::results::result_fields(&st.db, self.0.bot.id).await?)
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.bot.updated_at
    }
    /// How the chat widget looks.
    async fn appearance(&self) -> AppearanceOut {
        Appearance::of(&self.0.bot).into()
    }
    /// Websites (origins) allowed to use the bot's visitor operations; empty = any.
    async fn allowed_origins(&self) -> Vec<String> {
        appearance::allowed_origins(&self.0.bot)
    }
    /// Milliseconds the chat widget waits between two consecutive bot messages.
    async fn typing_delay_ms(&self) -> i32 {
        self.0.bot.typing_delay_ms
    }
}

/// How a bot looks in the chat widget; null fields take the widget's defaults.
#[derive(SimpleObject)]
#[graphql(name = "Appearance")]
pub struct AppearanceOut {
    title: Option<String>,
    primary_color: Option<String>,
    avatar_url: Option<String>,
    launcher_text: Option<String>,
}

impl From<Appearance> for AppearanceOut {
    fn from(a: Appearance) -> Self {
        Self {
            title: a.title,
            primary_color: a.primary_color,
            avatar_url: a.avatar_url,
            launcher_text: a.launcher_text,
        }
    }
}

/// A new appearance: blank fields are cleared.
#[derive(InputObject)]
pub struct AppearanceInput {
    title: Option<String>,
    /// A hex colour such as `#2563eb`.
    primary_color: Option<String>,
    /// An http(s) URL.
    avatar_url: Option<String>,
    launcher_text: Option<String>,
}

impl From<AppearanceInput> for Appearance {
    fn from(a: AppearanceInput) -> Self {
        Self {
            title: a.title,
            primary_color: a.primary_color,
            avatar_url: a.avatar_url,
            launcher_text: a.launcher_text,
        }
    }
}

/// What anyone may read of a published bot: enough to draw the chat widget.
pub struct PublicBot(pub bot::Model);

#[Object]
impl PublicBot {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn appearance(&self) -> AppearanceOut {
        Appearance::of(&self.0).into()
    }
    /// Milliseconds the widget waits (showing "typing") between two consecutive bot messages.
    async fn typing_delay_ms(&self) -> i32 {
        self.0.typing_delay_ms
    }
}

/// A published, frozen flow.
pub struct BotVersion(pub bot_version::Model);

#[Object]
impl BotVersion {
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn published_at(&self) -> DateTime<Utc> {
        self.0.published_at
    }
    async fn flow(&self) -> async_graphql::Result<FlowOut> {
        Ok(service::parse_stored_flow(&self.0.flow)?.into())
    }
}

/// The bots of an account for `Account.bots`; the caller has checked membership.
pub async fn account_bots(ctx: &Context<'_>, account_id: Uuid) -> async_graphql::Result<Vec<Bot>> {
    let st = state(ctx)?;
    let role = AccountAccess::require(st.db.conn(), viewer(ctx)?, account_id, Role::Member).await?;
    let bots = service::list_bots(&st.db, account_id).await?;
    Ok(bots
        .into_iter()
        .map(|bot: bot::Model| Bot(BotView { bot, role }))
        .collect())
}

/// Queries of bots.
#[derive(Default)]
pub struct BotsQuery;

#[Object]
impl BotsQuery {
    /// A bot of an account the viewer belongs to; null for any other id.
    async fn bot(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Bot>> {
        let st = state(ctx)?;
        let me = viewer(ctx)?;
        let Ok(id) = parse_id(&id, "bot") else {
            return Ok(None);
        };
        let view = service::find_bot(st.db.conn(), me, id, Role::Member)
            .await
            .found()?;
        Ok(view.map(Bot))
    }

    /// A published bot's name and appearance, without login (the chat widget); null unless
    /// published. FORBIDDEN from a website the bot does not allow.
    async fn public_bot(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<PublicBot>> {
        let st = state(ctx)?;
        let Ok(id) = parse_id(&id, "bot") else {
            return Ok(None);
        };
        let bot = appearance::public_bot(st.db.conn(), id, caller::origin(ctx)).await?;
        Ok(bot.map(PublicBot))
    }
}

/// Mutations of bots.
#[derive(Default)]
pub struct BotsMutation;

#[Object]
impl BotsMutation {
    /// A new bot with an empty draft (ADMIN).
    async fn create_bot(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        name: String,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        Ok(Bot(service::create_bot(
            &st.db,
            &st.settings.limits,
            viewer(ctx)?,
            account_id,
            &name,
        )
        .await?))
    }

    /// Renames a bot (ADMIN).
    async fn rename_bot(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: String,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let id = parse_id(&id, "bot")?;
        let viewer = viewer(ctx)?;
        let bot = st
            .to_the_end(move |st| async move {
                let bot = service::rename_bot(&st.db, viewer, id, &name).await?;
                st.runtime.forget_seen_bot(id);
                Ok(bot)
            })
            .await?;
        Ok(Bot(bot))
    }

    /// Deletes a bot, its versions and its conversations (ADMIN).
    async fn delete_bot(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let id = parse_id(&id, "bot")?;
        let viewer = viewer(ctx)?;
        let deleted = st
            .to_the_end(move |st| async move {
                let deleted = service::delete_bot(&st.db, viewer, id).await?;
                // Its conversations went with it: what this instance remembers of them must
                // go too.
                st.runtime.forget_bot(id);
                Ok(deleted)
            })
            .await?;
        Ok(deleted)
    }

    /// Replaces the draft flow (ADMIN); every problem is listed in `extensions.problems`.
    async fn save_flow(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
        flow: FlowInput,
        expected_revision: Option<i32>,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        Ok(Bot(service::save_flow(
            &st.db,
            &st.settings.limits,
            viewer(ctx)?,
            bot_id,
            flow.into(),
            expected_revision,
        )
        .await?))
    }

    /// Replaces how the chat widget looks (ADMIN).
    async fn update_bot_appearance(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
        appearance: AppearanceInput,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        Ok(Bot(appearance::update_appearance(
            &st.db,
            viewer(ctx)?,
            bot_id,
            appearance.into(),
        )
        .await?))
    }

    /// Replaces the websites allowed to embed the bot (ADMIN): origins as
    /// `scheme://host[:port]`; `[]` = any origin.
    async fn set_bot_allowed_origins(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
        origins: Vec<String>,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        Ok(Bot(appearance::set_allowed_origins(
            &st.db,
            viewer(ctx)?,
            bot_id,
            &origins,
        )
        .await?))
    }

    /// Sets how long the chat widget waits, showing that the bot is typing, between two
    /// consecutive bot messages (ADMIN): 0 (the default) to 10,000 milliseconds.
    async fn set_bot_typing_delay(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
        typing_delay_ms: i32,
    ) -> async_graphql::Result<Bot> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        Ok(Bot(appearance::set_typing_delay(
            &st.db,
            viewer(ctx)?,
            bot_id,
            typing_delay_ms,
        )
        .await?))
    }

    /// Freezes the draft as the next version (ADMIN).
    async fn publish_bot(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
    ) -> async_graphql::Result<BotVersion> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        let viewer = viewer(ctx)?;
        let version = st
            .to_the_end(move |st| async move {
                let version =
                    service::publish_bot(&st.db, &st.settings.limits, viewer, bot_id).await?;
                st.runtime.forget_seen_bot(bot_id);
                Ok(version)
            })
            .await?;
        Ok(BotVersion(version))
    }
}
