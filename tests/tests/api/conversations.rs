use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

async fn receiver(status: u16, body: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    server
}

/// A published bot whose flow is `flow` (webhook ids filled by the caller).
async fn published(app: &TestApp, owner: &TestUser, flow: Value) -> String {
    let bot = app.new_bot(owner).await;
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

#[tokio::test]
async fn the_seed_story_runs_end_to_end_with_a_signed_async_webhook() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = receiver(200, json!({ "ok": true })).await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, &format!("{}/hook", hook.uri()), true)
        .await;
    let (conv, token) = app.new_conversation(&bot).await;

    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let first = sub.events(2).await;
    assert_eq!(kinds(&first), ["BOT_MESSAGE", "QUESTION"]);
    assert_eq!(first[0]["text"], "Hi! Let's get in touch.");
    assert_eq!(first[1]["input"]["type"], "EMAIL");
    assert_eq!(
        (first[0]["seq"].clone(), first[1]["seq"].clone()),
        (json!(1), json!(2))
    );

    let bad = app.send_answer(&conv, &token, "not an email").await;
    assert_eq!(bad["data"]["sendAnswer"]["kind"], "VISITOR_MESSAGE");
    let retry = sub.events(3).await;
    assert_eq!(
        kinds(&retry),
        ["VISITOR_MESSAGE", "INVALID_ANSWER", "QUESTION"]
    );
    assert_eq!(retry[2]["text"], "What is your email?");

    assert_ok(&app.send_answer(&conv, &token, "jo@example.com").await);
    let phone = sub.events(2).await;
    assert_eq!(kinds(&phone), ["VISITOR_MESSAGE", "QUESTION"]);
    assert_eq!(phone[1]["input"]["type"], "PHONE");
    assert_ok(&app.send_answer(&conv, &token, "+33 6 12 34 56 78").await);
    let end = sub.events(2).await;
    assert_eq!(kinds(&end), ["VISITOR_MESSAGE", "ENDED"]);
    assert_eq!(end[1]["seq"], 9);
    sub.close().await;

    let req = received(&hook, 1).await.remove(0);
    let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(body["email"], "jo@example.com");
    assert_eq!(body["phone_number"], "+33 6 12 34 56 78");
    let c = &body["conversation"];
    assert_eq!(c["id"], conv.as_str());
    assert_eq!(c["bot_id"], bot.as_str());
    assert_eq!(c["bot_name"], "Lead bot");
    assert_eq!(c["account_id"], owner.account_id.as_str());
    assert!(c["started_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        c["answers"],
        json!({ "email": "jo@example.com", "phone_number": "+33 6 12 34 56 78" })
    );
    assert_eq!(c["variables"]["email"], "jo@example.com");
    let messages = c["messages"].as_array().expect("messages");
    assert_eq!(
        messages[0],
        json!({ "seq": 1, "from": "bot", "text": "Hi! Let's get in touch.", "at": messages[0]["at"] })
    );
    assert!(
        messages
            .iter()
            .any(|m| m["from"] == "visitor" && m["text"] == "jo@example.com")
    );

    let secret = app.signing_secret(&owner.token, &webhook).await;
    assert_eq!(matching_signatures(&req, &secret), 1);
    let verifier = standardwebhooks::Webhook::new(&secret).expect("secret");
    verifier
        .verify(&req.body, &req.headers)
        .expect("the reference library accepts the signature");
    assert_eq!(
        req.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some("k-123")
    );

    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(seen["data"]["conversation"]["status"], "COMPLETED");
    assert_eq!(
        seen["data"]["conversation"]["answers"]["phone_number"],
        "+33 6 12 34 56 78"
    );
    assert_eq!(
        seen["data"]["conversation"]["events"]
            .as_array()
            .map(Vec::len),
        Some(9)
    );
    let delivered = app
        .wait_deliveries(&owner.token, &webhook, |d| {
            d.len() == 1 && d[0]["status"] == "SUCCEEDED"
        })
        .await;
    assert_eq!(delivered[0]["mode"], "ASYNC");
    assert_eq!(delivered[0]["conversationId"], conv.as_str());
}

