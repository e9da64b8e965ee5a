//! PostgreSQL: conversation steps run on a runtime of their own.
//!
//! A step is a few round trips to the server. Run from request tasks, each reply wakes a
//! task that queues behind every runnable visitor task, and the transaction (with its row
//! lock and pooled connection) is held all the while: the more visitors, the slower each
//! step, and throughput falls as load grows. Here steps run on one thread whose runtime has
//! nothing else to do, over connections that runtime owns (a socket's readiness is reported
//! by the runtime that opened it), so a reply is taken up at once.
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::oneshot;

use super::Db;
use crate::settings::DatabaseUrl;

/// Connections of the step runtime: steps in flight at once.
const CONNECTIONS: u32 = 16;

/// The step runtime; it stops (and closes its connections) when the last clone goes.
#[derive(Clone)]
pub(super) struct StepRuntime {
    handle: tokio::runtime::Handle,
    pool: DatabaseConnection,
    _stop: Arc<Stop>,
}

struct Stop(Option<oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl StepRuntime {
    /// Starts the thread and connects its pool.
    pub(super) async fn start(url: &DatabaseUrl) -> anyhow::Result<Self> {
        let (ready, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let url = url.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the step runtime")?;
        std::thread::Builder::new()
            .name("parley-db-steps".into())
            .spawn(move || {
                rt.block_on(async move {
                    let pool = match Db::pool(&url, CONNECTIONS, true).await {
                        Ok(pool) => pool,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok((tokio::runtime::Handle::current(), pool.clone())));
                    let _ = stopped.await;
                    let _ = pool.close().await;
                });
            })
            .context("cannot start the step runtime's thread")?;
        let (handle, pool) = started
            .await
            .context("the step runtime's thread stopped")??;
        Ok(Self {
            handle,
            pool,
            _stop: Arc::new(Stop(Some(stop))),
        })
    }

    /// The step runtime's pool.
    pub(super) fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Runs `task` on the step runtime until it ends.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }

    /// Runs `task` on the step runtime and returns its result; it runs to its end even if
    /// the caller goes away.
    pub(super) async fn run_task<T: Send + 'static>(
        &self,
        task: impl Future<Output = Result<T, DbErr>> + Send + 'static,
    ) -> Result<T, DbErr> {
        match self.handle.spawn(task).await {
            Ok(result) => result,
            Err(e) => Err(DbErr::Custom(format!("the task did not finish: {e}"))),
        }
    }

    /// Runs `f` in a transaction of its own on the step runtime and commits. The step runs
    /// to its end even if the caller goes away.
    pub(super) async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let step = self.handle.spawn(async move {
            let tx = pool.begin().await?;
            let value = f(&tx).await?;
            tx.commit().await?;
            Ok(value)
        });
        match step.await {
            Ok(result) => result,
            Err(e) => Err(DbErr::Custom(format!("the step did not finish: {e}")).into()),
        }
    }
}
