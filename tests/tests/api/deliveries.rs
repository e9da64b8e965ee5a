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

fn attempts(d: &Value) -> Vec<Value> {
    d["attempts"].as_array().cloned().unwrap_or_default()
}

fn settled(list: &[Value]) -> bool {
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

/// A raw HTTP endpoint that answers 200 `{"seen":"yes"}` after `delay`, and records the most
/// requests it had in flight at once.
async fn slow_endpoint(
    delay: Duration,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().expect("addr").port()
    );
    let (now, max, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (n2, m2, d2) = (now.clone(), max.clone(), done.clone());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut sock, _)) = listener.accept().await {
            let (now, max, done) = (n2.clone(), m2.clone(), d2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 14\r\nconnection: close\r\n\r\n{\"seen\":\"yes\"}",
                    )
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, max, done)
}

#[tokio::test]
async fn one_slow_endpoint_gets_a_bounded_share_and_does_not_starve_the_others() {
    let app = spawn_app_with(|s| s.delivery.per_webhook_concurrency = 2).await;
    let owner = app.new_user().await;
    let (slow_url, slow_max, _) = slow_endpoint(Duration::from_millis(700)).await;
    let (fast_url, _, fast_done) = slow_endpoint(Duration::from_millis(1)).await;
    let (slow_bot, slow_hook) = async_bot(&app, &owner, &slow_url).await;
    let (fast_bot, _) = async_bot(&app, &owner, &fast_url).await;
    for _ in 0..6 {
        app.new_conversation(&slow_bot).await;
    }
    for _ in 0..5 {
        app.new_conversation(&fast_bot).await;
    }
    // The fast endpoint's deliveries all arrive while the slow one still has a backlog.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fast_done.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast endpoint was starved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = app.deliveries(&owner.token, &slow_hook).await;
    assert!(
        slow.iter().any(|d| d["status"] == "PENDING"),
        "the slow backlog drained too early to tell"
    );
    app.wait_deliveries(&owner.token, &slow_hook, |l| l.len() == 6 && settled(l))
        .await;
    assert_eq!(
        slow_max.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the per-webhook cap was not kept"
    );
}