fn sync_flow(webhook: &str, after: Value) -> Value {
    let mut blocks = vec![
        json!({ "id": "ask", "kind": "QUESTION", "text": "Order number?", "saveAnswerTo": "order", "next": "hook" }),
        json!({ "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "after" }),
    ];
    blocks.extend(after.as_array().cloned().unwrap_or_default());
    json!({ "startBlockId": "ask", "blocks": blocks })
}

#[tokio::test]
async fn a_sync_webhook_reply_with_responses_makes_the_bot_speak() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = receiver(
        200,
        json!({ "responses": [
        { "type": "text", "text": "Order {{order}} ships tomorrow." },
        { "type": "set", "variables": { "eta": "tomorrow" } },
        { "type": "dance" },
        { "type": "text", "text": "ETA: {{eta}}" } ] }),
    )
    .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = published(
        &app,
        &owner,
        sync_flow(
            &webhook,
            json!([ { "id": "after", "kind": "MESSAGE", "text": "Anything else?" } ]),
        ),
    )
    .await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "A-42").await);

    let mut sub = app.watch(&conv, Some(&token), None, 0).await;
    let events = sub.events(6).await;
    assert_eq!(
        kinds(&events),
        [
            "QUESTION",
            "VISITOR_MESSAGE",
            "BOT_MESSAGE",
            "BOT_MESSAGE",
            "BOT_MESSAGE",
            "ENDED"
        ]
    );
    assert_eq!(events[2]["text"], "Order A-42 ships tomorrow.");
    assert_eq!(events[3]["text"], "ETA: tomorrow");
    assert_eq!(events[4]["text"], "Anything else?");

    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list[0]["mode"], "SYNC");
    assert_eq!(list[0]["status"], "SUCCEEDED");
    assert!(
        list[0]["attempts"][0]["notes"]
            .as_str()
            .unwrap_or_default()
            .contains("dance"),
        "{list:?}"
    );
    let req = received(&hook, 1).await.remove(0);
    let body: Value = serde_json::from_slice(&req.body).expect("JSON");
    assert_eq!(body["order"], "A-42");
    assert_eq!(
        matching_signatures(&req, &app.signing_secret(&owner.token, &webhook).await),
        1
    );
}

#[tokio::test]
async fn a_sync_webhook_reply_without_responses_sets_variables_used_by_texts_and_conditions() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = receiver(
        200,
        json!({ "delivery_status": "shipped", "order": { "carrier": "DHL" } }),
    )
    .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = published(&app, &owner, sync_flow(&webhook, json!([
        { "id": "after", "kind": "MESSAGE", "text": "Status: {{delivery_status}} via {{order.carrier}}", "next": "branch" },
        { "id": "branch", "kind": "CONDITION", "conditions": [ { "variable": "delivery_status", "operator": "EQUALS", "value": "shipped", "next": "yay" } ], "next": "nay" },
        { "id": "yay", "kind": "MESSAGE", "text": "On its way!" },
        { "id": "nay", "kind": "MESSAGE", "text": "Not yet." } ]))).await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "A-42").await);
    let mut sub = app.watch(&conv, Some(&token), None, 2).await;
    let events = sub.events(3).await;
    assert_eq!(kinds(&events), ["BOT_MESSAGE", "BOT_MESSAGE", "ENDED"]);
    assert_eq!(events[0]["text"], "Status: shipped via DHL");
    assert_eq!(events[1]["text"], "On its way!");
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["variables"]["delivery_status"],
        "shipped"
    );
}

