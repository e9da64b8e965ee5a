//! The chat widget's server side: appearance, allowed origins, `publicBot`, CORS.
use serde_json::{Value, json};

use crate::helpers::*;

const SHOP: &str = "https://shop.example";
const EVIL: &str = "https://evil.example";

const PUBLIC_BOT: &str = "query($id: ID!) { publicBot(id: $id) { id name appearance { title primaryColor avatarUrl launcherText } } }";
const START: &str =
    "mutation($b: ID!) { startConversation(botId: $b) { conversationId visitorToken } }";
const ANSWER: &str = "mutation($c: ID!, $t: String!, $x: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: $x) { seq kind text } }";
const CONVERSATION: &str = "query($id: ID!, $t: String) { conversation(id: $id, visitorToken: $t) { id events { seq kind text } } }";
const EVENTS: &str = "subscription($c: ID!, $t: String, $a: Int) { conversationEvents(conversationId: $c, visitorToken: $t, afterSeq: $a) { seq kind text } }";

/// A published bot: a greeting, a name question, another question, the end.
async fn published_bot(app: &TestApp, user: &TestUser) -> String {
    let bot = app.new_bot(user).await;
    let flow = json!({
        "startBlockId": "hello",
        "blocks": [
            { "id": "hello", "kind": "MESSAGE", "text": "Hello!", "next": "name" },
            { "id": "name", "kind": "QUESTION", "text": "Your name?", "questionType": "TEXT", "saveAnswerTo": "name", "next": "more" },
            { "id": "more", "kind": "QUESTION", "text": "Anything else?", "questionType": "TEXT", "saveAnswerTo": "more", "next": "bye" },
            { "id": "bye", "kind": "END" }
        ]
    });
    assert_ok(&app.save_flow(&user.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&user.token, &bot).await);
    bot
}

async fn set_origins(app: &TestApp, token: &str, bot: &str, origins: Value) -> Value {
    app.gql(
        token,
        "mutation($b: ID!, $o: [String!]!) { setBotAllowedOrigins(botId: $b, origins: $o) { id allowedOrigins } }",
        json!({ "b": bot, "o": origins }),
    )
    .await
}

async fn set_appearance(app: &TestApp, token: &str, bot: &str, appearance: Value) -> Value {
    app.gql(
        token,
        "mutation($b: ID!, $a: AppearanceInput!) { updateBotAppearance(botId: $b, appearance: $a) { id appearance { title primaryColor avatarUrl launcherText } } }",
        json!({ "b": bot, "a": appearance }),
    )
    .await
}

