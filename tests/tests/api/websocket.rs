//! The WebSocket transport's own rules: close frames, the init timeout, message size,
//! operations per socket, sockets per address, pings, and both subprotocols.
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, Message,
    client::IntoClientRequest as _,
    http::HeaderValue,
    protocol::{
        CloseFrame,
        frame::{
            Frame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket offering `protocol`; the upgrade response too.
async fn try_connect(
    app: &TestApp,
    protocol: &str,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{}/graphql", app.port)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocol).expect("header"),
    );
    tokio_tungstenite::connect_async(req).await
}

async fn connect(app: &TestApp) -> Ws {
    try_connect(app, "graphql-transport-ws")
        .await
        .expect("websocket connects")
        .0
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// Sends `connection_init` (with `token` if given) and expects the ack.
async fn init(ws: &mut Ws, token: Option<&str>) {
    let payload = match token {
        Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
        None => json!({}),
    };
    send(ws, json!({ "type": "connection_init", "payload": payload })).await;
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
}

/// The next text message as JSON (pings and pongs of either layer skipped); fails on a close
/// or 5 s of silence.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket is open")
            .expect("a readable message");
        match msg {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if v["type"] == "ka" {
                    continue;
                }
                return v;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame (text and pings before it are skipped) and returns it;
/// fails if the connection ends without one (what a client sees as 1006) or none comes in 5 s.
async fn close_frame(ws: &mut Ws) -> CloseFrame {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a close frame within 5 s");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the connection failed without a close frame: {e}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// A GraphQL-level ping is answered: the socket still serves.
async fn assert_serving(ws: &mut Ws) {
    send(ws, json!({ "type": "ping" })).await;
    let pong = next_json(ws).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test]
async fn a_client_closing_with_1000_gets_a_close_frame_with_1000_back() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close sent");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Normal, "{frame:?}");

    // Before connection_init too, and with another code.
    let mut ws = connect(&app).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    })))
    .await
    .expect("close sent");
    assert_eq!(close_frame(&mut ws).await.code, CloseCode::Away);
}

#[tokio::test]
async fn a_socket_that_never_sends_connection_init_is_closed_with_4408() {
    let app = spawn_app_with(|s| s.limits.ws_init_timeout = Duration::from_millis(300)).await;
    let mut idle = connect(&app).await;
    let mut initialised = connect(&app).await;
    init(&mut initialised, None).await;

    let frame = close_frame(&mut idle).await;
    assert_eq!(u16::from(frame.code), 4408, "{frame:?}");
    assert!(frame.reason.contains("initialisation"), "{frame:?}");

    // The one that did send it is past the timeout and still serving.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_serving(&mut initialised).await;
}

#[tokio::test]
async fn a_message_larger_than_the_limit_closes_the_socket_with_1009() {
    let app = spawn_app_with(|s| s.limits.ws_max_message_bytes = 1024).await;
    let user = app.new_user().await;
    // Under the limit, a message is served.
    let mut ws = connect(&app).await;
    init(&mut ws, Some(&user.token)).await;
    let padding = " ".repeat(800);
    send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": format!("{{ me {{ email }} {padding} }}") } }),
    )
    .await;
    let next = next_json(&mut ws).await;
    assert_eq!(next["payload"]["data"]["me"]["email"], user.email, "{next}");

    // One frame over it.
    let big = json!({ "type": "ping", "payload": { "pad": "x".repeat(2000) } });
    send(&mut ws, big).await;
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
    assert!(
        frame.reason.contains("PARLEY_WS_MAX_MESSAGE_BYTES"),
        "{frame:?}"
    );

    // Fragments, each small, that add up to more.
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    let chunk = "x".repeat(400);
    ws.send(Message::Frame(Frame::message(
        format!("{{\"type\":\"ping\",\"payload\":{{\"pad\":\"{chunk}"),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("first fragment");
    for _ in 0..3 {
        ws.send(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .expect("fragment");
    }
    ws.send(Message::Frame(Frame::message(
        "\"}}",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .expect("last fragment");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
}

#[tokio::test]
async fn fragments_within_the_limit_make_one_message() {
    let app = spawn_app_with(|s| s.limits.ws_max_message_bytes = 1024).await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    for (part, opcode, last) in [
        ("{\"type\":", OpCode::Data(Data::Text), false),
        ("\"pi", OpCode::Data(Data::Continue), false),
        ("ng\"}", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(part, opcode, last)))
            .await
            .expect("fragment");
    }
    let pong = next_json(&mut ws).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test]
async fn an_operation_past_the_cap_is_refused_with_rate_limited_and_the_socket_keeps_serving() {
    let app = spawn_app_with(|s| s.limits.ws_max_operations = 2).await;
    let user = app.new_user().await;
    let mut ws = connect(&app).await;
    init(&mut ws, Some(&user.token)).await;
    let watch = |id: &str| {
        json!({ "id": id, "type": "subscribe", "payload": {
            "query": "subscription($a: ID!) { accountEvents(accountId: $a) { seq } }",
            "variables": { "a": user.account_id } } })
    };
    send(&mut ws, watch("a")).await;
    send(&mut ws, watch("b")).await;
    send(&mut ws, watch("c")).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "c", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    assert!(
        refused["payload"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("PARLEY_WS_MAX_OPERATIONS")),
        "{refused}"
    );
    assert_serving(&mut ws).await;

    // A finished operation makes room; the two that run still do.
    send(&mut ws, json!({ "id": "a", "type": "complete" })).await;
    let done = next_json(&mut ws).await;
    assert_eq!(done, json!({ "type": "complete", "id": "a" }));
    send(
        &mut ws,
        json!({ "id": "d", "type": "subscribe", "payload": { "query": "{ me { email } }" } }),
    )
    .await;
    let next = next_json(&mut ws).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["id"], "d", "{next}");
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "complete", "id": "d" })
    );
    // "b" still runs and counts: with "d" done there is room for exactly one more.
    send(&mut ws, watch("e")).await;
    send(&mut ws, watch("f")).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "f", "{refused}");
}

