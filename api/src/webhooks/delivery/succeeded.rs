//! PostgreSQL: a batch of successful attempts recorded with one statement of fixed text.
//!
//! The general path (`record_in`, with `track_health_batch`) writes a batch with sea-orm in a
//! transaction: a multi-row `INSERT` of the attempts and an `UPDATE … WHERE id IN (…)` of the
//! webhooks, whose texts change with the batch's size, and the deliveries' `UPDATE`. Each
//! size is a statement of its own that PostgreSQL parses and plans, and that the
//! connection's cache of prepared statements (100 by default) keeps or evicts again: under
//! load, batches of every size from 1 to 256 follow one another. Here the
//! columns travel as arrays in PostgreSQL's binary format and one text serves every batch,
//! prepared once per connection, in one round trip without `BEGIN` and `COMMIT` (one
//! statement is atomic on its own).
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr, sqlx};
use uuid::Uuid;

use super::{Done, attempt_row};
use entity::delivery::DeliveryMode;

/// Inserts the attempts, marks their deliveries SUCCEEDED (the claim released, the attempt
/// counted) and resets the failure count of the webhooks of async ones, as `record_in` and
/// `track_health_batch` do for a batch of successes.
const SQL: &str = "\
WITH attempts AS (
  INSERT INTO delivery_attempts
    (id, delivery_id, n, at, response_status, duration_ms, error, response_body, notes)
  SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::timestamptz[], $5::int4[],
                       $6::int4[], $7::text[], $8::text[], $9::text[])
), finished AS (
  UPDATE deliveries
     SET status = 'SUCCEEDED', attempt_count = attempt_count + 1, next_attempt_at = NULL,
         claimed_until = NULL, claimed_by = NULL, updated_at = $10
   WHERE id = ANY($2::uuid[])
), healthy AS (
  UPDATE webhooks SET failing_since = NULL, failed_attempts = 0
   WHERE id = ANY($11::uuid[]) AND failing_since IS NOT NULL
)
SELECT 1";

/// Records `batch`, whose attempts all succeeded, on `pool`.
pub(super) async fn record(
    pool: DatabaseConnection,
    batch: Arc<[Done]>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let n = batch.len();
    let mut id = Vec::with_capacity(n);
    let mut delivery_id = Vec::with_capacity(n);
    let mut number = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut response_status = Vec::with_capacity(n);
    let mut duration_ms = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut response_body = Vec::with_capacity(n);
    let mut notes: Vec<Option<String>> = Vec::with_capacity(n);
    let mut healthy: Vec<Uuid> = Vec::new();
    for d in batch.iter() {
        let row = attempt_row(&d.delivery, &d.outcome, None, now);
        id.push(row.id);
        delivery_id.push(row.delivery_id);
        number.push(row.n);
        at.push(row.at);
        response_status.push(row.response_status);
        duration_ms.push(row.duration_ms);
        error.push(row.error);
        response_body.push(row.response_body);
        notes.push(row.notes);
        // As `track_health_batch` decides: an async attempt that went through.
        if d.delivery.mode == DeliveryMode::Async && d.outcome.is_success() {
            healthy.push(d.delivery.webhook_id);
        }
    }
    healthy.sort_unstable();
    healthy.dedup();
    sqlx::query(SQL)
        .bind(id)
        .bind(delivery_id)
        .bind(number)
        .bind(at)
        .bind(response_status)
        .bind(duration_ms)
        .bind(error)
        .bind(response_body)
        .bind(notes)
        .bind(now)
        .bind(healthy)
        .execute(pool.get_postgres_connection_pool())
        .await
        .map_err(crate::db::query_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sea_orm::sqlx::{Executor as _, SqlSafeStr as _};

    use crate::{db::testing::migrated, settings::DatabaseKind};

    /// PostgreSQL parses and plans the statement against the migrated schema (it is
    /// PostgreSQL's only: on SQLite there is nothing to check).
    #[tokio::test]
    async fn postgresql_prepares_the_statement() {
        let (db, cleanup) = migrated().await;
        let prepared = match db.kind() {
            DatabaseKind::Postgres => db
                .conn()
                .get_postgres_connection_pool()
                .prepare(super::SQL.into_sql_str())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            DatabaseKind::Sqlite => Ok(()),
        };
        cleanup().await;
        assert_eq!(prepared, Ok(()));
    }
}
