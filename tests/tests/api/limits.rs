//! What a stranger meets: every limit refuses with a clear error, and the server goes on
//! serving everyone else meanwhile.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

fn message(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A published bot with one TEXT question that loops back to itself.
async fn looping_bot(app: &TestApp, owner: &TestUser) -> String {
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Say something", "questionType": "EMAIL", "saveAnswerTo": "said", "next": "ask" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

async fn post_as(
    app: &TestApp,
    forwarded_for: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut req = app
        .client
        .post(format!("{}/graphql", app.addr))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.expect("sent").json().await.expect("JSON")
}

const START: &str = "mutation($b: ID!) { startConversation(botId: $b) { conversationId } }";
const LOG_IN: &str =
    "mutation($e: String!) { logIn(email: $e, password: \"wrong-password\") { token } }";

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_with_400_before_any_work() {
    let app = spawn_app_with(|s| s.limits.max_batch = 3).await;
    let op = |i: usize| json!({ "query": format!("mutation {{ logIn(email: \"u{i}@example.com\", password: \"wrong-password\") {{ token }} }}") });
    let big: Vec<Value> = (0..4).map(op).collect();
    let resp = app.post_raw(serde_json::to_vec(&big).expect("json")).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert_error(&body, "BAD_USER_INPUT");
    assert!(message(&body).contains("PARLEY_MAX_BATCH"), "{body}");

    let ok: Vec<Value> = (0..3).map(op).collect();
    let resp = app.post_raw(serde_json::to_vec(&ok).expect("json")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body.as_array().map(Vec::len), Some(3), "{body}");
}

#[tokio::test]
async fn a_query_asking_for_a_million_nodes_is_refused_before_it_runs() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let huge = "query($b: ID!) { bot(id: $b) { conversations(first: 100) { edges { node { bot { conversations(first: 100) { edges { node { bot { conversations(first: 100) { edges { node { id answers } } } } } } } } } } } } }";
    let body = app.gql(&owner.token, huge, json!({ "b": bot })).await;
    assert_error(&body, "BAD_USER_INPUT");
    assert!(message(&body).contains("PARLEY_MAX_QUERY_COST"), "{body}");
    assert!(body["data"].is_null(), "nothing ran: {body}");

    // A dashboard's ordinary page still passes.
    let fine = "query($b: ID!) { bot(id: $b) { name versions { version } conversations(first: 50) { edges { node { id status answers } } } } }";
    assert_ok(&app.gql(&owner.token, fine, json!({ "b": bot })).await);
}

#[tokio::test]
async fn the_same_query_text_is_costed_by_each_requests_own_page_sizes() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let paged = "query($b: ID!, $n: Int!) { bot(id: $b) { conversations(first: $n) { edges { node { bot { conversations(first: $n) { edges { node { bot { conversations(first: $n) { edges { node { id } } } } } } } } } } } } }";
    // Passed twice with the same variables: the second takes the first's validation.
    for _ in 0..2 {
        assert_ok(
            &app.gql(&owner.token, paged, json!({ "b": bot, "n": 1 }))
                .await,
        );
    }
    // The text passed; with a page size of 100 it asks for a million nodes.
    let body = app
        .gql(&owner.token, paged, json!({ "b": bot, "n": 100 }))
        .await;
    assert_error(&body, "BAD_USER_INPUT");
    assert!(message(&body).contains("PARLEY_MAX_QUERY_COST"), "{body}");
    assert_ok(
        &app.gql(&owner.token, paged, json!({ "b": bot, "n": 2 }))
            .await,
    );
    // A variable of the wrong type is refused after the same text passed, twice over.
    for _ in 0..2 {
        let body = app
            .gql(&owner.token, paged, json!({ "b": bot, "n": "many" }))
            .await;
        assert_error(&body, "BAD_USER_INPUT");
    }
    // Variables too large to be kept with the validation are checked in full each time.
    let long = "x".repeat(1000);
    for n in [1, 100] {
        let body = app
            .gql(
                &owner.token,
                paged,
                json!({ "b": bot, "n": n, "unused": long }),
            )
            .await;
        if n == 1 {
            assert_ok(&body);
        } else {
            assert!(message(&body).contains("PARLEY_MAX_QUERY_COST"), "{body}");
        }
    }
}

