use base64::Engine as _;
use serde_json::json;

use crate::helpers::*;

const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

#[tokio::test]
async fn a_new_user_signs_up_logs_in_and_sees_themselves() {
    let app = spawn_app().await;
    let body = app
        .sign_up_raw("Jo@Example.com", "correct horse battery")
        .await;
    assert_ok(&body);
    let user = &body["data"]["signUp"]["user"];
    assert_eq!(user["email"], "jo@example.com");
    assert_eq!(user["memberships"][0]["role"], "OWNER");
    assert_eq!(user["memberships"][0]["account"]["name"], "Test Co");

    let login = app
        .log_in("  JO@example.COM ", "correct horse battery")
        .await;
    assert_ok(&login);
    let token = login["data"]["logIn"]["token"].as_str().expect("token");
    let me = app.me(token).await;
    assert_ok(&me);
    assert_eq!(me["data"]["me"]["id"], user["id"]);
    assert_eq!(
        me["data"]["me"]["memberships"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
    let app = spawn_app().await;
    app.sign_up("jo@example.com").await;
    let wrong = app.log_in("jo@example.com", "not the password").await;
    let unknown = app.log_in("nobody@example.com", "not the password").await;
    assert_error(&wrong, "UNAUTHENTICATED");
    assert_error(&unknown, "UNAUTHENTICATED");
    assert_eq!(
        wrong["errors"][0]["message"],
        unknown["errors"][0]["message"]
    );
}

#[tokio::test]
async fn short_passwords_and_malformed_emails_are_refused() {
    let app = spawn_app().await;
    let short = app.sign_up_raw("jo@example.com", "1234567").await;
    assert_error(&short, "BAD_USER_INPUT");
    assert!(
        short["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("8 characters")
    );
    assert_error(
        &app.sign_up_raw("not-an-email", "correct horse battery")
            .await,
        "BAD_USER_INPUT",
    );
    // Nothing was created by the failed attempts.
    assert_error(
        &app.log_in("jo@example.com", "1234567").await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn an_email_is_taken_whatever_its_case() {
    let app = spawn_app().await;
    app.sign_up("jo@example.com").await;
    let again = app.sign_up_raw("JO@EXAMPLE.COM", "another password").await;
    assert_error(&again, "CONFLICT");
}

#[tokio::test]
async fn me_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;
    assert_error(
        &app.gql_anon("{ me { id } }", json!({})).await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn an_authorization_header_that_is_not_a_token_is_refused_as_such_not_taken_for_no_token() {
    let app = spawn_app().await;
    let me_with = |value: &'static [u8]| {
        let req = app
            .client
            .post(format!("{}/graphql", app.addr))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(value).expect("a header value"),
            )
            .json(&json!({ "query": "{ me { id } }" }));
        async move {
            let body: serde_json::Value =
                req.send().await.expect("sent").json().await.expect("JSON");
            assert_error(&body, "UNAUTHENTICATED");
            body["errors"][0]["message"]
                .as_str()
                .expect("a message")
                .to_owned()
        }
    };
    // Bytes that are not UTF-8 (allowed in a header as obs-text) and text that is not ASCII:
    // each is a caller's mistake, to be named, not a request without credentials.
    let not_text = me_with(b"Bearer \xff\xfe").await;
    assert!(not_text.contains("Bearer <token>"), "{not_text}");
    let not_ascii = me_with("Bearer t\u{f6}ken".as_bytes()).await;
    assert!(not_ascii.contains("token is invalid"), "{not_ascii}");
    let anonymous = app.gql_anon("{ me { id } }", json!({})).await;
    assert!(
        anonymous["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("log in first")),
        "{anonymous}"
    );
}

fn forge(header: serde_json::Value, claims: serde_json::Value, signature: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        signature
    )
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test]
async fn expired_tampered_and_unsigned_tokens_are_refused() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let now = chrono::Utc::now().timestamp();
    // The session the server opened for this user, read from its own token.
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let payload = user.token.split('.').nth(1).expect("a JWT has a payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    };
    let sid = claims["sid"].as_str().expect("tokens name their session");
    // Sanity: a token we sign the same way as the server is accepted.
    let good = hs256(
        &json!({ "sub": user.user_id, "sid": sid, "iat": now, "exp": now + 60, "iss": "parley" }),
        SECRET,
    );
    assert_ok(&app.me(&good).await);
    // Even signed with the right key, a token of a session that was never opened is refused.
    let no_session = hs256(
        &json!({ "sub": user.user_id, "sid": uuid::Uuid::new_v4(), "iat": now, "exp": now + 60, "iss": "parley" }),
        SECRET,
    );
    assert_error(&app.me(&no_session).await, "UNAUTHENTICATED");

    let expired = hs256(
        &json!({ "sub": user.user_id, "sid": sid, "iat": now - 120, "exp": now - 60, "iss": "parley" }),
        SECRET,
    );
    let wrong_key = hs256(
        &json!({ "sub": user.user_id, "sid": sid, "iat": now, "exp": now + 60, "iss": "parley" }),
        "another-secret-another-secret-another",
    );
    let none = forge(
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "sub": user.user_id, "iat": now, "exp": now + 60, "iss": "parley" }),
        "",
    );
    // The genuine token with its payload swapped for another user's id.
    let other = app.new_user().await;
    let parts: Vec<&str> = user.token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(
            json!({ "sub": other.user_id, "iat": now, "exp": now + 3600, "iss": "parley" })
                .to_string()
        ),
        parts[2]
    );
    for (what, token) in [
        ("expired", expired),
        ("wrong key", wrong_key),
        ("alg none", none),
        ("tampered", tampered),
        ("garbage", "abc.def".into()),
    ] {
        let body = app.me(&token).await;
        assert_eq!(error_code(&body), "UNAUTHENTICATED", "{what} token: {body}");
    }
}

#[tokio::test]
async fn a_second_account_makes_the_user_its_owner() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let body = app.create_account(&user.token, "Second").await;
    assert_ok(&body);
    assert_eq!(body["data"]["createAccount"]["members"][0]["role"], "OWNER");
    assert_eq!(
        body["data"]["createAccount"]["members"][0]["user"]["id"],
        user.user_id.as_str()
    );
    let me = app.me(&user.token).await;
    assert_eq!(
        me["data"]["me"]["memberships"].as_array().map(Vec::len),
        Some(2)
    );
    assert_error(
        &app.create_account(&user.token, "   ").await,
        "BAD_USER_INPUT",
    );
}