/// One conversation through a bot that asks for an order number, calls `hook` synchronously,
/// then says "Status: {{delivery_status}}.": the conversation's id, the webhook's id, and the
/// two events after the answer.
async fn status_after_sync_call(
    app: &TestApp,
    owner: &TestUser,
    hook: &MockServer,
) -> (String, String, Vec<Value>) {
    let webhook = app
        .new_webhook(owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = published(
        app,
        owner,
        sync_flow(
            &webhook,
            json!([ { "id": "after", "kind": "MESSAGE", "text": "Status: {{delivery_status}}." } ]),
        ),
    )
    .await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "A-42").await);
    let mut sub = app.watch(&conv, Some(&token), None, 2).await;
    let events = sub.events(2).await;
    (conv, webhook, events)
}

#[tokio::test]
async fn a_failing_sync_webhook_lets_the_chat_go_on() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = receiver(500, json!({ "error": "boom" })).await;
    let (_, webhook, events) = status_after_sync_call(&app, &owner, &hook).await;
    assert_eq!(kinds(&events), ["BOT_MESSAGE", "ENDED"]);
    assert_eq!(events[0]["text"], "Status: .");
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list[0]["status"], "FAILED");
    assert_eq!(list[0]["attempts"][0]["responseStatus"], 500);
}

#[tokio::test]
async fn a_sync_webhook_reply_holding_a_nul_character_is_not_used_and_the_chat_goes_on() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = receiver(200, json!({ "delivery_status": "ship\u{0}ped" })).await;
    let (conv, webhook, events) = status_after_sync_call(&app, &owner, &hook).await;
    assert_eq!(kinds(&events), ["BOT_MESSAGE", "ENDED"]);
    assert_eq!(events[0]["text"], "Status: .");
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["status"], "COMPLETED",
        "{seen}"
    );
    assert!(
        seen["data"]["conversation"]["variables"]
            .get("delivery_status")
            .is_none(),
        "{seen}"
    );
    // The call itself is on record: FAILED, its notes say why, its body kept as sent (the
    // JSON escape).
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list[0]["status"], "FAILED", "{list:?}");
    let attempt = &list[0]["attempts"][0];
    assert_eq!(attempt["responseStatus"], 200, "{list:?}");
    assert!(
        attempt["notes"]
            .as_str()
            .is_some_and(|notes| notes.contains("NUL character")),
        "{list:?}"
    );
    assert!(
        attempt["responseBody"]
            .as_str()
            .is_some_and(|body| body.contains("ship\\u0000ped")),
        "{list:?}"
    );
}

#[tokio::test]
async fn answers_out_of_turn_get_clear_errors() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "e" }, { "id": "e", "kind": "END" } ] })).await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    let late = app.send_answer(&conv, &token, "again").await;
    assert_error(&late, "CONFLICT");
    assert!(
        late["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ended"),
        "{late}"
    );
    assert_error(
        &app.send_answer(&conv, "wrong-token", "x").await,
        "NOT_FOUND",
    );
    assert_error(
        &app.send_answer(&conv, &token, &"x".repeat(5000)).await,
        "BAD_USER_INPUT",
    );
}

#[tokio::test]
async fn a_resumed_subscription_replays_only_what_follows_after_seq() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(
        &app,
        &owner,
        json!({ "startBlockId": "m", "blocks": [
        { "id": "m", "kind": "MESSAGE", "text": "Hello", "next": "q" },
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "bye" },
        { "id": "bye", "kind": "MESSAGE", "text": "Bye {{name}}" } ] }),
    )
    .await;
    let (conv, token) = app.new_conversation(&bot).await;
    let mut sub = app.watch(&conv, Some(&token), None, 1).await;
    let replay = sub.events(1).await;
    assert_eq!(replay[0]["seq"], 2);
    sub.assert_quiet().await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    let live = sub.events(3).await;
    assert_eq!(
        live.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(),
        vec![json!(3), json!(4), json!(5)]
    );
    assert_eq!(live[1]["text"], "Bye Jo");
    sub.close().await;
    let mut again = app.watch(&conv, Some(&token), None, 3).await;
    let tail = again.events(2).await;
    assert_eq!(
        tail.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(),
        vec![json!(4), json!(5)]
    );
    assert_eq!(tail[1]["kind"], "ENDED");
    // An ended conversation's subscription completes.
    assert_eq!(
        again.message().await.map(|m| m["type"].clone()),
        Some(json!("complete"))
    );
}

