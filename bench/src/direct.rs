//! Direct access to the server's database, for scenarios that seed rows the API would take
//! minutes to create (written through the `entity` crate: the server's own tables, columns and
//! value encodings).
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::{ConnectOptions, ConnectionTrait as _, DatabaseConnection};

use crate::server::{DbKind, Server};

/// One connection to the database of `server`.
pub async fn connect(server: &Server, kind: DbKind) -> anyhow::Result<DatabaseConnection> {
    let url = server
        .db
        .as_ref()
        .context("the server has no database")?
        .url()
        .to_owned();
    let mut options = ConnectOptions::new(url.as_str());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(1);
    if kind == DbKind::Sqlite {
        // The server holds the same file open; its own writes wait instead of failing.
        options.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(30)));
    }
    sea_orm::Database::connect(options)
        .await
        .with_context(|| format!("cannot connect to the server's database {url}"))
}

/// Leaves `table` ready for the server's queries after a bulk insert: the WAL folded in on
/// SQLite, fresh statistics on PostgreSQL.
pub async fn settle(db: &DatabaseConnection, kind: DbKind, table: &str) -> anyhow::Result<()> {
    match kind {
        DbKind::Sqlite => {
            db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await?
        }
        DbKind::Postgres => db.execute_unprepared(&format!("ANALYZE {table}")).await?,
    };
    Ok(())
}
