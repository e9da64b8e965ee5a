//! `spawn_app()` and the `TestApp` client, one helper per operation.
#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use parley::{
    app::Application,
    crypto::SecretKey,
    settings::{DatabaseUrl, Settings},
};
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

mod bots;
mod chat;

pub use bots::*;
pub use chat::*;

/// A fresh database for one test, removed when dropped.
pub enum TestDb {
    Sqlite {
        dir: PathBuf,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    /// Another instance's view of a database owned by someone else: dropping it removes nothing.
    Shared {
        url: String,
        postgres: bool,
    },
}

impl TestDb {
    pub async fn create() -> Self {
        match std::env::var("PARLEY_TEST_DATABASE_URL")
            .ok()
            .filter(|v| !v.is_empty())
        {
            Some(admin_url) => {
                let name = format!("parley_test_{}", Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to PARLEY_TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let mut url =
                    url::Url::parse(&admin_url).expect("PARLEY_TEST_DATABASE_URL is a URL");
                url.set_path(&format!("/{name}"));
                TestDb::Postgres {
                    admin_url,
                    name,
                    url: url.to_string(),
                }
            }
            None => {
                let dir =
                    std::env::temp_dir().join(format!("parley-test-{}", Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.join("parley.db").display());
                TestDb::Sqlite { dir, url }
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. }
            | TestDb::Postgres { url, .. }
            | TestDb::Shared { url, .. } => url,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(
            self,
            TestDb::Postgres { .. } | TestDb::Shared { postgres: true, .. }
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self {
            TestDb::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            TestDb::Shared { .. } => {}
            TestDb::Postgres {
                admin_url, name, ..
            } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime, which cannot block on itself.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        rt.block_on(async {
                            if let Ok(admin) = Database::connect(&admin_url).await {
                                let _ = admin
                                    .execute_unprepared(&format!(
                                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                                    ))
                                    .await;
                                let _ = admin.close().await;
                            }
                        });
                    }
                })
                .join();
            }
        }
    }
}

/// The `PARLEY_SECRET_KEY` of test servers on PostgreSQL (SQLite ones use a key file).
pub const TEST_SECRET_KEY: &str = "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktMDEyMzQ=";

/// Settings for a test server on `db`: port 0, private webhooks allowed (receivers run on
/// localhost), a fixed JWT secret and a millisecond retry schedule. On PostgreSQL a fixed
/// secret key, which every instance must share; on SQLite the key file beside the database.
pub fn test_settings(db: &TestDb) -> Settings {
    let mut s = Settings::from_lookup(|_| None).expect("default settings");
    s.database_url = DatabaseUrl::parse(db.url()).expect("test database URL");
    if db.is_postgres() {
        s.secret_key = Some(SecretKey::parse(TEST_SECRET_KEY).expect("test secret key"));
    }
    s.addr = "127.0.0.1:0".parse().expect("addr");
    s.jwt_secret = Some("test-secret-test-secret-test-secret-0123456789".into());
    s.allow_private_webhooks = true;
    s.delivery.retry_schedule = vec![
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_millis(200),
    ];
    s.delivery.poll_interval = Duration::from_millis(50);
    s.delivery.lease = Duration::from_secs(1);
    s.delivery.async_timeout = Duration::from_secs(2);
    s.delivery.sync_timeout = Duration::from_secs(2);
    // Every test client comes from 127.0.0.1: per-address limits are turned off or raised
    // here, and the tests of those limits set them back.
    s.limits.visitor_rate_limit = 0;
    s.limits.request_rate_limit = 0;
    s.limits.answer_rate_limit = 0;
    s.limits.login_per_address = 100_000;
    s.limits.login_per_email = 100_000;
    s.limits.ws_max_sockets_per_client = 100_000;
    s
}

/// A running server and a client for it.
pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub settings: Settings,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    handle: actix_web::dev::ServerHandle,
    pub db: TestDb,
}

/// A fresh server on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh server on a fresh database, with settings adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::create().await;
    let mut settings = test_settings(&db);
    tweak(&mut settings);
    start_on(db, settings).await
}