#[tokio::test]
async fn a_named_operation_is_checked_with_its_own_name_and_variables_every_time() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let paged = "query Paged($b: ID!, $n: Int!) { bot(id: $b) { conversations(first: $n) { edges { node { id } } } } }";
    let named = |operation: &'static str, b: Value| {
        app.gql_named(&owner.token, paged, operation, json!({ "b": b, "n": 1 }))
    };
    for _ in 0..2 {
        assert_ok(&named("Paged", json!(bot)).await);
    }
    // Under another name the operation is not the one asked for, so its variables' values are
    // not checked: that must not stand for the operation itself with the same variables.
    for operation in ["Other", "Paged", "Other", "Paged"] {
        let body = named(operation, json!(true)).await;
        assert!(body["data"].is_null(), "{operation}: {body}");
        assert_error(&body, "BAD_USER_INPUT");
        if operation == "Paged" {
            assert!(message(&body).contains("Invalid value"), "{body}");
        }
    }
}

#[tokio::test]
async fn a_query_without_variables_is_answered_or_refused_the_same_every_time() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    for _ in 0..3 {
        let body = app
            .gql(&owner.token, "{ me { id email } }", json!({}))
            .await;
        assert_ok(&body);
        assert_eq!(body["data"]["me"]["email"], owner.email.as_str(), "{body}");
        let body = app.gql(&owner.token, "{ me { id nope } }", json!({})).await;
        assert_error(&body, "BAD_USER_INPUT");
        let q = "{ me { memberships { account { members { user { memberships { account { bots { conversations(first: 100) { edges { node { id } } } } } } } } } } } }";
        let body = app.gql(&owner.token, q, json!({})).await;
        assert!(message(&body).contains("PARLEY_MAX_QUERY_COST"), "{body}");
    }
}

#[tokio::test]
async fn nested_unpaged_lists_cost_as_lists() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let q = "{ me { memberships { account { members { user { memberships { account { bots { conversations(first: 100) { edges { node { id } } } } } } } } } } } }";
    let body = app.gql(&owner.token, q, json!({})).await;
    assert_error(&body, "BAD_USER_INPUT");
    assert!(message(&body).contains("PARLEY_MAX_QUERY_COST"), "{body}");
}

#[tokio::test]
async fn password_work_past_the_queue_is_refused_at_once_and_others_are_served() {
    let app = spawn_app_with(|s| s.limits.password_queue = 1).await;
    let user = app.new_user().await;
    let attempts = (0..12).map(|i| {
        let app = &app;
        async move {
            let email = format!("nobody{i}@example.com");
            post_as(app, None, LOG_IN, json!({ "e": email })).await
        }
    });
    let (bodies, me) = tokio::join!(
        futures_util::future::join_all(attempts),
        app.me(&user.token)
    );
    assert_ok(&me);
    let codes: Vec<&str> = bodies.iter().map(error_code).collect();
    assert!(codes.contains(&"UNAUTHENTICATED"), "{codes:?}");
    let refused: Vec<&Value> = bodies
        .iter()
        .filter(|b| error_code(b) == "RATE_LIMITED")
        .collect();
    assert!(
        !refused.is_empty(),
        "12 hashes at once with a queue of 1: {codes:?}"
    );
    assert!(
        message(refused[0]).contains("PARLEY_PASSWORD_QUEUE"),
        "{}",
        refused[0]
    );
}

