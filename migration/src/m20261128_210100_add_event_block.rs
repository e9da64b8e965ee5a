//! Which block of the flow an event came from, for funnel stats. Events stored before this
//! migration have none (they count as unknown).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ConversationEvents::Table)
                    .add_column(text_null(ConversationEvents::BlockId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ConversationEvents::Table)
                    .drop_column(ConversationEvents::BlockId)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ConversationEvents {
    Table,
    BlockId,
}
