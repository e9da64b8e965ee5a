//! The database handle: connection pool, migrations, and write transactions that SQLite's
//! single writer can take without "database is locked".
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use migration::MigratorTrait as _;
use sea_orm::{
    ConnectOptions, DatabaseConnection, DatabaseTransaction, DbErr, Statement, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use crate::settings::{DatabaseKind, DatabaseUrl};

mod deferred;
mod group;
#[cfg(test)]
pub(crate) mod testing;
mod turns;

pub use deferred::Deferred;

/// Whether the database itself refused a statement, which then rolled back whole: written
/// again (one row at a time, say), nothing of it is written twice. Any other failure (a
/// connection lost, a reply that did not read) may have come after the commit.
pub fn refused_by_server(e: &DbErr) -> bool {
    match e {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e.as_database_error().is_some(),
        _ => false,
    }
}

/// How often SQLite's WAL is copied back into the database file (see
/// [`Db::run_checkpointer`]). Often enough that the WAL restarts under steady load and the
/// writer's backstop seldom runs: with one checkpoint a second, at 1,000 turns/s the WAL
/// passed the backstop about once a second, and the commit that found it so copied up to a
/// second of pages and fsynced while every write waited behind it (5–25 ms, 1–2 % of the
/// turns); the paced chat's p99 was 8 ms, and 1.7–1.9 ms with a checkpoint every 100 ms.
/// A checkpoint that finds nothing to copy costs next to nothing.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL pages past which the writer's own commit checkpoints after all (SQLite's default is
/// 1,000). The WAL starts over from its beginning only when a write begins with every page
/// copied back, which a checkpoint from another connection rarely achieves while the writer
/// commits back to back: without this backstop the WAL would grow for as long as the load
/// lasts. By then the background checkpoints have copied most pages, so this one is short.
const WRITER_CHECKPOINT_PAGES: &str = "4000";

/// Connection pools for reading and for writing.
///
/// SQLite has one writer per file, and a transaction that reads and then writes fails at once
/// (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not cover) when another connection
/// committed in between. So on SQLite every write goes through a pool of exactly one
/// connection, where writes queue instead of failing; reads use the other pool and run
/// concurrently (WAL). On PostgreSQL both are the same pool.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    writer: DatabaseConnection,
    kind: DatabaseKind,
    /// The thread that runs conversation steps.
    steps: Steps,
}

/// Where conversation steps run: on SQLite, grouped into the writer thread's transactions;
/// on PostgreSQL, each in its own transaction on a runtime of their own.
#[derive(Clone)]
enum Steps {
    Grouped(group::GroupWriter),
    Own(turns::StepRuntime),
}

/// A write transaction.
pub struct WriteTx {
    pub tx: DatabaseTransaction,
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl WriteTx {
    /// Commits.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }
}

impl Db {
    /// Connects and tunes each connection for the engine.
    pub async fn connect(url: &DatabaseUrl) -> anyhow::Result<Self> {
        let (conn, writer, steps) = match url.kind() {
            DatabaseKind::Sqlite => {
                let conn = Self::pool(url, 8, false).await?;
                // The writer checkpoints only as a backstop: see `run_checkpointer`.
                let writer_url = url.clone();
                let (group, writer) = group::GroupWriter::start(move || async move {
                    Self::pool(&writer_url, 1, true).await
                })
                .await
                .context("cannot start the database writer thread")?;
                (conn, writer, Steps::Grouped(group))
            }
            DatabaseKind::Postgres => {
                let conn = Self::pool(url, 32, false).await?;
                let steps = turns::StepRuntime::start(url).await?;
                (conn.clone(), conn, Steps::Own(steps))
            }
        };
        Ok(Self {
            conn,
            writer,
            kind: url.kind(),
            steps,
        })
    }