#[tokio::test]
async fn admins_set_the_appearance_and_it_is_validated() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;

    let fresh = app
        .gql(
            &owner.token,
            "query($id: ID!) { bot(id: $id) { appearance { title primaryColor avatarUrl launcherText } allowedOrigins } }",
            json!({ "id": bot }),
        )
        .await;
    assert_eq!(
        fresh["data"]["bot"],
        json!({ "appearance": { "title": null, "primaryColor": null, "avatarUrl": null, "launcherText": null }, "allowedOrigins": [] })
    );

    let body = set_appearance(
        &app,
        &owner.token,
        &bot,
        json!({ "title": "  Acme support ", "primaryColor": "#FF6600", "avatarUrl": "https://cdn.example/a.png", "launcherText": "Chat with us", }),
    )
    .await;
    assert_ok(&body);
    assert_eq!(
        body["data"]["updateBotAppearance"]["appearance"],
        json!({ "title": "Acme support", "primaryColor": "#ff6600", "avatarUrl": "https://cdn.example/a.png", "launcherText": "Chat with us" })
    );
    // Blank fields are cleared.
    let body = set_appearance(&app, &owner.token, &bot, json!({ "title": "" })).await;
    assert_eq!(
        body["data"]["updateBotAppearance"]["appearance"]["title"],
        Value::Null
    );

    for bad in [
        json!({ "primaryColor": "red; background: url(x)" }),
        json!({ "primaryColor": "#12" }),
        json!({ "avatarUrl": "javascript:alert(1)" }),
        json!({ "title": "x".repeat(81) }),
    ] {
        let body = set_appearance(&app, &owner.token, &bot, bad.clone()).await;
        assert_error(&body, "BAD_USER_INPUT");
    }

    let member = app.add_member(&owner, "MEMBER").await;
    assert_error(
        &set_appearance(&app, &member.token, &bot, json!({ "title": "Mine" })).await,
        "FORBIDDEN",
    );
    assert_error(
        &set_origins(&app, &member.token, &bot, json!([SHOP])).await,
        "FORBIDDEN",
    );
    let stranger = app.new_user().await;
    assert_error(
        &set_appearance(&app, &stranger.token, &bot, json!({ "title": "Mine" })).await,
        "NOT_FOUND",
    );
    assert_error(
        &app.gql_anon(
            "mutation($b: ID!) { setBotAllowedOrigins(botId: $b, origins: []) { id } }",
            json!({ "b": bot }),
        )
        .await,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn allowed_origins_are_normalised_and_checked() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = app.new_bot(&owner).await;
    let body = set_origins(
        &app,
        &owner.token,
        &bot,
        json!([
            "HTTPS://Shop.Example:443/",
            "http://localhost:8080",
            "https://shop.example"
        ]),
    )
    .await;
    assert_ok(&body);
    assert_eq!(
        body["data"]["setBotAllowedOrigins"]["allowedOrigins"],
        json!(["https://shop.example", "http://localhost:8080"])
    );
    for bad in [
        "https://shop.example/page",
        "shop.example",
        "ftp://shop.example",
        "https://user@shop.example",
        "https://shop.example?x=1",
        "*",
    ] {
        let body = set_origins(&app, &owner.token, &bot, json!([bad])).await;
        assert_error(&body, "BAD_USER_INPUT");
    }
    let body = set_origins(&app, &owner.token, &bot, json!([])).await;
    assert_eq!(
        body["data"]["setBotAllowedOrigins"]["allowedOrigins"],
        json!([])
    );
}

#[tokio::test]
async fn public_bot_shows_published_bots_only_without_login() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let draft = app.new_bot(&owner).await;
    let body = app.gql_anon(PUBLIC_BOT, json!({ "id": draft })).await;
    assert_ok(&body);
    assert_eq!(body["data"]["publicBot"], Value::Null);
    let body = app.gql_anon(PUBLIC_BOT, json!({ "id": "not-an-id" })).await;
    assert_eq!(body["data"]["publicBot"], Value::Null);

    let bot = published_bot(&app, &owner).await;
    assert_ok(
        &set_appearance(
            &app,
            &owner.token,
            &bot,
            json!({ "title": "Acme", "launcherText": "Questions?" }),
        )
        .await,
    );
    let body = app.gql_anon(PUBLIC_BOT, json!({ "id": bot })).await;
    assert_ok(&body);
    assert_eq!(body["data"]["publicBot"]["id"], json!(bot));
    assert_eq!(body["data"]["publicBot"]["name"], json!("Lead bot"));
    assert_eq!(
        body["data"]["publicBot"]["appearance"],
        json!({ "title": "Acme", "primaryColor": null, "avatarUrl": null, "launcherText": "Questions?" })
    );
    // A stranger reads nothing else of the bot.
    let body = app
        .gql_anon(
            "query($id: ID!) { publicBot(id: $id) { flow { startBlockId } } }",
            json!({ "id": bot }),
        )
        .await;
    assert!(body["errors"].is_array(), "{body}");
}