#[tokio::test]
async fn a_reused_operation_id_closes_with_4409() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let mut ws = connect(&app).await;
    init(&mut ws, Some(&user.token)).await;
    let watch = json!({ "id": "a", "type": "subscribe", "payload": {
        "query": "subscription($a: ID!) { accountEvents(accountId: $a) { seq } }",
        "variables": { "a": user.account_id } } });
    send(&mut ws, watch.clone()).await;
    send(&mut ws, watch).await;
    let frame = close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4409, "{frame:?}");
}

#[tokio::test]
async fn sockets_past_the_per_address_cap_get_429_until_one_closes() {
    let app = spawn_app_with(|s| s.limits.ws_max_sockets_per_client = 2).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    match try_connect(&app, "graphql-transport-ws").await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(
                response.headers().get("retry-after").is_some(),
                "{response:?}"
            );
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("JSON body");
            assert_error(&body, "RATE_LIMITED");
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("PARLEY_WS_MAX_SOCKETS_PER_CLIENT=2"),
                "{body}"
            );
        }
        Ok(_) => panic!("a third socket from one address was accepted"),
        Err(e) => panic!("expected HTTP 429, got {e}"),
    }
    // Both open ones still serve.
    init(&mut second, None).await;

    first
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .expect("close");
    // The count drops before the close frame is answered: no waiting needed.
    close_frame(&mut first).await;
    let (mut third, _) = try_connect(&app, "graphql-transport-ws")
        .await
        .expect("a socket is accepted again once one closed");
    init(&mut third, None).await;
}

#[tokio::test]
async fn a_peer_that_answers_no_pings_is_dropped_and_one_that_does_stays() {
    let app = spawn_app_with(|s| s.limits.ws_ping_interval = Duration::from_millis(200)).await;
    let mut silent = connect(&app).await;
    let mut lively = connect(&app).await;
    init(&mut silent, None).await;
    init(&mut lively, None).await;

    // Reading answers pings (tungstenite pongs on its own); the silent one is not read.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while let Ok(msg) = tokio::time::timeout_at(until, lively.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pings >= 2,
        "pinged {pings} times in 1 s at a 200 ms interval"
    );
    assert_serving(&mut lively).await;

    let frame = close_frame(&mut silent).await;
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
}

#[tokio::test]
async fn both_subprotocols_run_an_operation_and_the_chosen_one_is_echoed() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for (offered, chosen, start, data) in [
        (
            "graphql-transport-ws",
            "graphql-transport-ws",
            "subscribe",
            "next",
        ),
        ("graphql-ws", "graphql-ws", "start", "data"),
        ("nonsense, graphql-ws", "graphql-ws", "start", "data"),
    ] {
        let (mut ws, response) = try_connect(&app, offered).await.expect("connects");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(chosen),
            "{offered}"
        );
        init(&mut ws, Some(&user.token)).await;
        send(
            &mut ws,
            json!({ "id": "1", "type": start, "payload": { "query": "{ me { email } }" } }),
        )
        .await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], data, "{offered}: {reply}");
        assert_eq!(
            reply["payload"]["data"]["me"]["email"], user.email,
            "{offered}: {reply}"
        );
        let done = next_json(&mut ws).await;
        assert_eq!(done["type"], "complete", "{offered}: {done}");
        ws.close(None).await.ok();
    }
    // No protocol we speak: refused before the upgrade.
    match try_connect(&app, "mqtt").await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected HTTP 400, got {:?}", other.map(|(_, r)| r)),
    }
}

