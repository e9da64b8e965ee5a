//! A published, frozen flow. Conversations keep running on the version they started on.
use sea_orm::entity::prelude::*;

/// A row of `bot_versions`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bot_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub bot_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: i32,
    pub account_id: Uuid,
    pub flow: Json,
    pub published_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Versions of the bots of one account.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::AccountId.eq(account_id))
    }
}
