//! Group commit for SQLite's single writer.
//!
//! A visitor turn is a handful of tiny statements, each an async hop to sqlx's SQLite worker
//! thread and back. Run from request tasks, the writer connection stays held across every hop,
//! and each wake-up comes from outside the tokio runtime, so it queues behind every runnable
//! task: the more visitors, the longer each turn holds the only writer, and throughput falls
//! as load grows. Here one thread with a runtime of its own owns the writing: it takes every
//! job that is waiting, runs them one after the other in one transaction, each under a
//! savepoint of its own (one job's failure undoes only its own writes), and commits once.
//! Its hops are answered at once, since nothing else runs there.
//!
//! A write prepared in full beforehand (its statements, see [`GroupWriter::run_statements`])
//! is not a job of its own: the writes of that kind waiting one after the other go to the
//! connection together, under one savepoint, in one call. Each hop to sqlx's thread and back
//! is two context switches, which on this kind of machine cost more than the statements.
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt as _, future::BoxFuture};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::deferred::joined;

/// Jobs one transaction takes at most: bounds the latency a batch adds to its first job.
const MAX_BATCH: usize = 256;

/// Told, once the batch's commit is known, how it went (`None`: committed).
type Done = Box<dyn FnOnce(Option<&DbErr>) + Send>;

/// A job: given the batch's transaction (or why there is none), runs and says how to report.
type Job = Box<
    dyn for<'t> FnOnce(Result<&'t DatabaseTransaction, &'t DbErr>) -> BoxFuture<'t, Step> + Send,
>;

/// What the writer thread is given.
enum Work {
    Job(Job),
    /// Statements prepared in full, and where to say whether they committed.
    Statements(Prepared),
}

struct Prepared {
    statements: Vec<Statement>,
    reply: oneshot::Sender<Result<(), DbErr>>,
}

/// What running a job leaves behind.
struct Step {
    done: Done,
    /// The transaction can no longer be trusted (a savepoint could not be undone): the batch
    /// stops and rolls back.
    poisoned: bool,
}

/// The sending side of the writer thread; the thread ends when the last sender goes.
#[derive(Clone)]
pub(super) struct GroupWriter {
    jobs: mpsc::UnboundedSender<Work>,
}

impl GroupWriter {
    /// Starts the writer thread, which opens the pool of SQLite's one writing connection with
    /// `open`; that pool, once open, shared with the rest of the server.
    ///
    /// The thread is held on one core, and opens the connection itself so that sqlx's worker
    /// thread for it, which every statement goes to and comes back from, starts there too (a
    /// thread inherits the cores of the thread that starts it). Each of those hops wakes the
    /// other thread; on a VM a thread woken on another core waited for the host, about 36 µs
    /// a round trip on the machine of BENCHMARKS.md's `3163055` section, against 4 µs on the
    /// same core, and half the server's CPU went to switching threads when few visitors chat.
    pub(super) async fn start<F, Fut>(open: F) -> anyhow::Result<(Self, DatabaseConnection)>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<DatabaseConnection>>,
    {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (opened_tx, opened) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("parley-db-writer".into())
            .spawn(move || {
                hold_on_one_core();
                rt.block_on(async move {
                    match open().await {
                        Ok(writer) => {
                            // The caller may have given up waiting: then nothing writes.
                            if opened_tx.send(Ok(writer.clone())).is_ok() {
                                run(writer, rx).await;
                            }
                        }
                        Err(e) => drop(opened_tx.send(Err(e))),
                    }
                });
            })?;
        let writer = opened
            .await
            .map_err(|_| anyhow::anyhow!("the database writer thread stopped while opening"))??;
        Ok((Self { jobs }, writer))
    }

