//! The WebSocket transport: the upgrade (with permessage-deflate agreed where the server
//! compresses, see [`deflate`]), and the socket's [`Reader`] and [`Writer`] halves as a
//! session's [`Incoming`] and [`Outgoing`]. The frames themselves are `frames`' (an idle
//! connection holds no buffer there); the upgrade is done here rather than by axum so that the
//! socket comes back as the TCP stream it is and a frame compressed once can go to every
//! subscriber as it is.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::deflate::{self, Agreed};
use super::frames::{self, BINARY, Event, Frames, Sender, TEXT};
use crate::frame::{Frame, Messages};
use crate::protocol::{CloseCode, Codec, Item, V1};
use crate::session::{Inbound, Incoming, Outgoing, ReadError, WriteError};

/// A WebSocket handshake request, checked; [`Upgrade::accept`] answers it.
#[derive(Debug)]
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The client's `Sec-WebSocket-Extensions` offers.
    offers: Vec<String>,
}

/// Why a request is not a WebSocket handshake.
#[derive(Debug)]
pub(crate) struct NotAnUpgrade(StatusCode, &'static str);

impl NotAnUpgrade {
    /// The HTTP status the refusal calls for.
    pub(crate) fn status(&self) -> StatusCode {
        self.0
    }

    /// What is wrong with the handshake.
    pub(crate) fn reason(&self) -> &'static str {
        self.1
    }
}

/// Only for axum's extractor contract: the routes take `Result<Upgrade, NotAnUpgrade>` and
/// answer the refusal in the server's own error body.
impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAnUpgrade> {
        let bad = |why| NotAnUpgrade(StatusCode::BAD_REQUEST, why);
        if parts.method != Method::GET {
            return Err(NotAnUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("Connection header did not include 'upgrade'"));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(bad("`Upgrade` header did not include 'websocket'"));
        }
        let version = parts.headers.get(header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v.as_bytes() != b"13") {
            return Err(bad("`Sec-WebSocket-Version` header did not include '13'"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(bad("`Sec-WebSocket-Key` header missing"))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotAnUpgrade(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ))?;
        let offers = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            key,
            on_upgrade,
            offers,
        })
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// How one socket is set up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SocketSettings {
    /// The largest message a client may send (after inflating, when compressed).
    pub max_message_size: usize,
    /// Agree to permessage-deflate when the client offers it.
    pub compression: bool,
}

impl Upgrade {
    /// Answers the handshake (101, with permessage-deflate if agreed) and, once the connection
    /// is switched, hands its halves to `serve` in a task of its own.
    pub(crate) fn accept<F, Fut>(self, settings: SocketSettings, serve: F) -> Response
    where
        F: FnOnce(Reader, Writer) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let agreed = settings
            .compression
            .then(|| deflate::negotiate(self.offers.iter().map(String::as_str)))
            .flatten();
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                tungstenite::handshake::derive_accept_key(self.key.as_bytes()),
            );
        if let Some((_, extension)) = &agreed {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, extension);
        }
        let agreed = agreed.map(|(agreed, _)| agreed);
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => return tracing::debug!(%err, "WebSocket upgrade failed"),
            };
            // The server serves plain TCP (crate::server), so this is the socket it accepted.
            let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => parts,
                Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
            };
            let (reader, sender) = frames::split(
                parts.io.into_inner(),
                parts.read_buf,
                settings.max_message_size,
                agreed.is_some(),
            );
            serve(Reader(reader), Writer::new(sender, agreed)).await;
        });
        response
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// What the peer sent, binary payloads kept (the echo route returns them).
#[derive(Debug)]
pub(crate) enum Received {
    Inbound(Inbound),
    Binary(Bytes),
}

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes, two of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The reading half of a socket.
#[derive(Debug)]
pub(crate) struct Reader(Frames);