#[tokio::test]
async fn concurrent_answers_are_serialised_without_losing_any() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Say something", "saveAnswerTo": "said", "next": "q" } ] })).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let answers = (0..20).map(|i| {
        let (app, conv, token) = (&app, conv.clone(), token.clone());
        async move { app.send_answer(&conv, &token, &format!("answer {i}")).await }
    });
    let results = futures_util::future::join_all(answers).await;
    for r in &results {
        assert_ok(r);
    }
    let seen = app.conversation(Some(&owner.token), &conv, None).await;
    let events = seen["data"]["conversation"]["events"]
        .as_array()
        .expect("events")
        .clone();
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=41).collect::<Vec<_>>(),
        "seq has gaps or repeats"
    );
    let visitor = events
        .iter()
        .filter(|e| e["kind"] == "VISITOR_MESSAGE")
        .count();
    assert_eq!(visitor, 20);
    for i in 0..20 {
        assert!(
            events.iter().any(|e| e["text"] == format!("answer {i}")),
            "answer {i} lost"
        );
    }
}

#[tokio::test]
async fn the_team_watches_conversations_live_and_lists_them() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let bot = published(&app, &owner, json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "e" }, { "id": "e", "kind": "END" } ] })).await;
    let mut team = app.subscribe(Some(&member.token), "subscription($a: ID!) { accountEvents(accountId: $a) { seq conversationId kind text } }", json!({ "a": owner.account_id })).await;
    // Let the subscription register before the conversation starts.
    team.assert_quiet().await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_eq!(team.event("accountEvents").await["kind"], "QUESTION");
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    let e = team.event("accountEvents").await;
    assert_eq!(
        (e["kind"].clone(), e["conversationId"].clone()),
        (json!("VISITOR_MESSAGE"), json!(conv))
    );
    assert_eq!(team.event("accountEvents").await["kind"], "ENDED");

    // A member watches one conversation with the bearer token instead of a visitor token.
    let mut watch = app.watch(&conv, None, Some(&member.token), 0).await;
    assert_eq!(watch.events(3).await.len(), 3);

    let (second, _) = app.new_conversation(&bot).await;
    let list = app.gql(&member.token, "query($b: ID!) { bot(id: $b) { conversations(first: 1) { edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } } }", json!({ "b": bot })).await;
    let page = &list["data"]["bot"]["conversations"];
    assert_eq!(page["edges"][0]["node"]["id"], second.as_str());
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    let next = app.gql(&member.token, "query($b: ID!, $a: String) { bot(id: $b) { conversations(first: 5, after: $a) { edges { node { id status } } pageInfo { hasNextPage } } } }", json!({ "b": bot, "a": page["pageInfo"]["endCursor"] })).await;
    assert_eq!(
        next["data"]["bot"]["conversations"]["edges"][0]["node"]["id"],
        conv.as_str()
    );
    assert_eq!(
        next["data"]["bot"]["conversations"]["edges"][0]["node"]["status"],
        "COMPLETED"
    );
    assert_eq!(
        next["data"]["bot"]["conversations"]["pageInfo"]["hasNextPage"],
        false
    );
    let active = app.gql(&member.token, "query($b: ID!) { bot(id: $b) { conversations(status: ACTIVE) { edges { node { id } } } } }", json!({ "b": bot })).await;
    assert_eq!(
        active["data"]["bot"]["conversations"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn strangers_and_wrong_tokens_are_refused_everywhere() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let stranger = app.new_user().await;
    let bot = published(
        &app,
        &owner,
        json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name" } ] }),
    )
    .await;
    let (conv, token) = app.new_conversation(&bot).await;

    let unpublished = app.new_bot(&owner).await;
    assert_error(
        &app.start_conversation(&unpublished, Value::Null).await,
        "BAD_USER_INPUT",
    );
    assert_error(
        &app.start_conversation("00000000-0000-0000-0000-000000000000", Value::Null)
            .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.start_conversation(&bot, json!([1, 2])).await,
        "BAD_USER_INPUT",
    );

    assert_eq!(
        app.conversation(Some(&stranger.token), &conv, None).await["data"]["conversation"],
        Value::Null
    );
    assert_eq!(
        app.conversation(None, &conv, Some("wrong")).await["data"]["conversation"],
        Value::Null
    );
    assert_eq!(
        app.conversation(None, &conv, Some(&token)).await["data"]["conversation"]["id"],
        conv.as_str()
    );
    assert_error(
        &app.conversation(None, &conv, None).await,
        "UNAUTHENTICATED",
    );
    assert_error(&app.send_answer(&conv, "wrong", "Jo").await, "NOT_FOUND");
    let list = app
        .gql(
            &stranger.token,
            "query($b: ID!) { bot(id: $b) { conversations { edges { node { id } } } } }",
            json!({ "b": bot }),
        )
        .await;
    assert_eq!(list["data"]["bot"], Value::Null);

    let mut sub = app.watch(&conv, Some("wrong"), None, 0).await;
    assert_eq!(sub.error_code().await, "NOT_FOUND");
    let mut sub = app.watch(&conv, None, Some(&stranger.token), 0).await;
    assert_eq!(sub.error_code().await, "NOT_FOUND");
    let mut sub = app.watch(&conv, None, None, 0).await;
    assert_eq!(sub.error_code().await, "UNAUTHENTICATED");
    let mut sub = app
        .subscribe(
            Some(&stranger.token),
            "subscription($a: ID!) { accountEvents(accountId: $a) { seq } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(sub.error_code().await, "NOT_FOUND");
    let mut sub = app
        .subscribe(
            None,
            "subscription($a: ID!) { accountEvents(accountId: $a) { seq } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(sub.error_code().await, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_conversation_keeps_its_version_across_a_publish() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let flow = |text: &str| {
        json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "m" },
        { "id": "m", "kind": "MESSAGE", "text": text } ] })
    };
    let bot = published(&app, &owner, flow("v1 says bye {{name}}")).await;
    let (old, old_token) = app.new_conversation(&bot).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot, flow("v2 says bye {{name}}"), None)
            .await,
    );
    assert_eq!(
        app.publish_bot(&owner.token, &bot).await["data"]["publishBot"]["version"],
        2
    );
    let (new, new_token) = app.new_conversation(&bot).await;

    assert_ok(&app.send_answer(&old, &old_token, "Jo").await);
    assert_ok(&app.send_answer(&new, &new_token, "Al").await);
    let old_seen = app.conversation(Some(&owner.token), &old, None).await;
    let new_seen = app.conversation(Some(&owner.token), &new, None).await;
    assert_eq!(old_seen["data"]["conversation"]["version"], 1);
    assert_eq!(
        old_seen["data"]["conversation"]["events"][2]["text"],
        "v1 says bye Jo"
    );
    assert_eq!(new_seen["data"]["conversation"]["version"], 2);
    assert_eq!(
        new_seen["data"]["conversation"]["events"][2]["text"],
        "v2 says bye Al"
    );
}