#[tokio::test]
async fn an_invited_teammate_accepts_and_sees_the_account() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let mate = app.sign_up("mate@example.com").await;
    let inv = app
        .invite_member(&owner.token, &owner.account_id, "Mate@Example.com", "ADMIN")
        .await;
    assert_ok(&inv);
    assert_eq!(inv["data"]["inviteMember"]["email"], "mate@example.com");
    let token = inv["data"]["inviteMember"]["token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Before accepting, the teammate sees nothing.
    assert_eq!(
        app.account(&mate.token, &owner.account_id).await["data"]["account"],
        json!(null)
    );

    let accepted = app.accept_invitation(&mate.token, &token).await;
    assert_ok(&accepted);
    assert_eq!(accepted["data"]["acceptInvitation"]["role"], "ADMIN");
    assert_eq!(
        accepted["data"]["acceptInvitation"]["account"]["id"],
        owner.account_id.as_str()
    );

    let account = app.account(&mate.token, &owner.account_id).await;
    assert_eq!(
        account["data"]["account"]["members"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // An invitation is used once.
    assert_error(
        &app.accept_invitation(&mate.token, &token).await,
        "CONFLICT",
    );
}

#[tokio::test]
async fn an_invitation_for_someone_else_cannot_be_redeemed() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let intruder = app.new_user().await;
    let inv = app
        .invite_member(
            &owner.token,
            &owner.account_id,
            "mate@example.com",
            "MEMBER",
        )
        .await;
    let token = inv["data"]["inviteMember"]["token"]
        .as_str()
        .expect("token");
    assert_error(
        &app.accept_invitation(&intruder.token, token).await,
        "NOT_FOUND",
    );
    assert_error(
        &app.accept_invitation(&intruder.token, "no-such-token")
            .await,
        "NOT_FOUND",
    );
}

#[tokio::test]
async fn inviting_an_existing_member_is_a_conflict() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let body = app
        .invite_member(
            &owner.token,
            &owner.account_id,
            &owner.email.to_uppercase(),
            "MEMBER",
        )
        .await;
    assert_error(&body, "CONFLICT");
}

