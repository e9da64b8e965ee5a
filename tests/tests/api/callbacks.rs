//! CALLBACK blocks: the webhook before one carries a one-time `conversation.callback_url`;
//! posting to it goes on with the posted keys as variables; a timeout goes to `onTimeout`.
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::MockServer;

use crate::helpers::*;

/// A bot that asks for an email, tells the receiver (async), then waits for its callback.
async fn callback_bot(app: &TestApp, owner: &TestUser, hook: &MockServer, timeout: u32) -> String {
    let webhook = app
        .new_webhook(owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "email", "blocks": [
        { "id": "email", "kind": "QUESTION", "text": "Email?", "questionType": "EMAIL", "saveAnswerTo": "email", "next": "tell" },
        { "id": "tell", "kind": "WEBHOOK", "webhookId": webhook, "async": true, "next": "cb" },
        { "id": "cb", "kind": "CALLBACK", "timeoutSeconds": timeout, "onTimeout": "late", "next": "paid" },
        { "id": "paid", "kind": "MESSAGE", "text": "Payment {{status}}, {{email}}." },
        { "id": "late", "kind": "MESSAGE", "text": "No news yet." }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

/// The callback URL of the first payload the receiver got.
async fn callback_url(hook: &MockServer) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = hook.received_requests().await.unwrap_or_default();
        if let Some(request) = got.first() {
            let body: Value = serde_json::from_slice(&request.body).expect("a JSON payload");
            return body["conversation"]["callback_url"]
                .as_str()
                .unwrap_or_else(|| panic!("no callback_url in {body}"))
                .to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook call");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post(app: &TestApp, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = app
        .client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("callback request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_callback_url_continues_the_conversation_once() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let bot = callback_bot(&app, &owner, &hook, 30).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    sub.events(1).await;
    assert_ok(&app.send_answer(&conv, &token, "jo@example.com").await);
    sub.events(1).await;
    let url = callback_url(&hook).await;
    assert!(
        url.starts_with(&format!("{}/callbacks/", app.addr)),
        "{url}"
    );

    // Waiting for the callback, the bot takes no answer.
    assert_error(&app.send_answer(&conv, &token, "hello?").await, "CONFLICT");
    // Wrong tokens, bodies that are not objects, and oversized bodies are refused.
    let (status, body) = post(&app, &format!("{}/callbacks/nope", app.addr), "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert_eq!(post(&app, &url, "[1]").await.0, 400);
    assert_eq!(post(&app, &url, vec![b' '; 70 * 1024]).await.0, 413);
    // A NUL cannot be stored: refused, and the token stays good for a proper body.
    let (status, body) = post(&app, &url, r#"{"status": "a\u0000b"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    let (status, body) = post(&app, &url, r#"{"status": "received"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversationId"], conv.as_str());
    let said = sub.events(2).await;
    assert_eq!(said[0]["text"], "Payment received, jo@example.com.");
    assert_eq!(said[1]["kind"], "ENDED");

    let (status, body) = post(&app, &url, r#"{"status": "again"}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{body}"
    );
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["variables"]["status"],
        "received"
    );
}

#[tokio::test]
async fn a_callback_that_never_comes_times_out_to_on_timeout() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = hook_receiver(200).await;
    let bot = callback_bot(&app, &owner, &hook, 1).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    sub.events(1).await;
    assert_ok(&app.send_answer(&conv, &token, "jo@example.com").await);
    let said = sub.events(3).await;
    assert_eq!(kinds(&said), ["VISITOR_MESSAGE", "BOT_MESSAGE", "ENDED"]);
    assert_eq!(said[1]["text"], "No news yet.");
    let url = callback_url(&hook).await;
    assert_eq!(post(&app, &url, "{}").await.0, 404);
}

#[tokio::test]
async fn save_flow_checks_a_callbacks_timeout_and_on_timeout() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "CALLBACK", "next": "b" },
        { "id": "b", "kind": "CALLBACK", "timeoutSeconds": 86401, "onTimeout": "ghost", "next": "c" },
        { "id": "c", "kind": "MESSAGE", "text": "hi", "onTimeout": "a" }
    ]});
    let body = app.save_flow(&owner.token, &bot, flow, None).await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    for expected in [
        ("a", "timeoutSeconds"),
        ("a", "onTimeout"),
        ("b", "timeoutSeconds"),
        ("b", "onTimeout"),
        ("c", "onTimeout"),
    ] {
        assert!(
            found
                .iter()
                .any(|(b, f)| b.as_deref() == Some(expected.0) && f == expected.1),
            "{expected:?} not in {found:?}"
        );
    }
}

#[tokio::test]
async fn a_sync_webhook_before_a_callback_carries_the_url_too() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (hook, webhook) = app.answering_hook(&owner, json!({ "order": "A-1" })).await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Hi", "next": "ask" },
        { "id": "ask", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "cb" },
        { "id": "cb", "kind": "CALLBACK", "timeoutSeconds": 30, "onTimeout": "late", "next": "done" },
        { "id": "done", "kind": "MESSAGE", "text": "Order {{order}} is {{state}}." },
        { "id": "late", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (conv, token) = app.new_conversation(&bot).await;
    let url = callback_url(&hook).await;
    // Until the reply's step is stored the conversation is not at the CALLBACK yet: 409, and
    // the token stays good.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = post(&app, &url, r#"{"state": "shipped"}"#).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "CONFLICT");
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let said = sub.events(3).await;
    assert_eq!(said[1]["text"], "Order A-1 is shipped.");
}
