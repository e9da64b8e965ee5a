//! Failed deliveries had no index of their own: counting them (the `parley_deliveries` gauge
//! at every scrape of `/metrics`) read every delivery, payload pages and all, and a webhook's
//! "retry failed" walked all of that webhook's deliveries since the given time. This index
//! holds failed deliveries only, by webhook and creation: a delivery enters it when it fails
//! for good, which is rare, so the hot path (inserting, claiming, succeeding) never writes it.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_deliveries_failed")
                    .table(Deliveries::Table)
                    .col(Deliveries::WebhookId)
                    .col(Deliveries::CreatedAt)
                    // The queries spell this test with the literal, so that PostgreSQL's
                    // generic plans and SQLite can prove it and use the index.
                    .and_where(Expr::col(Deliveries::Status).eq("FAILED"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_deliveries_failed")
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
    WebhookId,
    Status,
    CreatedAt,
}
