//! Races between requests, workers and instances: each test forces the interleaving that used
//! to go wrong and checks that it no longer does.
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseBackend, Statement, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

/// A receiver at `/hook` answering 200 with `body` after `delay`.
async fn slow_receiver(delay: Duration, body: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(delay),
        )
        .mount(&server)
        .await;
    server
}

/// Runs one statement on the app's database behind its back, with `$1`-style placeholders
/// (rewritten to `?` on SQLite).
async fn sql(app: &TestApp, statement: &str, values: Vec<sea_orm::Value>) {
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

fn uuid(id: &str) -> sea_orm::Value {
    Uuid::parse_str(id).expect("uuid").into()
}

#[tokio::test]
async fn publish_and_delete_of_its_webhook_never_both_commit() {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // On SQLite every write transaction runs on the one writer connection: no race.
        return;
    }
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::ZERO, json!({})).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let with_hook = json!({ "startBlockId": "hook", "blocks": [
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": true, "next": "end" },
        { "id": "end", "kind": "END" } ] });
    let without = json!({ "startBlockId": "end", "blocks": [ { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, with_hook, None).await);

    // Hold inserts into bot_versions, so that the publish reads the draft (naming the
    // webhook) and then waits; meanwhile the draft stops naming it and the webhook is deleted.
    let conn = Database::connect(app.db.url()).await.expect("connect");
    let gate = conn.begin().await.expect("begin");
    gate.execute_unprepared("LOCK TABLE bot_versions IN SHARE ROW EXCLUSIVE MODE")
        .await
        .expect("lock");
    let saved = tokio::sync::Notify::new();
    let publish = app.publish_bot(&owner.token, &bot);
    let delete = async {
        saved.notified().await;
        app.delete_webhook(&owner.token, &webhook).await
    };
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_ok(&app.save_flow(&owner.token, &bot, without, None).await);
        saved.notify_one();
        tokio::time::sleep(Duration::from_millis(700)).await;
        gate.commit().await.expect("release");
    };
    let (published, deleted, ()) = tokio::join!(publish, delete, meanwhile);
    let both =
        published["data"]["publishBot"].is_object() && deleted["data"]["deleteWebhook"] == true;
    assert!(
        !both,
        "both committed: a published flow names a deleted webhook\npublish: {published}\ndelete: {deleted}"
    );
    if published["data"]["publishBot"].is_object() {
        assert_error(&deleted, "CONFLICT");
        assert_ok(&app.webhook(&owner.token, &webhook).await);
    }
}

#[tokio::test]
async fn a_published_flow_naming_a_deleted_webhook_counts_its_calls_as_failed() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::ZERO, json!({ "x": "1" })).await;
    let url = format!("{}/hook", hook.uri());
    let queued = app.new_webhook(&owner, &url).await;
    let called = app.new_webhook(&owner, &url).await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Hi!", "next": "queue" },
        { "id": "queue", "kind": "WEBHOOK", "webhookId": queued, "async": true, "next": "call" },
        { "id": "call", "kind": "WEBHOOK", "webhookId": called, "async": false, "next": "after" },
        { "id": "after", "kind": "MESSAGE", "text": "after: {{x}}", "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    // However it came about, the published flow now names webhooks that are gone.
    for id in [&queued, &called] {
        sql(&app, "DELETE FROM webhooks WHERE id = $1", vec![uuid(id)]).await;
    }

    let (conv, _) = app.new_conversation(&bot).await;
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_ok(&seen);
    let c = &seen["data"]["conversation"];
    assert_eq!(c["status"], "COMPLETED", "{seen}");
    let texts: Vec<&str> = c["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["Hi!", "after: "], "{seen}");
    assert!(
        hook.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}