/// A published bot whose flow starts with a sync call to a new webhook at `url`, then says
/// "after: {{seen}}" and ends.
async fn sync_bot(app: &TestApp, owner: &TestUser, url: &str) -> (String, String) {
    let webhook = app.new_webhook(owner, url).await;
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "hook", "blocks": [
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": false, "next": "after" },
        { "id": "after", "kind": "MESSAGE", "text": "after: {{seen}}", "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    (bot, webhook)
}

/// Starts `n` conversations on `bots` (round robin) at once; returns their (id, token).
async fn start_together(app: &TestApp, bots: &[&str], n: usize) -> Vec<(String, String)> {
    let starts = (0..n).map(|i| app.start_conversation(bots[i % bots.len()], Value::Null));
    futures_util::future::join_all(starts)
        .await
        .iter()
        .map(|body| {
            let s = &body["data"]["startConversation"];
            assert!(s.is_object(), "startConversation failed: {body}");
            (
                s["conversationId"].as_str().expect("id").to_owned(),
                s["visitorToken"].as_str().expect("token").to_owned(),
            )
        })
        .collect()
}

/// The texts the bot said in a conversation, and its status.
async fn said(app: &TestApp, (id, token): &(String, String)) -> (Vec<String>, String) {
    let body = app.conversation(None, id, Some(token)).await;
    let c = &body["data"]["conversation"];
    let texts = c["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no conversation in {body}"))
        .iter()
        .filter(|e| e["kind"] == "BOT_MESSAGE")
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    (texts, c["status"].as_str().unwrap_or_default().to_owned())
}

/// The first attempt's error of a delivery.
fn first_error(d: &Value) -> String {
    attempts(d)
        .first()
        .and_then(|a| a["error"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn max_of(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> usize {
    n.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn a_sync_call_to_a_saturated_webhook_is_refused_recorded_and_the_conversation_goes_on() {
    let app = spawn_app_with(|s| s.delivery.per_webhook_concurrency = 1).await;
    let owner = app.new_user().await;
    let (url, max, _) = slow_endpoint(Duration::from_millis(1500)).await;
    let (bot, webhook) = sync_bot(&app, &owner, &url).await;

    let visitors = start_together(&app, &[&bot], 2).await;

    assert_eq!(
        max_of(&max),
        1,
        "the receiver had two calls in flight at once"
    );
    let list = app.deliveries(&owner.token, &webhook).await;
    assert_eq!(list.len(), 2, "every call is in the log: {list:#?}");
    assert!(list.iter().all(|d| d["mode"] == "SYNC"));
    let sent: Vec<&Value> = list.iter().filter(|d| d["status"] == "SUCCEEDED").collect();
    let refused: Vec<&Value> = list.iter().filter(|d| d["status"] == "FAILED").collect();
    assert_eq!((sent.len(), refused.len()), (1, 1), "{list:#?}");
    assert_eq!(attempts(refused[0]).len(), 1);
    assert_eq!(
        first_error(refused[0]),
        "not sent: 1 calls to this webhook already in flight (per-webhook limit)"
    );
    assert_eq!(attempts(refused[0])[0]["responseStatus"], Value::Null);

    // Both conversations went on past the webhook block: one with the reply, one without.
    let mut texts = Vec::new();
    for v in &visitors {
        let (said, status) = said(&app, v).await;
        assert_eq!(status, "COMPLETED");
        texts.extend(said);
    }
    texts.sort();
    assert_eq!(texts, vec!["after: ", "after: yes"]);
}

#[tokio::test]
async fn an_account_gets_no_more_sync_calls_at_once_than_its_cap_and_other_accounts_are_not_held_up()
 {
    let app = spawn_app_with(|s| s.limits.max_sync_calls_per_account = 1).await;
    let owner = app.new_user().await;
    let other = app.new_user().await;
    let (url_a, max_a, _) = slow_endpoint(Duration::from_millis(1500)).await;
    let (url_b, max_b, _) = slow_endpoint(Duration::from_millis(1500)).await;
    let (url_c, _, _) = slow_endpoint(Duration::from_millis(1500)).await;
    // Two webhooks of one account, so that only the account's cap can refuse.
    let (bot_a, hook_a) = sync_bot(&app, &owner, &url_a).await;
    let (bot_b, hook_b) = sync_bot(&app, &owner, &url_b).await;
    let (bot_c, hook_c) = sync_bot(&app, &other, &url_c).await;

    start_together(&app, &[&bot_a, &bot_b, &bot_c], 3).await;

    assert_eq!(
        max_of(&max_a) + max_of(&max_b),
        1,
        "two calls of one account at once"
    );
    let mut mine = app.deliveries(&owner.token, &hook_a).await;
    mine.extend(app.deliveries(&owner.token, &hook_b).await);
    let refused: Vec<&Value> = mine.iter().filter(|d| d["status"] == "FAILED").collect();
    assert_eq!((mine.len(), refused.len()), (2, 1), "{mine:#?}");
    assert_eq!(
        first_error(refused[0]),
        "not sent: 1 sync calls of this account already in flight \
         (account's sync-call limit, PARLEY_MAX_SYNC_CALLS_PER_ACCOUNT=1)"
    );
    let theirs = app.deliveries(&other.token, &hook_c).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["status"], "SUCCEEDED", "{theirs:#?}");
}

#[tokio::test]
async fn test_webhook_on_a_saturated_webhook_is_refused_and_a_redelivery_is_queued_until_a_slot_frees()
 {
    let app = spawn_app_with(|s| {
        s.delivery.per_webhook_concurrency = 1;
        s.delivery.async_timeout = Duration::from_secs(5);
    })
    .await;
    let owner = app.new_user().await;
    let (url, max, done) = slow_endpoint(Duration::from_millis(1200)).await;
    let (bot, webhook) = async_bot(&app, &owner, &url).await;
    for _ in 0..3 {
        app.new_conversation(&bot).await;
    }
    // The worker's first delivery is at the receiver.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while max_of(&max) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let q = "mutation($id: ID!) { testWebhook(id: $id) { id mode status attempts { responseStatus error } } }";
    let test = app.gql(&owner.token, q, json!({ "id": webhook })).await;
    assert_ok(&test);
    let t = &test["data"]["testWebhook"];
    assert_eq!(
        (t["mode"].as_str(), t["status"].as_str()),
        (Some("TEST"), Some("FAILED"))
    );
    assert_eq!(
        t["attempts"][0]["error"],
        "not sent: 1 calls to this webhook already in flight (per-webhook limit)"
    );

    let again = app
        .gql(
            &owner.token,
            "mutation($id: ID!) { redeliver(deliveryId: $id) { status nextAttemptAt attempts { error } } }",
            json!({ "id": t["id"] }),
        )
        .await;
    assert_ok(&again);
    let r = &again["data"]["redeliver"];
    assert_eq!(
        r["status"], "PENDING",
        "queued while the webhook is saturated: {r}"
    );
    assert!(r["nextAttemptAt"].is_string());
    assert_eq!(r["attempts"].as_array().map(Vec::len), Some(1));

    // The worker sends it when a slot frees: one attempt, nothing dropped, never two at once.
    let list = app
        .wait_deliveries(&owner.token, &webhook, |l| l.len() == 4 && settled(l))
        .await;
    assert!(list.iter().all(|d| d["status"] == "SUCCEEDED"), "{list:#?}");
    let test = list
        .iter()
        .find(|d| d["mode"] == "TEST")
        .expect("the test delivery");
    assert_eq!(attempts(test).len(), 2);
    assert_eq!(attempts(test)[1]["responseStatus"], 200);
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(max_of(&max), 1, "the per-webhook cap was not kept");
}

#[tokio::test]
async fn async_sync_and_test_calls_together_never_exceed_the_per_webhook_cap_at_the_receiver() {
    let app = spawn_app_with(|s| s.delivery.per_webhook_concurrency = 2).await;
    let owner = app.new_user().await;
    let (url, max, _) = slow_endpoint(Duration::from_millis(600)).await;
    let webhook = app.new_webhook(&owner, &url).await;
    let flow = |is_async: bool| {
        json!({ "startBlockId": "hook", "blocks": [
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": is_async, "next": "end" },
            { "id": "end", "kind": "END" } ] })
    };
    let mut bots = Vec::new();
    for is_async in [true, false] {
        let bot = app.new_bot(&owner).await;
        assert_ok(
            &app.save_flow(&owner.token, &bot, flow(is_async), None)
                .await,
        );
        assert_ok(&app.publish_bot(&owner.token, &bot).await);
        bots.push(bot);
    }
    let q = "mutation($id: ID!) { testWebhook(id: $id) { status } }";
    let tests = futures_util::future::join_all(
        (0..3).map(|_| app.gql(&owner.token, q, json!({ "id": webhook }))),
    );
    let both = [bots[0].as_str(), bots[1].as_str()];
    let (visitors, tests) = tokio::join!(start_together(&app, &both, 10), tests);
    tests.iter().for_each(assert_ok);

    // 5 async, 5 sync and 3 test deliveries, all in the log; the async ones all arrive.
    let list = app
        .wait_deliveries(&owner.token, &webhook, |l| l.len() == 13 && settled(l))
        .await;
    let of = |mode: &str| list.iter().filter(|d| d["mode"] == mode).count();
    assert_eq!((of("ASYNC"), of("SYNC"), of("TEST")), (5, 5, 3));
    for d in &list {
        match d["status"].as_str() {
            Some("SUCCEEDED") => {}
            _ => assert!(
                d["mode"] != "ASYNC" && first_error(d).ends_with("(per-webhook limit)"),
                "failed for another reason: {d:#?}"
            ),
        }
    }
    assert!(
        list.iter().any(|d| d["status"] == "FAILED"),
        "nothing was refused: the load did not saturate the webhook"
    );
    for v in &visitors {
        assert_eq!(said(&app, v).await.1, "COMPLETED");
    }
    assert_eq!(max_of(&max), 2, "the per-webhook cap was not kept");
}

#[tokio::test]
async fn a_visitors_sync_call_goes_before_the_outbox_backlog_of_its_webhook() {
    let app = spawn_app_with(|s| s.delivery.per_webhook_concurrency = 1).await;
    let owner = app.new_user().await;
    let (url, max, done) = slow_endpoint(Duration::from_millis(200)).await;
    let webhook = app.new_webhook(&owner, &url).await;
    let bot = |sync: bool| {
        json!({ "startBlockId": "hook", "blocks": [
            { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": !sync, "next": "after" },
            { "id": "after", "kind": "MESSAGE", "text": "after: {{seen}}", "next": "end" },
            { "id": "end", "kind": "END" } ] })
    };
    let mut bots = Vec::new();
    for sync in [false, true] {
        let id = app.new_bot(&owner).await;
        assert_ok(&app.save_flow(&owner.token, &id, bot(sync), None).await);
        assert_ok(&app.publish_bot(&owner.token, &id).await);
        bots.push(id);
    }
    // Eight async deliveries to the webhook (1.6 s of its one slot), then a visitor's call.
    start_together(&app, &[&bots[0]], 8).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let visitor = start_together(&app, &[&bots[1]], 1).await.remove(0);
    let (texts, _) = said(&app, &visitor).await;
    assert!(
        texts.iter().any(|t| t == "after: yes"),
        "the sync call waited behind the outbox and was refused: {texts:?}"
    );
    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        finished < 9,
        "the backlog was already sent ({finished} calls) before the visitor's turn"
    );
    assert_eq!(max_of(&max), 1, "the per-webhook cap was not kept");
}

#[tokio::test]
async fn a_sync_call_past_a_turns_limit_is_not_made_but_recorded_as_failed_saying_why() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (hook, webhook) = app.answering_hook(&owner, json!({})).await;
    let bot = app.new_bot(&owner).await;
    // Eleven sync calls in a row: one turn makes ten at most.
    let mut blocks: Vec<Value> = (0..11)
        .map(|i| {
            let next = if i == 10 {
                "end".to_owned()
            } else {
                format!("call{}", i + 1)
            };
            json!({ "id": format!("call{i}"), "kind": "WEBHOOK", "webhookId": webhook,
                    "async": false, "next": next })
        })
        .collect();
    blocks.push(json!({ "id": "end", "kind": "END" }));
    let flow = json!({ "startBlockId": "call0", "blocks": blocks });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);

    let started = start_together(&app, &[&bot], 1).await;
    let (_, status) = said(&app, &started[0]).await;
    assert_eq!(status, "COMPLETED");
    assert_eq!(hook.received_requests().await.unwrap_or_default().len(), 10);
    let list = app.deliveries(&owner.token, &webhook).await;
    let failed: Vec<&Value> = list.iter().filter(|d| d["status"] == "FAILED").collect();
    let succeeded = list.iter().filter(|d| d["status"] == "SUCCEEDED").count();
    assert_eq!((succeeded, failed.len()), (10, 1), "{list:#?}");
    assert_eq!(first_error(failed[0]), "too many webhook calls in one turn");
    assert_eq!(attempts(failed[0])[0]["responseStatus"], Value::Null);
}
