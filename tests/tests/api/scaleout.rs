//! Several instances on one PostgreSQL database. These tests need PostgreSQL
//! (`PARLEY_TEST_DATABASE_URL`); on SQLite, which serves one instance, they return at once.
use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

use crate::helpers::*;

async fn two_instances() -> Option<(TestApp, TestApp)> {
    let a = spawn_app().await;
    if !a.db.is_postgres() {
        return None;
    }
    let b = a.second_instance().await;
    Some((a, b))
}

async fn chat_bot(app: &TestApp, owner: &TestUser) -> String {
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "Hi {{name}}, city?", "saveAnswerTo": "city", "next": "q1" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

/// The account events of `owner`'s account, watched on `app`; nothing yet.
async fn team_watch(app: &TestApp, owner: &TestUser) -> Sub {
    let mut team = app
        .subscribe(
            Some(&owner.token),
            "subscription($a: ID!) { accountEvents(accountId: $a) { seq conversationId kind } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    team.assert_quiet().await;
    team
}

#[tokio::test]
async fn a_visitor_on_one_instance_sees_replies_to_answers_posted_to_another() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let bot = chat_bot(&a, &owner).await;
    let (conv, token) = a.new_conversation(&bot).await;
    let mut on_a = a.watch(&conv, Some(&token), None, 0).await;
    assert_eq!(kinds(&on_a.events(1).await), ["QUESTION"]);

    assert_ok(&b.send_answer(&conv, &token, "Jo").await);
    let events = on_a.events(2).await;
    assert_eq!(kinds(&events), ["VISITOR_MESSAGE", "QUESTION"]);
    assert_eq!(events[1]["text"], "Hi Jo, city?");
    assert_eq!(
        (events[0]["seq"].clone(), events[1]["seq"].clone()),
        (json!(2), json!(3))
    );

    // And the other way round, with a subscriber on each side.
    let mut on_b = b.watch(&conv, Some(&token), None, 3).await;
    assert_ok(&a.send_answer(&conv, &token, "Paris").await);
    for sub in [&mut on_a, &mut on_b] {
        let events = sub.events(2).await;
        assert_eq!(kinds(&events), ["VISITOR_MESSAGE", "QUESTION"]);
        assert_eq!(events[0]["seq"], 4);
    }
    on_a.assert_quiet().await;
}

#[tokio::test]
async fn the_team_sees_account_events_from_every_instance() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let bot = chat_bot(&a, &owner).await;
    let mut team = team_watch(&b, &owner).await;
    let (conv, token) = a.new_conversation(&bot).await;
    let first = team.event("accountEvents").await;
    assert_eq!(
        (first["kind"].clone(), first["conversationId"].clone()),
        (json!("QUESTION"), json!(conv))
    );
    assert_ok(&a.send_answer(&conv, &token, "Jo").await);
    assert_eq!(team.event("accountEvents").await["kind"], "VISITOR_MESSAGE");
    assert_eq!(team.event("accountEvents").await["kind"], "QUESTION");
}

#[tokio::test]
async fn answers_to_one_conversation_through_two_instances_never_fork_it() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let bot = chat_bot(&a, &owner).await;
    let (conv, token) = a.new_conversation(&bot).await;
    let answers = (0..20).map(|i| {
        let (app, conv, token) = (
            if i % 2 == 0 { &a } else { &b },
            conv.clone(),
            token.clone(),
        );
        async move { app.send_answer(&conv, &token, &format!("answer {i}")).await }
    });
    for r in futures_util::future::join_all(answers).await {
        assert_ok(&r);
    }
    let seen = b.conversation(Some(&owner.token), &conv, None).await;
    let events = seen["data"]["conversation"]["events"]
        .as_array()
        .expect("events")
        .clone();
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=41).collect::<Vec<_>>());
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "VISITOR_MESSAGE")
            .count(),
        20
    );
}

/// How many times each conversation's delivery was received.
async fn receipts(hook: &MockServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for req in hook.received_requests().await.unwrap_or_default() {
        if let Some(id) = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|b| b["conversation"]["id"].as_str().map(str::to_owned))
        {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

async fn wait_receipts(hook: &MockServer, n: usize) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = receipts(hook).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} deliveries arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_workers_share_the_outbox_and_send_each_delivery_once() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let hook = hook_receiver(204).await;
    let (bot, webhook) = async_bot(&a, &owner, &format!("{}/hook", hook.uri())).await;
    let mut started = Vec::new();
    for i in 0..200 {
        let app = if i % 2 == 0 { &a } else { &b };
        started.push(app.new_conversation(&bot).await.0);
    }
    let got = wait_receipts(&hook, 200).await;
    for c in &started {
        assert_eq!(
            got.get(c),
            Some(&1),
            "conversation {c} was delivered {:?} times",
            got.get(c)
        );
    }
    let list = a
        .wait_deliveries(&owner.token, &webhook, |l| {
            l.len() == 100 && l.iter().all(|d| d["status"] == "SUCCEEDED")
        })
        .await;
    assert!(
        list.iter()
            .all(|d| d["attempts"].as_array().map(Vec::len) == Some(1))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hook.received_requests().await.unwrap_or_default().len(),
        200,
        "a delivery was sent twice"
    );
}

