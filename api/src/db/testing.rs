//! Test support: a throwaway migrated database, and the plan of a query on it.
use sea_orm::{ConnectionTrait as _, DatabaseBackend, Statement};

use super::Db;
use crate::settings::DatabaseUrl;

/// A migrated database on the engine the tests run on (PostgreSQL when
/// `PARLEY_TEST_DATABASE_URL` is set), and what drops it.
pub(crate) async fn migrated() -> (Db, impl AsyncFnOnce()) {
    let name = format!("parley_unit_{}", uuid::Uuid::new_v4().simple());
    let admin = std::env::var("PARLEY_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let url = match &admin {
        Some(admin) => {
            let conn = sea_orm::Database::connect(admin).await.expect("connect");
            conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create the database");
            conn.close().await.ok();
            let mut url = url::Url::parse(admin).expect("a URL");
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
        None => format!(
            "sqlite://{}?mode=rwc",
            std::env::temp_dir().join(format!("{name}.db")).display()
        ),
    };
    let db = Db::connect(&DatabaseUrl::parse(&url).expect("a database URL"))
        .await
        .expect("the database opens");
    db.migrate().await.expect("the migrations run");
    let cleanup = async move || match admin {
        Some(admin) => {
            if let Ok(conn) = sea_orm::Database::connect(&admin).await {
                let _ = conn
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                conn.close().await.ok();
            }
        }
        None => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            for file in [
                path.clone(),
                path.with_extension("db-wal"),
                path.with_extension("db-shm"),
            ] {
                let _ = std::fs::remove_file(file);
            }
        }
    };
    (db, cleanup)
}

/// A new account, stored, made at `at`: tenant data needs one.
pub(crate) async fn account(db: &Db, at: chrono::DateTime<chrono::Utc>) -> entity::account::Model {
    use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _};
    let account = entity::account::Model {
        id: uuid::Uuid::now_v7(),
        name: "Test Co".into(),
        created_at: at,
    };
    account
        .clone()
        .into_active_model()
        .insert(db.conn())
        .await
        .expect("account");
    account
}

/// The plan the database makes for `query`, one line per step. On PostgreSQL, sequential
/// scans are off (on a test's near-empty table a scan is cheapest whatever the indexes, so
/// the plan would not show whether an index can serve the query at all), and the query is
/// planned as the pool's prepared statements may be, once for any parameters, whose values
/// then prove nothing about a partial index's condition.
pub(crate) async fn plan_of(db: &Db, query: Statement) -> String {
    let tx = db.write().await.expect("a transaction");
    let backend = tx.tx.get_database_backend();
    let explain = match backend {
        DatabaseBackend::Postgres => {
            tx.tx
                .execute_unprepared(&format!(
                    "SET LOCAL enable_seqscan = off; \
                     SET LOCAL plan_cache_mode = force_generic_plan; \
                     PREPARE planned AS {}",
                    query.sql
                ))
                .await
                .expect("the query is prepared");
            use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder as _};
            let args: Vec<String> = query
                .values
                .iter()
                .flat_map(|v| v.0.iter())
                .map(|v| PostgresQueryBuilder.value_to_string(v))
                .collect();
            let args = if args.is_empty() {
                String::new()
            } else {
                format!("({})", args.join(", "))
            };
            Statement::from_string(backend, format!("EXPLAIN EXECUTE planned{args}"))
        }
        _ => Statement {
            sql: format!("EXPLAIN QUERY PLAN {}", query.sql),
            ..query
        },
    };
    let column = if backend == DatabaseBackend::Postgres {
        "QUERY PLAN"
    } else {
        "detail"
    };
    let rows = tx.tx.query_all_raw(explain).await.expect("the plan");
    rows.iter()
        .map(|row| row.try_get::<String>("", column).expect("a plan line"))
        .collect::<Vec<_>>()
        .join("\n")
}
