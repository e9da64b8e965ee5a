//! One HTTP attempt of a delivery.
use sea_orm::entity::prelude::*;

/// A row of `delivery_attempts`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "delivery_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub delivery_id: Uuid,
    /// 1 for the first attempt.
    pub n: i32,
    pub at: DateTimeUtc,
    pub response_status: Option<i32>,
    pub duration_ms: i32,
    pub error: Option<String>,
    /// The start of the response body (64 KiB at most).
    pub response_body: Option<String>,
    /// What the reply contained that was skipped, such as unknown instructions.
    pub notes: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
