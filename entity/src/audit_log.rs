//! One entry of an account's audit log: who did what, to what, when.
use sea_orm::entity::prelude::*;

/// A row of `audit_log`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub account_id: Uuid,
    /// The user who acted; `None` for the server itself.
    pub actor_id: Option<Uuid>,
    /// Such as `member.invited`, `webhook.deleted`, `bot.published`.
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub details: Option<Json>,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// The log of one account: the only way to read it.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Self::find().filter(Column::AccountId.eq(account_id))
    }
}
