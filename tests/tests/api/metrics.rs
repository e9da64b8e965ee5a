//! `GET /metrics`: Prometheus text for a scraper holding `PARLEY_METRICS_TOKEN`.
use serde_json::json;

use crate::helpers::*;

pub(crate) const TOKEN: &str = "scrape-me-please-0123456789";

async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(format!("{}/metrics", app.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("metrics request")
}

/// The value of the sample `name` (with its labels, exactly as printed), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_are_not_served_without_a_configured_token() {
    let app = spawn_app().await;
    let response = scrape(&app, Some(TOKEN)).await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("an error message")
            .contains("PARLEY_METRICS_TOKEN")
    );
}

#[tokio::test]
async fn metrics_refuse_a_missing_or_wrong_token() {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    assert_eq!(scrape(&app, None).await.status(), 401);
    assert_eq!(
        scrape(&app, Some("not-the-token-at-all")).await.status(),
        401
    );
}

#[tokio::test]
async fn metrics_count_conversations_turns_and_the_outbox() {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    let user = app.new_user().await;
    let (bot, _) = app
        .published_seed_bot(&user, "http://127.0.0.1:9/hook", true)
        .await;
    for _ in 0..3 {
        let started = app.start_conversation(&bot, json!(null)).await;
        assert_ok(&started);
    }
    let response = scrape(&app, Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("a content type")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("the metrics text");
    // Stored state is this database's own: exact.
    assert_eq!(
        sample(&text, "parley_conversations{status=\"ACTIVE\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "parley_conversations{status=\"COMPLETED\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "parley_outbox_due"), Some(0.0));
    // Counters are the process's (other tests' servers share it): at least ours.
    let starts = sample(&text, "parley_turns_total{kind=\"start\"}").expect("turn counter");
    assert!(starts >= 3.0, "{starts}");
    assert!(
        text.contains("parley_turn_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("parley_db_pool_connections{"), "{text}");
}

#[tokio::test]
async fn metrics_count_deliveries_pending_succeeded_and_failed_exactly() {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
        // A failed async attempt waits an hour for its retry: its delivery stays PENDING.
        s.delivery.retry_schedule = vec![std::time::Duration::from_secs(3600)];
    })
    .await;
    let owner = app.new_user().await;
    let up = hook_receiver(204).await;
    let down = hook_receiver(500).await;
    let (sent, sent_hook) = async_bot(&app, &owner, &format!("{}/hook", up.uri())).await;
    let (retried, retried_hook) = async_bot(&app, &owner, &format!("{}/hook", down.uri())).await;
    // A sync call is not retried: failed at once.
    let (called, called_hook) = app
        .published_seed_bot(&owner, &format!("{}/hook", down.uri()), false)
        .await;
    for _ in 0..2 {
        app.new_conversation(&sent).await;
    }
    app.new_conversation(&retried).await;
    let (id, token) = app.new_conversation(&called).await;
    assert_ok(&app.send_answer(&id, &token, "a@example.com").await);
    assert_ok(&app.send_answer(&id, &token, "+33 6 12 34 56 78").await);
    app.wait_deliveries(&owner.token, &sent_hook, |list| {
        list.len() == 2 && list.iter().all(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    app.wait_deliveries(&owner.token, &retried_hook, |list| {
        list.len() == 1 && list[0]["status"] == "PENDING" && list[0]["attemptCount"] == 1
    })
    .await;
    app.wait_deliveries(&owner.token, &called_hook, |list| {
        list.len() == 1 && list[0]["status"] == "FAILED"
    })
    .await;

    let text = scrape(&app, Some(TOKEN))
        .await
        .text()
        .await
        .expect("the metrics text");
    for (status, n) in [("PENDING", 1.0), ("SUCCEEDED", 2.0), ("FAILED", 1.0)] {
        assert_eq!(
            sample(&text, &format!("parley_deliveries{{status=\"{status}\"}}")),
            Some(n),
            "{status}"
        );
    }
    // The pending one is due in an hour.
    assert_eq!(sample(&text, "parley_outbox_due"), Some(0.0));
}

#[tokio::test]
async fn a_conversations_delivery_is_handed_to_the_worker_and_sent_without_waiting_for_a_poll() {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
        // The outbox poll would only come in an hour: what arrives came through the hand-over.
        s.delivery.poll_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let handed = |text: &str| {
        sample(text, "parley_deliveries_handed_over_total{path=\"insert\"}").unwrap_or(0.0)
    };
    let before = handed(&scrape(&app, Some(TOKEN)).await.text().await.expect("text"));
    let owner = app.new_user().await;
    let hook = hook_receiver(204).await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    let (conversation, _) = app.new_conversation(&bot).await;
    let list = app
        .wait_deliveries(&owner.token, &webhook, |list| {
            list.iter().any(|d| d["status"] == "SUCCEEDED")
        })
        .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["conversationId"], json!(conversation));
    assert_eq!(list[0]["attemptCount"], json!(1));
    assert_eq!(hook.received_requests().await.unwrap_or_default().len(), 1);
    // Counters are the process's: other tests' servers may add to it, never take away.
    let after = handed(&scrape(&app, Some(TOKEN)).await.text().await.expect("text"));
    assert!(after >= before + 1.0, "handed over: {before} then {after}");
}

/// The sample `name` (with its labels) now; 0 when absent.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = scrape(app, Some(TOKEN))
        .await
        .text()
        .await
        .expect("the metrics text");
    sample(&text, name).unwrap_or(0.0)
}

/// `parley_turn_paths_total{path}` now.
pub(crate) async fn turn_path(app: &TestApp, path: &str) -> f64 {
    metric(app, &format!("parley_turn_paths_total{{path=\"{path}\"}}")).await
}

#[tokio::test]
async fn an_answer_that_only_makes_the_bot_speak_in_a_conversation_this_instance_knows_is_written_without_a_read()
 {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    let owner = app.new_user().await;
    let bot = app.published_bot(&owner, two_questions()).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let path = "quick";
    let before = turn_path(&app, path).await;
    for answer in ["Jo", "Paris", "Ann"] {
        assert_ok(&app.send_answer(&conv, &token, answer).await);
    }
    // Counters are the process's: other tests' servers may add to them, never take away.
    let after = turn_path(&app, path).await;
    assert!(after - before >= 3.0, "{path}: {before} then {after}");
    // And the turns wrote what a full step writes.
    let (seen, seqs, texts) = app.stored_conversation(&owner, &conv).await;
    assert_eq!(
        texts,
        [
            "Name?",
            "Jo",
            "Hi Jo, city?",
            "Paris",
            "Name?",
            "Ann",
            "Hi Ann, city?"
        ]
    );
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(seen["answers"], json!({ "name": "Ann", "city": "Paris" }));
    assert_eq!(seen["status"], "ACTIVE");
}

#[tokio::test]
async fn quick_answers_to_many_conversations_at_once_each_land_in_their_own_conversation_written_together()
 {
    // On PostgreSQL, quick turns waiting at the same time are written by one statement.
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    let failed = "parley_quick_batches_failed_total";
    let failed_before = metric(&app, failed).await;
    let owner = app.new_user().await;
    let bot = app.published_bot(&owner, two_questions()).await;
    let mut chats = Vec::new();
    for _ in 0..24 {
        chats.push(app.new_conversation(&bot).await);
    }
    let app = &app;
    for round in 0..3 {
        let answers = chats
            .iter()
            .enumerate()
            .map(|(i, (conv, token))| async move {
                app.send_answer(conv, token, &format!("v{i}-r{round}"))
                    .await
            });
        for body in futures_util::future::join_all(answers).await {
            assert_ok(&body);
        }
    }
    for (i, (conv, token)) in chats.iter().enumerate() {
        let body = app.conversation(None, conv, Some(token)).await;
        let c = &body["data"]["conversation"];
        let events: Vec<(i64, String)> = c["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events: {body}"))
            .iter()
            .map(|e| {
                (
                    e["seq"].as_i64().unwrap_or_default(),
                    e["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(i64, String)> = [
            "Name?".to_owned(),
            format!("v{i}-r0"),
            format!("Hi v{i}-r0, city?"),
            format!("v{i}-r1"),
            "Name?".to_owned(),
            format!("v{i}-r2"),
            format!("Hi v{i}-r2, city?"),
        ]
        .into_iter()
        .zip(1..)
        .map(|(text, seq)| (seq, text))
        .collect();
        assert_eq!(events, expected, "conversation {i}");
        assert_eq!(
            c["answers"],
            json!({ "name": format!("v{i}-r2"), "city": format!("v{i}-r1") }),
            "conversation {i}"
        );
    }
    // Not one statement of many turns fell back to writing them one by one.
    assert_eq!(metric(app, failed).await, failed_before);
}

/// Two questions, then the end.
fn two_questions_then_end() -> serde_json::Value {
    json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "Hi {{name}}, city?", "saveAnswerTo": "city", "next": "bye" },
        { "id": "bye", "kind": "END" } ] })
}

#[tokio::test]
async fn a_start_and_an_end_that_only_make_the_bot_speak_are_written_in_one_go_unless_a_webhook_takes_their_lifecycle_events()
 {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    let owner = app.new_user().await;
    let bot = app.published_bot(&owner, two_questions_then_end()).await;
    let (new, quick) = ("quick_new", "quick");
    let (new_before, quick_before) = (turn_path(&app, new).await, turn_path(&app, quick).await);
    let (plain, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&plain, &token, "Jo").await);
    assert_ok(&app.send_answer(&plain, &token, "Paris").await);
    // Counters are the process's: other tests' servers may add to them, never take away.
    let (new_after, quick_after) = (turn_path(&app, new).await, turn_path(&app, quick).await);
    assert!(
        new_after - new_before >= 1.0,
        "{new}: {new_before} then {new_after}"
    );
    assert!(
        quick_after - quick_before >= 2.0,
        "{quick}: {quick_before} then {quick_after}"
    );
    let (seen, seqs, texts) = app.stored_conversation(&owner, &plain).await;
    assert_eq!(texts, ["Name?", "Jo", "Hi Jo, city?", "Paris"]);
    assert_eq!(
        seqs,
        (1..=5).collect::<Vec<_>>(),
        "the ENDED event is the fifth"
    );
    assert_eq!(seen["status"], "COMPLETED", "{seen}");
    assert!(seen["endedAt"].is_string(), "{seen}");
    assert_eq!(seen["answers"], json!({ "name": "Jo", "city": "Paris" }));
    // Ended: a further answer is refused, and nothing more is stored.
    let late = app.send_answer(&plain, &token, "again").await;
    assert_eq!(
        late["errors"][0]["extensions"]["code"], "CONFLICT",
        "{late}"
    );
    assert_eq!(app.stored_conversation(&owner, &plain).await.1.len(), 5);

    // Once a webhook takes both lifecycle events, the start and the end each send theirs.
    let events = hook_receiver(204).await;
    app.new_alerts_webhook(
        &owner,
        &events,
        &["CONVERSATION_STARTED", "CONVERSATION_COMPLETED"],
    )
    .await;
    let (watched, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&watched, &token, "Ann").await);
    assert_ok(&app.send_answer(&watched, &token, "Oslo").await);
    let got = received(&events, 2).await;
    let mut types: Vec<(String, String)> = got
        .iter()
        .map(|req| {
            let body: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
            (
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["data"]["conversation"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("conversation.completed".to_owned(), watched.clone()),
            ("conversation.started".to_owned(), watched.clone()),
        ]
    );
    let (seen, seqs, _) = app.stored_conversation(&owner, &watched).await;
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    assert_eq!(seen["status"], "COMPLETED", "{seen}");
    assert_eq!(seen["answers"], json!({ "name": "Ann", "city": "Oslo" }));
    // Nothing more arrives (the first conversation's start and end sent nothing, then or now).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        events.received_requests().await.unwrap_or_default().len(),
        2
    );
}

#[tokio::test]
async fn a_start_that_queues_a_webhook_is_written_in_one_go_on_postgresql_with_the_payload_of_the_full_step()
 {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
    })
    .await;
    let owner = app.new_user().await;
    let hook = hook_receiver(204).await;
    let (bot, _) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    // SQLite writes such a start without a read already (its full step, taken ahead).
    let path = if app.db.is_postgres() {
        "quick_new"
    } else {
        "new"
    };
    let before = turn_path(&app, path).await;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(app.new_conversation(&bot).await.0);
    }
    let after = turn_path(&app, path).await;
    assert!(after - before >= 3.0, "{path}: {before} then {after}");

    let got = received(&hook, 3).await;
    let mut delivered = Vec::new();
    for req in &got {
        let body: serde_json::Value = serde_json::from_slice(&req.body).expect("a JSON body");
        let conversation = &body["conversation"];
        delivered.push(conversation["id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(conversation["bot_id"], json!(bot), "{body}");
        assert_eq!(conversation["bot_name"], "Lead bot", "{body}");
        assert_eq!(
            conversation["account_id"],
            json!(owner.account_id),
            "{body}"
        );
        assert_eq!(conversation["version"], 1, "{body}");
        assert_eq!(conversation["messages_truncated"], false, "{body}");
        let messages = conversation["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "{body}");
        assert_eq!(
            (
                &messages[0]["seq"],
                &messages[0]["from"],
                &messages[0]["text"]
            ),
            (&json!(1), &json!("bot"), &json!("Hi!")),
            "{body}"
        );
    }
    delivered.sort();
    started.sort();
    assert_eq!(delivered, started);
    for conv in &started {
        let (seen, seqs, texts) = app.stored_conversation(&owner, conv).await;
        assert_eq!(seen["status"], "COMPLETED", "{seen}");
        assert!(seen["endedAt"].is_string(), "{seen}");
        assert_eq!(seqs, [1, 2], "the message, then ENDED");
        assert_eq!(texts, ["Hi!"]);
    }
}
