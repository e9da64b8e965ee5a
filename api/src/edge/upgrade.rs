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
use actix_web::{
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
pub struct Accepted(Box<dyn FnOnce(Wire) -> LocalBoxFuture<'static, ()>>);

impl Accepted {
    /// The socket will be served by `serve`, over frames of at most `max_frame` bytes.
    pub fn new(
        max_frame: usize,
        serve: impl FnOnce(Wire) -> LocalBoxFuture<'static, ()> + 'static,
    ) -> Self {
        Self(Box::new(move |mut wire: Wire| {
            wire.codec = ws::Codec::new().max_size(max_frame);
            serve(wire)
        }))
    }
}

/// Serves one request that asked for an upgrade: runs it through `app` like any other, then
/// either hands the connection to the socket the handler accepted, or writes the answer and
/// closes the connection.
pub async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let mut response: Response<BoxBody> = match app.call(req).await {
        Ok(res) => Response::from(res).map_into_boxed_body(),
        Err(e) => e.error_response().into(),
    };
    let accepted = response.extensions_mut().remove::<Accepted>();
    let (mut head, body) = response.into_parts();
    let mut parts = framed.into_parts();
    let mut out = BytesMut::new();
    match accepted {
        Some(accepted) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            parts
                .codec
                .encode(h1::Message::Item((head, BodySize::None)), &mut out)?;
            parts.io.write_all(&out).await?;
            // What the client sent after its request is the socket's first bytes; the 8 KiB
            // buffer they came in is not kept.
            let early = if parts.read_buf.is_empty() {
                BytesMut::new()
            } else {
                BytesMut::from(&parts.read_buf[..])
            };
            drop(parts.read_buf);
            drop(parts.write_buf);
            (accepted.0)(Wire::new(parts.io, early)).await;
        }
        _ => {
            // Not a socket (another path, a refusal): the answer, then the connection ends,
            // since what follows an upgrade request is not HTTP.
            let body = actix_web::body::to_bytes(body)
                .await
                .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
            head.head_mut().set_connection_type(ConnectionType::Close);
            let size = BodySize::Sized(body.len() as u64);
            parts
                .codec
                .encode(h1::Message::Item((head, size)), &mut out)?;
            parts
                .codec
                .encode(h1::Message::Chunk(Some(body)), &mut out)?;
            parts.codec.encode(h1::Message::Chunk(None), &mut out)?;
            parts.io.write_all(&out).await?;
            let _ = parts.io.shutdown().await;
        }
    }
    Ok(())
}

/// How many bytes one read may take at most; a larger frame takes several.
const READ_CHUNK: usize = 4096;

/// An upgraded connection, framed by actix-http's WebSocket codec (server side: client frames
/// must be masked). Nothing is buffered between frames: an idle socket holds only its
/// descriptor.
pub struct Wire {
    io: TcpStream,
    /// Bytes of a frame not yet whole; empty (and unallocated) between frames.
    read: BytesMut,
    codec: ws::Codec,
    /// The peer ended its side.
    eof: bool,
}

impl Wire {
    fn new(io: TcpStream, early: BytesMut) -> Self {
        Self {
            io,
            read: early,
            codec: ws::Codec::new(),
            eof: false,
        }
    }

    /// The next frame; `None` once the peer has closed the connection. Cancel-safe: bytes read
    /// stay in the wire until their frame is whole.
    pub async fn recv(&mut self) -> Option<Result<ws::Frame, ws::ProtocolError>> {
        loop {
            match self.codec.decode(&mut self.read) {
                Ok(Some(frame)) => {
                    self.release();
                    return Some(Ok(frame));
                }
                Ok(None) if self.eof => return None,
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

    /// Ends the connection after a close frame was sent: no more writes, then what the peer
    /// still sends (its own close frame) is read and dropped until it closes or `within`
    /// passes, so that unread bytes do not turn the close into a reset that could lose the
    /// close frame on the way.
    pub async fn linger(mut self, within: Duration) {
        let drain = async {
            if self.io.shutdown().await.is_err() {
                return;
            }
            let mut scratch = [0u8; 512];
            while let Ok(n) = self.io.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
    }
}
