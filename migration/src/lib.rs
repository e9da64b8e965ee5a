//! Database migrations. Once landed, a migration is never edited: later changes are new files
//! named `mYYYYMMDD_HHMMSS_verb_noun`.
pub use sea_orm_migration::prelude::*;

mod m20261126_010000_create_accounts;
mod m20261126_020000_create_bots_and_webhooks;
mod m20261126_030000_create_deliveries;
mod m20261126_040000_create_conversations;
mod m20261128_010000_add_delivery_claimant;
mod m20261128_120000_create_sessions;
mod m20261128_120100_create_audit_log;
mod m20261128_200000_add_bot_appearance;
mod m20261128_210000_create_api_keys;
mod m20261128_210100_add_event_block;
mod m20261128_210200_add_webhook_event_types;
mod m20261128_210300_add_webhook_disabling;
mod m20261128_210400_add_webhook_rate;
mod m20261128_220000_add_bot_typing_delay;
mod m20261128_220100_add_conversation_resume;
mod m20261128_220200_add_conversation_callback;
mod m20261129_010000_create_instances;
mod m20261129_160000_replace_delivery_due_index;
mod m20261130_100000_replace_sparse_conversation_indexes;
mod m20261130_113000_narrow_delivery_due_index;
mod m20261201_080000_add_delivery_failed_index;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_010000_create_accounts::Migration),
            Box::new(m20261126_020000_create_bots_and_webhooks::Migration),
            Box::new(m20261126_030000_create_deliveries::Migration),
            Box::new(m20261126_040000_create_conversations::Migration),
            Box::new(m20261128_010000_add_delivery_claimant::Migration),
            Box::new(m20261128_120000_create_sessions::Migration),
            Box::new(m20261128_120100_create_audit_log::Migration),
            Box::new(m20261128_200000_add_bot_appearance::Migration),
            Box::new(m20261128_210000_create_api_keys::Migration),
            Box::new(m20261128_210100_add_event_block::Migration),
            Box::new(m20261128_210200_add_webhook_event_types::Migration),
            Box::new(m20261128_210300_add_webhook_disabling::Migration),
            Box::new(m20261128_210400_add_webhook_rate::Migration),
            Box::new(m20261128_220000_add_bot_typing_delay::Migration),
            Box::new(m20261128_220100_add_conversation_resume::Migration),
            Box::new(m20261128_220200_add_conversation_callback::Migration),
            Box::new(m20261129_010000_create_instances::Migration),
            Box::new(m20261129_160000_replace_delivery_due_index::Migration),
            Box::new(m20261130_100000_replace_sparse_conversation_indexes::Migration),
            Box::new(m20261130_113000_narrow_delivery_due_index::Migration),
            Box::new(m20261201_080000_add_delivery_failed_index::Migration),
        ]
    }
}
