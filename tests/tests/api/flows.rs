//! Richer flows end to end: the new question types, validation rules, attempt limits and
//! condition operators, saved through GraphQL and run by visitors.
use serde_json::{Value, json};

use crate::helpers::*;

const FLOW_FIELDS: &str = "flow { blocks { id questionType ratingMax maxAttempts onMaxAttempts validation { minLength maxLength min max pattern message } conditions { operator value } } }";

async fn save(app: &TestApp, owner: &TestUser, bot: &str, flow: Value) -> Value {
    app.gql(
        &owner.token,
        &format!("mutation($b: ID!, $f: FlowInput!) {{ saveFlow(botId: $b, flow: $f) {{ {FLOW_FIELDS} }} }}"),
        json!({ "b": bot, "f": flow }),
    )
    .await
}

fn rich_flow() -> Value {
    json!({ "startBlockId": "when", "blocks": [
        { "id": "when", "kind": "QUESTION", "text": "When?", "questionType": "DATE", "saveAnswerTo": "when", "next": "site" },
        { "id": "site", "kind": "QUESTION", "text": "Your site?", "questionType": "URL", "saveAnswerTo": "site", "next": "code" },
        { "id": "code", "kind": "QUESTION", "text": "Order code?", "saveAnswerTo": "code",
          "validation": { "pattern": "^[A-Z]{2}-\\d{3}$", "message": "Codes look like AB-123." },
          "maxAttempts": 3, "onMaxAttempts": "bye", "next": "score" },
        { "id": "score", "kind": "QUESTION", "text": "Mark us", "questionType": "RATING", "ratingMax": 10, "saveAnswerTo": "score",
          "validation": { "min": 2 }, "next": "topics" },
        { "id": "topics", "kind": "QUESTION", "text": "Topics?", "questionType": "MULTI_CHOICE", "saveAnswerTo": "topics",
          "choices": [ { "label": "Billing", "value": "billing" }, { "label": "Shipping", "value": "shipping" }, { "label": "Other" } ], "next": "ok" },
        { "id": "ok", "kind": "QUESTION", "text": "All good?", "questionType": "YES_NO", "saveAnswerTo": "ok", "next": "route" },
        { "id": "route", "kind": "CONDITION", "conditions": [
            { "variable": "code", "operator": "MATCHES", "value": "^AB-", "next": "vip" },
            { "variable": "nickname", "operator": "IS_EMPTY", "next": "bye" } ], "next": "bye" },
        { "id": "vip", "kind": "MESSAGE", "text": "A VIP code!", "next": "bye" },
        { "id": "bye", "kind": "END" }
    ]})
}

#[tokio::test]
async fn visitors_answer_dates_urls_ratings_several_choices_and_yes_no() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let saved = save(&app, &owner, &bot, rich_flow()).await;
    assert_ok(&saved);
    let blocks = &saved["data"]["saveFlow"]["flow"]["blocks"];
    assert_eq!(
        blocks[2]["validation"]["message"],
        "Codes look like AB-123."
    );
    assert_eq!(blocks[3]["ratingMax"], 10);
    assert_eq!(blocks[6]["conditions"][0]["operator"], "MATCHES");
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let (conv, token) = app.new_conversation(&bot).await;
    // Three of these are refused: a site that is not one, a code of the wrong form, a mark
    // under the minimum.
    for answer in [
        "28 November 2026",
        "not a site",
        "example.com/shop",
        "ab-12",
        "AB-123",
        "1",
        "9",
        "Shipping, billing",
        "oui",
    ] {
        assert_ok(&app.send_answer(&conv, &token, answer).await);
    }
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    let c = &seen["data"]["conversation"];
    assert_eq!(c["status"], "COMPLETED", "{seen}");
    assert_eq!(
        c["answers"],
        json!({
            "when": "2026-11-28",
            "site": "https://example.com/shop",
            "code": "AB-123",
            "score": 9,
            "topics": ["billing", "shipping"],
            "ok": true
        })
    );
    let events = c["events"].as_array().expect("events");
    let invalid: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "INVALID_ANSWER")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(invalid.len(), 3, "{invalid:?}");
    assert_eq!(invalid[1], "Codes look like AB-123.");
    assert!(
        events.iter().any(|e| e["text"] == "A VIP code!"),
        "MATCHES routed: {events:?}"
    );

    // The questions offer what the widget shows as buttons.
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let replay = sub.events(events.len()).await;
    let rating = replay
        .iter()
        .find(|e| e["text"] == "Mark us")
        .expect("the rating question");
    assert_eq!(rating["input"]["type"], "RATING");
    assert_eq!(
        rating["input"]["choices"].as_array().map(Vec::len),
        Some(10)
    );
    let yes_no = replay
        .iter()
        .find(|e| e["text"] == "All good?")
        .expect("yes/no");
    assert_eq!(yes_no["input"]["choices"][0]["label"], "Yes");
}

