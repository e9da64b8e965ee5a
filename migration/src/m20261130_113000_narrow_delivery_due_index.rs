//! The outbox's due index held every delivery, finished ones included, and its claim column:
//! each claim and each finished attempt moved the row's entry (and, on PostgreSQL, made the
//! update write a new entry in every index of `deliveries`, since an indexed column changed).
//! The poll only ever reads pending deliveries, by due time (and the sweep of cut-off sync
//! calls, pending ones with none). This index holds only those, and only that time: a claim
//! changes no indexed column (on PostgreSQL it can be a HOT update, writing no index entry),
//! a finished delivery leaves the index, and the poll walks pending rows only. It replaces the
//! covering index.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_pending_due")
                    .table(Deliveries::Table)
                    .col(Deliveries::NextAttemptAt)
                    // The queries spell this test with the literal, so that PostgreSQL's
                    // generic plans and SQLite can prove it and use the index.
                    .and_where(Expr::col(Deliveries::Status).eq("PENDING"))
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

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
                    .name("idx_deliveries_pending_due")
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