#[tokio::test]
async fn prefilled_variables_reach_templates() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, json!({ "startBlockId": "m", "blocks": [ { "id": "m", "kind": "MESSAGE", "text": "Hi {{visitor.first_name}} from {{visitor.utm.source}}" } ] })).await;
    let body = app
        .start_conversation(
            &bot,
            json!({ "first_name": "Jo", "utm": { "source": "ads" } }),
        )
        .await;
    let conv = body["data"]["startConversation"]["conversationId"]
        .as_str()
        .expect("id");
    let seen = app.conversation(Some(&owner.token), conv, None).await;
    assert_eq!(
        seen["data"]["conversation"]["events"][0]["text"],
        "Hi Jo from ads"
    );
    assert_eq!(seen["data"]["conversation"]["status"], "COMPLETED");
}

#[tokio::test]
async fn idle_conversations_are_marked_abandoned_and_keep_their_answers() {
    let app = spawn_app_with(|s| s.abandon_after = std::time::Duration::from_secs(1)).await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, json!({ "startBlockId": "a", "blocks": [
        { "id": "a", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "b" },
        { "id": "b", "kind": "QUESTION", "text": "Email?", "questionType": "EMAIL", "saveAnswerTo": "email" } ] })).await;
    let (conv, token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&conv, &token, "Jo").await);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = app.conversation(Some(&owner.token), &conv, None).await;
        if seen["data"]["conversation"]["status"] == "ABANDONED" {
            assert_eq!(seen["data"]["conversation"]["answers"]["name"], "Jo");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never abandoned: {seen}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_crash_during_a_sync_call_leaves_the_conversation_resumable() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "x": 1 }))
                .set_delay(std::time::Duration::from_secs(30)),
        )
        .mount(&hook)
        .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let bot = published(&app, &owner, sync_flow(&webhook, json!([ { "id": "after", "kind": "QUESTION", "text": "Still there?", "saveAnswerTo": "still" } ]))).await;
    let (conv, token) = app.new_conversation(&bot).await;
    let addr = app.addr.clone();
    let (c2, t2) = (conv.clone(), token.clone());
    // The answer's request hangs in the sync call; the server dies under it.
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{addr}/graphql"))
            .json(&json!({ "query": "mutation($c: ID!, $t: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: \"A-1\") { seq } }", "variables": { "c": c2, "t": t2 } }))
            .send()
            .await
    });
    received(&hook, 1).await;
    let settings = app.settings.clone();
    let db = app.crash();
    pending.abort();
    let app = start_on(db, settings).await;

    // Meanwhile the visitor is told the bot is busy, not that the conversation is broken.
    assert_error(&app.send_answer(&conv, &token, "hello?").await, "CONFLICT");
    // Recovery treats the cut-off call as failed and the flow goes on to its next block.
    let mut sub = app.watch(&conv, Some(&token), None, 2).await;
    let next = sub.event("conversationEvents").await;
    assert_eq!(
        (next["kind"].clone(), next["text"].clone()),
        (json!("QUESTION"), json!("Still there?"))
    );
    assert_ok(&app.send_answer(&conv, &token, "yes").await);
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list[0]["mode"], "SYNC");
    assert_eq!(list[0]["status"], "FAILED");
}

