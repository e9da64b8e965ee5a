use std::time::Duration;

use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::helpers::*;

/// Mounts `first` for the first `n` requests to /hook, then `then`.
async fn sequence(server: &MockServer, first: ResponseTemplate, n: u64, then: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(first)
        .up_to_n_times(n)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(then)
        .with_priority(5)
        .mount(server)
        .await;
}

pub(crate) fn attempts(d: &Value) -> Vec<Value> {
    d["attempts"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn settled(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|d| d["status"] != "PENDING")
}

#[tokio::test]
async fn a_delivery_is_retried_after_server_errors_with_the_same_webhook_id() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    sequence(
        &hook,
        ResponseTemplate::new(500),
        2,
        ResponseTemplate::new(204),
    )
    .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;

    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "SUCCEEDED");
    let statuses: Vec<Value> = attempts(&list[0])
        .iter()
        .map(|a| a["responseStatus"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(500), json!(204)]);
    let got = hook.received_requests().await.unwrap_or_default();
    let ids: std::collections::HashSet<_> = got
        .iter()
        .filter_map(|r| {
            r.headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(ids.len(), 1, "retries keep their webhook-id");
    assert_eq!(
        ids.into_iter().next(),
        list[0]["messageId"].as_str().map(str::to_owned)
    );
}

#[tokio::test]
async fn a_client_error_fails_at_once_without_retry() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    sequence(
        &hook,
        ResponseTemplate::new(400).set_body_string("bad payload"),
        100,
        ResponseTemplate::new(204),
    )
    .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "FAILED");
    assert_eq!(list[0]["nextAttemptAt"], Value::Null);
    assert_eq!(attempts(&list[0]).len(), 1);
    assert_eq!(attempts(&list[0])[0]["responseBody"], "bad payload");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hook.received_requests().await.unwrap_or_default().len(), 1);
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_retry_after_delay() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    sequence(
        &hook,
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "SUCCEEDED");
    let a = attempts(&list[0]);
    assert_eq!(a.len(), 2);
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(a[i]["at"].as_str().expect("at")).expect("time")
    };
    let gap = at(1) - at(0);
    assert!(
        gap >= chrono::Duration::milliseconds(900),
        "retried after {gap} despite Retry-After: 1"
    );
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    // A raw endpoint whose first connection never answers (beyond the 2 s test deadline).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            let first = n == 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                if first {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let url = format!("http://127.0.0.1:{port}/hook");
    let (bot, webhook) = async_bot(&app, &owner, &url).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "SUCCEEDED");
    let a = attempts(&list[0]);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{a:?}"
    );
    assert!(
        a[0]["durationMs"].as_i64().unwrap_or_default() < 3000,
        "the 2 s deadline was not kept: {a:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_schedule_runs_out() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (bot, webhook) = async_bot(&app, &owner, &format!("http://127.0.0.1:{port}/hook")).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "FAILED");
    let a = attempts(&list[0]);
    // The first attempt and one per entry of the (three-step) test schedule.
    assert_eq!(a.len(), 4, "{a:?}");
    assert!(
        a.iter().all(|x| x["error"]
            .as_str()
            .unwrap_or_default()
            .contains("connection refused")),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", "/elsewhere"))
        .mount(&hook)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "FAILED");
    assert!(
        attempts(&list[0])[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("redirect")
    );
    let got = hook.received_requests().await.unwrap_or_default();
    assert!(
        got.iter().all(|r| r.url.path() == "/hook"),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn an_oversized_response_is_cut_off_at_64_kib() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(1024 * 1024)))
        .mount(&hook)
        .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    let list = app.wait_deliveries(&owner.token, &webhook, settled).await;
    assert_eq!(list[0]["status"], "SUCCEEDED");
    let body = attempts(&list[0])[0]["responseBody"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        body.len() >= 64 * 1024 && body.len() < 65 * 1024,
        "stored {} bytes",
        body.len()
    );
}

