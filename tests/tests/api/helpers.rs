//! `spawn_app()` and the `TestApp` client, one helper per operation.
#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use parley::{
    app::Application,
    crypto::SecretKey,
    settings::{DatabaseUrl, Settings},
};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use uuid::Uuid;

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
        client: reqwest::Client::new(),
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

/// Selection of a bot's fields used by the tests.
pub const BOT_FIELDS: &str = "id name revision account { id } flow { startBlockId blocks { id kind text questionType saveAnswerTo choices { label value next } webhookId async conditions { variable operator value next } next } } flowWarnings { blockId field message } published { version flow { startBlockId } } versions { version publishedAt }";

/// Selection of a webhook's fields used by the tests.
pub const WEBHOOK_FIELDS: &str = "id name url headers { name value } signingSecret createdAt";

/// The seed's lead-generation flow: a greeting, an email question saved to `email`, a phone
/// question saved to `phone_number`, a webhook block, the end.
pub fn seed_flow(webhook_id: &str, is_async: bool) -> Value {
    json!({
        "startBlockId": "hello",
        "blocks": [
            { "id": "hello", "kind": "MESSAGE", "text": "Hi! Let's get in touch.", "next": "ask_email" },
            { "id": "ask_email", "kind": "QUESTION", "text": "What is your email?", "questionType": "EMAIL", "saveAnswerTo": "email", "next": "ask_phone" },
            { "id": "ask_phone", "kind": "QUESTION", "text": "And your phone number?", "questionType": "PHONE", "saveAnswerTo": "phone_number", "next": "hook" },
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook_id, "async": is_async, "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]
    })
}

impl TestApp {
    pub async fn create_bot(&self, token: &str, account_id: &str, name: &str) -> Value {
        self.gql(token, &format!("mutation($a: ID!, $n: String!) {{ createBot(accountId: $a, name: $n) {{ {BOT_FIELDS} }} }}"), json!({ "a": account_id, "n": name }))
            .await
    }

    /// Creates a bot and returns its id.
    pub async fn new_bot(&self, user: &TestUser) -> String {
        let body = self
            .create_bot(&user.token, &user.account_id, "Lead bot")
            .await;
        body["data"]["createBot"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createBot failed: {body}"))
            .to_owned()
    }

    pub async fn rename_bot(&self, token: &str, id: &str, name: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!, $n: String!) { renameBot(id: $id, name: $n) { id name } }",
            json!({ "id": id, "n": name }),
        )
        .await
    }

    pub async fn delete_bot(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!) { deleteBot(id: $id) }",
            json!({ "id": id }),
        )
        .await
    }

    pub async fn bot(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!("query($id: ID!) {{ bot(id: $id) {{ {BOT_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await
    }

    pub async fn save_flow(
        &self,
        token: &str,
        bot_id: &str,
        flow: Value,
        expected_revision: Option<i64>,
    ) -> Value {
        self.gql(
            token,
            &format!("mutation($b: ID!, $f: FlowInput!, $r: Int) {{ saveFlow(botId: $b, flow: $f, expectedRevision: $r) {{ {BOT_FIELDS} }} }}"),
            json!({ "b": bot_id, "f": flow, "r": expected_revision }),
        )
        .await
    }

    pub async fn publish_bot(&self, token: &str, bot_id: &str) -> Value {
        self.gql(
            token,
            "mutation($b: ID!) { publishBot(botId: $b) { version publishedAt flow { startBlockId blocks { id text } } } }",
            json!({ "b": bot_id }),
        )
        .await
    }

    pub async fn create_webhook(&self, token: &str, account_id: &str, input: Value) -> Value {
        self.gql(
            token,
            &format!("mutation($a: ID!, $i: WebhookInput!) {{ createWebhook(accountId: $a, input: $i) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "a": account_id, "i": input }),
        )
        .await
    }

    /// A receiver whose `/hook` answers 200 with `body`, and a webhook of `user` pointing at
    /// it (its id). The receiver lives as long as the value returned.
    pub async fn answering_hook(
        &self,
        user: &TestUser,
        body: Value,
    ) -> (wiremock::MockServer, String) {
        let hook = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path("/hook"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(body))
            .mount(&hook)
            .await;
        let webhook = self
            .new_webhook(user, &format!("{}/hook", hook.uri()))
            .await;
        (hook, webhook)
    }

    /// Creates a webhook pointing at `url` and returns its id.
    pub async fn new_webhook(&self, user: &TestUser, url: &str) -> String {
        let body = self.create_webhook(&user.token, &user.account_id, json!({ "name": "CRM", "url": url, "headers": [{ "name": "X-Api-Key", "value": "k-123" }] })).await;
        body["data"]["createWebhook"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWebhook failed: {body}"))
            .to_owned()
    }

    /// A webhook "Alerts" of `user`'s account that takes the lifecycle events `event_types`,
    /// posting to `receiver`'s `/hook`; its id.
    pub async fn new_alerts_webhook(
        &self,
        user: &TestUser,
        receiver: &wiremock::MockServer,
        event_types: &[&str],
    ) -> String {
        let body = self
            .create_webhook(
                &user.token,
                &user.account_id,
                json!({ "name": "Alerts", "url": format!("{}/hook", receiver.uri()),
                        "eventTypes": event_types }),
            )
            .await;
        assert_ok(&body);
        body["data"]["createWebhook"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWebhook failed: {body}"))
            .to_owned()
    }

    pub async fn update_webhook(&self, token: &str, id: &str, input: Value) -> Value {
        self.gql(
            token,
            &format!("mutation($id: ID!, $i: WebhookInput!) {{ updateWebhook(id: $id, input: $i) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "id": id, "i": input }),
        )
        .await
    }

    pub async fn delete_webhook(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            "mutation($id: ID!) { deleteWebhook(id: $id) }",
            json!({ "id": id }),
        )
        .await
    }

    pub async fn rotate_webhook_secret(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!(
                "mutation($id: ID!) {{ rotateWebhookSecret(id: $id) {{ {WEBHOOK_FIELDS} }} }}"
            ),
            json!({ "id": id }),
        )
        .await
    }

    pub async fn webhook(&self, token: &str, id: &str) -> Value {
        self.gql(
            token,
            &format!("query($id: ID!) {{ webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await
    }

    /// A new bot of `user`'s with `flow` saved and published.
    pub async fn published_bot(&self, user: &TestUser, flow: Value) -> String {
        let bot = self.new_bot(user).await;
        assert_ok(&self.save_flow(&user.token, &bot, flow, None).await);
        assert_ok(&self.publish_bot(&user.token, &bot).await);
        bot
    }

    /// A conversation as its team sees it (`conversation` with events), and its stored
    /// events' `seq`s and texts, in order.
    pub async fn stored_conversation(
        &self,
        user: &TestUser,
        conversation_id: &str,
    ) -> (Value, Vec<i64>, Vec<String>) {
        let seen = self
            .conversation(Some(&user.token), conversation_id, None)
            .await;
        assert_ok(&seen);
        let conv = seen["data"]["conversation"].clone();
        let events = conv["events"].as_array().cloned().unwrap_or_default();
        let seqs = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
        let texts = events
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect();
        (conv, seqs, texts)
    }

    /// A bot with the seed flow saved and published, calling a new webhook at `url`.
    pub async fn published_seed_bot(
        &self,
        user: &TestUser,
        url: &str,
        is_async: bool,
    ) -> (String, String) {
        let webhook = self.new_webhook(user, url).await;
        let bot = self.new_bot(user).await;
        assert_ok(
            &self
                .save_flow(&user.token, &bot, seed_flow(&webhook, is_async), None)
                .await,
        );
        assert_ok(&self.publish_bot(&user.token, &bot).await);
        (bot, webhook)
    }
}

/// The `extensions.problems` of a rejected flow, as (blockId, field) pairs.
pub fn problems(body: &Value) -> Vec<(Option<String>, String)> {
    body["errors"][0]["extensions"]["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {body}"))
        .iter()
        .map(|p| {
            (
                p["blockId"].as_str().map(str::to_owned),
                p["field"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A GraphQL subscription over a real `graphql-transport-ws` WebSocket.
pub struct Sub {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Sub {
    /// The next `next`/`error`/`complete` message, or `None` after 5 s of silence.
    pub async fn message(&mut self) -> Option<Value> {
        self.message_within(Duration::from_secs(5)).await
    }

    /// The next `next`/`error`/`complete` message, or `None` after `silence`.
    pub async fn message_within(&mut self, silence: Duration) -> Option<Value> {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(silence, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).ok()?;
                    match v["type"].as_str() {
                        Some("ping") | Some("pong") | Some("ka") => continue,
                        _ => return Some(v),
                    }
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The data of the next event, failing on an error or silence.
    pub async fn event(&mut self, field: &str) -> Value {
        let msg = self
            .message()
            .await
            .unwrap_or_else(|| panic!("no {field} event within 5 s"));
        assert_eq!(msg["type"], "next", "unexpected message: {msg}");
        assert!(msg["payload"].get("errors").is_none(), "error event: {msg}");
        msg["payload"]["data"][field].clone()
    }

    /// `n` events of `conversationEvents`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.event("conversationEvents").await);
        }
        out
    }

    /// Asserts that nothing arrives for a short while.
    pub async fn assert_quiet(&mut self) {
        use futures_util::StreamExt as _;
        let got = tokio::time::timeout(Duration::from_millis(300), self.ws.next()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    /// The `extensions.code` of the error the subscription ended with.
    pub async fn error_code(&mut self) -> String {
        let msg = self.message().await.expect("an error message");
        let errors = if msg["type"] == "error" {
            msg["payload"].clone()
        } else {
            msg["payload"]["errors"].clone()
        };
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {msg}"))
            .to_owned()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

impl TestApp {
    /// Opens a subscription, authenticated as `token` if given.
    pub async fn subscribe(&self, token: Option<&str>, query: &str, variables: Value) -> Sub {
        self.subscribe_from(None, token, query, variables).await
    }

    /// Opens a subscription from a browser page on `origin` (its `Origin` header), if given.
    pub async fn subscribe_from(
        &self,
        origin: Option<&str>,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Sub {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::{
            Message, client::IntoClientRequest as _, http::HeaderValue,
        };
        let mut req = format!("ws://127.0.0.1:{}/graphql", self.port)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        if let Some(origin) = origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(origin).expect("origin"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        let mut sub = Sub { ws };
        let payload = match token {
            Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        sub.ws
            .send(Message::text(
                json!({ "type": "connection_init", "payload": payload }).to_string(),
            ))
            .await
            .expect("init");
        let ack = sub.message().await.expect("ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        sub.ws
            .send(Message::text(json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }).to_string()))
            .await
            .expect("subscribe");
        sub
    }

    /// `conversationEvents` as a visitor (with its token) or a member (with `member_token`).
    pub async fn watch(
        &self,
        conversation_id: &str,
        visitor_token: Option<&str>,
        member_token: Option<&str>,
        after_seq: i64,
    ) -> Sub {
        self.subscribe(
            member_token,
            "subscription($c: ID!, $t: String, $a: Int) { conversationEvents(conversationId: $c, visitorToken: $t, afterSeq: $a) { seq conversationId kind text input { type choices { label value } } at } }",
            json!({ "c": conversation_id, "t": visitor_token, "a": after_seq }),
        )
        .await
    }

    pub async fn start_conversation(&self, bot_id: &str, variables: Value) -> Value {
        self.gql_anon(
            "mutation($b: ID!, $v: JSON) { startConversation(botId: $b, variables: $v) { conversationId visitorToken } }",
            json!({ "b": bot_id, "v": variables }),
        )
        .await
    }

    /// Starts a conversation and returns (id, visitor token).
    pub async fn new_conversation(&self, bot_id: &str) -> (String, String) {
        let body = self.start_conversation(bot_id, Value::Null).await;
        let s = &body["data"]["startConversation"];
        assert!(s.is_object(), "startConversation failed: {body}");
        (
            s["conversationId"].as_str().expect("id").to_owned(),
            s["visitorToken"].as_str().expect("token").to_owned(),
        )
    }

    pub async fn send_answer(
        &self,
        conversation_id: &str,
        visitor_token: &str,
        text: &str,
    ) -> Value {
        self.gql_anon(
            "mutation($c: ID!, $t: String!, $x: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: $x) { seq kind text } }",
            json!({ "c": conversation_id, "t": visitor_token, "x": text }),
        )
        .await
    }

    pub async fn conversation(
        &self,
        token: Option<&str>,
        id: &str,
        visitor_token: Option<&str>,
    ) -> Value {
        self.gql_with(
            token,
            "query($id: ID!, $t: String) { conversation(id: $id, visitorToken: $t) { id version status startedAt endedAt answers variables bot { id } events { seq kind text } } }",
            json!({ "id": id, "t": visitor_token }),
        )
        .await
    }

    /// The deliveries of a webhook, newest first.
    pub async fn deliveries(&self, token: &str, webhook_id: &str) -> Vec<Value> {
        let body = self
            .gql(
                token,
                "query($id: ID!) { webhook(id: $id) { deliveries(first: 100) { edges { node { id mode status conversationId payload nextAttemptAt attemptCount messageId attempts { n at responseStatus durationMs error responseBody notes } } } } } }",
                json!({ "id": webhook_id }),
            )
            .await;
        body["data"]["webhook"]["deliveries"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("no deliveries in {body}"))
            .iter()
            .map(|e| e["node"].clone())
            .collect()
    }

    /// Waits until `check` holds for the webhook's deliveries (up to 15 s).
    pub async fn wait_deliveries(
        &self,
        token: &str,
        webhook_id: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.deliveries(token, webhook_id).await;
            if check(&list) {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries never reached the expected state: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The webhook's current signing secret.
    pub async fn signing_secret(&self, token: &str, webhook_id: &str) -> String {
        self.webhook(token, webhook_id).await["data"]["webhook"]["signingSecret"]
            .as_str()
            .expect("secret")
            .to_owned()
    }
}

/// Starts chats with `bot` until `watch` sees the first one's question. A subscription goes
/// live a moment after `subscribe` returns (its access is checked first), and an account event
/// published before that is not replayed, so one chat alone could go unseen.
pub async fn first_question(app: &TestApp, bot: &str, watch: &mut Sub) -> Value {
    for _ in 0..10 {
        app.new_conversation(bot).await;
        if let Some(msg) = watch.message_within(Duration::from_millis(500)).await {
            assert_eq!(msg["type"], "next", "unexpected message: {msg}");
            let event = msg["payload"]["data"]["accountEvents"].clone();
            assert_eq!(event["kind"], "QUESTION", "{msg}");
            return event;
        }
    }
    panic!("no accountEvents event after ten chats");
}

/// Two questions asked in turn, again and again: `name`, then `city` (greeting the name).
pub fn two_questions() -> Value {
    json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "Hi {{name}}, city?", "saveAnswerTo": "city", "next": "q1" } ] })
}

/// The kinds of a list of events.
pub fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect()
}

/// Verifies a received webhook request with an independent HMAC, and returns how many
/// signatures in its `webhook-signature` header match `secret`.
pub fn matching_signatures(req: &wiremock::Request, secret: &str) -> usize {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = b64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&req.body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .filter(|s| *s == expected)
        .count()
}

/// A published bot that queues one async delivery to `url` per conversation.
pub async fn async_bot(app: &TestApp, owner: &TestUser, url: &str) -> (String, String) {
    let webhook = app.new_webhook(owner, url).await;
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Hi!", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": true, "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    (bot, webhook)
}

/// A webhook receiver that answers every POST to `/hook` with `status`.
pub async fn hook_receiver(status: u16) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/hook"))
        .respond_with(wiremock::ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

/// Waits (up to 10 s) until `server` has received at least `n` requests; all it received.
pub async fn received(server: &wiremock::MockServer, n: usize) -> Vec<wiremock::Request> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = server.received_requests().await.unwrap_or_default();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver got {} of {n} requests",
            got.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
