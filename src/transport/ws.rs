//! The WebSocket transport: the upgrade settings, the socket's [`Reader`] and [`Writer`] halves
//! as a session's [`Incoming`] and [`Outgoing`], and the mapping of the library's errors to
//! what a session understands. No other module names the WebSocket library's types, so
//! swapping it (for one with permessage-deflate, say) touches this file and the upgrade call in
//! `api::ws` only.
//!
//! Today that library is axum's `ws` (tokio-tungstenite), chosen because it passes the whole
//! Autobahn TestSuite without a failure. Compression is not negotiated.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::outbox::Frame;
use crate::protocol::CloseCode;
use crate::session::{Inbound, Incoming, Outgoing, ReadError, WriteError};

/// Read buffer per connection. tungstenite's default (128 KiB) costs that much RSS on every
/// idle connection. Clients send small commands; a larger frame is still read whole (the
/// buffer grows to its announced length), and only a burst of commands takes more reads.
const READ_BUFFER_SIZE: usize = 256;
/// Bytes collected before a write reaches the socket; the writer flushes after every batch, so
/// this only bounds how a large batch is cut into syscalls.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// Applies the server's socket settings to an upgrade: buffer sizes and the message limit.
pub(crate) fn configure(upgrade: WebSocketUpgrade, max_message_size: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(max_message_size)
        .max_frame_size(max_message_size)
}

/// Splits an upgraded socket into the halves a session's reader and writer own.
pub(crate) fn split(socket: WebSocket) -> (Reader, Writer) {
    let (sink, stream) = socket.split();
    (Reader(stream), Writer(sink))
}

/// What the peer sent, binary payloads kept (the echo route returns them).
#[derive(Debug)]
pub(crate) enum Received {
    Inbound(Inbound),
    Binary(Bytes),
}

fn read_error(err: axum::Error) -> ReadError {
    use tungstenite::Error as E;
    use tungstenite::error::ProtocolError as P;
    let inner = err.into_inner();
    match inner.downcast::<E>() {
        Ok(err) => match *err {
            E::Capacity(_) => ReadError::TooBig,
            E::Utf8(_) => ReadError::InvalidUtf8,
            E::Protocol(P::ResetWithoutClosingHandshake) => ReadError::Gone(err),
            E::Protocol(_) => ReadError::Protocol(err),
            _ => ReadError::Gone(err),
        },
        Err(other) => ReadError::Gone(other),
    }
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
pub(crate) struct Reader(SplitStream<WebSocket>);

impl Reader {
    /// The next message with binary payloads kept; `None` once the connection has ended.
    pub(crate) async fn next_message(&mut self) -> Option<Result<Received, ReadError>> {
        let message = match self.0.next().await? {
            Ok(message) => message,
            Err(err) => return Some(Err(read_error(err))),
        };
        Some(Ok(match message {
            Message::Text(text) => Received::Inbound(Inbound::Text(Frame::from(text))),
            Message::Binary(bytes) => Received::Binary(bytes),
            Message::Ping(_) | Message::Pong(_) => Received::Inbound(Inbound::Alive),
            Message::Close(_) => Received::Inbound(Inbound::Close),
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

/// The writing half of a socket: owned by exactly one task.
#[derive(Debug)]
pub(crate) struct Writer(SplitSink<WebSocket, Message>);

impl Writer {
    /// Queues a binary message (used only by the echo route).
    pub(crate) async fn feed_binary(&mut self, bytes: Bytes) -> Result<(), WriteError> {
        self.0
            .feed(Message::Binary(bytes))
            .await
            .map_err(|err| WriteError(Box::new(err)))
    }
}

impl Outgoing for Writer {
    async fn feed(&mut self, frame: Frame) -> Result<(), WriteError> {
        let text: Utf8Bytes = frame.into_bytes();
        self.0
            .feed(Message::Text(text))
            .await
            .map_err(|err| WriteError(Box::new(err)))
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        self.0
            .flush()
            .await
            .map_err(|err| WriteError(Box::new(err)))
    }

    async fn close(&mut self, code: CloseCode, reason: &str, within: Duration) {
        let frame = CloseFrame {
            code: code.number(),
            reason: Utf8Bytes::from(truncate(reason, MAX_CLOSE_REASON)),
        };
        let send = async {
            self.0.feed(Message::Close(Some(frame))).await?;
            self.0.flush().await
        };
        match tokio::time::timeout(within, send).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(%err, "close frame not sent"),
            Err(_) => tracing::debug!("close frame not sent in time"),
        }
    }

    async fn finish(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            // A frame left half-sent by an interrupted batch fails the first flush (the peer
            // closed); the second one sends the library's close reply.
            if self.0.flush().await.is_err() {
                let _ = self.0.flush().await;
            }
        })
        .await;
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