#[tokio::test]
async fn prefilled_values_cannot_pose_as_webhook_data_and_visitors_cannot_read_variables() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    // The webhook answers without `crm_id`: a condition on it must not see the visitor's forgery.
    let hook = receiver(200, json!({ "plan": "gold" })).await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let flow = json!({ "startBlockId": "hook", "blocks": [
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "check" },
        { "id": "check", "kind": "CONDITION", "conditions": [
            { "variable": "crm_id", "operator": "IS_SET", "next": "vip" } ], "next": "plain" },
        { "id": "vip", "kind": "MESSAGE", "text": "Welcome back, customer {{crm_id}}" },
        { "id": "plain", "kind": "MESSAGE", "text": "Hello {{visitor.name}}, plan {{plan}}" }
    ]});
    let bot = published(&app, &owner, flow).await;
    let body = app
        .start_conversation(
            &bot,
            json!({ "crm_id": "forged", "plan": "platinum", "name": "Jo" }),
        )
        .await;
    let s = &body["data"]["startConversation"];
    let (conv, token) = (
        s["conversationId"].as_str().expect("id"),
        s["visitorToken"].as_str().expect("token"),
    );
    let seen = app.conversation(Some(&owner.token), conv, None).await;
    let c = &seen["data"]["conversation"];
    assert_eq!(c["events"][0]["text"], "Hello Jo, plan gold", "{seen}");
    assert_eq!(c["variables"]["visitor"]["crm_id"], "forged");
    assert!(c["variables"].get("crm_id").is_none(), "{seen}");

    let mine = app
        .gql_anon(
            "query($id: ID!, $t: String) { conversation(id: $id, visitorToken: $t) { status answers variables } }",
            json!({ "id": conv, "t": token }),
        )
        .await;
    assert_eq!(error_code(&mine), "FORBIDDEN", "{mine}");
    assert!(!mine.to_string().contains("gold"), "{mine}");
    let transcript = app
        .gql_anon(
            "query($id: ID!, $t: String) { conversation(id: $id, visitorToken: $t) { status answers events { text } } }",
            json!({ "id": conv, "t": token }),
        )
        .await;
    assert_ok(&transcript);
    assert_eq!(transcript["data"]["conversation"]["status"], "COMPLETED");
}