#[tokio::test]
async fn when_one_instance_dies_the_other_finishes_its_work() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(100)))
        .mount(&hook)
        .await;
    let (bot, _) = async_bot(&a, &owner, &format!("{}/hook", hook.uri())).await;
    let mut started = Vec::new();
    for _ in 0..40 {
        started.push(a.new_conversation(&bot).await.0);
    }
    // Kill A while it is delivering; B takes over its pending and claimed deliveries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hook
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "nothing sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _db = a.crash();
    let got = wait_receipts(&hook, 40).await;
    for c in &started {
        assert!(got.contains_key(c), "the delivery of {c} was lost");
    }
    // B still serves the conversations A started.
    let (conv, _) = b.new_conversation(&bot).await;
    assert_ok(&b.conversation(Some(&owner.token), &conv, None).await);
}

#[tokio::test]
async fn a_dropped_listener_reconnects_and_back_fills_what_it_missed() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let bot = chat_bot(&a, &owner).await;
    let (conv, token) = a.new_conversation(&bot).await;
    let mut on_a = a.watch(&conv, Some(&token), None, 0).await;
    assert_eq!(kinds(&on_a.events(1).await), ["QUESTION"]);

    // Cut every LISTEN connection, then answer through B while A's listener is down.
    let admin = sea_orm::Database::connect(a.db.url())
        .await
        .expect("connect");
    use sea_orm::ConnectionTrait as _;
    let killed = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("terminate listeners")
        .and_then(|row| row.try_get::<i64>("", "n").ok())
        .unwrap_or_default();
    assert!(
        killed >= 2,
        "expected both instances' listeners, killed {killed}"
    );
    assert_ok(&b.send_answer(&conv, &token, "Jo").await);
    let events = on_a.events(2).await;
    assert_eq!(kinds(&events), ["VISITOR_MESSAGE", "QUESTION"]);
    assert_eq!(events[0]["seq"], 2);
    on_a.assert_quiet().await;
}

#[tokio::test]
async fn an_instance_alone_sends_no_notify_and_starts_once_another_instance_joins() {
    let a = spawn_app().await;
    if !a.db.is_postgres() {
        return;
    }
    // A bystander listening on the events channel: not an instance, so nobody notifies it.
    let mut bystander = sea_orm::sqlx::postgres::PgListener::connect(a.db.url())
        .await
        .expect("listener");
    bystander.listen("parley_events").await.expect("LISTEN");
    let owner = a.new_user().await;
    let bot = chat_bot(&a, &owner).await;
    let (conv, token) = a.new_conversation(&bot).await;
    assert_ok(&a.send_answer(&conv, &token, "Jo").await);
    let heard = tokio::time::timeout(Duration::from_millis(500), bystander.recv()).await;
    assert!(heard.is_err(), "a lone instance notified: {heard:?}");

    // A second instance joins: from then on A's steps are announced.
    let _b = a.second_instance().await;
    assert_ok(&a.send_answer(&conv, &token, "Paris").await);
    let heard = tokio::time::timeout(Duration::from_secs(5), bystander.recv())
        .await
        .expect("a notification once another instance is live")
        .expect("the notification");
    assert!(
        heard.payload().contains(&conv),
        "announced another conversation: {}",
        heard.payload()
    );
}

#[tokio::test]
async fn a_start_that_calls_a_webhook_is_told_to_the_other_instances_and_delivered_once() {
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let owner = a.new_user().await;
    let hook = hook_receiver(204).await;
    let (bot, _) = async_bot(&a, &owner, &format!("{}/hook", hook.uri())).await;
    let mut team = team_watch(&b, &owner).await;
    // The start's events are announced with its commit: the team on the other instance
    // hears of them, and the webhook gets the conversation once.
    let (conv, _) = a.new_conversation(&bot).await;
    for kind in ["BOT_MESSAGE", "ENDED"] {
        let event = team.event("accountEvents").await;
        assert_eq!(
            (event["kind"].clone(), event["conversationId"].clone()),
            (json!(kind), json!(conv))
        );
    }
    wait_receipts(&hook, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receipts(&hook).await;
    assert_eq!(got.get(&conv), Some(&1), "{got:?}");
}
