//! A bot's look in the chat widget (`appearance`, a JSON object of optional strings) and the
//! websites allowed to embed it (`allowed_origins`, a JSON array of origins; empty or null =
//! any origin).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("bots", "appearance").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Bots::Table)
                        .add_column(json_binary_null(Bots::Appearance))
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("bots", "allowed_origins").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Bots::Table)
                        .add_column(json_binary_null(Bots::AllowedOrigins))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Bots::Appearance, Bots::AllowedOrigins] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Bots::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Bots {
    Table,
    Appearance,
    AllowedOrigins,
}
