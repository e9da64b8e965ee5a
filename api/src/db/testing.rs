//! Test support: a throwaway migrated database.
use sea_orm::ConnectionTrait as _;

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