#[tokio::test]
async fn a_start_on_a_bot_deleted_since_its_last_start_is_not_found() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, two_questions()).await;
    // The first start reads the bot; the second may go by what the server remembers of it.
    app.new_conversation(&bot).await;
    app.new_conversation(&bot).await;
    assert_eq!(
        app.delete_bot(&owner.token, &bot).await["data"]["deleteBot"],
        true
    );
    assert_error(
        &app.start_conversation(&bot, json!(null)).await,
        "NOT_FOUND",
    );
}

#[tokio::test]
async fn a_visitors_subscription_to_a_conversation_whose_bot_was_deleted_is_not_found() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(&app, &owner, two_questions()).await;
    // The server stepped these conversations just now and remembers them; the bot's deletion
    // takes them with it all the same.
    let (started, started_token) = app.new_conversation(&bot).await;
    let (answered, answered_token) = app.new_conversation(&bot).await;
    assert_ok(&app.send_answer(&answered, &answered_token, "Jo").await);
    assert_eq!(
        app.delete_bot(&owner.token, &bot).await["data"]["deleteBot"],
        true
    );
    // From the start, from the middle, and from the last event on.
    for (conv, token, after) in [
        (&started, &started_token, 0),
        (&answered, &answered_token, 1),
        (&answered, &answered_token, 3),
    ] {
        let mut sub = app.watch(conv, Some(token), None, after).await;
        assert_eq!(sub.error_code().await, "NOT_FOUND", "after {after}");
    }
}

#[tokio::test]
async fn an_answer_or_prefilled_variables_with_a_nul_character_are_refused_and_the_chat_goes_on() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published(
        &app,
        &owner,
        json!({ "startBlockId": "q", "blocks": [
        { "id": "q", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name" } ] }),
    )
    .await;
    for variables in [
        json!({ "ref": "a\u{0}b" }),
        json!({ "a\u{0}b": 1 }),
        json!({ "deep": [{ "x": "\u{0}" }] }),
    ] {
        assert_error(
            &app.start_conversation(&bot, variables).await,
            "BAD_USER_INPUT",
        );
    }
    let (conv, token) = app.new_conversation(&bot).await;
    let refused = app.send_answer(&conv, &token, "Ada\u{0}").await;
    assert_error(&refused, "BAD_USER_INPUT");
    // Nothing was taken: the same question still waits, and a clean answer is recorded.
    let answered = app.send_answer(&conv, &token, "Ada").await;
    assert_eq!(answered["data"]["sendAnswer"]["text"], "Ada", "{answered}");
}
