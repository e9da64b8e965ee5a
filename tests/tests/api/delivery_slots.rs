//! Delivery slots: per-webhook and per-account caps on calls at once, and who gets a freed slot
//! first (a visitor's sync call, an admin's test, the outbox).
use std::time::Duration;

use serde_json::{Value, json};

use super::deliveries::{attempts, settled};
use crate::helpers::*;

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
