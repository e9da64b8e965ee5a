//! PostgreSQL: the task that writes the quick turns waiting at the same time, each batch with
//! one statement ([`super::statement`]).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use futures_util::StreamExt as _;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{QuickWrite, Wrote, statement, statement::Said};

/// Quick turns one statement writes at most.
const MAX_BATCH: usize = 256;
/// Statements of quick turns in flight at once: turns that arrive meanwhile wait and go
/// together in the next.
const BATCHES_IN_FLIGHT: usize = 4;

/// PostgreSQL: writes the quick turns waiting at the same time with one statement.
///
/// A quick turn alone is one statement that commits by itself, but under load every commit
/// is a round trip, a statement to run and a WAL flush of its own. One task on the step
/// thread takes every quick turn waiting (one per conversation) and writes them with one
/// statement and one commit, [`BATCHES_IN_FLIGHT`] statements at most at once. Each turn's row
/// is still updated only if it holds what the turn expects (else that turn alone is stale),
/// and if the statement fails, each of its turns is written again on its own: one turn never
/// fails another.
pub(in crate::conversations::runtime) struct QuickWriter {
    turns: mpsc::UnboundedSender<Pending>,
}

/// A write waiting for the writer, and where its outcome goes.
struct Pending {
    write: QuickWrite,
    reply: oneshot::Sender<Result<Wrote, DbErr>>,
}

impl QuickWriter {
    /// Starts the writer on the step thread; `None` on SQLite.
    pub(in crate::conversations::runtime) fn start(db: &crate::db::Db) -> Option<Self> {
        let (turns, rx) = mpsc::unbounded_channel();
        db.spawn_on_steps(move |pool| run(pool, rx))
            .then_some(Self { turns })
    }

    pub(super) async fn write(&self, write: QuickWrite) -> Result<Wrote, DbErr> {
        let (reply, outcome) = oneshot::channel();
        self.turns
            .send(Pending { write, reply })
            .map_err(|_| DbErr::Custom("the quick-turn writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| DbErr::Custom("the quick-turn writer dropped a turn".into()))?
    }
}

/// Statements a failed batch's turns are then written with at once, each on its own.
const ALONE_IN_FLIGHT: usize = 8;

/// Takes waiting turns and writes them, until every sender is gone.
async fn run(pool: DatabaseConnection, mut turns: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // Conversations with a turn in a statement in flight, and the signal that one ended.
    let in_flight = Arc::new(std::sync::Mutex::new(HashSet::<Uuid>::new()));
    let ended = Arc::new(Notify::new());
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = loop {
            while waiting.len() < MAX_BATCH
                && let Ok(p) = turns.try_recv()
            {
                waiting.push_back(p);
            }
            // One turn of a conversation at a time: a second one (the visitor answered twice
            // at once) waits until the first is written, then finds the row changed. Two
            // statements in flight never share a row, so they cannot deadlock each other.
            let batch = take_batch(&mut waiting, &lock(&in_flight));
            if !batch.is_empty() {
                break batch;
            }
            if !open && waiting.is_empty() {
                return;
            }
            tokio::select! {
                got = turns.recv(), if open => match got {
                    Some(p) => waiting.push_back(p),
                    None => open = false,
                },
                () = ended.notified() => {}
            }
        };
        let ids: Vec<Uuid> = batch.iter().map(|p| p.write.row.id).collect();
        lock(&in_flight).extend(ids.iter().copied());
        let (pool, in_flight, ended) = (pool.clone(), in_flight.clone(), ended.clone());
        tokio::spawn(async move {
            write_batch(&pool, batch).await;
            let mut held = lock(&in_flight);
            for id in &ids {
                held.remove(id);
            }
            drop(held);
            drop(slot);
            ended.notify_one();
        });
    }
}

fn lock(set: &std::sync::Mutex<HashSet<Uuid>>) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes from `waiting`, in order, up to [`MAX_BATCH`] turns of distinct conversations none
/// of which has a turn in flight; the others keep their place.
fn take_batch(waiting: &mut VecDeque<Pending>, in_flight: &HashSet<Uuid>) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut taken = HashSet::new();
    let mut left = VecDeque::new();
    for p in waiting.drain(..) {
        let id = p.write.row.id;
        if batch.len() < MAX_BATCH && !in_flight.contains(&id) && taken.insert(id) {
            batch.push(p);
        } else {
            left.push_back(p);
        }
    }
    *waiting = left;
    batch
}

/// Writes `batch` with one statement, or, if the server refused it (then nothing of it was
/// written) and it held more than one turn, each turn on its own; tells each its outcome.
async fn write_batch(pool: &DatabaseConnection, batch: Vec<Pending>) {
    crate::metrics::write_batch(batch.len());
    match statement::write(pool, batch.iter().map(|p| &p.write)).await {
        Ok(written) => {
            for p in batch {
                let _ = p.reply.send(outcome(&written, &p.write));
            }
        }
        Err(e) if batch.len() > 1 && crate::db::refused_by_server(&e) => {
            crate::metrics::quick_batch_failed();
            tracing::warn!(error.cause = ?e, turns = batch.len(), "cannot write quick turns together; writing them one by one");
            futures_util::stream::iter(batch)
                .for_each_concurrent(ALONE_IN_FLIGHT, |p| async move {
                    let written = statement::write(pool, std::iter::once(&p.write)).await;
                    let _ = p
                        .reply
                        .send(written.and_then(|written| outcome(&written, &p.write)));
                })
                .await;
        }
        Err(e) => {
            // A turn alone fails alone. After a failed connection, or a reply that did not
            // read, the statement may have committed: written again one by one, each turn
            // would find its row changed and take its answer a second time, so each fails.
            if batch.len() > 1 {
                tracing::error!(error.cause = ?e, turns = batch.len(), "quick turns written together may or may not have been written");
            }
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A turn's outcome from what the statement says of it: its bot changed or its lifecycle
/// event has a subscriber (nothing written), or the events written for its conversation: all
/// (written), none (the row had changed; a new one cannot be), or some (which cannot be).
fn outcome(written: &HashMap<Uuid, Said>, write: &QuickWrite) -> Result<Wrote, DbErr> {
    let Some(said) = written.get(&write.row.id) else {
        return Err(DbErr::Custom(
            "a one-statement turn is missing from its answer".into(),
        ));
    };
    if !said.current {
        return Ok(Wrote::BotChanged);
    }
    if let Some(blocked) = &said.blocked {
        return match write.unless.iter().find(|e| **e == blocked) {
            Some(event) => Ok(Wrote::Subscribed(event)),
            None => Err(DbErr::Custom(format!(
                "a one-statement turn was held for {blocked}, which it does not make"
            ))),
        };
    }
    match (said.events, said.deliveries) {
        (0, 0) if write.expect.is_some() => Ok(Wrote::Changed),
        (n, d) if n == write.events.len() as i64 && d == write.deliveries.len() as i64 => {
            Ok(Wrote::Written)
        }
        (n, d) => Err(DbErr::Custom(format!(
            "a one-statement turn wrote {n} of {} events and {d} of {} deliveries",
            write.events.len(),
            write.deliveries.len()
        ))),
    }
}
