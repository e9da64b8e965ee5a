//! Who holds a delivery's claim: the instance id (`PARLEY_INSTANCE_ID`) of the worker or the
//! sync call that took it, so that an instance restarted after a crash releases its own
//! claims at once instead of waiting for their leases to lapse.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("deliveries", "claimed_by").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Deliveries::Table)
                        .add_column(string_null(Deliveries::ClaimedBy))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_conversation")
                    .table(Deliveries::Table)
                    .col(Deliveries::ConversationId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_deliveries_conversation")
                    .table(Deliveries::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Deliveries::Table)
                    .drop_column(Deliveries::ClaimedBy)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    ConversationId,
    ClaimedBy,
}
