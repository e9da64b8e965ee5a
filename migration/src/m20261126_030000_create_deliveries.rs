use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261126_020000_create_bots_and_webhooks::Webhooks;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .if_not_exists()
                    .col(pk_uuid(Deliveries::Id))
                    .col(uuid(Deliveries::AccountId))
                    .col(uuid(Deliveries::WebhookId))
                    .col(uuid_null(Deliveries::ConversationId))
                    .col(string_null(Deliveries::BlockId))
                    .col(string_len(Deliveries::Mode, 8))
                    .col(string_len(Deliveries::Status, 12))
                    .col(json_binary(Deliveries::Payload))
                    .col(integer(Deliveries::AttemptCount))
                    .col(timestamp_with_time_zone_null(Deliveries::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(Deliveries::ClaimedUntil))
                    .col(timestamp_with_time_zone(Deliveries::CreatedAt))
                    .col(timestamp_with_time_zone(Deliveries::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Deliveries::Table, Deliveries::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
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
            .create_index(
                Index::create()
                    .name("idx_deliveries_webhook")
                    .table(Deliveries::Table)
                    .col(Deliveries::WebhookId)
                    .col(Deliveries::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempts::Table)
                    .if_not_exists()
                    .col(pk_uuid(DeliveryAttempts::Id))
                    .col(uuid(DeliveryAttempts::DeliveryId))
                    .col(integer(DeliveryAttempts::N))
                    .col(timestamp_with_time_zone(DeliveryAttempts::At))
                    .col(integer_null(DeliveryAttempts::ResponseStatus))
                    .col(integer(DeliveryAttempts::DurationMs))
                    .col(text_null(DeliveryAttempts::Error))
                    .col(text_null(DeliveryAttempts::ResponseBody))
                    .col(text_null(DeliveryAttempts::Notes))
                    .foreign_key(
                        ForeignKey::create()
                            .from(DeliveryAttempts::Table, DeliveryAttempts::DeliveryId)
                            .to(Deliveries::Table, Deliveries::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_attempts_delivery")
                    .table(DeliveryAttempts::Table)
                    .col(DeliveryAttempts::DeliveryId)
                    .col(DeliveryAttempts::N)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DeliveryAttempts::Table.into_iden(),
            Deliveries::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    AccountId,
    WebhookId,
    ConversationId,
    BlockId,
    Mode,
    Status,
    Payload,
    AttemptCount,
    NextAttemptAt,
    ClaimedUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    Id,
    DeliveryId,
    N,
    At,
    ResponseStatus,
    DurationMs,
    Error,
    ResponseBody,
    Notes,
}
