//! API keys: an account's own systems authenticate with `Bearer pk_…`, as a member of that
//! account with the key's role, over HTTP and WebSocket; a key never manages members or keys,
//! never reaches another account, and stops working when revoked.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const CREATE_KEY: &str = "mutation($a: ID!, $n: String!, $r: Role!) { createApiKey(accountId: $a, name: $n, role: $r) { key apiKey { id name role prefix createdAt lastUsedAt } } }";
const REVOKE_KEY: &str = "mutation($id: ID!) { revokeApiKey(id: $id) }";
const ACCOUNT_EVENTS: &str =
    "subscription($a: ID!) { accountEvents(accountId: $a) { seq kind text } }";

/// Creates a key as `token`; (key, id).
pub async fn new_api_key(
    app: &TestApp,
    token: &str,
    account_id: &str,
    role: &str,
) -> (String, String) {
    let body = app
        .gql(
            token,
            CREATE_KEY,
            json!({ "a": account_id, "n": "CRM sync", "r": role }),
        )
        .await;
    assert_ok(&body);
    let created = &body["data"]["createApiKey"];
    (
        created["key"].as_str().expect("key").to_owned(),
        created["apiKey"]["id"].as_str().expect("id").to_owned(),
    )
}

async fn account_name(app: &TestApp, token: &str, account_id: &str) -> Value {
    app.gql(
        token,
        "query($a: ID!) { account(id: $a) { id name bots { id } } }",
        json!({ "a": account_id }),
    )
    .await
}