/// A client text frame carrying `text` (under 126 bytes), masked as clients must.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let len = u8::try_from(text.len()).expect("a short message");
    assert!(len < 126, "a short message");
    let mut frame = vec![0x81, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An upgrade request for `path` as raw HTTP/1.1; `key` adds a `Sec-WebSocket-Key`.
fn upgrade_request(app: &TestApp, path: &str, key: bool) -> String {
    let key = if key {
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        ""
    };
    format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-protocol: graphql-transport-ws\r\n{key}\r\n",
        app.port
    )
}

/// Everything the server sends on `stream` until it closes the connection (5 s at most).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection within 5 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_first_message_sent_along_with_the_handshake_is_served() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app().await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // The request and the first frame in one write: the frame arrives in the same read as
    // the request's head, before the server has answered it.
    let mut bytes = upgrade_request(&app, "/graphql", true).into_bytes();
    bytes.extend(masked_text_frame(r#"{"type":"connection_init"}"#));
    tcp.write_all(&bytes).await.expect("write");

    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut byte))
            .await
            .expect("the answer within 5 s")
            .expect("read");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: graphql-transport-ws"),
        "{head}"
    );
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    assert_serving(&mut ws).await;
}

#[tokio::test]
async fn an_upgrade_request_that_is_no_socket_gets_its_answer_and_the_connection_ends() {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app().await;
    for (path, key, status, body) in [
        // Another route answers as it always does.
        ("/healthz", true, "200", "\"status\":\"ok\""),
        ("/nowhere", true, "404", ""),
        // A socket request without its key is refused by the handshake.
        ("/graphql", false, "400", ""),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connect");
        tcp.write_all(upgrade_request(&app, path, key).as_bytes())
            .await
            .expect("write");
        let answer = read_to_close(&mut tcp).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{path}: {answer}"
        );
        assert!(answer.contains(body), "{path}: {answer}");
    }
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_closes_the_socket_with_1007() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    ws.send(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .expect("send");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Invalid, "{frame:?}");
}

#[tokio::test]
async fn an_upgrade_request_with_a_body_gets_400_and_no_socket() {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app().await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // A chunked body wins over the upgrade in actix-http's parser: such a request is served
    // as a plain one, where a 101 would leave the client with no socket.
    let request = upgrade_request(&app, "/graphql", true).replace(
        "connection: Upgrade\r\n",
        "connection: Upgrade, close\r\ntransfer-encoding: chunked\r\n",
    ) + "0\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.expect("write");
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("must not have a body"), "{answer}");
}

#[tokio::test]
async fn a_frame_with_reserved_bits_closes_the_socket_with_1002() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    let mut frame = Frame::message(r#"{"type":"ping"}"#, OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    ws.send(Message::Frame(frame)).await.expect("send");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Protocol, "{frame:?}");
}

#[tokio::test]
async fn a_close_reason_that_quotes_the_client_fits_in_a_close_frame() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    // The protocol's error names the unknown type: far more than a close frame may carry.
    let kind = "x".repeat(300);
    send(&mut ws, json!({ "type": kind, "id": "1" })).await;
    let frame = close_frame(&mut ws).await;
    assert_ne!(frame.code, CloseCode::Normal, "{frame:?}");
    assert!(
        !frame.reason.is_empty() && frame.reason.len() <= 123,
        "{frame:?}"
    );
}

#[tokio::test]
async fn sockets_are_told_with_1001_when_the_server_stops() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    app.stop_gracefully();
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
}

#[tokio::test]
async fn a_frame_announcing_more_than_the_limit_is_refused_before_it_arrives_whole() {
    use tokio::io::AsyncWriteExt as _;
    let app = spawn_app_with(|s| s.limits.ws_max_message_bytes = 1024).await;
    let mut ws = connect(&app).await;
    init(&mut ws, None).await;
    // A text frame whose header announces 1 MiB, then only its first 4 KiB: the server must
    // not wait for (and hold) the rest before refusing it.
    let mut raw = vec![0x81, 0x80 | 127];
    raw.extend_from_slice(&(1u64 << 20).to_be_bytes());
    raw.extend_from_slice(&[1, 2, 3, 4]);
    raw.extend(std::iter::repeat_n(b'x' ^ 1, 4096));
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("a plain connection");
    };
    tcp.write_all(&raw).await.expect("write");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
}