#[tokio::test]
async fn log_ins_are_limited_per_address_more_tightly_than_per_email() {
    let app = spawn_app_with(|s| {
        s.limits.login_per_address = 3;
        s.limits.login_per_email = 100;
        s.limits.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    app.sign_up("owner@example.com").await;
    for i in 0..3 {
        let body = post_as(
            &app,
            Some("198.51.100.1"),
            LOG_IN,
            json!({ "e": format!("x{i}@example.com") }),
        )
        .await;
        assert_error(&body, "UNAUTHENTICATED");
    }
    let body = post_as(
        &app,
        Some("198.51.100.1"),
        LOG_IN,
        json!({ "e": "owner@example.com" }),
    )
    .await;
    assert_error(&body, "RATE_LIMITED");
    assert!(
        message(&body).contains("PARLEY_LOGIN_RATE_LIMIT_PER_ADDRESS"),
        "{body}"
    );
    // The owner, from their own address, is not locked out by the stranger's burst.
    let body = post_as(
        &app,
        Some("203.0.113.5"),
        "mutation { logIn(email: \"owner@example.com\", password: \"correct horse battery\") { token } }",
        json!({}),
    )
    .await;
    assert_ok(&body);
}

#[tokio::test]
async fn a_forwarded_address_counts_only_behind_a_trusted_proxy() {
    let app = spawn_app_with(|s| s.limits.visitor_rate_limit = 2).await;
    let owner = app.new_user().await;
    let bot = looping_bot(&app, &owner).await;
    // No trusted proxies: the header is the client's own claim, and every request is 127.0.0.1.
    for ip in ["192.0.2.1", "192.0.2.2"] {
        assert_ok(&post_as(&app, Some(ip), START, json!({ "b": bot })).await);
    }
    let body = post_as(&app, Some("192.0.2.3"), START, json!({ "b": bot })).await;
    assert_error(&body, "RATE_LIMITED");
}

#[tokio::test]
async fn new_conversations_are_limited_per_client_address() {
    let app = spawn_app_with(|s| {
        s.limits.visitor_rate_limit = 3;
        s.limits.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let owner = app.new_user().await;
    let bot = looping_bot(&app, &owner).await;
    for _ in 0..3 {
        assert_ok(&post_as(&app, Some("198.51.100.7"), START, json!({ "b": bot })).await);
    }
    let body = post_as(&app, Some("198.51.100.7"), START, json!({ "b": bot })).await;
    assert_error(&body, "RATE_LIMITED");
    let text = message(&body);
    assert!(
        text.contains("PARLEY_VISITOR_RATE_LIMIT") && text.contains("retry in"),
        "{text}"
    );
    // An honest visitor elsewhere is served meanwhile.
    assert_ok(&post_as(&app, Some("203.0.113.9"), START, json!({ "b": bot })).await);
}

#[tokio::test]
async fn answers_are_limited_per_conversation() {
    let app = spawn_app_with(|s| s.limits.answer_rate_limit = 3).await;
    let owner = app.new_user().await;
    let bot = looping_bot(&app, &owner).await;
    let (conv, token) = app.new_conversation(&bot).await;
    for _ in 0..3 {
        assert_ok(&app.send_answer(&conv, &token, "jo@example.com").await);
    }
    let body = app.send_answer(&conv, &token, "jo@example.com").await;
    assert_error(&body, "RATE_LIMITED");
    assert!(
        message(&body).contains("PARLEY_ANSWER_RATE_LIMIT"),
        "{body}"
    );
    // A wrong token does not spend the budget of another conversation.
    let (other, other_token) = app.new_conversation(&bot).await;
    assert_error(
        &app.send_answer(&other, "wrong", "x@example.com").await,
        "NOT_FOUND",
    );
    assert_ok(
        &app.send_answer(&other, &other_token, "jo@example.com")
            .await,
    );
}

#[tokio::test]
async fn a_conversation_past_its_event_limit_ends_and_says_why() {
    let app = spawn_app_with(|s| s.limits.max_conversation_events = 10).await;
    let owner = app.new_user().await;
    let bot = looping_bot(&app, &owner).await;
    let (conv, token) = app.new_conversation(&bot).await;
    // Each invalid answer adds two events (the answer, the complaint) and the question again.
    let mut refused = None;
    for _ in 0..10 {
        let body = app.send_answer(&conv, &token, "not an email").await;
        if body["errors"].is_array() {
            refused = Some(body);
            break;
        }
    }
    let refused = refused.expect("the conversation ended before 10 answers");
    assert_error(&refused, "CONFLICT");
    let body = app.conversation(Some(&owner.token), &conv, None).await;
    let c = &body["data"]["conversation"];
    assert_eq!(c["status"], "COMPLETED", "{body}");
    let events = c["events"].as_array().expect("events");
    assert_eq!(events.len(), 10, "{events:?}");
    let last = events.last().expect("last");
    assert_eq!(last["kind"], "ENDED");
    assert!(
        last["text"]
            .as_str()
            .unwrap_or_default()
            .contains("limit of 10"),
        "{last}"
    );
}

#[tokio::test]
async fn webhook_payloads_carry_the_last_hundred_messages_and_say_they_were_cut() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (hook, webhook) = app.answering_hook(&owner, json!({})).await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Again?", "saveAnswerTo": "said", "choices": [
            { "label": "more", "next": "ask" }, { "label": "stop", "next": "hook" } ], "questionType": "CHOICE" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "end" },
        { "id": "end", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (conv, token) = app.new_conversation(&bot).await;
    for _ in 0..60 {
        assert_ok(&app.send_answer(&conv, &token, "more").await);
    }
    assert_ok(&app.send_answer(&conv, &token, "stop").await);
    let got = hook.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    let messages = body["conversation"]["messages"]
        .as_array()
        .expect("messages");
    assert_eq!(messages.len(), 100);
    assert_eq!(body["conversation"]["messages_truncated"], true);
    // The latest message is the last answer; none is repeated.
    assert_eq!(messages[99]["text"], "stop");
    let seqs: Vec<i64> = messages.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "{seqs:?}");

    // A short conversation says it is whole.
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "stop").await);
    let got = hook.received_requests().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&got[1].body).expect("JSON");
    assert_eq!(body["conversation"]["messages_truncated"], false);
}