#[tokio::test]
async fn too_many_wrong_answers_move_the_flow_on() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    assert_ok(&save(&app, &owner, &bot, rich_flow()).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "2026-11-28").await);
    assert_ok(&app.send_answer(&conv, &token, "https://example.com").await);
    for _ in 0..3 {
        assert_ok(&app.send_answer(&conv, &token, "wrong").await);
    }
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["status"], "COMPLETED",
        "{seen}"
    );
}

#[tokio::test]
async fn save_flow_names_every_malformed_rule() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let bad = json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "QUESTION", "text": "?", "questionType": "RATING", "ratingMax": 50, "next": "b" },
        { "id": "b", "kind": "QUESTION", "text": "?", "validation": { "pattern": "(", "minLength": 5, "maxLength": 2 }, "maxAttempts": 2, "next": "c" },
        { "id": "c", "kind": "QUESTION", "text": "?", "questionType": "MULTI_CHOICE", "choices": [ { "label": "x", "next": "a" } ], "next": "d" },
        { "id": "d", "kind": "CONDITION", "conditions": [ { "variable": "v", "operator": "MATCHES", "value": "[", "next": "a" } ] },
        { "id": "e", "kind": "MESSAGE", "text": "hi", "ratingMax": 3 }
    ]});
    let body = save(&app, &owner, &bot, bad).await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    for expected in [
        (Some("a"), "ratingMax"),
        (Some("b"), "validation.pattern"),
        (Some("b"), "validation.minLength"),
        (Some("b"), "onMaxAttempts"),
        (Some("c"), "choices[0].next"),
        (Some("d"), "conditions[0].value"),
        (Some("e"), "ratingMax"),
    ] {
        assert!(
            found
                .iter()
                .any(|(b, f)| b.as_deref() == expected.0 && f == expected.1),
            "{expected:?} not in {found:?}"
        );
    }
}

#[tokio::test]
async fn set_variable_split_and_redirect_blocks_run_and_are_checked_at_save() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "tier", "blocks": [
        { "id": "tier", "kind": "SET_VARIABLE", "variable": "tier", "value": "{\"level\": 2}", "next": "ab" },
        { "id": "ab", "kind": "SPLIT", "branches": [ { "weight": 1, "next": "a" }, { "weight": 1, "next": "b" } ] },
        { "id": "a", "kind": "MESSAGE", "text": "A at level {{tier.level}}", "next": "go" },
        { "id": "b", "kind": "MESSAGE", "text": "B at level {{tier.level}}", "next": "go" },
        { "id": "go", "kind": "REDIRECT", "url": "https://example.com/pricing?tier={{tier.level}}" }
    ]});
    assert_ok(&save(&app, &owner, &bot, flow).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let mut variants = std::collections::HashSet::new();
    for _ in 0..20 {
        let (conv, token) = app.new_conversation(&bot).await;
        let mut sub = app.watch(&conv, Some(&token), None, 0).await;
        let events = sub.events(3).await;
        assert_eq!(kinds(&events), ["BOT_MESSAGE", "REDIRECT", "ENDED"]);
        assert_eq!(events[1]["text"], "https://example.com/pricing?tier=2");
        variants.insert(events[0]["text"].as_str().unwrap_or_default().to_owned());
    }
    // Both variants show up over 20 conversations (odds of missing one: 1 in 500,000).
    assert_eq!(variants.len(), 2, "{variants:?}");

    let bad = json!({ "startBlockId": "s", "blocks": [
        { "id": "s", "kind": "SET_VARIABLE", "variable": "visitor", "next": "x" },
        { "id": "x", "kind": "SPLIT", "branches": [ { "weight": 0, "next": "r" } ], "next": "r" },
        { "id": "r", "kind": "REDIRECT", "url": "javascript:alert(1)" }
    ]});
    let body = save(&app, &owner, &bot, bad).await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    for expected in [
        (Some("s"), "variable"),
        (Some("s"), "value"),
        (Some("x"), "branches"),
        (Some("x"), "branches[0].weight"),
        (Some("x"), "next"),
        (Some("r"), "url"),
    ] {
        assert!(
            found
                .iter()
                .any(|(b, f)| b.as_deref() == expected.0 && f == expected.1),
            "{expected:?} not in {found:?}"
        );
    }
}

