//! An endpoint of the account's webhooks page. Tenant-owned.
use sea_orm::entity::prelude::*;

/// A row of `webhooks`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhooks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub url: String,
    /// `[{"name": …, "value": …}]`, sent with every call.
    pub headers: Json,
    pub created_at: DateTimeUtc,
    /// Lifecycle events sent to it, by wire name (`["conversation.completed"]`); null means
    /// none (only calls from flow blocks).
    pub event_types: Option<Json>,
    pub updated_at: DateTimeUtc,
    /// Since when its async attempts fail without a success in between.
    pub failing_since: Option<DateTimeUtc>,
    /// Async attempts failed since `failing_since`.
    pub failed_attempts: i32,
    /// When it was disabled (its deliveries are held until `enableWebhook`).
    pub disabled_at: Option<DateTimeUtc>,
    pub disabled_reason: Option<String>,
    /// Most deliveries sent per second (per instance); none when null.
    pub max_per_second: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Webhooks of one account: the only way to read webhooks.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::AccountId.eq(account_id))
    }
}
