//! When a pausing conversation (a WAIT block, a webhook's `wait`) goes on, and which instance
//! has claimed that continuation, so that a pause survives a restart and several instances
//! never continue one conversation twice.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            timestamp_with_time_zone_null(Conversations::ResumeAt),
            string_null(Conversations::ResumeClaimedBy),
            timestamp_with_time_zone_null(Conversations::ResumeClaimedUntil),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Conversations::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_resume_at")
                    .table(Conversations::Table)
                    .col(Conversations::ResumeAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_conversations_resume_at")
                    .table(Conversations::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        for column in [
            Conversations::ResumeAt,
            Conversations::ResumeClaimedBy,
            Conversations::ResumeClaimedUntil,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Conversations::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Conversations {
    Table,
    ResumeAt,
    ResumeClaimedBy,
    ResumeClaimedUntil,
}