#[tokio::test]
async fn a_name_resolving_to_a_private_address_is_refused_at_connect_time() {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    // Saved while private addresses were allowed, called after they no longer are.
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let port = hook.address().port();
    let webhook = app
        .new_webhook(&owner, &format!("http://localhost:{port}/hook"))
        .await;
    let literal = app
        .new_webhook(&owner, &format!("http://127.0.0.1:{port}/hook"))
        .await;
    let mut settings = app.settings.clone();
    settings.allow_private_webhooks = false;
    let db = app.crash();
    let app = start_on(db, settings).await;

    for id in [&webhook, &literal] {
        let body = app.gql(&owner.token, "mutation($id: ID!) { testWebhook(id: $id) { status attempts { error responseStatus } } }", json!({ "id": id })).await;
        assert_ok(&body);
        let d = &body["data"]["testWebhook"];
        assert_eq!(d["status"], "FAILED");
        let error = d["attempts"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("PARLEY_ALLOW_PRIVATE_WEBHOOKS"), "{error}");
    }
    assert!(
        hook.received_requests()
            .await
            .unwrap_or_default()
            .is_empty(),
        "a private address was reached"
    );
}

#[tokio::test]
async fn deliveries_pending_or_in_flight_at_a_crash_arrive_after_a_restart() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
        .mount(&hook)
        .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    let mut conversations = Vec::new();
    for _ in 0..10 {
        conversations.push(app.new_conversation(&bot).await.0);
    }
    // Crash while requests are in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hook
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was sent before the crash"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let settings = app.settings.clone();
    let db = app.crash();
    let app = start_on(db, settings).await;

    let list = app
        .wait_deliveries(&owner.token, &webhook, |l| {
            l.len() == 10 && l.iter().all(|d| d["status"] == "SUCCEEDED")
        })
        .await;
    assert_eq!(list.len(), 10);
    let got = hook.received_requests().await.unwrap_or_default();
    let seen: std::collections::HashSet<String> = got
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["conversation"]["id"].as_str().map(str::to_owned))
        .collect();
    for c in &conversations {
        assert!(seen.contains(c), "the delivery of {c} never arrived");
    }
}

#[tokio::test]
async fn test_webhook_sends_a_signed_sample_and_redeliver_sends_again() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    sequence(
        &hook,
        ResponseTemplate::new(400),
        1,
        ResponseTemplate::new(200).set_body_string("thanks"),
    )
    .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let q = "mutation($id: ID!) { testWebhook(id: $id) { id mode status payload attempts { responseStatus responseBody } webhook { id } } }";
    let first = app.gql(&owner.token, q, json!({ "id": webhook })).await;
    assert_ok(&first);
    let d = &first["data"]["testWebhook"];
    assert_eq!(
        (d["mode"].clone(), d["status"].clone()),
        (json!("TEST"), json!("FAILED"))
    );
    assert_eq!(d["payload"]["email"], "jo@example.com");
    assert!(d["payload"]["conversation"]["messages"].is_array());

    let again = app.gql(&owner.token, "mutation($id: ID!) { redeliver(deliveryId: $id) { status attempts { responseStatus responseBody } } }", json!({ "id": d["id"] })).await;
    assert_ok(&again);
    let r = &again["data"]["redeliver"];
    assert_eq!(r["status"], "SUCCEEDED");
    assert_eq!(r["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["attempts"][1]["responseBody"], "thanks");

    let got = hook.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), 2);
    let secret = app.signing_secret(&owner.token, &webhook).await;
    for req in &got {
        standardwebhooks::Webhook::new(&secret)
            .expect("secret")
            .verify(&req.body, &req.headers)
            .expect("valid signature");
        assert_eq!(
            req.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert!(
            req.headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .starts_with("Parley")
        );
        assert_eq!(
            req.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some("k-123")
        );
    }
    assert_eq!(
        got[0].headers.get("webhook-id"),
        got[1].headers.get("webhook-id")
    );
}

#[tokio::test]
async fn after_a_rotation_calls_carry_a_signature_for_each_secret() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let webhook = app
        .new_webhook(&owner, &format!("{}/hook", hook.uri()))
        .await;
    let old = app.signing_secret(&owner.token, &webhook).await;
    assert_ok(&app.rotate_webhook_secret(&owner.token, &webhook).await);
    let new = app.signing_secret(&owner.token, &webhook).await;
    assert_ne!(old, new);
    assert_ok(
        &app.gql(
            &owner.token,
            "mutation($id: ID!) { testWebhook(id: $id) { status } }",
            json!({ "id": webhook }),
        )
        .await,
    );
    let req = hook.received_requests().await.unwrap_or_default().remove(0);
    let header = req
        .headers
        .get("webhook-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(header.split(' ').count(), 2, "{header}");
    assert_eq!(matching_signatures(&req, &old), 1);
    assert_eq!(matching_signatures(&req, &new), 1);
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .expect("secret")
            .verify(&req.body, &req.headers)
            .expect("verifies");
    }
}

