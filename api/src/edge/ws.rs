//! `GET /graphql` upgraded to a WebSocket: subscriptions over `graphql-transport-ws` or the
//! legacy `graphql-ws`.
//!
//! async-graphql's protocol state machine ([`WebSocket`]) speaks the GraphQL protocol; this
//! handler owns the socket around it (a [`Wire`], see [`super::upgrade`]) and enforces what a
//! stranger may take:
//! sockets per client address, the time to `connection_init`, message size, operations running
//! at once, and silence. It answers every close frame with one.
use std::{
    borrow::Cow,
    cell::RefCell,
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    rc::Rc,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};

use actix_http::ws::{CloseCode, CloseReason, Frame, Item, Message, ProtocolError};
use actix_web::{
    HttpMessage as _, HttpRequest, HttpResponse,
    http::{
        StatusCode,
        header::{self, HeaderValue},
    },
    web::{self, Bytes, BytesMut},
};
use async_graphql::{
    Data,
    http::{WebSocket, WebSocketProtocols, WsMessage},
};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};

use super::{
    api_key_budget, authenticate,
    client::ClientAddr,
    limit_refusal,
    origin::RequestOrigin,
    request_error,
    upgrade::{Accepted, ViaUpgrade, Wire},
};
use crate::{auth::Auth, graphql::AppSchema, state::AppState};

/// Answers a request for a socket: refuses it when the client already holds too many, otherwise
/// accepts it with a `101` that carries the socket's life ([`Accepted`]), run on the
/// connection once the answer is written.
pub async fn graphql_ws(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> HttpResponse {
    let limits = &state.settings.limits;
    if req.extensions().get::<ViaUpgrade>().is_none() {
        // Asked for an upgrade but also sent a (chunked) body: such a request is not handed
        // over as a connection, so no socket could follow a 101.
        return request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "a WebSocket request must not have a body",
        );
    }
    let Some(protocol) = negotiate(&req) else {
        return request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "a WebSocket on /graphql needs the subprotocol graphql-transport-ws (or the legacy \
             graphql-ws) in Sec-WebSocket-Protocol",
        );
    };
    let client = ClientAddr::of(&req, &limits.trusted_proxies);
    let max = limits.ws_max_sockets_per_client;
    let Some(guard) = state.sockets.open(client.limit_key(), max) else {
        // Debug, not warn: under a flood, one line per refusal would turn the log into the
        // attack's amplifier; the client is told by its 429.
        tracing::debug!(
            client.addr = %client,
            ws.limit = max,
            "websocket refused: too many open sockets from this address"
        );
        return limit_refusal(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many open sockets from this address (PARLEY_WS_MAX_SOCKETS_PER_CLIENT={max}); \
                 close one and retry"
            ),
            "5",
        );
    };
    let mut response = match actix_http::ws::handshake(req.head()) {
        Ok(mut accept) => HttpResponse::from(accept.finish().map_into_boxed_body()),
        Err(e) => return HttpResponse::from(actix_http::Response::from(&e)),
    };
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol.sec_websocket_protocol()),
    );
    let socket = Socket {
        protocol,
        client,
        origin: RequestOrigin::of(&req, &limits.trusted_proxies),
        init_timeout: limits.ws_init_timeout,
        max_message: limits.ws_max_message_bytes,
        ping_interval: limits.ws_ping_interval,
        operations: Operations::new(limits.ws_max_operations),
    };
    let schema = AppSchema::clone(&schema);
    let state = AppState::clone(&state);
    response
        .extensions_mut()
        .insert(Accepted::new(limits.ws_max_message_bytes, move |wire| {
            Box::pin(socket.serve(schema, state, wire, guard))
        }));
    response
}

/// The first subprotocol the client offers that we speak.
fn negotiate(req: &HttpRequest) -> Option<WebSocketProtocols> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().parse().ok())
}

/// Open sockets per client address (`PARLEY_WS_MAX_SOCKETS_PER_CLIENT`). Addresses with no open
/// socket are not kept.
#[derive(Debug, Default)]
pub struct SocketCounter {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SocketCounter {
    /// Counts one more socket under `key`, unless `max` are open already.
    pub fn open(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<SocketGuard> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.get(&key).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        open.insert(key, n + 1);
        Some(SocketGuard {
            counter: Arc::clone(self),
            key,
            _open: crate::metrics::Open::new("parley_websockets_open"),
        })
    }

