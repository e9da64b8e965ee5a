//! Encryption at rest: the generated JWT key, signing secrets and header values never sit in
//! the database in plaintext, yet admins read them and deliveries are signed with them.
use parley::{
    app::Application,
    crypto::{SecretBox, SecretKey, server_setting_context},
};
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, Statement};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::MockServer;

use crate::helpers::*;

const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const KEY_B: &str = "4242424242424242424242424242424242424242424242424242424242424242";

fn key(text: &str) -> Option<SecretKey> {
    Some(SecretKey::parse(text).expect("valid key"))
}

/// Everything the database holds, as text: the SQLite file and its write-ahead log byte for
/// byte, or every row of every PostgreSQL table.
async fn raw_database(db: &TestDb) -> String {
    match db {
        TestDb::Sqlite { dir, .. } => ["parley.db", "parley.db-wal"]
            .iter()
            .filter_map(|f| std::fs::read(dir.join(f)).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect(),
        _ => {
            let conn = Database::connect(db.url()).await.expect("connect");
            let q = |sql: String| Statement::from_string(DatabaseBackend::Postgres, sql);
            let tables = conn
                .query_all_raw(q(
                    "SELECT table_name::text AS t FROM information_schema.tables \
                              WHERE table_schema = 'public'"
                        .into(),
                ))
                .await
                .expect("tables");
            let mut out = String::new();
            for t in tables {
                let table: String = t.try_get("", "t").expect("name");
                let rows = conn
                    .query_all_raw(q(format!("SELECT r::text AS r FROM \"{table}\" r")))
                    .await
                    .expect("rows");
                for row in rows {
                    out.push_str(&row.try_get::<String>("", "r").expect("row text"));
                    out.push('\n');
                }
            }
            conn.close().await.ok();
            out
        }
    }
}

/// The key the test server encrypts with: its key file on SQLite, the configured one on
/// PostgreSQL.
fn server_key(app: &TestApp) -> SecretKey {
    match (&app.settings.secret_key, &app.db) {
        (Some(k), _) => k.clone(),
        (None, TestDb::Sqlite { dir, .. }) => {
            let text = std::fs::read_to_string(dir.join("parley.key")).expect("key file");
            SecretKey::parse(&text).expect("key file holds a key")
        }
        _ => panic!("no key"),
    }
}

/// One value of `server_settings`, as stored.
async fn stored_setting(db: &TestDb, key: &str) -> String {
    let conn = Database::connect(db.url()).await.expect("connect");
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            match backend {
                DatabaseBackend::Postgres => "SELECT value FROM server_settings WHERE key = $1",
                _ => "SELECT value FROM server_settings WHERE key = ?",
            },
            [key.into()],
        ))
        .await
        .expect("query")
        .expect("setting exists");
    let value = row.try_get("", "value").expect("value");
    conn.close().await.ok();
    value
}

/// Runs `sql` (with `?` placeholders, rewritten to `$n` on PostgreSQL) on the test database.
async fn execute(db: &TestDb, sql: &str, values: Vec<sea_orm::Value>) {
    let conn = Database::connect(db.url()).await.expect("connect");
    let backend = conn.get_database_backend();
    let sql = if backend == DatabaseBackend::Postgres {
        let mut n = 0;
        sql.chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        sql.to_owned()
    };
    conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .expect("execute");
    conn.close().await.ok();
}

/// Sends a test delivery and returns the request the receiver got.
async fn test_send(
    app: &TestApp,
    token: &str,
    webhook: &str,
    hook: &MockServer,
) -> wiremock::Request {
    let before = hook.received_requests().await.unwrap_or_default().len();
    let body = app
        .gql(
            token,
            "mutation($id: ID!) { testWebhook(id: $id) { status } }",
            json!({ "id": webhook }),
        )
        .await;
    assert_eq!(body["data"]["testWebhook"]["status"], "SUCCEEDED", "{body}");
    let got = hook.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), before + 1);
    got[before].clone()
}

fn header<'a>(req: &'a wiremock::Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Whether a login token is signed with `jwt_key`.
fn signed_with(token: &str, jwt_key: &str) -> bool {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["parley"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(jwt_key.as_bytes()),
        &validation,
    )
    .is_ok()
}

