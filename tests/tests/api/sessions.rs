//! Access that ends when it should: log-out, password changes, expiry and removal end
//! tokens and live subscriptions; invitations can be taken back; the audit log tells who did
//! what.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const ACCOUNT_EVENTS: &str =
    "subscription($a: ID!) { accountEvents(accountId: $a) { seq kind text } }";

async fn log_out(app: &TestApp, token: &str, everywhere: bool) -> Value {
    let field = if everywhere {
        "logOutEverywhere"
    } else {
        "logOut"
    };
    app.gql(token, &format!("mutation {{ {field} }}"), json!({}))
        .await
}

async fn change_password(app: &TestApp, token: &str, current: &str, new: &str) -> Value {
    app.gql(
        token,
        "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) { token } }",
        json!({ "c": current, "n": new }),
    )
    .await
}

async fn second_token(app: &TestApp, user: &TestUser) -> String {
    let body = app.log_in(&user.email, "correct horse battery").await;
    body["data"]["logIn"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("log-in failed: {body}"))
        .to_owned()
}

/// A published bot whose first message makes an account event for watchers.
async fn chatty_bot(app: &TestApp, owner: &TestUser) -> String {
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "ask", "blocks": [
        { "id": "ask", "kind": "QUESTION", "text": "Hello?", "saveAnswerTo": "said", "next": "ask" }
    ]});
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    bot
}

/// Waits for the subscription to end with an error; its code and how long it took.
async fn ended_with(sub: &mut Sub) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let msg = sub
            .message()
            .await
            .expect("the subscription ends with an error");
        if msg["type"] == "next" && msg["payload"].get("errors").is_none() {
            continue;
        }
        let errors = if msg["type"] == "error" {
            msg["payload"].clone()
        } else {
            msg["payload"]["errors"].clone()
        };
        let code = errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {msg}"))
            .to_owned();
        return (code, started.elapsed());
    }
}

#[tokio::test]
async fn log_out_ends_this_token_only_and_log_out_everywhere_ends_them_all() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other = second_token(&app, &user).await;
    let third = second_token(&app, &user).await;
    assert_ok(&log_out(&app, &user.token, false).await);
    assert_error(&app.me(&user.token).await, "UNAUTHENTICATED");
    assert_ok(&app.me(&other).await);
    assert_ok(&log_out(&app, &other, true).await);
    assert_error(&app.me(&other).await, "UNAUTHENTICATED");
    assert_error(&app.me(&third).await, "UNAUTHENTICATED");
    // Logging in again works.
    let fresh = second_token(&app, &user).await;
    assert_ok(&app.me(&fresh).await);
}

#[tokio::test]
async fn a_password_change_ends_every_other_token_and_the_old_password() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other = second_token(&app, &user).await;
    let wrong = change_password(&app, &user.token, "not my password", "a new password 1").await;
    assert_error(&wrong, "BAD_USER_INPUT");
    assert_ok(&app.me(&other).await);
    let short = change_password(&app, &user.token, "correct horse battery", "short").await;
    assert_error(&short, "BAD_USER_INPUT");

    let body = change_password(
        &app,
        &user.token,
        "correct horse battery",
        "a new password 1",
    )
    .await;
    assert_ok(&body);
    let fresh = body["data"]["changePassword"]["token"]
        .as_str()
        .expect("token");
    assert_ok(&app.me(fresh).await);
    assert_error(&app.me(&user.token).await, "UNAUTHENTICATED");
    assert_error(&app.me(&other).await, "UNAUTHENTICATED");
    assert_error(
        &app.log_in(&user.email, "correct horse battery").await,
        "UNAUTHENTICATED",
    );
    assert_ok(&app.log_in(&user.email, "a new password 1").await);
}

#[tokio::test]
async fn a_removed_member_stops_watching_at_once() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let bot = chatty_bot(&app, &owner).await;
    let mut watch = app
        .subscribe(
            Some(&member.token),
            ACCOUNT_EVENTS,
            json!({ "a": owner.account_id }),
        )
        .await;
    first_question(&app, &bot, &mut watch).await;

    assert_ok(
        &app.remove_member(&owner.token, &owner.account_id, &member.user_id)
            .await,
    );
    let (code, took) = ended_with(&mut watch).await;
    assert_eq!(code, "FORBIDDEN");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The next visitor's chat reaches the owner, not the removed member: the subscription is
    // complete, and nothing follows.
    app.new_conversation(&bot).await;
    if let Some(msg) = watch.message().await {
        assert_eq!(msg["type"], "complete", "after removal: {msg}");
    }
    watch.assert_quiet().await;
}

