//! A bot: its draft flow and which version is published. Tenant-owned.
use sea_orm::entity::prelude::*;

/// A row of `bots`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bots")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    /// The flow being edited, as JSON (the engine's `Flow`).
    pub draft_flow: Json,
    /// Bumped by every save of the draft: optimistic concurrency for editors.
    pub revision: i32,
    /// The latest published version, if any.
    pub published_version: Option<i32>,
    /// How the chat widget looks (`Appearance` as a JSON object); null = the defaults.
    pub appearance: Option<Json>,
    /// Origins allowed to embed the bot (a JSON array of strings); null or empty = any.
    pub allowed_origins: Option<Json>,
    /// Milliseconds the chat widget waits between two consecutive bot messages (0 to 10,000).
    pub typing_delay_ms: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// Bots of one account: the only way to read bots.
    pub fn find_in_account(account_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::AccountId.eq(account_id))
    }
}
