//! Chats and what watches them: subscriptions, conversations, deliveries and receivers.

use super::*;

/// A GraphQL subscription over a real `graphql-transport-ws` WebSocket.
pub struct Sub {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Sub {
    /// The next `next`/`error`/`complete` message, or `None` after 5 s of silence.
    pub async fn message(&mut self) -> Option<Value> {
        self.message_within(Duration::from_secs(5)).await
    }

    /// The next `next`/`error`/`complete` message, or `None` after `silence`.
    pub async fn message_within(&mut self, silence: Duration) -> Option<Value> {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(silence, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).ok()?;
                    match v["type"].as_str() {
                        Some("ping") | Some("pong") | Some("ka") => continue,
                        _ => return Some(v),
                    }
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The data of the next event, failing on an error or silence.
    pub async fn event(&mut self, field: &str) -> Value {
        let msg = self
            .message()
            .await
            .unwrap_or_else(|| panic!("no {field} event within 5 s"));
        assert_eq!(msg["type"], "next", "unexpected message: {msg}");
        assert!(msg["payload"].get("errors").is_none(), "error event: {msg}");
        msg["payload"]["data"][field].clone()
    }

    /// `n` events of `conversationEvents`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.event("conversationEvents").await);
        }
        out
    }

    /// Asserts that nothing arrives for a short while.
    pub async fn assert_quiet(&mut self) {
        use futures_util::StreamExt as _;
        let got = tokio::time::timeout(Duration::from_millis(300), self.ws.next()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    /// The `extensions.code` of the error the subscription ended with.
    pub async fn error_code(&mut self) -> String {
        let msg = self.message().await.expect("an error message");
        let errors = if msg["type"] == "error" {
            msg["payload"].clone()
        } else {
            msg["payload"]["errors"].clone()
        };
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code in {msg}"))
            .to_owned()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

impl TestApp {
    /// Opens a subscription, authenticated as `token` if given.
    pub async fn subscribe(&self, token: Option<&str>, query: &str, variables: Value) -> Sub {
        self.subscribe_from(None, token, query, variables).await
    }

    /// Opens a subscription from a browser page on `origin` (its `Origin` header), if given.
    pub async fn subscribe_from(
        &self,
        origin: Option<&str>,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Sub {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::{
            Message, client::IntoClientRequest as _, http::HeaderValue,
        };
        let mut req = format!("ws://127.0.0.1:{}/graphql", self.port)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        if let Some(origin) = origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(origin).expect("origin"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        let mut sub = Sub { ws };
        let payload = match token {
            Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        sub.ws
            .send(Message::text(
                json!({ "type": "connection_init", "payload": payload }).to_string(),
            ))
            .await
            .expect("init");
        let ack = sub.message().await.expect("ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        sub.ws
            .send(Message::text(json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }).to_string()))
            .await
            .expect("subscribe");
        sub
    }

    /// `conversationEvents` as a visitor (with its token) or a member (with `member_token`).
    pub async fn watch(
        &self,
        conversation_id: &str,
        visitor_token: Option<&str>,
        member_token: Option<&str>,
        after_seq: i64,
    ) -> Sub {
        self.subscribe(
            member_token,
            "subscription($c: ID!, $t: String, $a: Int) { conversationEvents(conversationId: $c, visitorToken: $t, afterSeq: $a) { seq conversationId kind text input { type choices { label value } } at } }",
            json!({ "c": conversation_id, "t": visitor_token, "a": after_seq }),
        )
        .await
    }

    pub async fn start_conversation(&self, bot_id: &str, variables: Value) -> Value {
        self.gql_anon(
            "mutation($b: ID!, $v: JSON) { startConversation(botId: $b, variables: $v) { conversationId visitorToken } }",
            json!({ "b": bot_id, "v": variables }),
        )
        .await
    }

    /// Starts a conversation and returns (id, visitor token).
    pub async fn new_conversation(&self, bot_id: &str) -> (String, String) {
        let body = self.start_conversation(bot_id, Value::Null).await;
        let s = &body["data"]["startConversation"];
        assert!(s.is_object(), "startConversation failed: {body}");
        (
            s["conversationId"].as_str().expect("id").to_owned(),
            s["visitorToken"].as_str().expect("token").to_owned(),
        )
    }

    pub async fn send_answer(
        &self,
        conversation_id: &str,
        visitor_token: &str,
        text: &str,
    ) -> Value {
        self.gql_anon(
            "mutation($c: ID!, $t: String!, $x: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: $x) { seq kind text } }",
            json!({ "c": conversation_id, "t": visitor_token, "x": text }),
        )
        .await
    }

    pub async fn conversation(
        &self,
        token: Option<&str>,
        id: &str,
        visitor_token: Option<&str>,
    ) -> Value {
        self.gql_with(
            token,
            "query($id: ID!, $t: String) { conversation(id: $id, visitorToken: $t) { id version status startedAt endedAt answers variables bot { id } events { seq kind text } } }",
            json!({ "id": id, "t": visitor_token }),
        )
        .await
    }

    /// The deliveries of a webhook, newest first.
    pub async fn deliveries(&self, token: &str, webhook_id: &str) -> Vec<Value> {
        let body = self
            .gql(
                token,
                "query($id: ID!) { webhook(id: $id) { deliveries(first: 100) { edges { node { id mode status conversationId payload nextAttemptAt attemptCount messageId attempts { n at responseStatus durationMs error responseBody notes } } } } } }",
                json!({ "id": webhook_id }),
            )
            .await;
        body["data"]["webhook"]["deliveries"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("no deliveries in {body}"))
            .iter()
            .map(|e| e["node"].clone())
            .collect()
    }

    /// Waits until `check` holds for the webhook's deliveries (up to 15 s).
    pub async fn wait_deliveries(
        &self,
        token: &str,
        webhook_id: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.deliveries(token, webhook_id).await;
            if check(&list) {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries never reached the expected state: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The webhook's current signing secret.
    pub async fn signing_secret(&self, token: &str, webhook_id: &str) -> String {
        self.webhook(token, webhook_id).await["data"]["webhook"]["signingSecret"]
            .as_str()
            .expect("secret")
            .to_owned()
    }
}

/// Starts chats with `bot` until `watch` sees the first one's question. A subscription goes
/// live a moment after `subscribe` returns (its access is checked first), and an account event
/// published before that is not replayed, so one chat alone could go unseen.
pub async fn first_question(app: &TestApp, bot: &str, watch: &mut Sub) -> Value {
    for _ in 0..10 {
        app.new_conversation(bot).await;
        if let Some(msg) = watch.message_within(Duration::from_millis(500)).await {
            assert_eq!(msg["type"], "next", "unexpected message: {msg}");
            let event = msg["payload"]["data"]["accountEvents"].clone();
            assert_eq!(event["kind"], "QUESTION", "{msg}");
            return event;
        }
    }
    panic!("no accountEvents event after ten chats");
}

/// Two questions asked in turn, again and again: `name`, then `city` (greeting the name).
pub fn two_questions() -> Value {
    json!({ "startBlockId": "q1", "blocks": [
        { "id": "q1", "kind": "QUESTION", "text": "Name?", "saveAnswerTo": "name", "next": "q2" },
        { "id": "q2", "kind": "QUESTION", "text": "Hi {{name}}, city?", "saveAnswerTo": "city", "next": "q1" } ] })
}

/// The kinds of a list of events.
pub fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default())
        .collect()
}

/// Verifies a received webhook request with an independent HMAC, and returns how many
/// signatures in its `webhook-signature` header match `secret`.
pub fn matching_signatures(req: &wiremock::Request, secret: &str) -> usize {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = b64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&req.body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .filter(|s| *s == expected)
        .count()
}

/// A published bot that queues one async delivery to `url` per conversation.
pub async fn async_bot(app: &TestApp, owner: &TestUser, url: &str) -> (String, String) {
    let webhook = app.new_webhook(owner, url).await;
    let bot = app.new_bot(owner).await;
    let flow = json!({ "startBlockId": "hi", "blocks": [
        { "id": "hi", "kind": "MESSAGE", "text": "Hi!", "next": "hook" },
        { "id": "hook", "kind": "WEBHOOK", "webhookId": webhook, "async": true, "next": "end" },
        { "id": "end", "kind": "END" } ] });
    assert_ok(&app.save_flow(&owner.token, &bot, flow, None).await);
    assert_ok(&app.publish_bot(&owner.token, &bot).await);
    (bot, webhook)
}

/// A webhook receiver that answers every POST to `/hook` with `status`.
pub async fn hook_receiver(status: u16) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/hook"))
        .respond_with(wiremock::ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

/// Waits (up to 10 s) until `server` has received at least `n` requests; all it received.
pub async fn received(server: &wiremock::MockServer, n: usize) -> Vec<wiremock::Request> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = server.received_requests().await.unwrap_or_default();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver got {} of {n} requests",
            got.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
