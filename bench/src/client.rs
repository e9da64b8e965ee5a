//! Clients of the server under test: a minimal HTTP/1.1 keep-alive connection for the load
//! itself (so the driver spends as little of the shared CPU as possible), reqwest for the
//! set-up, and `graphql-transport-ws` subscriptions over tokio-tungstenite.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _, http::HeaderValue},
};

/// How long any single response or event may take before the bench calls it lost.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive HTTP/1.1 connection that sends a request and reads its response, like a
/// browser's connection: no pipelining.
pub struct RawHttp {
    stream: TcpStream,
    buf: Vec<u8>,
    port: u16,
}

/// A response: status and body.
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "not a JSON response (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether it is a 200 without GraphQL errors.
    pub fn is_ok_graphql(&self) -> bool {
        self.status == 200 && !contains(&self.body, b"\"errors\"")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Whether the error says the peer closed the connection (before any response byte).
fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.to_string().contains("closed the connection")
            || c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                )
            })
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RawHttp {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8192),
            port,
        })
    }

    /// A complete `POST path` request with a JSON body, ready to send as is.
    pub fn post_request(port: u16, path: &str, bearer: Option<&str>, body: &[u8]) -> Vec<u8> {
        Self::post_request_as(port, path, bearer, None, body)
    }

    /// [`RawHttp::post_request`] on behalf of `forwarded_for` (an `X-Forwarded-For` header,
    /// which names the client when the server trusts 127.0.0.1 as a proxy).
    pub fn post_request_as(
        port: u16,
        path: &str,
        bearer: Option<&str>,
        forwarded_for: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = bearer {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(addr) = forwarded_for {
            req.push_str(&format!("X-Forwarded-For: {addr}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// POSTs a GraphQL operation to /graphql.
    pub async fn graphql(
        &mut self,
        bearer: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<RawResponse> {
        self.graphql_as(None, bearer, query, variables).await
    }

    /// [`RawHttp::graphql`] on behalf of `forwarded_for` (see [`RawHttp::post_request_as`]).
    pub async fn graphql_as(
        &mut self,
        forwarded_for: Option<&str>,
        bearer: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<RawResponse> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let req = Self::post_request_as(
            self.port,
            "/graphql",
            bearer,
            forwarded_for,
            body.as_bytes(),
        );
        self.send(&req).await
    }

    /// Sends a prepared request and reads the whole response. Like a browser, it opens a
    /// new connection once when the server had closed the idle one (actix closes
    /// keep-alive connections idle for 5 s).
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<RawResponse> {
        let first = tokio::time::timeout(IO_TIMEOUT, self.exchange(request))
            .await
            .context("no HTTP response within the timeout")?;
        match first {
            Err(e) if self.buf.is_empty() && is_closed(&e) => {
                *self = Self::connect(self.port).await?;
                tokio::time::timeout(IO_TIMEOUT, self.exchange(request))
                    .await
                    .context("no HTTP response within the timeout")?
            }
            other => other,
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<RawResponse> {
        self.stream.write_all(request).await?;
        // The head.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("invalid response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status in the response")?;
        let mut length = None;
        let mut chunked = false;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            let n = length.unwrap_or(0);
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.drain(..n).collect()
        };
        Ok(RawResponse { status, body })
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("bad chunk size")?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The `data` of a GraphQL response, or an error naming what went wrong.
pub fn data(body: &Value, field: &str) -> anyhow::Result<Value> {
    let v = &body["data"][field];
    if v.is_null() {
        bail!("{field} failed: {body}");
    }
    Ok(v.clone())
}

/// The set-up client: sign-up, webhooks, bots, flows, publishing.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
    pub account_id: String,
}

impl Api {
    /// Signs up a fresh user with its account.
    pub async fn sign_up(base: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::new();
        let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
        let body = gql(&client, base, None,
            "mutation($i: SignUpInput!) { signUp(input: $i) { token user { memberships { account { id } } } } }",
            json!({ "i": { "email": email, "password": "correct horse battery", "name": "Bench", "accountName": "Bench Co" } }),
        ).await?;
        let d = data(&body, "signUp")?;
        Ok(Self {
            token: d["token"].as_str().context("no token")?.to_owned(),
            account_id: d["user"]["memberships"][0]["account"]["id"]
                .as_str()
                .context("no account")?
                .to_owned(),
            client,
            base: base.to_owned(),
        })
    }

    pub async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        gql(
            &self.client,
            &self.base,
            Some(&self.token),
            query,
            variables,
        )
        .await
    }

    /// A webhook calling `url`; its id.
    pub async fn webhook(&self, url: &str) -> anyhow::Result<String> {
        let body = self
            .gql(
                "mutation($a: ID!, $i: WebhookInput!) { createWebhook(accountId: $a, input: $i) { id } }",
                json!({ "a": self.account_id, "i": { "name": "bench", "url": url } }),
            )
            .await?;
        Ok(data(&body, "createWebhook")?["id"]
            .as_str()
            .context("no id")?
            .to_owned())
    }

    /// A bot with `flow` saved and published; its id.
    pub async fn published_bot(&self, name: &str, flow: Value) -> anyhow::Result<String> {
        let body = self
            .gql(
                "mutation($a: ID!, $n: String!) { createBot(accountId: $a, name: $n) { id } }",
                json!({ "a": self.account_id, "n": name }),
            )
            .await?;
        let bot = data(&body, "createBot")?["id"]
            .as_str()
            .context("no id")?
            .to_owned();
        let saved = self
            .gql(
                "mutation($b: ID!, $f: FlowInput!) { saveFlow(botId: $b, flow: $f) { id } }",
                json!({ "b": bot, "f": flow }),
            )
            .await?;
        data(&saved, "saveFlow")?;
        let published = self
            .gql(
                "mutation($b: ID!) { publishBot(botId: $b) { version } }",
                json!({ "b": bot }),
            )
            .await?;
        data(&published, "publishBot")?;
        Ok(bot)
    }
}

async fn gql(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let mut req = client
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.context("request failed")?;
    resp.json().await.context("the response is not JSON")
}

pub const START_CONVERSATION: &str =
    "mutation($b: ID!) { startConversation(botId: $b) { conversationId visitorToken } }";
pub const SEND_ANSWER: &str = "mutation($c: ID!, $t: String!, $x: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: $x) { seq } }";
pub const CONVERSATION_EVENTS: &str = "subscription($c: ID!, $t: String) { conversationEvents(conversationId: $c, visitorToken: $t) { kind at } }";

/// A started conversation.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub token: String,
}

/// `startConversation` on a raw connection.
pub async fn start_conversation(http: &mut RawHttp, bot: &str) -> anyhow::Result<Session> {
    let resp = http
        .graphql(None, START_CONVERSATION, json!({ "b": bot }))
        .await?;
    let body = resp.json()?;
    let s = data(&body, "startConversation")?;
    Ok(Session {
        id: s["conversationId"].as_str().context("no id")?.to_owned(),
        token: s["visitorToken"].as_str().context("no token")?.to_owned(),
    })
}

/// `startConversation`, tried again (up to 100 times) when the server answers with an
/// error; `failures` counts the failed attempts.
pub async fn start_conversation_retrying(
    http: &mut RawHttp,
    bot: &str,
    failures: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<Session> {
    let mut tries = 0;
    loop {
        match start_conversation(http, bot).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tries += 1;
                if tries >= 100 {
                    return Err(e.context("startConversation failed 100 times in a row"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// `sendAnswer` on a raw connection; fails on any GraphQL error.
pub async fn send_answer(http: &mut RawHttp, s: &Session, text: &str) -> anyhow::Result<()> {
    let resp = http
        .graphql(
            None,
            SEND_ANSWER,
            json!({ "c": s.id, "t": s.token, "x": text }),
        )
        .await?;
    if !resp.is_ok_graphql() {
        bail!("sendAnswer failed: {}", resp.text());
    }
    Ok(())
}

/// One conversation event as received.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: String,
    pub at: String,
}

/// A `graphql-transport-ws` connection that runs one subscription at a time.
pub struct Ws {
    ws: WebSocketStream<TcpStream>,
    current: u64,
}

impl Ws {
    /// Connects, sends `connection_init` and waits for the ack.
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        Self::connect_from(Ipv4Addr::LOCALHOST, port).await
    }

    /// [`Ws::connect`] from the loopback address `source`: one source address gives at most
    /// the ephemeral port range (about 28,000 on Linux) of connections to one server port, so
    /// tens of thousands of sockets need several (any 127.x.y.z is the loopback).
    pub async fn connect_from(source: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let mut req = format!("ws://127.0.0.1:{port}/graphql").into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (ws, _) = tokio::time::timeout(IO_TIMEOUT, async {
            let socket = TcpSocket::new_v4()?;
            socket
                .bind((source, 0).into())
                .with_context(|| format!("cannot bind a client socket to {source}"))?;
            let stream = socket
                .connect((Ipv4Addr::LOCALHOST, port).into())
                .await
                .with_context(|| format!("cannot connect to 127.0.0.1:{port} from {source}"))?;
            stream.set_nodelay(true)?;
            tokio_tungstenite::client_async_with_config(req, stream, None)
                .await
                .context("WebSocket handshake failed")
        })
        .await
        .context("WebSocket connect timed out")??;
        let mut this = Self { ws, current: 0 };
        this.send(json!({ "type": "connection_init", "payload": {} }))
            .await?;
        loop {
            let msg = this.next_json().await?;
            match msg["type"].as_str() {
                Some("connection_ack") => return Ok(this),
                Some("ping") | Some("pong") | Some("ka") => continue,
                _ => bail!("expected connection_ack, got {msg}"),
            }
        }
    }

    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .context("WebSocket send failed")
    }

    async fn next_json(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .context("the WebSocket closed")?
                .context("WebSocket error")?;
            match msg {
                Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                Message::Ping(p) => {
                    self.ws.send(Message::Pong(p)).await?;
                }
                Message::Close(_) => bail!("the server closed the WebSocket"),
                _ => continue,
            }
        }
    }

    /// Ends the current subscription, if any, and subscribes to `session`'s events.
    pub async fn subscribe(&mut self, session: &Session) -> anyhow::Result<()> {
        if self.current > 0 {
            let id = self.current.to_string();
            self.send(json!({ "id": id, "type": "complete" })).await?;
        }
        self.current += 1;
        let id = self.current.to_string();
        self.send(json!({ "id": id, "type": "subscribe", "payload": {
                "query": CONVERSATION_EVENTS,
                "variables": { "c": session.id, "t": session.token } } }))
            .await
    }

    /// The next event of the current subscription (events of ended ones are skipped).
    pub async fn event(&mut self) -> anyhow::Result<Event> {
        tokio::time::timeout(IO_TIMEOUT, self.next_event())
            .await
            .context("no event within the timeout")?
    }

    /// The next event of the current subscription, waiting as long as it takes.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        let current = self.current.to_string();
        loop {
            let msg = self.next_json().await?;
            match msg["type"].as_str() {
                Some("next") if msg["id"].as_str() == Some(current.as_str()) => {
                    let e = &msg["payload"]["data"]["conversationEvents"];
                    if e.is_null() {
                        bail!("subscription error: {msg}");
                    }
                    return Ok(Event {
                        kind: e["kind"].as_str().unwrap_or_default().to_owned(),
                        at: e["at"].as_str().unwrap_or_default().to_owned(),
                    });
                }
                Some("error") if msg["id"].as_str() == Some(current.as_str()) => {
                    bail!("subscription error: {msg}")
                }
                Some("ping") => self.send(json!({ "type": "pong" })).await?,
                _ => continue,
            }
        }
    }

    /// Waits for the next QUESTION or ENDED event; its kind.
    pub async fn until_bot_turn(&mut self) -> anyhow::Result<Event> {
        loop {
            let e = self.event().await?;
            if e.kind == "QUESTION" || e.kind == "ENDED" {
                return Ok(e);
            }
        }
    }
}