#[tokio::test]
async fn conditions_group_tests_with_all_and_any() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    // plan is pro AND (seats > 10 OR (region is eu AND seats > 5)).
    let flow = json!({ "startBlockId": "plan", "blocks": [
        { "id": "plan", "kind": "QUESTION", "text": "Plan?", "saveAnswerTo": "plan", "next": "seats" },
        { "id": "seats", "kind": "QUESTION", "text": "Seats?", "questionType": "NUMBER", "saveAnswerTo": "seats", "next": "region" },
        { "id": "region", "kind": "QUESTION", "text": "Region?", "saveAnswerTo": "region", "next": "route" },
        { "id": "route", "kind": "CONDITION", "conditions": [
            { "variable": "plan", "operator": "EQUALS", "value": "pro", "next": "big", "any": [
                { "variable": "seats", "operator": "GREATER_THAN", "value": "10" },
                { "all": [
                    { "variable": "region", "operator": "EQUALS", "value": "eu" },
                    { "variable": "seats", "operator": "GREATER_THAN", "value": "5" } ] } ] } ],
          "next": "small" },
        { "id": "big", "kind": "MESSAGE", "text": "big" },
        { "id": "small", "kind": "MESSAGE", "text": "small" }
    ]});
    let saved = app
        .gql(
            &owner.token,
            "mutation($b: ID!, $f: FlowInput!) { saveFlow(botId: $b, flow: $f) { flow { blocks { conditions { any { variable all { variable value } } } } } } }",
            json!({ "b": bot, "f": flow }),
        )
        .await;
    assert_ok(&saved);
    assert_eq!(
        saved["data"]["saveFlow"]["flow"]["blocks"][3]["conditions"][0]["any"][1]["all"][0],
        json!({ "variable": "region", "value": "eu" })
    );
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    for (answers, said) in [
        (["pro", "12", "us"], "big"),
        (["pro", "7", "EU"], "big"),
        (["pro", "7", "us"], "small"),
        (["free", "50", "eu"], "small"),
    ] {
        let (conv, token) = app.new_conversation(&bot).await;
        for answer in answers {
            assert_ok(&app.send_answer(&conv, &token, answer).await);
        }
        let seen = app.conversation(Some(&owner.token), &conv, None).await;
        let events = seen["data"]["conversation"]["events"]
            .as_array()
            .expect("events")
            .clone();
        assert!(
            events.iter().any(|e| e["text"] == said),
            "{answers:?} should say {said}: {events:?}"
        );
    }

    let bad = json!({ "startBlockId": "c", "blocks": [
        { "id": "c", "kind": "CONDITION", "conditions": [
            { "variable": "v", "operator": "IS_SET", "next": "e", "all": [ {} ], "any": [] } ] },
        { "id": "e", "kind": "END" }
    ]});
    let body = save(&app, &owner, &bot, bad).await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    for expected in ["conditions[0].all[0].operator", "conditions[0].any"] {
        assert!(
            found
                .iter()
                .any(|(b, f)| b.as_deref() == Some("c") && f == expected),
            "{expected:?} not in {found:?}"
        );
    }
}
