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

/// Waits until the receiver got at least `n` requests (5 s at most).
async fn until_received(server: &MockServer, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.received_requests().await.unwrap_or_default().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver never got {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

#[tokio::test]
async fn a_webhook_deleted_while_a_start_waits_for_the_writer_counts_as_a_failed_call() {
    let app = spawn_app().await;
    if app.db.is_postgres() {
        // The webhooks are read ahead of the step on SQLite only.
        return;
    }
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::ZERO, json!({})).await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;

    // Hold SQLite's one writer lock, so that the start reads the account's webhooks (the
    // webhook still there) and then waits to write; meanwhile the webhook goes.
    let conn = Database::connect(app.db.url()).await.expect("connect");
    conn.execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("take the writer lock");
    let start = app.start_conversation(&bot, Value::Null);
    let meanwhile = async {
        // Long enough for the start to have read the webhooks, even on a busy machine.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        conn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            "DELETE FROM webhooks WHERE id = ?",
            vec![uuid(&webhook)],
        ))
        .await
        .expect("delete the webhook");
        conn.execute_unprepared("COMMIT").await.expect("commit");
    };
    let (started, ()) = tokio::join!(start, meanwhile);
    assert_ok(&started);
    let conv = started["data"]["startConversation"]["conversationId"]
        .as_str()
        .expect("conversation id");
    let seen = app.conversation(Some(&owner.token), conv, None).await;
    assert_ok(&seen);
    assert_eq!(
        seen["data"]["conversation"]["status"], "COMPLETED",
        "{seen}"
    );
    assert!(
        hook.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn redeliver_of_a_delivery_in_flight_is_a_conflict_and_sends_nothing_more() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::from_millis(1500), json!({})).await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    until_received(&hook, 1).await;
    let id = app.deliveries(&owner.token, &webhook).await[0]["id"].clone();

    let again = app
        .gql(
            &owner.token,
            "mutation($id: ID!) { redeliver(deliveryId: $id) { status attempts { responseStatus } } }",
            json!({ "id": id }),
        )
        .await;
    assert_error(&again, "CONFLICT");
    let message = again["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("being sent right now"), "{message}");

    let list = app
        .wait_deliveries(&owner.token, &webhook, |l| {
            l.iter().all(|d| d["status"] == "SUCCEEDED")
        })
        .await;
    assert_eq!(list[0]["attempts"].as_array().map(Vec::len), Some(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received_requests().await.unwrap_or_default().len(), 1);
}

#[tokio::test]
async fn the_sweeper_never_resumes_a_conversation_whose_sync_call_is_still_running() {
    // Instance A waits up to 8 s for a reply; instance B (configured with 1 s, so its sweeper
    // deems a call of 2 s stale) sweeps the same database.
    let app = spawn_app_with(|s| s.delivery.sync_timeout = Duration::from_secs(8)).await;
    let mut quick = app.settings.clone();
    quick.delivery.sync_timeout = Duration::from_secs(1);
    let other = start_on(
        TestDb::Shared {
            url: app.db.url().to_owned(),
            postgres: app.db.is_postgres(),
        },
        quick,
    )
    .await;
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::from_secs(4), json!({ "x": "1" })).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "call", "blocks": [
        { "id": "call", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "after" },
        { "id": "after", "kind": "MESSAGE", "text": "after: {{x}}", "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let started = app.start_conversation(&bot, Value::Null).await;
    assert_ok(&started);
    let s = &started["data"]["startConversation"];
    let conv = s["conversationId"].as_str().expect("id");
    let seen = app.conversation(Some(&owner.token), conv, None).await;
    let texts: Vec<&str> = seen["data"]["conversation"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["after: 1"], "{seen}");
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "SUCCEEDED", "{list:#?}");
    drop(other);
}

#[tokio::test]
async fn a_conversation_whose_first_step_fails_is_not_left_behind() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Hi!", "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    // The first step cannot run: the published flow no longer reads back.
    sql(
        &app,
        "UPDATE bot_versions SET flow = $1",
        vec![json!({ "blocks": 5 }).into()],
    )
    .await;

    assert_error(
        &app.start_conversation(&bot, Value::Null).await,
        "INTERNAL_SERVER_ERROR",
    );
    let listed = app
        .gql(
            &owner.token,
            "query($id: ID!) { bot(id: $id) { conversations(first: 10) { edges { node { id events { seq } } } } } }",
            json!({ "id": bot }),
        )
        .await;
    assert_ok(&listed);
    assert_eq!(
        listed["data"]["bot"]["conversations"]["edges"],
        json!([]),
        "a conversation without events was left behind"
    );
}