/// A server on an existing database (to restart an app, or run a second instance).
pub async fn start_on(db: TestDb, settings: Settings) -> TestApp {
    // `TEST_LOG=1` shows the server's logs (filtered by RUST_LOG).
    if std::env::var("TEST_LOG").is_ok() {
        parley::telemetry::init();
    }
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let port = app.port();
    let handle = app.server_handle();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        port,
        // Idle connections are dropped before the server's keep-alive (5 s) ends them: a
        // request sent on one the server is closing at that moment fails (IncompleteMessage).
        client: reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("an HTTP client"),
        settings,
        server: Some(server),
        handle,
        db,
    }
}

/// A signed-up user: token, ids.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub token: String,
    pub user_id: String,
    pub account_id: String,
    pub email: String,
}

impl TestApp {
    /// A second instance of the app on the same database (as behind a load balancer).
    pub async fn second_instance(&self) -> TestApp {
        let db = TestDb::Shared {
            url: self.db.url().to_owned(),
            postgres: self.db.is_postgres(),
        };
        start_on(db, self.settings.clone()).await
    }

    /// Begins a graceful stop of the server, as on SIGTERM.
    pub fn stop_gracefully(&self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(true).await });
    }

    /// Stops the server abruptly (like a crash) and hands back its database.
    pub fn crash(mut self) -> TestDb {
        if let Some(server) = self.server.take() {
            // Dropping the app's future stops its workers mid-flight, like a crash.
            server.abort();
        }
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
        let TestApp { db, .. } = self;
        db
    }

    /// POSTs raw bytes to /graphql.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}/graphql", self.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Runs a GraphQL operation with an optional bearer token; the whole response body.
    pub async fn gql_with(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        self.gql_request(token, json!({ "query": query, "variables": variables }))
            .await
    }

    /// Runs the operation `operation` of `query`, named in the request's `operationName`.
    pub async fn gql_named(
        &self,
        token: &str,
        query: &str,
        operation: &str,
        variables: Value,
    ) -> Value {
        let request = json!({ "query": query, "operationName": operation, "variables": variables });
        self.gql_request(Some(token), request).await
    }

    /// Posts a GraphQL request with an optional bearer token; the whole response body.
    async fn gql_request(&self, token: Option<&str>, request: Value) -> Value {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.addr))
            .json(&request);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request sent");
        resp.json().await.expect("JSON response")
    }

    /// Runs a GraphQL operation from a browser page on `origin` (its `Origin` header).
    pub async fn gql_from(
        &self,
        origin: &str,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Value {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.addr))
            .header("origin", origin)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request sent");
        resp.json().await.expect("JSON response")
    }

    /// Runs a GraphQL operation as `token`.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        self.gql_with(Some(token), query, variables).await
    }

    /// Runs a GraphQL operation anonymously.
    pub async fn gql_anon(&self, query: &str, variables: Value) -> Value {
        self.gql_with(None, query, variables).await
    }

    pub async fn sign_up_raw(&self, email: &str, password: &str) -> Value {
        self.gql_anon(
            "mutation($i: SignUpInput!) { signUp(input: $i) { token user { id email name memberships { role account { id name } } } } }",
            json!({ "i": { "email": email, "password": password, "name": "Test User", "accountName": "Test Co" } }),
        )
        .await
    }

    /// Signs up a new user with their own account.
    pub async fn sign_up(&self, email: &str) -> TestUser {
        let body = self.sign_up_raw(email, "correct horse battery").await;
        let data = &body["data"]["signUp"];
        assert!(data.is_object(), "sign-up failed: {body}");
        TestUser {
            token: data["token"].as_str().expect("token").to_owned(),
            user_id: data["user"]["id"].as_str().expect("id").to_owned(),
            account_id: data["user"]["memberships"][0]["account"]["id"]
                .as_str()
                .expect("account")
                .to_owned(),
            email: data["user"]["email"].as_str().expect("email").to_owned(),
        }
    }

    /// A user with a unique email.
    pub async fn new_user(&self) -> TestUser {
        self.sign_up(&format!("user-{}@example.com", Uuid::new_v4().simple()))
            .await
    }

    pub async fn log_in(&self, email: &str, password: &str) -> Value {
        self.gql_anon(
            "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { token user { id email } } }",
            json!({ "e": email, "p": password }),
        )
        .await
    }

    pub async fn me(&self, token: &str) -> Value {
        self.gql(
            token,
            "{ me { id email name memberships { role account { id name } } } }",
            json!({}),
        )
        .await
    }

    pub async fn create_account(&self, token: &str, name: &str) -> Value {
        self.gql(token, "mutation($n: String!) { createAccount(name: $n) { id name members { role user { id } } } }", json!({ "n": name }))
            .await
    }

    pub async fn account(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            "query($id: ID!) { account(id: $id) { id name members { role user { id email } } } }",
            json!({ "id": id }),
        )
        .await
    }

    pub async fn invite_member(
        &self,
        token: &str,
        account_id: &str,
        email: &str,
        role: &str,
    ) -> Value {
        self.gql(
            token,
            "mutation($a: ID!, $e: String!, $r: Role!) { inviteMember(accountId: $a, email: $e, role: $r) { id email role token } }",
            json!({ "a": account_id, "e": email, "r": role }),
        )
        .await
    }

    pub async fn accept_invitation(&self, token: &str, invitation_token: &str) -> Value {
        self.gql(
            token,
            "mutation($t: String!) { acceptInvitation(token: $t) { role account { id name } user { id } } }",
            json!({ "t": invitation_token }),
        )
        .await
    }

    pub async fn remove_member(&self, token: &str, account_id: &str, user_id: &str) -> Value {
        self.gql(
            token,
            "mutation($a: ID!, $u: ID!) { removeMember(accountId: $a, userId: $u) }",
            json!({ "a": account_id, "u": user_id }),
        )
        .await
    }

    pub async fn change_member_role(
        &self,
        token: &str,
        account_id: &str,
        user_id: &str,
        role: &str,
    ) -> Value {
        self.gql(
            token,
            "mutation($a: ID!, $u: ID!, $r: Role!) { changeMemberRole(accountId: $a, userId: $u, role: $r) { role } }",
            json!({ "a": account_id, "u": user_id, "r": role }),
        )
        .await
    }

    /// Invites a new user into `owner`'s account with `role` and has them accept.
    pub async fn add_member(&self, owner: &TestUser, role: &str) -> TestUser {
        let member = self.new_user().await;
        let inv = self
            .invite_member(&owner.token, &owner.account_id, &member.email, role)
            .await;
        let tok = inv["data"]["inviteMember"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("invite failed: {inv}"))
            .to_owned();
        let acc = self.accept_invitation(&member.token, &tok).await;
        assert!(
            acc["data"]["acceptInvitation"].is_object(),
            "accept failed: {acc}"
        );
        TestUser {
            account_id: owner.account_id.clone(),
            ..member
        }
    }
}

