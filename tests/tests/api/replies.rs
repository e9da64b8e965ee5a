//! A sync webhook reply's `choices`, `wait` and `redirect` instructions, end to end with a
//! local receiver.
use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_reply_offers_buttons_pauses_and_redirects() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    // The receiver answers for as long as `_hook` lives.
    let (_hook, webhook) = app.answering_hook(&owner, json!({ "responses": [
            { "type": "redirect", "url": "https://shop.example/{{plan}}" },
            { "type": "choices", "choices": [
                { "label": "Small box", "value": "small" }, { "label": "Big box", "value": "big" } ] },
            { "type": "wait", "seconds": 1 },
            { "type": "carousel", "items": [] },
            { "type": "text", "text": "Pick a box." } ] })).await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "plan", "blocks": [
        { "id": "plan", "kind": "QUESTION", "text": "Plan?", "saveAnswerTo": "plan", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "box" },
        { "id": "box", "kind": "QUESTION", "text": "Which box?", "questionType": "CHOICE", "saveAnswerTo": "box",
          "choices": [ { "label": "Envelope" } ], "next": "bye" },
        { "id": "bye", "kind": "MESSAGE", "text": "A {{box}} box it is." }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let (conv, token) = app.new_conversation(&bot).await;
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    assert_eq!(kinds(&sub.events(1).await), ["QUESTION"]);
    let sent = Instant::now();
    assert_ok(&app.send_answer(&conv, &token, "pro").await);
    let said = sub.events(3).await;
    assert_eq!(kinds(&said), ["VISITOR_MESSAGE", "REDIRECT", "BOT_MESSAGE"]);
    assert_eq!(said[1]["text"], "https://shop.example/pro");
    assert_eq!(said[2]["text"], "Pick a box.");
    // During the pause, an answer is refused.
    assert_error(&app.send_answer(&conv, &token, "small").await, "CONFLICT");
    let asked = sub.events(1).await;
    assert!(sent.elapsed() >= Duration::from_millis(950), "no pause");
    assert_eq!(asked[0]["kind"], "QUESTION");
    assert_eq!(
        asked[0]["input"]["choices"],
        json!([ { "label": "Small box", "value": "small" }, { "label": "Big box", "value": "big" } ])
    );
    // The block's own choice is not on offer for this question.
    assert_ok(&app.send_answer(&conv, &token, "Envelope").await);
    assert_eq!(kinds(&sub.events(3).await)[1], "INVALID_ANSWER");
    assert_ok(&app.send_answer(&conv, &token, "big box").await);
    let end = sub.events(3).await;
    assert_eq!(end[1]["text"], "A big box it is.");

    let list = app.deliveries(&owner.token, &webhook).await;
    let notes = list[0]["attempts"][0]["notes"].as_str().unwrap_or_default();
    assert!(notes.contains("carousel"), "{list:?}");
    assert!(
        !notes.contains("choices") && !notes.contains("wait"),
        "{notes}"
    );
}
