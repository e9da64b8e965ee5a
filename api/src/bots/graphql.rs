//! GraphQL surface of bots and flows: thin resolvers over `service`, and the typed mirror of
//! the engine's flow model.
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{Role, bot, bot_version};
use uuid::Uuid;

use super::service::{self, BotView};
use crate::{
    accounts::{AccountAccess, graphql::Account, service as accounts},
    auth::viewer,
    engine::model,
    error::{ApiError, Found as _, Problem},
    ids::{parse_id, to_id},
    state::state,
};

/// What a block does.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "BlockKind", remote = "model::BlockKind")]
pub enum BlockKindGql {
    Message,
    Question,
    Webhook,
    Condition,
    End,
}

/// How a question's answer is checked.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "QuestionType", remote = "model::QuestionType")]
pub enum QuestionTypeGql {
    Text,
    Email,
    Phone,
    Number,
    Choice,
}

/// How a condition compares a variable.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "ConditionOperator", remote = "model::ConditionOperator")]
pub enum ConditionOperatorGql {
    Equals,
    NotEquals,
    Contains,
    GreaterThan,
    LessThan,
    IsSet,
    IsNotSet,
}

/// A flow: blocks and where to start.
#[derive(SimpleObject)]
#[graphql(name = "Flow")]
pub struct FlowOut {
    start_block_id: Option<String>,
    blocks: Vec<BlockOut>,
}

/// One block of a flow.
#[derive(SimpleObject)]
#[graphql(name = "Block")]
pub struct BlockOut {
    id: String,
    kind: BlockKindGql,
    text: Option<String>,
    question_type: Option<QuestionTypeGql>,
    save_answer_to: Option<String>,
    choices: Option<Vec<ChoiceOut>>,
    webhook_id: Option<ID>,
    #[graphql(name = "async")]
    is_async: Option<bool>,
    conditions: Option<Vec<ConditionOut>>,
    next: Option<String>,
}

/// One option of a CHOICE question.
#[derive(SimpleObject, Clone)]
#[graphql(name = "Choice")]
pub struct ChoiceOut {
    pub label: String,
    pub value: Option<String>,
    pub next: Option<String>,
}

/// One test of a CONDITION block.
#[derive(SimpleObject)]
#[graphql(name = "Condition")]
pub struct ConditionOut {
    variable: String,
    operator: ConditionOperatorGql,
    value: Option<String>,
    next: String,
}

impl From<model::Choice> for ChoiceOut {
    fn from(c: model::Choice) -> Self {
        Self {
            label: c.label,
            value: c.value,
            next: c.next,
        }
    }
}

impl From<model::Flow> for FlowOut {
    fn from(f: model::Flow) -> Self {
        Self {
            start_block_id: f.start_block_id,
            blocks: f
                .blocks
                .into_iter()
                .map(|b| BlockOut {
                    id: b.id,
                    kind: b.kind.into(),
                    text: b.text,
                    question_type: b.question_type.map(Into::into),
                    save_answer_to: b.save_answer_to,
                    choices: b.choices.map(|cs| cs.into_iter().map(Into::into).collect()),
                    webhook_id: b.webhook_id.map(ID),
                    is_async: b.is_async,
                    conditions: b.conditions.map(|cs| {
                        cs.into_iter()
                            .map(|c| ConditionOut {
                                variable: c.variable,
                                operator: c.operator.into(),
                                value: c.value,
                                next: c.next,
                            })
                            .collect()
                    }),
                    next: b.next,
                })
                .collect(),
        }
    }
}

/// A flow to save as the draft.
#[derive(InputObject)]
pub struct FlowInput {
    start_block_id: String,
    blocks: Vec<BlockInput>,
}

/// One block to save.
#[derive(InputObject)]
pub struct BlockInput {
    id: String,
    kind: BlockKindGql,
    text: Option<String>,
    question_type: Option<QuestionTypeGql>,
    save_answer_to: Option<String>,
    choices: Option<Vec<ChoiceInput>>,
    webhook_id: Option<ID>,
    #[graphql(name = "async")]
    is_async: Option<bool>,
    conditions: Option<Vec<ConditionInput>>,
    next: Option<String>,
}

/// One option to save.
#[derive(InputObject)]
pub struct ChoiceInput {
    label: String,
    value: Option<String>,
    next: Option<String>,
}

/// One condition to save.
#[derive(InputObject)]
pub struct ConditionInput {
    variable: String,
    operator: ConditionOperatorGql,
    value: Option<String>,
    next: String,
}

impl From<FlowInput> for model::Flow {
    fn from(f: FlowInput) -> Self {
        Self {
            start_block_id: Some(f.start_block_id).filter(|s| !s.is_empty()),
            blocks: f
                .blocks
                .into_iter()
                .map(|b| model::Block {
                    id: b.id,
                    kind: b.kind.into(),
                    text: b.text,
                    question_type: b.question_type.map(Into::into),
                    save_answer_to: b.save_answer_to,
                    choices: b.choices.map(|cs| {
                        cs.into_iter()
                            .map(|c| model::Choice {
                                label: c.label,
                                value: c.value,
                                next: c.next,
                            })
                            .collect()
                    }),
                    // Stored lower-cased, the form in which ids are compared and printed.
                    webhook_id: b.webhook_id.map(|id| id.0.trim().to_ascii_lowercase()),
                    is_async: b.is_async,
                    conditions: b.conditions.map(|cs| {
                        cs.into_iter()
                            .map(|c| model::Condition {
                                variable: c.variable,
                                operator: c.operator.into(),
                                value: c.value,
                                next: c.next,
                            })
                            .collect()
                    }),
                    next: b.next,
                })
                .collect(),
        }
    }
}

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
        Ok(Bot(
            service::rename_bot(&st.db, viewer(ctx)?, id, &name).await?
        ))
    }

    /// Deletes a bot, its versions and its conversations (ADMIN).
    async fn delete_bot(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let id = parse_id(&id, "bot")?;
        Ok(service::delete_bot(&st.db, viewer(ctx)?, id).await?)
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

    /// Freezes the draft as the next version (ADMIN).
    async fn publish_bot(
        &self,
        ctx: &Context<'_>,
        bot_id: ID,
    ) -> async_graphql::Result<BotVersion> {
        let st = state(ctx)?;
        let bot_id = parse_id(&bot_id, "bot")?;
        Ok(BotVersion(
            service::publish_bot(&st.db, &st.settings.limits, viewer(ctx)?, bot_id).await?,
        ))
    }
}