#[tokio::test]
async fn a_member_removed_on_another_instance_stops_watching_here() {
    let app = spawn_app().await;
    if !app.db.is_postgres() {
        // One instance only on SQLite.
        return;
    }
    let other = app.second_instance().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    let mut watch = other
        .subscribe(
            Some(&member.token),
            ACCOUNT_EVENTS,
            json!({ "a": owner.account_id }),
        )
        .await;
    // Let the subscription start before the removal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ok(
        &app.remove_member(&owner.token, &owner.account_id, &member.user_id)
            .await,
    );
    let (code, took) = ended_with(&mut watch).await;
    assert_eq!(code, "FORBIDDEN");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_logged_out_token_stops_its_subscriptions_and_cannot_start_new_ones() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let mut watch = app
        .subscribe(
            Some(&owner.token),
            ACCOUNT_EVENTS,
            json!({ "a": owner.account_id }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ok(&log_out(&app, &owner.token, false).await);
    let (code, took) = ended_with(&mut watch).await;
    assert_eq!(code, "UNAUTHENTICATED");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn an_expired_token_stops_streaming_within_a_second_of_its_expiry() {
    let app = spawn_app_with(|s| s.token_ttl = Duration::from_secs(3)).await;
    let owner = app.new_user().await;
    let issued = Instant::now();
    let bot = chatty_bot(&app, &owner).await;
    let mut watch = app
        .subscribe(
            Some(&owner.token),
            ACCOUNT_EVENTS,
            json!({ "a": owner.account_id }),
        )
        .await;
    first_question(&app, &bot, &mut watch).await;
    let (code, _) = ended_with(&mut watch).await;
    assert_eq!(code, "UNAUTHENTICATED");
    // The token's `exp` is in whole seconds: it expired by 3 s after issue, plus a second.
    assert!(
        issued.elapsed() < Duration::from_secs(5),
        "{:?}",
        issued.elapsed()
    );
    assert_error(&app.me(&owner.token).await, "UNAUTHENTICATED");
}

#[tokio::test]
async fn invitations_are_listed_revoked_and_die_with_their_inviters_rights() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let admin = app.add_member(&owner, "ADMIN").await;
    let member = app.add_member(&owner, "MEMBER").await;
    let invite = |by: &TestUser, email: &str| {
        let (app, by, email) = (&app, by.clone(), email.to_owned());
        async move {
            let body = app
                .invite_member(&by.token, &by.account_id, &email, "MEMBER")
                .await;
            let inv = &body["data"]["inviteMember"];
            (
                inv["id"].as_str().expect("id").to_owned(),
                inv["token"].as_str().expect("token").to_owned(),
            )
        }
    };
    let list =
        "query($a: ID!) { account(id: $a) { invitations { id email role invitedBy token } } }";

    let guest = app.new_user().await;
    let (revoked_id, revoked_token) = invite(&owner, &guest.email).await;
    let body = app
        .gql(&owner.token, list, json!({ "a": owner.account_id }))
        .await;
    let pending = body["data"]["account"]["invitations"]
        .as_array()
        .expect("list")
        .clone();
    assert_eq!(pending.len(), 1, "{body}");
    assert_eq!(pending[0]["email"], guest.email.as_str());
    assert_eq!(pending[0]["token"], "", "tokens are shown once");
    assert_error(
        &app.gql(&member.token, list, json!({ "a": owner.account_id }))
            .await,
        "FORBIDDEN",
    );

    let revoke = "mutation($id: ID!) { revokeInvitation(id: $id) }";
    assert_error(
        &app.gql(&member.token, revoke, json!({ "id": revoked_id }))
            .await,
        "FORBIDDEN",
    );
    assert_ok(
        &app.gql(&owner.token, revoke, json!({ "id": revoked_id }))
            .await,
    );
    assert_error(
        &app.accept_invitation(&guest.token, &revoked_token).await,
        "CONFLICT",
    );
    let stranger = app.new_user().await;
    assert_error(
        &app.gql(&stranger.token, revoke, json!({ "id": revoked_id }))
            .await,
        "NOT_FOUND",
    );

    // An ADMIN invites a second address of theirs, then is removed: the way back is closed.
    let alias = app.new_user().await;
    let (_, alias_token) = invite(&admin, &alias.email).await;
    assert_ok(
        &app.remove_member(&owner.token, &owner.account_id, &admin.user_id)
            .await,
    );
    assert_error(
        &app.accept_invitation(&alias.token, &alias_token).await,
        "CONFLICT",
    );
    let body = app
        .gql(&owner.token, list, json!({ "a": owner.account_id }))
        .await;
    assert_eq!(body["data"]["account"]["invitations"], json!([]), "{body}");
}

#[tokio::test]
async fn the_audit_log_tells_owners_and_admins_who_did_what() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let member = app.add_member(&owner, "MEMBER").await;
    assert_ok(
        &app.change_member_role(&owner.token, &owner.account_id, &member.user_id, "ADMIN")
            .await,
    );
    assert_ok(
        &app.remove_member(&owner.token, &owner.account_id, &member.user_id)
            .await,
    );
    let q = "query($a: ID!) { account(id: $a) { auditLog(first: 10) { edges { node { actorId action targetType targetId details at } } pageInfo { hasNextPage } } } }";
    let body = app
        .gql(&owner.token, q, json!({ "a": owner.account_id }))
        .await;
    assert_ok(&body);
    let entries: Vec<Value> = body["data"]["account"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "member.removed",
            "member.role_changed",
            "member.joined",
            "member.invited"
        ],
        "{body}"
    );
    assert_eq!(
        entries[1]["details"],
        json!({ "from": "MEMBER", "to": "ADMIN" })
    );
    assert_eq!(entries[0]["actorId"], owner.user_id.as_str());
    assert_eq!(entries[2]["actorId"], member.user_id.as_str());

    let reader = app.add_member(&owner, "MEMBER").await;
    let body = app
        .gql(&reader.token, q, json!({ "a": owner.account_id }))
        .await;
    assert_error(&body, "FORBIDDEN");
}
