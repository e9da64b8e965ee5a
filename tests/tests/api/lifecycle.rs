//! Lifecycle events: each type delivered once to the webhooks that asked for it, signed like
//! any delivery (checked with the `standardwebhooks` crate).
use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

#[tokio::test]
async fn each_lifecycle_event_is_delivered_once_and_signed() {
    let app = spawn_app_with(|s| s.abandon_after = Duration::from_secs(1)).await;
    let owner = app.new_user().await;
    let events = hook_receiver(200).await;
    let failing = hook_receiver(500).await;
    let alerts = app
        .new_alerts_webhook(
            &owner,
            &events,
            &[
                "CONVERSATION_STARTED",
                "CONVERSATION_COMPLETED",
                "CONVERSATION_ABANDONED",
                "DELIVERY_FAILED",
            ],
        )
        .await;
    let seen = app
        .gql(
            &owner.token,
            "query($id: ID!) { webhook(id: $id) { eventTypes } }",
            json!({ "id": alerts }),
        )
        .await;
    assert_eq!(
        seen["data"]["webhook"]["eventTypes"],
        json!([
            "CONVERSATION_ABANDONED",
            "CONVERSATION_COMPLETED",
            "CONVERSATION_STARTED",
            "DELIVERY_FAILED"
        ]),
        "{seen}"
    );
    // A flow webhook that always fails: after its retries, DELIVERY_FAILED.
    let broken = app
        .new_webhook(&owner, &format!("{}/hook", failing.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": broken, "async": true, "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let (completed, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&completed, &token, "Jo").await);
    let (abandoned, _) = app.new_conversation(&bot).await;

    // started ×2, completed, abandoned, delivery.failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = events.received_requests().await.unwrap_or_default();
        if got.len() >= 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of 5 events",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more comes (no duplicates, no DELIVERY_FAILED about DELIVERY_FAILED).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = events.received_requests().await.unwrap_or_default();
    let secret = app.signing_secret(&owner.token, &alerts).await;
    let verifier = standardwebhooks::Webhook::new(&secret).expect("secret");
    let mut by_type: HashMap<String, Vec<Value>> = HashMap::new();
    for req in &got {
        verifier
            .verify(&req.body, &req.headers)
            .expect("the reference library accepts the signature");
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        assert!(
            body["timestamp"]
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            "{body}"
        );
        by_type
            .entry(body["type"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(body["data"].clone());
    }
    let count = |t: &str| by_type.get(t).map_or(0, Vec::len);
    assert_eq!(count("conversation.started"), 2, "{by_type:?}");
    assert_eq!(count("conversation.completed"), 1, "{by_type:?}");
    assert_eq!(count("conversation.abandoned"), 1, "{by_type:?}");
    assert_eq!(count("delivery.failed"), 1, "{by_type:?}");
    assert_eq!(got.len(), 5);

    let done = &by_type["conversation.completed"][0];
    assert_eq!(done["conversation"]["id"], json!(completed));
    assert_eq!(done["conversation"]["bot_id"], json!(bot));
    assert_eq!(done["name"], "Jo");
    assert_eq!(done["conversation"]["answers"]["name"], "Jo");
    let idle = &by_type["conversation.abandoned"][0];
    assert_eq!(idle["conversation"]["id"], json!(abandoned));
    let failed = &by_type["delivery.failed"][0];
    assert_eq!(failed["webhook_id"], json!(broken));
    assert_eq!(failed["conversation_id"], json!(completed));
    assert_eq!(failed["last_status"], 500);

    // The failing endpoint asked for nothing: it got only its flow calls.
    for req in failing.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        assert!(body.get("type").is_none(), "{body}");
    }
}

/// The JSON bodies of the first `n` requests to `server`, once they arrived.
async fn bodies(server: &MockServer, n: usize) -> Vec<Value> {
    received(server, n)
        .await
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
        .collect()
}

#[tokio::test]
async fn a_conversations_first_step_sends_its_bots_current_name_and_its_first_messages() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let events = hook_receiver(200).await;
    app.new_alerts_webhook(&owner, &events, &["CONVERSATION_STARTED"])
        .await;
    let flow_hook = hook_receiver(204).await;
    let hook = app
        .new_webhook(&owner, &format!("{}/hook", flow_hook.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Welcome!", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": hook, "async": true, "next": "ask" },
        { "id": "ask", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    assert_ok(&app.rename_bot(&owner.token, &bot, "Front desk").await);

    let (conv, _) = app.new_conversation(&bot).await;

    let called = bodies(&flow_hook, 1).await.remove(0);
    let started = bodies(&events, 1).await.remove(0);
    assert_eq!(started["type"], "conversation.started", "{started}");
    for c in [&called["conversation"], &started["data"]["conversation"]] {
        assert_eq!(c["id"], json!(conv), "{c}");
        assert_eq!(c["bot_name"], "Front desk", "{c}");
        assert_eq!(c["messages_truncated"], false, "{c}");
    }
    // The call is made where the flow has said its welcome only; the event is written once
    // the step has asked its question.
    let texts = |c: &Value| -> Vec<Value> {
        c["messages"]
            .as_array()
            .map(|m| m.iter().map(|m| m["text"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(texts(&called["conversation"]), [json!("Welcome!")]);
    assert_eq!(
        texts(&started["data"]["conversation"]),
        [json!("Welcome!"), json!("Name?")]
    );
}

#[tokio::test]
async fn a_start_after_a_webhook_or_its_bot_changed_goes_by_the_change() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let flow_hook = hook_receiver(204).await;
    let hook = app
        .new_webhook(&owner, &format!("{}/hook", flow_hook.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = |welcome: &str| {
        json!({ "startBlockId": "hi", "blocks": [
            { "id": "hi", "kind": "MESSAGE", "text": welcome, "next": "hook" },
            { "id": "hook", "kind": "WEBHOOK", "webhookId": hook, "async": true, "next": "ask" },
            { "id": "ask", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]})
    };
    assert_ok(
        &app.save_flow(&owner.token, &bot, flow("Welcome!"), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    // Two starts, so that whatever a server keeps of the bot and the account's webhooks for
    // its starts is kept by now.
    let (first, _) = app.new_conversation(&bot).await;
    let (second, _) = app.new_conversation(&bot).await;

    // Then a webhook that takes `conversation.started`, a new name, a new version.
    let events = hook_receiver(200).await;
    app.new_alerts_webhook(&owner, &events, &["CONVERSATION_STARTED"])
        .await;
    assert_ok(&app.rename_bot(&owner.token, &bot, "Front desk").await);
    let (third, _) = app.new_conversation(&bot).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, flow("Welcome back!"), None)
            .await,
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (fourth, _) = app.new_conversation(&bot).await;

    let started = bodies(&events, 2).await;
    let ids: Vec<&Value> = started
        .iter()
        .map(|b| &b["data"]["conversation"]["id"])
        .collect();
    assert_eq!(ids.len(), 2, "{started:?}");
    assert!(
        ids.contains(&&json!(third)) && ids.contains(&&json!(fourth)),
        "{ids:?}"
    );
    let calls: HashMap<String, Value> = bodies(&flow_hook, 4)
        .await
        .into_iter()
        .map(|b| {
            let id = b["conversation"]["id"].as_str().expect("id").to_owned();
            (id, b["conversation"].clone())
        })
        .collect();
    let welcome = |id: &str| calls[id]["messages"][0]["text"].clone();
    assert_eq!(welcome(&first), "Welcome!");
    assert_eq!(welcome(&third), "Welcome!");
    assert_eq!(welcome(&fourth), "Welcome back!");
    assert_ne!(calls[&second]["bot_name"], "Front desk");
    for id in [&third, &fourth] {
        assert_eq!(calls[id]["bot_name"], "Front desk", "{}", calls[id]);
    }
}

const RECOVER: &str =
    "mutation($w: ID!, $s: DateTime!) { recoverDeliveries(webhookId: $w, since: $s) }";

#[tokio::test]
async fn recover_deliveries_sends_the_failed_ones_again_once() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let stranger = app.new_user().await;
    let hook = hook_receiver(500).await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, &format!("{}/hook", hook.uri()), true)
        .await;
    let before = chrono::Utc::now().to_rfc3339();
    for email in ["a@example.com", "b@example.com"] {
        let (id, token) = app.new_conversation(&bot).await;
        assert_ok(&app.send_answer(&id, &token, email).await);
        assert_ok(&app.send_answer(&id, &token, "+33 6 12 34 56 78").await);
    }
    let failed = |list: &[Value]| list.len() == 2 && list.iter().all(|d| d["status"] == "FAILED");
    app.wait_deliveries(&owner.token, &webhook, failed).await;

    // The receiver is back.
    receiver_is_back(&hook).await;

    assert_error(
        &app.gql(&member.token, RECOVER, json!({ "w": webhook, "s": before }))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(
            &stranger.token,
            RECOVER,
            json!({ "w": webhook, "s": before }),
        )
        .await,
        "NOT_FOUND",
    );
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = app
        .gql(&owner.token, RECOVER, json!({ "w": webhook, "s": later }))
        .await;
    assert_eq!(body["data"]["recoverDeliveries"], 0, "{body}");

    let body = app
        .gql(&owner.token, RECOVER, json!({ "w": webhook, "s": before }))
        .await;
    assert_eq!(body["data"]["recoverDeliveries"], 2, "{body}");
    // Pending (or sent) already: not doubled.
    let body = app
        .gql(&owner.token, RECOVER, json!({ "w": webhook, "s": before }))
        .await;
    assert_eq!(body["data"]["recoverDeliveries"], 0, "{body}");
    let succeeded =
        |list: &[Value]| list.len() == 2 && list.iter().all(|d| d["status"] == "SUCCEEDED");
    app.wait_deliveries(&owner.token, &webhook, succeeded).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received_requests().await.unwrap_or_default().len(), 2);
}

const WEBHOOK_STATE: &str = "query($id: ID!) { webhook(id: $id) { disabledAt disabledReason } }";

/// A conversation through the seed bot's two questions (its webhook called after them); its id.
async fn seed_conversation(app: &TestApp, bot: &str) -> String {
    let (id, token) = app.new_conversation(bot).await;
    assert_ok(&app.send_answer(&id, &token, "jo@example.com").await);
    assert_ok(&app.send_answer(&id, &token, "+33 6 12 34 56 78").await);
    id
}

/// The receiver, which failed so far, answers 200 from now on.
async fn receiver_is_back(hook: &MockServer) {
    hook.reset().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(hook)
        .await;
}

/// A webhook's failing streak as the database keeps it: whether it is failing, and how many
/// attempts failed in a row.
async fn failing_streak(app: &TestApp, webhook: &str) -> (bool, i32) {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    let conn = Database::connect(app.db.url()).await.expect("connect");
    let backend = conn.get_database_backend();
    let placeholder = if app.db.is_postgres() { "$1" } else { "?" };
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT failing_since IS NOT NULL AS failing, failed_attempts \
                 FROM webhooks WHERE id = {placeholder}"
            ),
            [uuid::Uuid::parse_str(webhook).expect("uuid").into()],
        ))
        .await
        .expect("the query runs")
        .expect("the webhook's row");
    let streak = (
        row.try_get::<bool>("", "failing").expect("failing"),
        row.try_get::<i32>("", "failed_attempts")
            .expect("failed_attempts"),
    );
    conn.close().await.ok();
    streak
}

#[tokio::test]
async fn a_delivery_that_succeeds_ends_its_webhooks_failing_streak() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = hook_receiver(500).await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, &format!("{}/hook", hook.uri()), true)
        .await;
    let converse = || seed_conversation(&app, &bot);
    converse().await;
    app.wait_deliveries(&owner.token, &webhook, |list| {
        list.len() == 1 && list[0]["status"] == "FAILED"
    })
    .await;
    let (failing, failed) = failing_streak(&app, &webhook).await;
    assert!(failing && failed > 0, "failing {failing}, {failed} failed");

    // The receiver is back: the next delivery succeeds, and the streak is over.
    receiver_is_back(&hook).await;
    converse().await;
    app.wait_deliveries(&owner.token, &webhook, |list| {
        list.len() == 2 && list.iter().any(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    assert_eq!(failing_streak(&app, &webhook).await, (false, 0));
}

#[tokio::test]
async fn a_failing_webhook_is_disabled_holds_its_deliveries_and_resumes_when_enabled() {
    let app = spawn_app_with(|s| s.delivery.disable_after = Duration::from_millis(200)).await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let alerts_receiver = hook_receiver(200).await;
    let alerts = app
        .new_alerts_webhook(&owner, &alerts_receiver, &["WEBHOOK_DISABLED"])
        .await;
    let hook = hook_receiver(500).await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, &format!("{}/hook", hook.uri()), true)
        .await;
    let converse = || seed_conversation(&app, &bot);
    converse().await;

    // Every attempt fails for longer than PARLEY_WEBHOOK_DISABLE_AFTER: disabled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        let body = app
            .gql(&owner.token, WEBHOOK_STATE, json!({ "id": webhook }))
            .await;
        assert_ok(&body);
        if body["data"]["webhook"]["disabledAt"].is_string() {
            break body["data"]["webhook"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never disabled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        state["disabledReason"]
            .as_str()
            .is_some_and(|r| r.contains("PARLEY_WEBHOOK_DISABLE_AFTER")),
        "{state}"
    );
    // WEBHOOK_DISABLED reaches the account's other webhook that asked for it, signed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let req = loop {
        if let Some(req) = alerts_receiver
            .received_requests()
            .await
            .unwrap_or_default()
            .pop()
        {
            break req;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no webhook.disabled event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secret = app.signing_secret(&owner.token, &alerts).await;
    standardwebhooks::Webhook::new(&secret)
        .expect("secret")
        .verify(&req.body, &req.headers)
        .expect("signed");
    let event: Value = serde_json::from_slice(&req.body).expect("JSON");
    assert_eq!(event["type"], "webhook.disabled");
    assert_eq!(event["data"]["webhook_id"], json!(webhook));

    // New deliveries are held, not attempted.
    let held = converse().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = app.deliveries(&owner.token, &webhook).await;
    let pending = list
        .iter()
        .find(|d| d["conversationId"] == json!(held))
        .expect("the held delivery");
    assert_eq!(pending["status"], "PENDING", "{pending}");
    assert_eq!(pending["attempts"], json!([]), "{pending}");

    // Enabled again (ADMIN), with the receiver back: the held delivery is sent.
    receiver_is_back(&hook).await;
    let enable = "mutation($id: ID!) { enableWebhook(id: $id) { disabledAt disabledReason } }";
    assert_error(
        &app.gql(&member.token, enable, json!({ "id": webhook }))
            .await,
        "FORBIDDEN",
    );
    let body = app
        .gql(&owner.token, enable, json!({ "id": webhook }))
        .await;
    assert_ok(&body);
    assert!(
        body["data"]["enableWebhook"]["disabledAt"].is_null(),
        "{body}"
    );
    app.wait_deliveries(&owner.token, &webhook, |list| {
        list.iter()
            .any(|d| d["conversationId"] == json!(held) && d["status"] == "SUCCEEDED")
    })
    .await;
}

#[tokio::test]
async fn the_worker_honours_a_webhooks_max_per_second() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, &format!("{}/hook", hook.uri()), true)
        .await;
    let url = format!("{}/hook", hook.uri());
    let set_rate = |rate: i64| {
        let (app, token, webhook, url) = (&app, owner.token.clone(), webhook.clone(), url.clone());
        async move {
            app.update_webhook(
                &token,
                &webhook,
                json!({ "name": "Rated", "url": url, "maxPerSecond": rate }),
            )
            .await
        }
    };
    assert_error(&set_rate(0).await, "BAD_USER_INPUT");
    assert_ok(&set_rate(2).await);
    let seen = app
        .gql(
            &owner.token,
            "query($id: ID!) { webhook(id: $id) { maxPerSecond } }",
            json!({ "id": webhook }),
        )
        .await;
    assert_eq!(seen["data"]["webhook"]["maxPerSecond"], 2, "{seen}");

    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        let (id, token) = app.new_conversation(&bot).await;
        assert_ok(&app.send_answer(&id, &token, "jo@example.com").await);
        assert_ok(&app.send_answer(&id, &token, "+33 6 12 34 56 78").await);
    }
    // 2 at once, then one every half second: the sixth no sooner than ~2 s.
    tokio::time::sleep_until(started + Duration::from_millis(1000)).await;
    let early = hook.received_requests().await.unwrap_or_default().len();
    assert!(
        early <= 4,
        "{early} deliveries within a second at 2 per second"
    );
    app.wait_deliveries(&owner.token, &webhook, |list| {
        list.len() == 6 && list.iter().all(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_delivery_failed_event_is_sent_at_once_and_not_at_the_outboxs_next_poll() {
    // The poll would only come in an hour: the event, queued by the worker when it records
    // the failure, must wake it.
    let app = spawn_app_with(|s| s.delivery.poll_interval = Duration::from_secs(3600)).await;
    let owner = app.new_user().await;
    let events = hook_receiver(200).await;
    // 400: failed at the first attempt, no retries.
    let refusing = hook_receiver(400).await;
    app.new_alerts_webhook(&owner, &events, &["DELIVERY_FAILED"])
        .await;
    let broken = app
        .new_webhook(&owner, &format!("{}/hook", refusing.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "hook", "blocks": [
        { "id": "hook", "kind": "WEBHOOK", "webhookId": broken, "async": true, "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (conversation, _) = app.new_conversation(&bot).await;

    let got = bodies(&events, 1).await;
    assert_eq!(got.len(), 1);
    let body = &got[0];
    assert_eq!(body["type"], json!("delivery.failed"), "{body}");
    assert_eq!(
        body["data"]["conversation_id"],
        json!(conversation),
        "{body}"
    );
    assert_eq!(body["data"]["last_status"], json!(400), "{body}");
    assert_eq!(
        refusing.received_requests().await.unwrap_or_default().len(),
        1
    );
}
