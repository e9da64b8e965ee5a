//! Requests that ask to upgrade the connection (`Upgrade: websocket`), and the WebSocket
//! transport after the upgrade.
//!
//! actix-http keeps two 8 KiB buffers per connection for as long as the connection lives,
//! with no setting to shrink them, and a WebSocket served through a streaming response keeps
//! its connection in that dispatcher for its whole life: 16 KB of every idle subscription.
//! So upgrades go to actix-http's upgrade hook instead, which hands over the socket itself.
//! The request still runs through the whole app (middleware, routes, the handler's checks);
//! when the handler accepts the socket, it leaves an [`Accepted`] in its `101` response, and
//! the socket is then served by a [`Wire`] that holds a buffer only while a frame is in flight.
use std::{io, rc::Rc, time::Duration};

use actix_codec::{Decoder as _, Encoder as _, Framed};
use actix_http::{
    ConnectionType, Request, Response, StatusCode,
    body::{BodySize, BoxBody, MessageBody},
    h1, ws,
};
use actix_server::GracefulShutdownSignal;
use actix_web::{
    HttpMessage as _,
    dev::{Service, ServiceResponse},
    web::BytesMut,
};
use futures_util::future::LocalBoxFuture;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// What a handler leaves in the extensions of its `101 Switching Protocols` response: the
/// socket's life, run on the connection once the response is written.
pub struct Accepted {
    max_frame: usize,
    serve: Box<dyn FnOnce(Wire) -> LocalBoxFuture<'static, ()>>,
}

impl Accepted {
    /// The socket will be served by `serve`, over frames of at most `max_frame` bytes.
    pub fn new(
        max_frame: usize,
        serve: impl FnOnce(Wire) -> LocalBoxFuture<'static, ()> + 'static,
    ) -> Self {
        Self {
            max_frame,
            serve: Box::new(serve),
        }
    }
}

/// Marks a request that came through the upgrade hook, the only one whose connection can be
/// handed to a socket: a request that asks for an upgrade but also has a chunked body is
/// served by the ordinary dispatcher, where a `101` would leave the client with no socket.
#[derive(Clone, Copy, Debug)]
pub struct ViaUpgrade;

/// The largest answer written to an upgrade request that is not a socket; a larger one (a
/// results export, say) is refused instead of being held whole.
const MAX_PLAIN_ANSWER: u64 = 64 * 1024;

/// Serves one request that asked for an upgrade: runs it through `app` like any other, then
/// either hands the connection to the socket the handler accepted, or writes the answer and
/// closes the connection. The connection's own failures (a peer that went away) end it
/// quietly: a stranger could otherwise write a line to the error log per connection.
pub async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    stopping: GracefulShutdownSignal,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(ViaUpgrade);
    // Boxed: the app's future is large, and whatever this future holds at any await point
    // is part of every connection's allocation for as long as the socket lives.
    let mut response: Response<BoxBody> = match Box::pin(app.call(req)).await {
        Ok(res) => Response::from(res).map_into_boxed_body(),
        Err(e) => e.error_response().into(),
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let accepted = response
        .extensions_mut()
        .remove::<Accepted>()
        .filter(|_| switching);
    let result = match accepted {
        Some(accepted) => match switch(response, framed).await {
            Ok((io, early)) => {
                let wire = Wire::new(io, early, accepted.max_frame, stopping);
                (accepted.serve)(wire).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        None => Box::pin(answer(response, framed)).await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "an upgrade request's connection failed");
    }
    Ok(())
}

/// Writes the `101` and gives back the connection with what the client sent after its
/// request (the socket's first bytes). Nothing else of the HTTP connection is kept: its 8 KiB
/// buffers, the response and the codec are dropped here, before the socket's long life.
async fn switch(
    response: Response<BoxBody>,
    framed: Framed<TcpStream, h1::Codec>,
) -> io::Result<(TcpStream, BytesMut)> {
    let (head, _body) = response.into_parts();
    let mut parts = framed.into_parts();
    let mut out = BytesMut::new();
    parts
        .codec
        .encode(h1::Message::Item((head, BodySize::None)), &mut out)?;
    parts.io.write_all(&out).await?;
    let early = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&parts.read_buf[..])
    };
    Ok((parts.io, early))
}

