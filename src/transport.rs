//! The WebSocket library behind a small seam: the shared text [`Frame`], the socket's
//! [`Reader`] and [`Writer`] halves, the upgrade settings, and the mapping of library errors to
//! RFC 6455 close codes. No other module names the library's types, so swapping it (for one with
//! permessage-deflate, say) touches this file and the upgrade call in `api::ws` only.
//!
//! Today that library is axum's `ws` (tokio-tungstenite), chosen because it passes the whole
//! Autobahn TestSuite without a failure. Compression is not negotiated.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::protocol::CloseCode;

/// Read buffer per connection. tungstenite's default (128 KiB) costs that much RSS on every
/// idle connection. Clients send small commands; a larger frame is still read whole (the
/// buffer grows to its announced length), and only a burst of commands takes more reads.
const READ_BUFFER_SIZE: usize = 256;
/// Bytes collected before a write reaches the socket; the writer flushes after every batch, so
/// this only bounds how a large batch is cut into syscalls.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// A text frame whose bytes are shared: cloning it for another subscriber is a reference-count
/// increment, never a copy or a re-encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    pub const fn from_static(text: &'static str) -> Self {
        Self(Utf8Bytes::from_static(text))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Payload length in bytes: what a queued frame costs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self(Utf8Bytes::from(text))
    }
}

/// Applies the server's socket settings to an upgrade: buffer sizes and the message limit.
pub fn configure(upgrade: WebSocketUpgrade, max_message_size: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(max_message_size)
        .max_frame_size(max_message_size)
}

/// Splits an upgraded socket into the halves a session's reader and writer own.
pub fn split(socket: WebSocket) -> (Reader, Writer) {
    let (sink, stream) = socket.split();
    (Reader(stream), Writer(sink))
}

/// What the peer sent. Ping replies and close replies are produced by the library.
#[derive(Debug)]
pub enum Inbound {
    Text(Frame),
    Binary(Bytes),
    /// A WebSocket ping or pong control frame: proof of life, nothing more.
    Control,
    /// The peer started (or answered) the closing handshake.
    Close(Option<(u16, String)>),
}

/// Why reading failed, and the close code that tells the peer so.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("message larger than the limit")]
    TooBig,
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("WebSocket protocol violation: {0}")]
    Protocol(String),
    /// The connection is gone (reset, EOF without a close): nobody is left to tell.
    #[error("connection lost: {0}")]
    Gone(String),
}

impl ReadError {
    /// The close frame to send, or `None` when the connection can no longer carry one.
    pub fn close_frame(&self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooBig => Some((CloseCode::MESSAGE_TOO_BIG, "message too big")),
            Self::InvalidUtf8 => Some((CloseCode::INVALID_PAYLOAD, "invalid UTF-8")),
            Self::Protocol(_) => Some((CloseCode::PROTOCOL_ERROR, "protocol error")),
            Self::Gone(_) => None,
        }
    }

    fn from_library(err: axum::Error) -> Self {
        use tungstenite::Error as E;
        use tungstenite::error::ProtocolError as P;
        let inner = err.into_inner();
        match inner.downcast::<E>() {
            Ok(err) => match *err {
                E::Capacity(_) => Self::TooBig,
                E::Utf8(_) => Self::InvalidUtf8,
                E::Protocol(P::ResetWithoutClosingHandshake) => {
                    Self::Gone("reset without closing handshake".into())
                }
                E::Protocol(p) => Self::Protocol(p.to_string()),
                E::Io(io) => Self::Gone(io.to_string()),
                other => Self::Gone(other.to_string()),
            },
            Err(other) => Self::Gone(other.to_string()),
        }
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
pub struct Reader(SplitStream<WebSocket>);

impl Reader {
    /// The next message; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        let message = match self.0.next().await? {
            Ok(message) => message,
            Err(err) => return Some(Err(ReadError::from_library(err))),
        };
        Some(Ok(match message {
            Message::Text(text) => Inbound::Text(Frame(text)),
            Message::Binary(bytes) => Inbound::Binary(bytes),
            Message::Ping(_) | Message::Pong(_) => Inbound::Control,
            Message::Close(frame) => {
                Inbound::Close(frame.map(|f| (f.code, f.reason.as_str().to_owned())))
            }
        }))
    }
}

/// Why a write failed: the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("write failed: {0}")]
pub struct WriteError(#[source] axum::Error);

/// The writing half of a socket: owned by exactly one task.
#[derive(Debug)]
pub struct Writer(SplitSink<WebSocket, Message>);

impl Writer {
    /// Queues a frame without flushing, so that a batch leaves in as few syscalls as possible.
    pub async fn feed(&mut self, frame: Frame) -> Result<(), WriteError> {
        self.0
            .feed(Message::Text(frame.0))
            .await
            .map_err(WriteError)
    }

    /// Queues a binary message (used only by the echo route).
    pub async fn feed_binary(&mut self, bytes: Bytes) -> Result<(), WriteError> {
        self.0
            .feed(Message::Binary(bytes))
            .await
            .map_err(WriteError)
    }

    pub async fn flush(&mut self) -> Result<(), WriteError> {
        self.0.flush().await.map_err(WriteError)
    }

    /// Sends a close frame and flushes it, giving up after `within` (a peer that does not read
    /// cannot stall the server).
    pub async fn close(&mut self, code: u16, reason: &str, within: Duration) {
        let frame = CloseFrame {
            code,
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

    /// Flushes what the library queued on its own (the reply to a peer's close), bounded.
    pub async fn finish(&mut self, within: Duration) {
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
