use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261126_020000_create_bots_and_webhooks::Bots;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .if_not_exists()
                    .col(pk_uuid(Conversations::Id))
                    .col(uuid(Conversations::AccountId))
                    .col(uuid(Conversations::BotId))
                    .col(integer(Conversations::Version))
                    .col(string_len(Conversations::Status, 12))
                    .col(json_binary(Conversations::State))
                    .col(integer(Conversations::LastSeq))
                    .col(string(Conversations::VisitorTokenHash))
                    .col(timestamp_with_time_zone(Conversations::StartedAt))
                    .col(timestamp_with_time_zone_null(Conversations::EndedAt))
                    .col(timestamp_with_time_zone(Conversations::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Conversations::Table, Conversations::BotId)
                            .to(Bots::Table, Bots::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_bot")
                    .table(Conversations::Table)
                    .col(Conversations::BotId)
                    .col(Conversations::StartedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_idle")
                    .table(Conversations::Table)
                    .col(Conversations::Status)
                    .col(Conversations::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConversationEvents::Table)
                    .if_not_exists()
                    .col(uuid(ConversationEvents::ConversationId))
                    .col(integer(ConversationEvents::Seq))
                    .col(uuid(ConversationEvents::AccountId))
                    .col(string_len(ConversationEvents::Kind, 20))
                    .col(text_null(ConversationEvents::Text))
                    .col(json_binary_null(ConversationEvents::Input))
                    .col(timestamp_with_time_zone(ConversationEvents::At))
                    .primary_key(
                        Index::create()
                            .col(ConversationEvents::ConversationId)
                            .col(ConversationEvents::Seq),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                ConversationEvents::Table,
                                ConversationEvents::ConversationId,
                            )
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ConversationEvents::Table.into_iden(),
            Conversations::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    AccountId,
    BotId,
    Version,
    Status,
    State,
    LastSeq,
    VisitorTokenHash,
    StartedAt,
    EndedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ConversationEvents {
    Table,
    ConversationId,
    Seq,
    AccountId,
    Kind,
    Text,
    Input,
    At,
}
