//! A visitor's conversation with a published bot version. Tenant-owned.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a conversation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(12))")]
pub enum ConversationStatus {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "ABANDONED")]
    Abandoned,
}

/// A row of `conversations`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub account_id: Uuid,
    pub bot_id: Uuid,
    /// The bot version it runs on, for its whole life.
    pub version: i32,
    pub status: ConversationStatus,
    /// The engine's state (position, answers, variables).
    pub state: Json,
    /// The `seq` of the newest event.
    pub last_seq: i32,
    /// SHA-256 of the visitor token.
    pub visitor_token_hash: String,
    pub started_at: DateTimeUtc,
    pub ended_at: Option<DateTimeUtc>,
    /// Last activity.
    pub updated_at: DateTimeUtc,
    /// When a pausing conversation goes on (its engine state is `waiting`); null otherwise.
    pub resume_at: Option<DateTimeUtc>,
    /// The instance (`PARLEY_INSTANCE_ID`) that claimed the continuation.
    pub resume_claimed_by: Option<String>,
    /// Until when that claim holds; a lapsed claim (a crashed instance) may be taken again.
    pub resume_claimed_until: Option<DateTimeUtc>,
    /// SHA-256 of the one-time token of the callback URL given out for a CALLBACK block;
    /// cleared when used, and when the conversation leaves the CALLBACK (timeout).
    pub callback_token_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Conversations of one account.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::AccountId.eq(account_id))
    }
}
