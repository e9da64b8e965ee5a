//! The outbox's poll reads, of the pending deliveries due now, those no claim holds and their
//! webhooks. With only `(status, next_attempt_at)` indexed, every candidate (and every claimed
//! one it skips) costs a fetch of its whole row, payload included. This index holds every
//! column that read needs, so it never touches the rows; it starts with the old index's
//! columns, which it replaces.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_due_unclaimed")
                    .table(Deliveries::Table)
                    .col(Deliveries::Status)
                    .col(Deliveries::NextAttemptAt)
                    .col(Deliveries::ClaimedUntil)
                    .col(Deliveries::WebhookId)
                    .col(Deliveries::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_deliveries_due")
                    .table(Deliveries::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_due")
                    .table(Deliveries::Table)
                    .col(Deliveries::Status)
                    .col(Deliveries::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_deliveries_due_unclaimed")
                    .table(Deliveries::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    WebhookId,
    Status,
    NextAttemptAt,
    ClaimedUntil,
}
