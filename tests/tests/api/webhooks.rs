use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_webhook_is_created_with_headers_and_a_signing_secret() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let body = app
        .create_webhook(&owner.token, &owner.account_id, json!({ "name": " CRM ", "url": "https://93.184.216.34/hooks", "headers": [ { "name": "Authorization", "value": "Bearer abc" }, { "name": "X-Team", "value": "sales" } ] }))
        .await;
    assert_ok(&body);
    let hook = &body["data"]["createWebhook"];
    assert_eq!(hook["name"], "CRM");
    assert_eq!(hook["url"], "https://93.184.216.34/hooks");
    assert_eq!(
        hook["headers"],
        json!([ { "name": "Authorization", "value": "Bearer abc" }, { "name": "X-Team", "value": "sales" } ])
    );
    let secret = hook["signingSecret"].as_str().expect("secret");
    let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64");
    assert!(bytes.len() >= 24, "secret has {} bytes", bytes.len());

    let other = app.new_webhook(&owner, "http://93.184.216.34/other").await;
    let listed = app
        .gql(
            &owner.token,
            "query($a: ID!) { account(id: $a) { webhooks { id name } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    let ids: Vec<&str> = listed["data"]["account"]["webhooks"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, vec![hook["id"].as_str().expect("id"), other.as_str()]);
    // Each webhook has its own secret.
    assert_ne!(
        app.webhook(&owner.token, &other).await["data"]["webhook"]["signingSecret"],
        hook["signingSecret"]
    );
}

#[tokio::test]
async fn a_webhook_is_updated_and_deleted() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let id = app.new_webhook(&owner, "http://93.184.216.34/a").await;
    let before = app.webhook(&owner.token, &id).await;
    let updated = app
        .update_webhook(
            &owner.token,
            &id,
            json!({ "name": "ERP", "url": "http://93.184.216.34/b" }),
        )
        .await;
    assert_ok(&updated);
    assert_eq!(
        updated["data"]["updateWebhook"]["url"],
        "http://93.184.216.34/b"
    );
    assert_eq!(updated["data"]["updateWebhook"]["headers"], json!([]));
    assert_eq!(
        updated["data"]["updateWebhook"]["signingSecret"],
        before["data"]["webhook"]["signingSecret"],
        "an update keeps the secret"
    );
    assert_eq!(
        app.delete_webhook(&owner.token, &id).await["data"]["deleteWebhook"],
        true
    );
    assert_eq!(
        app.webhook(&owner.token, &id).await["data"]["webhook"],
        Value::Null
    );
}

#[tokio::test]
async fn rotating_the_secret_gives_a_new_one() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let id = app.new_webhook(&owner, "http://93.184.216.34/a").await;
    let before = app.webhook(&owner.token, &id).await["data"]["webhook"]["signingSecret"].clone();
    let rotated = app.rotate_webhook_secret(&owner.token, &id).await;
    assert_ok(&rotated);
    let after = rotated["data"]["rotateWebhookSecret"]["signingSecret"].clone();
    assert_ne!(before, after);
    assert!(after.as_str().is_some_and(|s| s.starts_with("whsec_")));
}

