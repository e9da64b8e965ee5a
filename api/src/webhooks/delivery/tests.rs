//! The delivery module's tests: its SQL, read against the migrated schema.
use chrono::Utc;
use entity::{
    delivery::{self, DeliveryMode, DeliveryStatus},
    delivery_attempt,
};
use sea_orm::QueryTrait as _;
use uuid::Uuid;

use crate::db::testing::{migrated, plan_of};

#[test]
fn the_pending_and_failed_literals_are_the_statuses_the_entity_stores() {
    use sea_orm::ActiveEnum as _;
    for (test, status) in [
        (super::pending(), DeliveryStatus::Pending),
        (super::failed(), DeliveryStatus::Failed),
    ] {
        let sql = sea_orm::sea_query::Query::select()
            .expr(test)
            .to_string(sea_orm::sea_query::PostgresQueryBuilder);
        let stored = status.to_value();
        assert!(
            sql.contains(&format!("'{stored}'")),
            "{sql} does not test for {stored}"
        );
    }
}

/// An account, a webhook failing since an hour ago, and `n` deliveries of it in `mode`,
/// claimed, at their second attempt.
async fn claimed_deliveries(
    db: &crate::db::Db,
    mode: DeliveryMode,
    n: usize,
) -> Vec<delivery::Model> {
    use entity::webhook;
    use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _};
    let now = Utc::now();
    let account = crate::db::testing::account(db, now).await;
    let hook = webhook::Model {
        id: Uuid::now_v7(),
        account_id: account.id,
        name: "hook".into(),
        url: "https://example.com/hook".into(),
        headers: serde_json::json!({}),
        created_at: now,
        event_types: None,
        updated_at: now,
        failing_since: Some(now - chrono::Duration::hours(1)),
        failed_attempts: 3,
        disabled_at: None,
        disabled_reason: None,
        max_per_second: None,
    };
    hook.clone()
        .into_active_model()
        .insert(db.conn())
        .await
        .expect("webhook");
    let mut made = Vec::new();
    for i in 0..n {
        let d = delivery::Model {
            id: Uuid::now_v7(),
            account_id: account.id,
            webhook_id: hook.id,
            conversation_id: None,
            block_id: Some(format!("b{i}")),
            mode,
            status: DeliveryStatus::Pending,
            payload: serde_json::json!({ "i": i }),
            attempt_count: 1,
            next_attempt_at: Some(now),
            claimed_until: Some(now + chrono::Duration::minutes(1)),
            claimed_by: Some("instance".into()),
            created_at: now,
            updated_at: now,
        };
        made.push(
            d.clone()
                .into_active_model()
                .insert(db.conn())
                .await
                .expect("delivery"),
        );
    }
    made
}

/// What recording left of `deliveries`: each one's row and attempts, and its webhook's
/// failure streak, with ids and times left out.
async fn recorded(db: &crate::db::Db, deliveries: &[delivery::Model]) -> Vec<String> {
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
    let mut seen = Vec::new();
    for d in deliveries {
        let row = delivery::Entity::find_by_id(d.id)
            .one(db.conn())
            .await
            .expect("read")
            .expect("the delivery");
        let hook = entity::webhook::Entity::find_by_id(d.webhook_id)
            .one(db.conn())
            .await
            .expect("read")
            .expect("the webhook");
        let attempts = delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::DeliveryId.eq(d.id))
            .all(db.conn())
            .await
            .expect("read");
        let attempts: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a.n,
                    a.response_status,
                    a.duration_ms,
                    &a.error,
                    &a.response_body,
                    &a.notes,
                )
            })
            .collect();
        seen.push(format!(
            "{:?} {} next={:?} claimed={:?}/{:?} updated={} attempts={attempts:?} \
             webhook failing={} failed={}",
            row.status,
            row.attempt_count,
            row.next_attempt_at,
            row.claimed_until,
            row.claimed_by,
            row.updated_at > d.updated_at,
            hook.failing_since.is_some(),
            hook.failed_attempts,
        ));
    }
    seen
}