#[tokio::test]
async fn members_and_admins_cannot_do_what_their_role_does_not_allow() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let admin = app.add_member(&owner, "ADMIN").await;
    let member = app.add_member(&owner, "MEMBER").await;

    assert_error(
        &app.invite_member(&member.token, &owner.account_id, "x@example.com", "MEMBER")
            .await,
        "FORBIDDEN",
    );
    assert_ok(
        &app.invite_member(&admin.token, &owner.account_id, "y@example.com", "MEMBER")
            .await,
    );
    assert_error(
        &app.invite_member(&admin.token, &owner.account_id, "z@example.com", "OWNER")
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.remove_member(&admin.token, &owner.account_id, &member.user_id)
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.remove_member(&member.token, &owner.account_id, &admin.user_id)
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.change_member_role(&admin.token, &owner.account_id, &member.user_id, "ADMIN")
            .await,
        "FORBIDDEN",
    );

    // Members read the account.
    assert_ok(&app.account(&member.token, &owner.account_id).await);

    let removed = app
        .remove_member(&owner.token, &owner.account_id, &member.user_id)
        .await;
    assert_ok(&removed);
    assert_eq!(
        app.account(&member.token, &owner.account_id).await["data"]["account"],
        json!(null)
    );
}

#[tokio::test]
async fn an_account_always_keeps_an_owner() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    assert_error(
        &app.remove_member(&owner.token, &owner.account_id, &owner.user_id)
            .await,
        "CONFLICT",
    );
    assert_error(
        &app.change_member_role(&owner.token, &owner.account_id, &owner.user_id, "ADMIN")
            .await,
        "CONFLICT",
    );
    let second = app.add_member(&owner, "OWNER").await;
    assert_ok(
        &app.remove_member(&owner.token, &owner.account_id, &owner.user_id)
            .await,
    );
    assert_error(
        &app.remove_member(&second.token, &second.account_id, &second.user_id)
            .await,
        "CONFLICT",
    );
}

#[tokio::test]
async fn a_stranger_sees_nothing_of_another_account() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let mate = app.add_member(&owner, "MEMBER").await;
    let stranger = app.new_user().await;

    assert_eq!(
        app.account(&stranger.token, &owner.account_id).await["data"]["account"],
        json!(null)
    );
    assert_error(
        &app.invite_member(
            &stranger.token,
            &owner.account_id,
            "x@example.com",
            "MEMBER",
        )
        .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.remove_member(&stranger.token, &owner.account_id, &mate.user_id)
            .await,
        "NOT_FOUND",
    );
    assert_error(
        &app.change_member_role(&stranger.token, &owner.account_id, &mate.user_id, "ADMIN")
            .await,
        "NOT_FOUND",
    );
    // Malformed ids are as unknown as foreign ones.
    assert_error(
        &app.invite_member(&stranger.token, "not-a-uuid", "x@example.com", "MEMBER")
            .await,
        "NOT_FOUND",
    );
    // A teammate's memberships in accounts the viewer does not share stay hidden.
    let other_account = app.create_account(&mate.token, "Mate's own").await;
    assert_ok(&other_account);
    let seen = app.gql(&owner.token, "query($id: ID!) { account(id: $id) { members { user { id memberships { account { id } } } } } }", json!({ "id": owner.account_id })).await;
    assert_ok(&seen);
    let text = seen.to_string();
    let hidden = other_account["data"]["createAccount"]["id"]
        .as_str()
        .expect("id");
    assert!(!text.contains(hidden), "a foreign account leaked: {text}");
}

#[tokio::test]
async fn repeated_log_in_attempts_for_one_email_are_rate_limited() {
    let app = spawn_app_with(|s| s.limits.login_per_email = 10).await;
    app.sign_up("jo@example.com").await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let body = app.log_in("jo@example.com", "guess-guess").await;
        codes.push(error_code(&body).to_owned());
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "UNAUTHENTICATED").count(),
        10,
        "{codes:?}"
    );
    assert_eq!(codes.last().map(String::as_str), Some("RATE_LIMITED"));
    // Even the right password waits; other emails are unaffected.
    assert_error(
        &app.log_in("JO@example.com", "correct horse battery").await,
        "RATE_LIMITED",
    );
    app.sign_up("al@example.com").await;
    assert_ok(&app.log_in("al@example.com", "correct horse battery").await);
}