    /// Runs `f` in the next batch's transaction under a savepoint of its own; its result once
    /// the batch committed.
    pub(super) async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        self.run_job(f, true).await
    }

    /// Like [`Self::run`] without the savepoint, one hop to the worker thread fewer: for a
    /// write that refuses by returning `Ok` before it writes anything, and fails only with
    /// the database. Any error rolls the whole batch back, since the batch cannot keep the
    /// others' writes without this one's.
    pub(super) async fn run_unsaved<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        self.run_job(f, false).await
    }

    /// Runs `statements` (each built for SQLite with plain `?` placeholders), in order, in the
    /// next batch's transaction, with the prepared writes waiting next to them: together
    /// under one savepoint, or, if that fails, each under its own. Whether they committed.
    pub(super) async fn run_statements(&self, statements: Vec<Statement>) -> Result<(), DbErr> {
        let (reply, result) = oneshot::channel();
        if self
            .jobs
            .send(Work::Statements(Prepared { statements, reply }))
            .is_err()
        {
            return Err(stopped());
        }
        result.await.map_err(|_| dropped())?
    }

    async fn run_job<T, E, F>(&self, f: F, savepoint: bool) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        let (reply, result) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |tx| {
            Box::pin(async move {
                let tx = match tx {
                    Ok(tx) => tx,
                    Err(e) => return fail(reply, batch_failed(e).into(), false),
                };
                // Raw savepoints, never released: COMMIT releases them all, and a RELEASE
                // per job would be one more hop to the worker thread on the hot path. A
                // ROLLBACK TO names the latest savepoint of that name, i.e. this job's.
                if savepoint && let Err(e) = tx.execute_unprepared("SAVEPOINT parley_job").await {
                    return fail(reply, e.into(), true);
                }
                match f(tx).await {
                    Ok(value) => Step {
                        done: Box::new(move |commit| {
                            let _ = reply.send(match commit {
                                None => Ok(value),
                                Some(e) => Err(batch_failed(e).into()),
                            });
                        }),
                        poisoned: false,
                    },
                    Err(e) if savepoint => {
                        let undone = tx.execute_unprepared("ROLLBACK TO parley_job").await;
                        fail(reply, e, undone.is_err())
                    }
                    Err(e) => fail(reply, e, true),
                }
            })
        });
        if self.jobs.send(Work::Job(job)).is_err() {
            return Err(stopped().into());
        }
        result.await.map_err(|_| dropped().into()).and_then(|r| r)
    }
}

fn fail<T: Send + 'static, E: Send + 'static>(
    reply: oneshot::Sender<Result<T, E>>,
    e: E,
    poisoned: bool,
) -> Step {
    Step {
        done: Box::new(move |_| {
            let _ = reply.send(Err(e));
        }),
        poisoned,
    }
}

/// `DbErr` is not `Clone`: every job of a failed batch gets its own copy of the cause.
fn batch_failed(e: &DbErr) -> DbErr {
    DbErr::Custom(format!("the write was not committed: {e}"))
}

/// Holds the calling thread on the last core it may run on, if it may run on more than one.
fn hold_on_one_core() {
    let Some(last) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().last()) else {
        return;
    };
    if !core_affinity::set_for_current(last) {
        tracing::warn!(
            core = last.id,
            "cannot hold the database writer thread on one core"
        );
    }
}

async fn run(writer: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<Work>) {
    while let Some(first) = rx.recv().await {
        let mut dones: Vec<Done> = Vec::new();
        let tx = writer.begin().await;
        let mut next = Some(first);
        let mut poisoned = false;
        // Prepared writes waiting to go together, before the next job (order is kept).
        let mut prepared: Vec<Prepared> = Vec::new();
        let mut savepoints = 0;
        let mut taken = 0;
        while let Some(work) = next.take() {
            taken += 1;
            match work {
                Work::Statements(p) => prepared.push(p),
                Work::Job(job) => {
                    if !prepared.is_empty() {
                        poisoned |= write_prepared(
                            &tx,
                            std::mem::take(&mut prepared),
                            &mut dones,
                            &mut savepoints,
                        )
                        .await;
                    }
                    let step = match &tx {
                        Ok(_) if poisoned => {
                            let e = poisoned_batch();
                            unwound(job(Err(&e))).await
                        }
                        Ok(tx) => unwound(job(Ok(tx))).await,
                        Err(e) => unwound(job(Err(e))).await,
                    };
                    poisoned |= step.poisoned;
                    dones.push(step.done);
                }
            }
            // Work that came while this ran joins the batch, up to its bound.
            if taken < MAX_BATCH && !poisoned && tx.is_ok() {
                next = rx.try_recv().ok();
            }
        }
        if !prepared.is_empty() {
            poisoned |= write_prepared(&tx, prepared, &mut dones, &mut savepoints).await;
        }
        crate::metrics::write_batch(dones.len());
        let outcome = match tx {
            Ok(tx) if poisoned => {
                let _ = tx.rollback().await;
                Some(poisoned_batch())
            }
            Ok(tx) => tx.commit().await.err(),
            Err(e) => Some(e),
        };
        for done in dones {
            done(outcome.as_ref());
        }
    }
}