/// Waits up to `limit` for `token` to be refused; how long it took.
async fn refused_within(app: &TestApp, token: &str, account_id: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let body = account_name(app, token, account_id).await;
        if body.get("errors").is_some() {
            assert_error(&body, "UNAUTHENTICATED");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the revoked key still worked after {:?}: {body}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_keys_whole_life() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let stranger = app.new_user().await;
    let strangers_bot = app.new_bot(&stranger).await;

    // Only OWNER and ADMIN create keys, and never an OWNER key.
    let body = app
        .gql(
            &member.token,
            CREATE_KEY,
            json!({ "a": owner.account_id, "n": "x", "r": "MEMBER" }),
        )
        .await;
    assert_error(&body, "FORBIDDEN");
    let body = app
        .gql(
            &owner.token,
            CREATE_KEY,
            json!({ "a": owner.account_id, "n": "x", "r": "OWNER" }),
        )
        .await;
    assert_error(&body, "BAD_USER_INPUT");
    let body = app
        .gql(
            &stranger.token,
            CREATE_KEY,
            json!({ "a": owner.account_id, "n": "x", "r": "ADMIN" }),
        )
        .await;
    assert_error(&body, "NOT_FOUND");

    // Shown once, as pk_…; listed by its prefix only.
    let body = app
        .gql(
            &owner.token,
            CREATE_KEY,
            json!({ "a": owner.account_id, "n": "CRM sync", "r": "ADMIN" }),
        )
        .await;
    assert_ok(&body);
    let created = &body["data"]["createApiKey"];
    let key = created["key"].as_str().expect("key").to_owned();
    let key_id = created["apiKey"]["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("pk_") && key.len() > 40, "{key}");
    let prefix = created["apiKey"]["prefix"].as_str().expect("prefix");
    assert!(key.starts_with(prefix) && prefix.len() < 16, "{prefix}");
    assert_eq!(created["apiKey"]["role"], "ADMIN");
    assert_eq!(created["apiKey"]["name"], "CRM sync");
    assert!(created["apiKey"]["lastUsedAt"].is_null());

    // Over HTTP, as an ADMIN of its account.
    let body = account_name(&app, &key, &owner.account_id).await;
    assert_ok(&body);
    assert_eq!(body["data"]["account"]["id"], json!(owner.account_id));
    let body = app
        .create_bot(&key, &owner.account_id, "Made by a key")
        .await;
    assert_ok(&body);
    let bot = body["data"]["createBot"]["id"]
        .as_str()
        .expect("bot")
        .to_owned();
    assert_ok(&app.bot(&key, &bot).await);
    let body = app
        .gql(
            &key,
            "query($a: ID!) { account(id: $a) { members { role user { email } } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_ok(&body);

    // Never members, keys or logins.
    assert_error(
        &app.invite_member(&key, &owner.account_id, "new@example.com", "MEMBER")
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.remove_member(&key, &owner.account_id, &member.user_id)
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(
            &key,
            CREATE_KEY,
            json!({ "a": owner.account_id, "n": "more", "r": "MEMBER" }),
        )
        .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(&key, REVOKE_KEY, json!({ "id": key_id })).await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(
            &key,
            "query($a: ID!) { account(id: $a) { apiKeys { id } } }",
            json!({ "a": owner.account_id }),
        )
        .await,
        "FORBIDDEN",
    );
    assert_error(&app.me(&key).await, "FORBIDDEN");
    assert_error(
        &app.gql(&key, "mutation { logOut }", json!({})).await,
        "FORBIDDEN",
    );
    assert_error(&app.create_account(&key, "Mine now").await, "FORBIDDEN");

    // Never another account.
    let body = app.account(&key, &stranger.account_id).await;
    assert!(body["data"]["account"].is_null(), "{body}");
    assert_error(
        &app.rename_bot(&key, &strangers_bot, "Taken").await,
        "NOT_FOUND",
    );
    assert_error(
        &app.create_bot(&key, &stranger.account_id, "Intruder").await,
        "NOT_FOUND",
    );
    let body = app.bot(&key, &strangers_bot).await;
    assert!(
        body["data"]["bot"].is_null() || error_code(&body) == "NOT_FOUND",
        "{body}"
    );

    // Over WebSocket: watches its account's live events.
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Hello?", "saveAnswerTo": "said", "next": "ask" }
    ]});
    assert_ok(&app.save_flow(&key, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&key, &bot).await);
    let mut watch = app
        .subscribe(Some(&key), ACCOUNT_EVENTS, json!({ "a": owner.account_id }))
        .await;
    let event = first_question(&app, &bot, &mut watch).await;
    assert_eq!(event["text"], "Hello?");
    // …and never another account's.
    let mut foreign = app
        .subscribe(
            Some(&key),
            ACCOUNT_EVENTS,
            json!({ "a": stranger.account_id }),
        )
        .await;
    assert_eq!(foreign.error_code().await, "NOT_FOUND");

    // Listed with its last use, to the minute.
    let started = Instant::now();
    let listed = loop {
        let body = app
            .gql(
                &owner.token,
                "query($a: ID!) { account(id: $a) { apiKeys { id name role prefix lastUsedAt } } }",
                json!({ "a": owner.account_id }),
            )
            .await;
        assert_ok(&body);
        let keys = body["data"]["account"]["apiKeys"].clone();
        if !keys[0]["lastUsedAt"].is_null() || started.elapsed() > Duration::from_secs(3) {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], json!(key_id));
    assert_eq!(listed[0]["prefix"], json!(prefix));
    assert!(listed[0]["lastUsedAt"].is_string(), "{listed}");
    // A MEMBER sees no keys.
    assert_error(
        &app.gql(
            &member.token,
            "query($a: ID!) { account(id: $a) { apiKeys { id } } }",
            json!({ "a": owner.account_id }),
        )
        .await,
        "FORBIDDEN",
    );
    // A stranger cannot revoke it.
    assert_error(
        &app.gql(&stranger.token, REVOKE_KEY, json!({ "id": key_id }))
            .await,
        "NOT_FOUND",
    );

    // Revoked: refused at once, and its subscription ends.
    let body = app
        .gql(&owner.token, REVOKE_KEY, json!({ "id": key_id }))
        .await;
    assert_ok(&body);
    assert_eq!(body["data"]["revokeApiKey"], true);
    assert_error(
        &account_name(&app, &key, &owner.account_id).await,
        "UNAUTHENTICATED",
    );
    let code = loop {
        let msg = watch.message().await.expect("the subscription ends");
        if msg["type"] == "next" && msg["payload"].get("errors").is_none() {
            continue;
        }
        let errors = if msg["type"] == "error" {
            msg["payload"].clone()
        } else {
            msg["payload"]["errors"].clone()
        };
        break errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    };
    assert_eq!(code, "UNAUTHENTICATED");
    let body = app
        .gql(
            &owner.token,
            "query($a: ID!) { account(id: $a) { apiKeys { id } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(body["data"]["account"]["apiKeys"], json!([]), "{body}");

    // Both recorded in the audit log.
    let body = app
        .gql(&owner.token, "query($a: ID!) { account(id: $a) { auditLog(first: 10) { edges { node { action targetId } } } } }", json!({ "a": owner.account_id }))
        .await;
    assert_ok(&body);
    let actions: Vec<(String, String)> = body["data"]["account"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["node"]["action"].as_str().unwrap_or_default().to_owned(),
                e["node"]["targetId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("apiKey.created".to_owned(), key_id.clone())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("apiKey.revoked".to_owned(), key_id.clone())),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_member_key_reads_but_does_not_manage() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let (key, _) = new_api_key(&app, &owner.token, &owner.account_id, "MEMBER").await;
    assert_ok(&app.bot(&key, &bot).await);
    assert_error(&app.rename_bot(&key, &bot, "Renamed").await, "FORBIDDEN");
    assert_error(
        &app.create_bot(&key, &owner.account_id, "New").await,
        "FORBIDDEN",
    );
    // An unknown key, or a login token's shape with the key's prefix, is refused.
    assert_error(
        &account_name(&app, "pk_not-a-real-key", &owner.account_id).await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_stops_working_on_another_within_a_second() {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // One instance only on SQLite.
        return;
    }
    let other = app.second_instance().await;
    let owner = app.new_user().await;
    let (key, key_id) = new_api_key(&app, &owner.token, &owner.account_id, "ADMIN").await;
    // The other instance knows the key (and caches it).
    assert_ok(&account_name(&other, &key, &owner.account_id).await);
    let mut watch = other
        .subscribe(Some(&key), ACCOUNT_EVENTS, json!({ "a": owner.account_id }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ok(
        &app.gql(&owner.token, REVOKE_KEY, json!({ "id": key_id }))
            .await,
    );
    let took = refused_within(&other, &key, &owner.account_id, Duration::from_millis(1500)).await;
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    assert_eq!(watch.error_code().await, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_key_is_rate_limited() {
    let app = spawn_app_with(|s| s.limits.api_key_rate_limit = 3).await;
    let owner = app.new_user().await;
    let (key, _) = new_api_key(&app, &owner.token, &owner.account_id, "MEMBER").await;
    for _ in 0..3 {
        assert_ok(&account_name(&app, &key, &owner.account_id).await);
    }
    let body = account_name(&app, &key, &owner.account_id).await;
    assert_error(&body, "RATE_LIMITED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("PARLEY_API_KEY_RATE_LIMIT")),
        "{body}"
    );
    // Login tokens are not counted against the key.
    assert_ok(&account_name(&app, &owner.token, &owner.account_id).await);
}

#[tokio::test]
async fn a_key_past_its_budget_is_answered_late_on_the_export_and_on_a_socket() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{
        Message, client::IntoClientRequest as _, http::HeaderValue,
    };
    let delay = Duration::from_millis(400);
    let app = spawn_app_with(|s| {
        s.limits.api_key_rate_limit = 2;
        s.limits.rate_limit_delay = delay;
    })
    .await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let (key, _) = new_api_key(&app, &owner.token, &owner.account_id, "MEMBER").await;
    for _ in 0..2 {
        assert_ok(&account_name(&app, &key, &owner.account_id).await);
    }

    let asked = Instant::now();
    let export = app
        .client
        .get(format!("{}/bots/{bot}/results.csv", app.addr))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request sent");
    let held = asked.elapsed();
    assert_eq!(export.status(), 429);
    assert_eq!(export.headers()["retry-after"], "1");
    let body: Value = export.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert!(held >= delay, "the export was refused after {held:?}");

    let mut req = format!("ws://127.0.0.1:{}/graphql", app.port)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } });
    let asked = Instant::now();
    ws.send(Message::text(init.to_string()))
        .await
        .expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s");
    let held = asked.elapsed();
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4403, "{frame:?}");
            assert!(
                frame.reason.contains("PARLEY_API_KEY_RATE_LIMIT"),
                "{frame:?}"
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(held >= delay, "the socket was refused after {held:?}");
    // A login token is neither counted nor held.
    let asked = Instant::now();
    assert_ok(&account_name(&app, &owner.token, &owner.account_id).await);
    assert!(asked.elapsed() < delay, "{:?}", asked.elapsed());
}
