//! What a session needs of whatever carries it: an [`Incoming`] half that yields what the
//! client sent ([`Inbound`]), and an [`Outgoing`] half that turns the session's items into
//! bytes with its codec and writes them. Transports (`crate::transport`) implement both.

use std::future::Future;
use std::time::Duration;

use crate::outbox::Closing;
use crate::protocol::{ChannelName, CloseCode, ErrorCode, Item, Request, StreamPosition};

/// What a client sent, as a session sees it.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A command, as protocol v1 JSON text.
    Text(String),
    /// A command another wire's decoder already read (Pusher's frames).
    Command(Request),
    /// What another wire's decoder could not read: refused as a bad command is.
    Invalid(Box<Invalid>),
    /// A channel the client named when it connected (a stream's `channel` parameters). The
    /// outcome comes as pushes naming the channel.
    Subscribe(Wanted),
    /// Data the protocol has no use for (a WebSocket binary frame).
    Binary,
    /// A transport-level sign of life (a WebSocket ping or pong).
    Alive,
    /// The peer started (or answered) the closing handshake.
    Close,
}

/// A frame a decoder refused: the reply (to `id`, when the decoder gave it one) says why.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

/// A channel to subscribe to, from `since` if given.
#[derive(Debug)]
pub(crate) struct Wanted {
    pub channel: ChannelName,
    pub since: Option<StreamPosition>,
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("message larger than the limit")]
    TooBig,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// More commands arrived than the connection could queue (an HTTP stream's requests).
    #[error("too many commands at once")]
    Flooded,
    #[error("transport protocol violation")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection is gone (reset, EOF without a close): nobody is left to tell.
    #[error("connection lost")]
    Gone(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ReadError {
    /// The close that tells the peer, or `None` when the connection can no longer carry one.
    pub(crate) fn closing(&self) -> Option<Closing> {
        let code = match self {
            Self::TooBig => CloseCode::MessageTooBig,
            Self::InvalidUtf8 => CloseCode::InvalidPayload,
            Self::Flooded => CloseCode::RateLimited,
            Self::Protocol(_) => CloseCode::ProtocolError,
            Self::Gone(_) => return None,
        };
        Some(Closing::with(code))
    }
}

/// Why a write failed: the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("write failed: {0}")]
pub(crate) struct WriteError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The reading half of a transport.
pub(crate) trait Incoming: Send {
    /// The next thing the client sent; `None` once the connection has ended.
    fn next(&mut self) -> impl Future<Output = Option<Result<Inbound, ReadError>>> + Send;
}

/// The writing half of a transport: owned by exactly one task.
pub(crate) trait Outgoing: Send {
    /// A transport the client cannot answer on by itself (an HTTP stream read by an
    /// `EventSource`): a ping its connection accepted is proof enough of life. Its connection's
    /// TCP user timeout (`crate::server`) bounds how long a vanished peer can go unnoticed.
    const ONE_WAY: bool = false;

    /// Encodes an item with the transport's codec and queues it without flushing, so that a
    /// batch leaves in as few writes as possible. Returns the bytes it became (before any
    /// compression).
    fn feed(&mut self, item: Item) -> impl Future<Output = Result<usize, WriteError>> + Send;

    fn flush(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Sends the close and flushes it, giving up after `within` (a peer that does not read
    /// cannot stall the server).
    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        within: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// Finishes a close the peer started (flushes the transport's own reply), bounded.
    fn finish(&mut self, within: Duration) -> impl Future<Output = ()> + Send;
}
