//! Prometheus metrics, served at `GET /metrics` by the edge. Counters and histograms are
//! recorded where things happen, in this process; gauges of stored state (conversations and
//! deliveries by status, the outbox) are read from the database at each scrape, so they are
//! true for every instance sharing it.
use std::{sync::OnceLock, time::Duration};

use chrono::Utc;
use entity::{
    conversation::{self, ConversationStatus},
    delivery::{self, DeliveryStatus},
};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Statement, sea_query::Expr,
};

use crate::{
    db::Db,
    error::{ApiError, ApiResult},
};

/// Seconds: from a tenth of a millisecond (a turn with nothing to wait for) to a minute (a
/// webhook attempt at its deadline).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use (tests run many servers in one process,
/// and a process has one recorder). `None` if another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("parley_db_write_batch_jobs".into()),
                        BATCH_BUCKETS,
                    )
                });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error.cause = %e, "metrics are off: no recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// A conversation step (`start`, `answer`, `webhook_result`, `resume`) and how long its
/// transaction took, queueing for the writer included.
pub fn turn(kind: &'static str, took: Duration) {
    counter!("parley_turns_total", "kind" => kind).increment(1);
    histogram!("parley_turn_duration_seconds").record(took.as_secs_f64());
}

/// How a step took its conversation: `quick` (known here, and the turn only made the bot
/// speak, perhaps ending the conversation: written without a read, in one statement on
/// PostgreSQL), `known` (known here, in a full step), `read` (read in its transaction),
/// `restarted` (known here but changed elsewhere, so taken again from the row), `quick_new`
/// (a start written like `quick`), `new` (any other start).
pub fn turn_path(path: &'static str) {
    counter!("parley_turn_paths_total", "path" => path).increment(1);
}

/// One webhook attempt: its outcome and how long the customer's endpoint took.
pub fn attempt(succeeded: bool, took: Duration) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    counter!("parley_delivery_attempts_total", "outcome" => outcome).increment(1);
    histogram!("parley_delivery_attempt_duration_seconds").record(took.as_secs_f64());
}

/// A delivery handed to this instance's dispatcher in memory, claimed: at `insert` (by the
/// step that committed it) or by the outbox `poll`.
pub fn handed_over(path: &'static str) {
    counter!("parley_deliveries_handed_over_total", "path" => path).increment(1);
}

/// One batch of SQLite's group commit, or of PostgreSQL's quick turns: how many writes
/// shared its transaction.
pub fn write_batch(jobs: usize) {
    histogram!("parley_db_write_batch_jobs").record(jobs as f64);
}

/// PostgreSQL: a statement of many quick turns failed, and its turns were written one by one.
pub fn quick_batch_failed() {
    counter!("parley_quick_batches_failed_total").increment(1);
}

/// How long a write waited for its commit, queueing included.
pub fn write_wait(took: Duration) {
    histogram!("parley_db_write_wait_seconds").record(took.as_secs_f64());
}