    /// Sockets open under `key`.
    pub fn count(&self, key: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&key).copied().unwrap_or(0)
    }

    /// Addresses with at least one open socket.
    pub fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One counted socket; dropping it uncounts it.
#[derive(Debug)]
pub struct SocketGuard {
    counter: Arc<SocketCounter>,
    key: IpAddr,
    _open: crate::metrics::Open,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let mut open = self
            .counter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The operations running on one socket (`PARLEY_WS_MAX_OPERATIONS`), by id, as seen in the
/// messages that pass through the handler.
#[derive(Debug)]
struct Operations {
    max: usize,
    running: HashSet<String>,
    /// Ids the client completed whose `complete` from the server is still to come; that
    /// `complete` must not end a new operation that reuses the id.
    stopping: HashSet<String>,
}

/// What to do with a message from the client.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Hand it to the protocol state machine.
    Forward,
    /// Answer this `error` message instead: the operation does not start.
    Refuse(String),
    /// Close the socket.
    Close(u16, String),
}

/// The envelope of a protocol message: its type and operation id.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

impl Operations {
    fn new(max: usize) -> Self {
        Self {
            max,
            running: HashSet::new(),
            stopping: HashSet::new(),
        }
    }

    /// Accounts for a message from the client.
    fn on_client_message(&mut self, protocol: WebSocketProtocols, kind: &str, id: &str) -> Verdict {
        match kind {
            "subscribe" | "start" => {
                if self.running.contains(id) {
                    return match protocol {
                        WebSocketProtocols::GraphQLWS => {
                            Verdict::Close(4409, format!("Subscriber for {id} already exists"))
                        }
                        // The legacy protocol replaces the operation: still one.
                        WebSocketProtocols::SubscriptionsTransportWS => Verdict::Forward,
                    };
                }
                if self.running.len() >= self.max {
                    let max = self.max;
                    let error = serde_json::json!({
                        "type": "error",
                        "id": id,
                        "payload": [{
                            "message": format!(
                                "too many operations at once on this socket \
                                 (PARLEY_WS_MAX_OPERATIONS={max}); complete one and retry"
                            ),
                            "extensions": { "code": "RATE_LIMITED" }
                        }]
                    });
                    return Verdict::Refuse(error.to_string());
                }
                self.running.insert(id.to_owned());
                Verdict::Forward
            }
            "complete" | "stop" => {
                if self.running.remove(id) {
                    self.stopping.insert(id.to_owned());
                }
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }

    /// Accounts for the server's `complete` or `error` for `id`.
    fn ended(&mut self, id: &str) {
        if !self.stopping.remove(id) {
            self.running.remove(id);
        }
    }
}

/// How a socket ends.
enum End {
    /// Send this close frame.
    Close(Option<CloseReason>),
    /// The peer is gone or does not read: nothing more can be sent.
    Gone,
}

/// The most a close frame's reason may take: a control frame carries at most 125 bytes, two
/// of them the code (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

fn close(code: impl Into<CloseCode>, reason: impl Into<String>) -> End {
    let mut reason = reason.into();
    if reason.len() > MAX_CLOSE_REASON {
        // Some reasons carry what the client sent (an operation id, a message type).
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    End::Close(Some(CloseReason {
        code: code.into(),
        description: Some(reason).filter(|r| !r.is_empty()),
    }))
}

/// The answer to a client's close frame: the same code, when it is one that may be sent.
fn echo(reason: Option<CloseReason>) -> End {
    End::Close(reason.map(|r| {
        let code = u16::from(r.code);
        let code = if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            r.code
        } else {
            CloseCode::Normal
        };
        CloseReason {
            code,
            description: None,
        }
    }))
}

/// One upgraded socket.
struct Socket {
    protocol: WebSocketProtocols,
    client: ClientAddr,
    origin: RequestOrigin,
    init_timeout: Duration,
    max_message: usize,
    ping_interval: Duration,
    operations: Operations,
}

impl Socket {
    async fn serve(
        mut self,
        schema: AppSchema,
        state: AppState,
        mut wire: Wire,
        guard: SocketGuard,
    ) {
        let end = self.run(schema, state, &mut wire).await;
        // Uncounted before the close frame goes out: a client that saw it may open another.
        drop(guard);
        if let End::Close(reason) = end {
            let stall = self.ping_interval * 2;
            if deliver(wire.send(Message::Close(reason)), stall).await {
                wire.linger().await;
            }
        }
    }

    /// Runs the socket until it ends; the protocol state machine (and every operation on the
    /// socket) is dropped on return.
    async fn run(&mut self, schema: AppSchema, state: AppState, wire: &mut Wire) -> End {
        let client = self.client;
        let origin = self.origin.clone();
        let protocol = self.protocol;
        // Messages for the state machine; a few at most wait here (the socket is not read while
        // one waits to be handed over).
        let inbox = Inbox::default();
        let incoming = inbox.clone();
        let machine = WebSocket::new(schema, incoming, protocol).on_connection_init(
            move |value: serde_json::Value| async move {
                let origin = origin;
                let header = value
                    .get("Authorization")
                    .or_else(|| value.get("authorization"))
                    .and_then(|v| v.as_str());
                // The session is checked too: a logged-out token cannot open a socket.
                let auth = authenticate(&state, header).await;
                if let Auth::Invalid(why) = auth {
                    return Err(async_graphql::Error::new(why));
                }
                if let Err(e) = api_key_budget(&state, &auth) {
                    // Held, as on `POST /graphql`: a client that opens its next socket the
                    // moment this one is refused gets two refusals a second, not thousands.
                    let refusal = Err(async_graphql::Error::new(e.message()));
                    return state.tarpit.hold(refusal).await;
                }
                let mut data = Data::default();
                data.insert(super::caller::Caller {
                    auth,
                    client,
                    origin,
                });
                Ok(data)
            },
        );
        let mut machine = std::pin::pin!(machine);

        let init_deadline = tokio::time::sleep(self.init_timeout);
        let mut init_deadline = std::pin::pin!(init_deadline);
        let mut initialised = false;
        let mut acked = false;
        let interval = self.ping_interval;
        // A peer that does not take what is sent for this long is dropped too.
        let stall = interval * 2;
        let stopping = wire.stopping();
        let stopping = stopping.notified();
        let mut stopping = std::pin::pin!(stopping);
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // A fragmented message being put together.
        let mut partial: Option<BytesMut> = None;
        // A message the state machine has not taken yet.
        let mut pending: Option<Bytes> = None;

        let end = loop {
            tokio::select! {
                () = inbox.room(), if pending.is_some() => {
                    if let Some(message) = pending.take() {
                        inbox.push(message);
                    }
                }
                frame = wire.recv(), if pending.is_none() => {
                    last_heard = Instant::now();
                    let message = match frame {
                        None => break End::Gone,
                        Some(Err(e)) => break self.protocol_error(e),
                        Some(Ok(Frame::Ping(bytes))) => {
                            if !deliver(wire.send(Message::Pong(bytes)), stall).await {
                                break End::Gone;
                            }
                            continue;
                        }
                        Some(Ok(Frame::Pong(_))) => continue,
                        Some(Ok(Frame::Close(reason))) => break echo(reason),
                        Some(Ok(Frame::Text(bytes))) => {
                            if std::str::from_utf8(&bytes).is_err() {
                                break close(CloseCode::Invalid, "a text message is not UTF-8");
                            }
                            bytes
                        }
                        Some(Ok(Frame::Binary(bytes))) => bytes,
                        Some(Ok(Frame::Continuation(item))) => {
                            let (first, bytes, last) = match item {
                                Item::FirstText(b) | Item::FirstBinary(b) => (true, b, false),
                                Item::Continue(b) => (false, b, false),
                                Item::Last(b) => (false, b, true),
                            };
                            let buf = if first {
                                partial.insert(BytesMut::new())
                            } else if let Some(buf) = partial.as_mut() {
                                buf
                            } else {
                                break close(CloseCode::Protocol, "continuation without a first frame");
                            };
                            if buf.len() + bytes.len() > self.max_message {
                                break self.too_big();
                            }
                            buf.extend_from_slice(&bytes);
                            if !last {
                                continue;
                            }
                            partial.take().map(BytesMut::freeze).unwrap_or_default()
                        }
                    };
                    match self.on_client_message(&message, &mut initialised) {
                        Verdict::Forward => {
                            if inbox.has_room() {
                                inbox.push(message);
                            } else {
                                pending = Some(message);
                            }
                        }
                        Verdict::Refuse(error) => {
                            if !deliver(wire.send(Message::Text(error.into())), stall).await {
                                break End::Gone;
                            }
                        }
                        Verdict::Close(code, reason) => break close(code, reason),
                    }
                }
                out = machine.next() => match out {
                    Some(WsMessage::Text(text)) => {
                        acked |= text.starts_with(r#"{"type":"connection_ack""#);
                        self.on_server_message(&text);
                        if !deliver(wire.send(Message::Text(text.into())), stall).await {
                            break End::Gone;
                        }
                    }
                    // The protocol's own codes where async-graphql uses generic ones: a refused
                    // `connection_init` is 4403 Forbidden, an operation before the ack 4401.
                    Some(WsMessage::Close(1002, reason)) if !acked => break close(4403, reason),
                    Some(WsMessage::Close(1011, reason)) if !acked => break close(4401, reason),
                    Some(WsMessage::Close(code, reason)) => break close(code, reason),
                    // `connection_terminate`, or the end after a `connection_error`.
                    None => break close(CloseCode::Normal, ""),
                },
                // Told, so that the client reconnects (to another instance) at once.
                () = &mut stopping => break close(CloseCode::Away, "the server is shutting down"),
                () = &mut init_deadline, if !initialised => {
                    break close(4408, "Connection initialisation timeout");
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() >= interval * 2 {
                        tracing::info!(
                            client.addr = %client,
                            ws.silent_ms = last_heard.elapsed().as_millis() as u64,
                            "websocket dropped: no answer to pings"
                        );
                        break close(CloseCode::Away, "no answer to ping");
                    }
                    if !deliver(wire.send(Message::Ping(Bytes::new())), stall).await {
                        break End::Gone;
                    }
                }
            }
        };
        if let End::Close(Some(reason)) = &end {
            let code = u16::from(reason.code);
            if code != 1000 {
                tracing::info!(
                    client.addr = %client,
                    ws.protocol = protocol.sec_websocket_protocol(),
                    ws.close.code = code,
                    ws.close.reason = reason.description.as_deref().unwrap_or_default(),
                    "websocket closed"
                );
            }
        }
        end
    }

    /// Accounts for a message from the client: `connection_init` stops the init timer, and
    /// operations are counted.
    fn on_client_message(&mut self, message: &[u8], initialised: &mut bool) -> Verdict {
        // What does not parse goes to the state machine, which closes with its own error.
        let Ok(Envelope { kind, id }) = serde_json::from_slice::<Envelope<'_>>(message) else {
            return Verdict::Forward;
        };
        let Some(kind) = kind else {
            return Verdict::Forward;
        };
        if kind == "connection_init" {
            *initialised = true;
            return Verdict::Forward;
        }
        let Some(id) = id else {
            return Verdict::Forward;
        };
        let verdict = self.operations.on_client_message(self.protocol, &kind, &id);
        if let Verdict::Refuse(_) = verdict {
            tracing::info!(
                client.addr = %self.client,
                ws.operation = %id,
                ws.limit = self.operations.max,
                "websocket operation refused: too many at once"
            );
        }
        verdict
    }

    /// Accounts for a message to the client. Only the small ones are read: async-graphql
    /// writes `type` first.
    fn on_server_message(&mut self, text: &str) {
        if text.starts_with(r#"{"type":"complete""#) || text.starts_with(r#"{"type":"error""#) {
            if let Ok(Envelope { id: Some(id), .. }) = serde_json::from_str::<Envelope<'_>>(text) {
                self.operations.ended(&id);
            }
        } else if text.starts_with(r#"{"type":"connection_error""#) {
            tracing::info!(
                client.addr = %self.client,
                ws.protocol = self.protocol.sec_websocket_protocol(),
                ws.error = text,
                "websocket connection refused"
            );
        }
    }

    fn too_big(&self) -> End {
        close(
            CloseCode::Size,
            format!(
                "a message may be at most {} bytes (PARLEY_WS_MAX_MESSAGE_BYTES)",
                self.max_message
            ),
        )
    }

    fn protocol_error(&self, e: ProtocolError) -> End {
        match e {
            ProtocolError::Overflow => self.too_big(),
            // A frame the codec refused (reserved bits set).
            ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                close(CloseCode::Protocol, e.to_string())
            }
            // The connection itself failed.
            ProtocolError::Io(_) => End::Gone,
            other => close(CloseCode::Protocol, other.to_string()),
        }
    }
}

/// Messages from the client waiting for the protocol state machine, which reads them as its
/// input stream. Both ends live in the socket's one task, so this is a queue of at most
/// [`Inbox::CAPACITY`] with a waker each way, not a channel: a tokio channel would cost every
/// idle socket its shared state and a first block of 32 slots (about 1.5 KB) for nothing.
#[derive(Clone, Default)]
struct Inbox(Rc<RefCell<InboxState>>);

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Bytes>,
    /// The state machine, waiting for a message.
    reader: Option<Waker>,
    /// The socket loop, waiting for room.
    writer: Option<Waker>,
}