#[tokio::test]
async fn deliveries_in_flight_at_a_crash_are_sent_again_within_seconds_of_the_restart() {
    // The default lease; a stable instance id, as in production, so that the restarted
    // instance knows the claims of its previous run as its own.
    let app = spawn_app_with(|s| {
        s.delivery.lease = Duration::from_secs(60);
        s.instance_id = Some(format!("crash-test-{}", Uuid::new_v4().simple()));
    })
    .await;
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::from_millis(500), json!({})).await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    for _ in 0..30 {
        app.new_conversation(&bot).await;
    }
    until_received(&hook, 1).await;
    let settings = app.settings.clone();
    let db = app.crash();
    let app = start_on(db, settings).await;
    let restarted = tokio::time::Instant::now();

    loop {
        let list = app.deliveries(&owner.token, &webhook).await;
        if list.len() == 30 && list.iter().all(|d| d["status"] == "SUCCEEDED") {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "not every delivery arrived within 10 s of the restart: {:?}",
            list.iter().map(|d| &d["status"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Moves `conv` on behind the app's back, as another instance would: `state` (JSON, or
/// unchanged if `None`), `last_seq` one further with an event of `kind`, `text` and `block`
/// at that `seq`, and a new `updated_at`.
async fn moved_on_elsewhere(
    app: &TestApp,
    conv: &str,
    state: Option<&str>,
    event: (&str, &str, &str),
) {
    let state = state.map_or("state".to_owned(), |s| format!("'{s}'"));
    sql(
        app,
        &format!(
            "UPDATE conversations SET state = {state}, resume_at = NULL, last_seq = last_seq + 1, \
             updated_at = '2030-01-02T03:04:05+00:00' WHERE id = $1"
        ),
        vec![uuid(conv)],
    )
    .await;
    let (kind, text, block) = event;
    sql(
        app,
        &format!(
            "INSERT INTO conversation_events (conversation_id, seq, account_id, kind, text, at, block_id) \
             SELECT id, last_seq, account_id, '{kind}', '{text}', updated_at, '{block}' FROM conversations WHERE id = $1"
        ),
        vec![uuid(conv)],
    )
    .await;
}

#[tokio::test]
async fn a_conversation_changed_behind_this_instances_back_goes_on_from_the_stored_row() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.published_bot(&owner, two_questions()).await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    // Another writer (an instance that took the next turn, say) appends an event and moves
    // the conversation on, after this instance's last step of it.
    moved_on_elsewhere(&app, &conv, None, ("BOT_MESSAGE", "from elsewhere", "q2")).await;

    assert_ok(&app.send_answer(&conv, &token, "Paris").await);
    let (seen, seqs, texts) = app.stored_conversation(&owner, &conv).await;
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "{texts:?}");
    assert_eq!(
        texts,
        [
            "Name?",
            "Jo",
            "Hi Jo, city?",
            "from elsewhere",
            "Paris",
            "Name?"
        ]
    );
    assert_eq!(seen["answers"]["city"], "Paris");
}

#[tokio::test]
async fn an_answer_refused_by_what_this_instance_knew_is_taken_when_the_conversation_moved_on_elsewhere()
 {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let flow = json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "w" },
        { "id": "w", "kind": "WAIT", "seconds": 60, "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "City?", "saveAnswerTo": "city" } ] });
    let bot = app.published_bot(&owner, flow).await;
    let (conv, token) = app.new_conversation(&bot).await;
    // This instance's last step leaves the conversation pausing: it would refuse an answer.
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    // Another instance ends the pause and asks the next question.
    let asking = r#"{"position":{"type":"awaitingAnswer","blockId":"q2"},"answers":{"name":"Jo"},"variables":{"name":"Jo"}}"#;
    moved_on_elsewhere(&app, &conv, Some(asking), ("QUESTION", "City?", "q2")).await;

    assert_ok(&app.send_answer(&conv, &token, "Paris").await);
    let (seen, _, texts) = app.stored_conversation(&owner, &conv).await;
    assert_eq!(
        seen["answers"],
        json!({ "name": "Jo", "city": "Paris" }),
        "{texts:?}"
    );
    assert_eq!(seen["status"], "COMPLETED");
}

/// The bodies of the requests `hook` got about `conversation`: flow webhooks' bodies name it
/// at `conversation.id`, lifecycle events' at `data.conversation.id`.
async fn bodies_about(hook: &MockServer, conversation: &str) -> Vec<Value> {
    let mut bodies = Vec::new();
    for req in hook.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&req.body).expect("a JSON body");
        let about = body["conversation"]["id"]
            .as_str()
            .or_else(|| body["data"]["conversation"]["id"].as_str());
        if about == Some(conversation) {
            bodies.push(body);
        }
    }
    bodies
}

