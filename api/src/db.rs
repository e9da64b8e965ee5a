//! The database handle: connection pool, migrations, and write transactions that SQLite's
//! single writer can take without "database is locked".
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use migration::MigratorTrait as _;
use sea_orm::{
    ConnectOptions, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::settings::{DatabaseKind, DatabaseUrl};

/// A connection pool plus what is needed to write safely on either engine.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    kind: DatabaseKind,
    /// SQLite has one writer per file. A deferred transaction that reads, then writes, fails at
    /// once with SQLITE_BUSY when another writer got in between (the busy timeout does not
    /// apply to that upgrade), so on SQLite write transactions queue here first.
    write_lock: Option<Arc<Mutex<()>>>,
}

/// A write transaction; on SQLite it also holds the process's write lock until dropped.
pub struct WriteTx {
    pub tx: DatabaseTransaction,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl WriteTx {
    /// Commits, then releases the write lock.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }
}

impl Db {
    /// Connects and tunes each connection for the engine.
    pub async fn connect(url: &DatabaseUrl) -> anyhow::Result<Self> {
        let mut opts = ConnectOptions::new(url.as_str());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30));
        match url.kind() {
            DatabaseKind::Sqlite => {
                opts.max_connections(8)
                    .min_connections(1)
                    .map_sqlx_sqlite_opts(|o| {
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Normal)
                            .busy_timeout(Duration::from_secs(10))
                            .foreign_keys(true)
                            .create_if_missing(true)
                    });
            }
            DatabaseKind::Postgres => {
                opts.max_connections(32).min_connections(1);
            }
        }
        let conn = sea_orm::Database::connect(opts).await.with_context(|| {
            format!(
                "cannot connect to the database (DATABASE_URL={})",
                redact(url.as_str())
            )
        })?;
        Ok(Self {
            conn,
            kind: url.kind(),
            write_lock: (url.kind() == DatabaseKind::Sqlite).then(|| Arc::new(Mutex::new(()))),
        })
    }

    /// Applies pending migrations; safe to run at every start and from several instances.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        migration::Migrator::up(&self.conn, None)
            .await
            .context("database migration failed")
    }

    /// The pool, for reads and single-statement writes.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The engine behind the pool.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Begins a transaction that will write.
    pub async fn write(&self) -> Result<WriteTx, DbErr> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.conn.begin().await?;
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
