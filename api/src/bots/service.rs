//! The bots service. Every read starts from the viewer's membership of the bot's account.
use std::collections::HashSet;

use chrono::Utc;
use entity::{Role, bot, bot_version, webhook};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::validate::{self, Limits};
use crate::{
    accounts::{AccountAccess, service::parse_name},
    db::Db,
    engine::model::Flow,
    error::{ApiError, ApiResult, Problem},
    settings,
};

/// A bot with the viewer's role in its account.
#[derive(Clone, Debug)]
pub struct BotView {
    pub bot: bot::Model,
    pub role: Role,
}

/// The flow stored as JSON, read back. A stored flow always parses; if it did not, that is a
/// bug worth an internal error rather than a silent empty flow.
pub fn parse_stored_flow(json: &serde_json::Value) -> ApiResult<Flow> {
    serde_json::from_value(json.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored flow does not parse: {e}")))
}

/// A bot the viewer may see (any role), or NOT_FOUND.
pub async fn find_bot(
    db: &impl ConnectionTrait,
    viewer: Uuid,
    bot_id: Uuid,
    at_least: Role,
) -> ApiResult<BotView> {
    // Look the bot up, then the viewer's membership of its account: a bot of an account the
    // viewer is not in answers exactly like a missing one.
    let bot = bot::Entity::find_by_id(bot_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("bot"))?;
    let role = AccountAccess::require(db, viewer, bot.account_id, at_least)
        .await
        .map_err(|e| e.not_found_as("bot"))?;
    Ok(BotView { bot, role })
}

/// The bots of an account the viewer belongs to, oldest first.
pub async fn list_bots(db: &Db, account_id: Uuid) -> ApiResult<Vec<bot::Model>> {
    Ok(bot::Entity::find_in_account(account_id)
        .order_by_asc(bot::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}

/// A new bot with an empty draft (ADMIN).
pub async fn create_bot(
    db: &Db,
    limits: &settings::Limits,
    viewer: Uuid,
    account_id: Uuid,
    name: &str,
) -> ApiResult<BotView> {
    let role = AccountAccess::require(db.conn(), viewer, account_id, Role::Admin).await?;
    let name = parse_name("name", name)?;
    let count = bot::Entity::find_in_account(account_id)
        .count(db.conn())
        .await?;
    crate::limits::check_quota(
        "bots",
        count,
        limits.max_bots_per_account,
        "PARLEY_MAX_BOTS_PER_ACCOUNT",
    )?;
    let now = Utc::now();
    let bot = bot::Model {
        id: Uuid::now_v7(),
        account_id,
        name,
        draft_flow: serde_json::to_value(Flow::default()).map_err(anyhow::Error::from)?,
        revision: 0,
        published_version: None,
        appearance: None,
        allowed_origins: None,
        typing_delay_ms: 0,
        created_at: now,
        updated_at: now,
    };
    bot::Entity::insert(bot::ActiveModel::from(bot.clone()))
        .exec_without_returning(db.writer())
        .await?;
    Ok(BotView { bot, role })
}

/// Renames a bot (ADMIN).
pub async fn rename_bot(db: &Db, viewer: Uuid, bot_id: Uuid, name: &str) -> ApiResult<BotView> {
    let mut view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    let name = parse_name("name", name)?;
    let now = Utc::now();
    bot::Entity::update(bot::ActiveModel {
        id: Set(bot_id),
        name: Set(name.clone()),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(db.writer())
    .await?;
    view.bot.name = name;
    view.bot.updated_at = now;
    Ok(view)
}

/// Deletes a bot with its versions and conversations (ADMIN).
pub async fn delete_bot(db: &Db, viewer: Uuid, bot_id: Uuid) -> ApiResult<bool> {
    find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    bot::Entity::delete_by_id(bot_id).exec(db.writer()).await?;
    Ok(true)
}

/// The ids of an account's webhooks, as strings, for flow validation.
async fn webhook_ids(db: &impl ConnectionTrait, account_id: Uuid) -> ApiResult<HashSet<String>> {
    let ids: Vec<Uuid> = webhook::Entity::find_in_account(account_id)
        .select_only()
        .column(webhook::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}

/// Every problem of `flow` for this account, with webhook ids checked against its webhooks.
pub async fn check_flow(
    db: &impl ConnectionTrait,
    limits: &settings::Limits,
    account_id: Uuid,
    flow: &Flow,
) -> ApiResult<Vec<Problem>> {
    let webhooks = webhook_ids(db, account_id).await?;
    let exists = |id: &str| webhooks.contains(&id.to_ascii_lowercase());
    let limits = Limits {
        max_blocks: limits.max_flow_blocks,
        ..Limits::default()
    };
    Ok(validate::validate_flow(flow, &exists, &limits)
        .into_iter()
        .map(|p| Problem {
            block_id: p.block_id,
            field: p.field,
            message: p.message,
        })
        .collect())
}

fn invalid_flow(problems: Vec<Problem>) -> ApiError {
    let n = problems.len();
    ApiError::BadUserInput {
        message: format!(
            "the flow has {n} problem{}; see extensions.problems",
            if n == 1 { "" } else { "s" }
        ),
        problems,
    }
}

/// Replaces the draft (ADMIN). With `expected_revision`, refuses to overwrite someone else's
/// newer save (CONFLICT).
pub async fn save_flow(
    db: &Db,
    limits: &settings::Limits,
    viewer: Uuid,
    bot_id: Uuid,
    flow: Flow,
    expected_revision: Option<i32>,
) -> ApiResult<BotView> {
    let view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    let mut problems = check_flow(db.conn(), limits, view.bot.account_id, &flow).await?;
    let json = serde_json::to_value(&flow).map_err(anyhow::Error::from)?;
    let bytes = json.to_string().len();
    if bytes > limits.max_flow_bytes {
        problems.push(Problem {
            block_id: None,
            field: "flow".into(),
            message: format!(
                "The flow is {bytes} bytes as JSON; at most {} are allowed (PARLEY_MAX_FLOW_BYTES).",
                limits.max_flow_bytes
            ),
        });
    }
    if !problems.is_empty() {
        return Err(invalid_flow(problems));
    }
    let base = expected_revision.unwrap_or(view.bot.revision);
    if base != view.bot.revision {
        return Err(revision_conflict(view.bot.revision, base));
    }
    let now = Utc::now();
    // Compare-and-set on the revision, so that two concurrent saves cannot both win.
    let result = bot::Entity::update_many()
        .col_expr(bot::Column::DraftFlow, json.clone().into())
        .col_expr(bot::Column::Revision, (base + 1).into())
        .col_expr(bot::Column::UpdatedAt, now.into())
        .filter(bot::Column::Id.eq(bot_id))
        .filter(bot::Column::Revision.eq(base))
        .exec(db.writer())
        .await?;
    if result.rows_affected == 0 {
        let current = find_bot(db.conn(), viewer, bot_id, Role::Member).await?;
        return Err(revision_conflict(current.bot.revision, base));
    }
    let bot = bot::Model {
        draft_flow: json,
        revision: base + 1,
        updated_at: now,
        ..view.bot
    };
    Ok(BotView {
        bot,
        role: view.role,
    })
}

fn revision_conflict(current: i32, expected: i32) -> ApiError {
    ApiError::Conflict(format!(
        "the flow was changed meanwhile: its revision is {current}, not {expected}; reload it and apply your changes again"
    ))
}

/// On PostgreSQL, share-locks the webhooks `flow` names until the transaction ends, so that
/// `delete_webhook` (which locks its webhook for update before looking for users) waits for
/// this publish and then sees its version; a webhook deleted first is missing here and the
/// flow is refused. SQLite's single writer already serialises the two.
async fn lock_named_webhooks(db: &Db, tx: &impl ConnectionTrait, flow: &Flow) -> ApiResult<()> {
    if db.kind() != settings::DatabaseKind::Postgres {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = flow
        .blocks
        .iter()
        .filter_map(|b| b.webhook_id.as_deref())
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    webhook::Entity::find()
        .filter(webhook::Column::Id.is_in(ids))
        .order_by_asc(webhook::Column::Id)
        .select_only()
        .column(webhook::Column::Id)
        .lock_shared()
        .into_tuple::<Uuid>()
        .all(tx)
        .await?;
    Ok(())
}

/// Freezes the draft as the next version (ADMIN). An empty or invalid draft is refused.
pub async fn publish_bot(
    db: &Db,
    limits: &settings::Limits,
    viewer: Uuid,
    bot_id: Uuid,
) -> ApiResult<bot_version::Model> {
    let view = find_bot(db.conn(), viewer, bot_id, Role::Admin).await?;
    let tx = db.write().await?;
    // Re-read inside the transaction: the draft published is the one current at commit.
    let bot = bot::Entity::find_by_id(bot_id)
        .one(&tx.tx)
        .await?
        .ok_or_else(|| ApiError::not_found("bot"))?;
    let flow = parse_stored_flow(&bot.draft_flow)?;
    if flow.blocks.is_empty() {
        return Err(ApiError::bad_input(
            "the flow is empty: add blocks before publishing",
        ));
    }
    lock_named_webhooks(db, &tx.tx, &flow).await?;
    let problems = check_flow(&tx.tx, limits, view.bot.account_id, &flow).await?;
    if !problems.is_empty() {
        return Err(invalid_flow(problems));
    }
    let last: Option<i32> = bot_version::Entity::find()
        .filter(bot_version::Column::BotId.eq(bot_id))
        .select_only()
        .column_as(bot_version::Column::Version.max(), "max")
        .into_tuple::<Option<i32>>()
        .one(&tx.tx)
        .await?
        .flatten();
    let version = bot_version::Model {
        bot_id,
        version: last.unwrap_or(0) + 1,
        account_id: bot.account_id,
        flow: bot.draft_flow.clone(),
        published_at: Utc::now(),
    };
    bot_version::Entity::insert(bot_version::ActiveModel::from(version.clone()))
        .exec_without_returning(&tx.tx)
        .await
        .map_err(|e| match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => ApiError::Conflict(
                "another publish of this bot happened at the same time; try again".into(),
            ),
            _ => e.into(),
        })?;
    bot::Entity::update(bot::ActiveModel {
        id: Set(bot_id),
        published_version: Set(Some(version.version)),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    crate::audit::record(
        &tx.tx,
        crate::audit::Entry {
            account_id: bot.account_id,
            actor_id: Some(viewer),
            action: crate::audit::action::BOT_PUBLISHED,
            target_type: "bot",
            target_id: bot_id.to_string(),
            details: Some(serde_json::json!({ "name": bot.name, "version": version.version })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(version)
}

/// One version of a bot.
pub async fn version(
    db: &impl ConnectionTrait,
    bot_id: Uuid,
    version: i32,
) -> ApiResult<Option<bot_version::Model>> {
    Ok(bot_version::Entity::find_by_id((bot_id, version))
        .one(db)
        .await?)
}

/// Every version of a bot, newest first.
pub async fn versions(
    db: &Db,
    bot_id: Uuid,
    first: u64,
    before: Option<i32>,
) -> ApiResult<Vec<bot_version::Model>> {
    let mut q = bot_version::Entity::find().filter(bot_version::Column::BotId.eq(bot_id));
    if let Some(before) = before {
        q = q.filter(bot_version::Column::Version.lt(before));
    }
    Ok(q.order_by_desc(bot_version::Column::Version)
        .limit(first)
        .all(db.conn())
        .await?)
}

/// The warnings of a draft: blocks no path reaches.
pub fn flow_warnings(flow: &Flow) -> Vec<Problem> {
    validate::unreachable_blocks(flow)
        .into_iter()
        .map(|id| Problem {
            message: format!("block {id:?} cannot be reached from the start block"),
            block_id: Some(id),
            field: "id".into(),
        })
        .collect()
}

/// Names of the bots whose draft or any published version uses `webhook_id`.
pub async fn bots_using_webhook(
    db: &impl ConnectionTrait,
    account_id: Uuid,
    webhook_id: Uuid,
) -> ApiResult<Vec<String>> {
    let id = webhook_id.to_string();
    let uses = |flow: &serde_json::Value| -> ApiResult<bool> {
        let flow = parse_stored_flow(flow)?;
        Ok(flow.blocks.iter().any(|b| {
            b.webhook_id
                .as_deref()
                .is_some_and(|w| w.eq_ignore_ascii_case(&id))
        }))
    };
    let bots = bot::Entity::find_in_account(account_id)
        .order_by_asc(bot::Column::Name)
        .all(db)
        .await?;
    let versions = bot_version::Entity::find_in_account(account_id)
        .all(db)
        .await?;
    let mut names = Vec::new();
    for bot in bots {
        let mut used = uses(&bot.draft_flow)?;
        for v in versions.iter().filter(|v| v.bot_id == bot.id) {
            used = used || uses(&v.flow)?;
        }
        if used {
            names.push(bot.name);
        }
    }
    Ok(names)
}
