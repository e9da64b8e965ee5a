//! `resume_at` (a conversation paused at a WAIT) and `callback_token_hash` (one waiting at a
//! CALLBACK) are NULL on nearly every conversation, yet their indexes took an entry for each:
//! two index writes more for every conversation started and for every turn that moves one.
//! Their lookups compare the column (`resume_at <= now`, `callback_token_hash = hash`), which
//! no NULL satisfies, so PostgreSQL and SQLite alike can use indexes of only the rows that
//! have a value; these replace the full ones.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (full index, partial index, column)
const SPARSE: [(&str, &str, Conversations); 2] = [
    (
        "idx_conversations_resume_at",
        "idx_conversations_resume_at_set",
        Conversations::ResumeAt,
    ),
    (
        "idx_conversations_callback_token_hash",
        "idx_conversations_callback_token_hash_set",
        Conversations::CallbackTokenHash,
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (full, partial, column) in SPARSE {
            manager
                .create_index(
                    Index::create()
                        .name(partial)
                        .table(Conversations::Table)
                        .col(column)
                        .and_where(Expr::col(column).is_not_null())
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .drop_index(
                    Index::drop()
                        .name(full)
                        .table(Conversations::Table)
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (full, partial, column) in SPARSE {
            manager
                .create_index(
                    Index::create()
                        .name(full)
                        .table(Conversations::Table)
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .drop_index(
                    Index::drop()
                        .name(partial)
                        .table(Conversations::Table)
                        .if_exists()
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
    CallbackTokenHash,
}
