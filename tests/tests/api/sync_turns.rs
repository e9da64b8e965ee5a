//! A sync webhook's turns in a conversation this instance knows: on PostgreSQL the answer that
//! calls the webhook, and the step that takes its reply, are each written by one statement
//! (with the call's delivery, and its result), and what they send and store is what the full
//! step sends and stores. SQLite takes the full step: the same assertions hold there.
use crate::{
    helpers::*,
    metrics::{TOKEN, turn_path},
};
use serde_json::{Value, json};

/// Two questions, each followed by the same sync webhook, then a third question.
fn hooked_flow(webhook: &str) -> Value {
    json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "h1" },
        { "id": "h1", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "{{greeting}}, city?", "saveAnswerTo": "city", "next": "h2" },
        { "id": "h2", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "q3" },
        { "id": "q3", "kind": "QUESTION", "text": "Anything else?", "saveAnswerTo": "more", "next": "bye" },
        { "id": "bye", "kind": "END" } ] })
}

/// The `(seq, from, text)` of a payload's messages.
fn messages(body: &Value) -> Vec<(i64, String, String)> {
    body["conversation"]["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap_or_default(),
                m["from"].as_str().unwrap_or_default().to_owned(),
                m["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn said(seq: i64, from: &str, text: &str) -> (i64, String, String) {
    (seq, from.to_owned(), text.to_owned())
}

#[tokio::test]
async fn a_sync_webhooks_turns_send_the_full_transcript_and_store_the_call_and_its_reply_on_either_path()
 {
    let app = spawn_app_with(|s| {
        s.metrics_token_hash = Some(parley::opaque::token_hash(TOKEN));
        // Room for this test's two answers exactly: an answer counted twice (a quick turn
        // that falls back to the full step) would be refused.
        s.limits.answer_rate_limit = 2;
    })
    .await;
    let owner = app.new_user().await;
    let (hook, webhook) = app
        .answering_hook(
            &owner,
            json!({ "responses": [
                { "type": "text", "text": "Noted." },
                { "type": "set", "variables": { "greeting": "Hello" } } ] }),
        )
        .await;
    let bot = app.published_bot(&owner, hooked_flow(&webhook)).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let quick_before = turn_path(&app, "quick").await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    // Renamed between the two calls: the second payload carries the new name, whatever this
    // instance remembered of the first.
    assert_ok(&app.rename_bot(&owner.token, &bot, "Renamed bot").await);
    assert_ok(&app.send_answer(&conv, &token, "Paris").await);
    let quick_after = turn_path(&app, "quick").await;

    let got = received(&hook, 2).await;
    assert_eq!(got.len(), 2);
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("a JSON body"))
        .collect();
    assert_eq!(
        messages(&bodies[0]),
        [said(1, "bot", "Name?"), said(2, "visitor", "Jo")],
        "{}",
        bodies[0]
    );
    assert_eq!(bodies[0]["name"], "Jo");
    assert_eq!(bodies[0]["conversation"]["id"], json!(conv));
    assert_eq!(bodies[0]["conversation"]["messages_truncated"], false);
    assert_ne!(bodies[0]["conversation"]["bot_name"], "Renamed bot");
    assert_eq!(
        messages(&bodies[1]),
        [
            said(1, "bot", "Name?"),
            said(2, "visitor", "Jo"),
            said(3, "bot", "Noted."),
            said(4, "bot", "Hello, city?"),
            said(5, "visitor", "Paris"),
        ],
        "{}",
        bodies[1]
    );
    assert_eq!(bodies[1]["conversation"]["bot_name"], "Renamed bot");
    assert_eq!(
        bodies[1]["conversation"]["variables"]["greeting"], "Hello",
        "{}",
        bodies[1]
    );

    let (seen, seqs, texts) = app.stored_conversation(&owner, &conv).await;
    assert_eq!(
        texts,
        [
            "Name?",
            "Jo",
            "Noted.",
            "Hello, city?",
            "Paris",
            "Noted.",
            "Anything else?"
        ]
    );
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(seen["answers"], json!({ "name": "Jo", "city": "Paris" }));
    assert_eq!(seen["status"], "ACTIVE");

    // Each call is one delivery, settled by the step that took its reply: succeeded, one
    // attempt, the claim released.
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list.len(), 2, "{list:#?}");
    for d in &list {
        assert_eq!(d["mode"], "SYNC", "{d}");
        assert_eq!(d["status"], "SUCCEEDED", "{d}");
        assert_eq!(d["attemptCount"], 1, "{d}");
        assert_eq!(d["conversationId"], json!(conv), "{d}");
        let attempts = d["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{d}");
        assert_eq!(attempts[0]["responseStatus"], 200, "{d}");
    }

    // PostgreSQL wrote without a read: the first answer (its call's delivery with it), the
    // reply's step (the call's result with it), the second reply's step (the rename sent the
    // second answer to the full step). Counters are the process's: other tests' servers may
    // add to them, never take away.
    if app.db.is_postgres() {
        assert!(
            quick_after - quick_before >= 3.0,
            "quick: {quick_before} then {quick_after}"
        );
    }
}

#[tokio::test]
async fn a_webhook_deleted_behind_the_servers_back_fails_its_call_and_the_conversation_goes_on() {
    // As another instance would delete it: this one still keeps the account's webhooks. On
    // PostgreSQL the answer's one statement then fails its delivery's foreign key, and the
    // full step finds the webhook gone; on SQLite the full step does.
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (hook, webhook) = app
        .answering_hook(
            &owner,
            json!({ "responses": [ { "type": "text", "text": "Noted." } ] }),
        )
        .await;
    let bot = app.published_bot(&owner, hooked_flow(&webhook)).await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    sql(
        &app,
        "DELETE FROM webhooks WHERE id = $1",
        vec![uuid(&webhook)],
    )
    .await;
    assert_ok(&app.send_answer(&conv, &token, "Paris").await);
    // Only the first call was made.
    assert_eq!(received(&hook, 1).await.len(), 1);
    let (seen, seqs, texts) = app.stored_conversation(&owner, &conv).await;
    assert_eq!(
        texts,
        [
            "Name?",
            "Jo",
            "Noted.",
            ", city?",
            "Paris",
            "Anything else?"
        ]
    );
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(seen["answers"], json!({ "name": "Jo", "city": "Paris" }));
}