#[tokio::test]
async fn secrets_are_not_in_the_database_in_plaintext_yet_admins_read_them_and_deliveries_are_signed()
 {
    let app = spawn_app_with(|s| s.jwt_secret = None).await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let api_key = format!("api-key-{}", Uuid::new_v4().simple());
    let bearer = format!("Bearer tok-{}", Uuid::new_v4().simple());
    let body = app
        .create_webhook(
            &owner.token,
            &owner.account_id,
            json!({ "name": "CRM", "url": format!("{}/hook", hook.uri()), "headers": [
                { "name": "X-Api-Key", "value": api_key },
                { "name": "Authorization", "value": bearer } ] }),
        )
        .await;
    assert_ok(&body);
    let webhook = body["data"]["createWebhook"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first_secret = app.signing_secret(&owner.token, &webhook).await;
    let rotated = app.rotate_webhook_secret(&owner.token, &webhook).await;
    assert_ok(&rotated);
    let secret = app.signing_secret(&owner.token, &webhook).await;
    assert_ne!(secret, first_secret);

    // An admin reads them back.
    let read = app.webhook(&owner.token, &webhook).await;
    assert_eq!(
        read["data"]["webhook"]["headers"],
        json!([{ "name": "X-Api-Key", "value": api_key }, { "name": "Authorization", "value": bearer }])
    );
    assert!(secret.starts_with("whsec_"), "{secret}");

    // A delivery carries the headers and is signed with both live secrets.
    let req = test_send(&app, &owner.token, &webhook, &hook).await;
    assert_eq!(header(&req, "x-api-key"), api_key);
    assert_eq!(header(&req, "authorization"), bearer);
    assert_eq!(matching_signatures(&req, &secret), 1);
    assert_eq!(matching_signatures(&req, &first_secret), 1);

    // The generated JWT key, opened with the server's key, signs the login tokens.
    let stored_jwt = stored_setting(&app.db, "jwt_secret").await;
    assert!(stored_jwt.starts_with("enc:v1:"), "{stored_jwt}");
    let server_key = server_key(&app);
    let jwt_key = SecretBox::new(&server_key)
        .decrypt(&stored_jwt, &server_setting_context("jwt_secret"))
        .expect("the JWT key opens with the server's key");
    assert!(signed_with(&owner.token, &jwt_key));

    let raw = raw_database(&app.db).await;
    assert!(
        raw.contains("X-Api-Key"),
        "the dump should show the tables' rows"
    );
    for (what, needle) in [
        ("header value", api_key.as_str()),
        ("header value", bearer.as_str()),
        ("signing secret", secret.as_str()),
        ("signing secret key", secret.trim_start_matches("whsec_")),
        (
            "rotated-out signing secret",
            first_secret.trim_start_matches("whsec_"),
        ),
        ("JWT key", jwt_key.as_str()),
        ("secret key", server_key.to_base64().as_str()),
    ] {
        assert!(
            !raw.contains(needle),
            "the {what} is in the database in plaintext"
        );
    }
    if let TestDb::Sqlite { dir, .. } = &app.db {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("parley.key"))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key file is for its owner only");
        }
        // A second instance reuses the key file.
        let again = app.second_instance().await;
        assert_eq!(again.signing_secret(&owner.token, &webhook).await, secret);
        assert_eq!(server_key_of_dir(dir), server_key);
    }
}

fn server_key_of_dir(dir: &std::path::Path) -> SecretKey {
    SecretKey::parse(&std::fs::read_to_string(dir.join("parley.key")).expect("key file"))
        .expect("key")
}

