use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _, http::HeaderValue};

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
    let ready = app
        .client
        .get(format!("{}/readyz", app.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn graphiql_is_served() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/graphiql", app.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("body")
            .to_lowercase()
            .contains("graphiql")
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_coded_errors() {
    let app = spawn_app().await;
    let garbage = app.post_raw("{not json").await;
    assert_eq!(garbage.status(), 400);
    let body: serde_json::Value = garbage.json().await.expect("json");
    assert_error(&body, "BAD_USER_INPUT");

    let parse = app.gql_anon("{ me { id ", json!({})).await;
    assert_error(&parse, "BAD_USER_INPUT");
    let unknown_field = app.gql_anon("{ nope }", json!({})).await;
    assert_error(&unknown_field, "BAD_USER_INPUT");
    let wrong_type = app
        .gql_anon(
            "mutation($e: String!) { logIn(email: $e, password: 5) { token } }",
            json!({ "e": "x" }),
        )
        .await;
    assert_error(&wrong_type, "BAD_USER_INPUT");
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_being_read_whole() {
    let app = spawn_app().await;
    let big = format!(
        "{{\"query\": \"{{ me {{ id }} }}\", \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let resp = app.post_raw(big).await;
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_error(&body, "BAD_USER_INPUT");
}

#[tokio::test]
async fn overly_deep_queries_are_refused() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let mut q = String::from("id");
    for _ in 0..12 {
        q = format!("id memberships {{ account {{ members {{ user {{ {q} }} }} }} }}");
    }
    let body = app
        .gql(&user.token, &format!("{{ me {{ {q} }} }}"), json!({}))
        .await;
    assert_error(&body, "BAD_USER_INPUT");
}

async fn ws_connect(
    app: &TestApp,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://127.0.0.1:{}/graphql", app.port)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocol).expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    ws
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Message> {
    tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

#[tokio::test]
async fn websocket_clients_are_acknowledged_with_a_valid_token_on_both_protocols() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&app, protocol).await;
        ws.send(Message::text(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", user.token) } }).to_string()))
            .await
            .expect("send");
        let msg = next_text(&mut ws).await.expect("a reply");
        let reply: serde_json::Value =
            serde_json::from_str(msg.to_text().expect("text")).expect("json");
        assert_eq!(reply["type"], "connection_ack", "{protocol}: {reply}");
        ws.close(None).await.ok();
    }
}

#[tokio::test]
async fn websocket_clients_with_a_bad_token_are_turned_away() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app, "graphql-transport-ws").await;
    ws.send(Message::text(json!({ "type": "connection_init", "payload": { "Authorization": "Bearer forged.token.here" } }).to_string()))
        .await
        .expect("send");
    // graphql-transport-ws: a refused connection_init closes with 4403 Forbidden, and says why.
    match next_text(&mut ws).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 4403, "{frame:?}");
            assert!(frame.reason.contains("token"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn an_operation_before_the_acknowledgement_closes_with_4401() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app, "graphql-transport-ws").await;
    ws.send(Message::text(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { accountEvents(accountId: \"x\") { seq } }" } }).to_string()))
        .await
        .expect("send");
    match next_text(&mut ws).await {
        Some(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4401, "{frame:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn with_graphiql_off_strangers_get_neither_the_page_nor_the_schema() {
    let app = spawn_app_with(|s| s.graphiql = false).await;
    let page = app
        .client
        .get(format!("{}/graphiql", app.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 404);
    let introspect = "{ __schema { queryType { name } } }";
    let body = app.gql_anon(introspect, json!({})).await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
    // A team member's tools still read the schema.
    let user = app.new_user().await;
    let body = app.gql(&user.token, introspect, json!({})).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
    // With the default, the page is served.
    let open = spawn_app().await;
    let page = open
        .client
        .get(format!("{}/graphiql", open.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
}