    /// A pool of `connections`; `writer` says whether it is the pool of the one writing
    /// connection (SQLite) or the steps' pool (PostgreSQL, see [`turns`]). The SQLite one
    /// copies the WAL back into the database file itself (SQLite's automatic checkpoint) only
    /// as a backstop, and keeps its savepoints' journal in memory: each grouped write opens a
    /// savepoint, and SQLite copies every page a write changes under a new savepoint to that
    /// journal first, by default a temporary file, one write call per page. Its size is what
    /// one transaction changes; it goes with the commit. The PostgreSQL one uses generic
    /// plans.
    async fn pool(
        url: &DatabaseUrl,
        connections: u32,
        writer: bool,
    ) -> anyhow::Result<DatabaseConnection> {
        let mut opts = ConnectOptions::new(url.as_str());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30));
        match url.kind() {
            DatabaseKind::Sqlite => {
                // A local file cannot go stale under us: skip the ping sqlx would otherwise send
                // on every checkout, a round trip per transaction on the hot path.
                opts.max_connections(connections)
                    .min_connections(1)
                    .test_before_acquire(false)
                    .map_sqlx_sqlite_opts(move |o| {
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Normal)
                            .busy_timeout(Duration::from_secs(10))
                            .foreign_keys(true)
                            .create_if_missing(true)
                            .pragma(
                                "wal_autocheckpoint",
                                if writer {
                                    WRITER_CHECKPOINT_PAGES
                                } else {
                                    "1000"
                                },
                            )
                            .pragma("temp_store", if writer { "memory" } else { "default" })
                            // A WAL grown under load is cut back to this after it restarts.
                            .pragma("journal_size_limit", "67108864")
                    });
            }
            DatabaseKind::Postgres => {
                // Ping only connections idle long enough to have been dropped by the server or
                // a proxy; hot connections skip the round trip.
                opts.max_connections(connections)
                    .min_connections(1)
                    .test_before_acquire_if_idle_for(Duration::from_secs(30));
                if writer {
                    // The steps' statements are prepared once per connection, but PostgreSQL
                    // plans each execution again by default, and the quick turns' one
                    // statement (a dozen parts over arrays) took 0.6 ms to plan against 0.4 ms
                    // to run. Its plan does not depend on the values (arrays of any length,
                    // rows found by key), nor do those of a step's other statements (by key).
                    opts.map_sqlx_postgres_opts(|o| {
                        o.options([("plan_cache_mode", "force_generic_plan")])
                    });
                }
            }
        }
        sea_orm::Database::connect(opts).await.with_context(|| {
            format!(
                "cannot connect to the database (DATABASE_URL={})",
                crate::settings::redact(url.as_str())
            )
        })
    }

    /// Applies pending migrations; safe to run at every start and from several instances.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        migration::Migrator::up(&self.writer, None)
            .await
            .context("database migration failed")
    }

    /// SQLite: copies the WAL back into the database file every [`CHECKPOINT_EVERY`], off
    /// the writer. By default the commit that finds the WAL past 1,000 pages does that copy
    /// (and its fsync) itself, while every write queued behind it waits: a stall of
    /// milliseconds every few hundred turns. A PASSIVE checkpoint from a reading connection
    /// waits for nobody and blocks nobody; the writer keeps a backstop
    /// ([`WRITER_CHECKPOINT_PAGES`]). Returns at once on PostgreSQL.
    pub async fn run_checkpointer(self) {
        if self.kind != DatabaseKind::Sqlite {
            return;
        }
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let checkpoint = Statement::from_string(
                sea_orm::DatabaseBackend::Sqlite,
                "PRAGMA wal_checkpoint(PASSIVE)",
            );
            if let Err(e) = sea_orm::ConnectionTrait::execute_raw(&self.conn, checkpoint).await {
                tracing::warn!(error = %e, "cannot checkpoint the SQLite WAL");
            }
        }
    }

    /// The pool for reads.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The pool for single-statement writes outside a transaction.
    pub fn writer(&self) -> &DatabaseConnection {
        &self.writer
    }

    /// The engine behind the pool.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Begins a transaction that will write.
    pub async fn write(&self) -> Result<WriteTx, DbErr> {
        Ok(WriteTx {
            tx: self.writer.begin().await?,
        })
    }

    /// Runs `f` in a write transaction and commits, on a thread that does nothing else (the
    /// hot path of conversation steps). On SQLite the transaction is shared with the other
    /// grouped writes waiting at that moment (see [`group`]), `f` running under a savepoint
    /// of its own: its failure undoes only its own writes. On PostgreSQL each `f` has its own
    /// transaction (see [`turns`]). `f` must not wait for another write, which would wait
    /// for it.
    pub async fn write_grouped<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        let began = std::time::Instant::now();
        let result = match &self.steps {
            Steps::Grouped(group) => group.run(f).await,
            Steps::Own(steps) => steps.run(f).await,
        };
        crate::metrics::write_wait(began.elapsed());
        result
    }

    /// On SQLite, like [`Self::write_grouped`] without the savepoint (see
    /// `GroupWriter::run_unsaved`): `f` must refuse, if at all, before it writes. `None` on
    /// PostgreSQL, where a step's transaction is its own anyway.
    pub async fn write_grouped_unsaved<T, E, F>(&self, f: F) -> Option<Result<T, E>>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        match &self.steps {
            Steps::Grouped(group) => {
                let began = std::time::Instant::now();
                let result = group.run_unsaved(f).await;
                crate::metrics::write_wait(began.elapsed());
                Some(result)
            }
            Steps::Own(_) => None,
        }
    }

    /// On SQLite, runs `inserts` (a write prepared in full: nothing to read, nothing to decide)
    /// in the writer's next batch, together with the other such writes waiting then (see
    /// [`group`]); whether they committed. `None` on PostgreSQL.
    pub async fn write_deferred(&self, inserts: Deferred) -> Option<Result<(), DbErr>> {
        match &self.steps {
            Steps::Grouped(group) => {
                let began = std::time::Instant::now();
                let result = group.run_statements(inserts.into_statements()).await;
                crate::metrics::write_wait(began.elapsed());
                Some(result)
            }
            Steps::Own(_) => None,
        }
    }

    /// PostgreSQL: runs `task` on the thread where steps run, with that thread's pool (a
    /// socket's readiness is reported by the runtime that opened it, so a task that writes
    /// for many steps belongs there). False on SQLite, whose steps share the writer's
    /// transactions.
    pub fn spawn_on_steps<F, Fut>(&self, task: F) -> bool
    where
        F: FnOnce(DatabaseConnection) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match &self.steps {
            Steps::Grouped(_) => false,
            Steps::Own(steps) => {
                steps.spawn(task(steps.pool().clone()));
                true
            }
        }
    }

    /// PostgreSQL: runs `task` to its end on the thread where steps run, with that thread's
    /// pool (as [`Self::write_grouped`] runs its transactions), and returns what it returns.
    /// `None` on SQLite, whose writes share the writer's transactions.
    pub async fn on_steps<T, F>(&self, task: F) -> Option<Result<T, DbErr>>
    where
        T: Send + 'static,
        F: FnOnce(DatabaseConnection) -> BoxFuture<'static, Result<T, DbErr>>,
    {
        match &self.steps {
            Steps::Grouped(_) => None,
            Steps::Own(steps) => {
                let began = std::time::Instant::now();
                let result = steps.run_task(task(steps.pool().clone())).await;
                crate::metrics::write_wait(began.elapsed());
                Some(result)
            }
        }
    }

    /// Each pool's name, size and idle connections.
    pub fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        match self.kind {
            DatabaseKind::Sqlite => {
                let read = self.conn.get_sqlite_connection_pool();
                let write = self.writer.get_sqlite_connection_pool();
                vec![
                    ("read", read.size(), read.num_idle()),
                    ("write", write.size(), write.num_idle()),
                ]
            }
            DatabaseKind::Postgres => {
                let pool = self.conn.get_postgres_connection_pool();
                let mut stats = vec![("shared", pool.size(), pool.num_idle())];
                if let Steps::Own(steps) = &self.steps {
                    let pool = steps.pool().get_postgres_connection_pool();
                    stats.push(("steps", pool.size(), pool.num_idle()));
                }
                stats
            }
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

/// A failed query sent through sqlx directly, as sea-orm reports one, so that callers tell
/// the database's refusals from lost connections the same way for both.
pub fn query_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}

