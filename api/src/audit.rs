//! The audit log: who did what in an account, and when. Entries are written in the same
//! transaction as the change they record, so the log never claims what did not happen.
use async_graphql::{Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::audit_log;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    error::ApiResult,
    pagination::{page_size, parse_cursor},
};

/// What was done, as stored and shown (`member.invited`, `webhook.deleted`, …).
pub mod action {
    pub const MEMBER_INVITED: &str = "member.invited";
    pub const INVITATION_REVOKED: &str = "invitation.revoked";
    pub const MEMBER_JOINED: &str = "member.joined";
    pub const MEMBER_REMOVED: &str = "member.removed";
    pub const MEMBER_ROLE_CHANGED: &str = "member.role_changed";
    pub const WEBHOOK_CREATED: &str = "webhook.created";
    pub const WEBHOOK_UPDATED: &str = "webhook.updated";
    pub const WEBHOOK_DELETED: &str = "webhook.deleted";
    pub const WEBHOOK_SECRET_ROTATED: &str = "webhook.secret_rotated";
    pub const BOT_PUBLISHED: &str = "bot.published";
    pub const API_KEY_CREATED: &str = "apiKey.created";
    pub const API_KEY_REVOKED: &str = "apiKey.revoked";
}

/// One change to record.
pub struct Entry<'a> {
    pub account_id: Uuid,
    pub actor_id: Option<Uuid>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    pub details: Option<Value>,
}

/// Writes `entry`, within the transaction of the change it records.
pub async fn record(db: &impl ConnectionTrait, entry: Entry<'_>) -> ApiResult<()> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        account_id: Set(entry.account_id),
        actor_id: Set(entry.actor_id),
        action: Set(entry.action.to_owned()),
        target_type: Set(Some(entry.target_type.to_owned())),
        target_id: Set(Some(entry.target_id)),
        details: Set(entry.details),
        at: Set(Utc::now()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// A page of an account's log, newest first; the caller has checked the viewer's role.
pub async fn page(
    db: &impl ConnectionTrait,
    account_id: Uuid,
    first: Option<i32>,
    after: Option<&str>,
) -> ApiResult<(Vec<audit_log::Model>, bool)> {
    let first = page_size(first)?;
    let mut q = audit_log::Entity::find_in_account(account_id).order_by_desc(audit_log::Column::Id);
    if let Some(after) = parse_cursor(after)? {
        q = q.filter(sea_orm::ColumnTrait::lt(&audit_log::Column::Id, after));
    }
    let mut rows = q.limit(first + 1).all(db).await?;
    let more = rows.len() as u64 > first;
    rows.truncate(first as usize);
    Ok((rows, more))
}

/// One entry of the audit log.
#[derive(SimpleObject)]
pub struct AuditEntry {
    pub id: async_graphql::ID,
    /// Who acted (a user id); null for the server itself.
    pub actor_id: Option<async_graphql::ID>,
    /// Such as `member.invited`, `member.role_changed`, `webhook.deleted`, `bot.published`.
    pub action: String,
    /// `member`, `invitation`, `webhook`, `bot`, `apiKey`.
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// What changed, such as `{"from": "ADMIN", "to": "MEMBER"}`.
    pub details: Option<Json<Value>>,
    pub at: DateTime<Utc>,
}

impl From<audit_log::Model> for AuditEntry {
    fn from(m: audit_log::Model) -> Self {
        Self {
            id: m.id.to_string().into(),
            actor_id: m.actor_id.map(|a| a.to_string().into()),
            action: m.action,
            target_type: m.target_type,
            target_id: m.target_id,
            details: m.details.map(Json),
            at: m.at,
        }
    }
}