/// Writes an ordinary answer to an upgrade request that is no socket (another path, a
/// refusal), then ends the connection, since what would follow an upgrade request is not HTTP.
async fn answer(
    response: Response<BoxBody>,
    framed: Framed<TcpStream, h1::Codec>,
) -> io::Result<()> {
    let small = matches!(
        response.body().size(),
        BodySize::None | BodySize::Sized(0..=MAX_PLAIN_ANSWER)
    );
    let (mut head, body) = if small {
        response.into_parts()
    } else {
        Response::from(super::request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "this address does not answer a request that asks for an upgrade; send it without \
             the Upgrade header",
        ))
        .into_parts()
    };
    let body = actix_web::body::to_bytes(body)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    head.head_mut().set_connection_type(ConnectionType::Close);
    let mut parts = framed.into_parts();
    let mut out = BytesMut::new();
    let size = BodySize::Sized(body.len() as u64);
    parts
        .codec
        .encode(h1::Message::Item((head, size)), &mut out)?;
    parts
        .codec
        .encode(h1::Message::Chunk(Some(body)), &mut out)?;
    parts.codec.encode(h1::Message::Chunk(None), &mut out)?;
    parts.io.write_all(&out).await?;
    linger(parts.io, CLOSE_LINGER).await;
    Ok(())
}

/// How long a connection that was told it ends waits for the peer to close before it lets go.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Ends a connection after its last words were written: no more writes, then what the peer
/// still sends (a WebSocket's own close frame) is read and dropped until it closes or `within`
/// passes, so that unread bytes do not turn the close into a reset that could lose what was
/// written last.
async fn linger(mut io: TcpStream, within: Duration) {
    let drain = async {
        if io.shutdown().await.is_err() {
            return;
        }
        // On the heap: a socket's future holds this future's state for its whole life.
        let mut scratch = vec![0u8; 512];
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// How many bytes one read may take at most; a larger frame takes several.
const READ_CHUNK: usize = 4096;

/// The longest a frame's header can be (RFC 6455 §5.2: 2 + 8 bytes of length + 4 of mask).
const MAX_FRAME_HEADER: usize = 14;

/// An upgraded connection, framed by actix-http's WebSocket codec (server side: client frames
/// must be masked). Nothing is buffered between frames: an idle socket holds only its
/// descriptor.
pub struct Wire {
    io: TcpStream,
    /// Bytes of a frame not yet whole; empty (and unallocated) between frames.
    read: BytesMut,
    codec: ws::Codec,
    max_frame: usize,
    /// The peer ended its side.
    eof: bool,
    stopping: GracefulShutdownSignal,
}

impl Wire {
    fn new(
        io: TcpStream,
        early: BytesMut,
        max_frame: usize,
        stopping: GracefulShutdownSignal,
    ) -> Self {
        Self {
            io,
            read: early,
            codec: ws::Codec::new().max_size(max_frame),
            max_frame,
            eof: false,
            stopping,
        }
    }

    /// Resolves once the server begins to shut down.
    pub fn stopping(&self) -> GracefulShutdownSignal {
        self.stopping.clone()
    }

    /// The next frame; `None` once the peer has closed the connection. Cancel-safe: bytes read
    /// stay in the wire until their frame is whole.
    pub async fn recv(&mut self) -> Option<Result<ws::Frame, ws::ProtocolError>> {
        // Reads that find data waiting never yield to the runtime by themselves: without this, a
        // peer that keeps the socket full of cheap frames would hold the worker's thread.
        tokio::task::coop::consume_budget().await;
        loop {
            match self.codec.decode(&mut self.read) {
                Ok(Some(frame)) => {
                    self.release();
                    return Some(Ok(frame));
                }
                Ok(None) if self.eof => return None,
                // What is left is one frame not yet whole. The codec checks a frame's size only
                // once it is whole: a header that announces more than the limit would fill
                // memory until the rest came.
                Ok(None) if self.read.len() > self.max_frame + MAX_FRAME_HEADER => {
                    return Some(Err(ws::ProtocolError::Overflow));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            self.release();
            // Waits with no buffer; one is taken only when there is something to read.
            if let Err(e) = self.io.readable().await {
                return Some(Err(ws::ProtocolError::Io(e)));
            }
            self.read.reserve(READ_CHUNK);
            match self.io.try_read_buf(&mut self.read) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(ws::ProtocolError::Io(e))),
            }
        }
    }

    /// Lets go of the read buffer when it holds nothing (a frame's bytes taken out of it keep
    /// their own share until they are dropped).
    fn release(&mut self) {
        if self.read.is_empty() && self.read.capacity() > 0 {
            self.read = BytesMut::new();
        }
    }

    /// Sends one message, whole. Not cancel-safe: a send cut short leaves a partial frame on
    /// the connection, which can then only be dropped.
    pub async fn send(&mut self, message: ws::Message) -> Result<(), ws::ProtocolError> {
        let mut out = BytesMut::new();
        self.codec.encode(message, &mut out)?;
        self.io.write_all(&out).await?;
        Ok(())
    }

    /// Ends the connection after a close frame was sent (see [`linger`]).
    pub async fn linger(self) {
        linger(self.io, CLOSE_LINGER).await;
    }
}
