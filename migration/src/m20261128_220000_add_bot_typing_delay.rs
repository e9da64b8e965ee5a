//! The pause the chat widget makes between two consecutive bot messages, per bot.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Bots::Table)
                    .add_column(integer(Bots::TypingDelayMs).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Bots::Table)
                    .drop_column(Bots::TypingDelayMs)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Bots {
    Table,
    TypingDelayMs,
}