impl Inbox {
    const CAPACITY: usize = 4;

    fn has_room(&self) -> bool {
        self.0.borrow().queue.len() < Self::CAPACITY
    }

    /// Queues `message`; callers check [`Inbox::has_room`] first.
    fn push(&self, message: Bytes) {
        let mut state = self.0.borrow_mut();
        state.queue.push_back(message);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// Ready once a message fits.
    async fn room(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.0.borrow_mut();
            if state.queue.len() < Self::CAPACITY {
                Poll::Ready(())
            } else {
                state.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl futures_util::Stream for Inbox {
    type Item = Bytes;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.0.borrow_mut();
        match state.queue.pop_front() {
            Some(message) => {
                if state.queue.is_empty() {
                    // Drained: give back what a burst took (an idle socket keeps nothing).
                    state.queue = VecDeque::new();
                }
                if let Some(writer) = state.writer.take() {
                    writer.wake();
                }
                Poll::Ready(Some(message))
            }
            None => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Sends with a deadline: false when the peer is gone or has not taken it in time.
async fn deliver<E>(send: impl Future<Output = Result<(), E>>, deadline: Duration) -> bool {
    matches!(tokio::time::timeout(deadline, send).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_counted_per_address_and_forgotten_at_zero() {
        let counter = Arc::new(SocketCounter::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = counter.open(a, 2).expect("first");
        let second = counter.open(a, 2).expect("second");
        assert!(counter.open(a, 2).is_none(), "a third is over the cap");
        let other = counter
            .open(b, 2)
            .expect("another address has its own count");
        assert_eq!(counter.count(a), 2);
        drop(first);
        assert_eq!(counter.count(a), 1);
        let again = counter.open(a, 2).expect("room again after one closed");
        drop((second, again, other));
        assert_eq!(counter.addresses(), 0, "no entry is kept for zero sockets");
    }

    #[test]
    fn operations_past_the_cap_are_refused_until_one_ends() {
        let p = WebSocketProtocols::GraphQLWS;
        let mut ops = Operations::new(2);
        assert_eq!(ops.on_client_message(p, "subscribe", "1"), Verdict::Forward);
        assert_eq!(ops.on_client_message(p, "subscribe", "2"), Verdict::Forward);
        let Verdict::Refuse(error) = ops.on_client_message(p, "subscribe", "3") else {
            panic!("the third is refused");
        };
        assert!(
            error.contains("RATE_LIMITED") && error.contains("\"id\":\"3\""),
            "{error}"
        );
        ops.ended("2");
        assert_eq!(ops.on_client_message(p, "subscribe", "3"), Verdict::Forward);
        assert!(matches!(
            ops.on_client_message(p, "subscribe", "3"),
            Verdict::Close(4409, _)
        ));
    }

    #[test]
    fn the_servers_complete_after_a_clients_does_not_end_a_reused_id() {
        let p = WebSocketProtocols::GraphQLWS;
        let mut ops = Operations::new(1);
        assert_eq!(ops.on_client_message(p, "subscribe", "1"), Verdict::Forward);
        assert_eq!(ops.on_client_message(p, "complete", "1"), Verdict::Forward);
        assert_eq!(ops.on_client_message(p, "subscribe", "1"), Verdict::Forward);
        // The state machine's `complete` for the first "1" arrives now.
        ops.ended("1");
        assert!(
            matches!(
                ops.on_client_message(p, "subscribe", "2"),
                Verdict::Refuse(_)
            ),
            "the second \"1\" still runs and fills the cap"
        );
        ops.ended("1");
        assert_eq!(ops.on_client_message(p, "subscribe", "2"), Verdict::Forward);
    }
}