impl Reader {
    /// The next message with binary payloads kept; `None` once the connection has ended.
    pub(crate) async fn next_message(&mut self) -> Option<Result<Received, ReadError>> {
        Some(self.0.next().await?.map(|event| match event {
            Event::Text(text) => Received::Inbound(Inbound::Text(text)),
            Event::Binary(bytes) => Received::Binary(bytes),
            Event::Alive => Received::Inbound(Inbound::Alive),
            Event::Close => Received::Inbound(Inbound::Close),
        }))
    }
}

impl Incoming for Reader {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        Some(self.next_message().await?.map(|message| match message {
            Received::Inbound(inbound) => inbound,
            Received::Binary(_) => Inbound::Binary,
        }))
    }
}

/// The writing half of a socket: owned by exactly one task. Its codec makes the messages;
/// it only writes them.
#[derive(Debug)]
pub(crate) struct Writer<C = V1> {
    sender: Sender,
    /// permessage-deflate, when agreed.
    agreed: Option<Agreed>,
    codec: C,
}

fn failed(err: std::io::Error) -> WriteError {
    WriteError(Box::new(err))
}

impl Writer {
    fn new(sender: Sender, agreed: Option<Agreed>) -> Self {
        Self {
            sender,
            agreed,
            codec: V1,
        }
    }
}

impl<C> Writer<C> {
    /// The same socket, speaking another wire.
    pub(crate) fn with_codec<D>(self, codec: D) -> Writer<D> {
        Writer {
            sender: self.sender,
            agreed: self.agreed,
            codec,
        }
    }

    /// Queues a message as the echo route returns it: deflated whenever compression was
    /// agreed, to exercise every window a client may ask for.
    pub(crate) async fn feed_echo(
        &mut self,
        binary: bool,
        payload: Bytes,
    ) -> Result<(), WriteError> {
        let opcode = if binary { BINARY } else { TEXT };
        match self
            .agreed
            .and_then(|agreed| deflate::deflate_for(agreed, &payload))
        {
            Some(deflated) => self.sender.queue(opcode, true, deflated),
            // Text the reader passed on was checked UTF-8.
            None => self.sender.queue(opcode, false, payload),
        }
        Ok(())
    }
}

/// Queues a text frame: a publication compressed once on this node, for every subscriber that
/// can take it.
fn queue_frame(sender: &mut Sender, agreed: Option<Agreed>, frame: &Frame) {
    match agreed.is_some_and(Agreed::takes_shared) {
        true => match frame.deflated(deflate::deflate) {
            Some(deflated) => sender.queue(TEXT, true, deflated),
            None => sender.queue_shared(TEXT, false, frame.shared()),
        },
        false => sender.queue_shared(TEXT, false, frame.shared()),
    }
}

impl<C: Codec<Messages> + Send> Outgoing for Writer<C> {
    async fn feed(&mut self, item: Item) -> Result<usize, WriteError> {
        // The fan-out's items: their frame taken from the item, not cloned.
        if let Some(frame) = self.codec.shared(&item) {
            queue_frame(&mut self.sender, self.agreed, frame);
            return Ok(frame.len());
        }
        let mut messages = Messages::default();
        self.codec.encode(item, &mut messages);
        let mut bytes = 0;
        for frame in messages {
            bytes += frame.len();
            queue_frame(&mut self.sender, self.agreed, &frame);
        }
        Ok(bytes)
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        self.sender.flush().await.map_err(failed)
    }

    async fn close(&mut self, code: CloseCode, reason: &str, within: Duration) {
        let code = self.codec.close_code(code);
        self.sender
            .queue_close(code.number(), truncate(reason, MAX_CLOSE_REASON));
        match tokio::time::timeout(within, self.sender.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(%err, "close frame not sent"),
            Err(_) => tracing::debug!("close frame not sent in time"),
        }
    }

    async fn finish(&mut self, within: Duration) {
        // The reader queued the reply to the peer's close; it leaves with whatever was queued
        // before it.
        let _ = tokio::time::timeout(within, self.sender.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame() {
        assert_eq!(truncate("short", MAX_CLOSE_REASON), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long, MAX_CLOSE_REASON);
        assert!(cut.len() <= MAX_CLOSE_REASON && cut.chars().all(|c| c == 'é'));
    }
}
