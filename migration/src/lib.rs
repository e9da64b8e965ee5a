//! Database migrations. Once landed, a migration is never edited: later changes are new files
//! named `mYYYYMMDD_HHMMSS_verb_noun`.
pub use sea_orm_migration::prelude::*;

mod m20261126_010000_create_accounts;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261126_010000_create_accounts::Migration)]
    }
}