/// Counts one open thing (a socket, a subscription) while it lives.
#[derive(Debug)]
pub struct Open(&'static str);

impl Open {
    /// `name` goes up by one now and down by one when this is dropped.
    pub fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

/// Sets `gauge` for each of `statuses` (a status and its label) to its count in `counts`, 0
/// when it has none.
fn set_by_status<S: PartialEq>(
    gauge: &'static str,
    counts: &[(S, i64)],
    statuses: [(S, &'static str); 3],
) {
    for (status, name) in statuses {
        let n = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        gauge!(gauge, "status" => name).set(n as f64);
    }
}

/// The deliveries, the pending ones and the failed ones, each spelled with the literal that
/// its index's condition states.
const DELIVERY_COUNTS: &str = "SELECT (SELECT COUNT(*) FROM deliveries) AS total, \
     (SELECT COUNT(*) FROM deliveries WHERE status = 'PENDING') AS pending, \
     (SELECT COUNT(*) FROM deliveries WHERE status = 'FAILED') AS failed";

/// Deliveries by status, in one statement (one snapshot). Every finished delivery stays in the
/// table, so a pass over its rows would grow with all the deliveries ever sent; the total
/// comes from the narrowest index, the pending and the failed ones from indexes that hold
/// only them, and the succeeded are the rest.
async fn delivery_counts(db: &Db) -> ApiResult<Vec<(DeliveryStatus, i64)>> {
    let conn = db.conn();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            DELIVERY_COUNTS,
        ))
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a count returned no row")))?;
    let total: i64 = row.try_get("", "total")?;
    let pending: i64 = row.try_get("", "pending")?;
    let failed: i64 = row.try_get("", "failed")?;
    Ok(vec![
        (DeliveryStatus::Pending, pending),
        (DeliveryStatus::Failed, failed),
        (DeliveryStatus::Succeeded, total - pending - failed),
    ])
}

/// The Prometheus text: stored state read now, then everything recorded.
pub async fn render(db: &Db) -> ApiResult<String> {
    let Some(handle) = handle() else {
        return Ok(String::new());
    };
    let conversations: Vec<(ConversationStatus, i64)> = conversation::Entity::find()
        .select_only()
        .column(conversation::Column::Status)
        // `COUNT(*)`, not of a column: the `(status, updated_at)` index answers it alone,
        // where counting `id` would fetch every row.
        .column_as(Expr::cust("COUNT(*)"), "n")
        .group_by(conversation::Column::Status)
        .into_tuple()
        .all(db.conn())
        .await?;
    let deliveries = delivery_counts(db).await?;
    let now = Utc::now();
    let (depth, oldest): (i64, Option<chrono::DateTime<Utc>>) = delivery::Entity::find()
        .select_only()
        .column_as(delivery::Column::Id.count(), "n")
        .column_as(delivery::Column::NextAttemptAt.min(), "oldest")
        // Due by the worker's own test; a disabled webhook's held deliveries count too: they wait.
        .filter(crate::webhooks::delivery::due(now))
        .into_tuple()
        .one(db.conn())
        .await?
        .unwrap_or((0, None));
    // The gauges are the process's: two scrapes at once (two servers in one process, as in the
    // tests) must not set them in between each other's setting and rendering.
    static RENDERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _rendering = RENDERING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    set_by_status(
        "parley_conversations",
        &conversations,
        [
            (ConversationStatus::Active, "ACTIVE"),
            (ConversationStatus::Completed, "COMPLETED"),
            (ConversationStatus::Abandoned, "ABANDONED"),
        ],
    );
    set_by_status(
        "parley_deliveries",
        &deliveries,
        [
            (DeliveryStatus::Pending, "PENDING"),
            (DeliveryStatus::Succeeded, "SUCCEEDED"),
            (DeliveryStatus::Failed, "FAILED"),
        ],
    );
    gauge!("parley_outbox_due").set(depth as f64);
    let age = oldest.map_or(0.0, |at| {
        (now - at).num_milliseconds().max(0) as f64 / 1000.0
    });
    gauge!("parley_outbox_oldest_due_age_seconds").set(age);
    for (pool, size, idle) in db.pool_stats() {
        gauge!("parley_db_pool_connections", "pool" => pool, "state" => "idle").set(idle as f64);
        gauge!("parley_db_pool_connections", "pool" => pool, "state" => "busy")
            .set((size as usize).saturating_sub(idle) as f64);
    }
    Ok(handle.render())
}

#[cfg(test)]
mod tests {
    use sea_orm::Statement;

    use crate::db::testing::{migrated, plan_of};

    #[tokio::test]
    async fn the_delivery_counts_go_through_indexes_and_not_over_the_table() {
        let (db, cleanup) = migrated().await;
        let backend = db.conn().get_database_backend();
        let plan = plan_of(&db, Statement::from_string(backend, super::DELIVERY_COUNTS)).await;
        cleanup().await;
        for index in ["idx_deliveries_pending_due", "idx_deliveries_failed"] {
            assert!(plan.contains(index), "{index} is not used:\n{plan}");
        }
        // The pending and the failed are counted from their own indexes (above), and
        // nothing passes over the table's rows, which hold every payload ever sent
        // (PostgreSQL plans with sequential scans off: see `plan_of`).
        let scans_rows = plan.lines().any(|line| {
            line.contains("Seq Scan")
                || (line.contains("SCAN deliveries") && !line.contains("INDEX"))
        });
        assert!(!scans_rows, "a count reads delivery rows:\n{plan}");
    }
}