#[tokio::test]
async fn accounts_have_quotas_on_bots_webhooks_and_flow_size() {
    let app = spawn_app_with(|s| {
        s.limits.max_bots_per_account = 2;
        s.limits.max_webhooks_per_account = 1;
        s.limits.max_flow_blocks = 3;
        s.limits.max_flow_bytes = 2000;
    })
    .await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    app.new_bot(&owner).await;
    let body = app
        .create_bot(&owner.token, &owner.account_id, "third")
        .await;
    assert_error(&body, "RATE_LIMITED");
    assert!(
        message(&body).contains("PARLEY_MAX_BOTS_PER_ACCOUNT"),
        "{body}"
    );

    app.new_webhook(&owner, "http://127.0.0.1:9/a").await;
    let body = app
        .create_webhook(
            &owner.token,
            &owner.account_id,
            json!({ "name": "two", "url": "http://127.0.0.1:9/b" }),
        )
        .await;
    assert_error(&body, "RATE_LIMITED");
    assert!(
        message(&body).contains("PARLEY_MAX_WEBHOOKS_PER_ACCOUNT"),
        "{body}"
    );

    let blocks: Vec<Value> = (0..4)
        .map(|i| json!({ "id": format!("m{i}"), "kind": "MESSAGE", "text": "x".repeat(600), "next": if i < 3 { Value::from(format!("m{}", i + 1)) } else { Value::Null } }))
        .collect();
    let body = app
        .save_flow(
            &owner.token,
            &bot,
            json!({ "startBlockId": "m0", "blocks": blocks }),
            None,
        )
        .await;
    assert_error(&body, "BAD_USER_INPUT");
    let found = problems(&body);
    assert!(found.iter().any(|(_, f)| f == "flow"), "{found:?}");
    assert!(body.to_string().contains("PARLEY_MAX_FLOW_BYTES"), "{body}");
}

