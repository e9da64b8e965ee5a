//! Direct access to the server's database, for scenarios that seed rows the API would take
//! minutes to create (written through the `entity` crate: the server's own tables, columns and
//! value encodings).
use std::time::Duration;

use anyhow::{Context as _, ensure};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait as _, DatabaseConnection, EntityTrait,
    TransactionTrait as _,
};

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
    settle_with(db, kind, "ANALYZE", table).await
}

/// Like [`settle`], and on PostgreSQL `table` VACUUMed too, as autovacuum leaves a table that
/// has lived a while: its visibility map set, so that a count can be answered from an index
/// alone. Right after a bulk insert none is, and a count visits every row whatever the index.
pub async fn settle_vacuumed(
    db: &DatabaseConnection,
    kind: DbKind,
    table: &str,
) -> anyhow::Result<()> {
    settle_with(db, kind, "VACUUM ANALYZE", table).await
}

async fn settle_with(
    db: &DatabaseConnection,
    kind: DbKind,
    postgres: &str,
    table: &str,
) -> anyhow::Result<()> {
    match kind {
        DbKind::Sqlite => {
            db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await?
        }
        DbKind::Postgres => {
            db.execute_unprepared(&format!("{postgres} {table}"))
                .await?
        }
    };
    Ok(())
}

/// Rows per INSERT: at most 14 columns × 500 = 7,000 bound values, under SQLite's 32,766 and
/// PostgreSQL's 65,535.
pub const ROWS_PER_INSERT: usize = 500;
/// Rows per transaction: few enough commits that they cost nothing next to the inserts.
pub const ROWS_PER_TX: usize = 10_000;

/// Inserts rows `0..n`, each made by `row`, with multi-row INSERTs of [`ROWS_PER_INSERT`] in
/// transactions of [`ROWS_PER_TX`]; fails unless every row was inserted. `what` names the
/// rows in errors.
pub async fn insert_rows<A: ActiveModelTrait>(
    db: &DatabaseConnection,
    n: usize,
    what: &str,
    row: impl Fn(usize) -> A,
) -> anyhow::Result<()> {
    for tx_start in (0..n).step_by(ROWS_PER_TX) {
        let tx = db.begin().await?;
        let tx_end = (tx_start + ROWS_PER_TX).min(n);
        for start in (tx_start..tx_end).step_by(ROWS_PER_INSERT) {
            let end = (start + ROWS_PER_INSERT).min(tx_end);
            let inserted = A::Entity::insert_many((start..end).map(&row))
                .exec_without_returning(&tx)
                .await
                .with_context(|| format!("cannot insert {what} {start}..{end}"))?;
            ensure!(
                inserted == (end - start) as u64,
                "{inserted} {what} inserted, not {}",
                end - start
            );
        }
        tx.commit().await?;
    }
    Ok(())
}
