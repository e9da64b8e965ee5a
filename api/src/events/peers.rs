//! Which other instances share the PostgreSQL database. A NOTIFY holds a lock on the whole
//! cluster's notification queue from its transaction's commit to the end of that commit,
//! flush to disk included, so every transaction that notifies commits after the one before:
//! on the bench machine, 16 clients commit about 4,400 such transactions/s, against 11,000
//! without the NOTIFY (BENCHMARKS.md). An instance alone has nobody to tell and skips it.
//!
//! Each instance writes a heartbeat row every [`HEARTBEAT`]; a row older than [`LIVE`] is an
//! instance gone. A joining instance waits [`JOIN_WAIT`] before it serves when others were live lately,
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

/// What one heartbeat found.
pub(super) struct Beat {
    /// Another instance is live.
    pub(super) others_live: bool,
    /// Another instance was live lately (it may still be, and deciding on old news).
    pub(super) others_recent: bool,
    /// This instance's heartbeats may have been [`LIVE`] or more apart: others may have taken
    /// it for gone and skipped their NOTIFYs.
    pub(super) late: bool,
}

/// This instance's view of the others.
pub(super) struct Peers {
    db: Db,
    id: Uuid,
    /// When the others were last counted, and whether any was live; `None` before the first.
    seen: Mutex<Option<(Instant, bool)>>,
    /// When the last heartbeat that was written had been sent.
    last_sent: Mutex<Option<Instant>>,
    /// Since when no other instance has been live, lately or now, heartbeat after heartbeat;
    /// `None` while one is or was lately.
    alone_since: Mutex<Option<Instant>>,
}

impl Peers {
    pub(super) fn new(db: Db, id: Uuid) -> Self {
        Self {
            db,
            id,
            seen: Mutex::new(None),
            last_sent: Mutex::new(None),
            alone_since: Mutex::new(None),
        }
    }

    /// Whether events must be announced: others are live, or we cannot tell.
    pub(super) fn others_may_listen(&self) -> bool {
        match *self.seen.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((at, others)) => others || at.elapsed() > STALE,
            None => true,
        }
    }

    /// Since when this instance has been the only one, without a break, if it is: no other
    /// instance has written anything since (one that joins waits until this one has seen it).
    pub(super) fn alone_since(&self) -> Option<Instant> {
        if self.others_may_listen() {
            return None;
        }
        *self
            .alone_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes this instance's heartbeat and counts the others.
    pub(super) async fn beat(&self) -> Result<Beat, DbErr> {
        let conn = self.db.conn();
        let backend = conn.get_database_backend();
        let sent = Instant::now();
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO instances (id, heartbeat_at) VALUES ($1, now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            [self.id.into()],
        ))
        .await?;
        // Others saw a gap no longer than from the previous write's sending to this one's
        // return; none before the first write.
        let late = self
            .last_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(sent)
            .is_none_or(|previous| previous.elapsed() >= LIVE);
        // What the count finds is as old as its sending, not its return: a slow answer must not
        // pass for a fresh look (a joining instance waits only `JOIN_WAIT` to be seen).
        let looked = Instant::now();
        let row = conn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT count(*) FILTER (WHERE heartbeat_at > now() - make_interval(secs => $2)) AS live, \
                        count(*) AS recent \
                 FROM instances WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $3)",
                [
                    self.id.into(),
                    LIVE.as_secs_f64().into(),
                    (LIVE + STALE).as_secs_f64().into(),
                ],
            ))
            .await?;
        let count = |name: &str| -> Result<i64, DbErr> {
            Ok(row
                .as_ref()
                .map(|r| r.try_get::<i64>("", name))
                .transpose()?
                .unwrap_or(0))
        };
        let beat = Beat {
            others_live: count("live")? > 0,
            others_recent: count("recent")? > 0,
            late,
        };
        let now = Instant::now();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((looked, beat.others_live));
        let mut alone = self
            .alone_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if beat.others_live || beat.others_recent || beat.late {
            *alone = None;
        } else {
            alone.get_or_insert(now);
        }
        Ok(beat)
    }

    /// Heartbeats until dropped. After heartbeats late enough for others to have taken this
    /// instance for gone (and skipped their NOTIFYs), its subscribers re-read what they
    /// missed, at once and again once the others must have seen it back.
    pub(super) async fn run(&self, local: &LocalBus) {
        let mut resync_at: Option<Instant> = None;
        let mut forgot = Instant::now();
        loop {
            match self.beat().await {
                Ok(beat) if beat.late => {
                    tracing::warn!(
                        "heartbeats were late or missing; subscribers re-read what they may have missed"
                    );
                    local.resync_all();
                    resync_at = Some(Instant::now() + JOIN_WAIT);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error.cause = %e, "instance heartbeat failed"),
            }
            if resync_at.is_some_and(|at| at <= Instant::now()) {
                resync_at = None;
                local.resync_all();
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