/// Runs a job; if it panics (a bug), the batch is undone and the writer goes on: without
/// this, the panic would end the writer thread, and every write after it would fail. The
/// job's caller is told its write was dropped (its reply went with the job).
async fn unwound(job: BoxFuture<'_, Step>) -> Step {
    match AssertUnwindSafe(job).catch_unwind().await {
        Ok(step) => step,
        Err(_) => {
            tracing::error!("a grouped database write panicked; its batch is undone");
            Step {
                done: Box::new(|_| {}),
                poisoned: true,
            }
        }
    }
}

/// The writer thread is gone: nothing can be written.
fn stopped() -> DbErr {
    DbErr::Custom("the database writer has stopped".into())
}

/// A write's reply went away without an answer (the writer thread panicked, or stopped).
fn dropped() -> DbErr {
    DbErr::Custom("the database writer dropped a write".into())
}

fn poisoned_batch() -> DbErr {
    DbErr::Custom("a write of the batch could not be undone alone".into())
}

/// Writes `prepared` in `tx`: all in one call under one savepoint, or, if that fails, each
/// in a call of its own under its own savepoint (one's failure undoes only its own writes).
/// Pushes how to report each; true if the transaction can no longer be trusted (a savepoint
/// could not be undone: SQLite may have rolled the whole transaction back itself), and then
/// every write not yet reported is told so. `savepoints` numbers the batch's savepoints.
async fn write_prepared(
    tx: &Result<DatabaseTransaction, DbErr>,
    prepared: Vec<Prepared>,
    dones: &mut Vec<Done>,
    savepoints: &mut u32,
) -> bool {
    let tx = match tx {
        Ok(tx) => tx,
        Err(e) => {
            dones.extend(prepared.into_iter().map(|p| refused(p, batch_failed(e))));
            return false;
        }
    };
    if prepared.len() > 1 {
        let all = prepared.iter().flat_map(|p| p.statements.iter().cloned());
        match saved(tx, all, savepoints).await {
            Ok(()) => {
                dones.extend(prepared.into_iter().map(committed));
                return false;
            }
            Err((_, false)) => {
                dones.extend(prepared.into_iter().map(|p| refused(p, poisoned_batch())));
                return true;
            }
            // Undone; each alone says whose it was.
            Err((_, true)) => {}
        }
    }
    let mut left = prepared.into_iter();
    while let Some(p) = left.next() {
        match saved(tx, p.statements.iter().cloned(), savepoints).await {
            Ok(()) => dones.push(committed(p)),
            Err((e, true)) => dones.push(refused(p, e)),
            Err((e, false)) => {
                dones.push(refused(p, e));
                dones.extend(left.map(|p| refused(p, poisoned_batch())));
                return true;
            }
        }
    }
    false
}

/// Runs `statements` in one call after a savepoint, and on failure rolls back to it: the
/// error, and whether the rollback worked. Each savepoint of a batch has a name of its own:
/// should the SAVEPOINT itself fail, the ROLLBACK TO fails too (and the batch is undone),
/// where with a shared name it would undo an earlier write of the batch that was told it
/// succeeded. The names start over with each batch, so that the same writes make the same
/// text (which sqlx prepares once and keeps).
async fn saved(
    tx: &DatabaseTransaction,
    statements: impl Iterator<Item = Statement>,
    savepoints: &mut u32,
) -> Result<(), (DbErr, bool)> {
    let name = format!("parley_w{savepoints}");
    *savepoints += 1;
    let call = joined(
        DbBackend::Sqlite,
        Some(&format!("SAVEPOINT {name}")),
        statements,
    );
    match tx.execute_raw(call).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let undone = tx.execute_unprepared(&format!("ROLLBACK TO {name}")).await;
            Err((e, undone.is_ok()))
        }
    }
}