#[tokio::test]
async fn bad_urls_and_headers_are_refused_with_every_problem() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    for url in [
        "ftp://93.184.216.34/x",
        "not a url",
        "http://",
        "https://user:pw@93.184.216.34/",
        "",
    ] {
        let body = app
            .create_webhook(
                &owner.token,
                &owner.account_id,
                json!({ "name": "x", "url": url }),
            )
            .await;
        assert_error(&body, "BAD_USER_INPUT");
        assert!(
            problems(&body).iter().any(|(_, f)| f == "url"),
            "{url}: {body}"
        );
    }
    let body = app
        .create_webhook(
            &owner.token,
            &owner.account_id,
            json!({ "name": "", "url": "http://93.184.216.34/", "headers": [
                { "name": "Content-Type", "value": "text/plain" },
                { "name": "webhook-signature", "value": "v1,x" },
                { "name": "Host", "value": "evil" },
                { "name": "Bad Name", "value": "x" },
                { "name": "X-Ok", "value": "line\nbreak" },
                { "name": "X-Dup", "value": "1" },
                { "name": "x-dup", "value": "2" } ] }),
        )
        .await;
    assert_error(&body, "BAD_USER_INPUT");
    let p: Vec<String> = problems(&body).into_iter().map(|(_, f)| f).collect();
    for field in [
        "name",
        "headers[0].name",
        "headers[1].name",
        "headers[2].name",
        "headers[3].name",
        "headers[4].value",
        "headers[6].name",
    ] {
        assert!(p.iter().any(|f| f == field), "missing {field} in {p:?}");
    }
    // Nothing was created.
    let listed = app
        .gql(
            &owner.token,
            "query($a: ID!) { account(id: $a) { webhooks { id } } }",
            json!({ "a": owner.account_id }),
        )
        .await;
    assert_eq!(listed["data"]["account"]["webhooks"], json!([]));
}

#[tokio::test]
async fn private_and_local_addresses_are_refused_unless_allowed() {
    let app = spawn_app_with(|s| s.allow_private_webhooks = false).await;
    let owner = app.new_user().await;
    for url in [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
        "http://10.1.2.3/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://localhost:8080/hook",
        "http://api.localhost/hook",
        "http://224.0.0.1/hook",
        "http://192.0.2.10/hook",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        loopback_names()
            .into_iter()
            .map(|n| format!("http://{n}/hook")),
    ) {
        let body = app
            .create_webhook(
                &owner.token,
                &owner.account_id,
                json!({ "name": "x", "url": url }),
            )
            .await;
        assert_error(&body, "BAD_USER_INPUT");
        let url = &url;
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("PARLEY_ALLOW_PRIVATE_WEBHOOKS"),
            "{url}: {message}"
        );
    }
    for url in [
        "http://93.184.216.34/hook",
        "https://8.8.8.8/x",
        "https://[2606:4700:4700::1111]/hook",
    ] {
        assert_ok(
            &app.create_webhook(
                &owner.token,
                &owner.account_id,
                json!({ "name": "x", "url": url }),
            )
            .await,
        );
    }
    // The same guard on update.
    let id = app.new_webhook(&owner, "http://93.184.216.34/ok").await;
    assert_error(
        &app.update_webhook(
            &owner.token,
            &id,
            json!({ "name": "x", "url": "http://10.0.0.1/" }),
        )
        .await,
        "BAD_USER_INPUT",
    );
}

#[tokio::test]
async fn private_addresses_are_accepted_when_the_setting_allows_them() {
    let app = spawn_app_with(|s| s.allow_private_webhooks = true).await;
    let owner = app.new_user().await;
    assert_ok(
        &app.create_webhook(
            &owner.token,
            &owner.account_id,
            json!({ "name": "dev", "url": "http://127.0.0.1:3000/hook" }),
        )
        .await,
    );
}

#[tokio::test]
async fn a_webhook_used_by_a_flow_cannot_be_deleted() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (bot, webhook) = app
        .published_seed_bot(&owner, "http://93.184.216.34/h", true)
        .await;
    let body = app.delete_webhook(&owner.token, &webhook).await;
    assert_error(&body, "CONFLICT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Lead bot"),
        "{body}"
    );

    // Still used by the published version after the draft stops using it.
    assert_ok(
        &app.save_flow(
            &owner.token,
            &bot,
            json!({ "startBlockId": "e", "blocks": [ { "id": "e", "kind": "END" } ] }),
            None,
        )
        .await,
    );
    assert_error(
        &app.delete_webhook(&owner.token, &webhook).await,
        "CONFLICT",
    );

    // Free once no draft or version of any bot uses it.
    let other = app.new_webhook(&owner, "http://93.184.216.34/o").await;
    let bot2 = app.new_bot(&owner).await;
    assert_ok(
        &app.save_flow(&owner.token, &bot2, seed_flow(&other, true), None)
            .await,
    );
    assert_ok(
        &app.save_flow(
            &owner.token,
            &bot2,
            json!({ "startBlockId": "e", "blocks": [ { "id": "e", "kind": "END" } ] }),
            None,
        )
        .await,
    );
    assert_ok(&app.delete_webhook(&owner.token, &other).await);
}

