//! WAIT blocks: the bot pauses, the runtime goes on by itself (live, after a restart, once
//! across instances), and a visitor's answer during the pause is refused.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

/// A published bot: a message, a pause of `seconds`, a question, the end.
async fn pausing_bot(app: &TestApp, owner: &TestUser, seconds: u32) -> String {
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Let me check…", "next": "w" },
        { "id": "w", "kind": "WAIT", "seconds": seconds, "next": "found" },
        { "id": "found", "kind": "MESSAGE", "text": "Found it.", "next": "name" },
        { "id": "name", "kind": "QUESTION", "text": "Your name?", "saveAnswerTo": "name", "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

fn texts(conversation: &Value) -> Vec<String> {
    conversation["data"]["conversation"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the conversation until it says `text` (up to 10 s).
async fn wait_for_text(app: &TestApp, owner: &TestUser, conv: &str, text: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = app.conversation(Some(&owner.token), conv, None).await;
        if texts(&seen).iter().any(|t| t == text) {
            return seen;
        }
        assert!(Instant::now() < deadline, "never said {text:?}: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_wait_pauses_the_bot_then_it_goes_on_live_and_answers_meanwhile_are_refused() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = pausing_bot(&app, &owner, 1).await;
    let began = Instant::now();
    let (conv, token) = app.new_conversation(&bot).await;
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let first = sub.events(1).await;
    assert_eq!(first[0]["text"], "Let me check…");

    let refused = app.send_answer(&conv, &token, "Ada").await;
    assert_error(&refused, "CONFLICT");
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("pausing"), "{refused}");

    let rest = sub.events(2).await;
    let elapsed = began.elapsed();
    assert_eq!(kinds(&rest), ["BOT_MESSAGE", "QUESTION"]);
    assert_eq!(rest[0]["text"], "Found it.");
    assert_eq!(rest[0]["seq"], 2, "the refused answer left no event");
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    // A local timer ends the pause, not the next poll of the database.
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");

    assert_ok(&app.send_answer(&conv, &token, "Ada").await);
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["status"], "COMPLETED",
        "{seen}"
    );
}

#[tokio::test]
async fn a_pause_outlives_a_crash_and_the_restarted_app_goes_on() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = pausing_bot(&app, &owner, 2).await;
    let (conv, _) = app.new_conversation(&bot).await;
    let settings = app.settings.clone();
    let db = app.crash();
    // Down for the whole pause: nothing of the old instance can end it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let app = start_on(db, settings).await;
    let seen = wait_for_text(&app, &owner, &conv, "Your name?").await;
    let said = texts(&seen);
    assert_eq!(
        said.iter().filter(|t| *t == "Found it.").count(),
        1,
        "{said:?}"
    );
}

#[tokio::test]
async fn of_two_instances_one_alone_ends_each_pause() {
    let app = spawn_app().await;
    let other = app.second_instance().await;
    let owner = app.new_user().await;
    let bot = pausing_bot(&app, &owner, 1).await;
    let mut conversations = Vec::new();
    for i in 0..6 {
        // Half started on each instance: each arms its own timers, both poll.
        let on = if i % 2 == 0 { &app } else { &other };
        conversations.push(on.new_conversation(&bot).await.0);
    }
    for conv in &conversations {
        wait_for_text(&app, &owner, conv, "Your name?").await;
    }
    // Time for a duplicate continuation to show up, were there one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for conv in &conversations {
        let seen = app.conversation(Some(&owner.token), conv, None).await;
        assert_eq!(
            texts(&seen),
            ["Let me check…", "Found it.", "Your name?"],
            "{seen}"
        );
    }
}

#[tokio::test]
async fn save_flow_checks_a_waits_seconds() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "WAIT", "next": "b" },
        { "id": "b", "kind": "WAIT", "seconds": 61, "next": "c" },
        { "id": "c", "kind": "MESSAGE", "text": "hi", "seconds": 3 }
    ]});
    let body = app.save_flow(&owner.token, &bot, flow, None).await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    for expected in [("a", "seconds"), ("b", "seconds"), ("c", "seconds")] {
        assert!(
            found
                .iter()
                .any(|(b, f)| b.as_deref() == Some(expected.0) && f == expected.1),
            "{expected:?} not in {found:?}"
        );
    }
}