/// On PostgreSQL a batch of successes takes one statement of its own
/// (`succeeded::record`); it must leave the rows the general path (`record_in`) leaves.
/// On SQLite only the general path exists, and its rows are checked all the same.
#[tokio::test]
async fn the_one_statement_of_successes_writes_what_the_general_path_writes() {
    let (db, cleanup) = migrated().await;
    let deliveries = super::Deliveries::new(
        db.clone(),
        crate::settings::DeliverySettings::default(),
        8,
        true,
        "instance".into(),
        crate::crypto::SecretBox::new(&crate::crypto::SecretKey::from_bytes([7; 32])),
    )
    .expect("the delivery module");
    let outcome = |n: usize| super::AttemptOutcome {
        status: Some(200),
        duration: std::time::Duration::from_millis(12 + n as u64),
        error: None,
        body: format!("ok {n}").into_bytes(),
        body_truncated: n == 1,
        retry_after: None,
    };
    let done = |made: Vec<delivery::Model>| -> std::sync::Arc<[super::Done]> {
        made.into_iter()
            .enumerate()
            .map(|(n, delivery)| super::Done {
                delivery,
                outcome: outcome(n),
                status: DeliveryStatus::Succeeded,
                next_attempt_at: None,
            })
            .collect()
    };
    let mut by_path = Vec::new();
    for mode in [DeliveryMode::Async, DeliveryMode::Sync] {
        let general = claimed_deliveries(&db, mode, 3).await;
        let batch = done(general.clone());
        let mut paths = vec![{
            let (d, batch) = (deliveries.clone(), batch.clone());
            db.write_grouped(move |tx| Box::pin(async move { d.record_in(tx, &batch).await }))
                .await
                .expect("the general path records");
            recorded(&db, &general).await
        }];
        if db.kind() == crate::settings::DatabaseKind::Postgres {
            let fast = claimed_deliveries(&db, mode, 3).await;
            super::succeeded::record(db.conn().clone(), done(fast.clone()), Utc::now())
                .await
                .expect("the one statement records");
            paths.push(recorded(&db, &fast).await);
        }
        by_path.push((mode, paths));
    }
    cleanup().await;
    for (mode, paths) in by_path {
        let general = &paths[0];
        assert_eq!(general.len(), 3);
        for (n, row) in general.iter().enumerate() {
            let failing = mode == DeliveryMode::Sync;
            let failed = if failing { 3 } else { 0 };
            assert_eq!(
                row,
                &format!(
                    "Succeeded 2 next=None claimed=None/None updated=true attempts=[(2, \
                     Some(200), {}, None, Some({:?}), None)] webhook failing={failing} \
                     failed={failed}",
                    12 + n,
                    format!("ok {n}{}", if n == 1 { "…[truncated]" } else { "" }),
                ),
                "{mode:?}, the general path"
            );
        }
        if let Some(fast) = paths.get(1) {
            assert_eq!(
                fast, general,
                "{mode:?}: the one statement against the general path"
            );
        }
    }
}

#[tokio::test]
async fn the_poll_reads_due_deliveries_through_the_index_of_pending_ones() {
    let (db, cleanup) = migrated().await;
    let backend = db.conn().get_database_backend();
    let plan = plan_of(&db, super::candidates(Utc::now(), 400).build(backend)).await;
    cleanup().await;
    assert!(
        plan.contains("idx_deliveries_pending_due"),
        "the poll does not use the index of pending deliveries:\n{plan}"
    );
}

#[tokio::test]
async fn only_a_batch_the_database_refused_is_recorded_again_in_parts() {
    use sea_orm::{ConnectionTrait as _, DbErr, RuntimeErr};

    use crate::error::ApiError;
    let (db, cleanup) = migrated().await;
    let refused = db
        .conn()
        .execute_unprepared("INSERT INTO delivery_attempts_that_do_not_exist VALUES (1)")
        .await
        .expect_err("the table does not exist");
    cleanup().await;
    assert!(
        super::recorder::refused_whole(&ApiError::from(refused)),
        "a statement the database refused rolled back whole and may be written in parts"
    );
    // What fails after the statement was sent may have come after its commit.
    for unknown in [
        DbErr::Conn(RuntimeErr::Internal("connection reset by peer".into())),
        DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::ConnectionClosed),
        DbErr::Custom("the writer is gone".into()),
    ] {
        assert!(
            !super::recorder::refused_whole(&ApiError::from(unknown)),
            "recorded again after a failure that may follow the commit"
        );
    }
    assert!(!super::recorder::refused_whole(&ApiError::NotFound(
        "a delivery".into()
    )));
}