/// The `type` of each request `hook` got about `conversation` (none for a flow webhook),
/// sorted.
async fn sent_about(hook: &MockServer, conversation: &str) -> Vec<Option<String>> {
    let mut types: Vec<Option<String>> = bodies_about(hook, conversation)
        .await
        .iter()
        .map(|body| body["type"].as_str().map(str::to_owned))
        .collect();
    types.sort();
    types
}

/// A bot calling an async webhook, whose first conversation was started and delivered: this
/// instance now keeps the account's webhooks (the flow's, none taking a lifecycle event).
async fn bot_with_kept_webhooks(app: &TestApp) -> (TestUser, MockServer, String, String) {
    let owner = app.new_user().await;
    let hook = slow_receiver(Duration::ZERO, json!({})).await;
    let (bot, webhook) = async_bot(app, &owner, &format!("{}/hook", hook.uri())).await;
    let (first, _) = app.new_conversation(&bot).await;
    until_received(&hook, 1).await;
    assert_eq!(sent_about(&hook, &first).await, [None]);
    (owner, hook, bot, webhook)
}

#[tokio::test]
async fn a_lifecycle_subscription_made_behind_this_instances_back_still_gets_a_start_that_queues_a_webhook()
 {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // SQLite serves one instance, whose API sees every change (a change by hand in the
        // database is seen when the kept webhooks expire).
        return;
    }
    let (_, hook, bot, webhook) = bot_with_kept_webhooks(&app).await;

    // As another instance may do: the webhook now takes `conversation.started` too.
    sql(
        &app,
        "UPDATE webhooks SET event_types = '[\"conversation.started\"]' WHERE id = $1",
        vec![uuid(&webhook)],
    )
    .await;
    let (second, _) = app.new_conversation(&bot).await;
    until_received(&hook, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sent_about(&hook, &second).await,
        [None, Some("conversation.started".to_owned())]
    );
}

#[tokio::test]
async fn a_webhook_deleted_behind_this_instances_back_after_its_starts_kept_it_counts_as_a_failed_call()
 {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // SQLite: see `a_webhook_deleted_while_a_start_waits_for_the_writer_counts_as_a_failed_call`.
        return;
    }
    let (owner, hook, bot, webhook) = bot_with_kept_webhooks(&app).await;

    sql(
        &app,
        "DELETE FROM webhooks WHERE id = $1",
        vec![uuid(&webhook)],
    )
    .await;
    let started = app.start_conversation(&bot, Value::Null).await;
    assert_ok(&started);
    let second = started["data"]["startConversation"]["conversationId"]
        .as_str()
        .expect("conversation id");
    let seen = app.conversation(Some(&owner.token), second, None).await;
    assert_ok(&seen);
    assert_eq!(
        seen["data"]["conversation"]["status"], "COMPLETED",
        "{seen}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sent_about(&hook, second).await.is_empty());
}

#[tokio::test]
async fn a_bot_renamed_behind_this_instances_back_is_named_in_the_next_starts_webhook_payload() {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // SQLite serves one instance, whose API forgets a bot it renames.
        return;
    }
    // The first start remembers the bot, with its name, for the next starts.
    let (_, hook, bot, _) = bot_with_kept_webhooks(&app).await;
    // As another instance may do.
    sql(
        &app,
        "UPDATE bots SET name = 'Renamed elsewhere' WHERE id = $1",
        vec![uuid(&bot)],
    )
    .await;
    let (second, _) = app.new_conversation(&bot).await;
    until_received(&hook, 2).await;
    let names: Vec<Value> = bodies_about(&hook, &second)
        .await
        .iter()
        .map(|body| body["conversation"]["bot_name"].clone())
        .collect();
    assert_eq!(names, [json!("Renamed elsewhere")]);
}