#[tokio::test]
async fn a_restart_with_another_key_stops_with_a_clear_error_and_the_right_key_still_works() {
    let app = spawn_app_with(|s| {
        s.jwt_secret = None;
        s.secret_key = key(KEY_A);
    })
    .await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let secret = app.signing_secret(&owner.token, &webhook).await;
    let settings = app.settings.clone();
    let db = app.crash();

    let mut wrong = settings.clone();
    wrong.secret_key = key(KEY_B);
    let err = Application::build(wrong)
        .await
        .err()
        .expect("a wrong key is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("PARLEY_SECRET_KEY does not match the key this database was encrypted with"),
        "{msg}"
    );
    assert!(!msg.contains(KEY_A) && !msg.contains(KEY_B), "{msg}");
    if db.is_postgres() {
        // No key file for PostgreSQL: the key must be given.
        let mut none = settings.clone();
        none.secret_key = None;
        let err = Application::build(none)
            .await
            .err()
            .expect("PostgreSQL needs PARLEY_SECRET_KEY");
        let msg = format!("{err:#}");
        assert!(msg.contains("PARLEY_SECRET_KEY is not set"), "{msg}");
    }

    // With the right key, tokens, secrets and headers are as before.
    let app = start_on(db, settings).await;
    assert_eq!(
        app.me(&owner.token).await["data"]["me"]["id"],
        owner.user_id
    );
    assert_eq!(app.signing_secret(&owner.token, &webhook).await, secret);
    let req = test_send(&app, &owner.token, &webhook, &hook).await;
    assert_eq!(header(&req, "x-api-key"), "k-123");
    assert_eq!(matching_signatures(&req, &secret), 1);
}

#[tokio::test]
async fn without_its_key_file_an_sqlite_database_does_not_start() {
    let app = spawn_app().await;
    let TestDb::Sqlite { dir, .. } = &app.db else {
        return; // PostgreSQL has no key file.
    };
    let dir = dir.clone();
    let owner = app.new_user().await;
    app.new_webhook(&owner, "http://127.0.0.1:9/hook").await;
    let settings = app.settings.clone();
    let db = app.crash();
    let key_file = dir.join("parley.key");
    let original = std::fs::read_to_string(&key_file).expect("key file");

    std::fs::remove_file(&key_file).expect("remove");
    let msg = format!(
        "{:#}",
        Application::build(settings.clone())
            .await
            .err()
            .expect("refused without its key file")
    );
    assert!(
        msg.contains("parley.key") && msg.contains("missing"),
        "{msg}"
    );
    assert!(!key_file.exists(), "no new key file replaces the lost one");

    std::fs::write(&key_file, SecretKey::generate().to_base64()).expect("write");
    let msg = format!(
        "{:#}",
        Application::build(settings.clone())
            .await
            .err()
            .expect("refused with another key file")
    );
    assert!(
        msg.contains("does not match the key this database was encrypted with"),
        "{msg}"
    );

    std::fs::write(&key_file, original).expect("restore");
    let app = start_on(db, settings).await;
    assert!(
        app.signing_secret(&owner.token, &app_webhook(&app, &owner).await)
            .await
            .starts_with("whsec_")
    );
}

