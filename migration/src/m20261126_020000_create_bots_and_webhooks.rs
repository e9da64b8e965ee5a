use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261126_010000_create_accounts::Accounts;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Bots::Table)
                    .if_not_exists()
                    .col(pk_uuid(Bots::Id))
                    .col(uuid(Bots::AccountId))
                    .col(string(Bots::Name))
                    .col(json_binary(Bots::DraftFlow))
                    .col(integer(Bots::Revision))
                    .col(integer_null(Bots::PublishedVersion))
                    .col(timestamp_with_time_zone(Bots::CreatedAt))
                    .col(timestamp_with_time_zone(Bots::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Bots::Table, Bots::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_bots_account")
                    .table(Bots::Table)
                    .col(Bots::AccountId)
                    .col(Bots::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BotVersions::Table)
                    .if_not_exists()
                    .col(uuid(BotVersions::BotId))
                    .col(integer(BotVersions::Version))
                    .col(uuid(BotVersions::AccountId))
                    .col(json_binary(BotVersions::Flow))
                    .col(timestamp_with_time_zone(BotVersions::PublishedAt))
                    .primary_key(
                        Index::create()
                            .col(BotVersions::BotId)
                            .col(BotVersions::Version),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(BotVersions::Table, BotVersions::BotId)
                            .to(Bots::Table, Bots::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Webhooks::Table)
                    .if_not_exists()
                    .col(pk_uuid(Webhooks::Id))
                    .col(uuid(Webhooks::AccountId))
                    .col(string(Webhooks::Name))
                    .col(text(Webhooks::Url))
                    .col(json_binary(Webhooks::Headers))
                    .col(timestamp_with_time_zone(Webhooks::CreatedAt))
                    .col(timestamp_with_time_zone(Webhooks::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Webhooks::Table, Webhooks::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhooks_account")
                    .table(Webhooks::Table)
                    .col(Webhooks::AccountId)
                    .col(Webhooks::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookSecrets::Table)
                    .if_not_exists()
                    .col(pk_uuid(WebhookSecrets::Id))
                    .col(uuid(WebhookSecrets::WebhookId))
                    .col(string(WebhookSecrets::Secret))
                    .col(timestamp_with_time_zone(WebhookSecrets::CreatedAt))
                    .col(timestamp_with_time_zone_null(WebhookSecrets::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookSecrets::Table, WebhookSecrets::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_secrets_webhook")
                    .table(WebhookSecrets::Table)
                    .col(WebhookSecrets::WebhookId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebhookSecrets::Table.into_iden(),
            Webhooks::Table.into_iden(),
            BotVersions::Table.into_iden(),
            Bots::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
pub enum Bots {
    Table,
    Id,
    AccountId,
    Name,
    DraftFlow,
    Revision,
    PublishedVersion,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BotVersions {
    Table,
    BotId,
    Version,
    AccountId,
    Flow,
    PublishedAt,
}

#[derive(DeriveIden)]
pub enum Webhooks {
    Table,
    Id,
    AccountId,
    Name,
    Url,
    Headers,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookSecrets {
    Table,
    Id,
    WebhookId,
    Secret,
    CreatedAt,
    ExpiresAt,
}