/// The row a query by primary key finds, if any. Use it rather than `.one()`, which binds
/// `LIMIT ?`: SQLite's planner reads that bound value, so the cached statement expires when
/// its bindings are cleared and is parsed and planned again on every run (a profile showed
/// 13 % of a chat's instructions re-preparing). A key matches one row at most anyway.
pub async fn by_key<E: sea_orm::EntityTrait>(
    select: sea_orm::Select<E>,
    db: &impl sea_orm::ConnectionTrait,
) -> Result<Option<E::Model>, DbErr> {
    Ok(select.all(db).await?.pop())
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbErr, Statement};

    use super::Db;
    use crate::settings::{DatabaseKind, DatabaseUrl};

    /// The connection's `plan_cache_mode`.
    async fn plan_cache_mode(db: &DatabaseConnection) -> Result<String, DbErr> {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SHOW plan_cache_mode",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("SHOW answered no row".into()))?;
        row.try_get_by_index(0)
    }

    /// PostgreSQL plans the steps' statements once per connection, and everything else's
    /// with its values as it does by default. (SQLite has no such setting.)
    #[tokio::test]
    async fn postgresql_steps_use_generic_plans_and_other_queries_do_not() {
        let (db, cleanup) = super::testing::migrated().await;
        let modes = if db.kind() == DatabaseKind::Postgres {
            let steps = db
                .on_steps(|pool| Box::pin(async move { plan_cache_mode(&pool).await }))
                .await;
            Some((steps, plan_cache_mode(db.conn()).await))
        } else {
            None
        };
        cleanup().await;
        if let Some((steps, shared)) = modes {
            assert_eq!(
                steps.map(|r| r.expect("SHOW runs on the steps' pool")),
                Some("force_generic_plan".to_owned())
            );
            assert_eq!(shared.expect("SHOW runs on the shared pool"), "auto");
        }
    }

    /// A fresh SQLite database in a temporary file, with the one table `table` creates; the
    /// file's path.
    pub(in crate::db) async fn scratch_db(table: &str) -> (Db, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("parley-db-{}.db", uuid::Uuid::new_v4()));
        let url = DatabaseUrl::parse(&format!("sqlite://{}?mode=rwc", path.display()))
            .expect("a SQLite URL");
        let db = Db::connect(&url).await.expect("the scratch database opens");
        db.writer()
            .execute_unprepared(table)
            .await
            .expect("the table is created");
        (db, path)
    }

    #[tokio::test]
    async fn commits_leave_the_wal_to_the_checkpointer_which_copies_it_back() {
        let (db, path) = scratch_db("CREATE TABLE t (n INTEGER PRIMARY KEY, pad TEXT)").await;
        // A page each, about three WAL frames a commit: past SQLite's automatic checkpoint at
        // 1,000 pages, short of the writer's backstop, one commit at a time.
        for n in 0..1200 {
            db.writer()
                .execute_unprepared(&format!(
                    "INSERT INTO t (n, pad) VALUES ({n}, printf('%.3000c', 'x'))"
                ))
                .await
                .expect("the row is inserted");
        }
        // Until a checkpoint, the rows live in the WAL only: no commit copied them back.
        let stored = || std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(
            stored() < 1_000_000,
            "a commit checkpointed the WAL itself: {} bytes stored",
            stored()
        );

        let checkpointer = tokio::spawn(db.clone().run_checkpointer());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        while stored() < 1200 * 3000 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        checkpointer.abort();
        assert!(
            stored() >= 1200 * 3000,
            "the checkpointer did not copy the WAL back: {} bytes stored",
            stored()
        );
        for file in [
            path.clone(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            let _ = std::fs::remove_file(file);
        }
    }
}