#[tokio::test]
async fn visitor_operations_from_another_origin_are_forbidden() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published_bot(&app, &owner).await;
    // Before any list: every origin is welcome.
    let body = app.gql_from(EVIL, None, START, json!({ "b": bot })).await;
    assert_ok(&body);
    let early = body["data"]["startConversation"].clone();
    assert_ok(&set_origins(&app, &owner.token, &bot, json!([SHOP])).await);

    // From the listed website: everything works.
    let body = app
        .gql_from(SHOP, None, PUBLIC_BOT, json!({ "id": bot }))
        .await;
    assert_eq!(body["data"]["publicBot"]["id"], json!(bot), "{body}");
    let body = app.gql_from(SHOP, None, START, json!({ "b": bot })).await;
    assert_ok(&body);
    let conv = body["data"]["startConversation"]["conversationId"]
        .as_str()
        .expect("id")
        .to_owned();
    let token = body["data"]["startConversation"]["visitorToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let body = app
        .gql_from(
            SHOP,
            None,
            ANSWER,
            json!({ "c": conv, "t": token, "x": "Ada" }),
        )
        .await;
    assert_ok(&body);
    let body = app
        .gql_from(SHOP, None, CONVERSATION, json!({ "id": conv, "t": token }))
        .await;
    assert_ok(&body);
    let mut sub = app
        .subscribe_from(
            Some(SHOP),
            None,
            EVENTS,
            json!({ "c": conv, "t": token, "a": 0 }),
        )
        .await;
    let events = sub.events(4).await;
    assert_eq!(
        kinds(&events),
        ["BOT_MESSAGE", "QUESTION", "VISITOR_MESSAGE", "QUESTION"]
    );
    sub.close().await;

    // From another website: every visitor operation is FORBIDDEN, even for a conversation
    // started before the list.
    assert_error(
        &app.gql_from(EVIL, None, PUBLIC_BOT, json!({ "id": bot }))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql_from(EVIL, None, START, json!({ "b": bot })).await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql_from(
            EVIL,
            None,
            ANSWER,
            json!({ "c": conv, "t": token, "x": "Eve" }),
        )
        .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql_from(
            EVIL,
            None,
            ANSWER,
            json!({ "c": early["conversationId"], "t": early["visitorToken"], "x": "Eve" }),
        )
        .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.gql_from(EVIL, None, CONVERSATION, json!({ "id": conv, "t": token }))
            .await,
        "FORBIDDEN",
    );
    let mut sub = app
        .subscribe_from(
            Some(EVIL),
            None,
            EVENTS,
            json!({ "c": conv, "t": token, "a": 0 }),
        )
        .await;
    assert_eq!(sub.error_code().await, "FORBIDDEN");
    sub.close().await;
    // A wrong token from the other website still learns nothing about the conversation.
    assert_error(
        &app.gql_from(
            EVIL,
            None,
            ANSWER,
            json!({ "c": conv, "t": "wrong", "x": "Eve" }),
        )
        .await,
        "NOT_FOUND",
    );
    // A sandboxed frame's opaque origin is not the shop's.
    assert_error(
        &app.gql_from("null", None, START, json!({ "b": bot })).await,
        "FORBIDDEN",
    );

    // The team reads its conversations from anywhere with its token.
    let body = app
        .gql_from(
            EVIL,
            Some(&owner.token),
            CONVERSATION,
            json!({ "id": conv }),
        )
        .await;
    assert_ok(&body);

    // The hosted chat page (the server's own origin) is always allowed.
    let own = format!("http://127.0.0.1:{}", app.port);
    assert_ok(&app.gql_from(&own, None, START, json!({ "b": bot })).await);
    let mut sub = app
        .subscribe_from(
            Some(&own),
            None,
            EVENTS,
            json!({ "c": conv, "t": token, "a": 3 }),
        )
        .await;
    assert_eq!(kinds(&sub.events(1).await), ["QUESTION"]);
    sub.close().await;

    // Without an Origin (not a browser: a server or curl), the list does not apply.
    assert_ok(&app.start_conversation(&bot, Value::Null).await);
    let body = app.send_answer(&conv, &token, "Nothing").await;
    assert_ok(&body);

    // An empty list opens the bot to every website again.
    assert_ok(&set_origins(&app, &owner.token, &bot, json!([])).await);
    assert_ok(&app.gql_from(EVIL, None, START, json!({ "b": bot })).await);
}

