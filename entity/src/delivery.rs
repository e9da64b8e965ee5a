//! A webhook call to make (the outbox) and its outcome. Tenant-owned.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// How the call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(8))")]
pub enum DeliveryMode {
    /// In the background, retried until it succeeds or the schedule runs out.
    #[sea_orm(string_value = "ASYNC")]
    Async,
    /// During a conversation, once, with a short deadline.
    #[sea_orm(string_value = "SYNC")]
    Sync,
    /// A sample sent from the webhooks page.
    #[sea_orm(string_value = "TEST")]
    Test,
}

/// Where the delivery stands.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(12))")]
pub enum DeliveryStatus {
    #[sea_orm(string_value = "PENDING")]
    Pending,
    #[sea_orm(string_value = "SUCCEEDED")]
    Succeeded,
    #[sea_orm(string_value = "FAILED")]
    Failed,
}

/// A row of `deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub account_id: Uuid,
    pub webhook_id: Uuid,
    pub conversation_id: Option<Uuid>,
    pub block_id: Option<String>,
    pub mode: DeliveryMode,
    pub status: DeliveryStatus,
    /// The JSON body, signed and sent as is on every attempt.
    pub payload: Json,
    pub attempt_count: i32,
    /// When a PENDING delivery is due next.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// A worker's lease: until then no other worker takes it.
    pub claimed_until: Option<DateTimeUtc>,
    /// The instance (`PARLEY_INSTANCE_ID`) that holds the claim.
    pub claimed_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Deliveries of one account.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::AccountId.eq(account_id))
    }
}