#[tokio::test]
async fn a_request_past_its_deadline_is_cancelled_but_the_turn_it_began_completes() {
    let app = spawn_app_with(|s| {
        s.limits.request_timeout = Duration::from_secs(1);
        s.delivery.sync_timeout = Duration::from_secs(5);
    })
    .await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({ "responses": [{ "type": "text", "text": "slow but sure" }] }),
                )
                .set_delay(Duration::from_millis(2500)),
        )
        .mount(&hook)
        .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = app.new_bot(&owner).await;
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Order?", "saveAnswerTo": "order", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "end" },
        { "id": "end", "kind": "END" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    let (conv, token) = app.new_conversation(&bot).await;

    let started = Instant::now();
    let resp = app
        .client
        .post(format!("{}/graphql", app.addr))
        .json(&json!({
            "query": "mutation($c: ID!, $t: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: \"A-1\") { seq } }",
            "variables": { "c": conv, "t": token }
        }))
        .send()
        .await
        .expect("sent");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("JSON");
    assert_error(&body, "RATE_LIMITED");
    assert!(
        message(&body).contains("PARLEY_REQUEST_TIMEOUT_SECS"),
        "{body}"
    );

    // Nothing is lost: the turn finishes and the visitor sees the reply.
    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let events = sub.events(4).await;
    assert_eq!(
        kinds(&events),
        ["QUESTION", "VISITOR_MESSAGE", "BOT_MESSAGE", "ENDED"]
    );
    assert_eq!(events[2]["text"], "slow but sure");
}

#[tokio::test]
async fn a_flood_of_requests_from_one_address_is_turned_away_before_parsing() {
    let app = spawn_app_with(|s| {
        s.limits.request_rate_limit = 5;
        // Held refusals let the budget refill meanwhile; this test counts them.
        s.limits.rate_limit_delay = Duration::ZERO;
        s.limits.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = app
            .client
            .post(format!("{}/graphql", app.addr))
            .header("x-forwarded-for", "198.51.100.9")
            .header("content-type", "application/json")
            // Not even JSON: a refusal by the limit never reads it.
            .body("garbage")
            .send()
            .await
            .expect("sent");
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
            let body: Value = resp.json().await.expect("JSON");
            assert_error(&body, "RATE_LIMITED");
            assert!(
                message(&body).contains("PARLEY_REQUEST_RATE_LIMIT"),
                "{body}"
            );
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    // Someone else is served meanwhile.
    assert_ok(&post_as(&app, Some("203.0.113.1"), "{ __typename }", json!({})).await);
}

#[tokio::test]
async fn a_client_past_the_request_limit_is_answered_late_while_others_are_served_at_once() {
    let delay = Duration::from_millis(400);
    let app = spawn_app_with(|s| {
        // One a second: the budget does not refill while the test runs up to its refusal.
        s.limits.request_rate_limit = 1;
        s.limits.rate_limit_delay = delay;
        s.limits.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let flood = || {
        app.client
            .post(format!("{}/graphql", app.addr))
            .header("x-forwarded-for", "198.51.100.7")
            .header("content-type", "application/json")
            .body(json!({ "query": "{ __typename }" }).to_string())
            .send()
    };
    assert_eq!(flood().await.expect("sent").status(), 200);
    let refused_at = Instant::now();
    let (refused, other) = tokio::join!(flood(), async {
        // Asked while the refusal is held: not queued behind it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = Instant::now();
        let body = post_as(&app, Some("203.0.113.2"), "{ __typename }", json!({})).await;
        (body, asked.elapsed())
    });
    let refused = refused.expect("sent");
    let held = refused_at.elapsed();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("JSON");
    assert_error(&body, "RATE_LIMITED");
    assert!(held >= delay, "answered after {held:?}, before the delay");
    let (other, took) = other;
    assert_ok(&other);
    assert!(took < delay, "another client waited {took:?}");
}
