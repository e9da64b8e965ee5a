//! Which other instances share the PostgreSQL database. A NOTIFY holds a lock on the whole
//! cluster's notification queue from its transaction's commit to the end of that commit,
//! flush to disk included, so every transaction that notifies commits after the one before:
//! on the bench machine, 16 clients commit about 950 such transactions/s, against 4,800
//! without the NOTIFY (BENCHMARKS.md). An instance alone has nobody to tell and skips it.
//!
//! Each instance writes a heartbeat row every [`HEARTBEAT`]; a row older than [`LIVE`] is an
//! instance gone. A joining instance waits [`JOIN_WAIT`] before it serves when others are live,
//! so that they have seen it before any subscriber of its own can miss their events; an
//! instance that has not checked for others lately notifies anyway; and one whose heartbeats
//! were late enough that others may have taken it for gone makes its subscribers re-read.
use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DbErr, Statement};
use uuid::Uuid;

use super::LocalBus;
use crate::db::Db;

/// How often an instance writes its heartbeat and looks for others.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance whose heartbeat is older than this is gone.
const LIVE: Duration = Duration::from_secs(3);
/// Past this since its last look, an instance notifies as if others were there.
const STALE: Duration = Duration::from_millis(1500);
/// How long a joining instance waits, when others are live, before it serves: longer than
/// [`STALE`], with room for steps that decided before the others looked to commit.
pub(super) const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Rows of instances gone this long are deleted.
const FORGET_AFTER_SECS: i64 = 3600;

/// This instance's view of the others.
pub(super) struct Peers {
    db: Db,
    id: Uuid,
    /// When the others were last counted, and whether any was live; `None` before the first.
    seen: Mutex<Option<(Instant, bool)>>,
}

impl Peers {
    pub(super) fn new(db: Db, id: Uuid) -> Self {
        Self {
            db,
            id,
            seen: Mutex::new(None),
        }
    }

    /// Whether events must be announced: others are live, or we cannot tell.
    pub(super) fn others_may_listen(&self) -> bool {
        match *self.seen.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, others)) => others || at.elapsed() > STALE,
            None => true,
        }
    }

    /// Writes this instance's heartbeat and counts the live others: whether there are any.
    pub(super) async fn beat(&self) -> Result<bool, DbErr> {
        let conn = self.db.conn();
        let backend = conn.get_database_backend();
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO instances (id, heartbeat_at) VALUES ($1, now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            [self.id.into()],
        ))
        .await?;
        let row = conn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT count(*) AS n FROM instances \
                 WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2)",
                [self.id.into(), LIVE.as_secs_f64().into()],
            ))
            .await?;
        let others = row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0)
            > 0;
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), others));
        Ok(others)
    }

    /// Heartbeats until dropped. After a gap long enough for others to have taken this
    /// instance for gone (and skipped their NOTIFYs), its subscribers re-read what they missed.
    pub(super) async fn run(&self, local: &LocalBus) {
        let mut last_ok = Instant::now();
        let mut forgot = Instant::now();
        loop {
            match self.beat().await {
                Ok(_) => {
                    if last_ok.elapsed() >= LIVE {
                        tracing::warn!(
                            gap_ms = last_ok.elapsed().as_millis() as u64,
                            "heartbeat was late; subscribers re-read what they may have missed"
                        );
                        local.resync_all();
                    }
                    last_ok = Instant::now();
                }
                Err(e) => tracing::warn!(error.cause = %e, "instance heartbeat failed"),
            }
            tokio::time::sleep(HEARTBEAT).await;
            if forgot.elapsed() >= Duration::from_secs(60) {
                forgot = Instant::now();
                let gone = Statement::from_sql_and_values(
                    self.db.conn().get_database_backend(),
                    "DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => $1)",
                    [(FORGET_AFTER_SECS as f64).into()],
                );
                if let Err(e) = self.db.conn().execute_raw(gone).await {
                    tracing::warn!(error.cause = %e, "cannot delete gone instances");
                }
            }
        }
    }
}