#[tokio::test]
async fn the_delivery_log_pages_filters_and_is_scoped_to_the_team() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let stranger = app.new_user().await;
    let hook = MockServer::start().await;
    sequence(
        &hook,
        ResponseTemplate::new(400),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    for _ in 0..3 {
        app.new_conversation(&bot).await;
    }
    let list = app
        .wait_deliveries(&owner.token, &webhook, |l| l.len() == 3 && settled(l))
        .await;
    assert_eq!(list.iter().filter(|d| d["status"] == "FAILED").count(), 1);

    let page = |first: i64, after: Value, status: Value| {
        let app = &app;
        let token = member.token.clone();
        let webhook = webhook.clone();
        async move {
            app.gql(&token, "query($id: ID!, $f: Int, $a: String, $s: DeliveryStatus) { webhook(id: $id) { deliveries(first: $f, after: $a, status: $s) { edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } } }", json!({ "id": webhook, "f": first, "a": after, "s": status })).await
        }
    };
    let p1 = page(2, Value::Null, Value::Null).await;
    let d1 = &p1["data"]["webhook"]["deliveries"];
    assert_eq!(d1["edges"].as_array().map(Vec::len), Some(2));
    assert_eq!(d1["pageInfo"]["hasNextPage"], true);
    assert_eq!(d1["edges"][0]["node"]["id"], list[0]["id"], "newest first");
    let p2 = page(2, d1["pageInfo"]["endCursor"].clone(), Value::Null).await;
    assert_eq!(
        p2["data"]["webhook"]["deliveries"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        p2["data"]["webhook"]["deliveries"]["pageInfo"]["hasNextPage"],
        false
    );
    let failed = page(10, Value::Null, json!("FAILED")).await;
    assert_eq!(
        failed["data"]["webhook"]["deliveries"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_error(&page(0, Value::Null, Value::Null).await, "BAD_USER_INPUT");

    let failed_id = list
        .iter()
        .find(|d| d["status"] == "FAILED")
        .map(|d| d["id"].clone())
        .expect("a failed delivery");
    let redeliver = "mutation($id: ID!) { redeliver(deliveryId: $id) { status } }";
    assert_error(
        &app.gql(&member.token, redeliver, json!({ "id": failed_id }))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(
            &member.token,
            "mutation($id: ID!) { testWebhook(id: $id) { status } }",
            json!({ "id": webhook }),
        )
        .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql(&stranger.token, redeliver, json!({ "id": failed_id }))
            .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.gql(
            &stranger.token,
            "mutation($id: ID!) { testWebhook(id: $id) { status } }",
            json!({ "id": webhook }),
        )
        .await,
        "NOT_FOUND",
    );
    let peek = app
        .gql(
            &stranger.token,
            "query($id: ID!) { delivery(id: $id) { id } }",
            json!({ "id": failed_id }),
        )
        .await;
    assert_eq!(peek["data"]["delivery"], Value::Null);
    let mine = app
        .gql(
            &member.token,
            "query($id: ID!) { delivery(id: $id) { id status } }",
            json!({ "id": failed_id }),
        )
        .await;
    assert_eq!(mine["data"]["delivery"]["status"], "FAILED");
}

#[tokio::test]
async fn finished_deliveries_are_pruned_after_the_retention_period() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let (bot, webhook) = async_bot(&app, &owner, &format!("{}/hook", hook.uri())).await;
    app.new_conversation(&bot).await;
    app.wait_deliveries(&owner.token, &webhook, |l| l.len() == 1 && settled(l))
        .await;
    let mut settings = app.settings.clone();
    settings.delivery.retention = Duration::from_millis(500);
    let db = app.crash();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let app = start_on(db, settings).await;
    app.wait_deliveries(&owner.token, &webhook, <[Value]>::is_empty)
        .await;
}
