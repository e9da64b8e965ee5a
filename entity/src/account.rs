//! A team: the tenant that owns bots, webhooks and conversations.
use sea_orm::entity::prelude::*;

/// A row of `accounts`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::membership::Entity")]
    Membership,
}

impl Related<super::membership::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Membership.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// The account, only if `user_id` is one of its members: the one way to read an account
    /// on someone's behalf, so that another team's ids behave as if they did not exist.
    pub fn find_for_member(account_id: Uuid, user_id: Uuid) -> Select<Entity> {
        Entity::find_by_id(account_id)
            .inner_join(super::membership::Entity)
            .filter(super::membership::Column::UserId.eq(user_id))
    }
}