/// The `extensions.code` of a response's first error.
pub fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {body}"))
}

/// Runs one statement on the app's database behind its back, with `$1`-style placeholders
/// (rewritten to `?` on SQLite).
pub async fn sql(app: &TestApp, statement: &str, values: Vec<sea_orm::Value>) {
    let conn = Database::connect(app.db.url()).await.expect("connect");
    let (backend, statement) = if app.db.is_postgres() {
        (DatabaseBackend::Postgres, statement.to_owned())
    } else {
        (DatabaseBackend::Sqlite, statement.replace("$1", "?"))
    };
    conn.execute_raw(Statement::from_sql_and_values(backend, statement, values))
        .await
        .expect("statement runs");
    conn.close().await.ok();
}

/// An id as a statement's value (see [`sql`]).
pub fn uuid(id: &str) -> sea_orm::Value {
    Uuid::parse_str(id).expect("uuid").into()
}

/// Asserts that the response failed with `code`.
#[track_caller]
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(error_code(body), code, "unexpected response: {body}");
}

/// Asserts that the response has no errors.
#[track_caller]
pub fn assert_ok(body: &Value) {
    assert!(
        body.get("errors")
            .is_none_or(|e| e.as_array().is_some_and(|a| a.is_empty())),
        "unexpected errors: {body}"
    );
}