#[tokio::test]
async fn cors_answers_any_origin_but_only_dashboards_may_send_authorization() {
    let app = spawn_app_with(|s| {
        s.cors_origins =
            parley::edge::origin::CorsOrigins::parse("https://dash.example").expect("origins");
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.addr))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };

    let r = preflight("https://dash.example").await.expect("preflight");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://dash.example")
    );
    let allowed = header(&r, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(allowed.contains("content-type"), "{allowed}");
    assert!(
        header(&r, "access-control-allow-methods")
            .unwrap_or_default()
            .contains("POST")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), None);

    let r = preflight(SHOP).await.expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    let allowed = header(&r, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("content-type"), "{allowed}");
    assert!(!allowed.contains("authorization"), "{allowed}");

    let r = app
        .client
        .post(format!("{}/graphql", app.addr))
        .header("origin", SHOP)
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("post");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    assert!(
        header(&r, "vary").unwrap_or_default().contains("Origin"),
        "{:?}",
        r.headers()
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn the_widget_script_is_cacheable_compressed_and_small() {
    let app = spawn_app().await;
    let url = format!("{}/widget.js", app.addr);
    let r = app.client.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let h = |r: &reqwest::Response, n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    assert!(
        h(&r, "content-type")
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    let etag = h(&r, "etag").expect("an ETag");
    assert!(
        h(&r, "cache-control")
            .unwrap_or_default()
            .contains("max-age=")
    );
    let body = r.text().await.expect("body");
    assert!(body.contains("graphql-transport-ws"));
    for banned in [
        "eval(",
        "new Function",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!body.contains(banned), "the widget uses {banned}");
    }

    let r = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(r.status(), 304);

    let r = app
        .client
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("gzip");
    assert_eq!(h(&r, "content-encoding").as_deref(), Some("gzip"));
    let gz = r.bytes().await.expect("body");
    assert!(gz.len() < 20 * 1024, "{} bytes gzipped", gz.len());
}

#[tokio::test]
async fn the_hosted_chat_page_loads_the_widget_under_a_strict_policy() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published_bot(&app, &owner).await;
    let r = app
        .client
        .get(format!("{}/chat/{bot}", app.addr))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = r.text().await.expect("html");
    assert!(
        html.contains(&format!("data-parley-bot=\"{bot}\"")),
        "{html}"
    );
    assert!(html.contains("src=\"/widget.js\""));

    let r = app
        .client
        .get(format!("{}/chat/%3Cscript%3E", app.addr))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn admins_set_the_typing_delay_and_the_widget_reads_it_without_login() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let bot = published_bot(&app, &owner).await;
    let set = |token: String, ms: i64| {
        let app = &app;
        let bot = bot.clone();
        async move {
            app.gql(
                &token,
                "mutation($b: ID!, $ms: Int!) { setBotTypingDelay(botId: $b, typingDelayMs: $ms) { id typingDelayMs } }",
                json!({ "b": bot, "ms": ms }),
            )
            .await
        }
    };
    let public = || {
        app.gql_anon(
            "query($id: ID!) { publicBot(id: $id) { typingDelayMs } }",
            json!({ "id": bot }),
        )
    };
    assert_eq!(public().await["data"]["publicBot"]["typingDelayMs"], 0);

    let body = set(owner.token.clone(), 1200).await;
    assert_ok(&body);
    assert_eq!(body["data"]["setBotTypingDelay"]["typingDelayMs"], 1200);
    assert_eq!(public().await["data"]["publicBot"]["typingDelayMs"], 1200);
    let read = app
        .gql(
            &owner.token,
            "query($id: ID!) { bot(id: $id) { typingDelayMs } }",
            json!({ "id": bot }),
        )
        .await;
    assert_eq!(read["data"]["bot"]["typingDelayMs"], 1200);

    for bad in [-1, 10_001] {
        let body = set(owner.token.clone(), bad).await;
        assert_error(&body, "BAD_USER_INPUT");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("typingDelayMs"),
            "{body}"
        );
    }
    assert_eq!(public().await["data"]["publicBot"]["typingDelayMs"], 1200);
    let member = app.add_member(&owner, "MEMBER").await;
    assert_error(&set(member.token.clone(), 0).await, "FORBIDDEN");

    // The served widget asks for the delay and paces bot messages with it.
    let script = app
        .client
        .get(format!("{}/widget.js", app.addr))
        .send()
        .await
        .expect("widget.js")
        .text()
        .await
        .expect("body");
    assert!(
        script.contains("typingDelayMs"),
        "the widget reads the delay"
    );
}
