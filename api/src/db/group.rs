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
use futures_util::future::BoxFuture;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

/// Jobs one transaction takes at most: bounds the latency a batch adds to its first job.
const MAX_BATCH: usize = 256;

/// Told, once the batch's commit is known, how it went (`None`: committed).
type Done = Box<dyn FnOnce(Option<&DbErr>) + Send>;

/// A job: given the batch's transaction (or why there is none), runs and says how to report.
type Job = Box<
    dyn for<'t> FnOnce(Result<&'t DatabaseTransaction, &'t DbErr>) -> BoxFuture<'t, Step> + Send,
>;

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
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupWriter {
    /// Starts the writer thread over `writer`, the pool of SQLite's one writing connection.
    pub(super) fn start(writer: DatabaseConnection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("parley-db-writer".into())
            .spawn(move || rt.block_on(run(writer, rx)))?;
        Ok(Self { jobs })
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
        if self.jobs.send(job).is_err() {
            return Err(DbErr::Custom("the database writer has stopped".into()).into());
        }
        result
            .await
            .map_err(|_| DbErr::Custom("the database writer dropped a write".into()).into())
            .and_then(|r| r)
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

async fn run(writer: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut dones: Vec<Done> = Vec::new();
        let tx = writer.begin().await;
        let mut next = Some(first);
        let mut poisoned = false;
        while let Some(job) = next.take() {
            let step = match &tx {
                Ok(tx) => job(Ok(tx)).await,
                Err(e) => job(Err(e)).await,
            };
            poisoned |= step.poisoned;
            dones.push(step.done);
            // Jobs that came while this one ran join the batch, up to its bound.
            if dones.len() < MAX_BATCH && !poisoned && tx.is_ok() {
                next = rx.try_recv().ok();
            }
        }
        crate::metrics::write_batch(dones.len());
        let outcome = match tx {
            Ok(tx) if poisoned => {
                let _ = tx.rollback().await;
                Some(DbErr::Custom(
                    "a write of the batch could not be undone alone".into(),
                ))
            }
            Ok(tx) => tx.commit().await.err(),
            Err(e) => Some(e),
        };
        for done in dones {
            done(outcome.as_ref());
        }
    }
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