/// The id of the owner's first webhook.
async fn app_webhook(app: &TestApp, owner: &TestUser) -> String {
    let body = app
        .gql(
            &owner.token,
            "query($id: ID!) { account(id: $id) { webhooks { id } } }",
            json!({ "id": owner.account_id }),
        )
        .await;
    body["data"]["account"]["webhooks"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no webhook in {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_key_rotation_re_encrypts_every_secret_under_the_new_key() {
    let app = spawn_app_with(|s| {
        s.jwt_secret = None;
        s.secret_key = key(KEY_A);
    })
    .await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let secret = app.signing_secret(&owner.token, &webhook).await;
    let settings = app.settings.clone();
    let db = app.crash();

    let mut rotating = settings.clone();
    rotating.secret_key = key(KEY_B);
    rotating.previous_secret_key = key(KEY_A);
    let app = start_on(db, rotating).await;
    assert_eq!(
        app.me(&owner.token).await["data"]["me"]["id"],
        owner.user_id
    );
    assert_eq!(app.signing_secret(&owner.token, &webhook).await, secret);
    let db = app.crash();

    // Now only the new key opens anything.
    let mut old = settings.clone();
    old.secret_key = key(KEY_A);
    let msg = format!(
        "{:#}",
        Application::build(old)
            .await
            .err()
            .expect("the old key no longer opens it")
    );
    assert!(msg.contains("does not match"), "{msg}");
    let mut new = settings;
    new.secret_key = key(KEY_B);
    let app = start_on(db, new).await;
    assert_eq!(
        app.me(&owner.token).await["data"]["me"]["id"],
        owner.user_id
    );
    assert_eq!(app.signing_secret(&owner.token, &webhook).await, secret);
    let req = test_send(&app, &owner.token, &webhook, &hook).await;
    assert_eq!(header(&req, "x-api-key"), "k-123");
    assert_eq!(matching_signatures(&req, &secret), 1);
}

#[tokio::test]
async fn secrets_left_in_plaintext_by_an_older_version_are_encrypted_at_start_up() {
    let app = spawn_app_with(|s| s.jwt_secret = None).await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let settings = app.settings.clone();
    let db = app.crash();

    // What an older Parley stored: everything in plaintext.
    let old_secret = format!("whsec_{}", "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=");
    let old_header = format!("legacy-{}", Uuid::new_v4().simple());
    let old_jwt = format!("legacy-jwt-key-{}", Uuid::new_v4().simple());
    let headers = json!([{ "name": "X-Api-Key", "value": old_header }]).to_string();
    let webhook_id = Uuid::parse_str(&webhook).expect("uuid");
    execute(
        &db,
        "UPDATE webhook_secrets SET secret = ? WHERE webhook_id = ?",
        vec![old_secret.clone().into(), webhook_id.into()],
    )
    .await;
    let json_param = if db.is_postgres() {
        "CAST(? AS jsonb)"
    } else {
        "?"
    };
    execute(
        &db,
        &format!("UPDATE webhooks SET headers = {json_param} WHERE id = ?"),
        vec![headers.into(), webhook_id.into()],
    )
    .await;
    execute(
        &db,
        "UPDATE server_settings SET value = ? WHERE key = 'jwt_secret'",
        vec![old_jwt.clone().into()],
    )
    .await;
    assert!(raw_database(&db).await.contains(&old_header));

    let app = start_on(db, settings).await;
    let owner = TestUser {
        token: app.log_in(&owner.email, "correct horse battery").await["data"]["logIn"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("log in failed"))
            .to_owned(),
        ..owner
    };
    assert!(
        signed_with(&owner.token, &old_jwt),
        "the stored JWT key still signs"
    );
    assert_eq!(app.signing_secret(&owner.token, &webhook).await, old_secret);
    let read = app.webhook(&owner.token, &webhook).await;
    assert_eq!(read["data"]["webhook"]["headers"][0]["value"], old_header);
    let req = test_send(&app, &owner.token, &webhook, &hook).await;
    assert_eq!(header(&req, "x-api-key"), old_header);
    assert_eq!(matching_signatures(&req, &old_secret), 1);

    let raw = raw_database(&app.db).await;
    for needle in [
        old_header.as_str(),
        old_jwt.as_str(),
        old_secret.trim_start_matches("whsec_"),
    ] {
        assert!(!raw.contains(needle), "{needle} is still in the database");
    }
    assert!(
        stored_setting(&app.db, "jwt_secret")
            .await
            .starts_with("enc:v1:")
    );
}

#[tokio::test]
async fn a_key_file_is_rotated_by_moving_it_away_and_giving_its_key_as_the_previous_one() {
    let app = spawn_app().await;
    let TestDb::Sqlite { dir, .. } = &app.db else {
        return; // PostgreSQL has no key file.
    };
    let key_file = dir.join("parley.key");
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let secret = app.signing_secret(&owner.token, &webhook).await;
    let settings = app.settings.clone();
    let db = app.crash();

    let old = std::fs::read_to_string(&key_file).expect("key file");
    std::fs::remove_file(&key_file).expect("move away");
    let mut rotating = settings.clone();
    rotating.previous_secret_key = key(&old);
    let app = start_on(db, rotating).await;
    let new = std::fs::read_to_string(&key_file).expect("a new key file");
    assert_ne!(new, old);
    assert_eq!(app.signing_secret(&owner.token, &webhook).await, secret);
    let db = app.crash();

    // The new key file alone opens everything.
    let app = start_on(db, settings).await;
    let req = test_send(&app, &owner.token, &webhook, &hook).await;
    assert_eq!(header(&req, "x-api-key"), "k-123");
    assert_eq!(matching_signatures(&req, &secret), 1);
}