#[tokio::test]
async fn members_see_masked_secrets_and_cannot_change_webhooks() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let admin = app.add_member(&owner, "ADMIN").await;
    let id = app
        .new_webhook(&owner, "http://93.184.216.34:8443/services/T0/secret-path")
        .await;

    let seen = app.webhook(&member.token, &id).await;
    assert_ok(&seen);
    let hook = &seen["data"]["webhook"];
    // A Slack- or Zapier-style URL is a secret itself: MEMBERs see where, not which.
    assert_eq!(hook["url"], "http://93.184.216.34:8443");
    assert_eq!(hook["headers"][0]["name"], "X-Api-Key");
    assert_ne!(hook["headers"][0]["value"], "k-123");
    assert!(
        !hook["signingSecret"]
            .as_str()
            .unwrap_or_default()
            .starts_with("whsec_")
    );
    let admin_view = app.webhook(&admin.token, &id).await;
    assert_eq!(
        admin_view["data"]["webhook"]["url"],
        "http://93.184.216.34:8443/services/T0/secret-path"
    );
    assert_eq!(
        admin_view["data"]["webhook"]["headers"][0]["value"],
        "k-123"
    );

    let input = json!({ "name": "x", "url": "http://93.184.216.34/" });
    assert_error(
        &app.create_webhook(&member.token, &owner.account_id, input.clone())
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.update_webhook(&member.token, &id, input.clone()).await,
        "FORBIDDEN",
    );
    assert_error(
        &app.rotate_webhook_secret(&member.token, &id).await,
        "FORBIDDEN",
    );
    assert_error(&app.delete_webhook(&member.token, &id).await, "FORBIDDEN");
    assert_ok(
        &app.create_webhook(&admin.token, &owner.account_id, input.clone())
            .await,
    );
    assert_ok(&app.update_webhook(&admin.token, &id, input).await);
    assert_ok(&app.rotate_webhook_secret(&admin.token, &id).await);
    assert_ok(&app.delete_webhook(&admin.token, &id).await);
}

#[tokio::test]
async fn another_accounts_webhooks_are_not_found_for_every_operation() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let stranger = app.new_user().await;
    let id = app.new_webhook(&owner, "http://93.184.216.34/a").await;
    let input = json!({ "name": "x", "url": "http://93.184.216.34/" });
    assert_eq!(
        app.webhook(&stranger.token, &id).await["data"]["webhook"],
        Value::Null
    );
    assert_error(
        &app.create_webhook(&stranger.token, &owner.account_id, input.clone())
            .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.update_webhook(&stranger.token, &id, input).await,
        "NOT_FOUND",
    );
    assert_error(
        &app.rotate_webhook_secret(&stranger.token, &id).await,
        "NOT_FOUND",
    );
    assert_error(&app.delete_webhook(&stranger.token, &id).await, "NOT_FOUND");
    assert_eq!(
        app.webhook(&owner.token, &id).await["data"]["webhook"]["url"],
        "http://93.184.216.34/a"
    );
}

/// Names other than `localhost` that this machine's resolver maps to a loopback address (from
/// /etc/hosts), to check that the guard resolves names rather than matching strings.
fn loopback_names() -> Vec<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let names: Vec<String> = hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip: std::net::IpAddr = parts.next()?.parse().ok()?;
            ip.is_loopback()
                .then(|| parts.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .filter(|n| !n.contains("localhost"))
        .collect();
    names
}
