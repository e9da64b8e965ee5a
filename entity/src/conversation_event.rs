//! One event of a conversation's transcript, numbered by `seq` without gaps.
use sea_orm::entity::prelude::*;

/// A row of `conversation_events`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversation_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub conversation_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i32,
    pub account_id: Uuid,
    /// BOT_MESSAGE, QUESTION, VISITOR_MESSAGE, INVALID_ANSWER or ENDED.
    pub kind: String,
    pub text: Option<String>,
    /// For a QUESTION: `{"type": …, "choices": […]}`.
    pub input: Option<Json>,
    pub at: DateTimeUtc,
    /// The flow block the event came from; `None` for events stored before blocks were
    /// recorded.
    pub block_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