fn refused(p: Prepared, e: DbErr) -> Done {
    Box::new(move |_| {
        let _ = p.reply.send(Err(e));
    })
}

fn committed(p: Prepared) -> Done {
    Box::new(move |commit| {
        let _ = p.reply.send(match commit {
            None => Ok(()),
            Some(e) => Err(batch_failed(e)),
        });
    })
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbErr, Statement};

    use crate::db::Db;

    async fn scratch_db() -> (Db, std::path::PathBuf) {
        crate::db::tests::scratch_db("CREATE TABLE t (n INTEGER PRIMARY KEY)").await
    }

    async fn insert(tx: &sea_orm::DatabaseTransaction, n: i64) -> Result<(), DbErr> {
        tx.execute_raw(Statement::from_sql_and_values(
            tx.get_database_backend(),
            "INSERT INTO t (n) VALUES (?)",
            [n.into()],
        ))
        .await
        .map(|_| ())
    }

    async fn stored(db: &Db) -> Vec<i64> {
        db.conn()
            .query_all_raw(Statement::from_string(
                db.conn().get_database_backend(),
                "SELECT n FROM t ORDER BY n",
            ))
            .await
            .expect("rows")
            .iter()
            .map(|r| r.try_get::<i64>("", "n").expect("n"))
            .collect()
    }

    /// The cores each thread of this process whose name starts with `prefix` may run on, as
    /// `/proc` lists them (`Cpus_allowed_list`).
    fn cores_of_threads(prefix: &str) -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|task| {
                let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
                if !name.starts_with(prefix) {
                    return None;
                }
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|cores| cores.trim().to_owned())
            })
            .collect()
    }

    #[tokio::test]
    async fn the_writer_thread_and_its_connections_sqlx_worker_are_held_on_one_core() {
        let Some(last) = core_affinity::get_core_ids()
            .filter(|ids| ids.len() > 1)
            .and_then(|ids| ids.last().map(|c| c.id.to_string()))
        else {
            // On one core there is nothing to hold.
            return;
        };
        let (db, path) = scratch_db().await;
        db.write_grouped(move |tx| Box::pin(async move { insert(tx, 1).await }))
            .await
            .expect("the write commits");
        // Every writer of this test process holds its thread on the same core, the last.
        let writers = cores_of_threads("parley-db-write");
        assert!(
            !writers.is_empty() && writers.iter().all(|cores| *cores == last),
            "writer threads' cores: {writers:?}, expected {last}"
        );
        // sqlx's worker of the writer's connection started from the writer thread, so it has
        // the writer's core; the readers' workers may run anywhere.
        let workers = cores_of_threads("sqlx-sqlite-wor");
        assert!(
            workers.contains(&last),
            "no sqlx worker is held on core {last}: {workers:?}"
        );
        drop(db);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn a_failed_write_is_undone_alone_and_the_others_of_its_batch_commit() {
        let (db, path) = scratch_db().await;
        let mut writes = Vec::new();
        for n in 0..50_i64 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write_grouped(move |tx| {
                    Box::pin(async move {
                        insert(tx, n).await?;
                        if n % 5 == 0 {
                            // Written, then refused: its row must not survive.
                            return Err(DbErr::Custom(format!("job {n} refused")));
                        }
                        Ok(n)
                    })
                })
                .await
            }));
        }
        let mut committed = Vec::new();
        for write in writes {
            match write.await.expect("the task runs") {
                Ok(n) => committed.push(n),
                Err(e) => assert!(e.to_string().contains("refused"), "{e}"),
            }
        }
        assert_eq!(committed.len(), 40);
        let rows = stored(&db).await;
        committed.sort_unstable();
        assert_eq!(rows, committed);
        assert!(rows.iter().all(|n| n % 5 != 0));
        drop(db);
        let _ = std::fs::remove_file(path);
    }

    fn insert_of(ns: &[i64]) -> crate::db::Deferred {
        let mut inserts = crate::db::Deferred::new(sea_orm::DbBackend::Sqlite);
        for n in ns {
            inserts.push_statement(Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                "INSERT INTO t (n) VALUES (?)",
                [(*n).into()],
            ));
        }
        inserts
    }

    #[tokio::test]
    async fn prepared_writes_sent_together_commit_all_but_the_one_that_fails() {
        let (db, path) = scratch_db().await;
        let mut writes = Vec::new();
        for n in 0..60_i64 {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                // Every tenth write inserts a row another write of the batch inserts too
                // (n - 1): whichever comes second fails, alone.
                let first = if n % 10 == 5 { n - 1 } else { n };
                let inserts = insert_of(&[first, 1_000 + n]);
                let written = db
                    .write_deferred(inserts)
                    .await
                    .expect("SQLite groups its writes");
                (n, written)
            }));
        }
        let mut failed = 0;
        for write in writes {
            let (n, written) = write.await.expect("the task runs");
            if let Err(e) = written {
                assert!(e.to_string().contains("UNIQUE"), "{e}");
                failed += 1;
                let rows = stored(&db).await;
                assert!(
                    !rows.contains(&(1_000 + n)),
                    "a failed write's other rows are undone"
                );
            }
        }
        assert_eq!(failed, 6, "one failure per duplicate, and no other");
        let rows = stored(&db).await;
        assert_eq!(rows.len(), 2 * (60 - 6));
        drop(db);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn prepared_writes_and_jobs_keep_their_order_in_a_batch() {
        let (db, path) = scratch_db().await;
        // A job that reads what the prepared write before it wrote, in the same batch.
        let first = db.write_deferred(insert_of(&[7]));
        let db2 = db.clone();
        let second = db2.write_grouped(|tx| {
            Box::pin(async move {
                let seen = tx
                    .query_one_raw(Statement::from_string(
                        tx.get_database_backend(),
                        "SELECT count(*) AS c FROM t WHERE n = 7",
                    ))
                    .await?
                    .map(|r| r.try_get::<i64>("", "c"))
                    .transpose()?;
                Ok::<_, DbErr>(seen)
            })
        });
        let (first, second) = tokio::join!(first, second);
        first.expect("SQLite groups its writes").expect("written");
        assert_eq!(second.expect("read"), Some(1));
        drop(db);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_with_its_batch_and_the_writer_goes_on() {
        let (db, path) = scratch_db().await;
        let failed = db
            .write_grouped::<(), DbErr, _>(|tx| {
                Box::pin(async move {
                    insert(tx, 1).await?;
                    panic!("a bug in a write")
                })
            })
            .await;
        assert!(failed.is_err());
        let kept = db
            .write_grouped(|tx| Box::pin(async move { insert(tx, 2).await }))
            .await;
        assert!(kept.is_ok(), "{kept:?}");
        assert_eq!(stored(&db).await, [2]);
        drop(db);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn an_unsaved_write_that_fails_after_writing_takes_its_batch_down_and_the_writer_goes_on()
    {
        let (db, path) = scratch_db().await;
        let failed = db
            .write_grouped_unsaved(|tx| {
                Box::pin(async move {
                    insert(tx, 1).await?;
                    Err::<(), _>(DbErr::Custom("refused after writing".into()))
                })
            })
            .await
            .expect("SQLite groups its writes");
        assert!(failed.is_err());
        let kept = db
            .write_grouped_unsaved(|tx| Box::pin(async move { insert(tx, 2).await }))
            .await
            .expect("SQLite groups its writes");
        assert!(kept.is_ok(), "{kept:?}");
        let rows = stored(&db).await;
        assert_eq!(rows, [2]);
        drop(db);
        let _ = std::fs::remove_file(path);
    }
}
