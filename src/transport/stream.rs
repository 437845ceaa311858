//! HTTP streaming transports: Server-Sent Events (`GET /sse`) and newline-delimited JSON
//! (`GET /stream`). The response body is the session's outgoing half; its incoming half is the
//! channels of the request (subscribed at once, from where the client left off) and whatever
//! commands the client sends as HTTP requests, which reach this node through the broker
//! (`crate::node::StreamInbox`).
//!
//! The request's channels are session input ([`Inbound::Subscribe`]), answered by pushes. The
//! writer only writes: its codec — [`Sse`] or [`Ndjson`] — makes the bytes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::node::{StreamInbox, StreamInput};
use crate::protocol::{
    ChannelName, CloseCode, Codec, Item, Ndjson, Positions, Sse, StreamPosition,
};
use crate::session::{Inbound, Incoming, Outgoing, ReadError, Wanted, WriteError};

/// How the stream is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`: one protocol v1 frame per line.
    Ndjson,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// The transport's name, as the backend and the metrics know it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ndjson => "stream",
        }
    }
}

/// Batches handed to the HTTP layer and not yet written, beyond the one each sender may add:
/// a client that stops reading blocks the session's writer here, which then closes it as a
/// slow consumer. (futures' channel rather than tokio's: it keeps no block of slots while
/// idle, ~250 bytes against ~1.5 KiB for every open stream.)
const CHUNKS_IN_FLIGHT: usize = 1;

/// The codec of one stream.
#[derive(Debug)]
enum StreamCodec {
    Sse(Sse),
    Ndjson(Ndjson),
}

impl Codec<BytesMut> for StreamCodec {
    fn encode(&mut self, item: Item, out: &mut BytesMut) {
        match self {
            Self::Sse(codec) => codec.encode(item, out),
            Self::Ndjson(codec) => codec.encode(item, out),
        }
    }
}

/// Opens a stream session's transport: the reader, the writer, and the response body.
/// `subscribe` lists the request's channels, each from its position if the client had one.
pub(crate) fn open(
    format: Format,
    inbox: StreamInbox,
    subscribe: &[(ChannelName, Option<StreamPosition>)],
) -> (Reader, Writer, axum::body::Body) {
    let (sender, chunks) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let done = CancellationToken::new();
    let initial = subscribe
        .iter()
        .map(|(channel, since)| {
            Inbound::Subscribe(Wanted {
                channel: channel.clone(),
                since: since.clone(),
            })
        })
        .collect();
    let session = inbox.id().to_string();
    let mut buf = BytesMut::new();
    let codec = match format {
        Format::Sse => {
            // Where the client stood, for the events' ids until each channel moves on.
            let mut positions = Positions::default();
            for (channel, since) in subscribe {
                if let Some(since) = since {
                    positions.set(channel.as_str(), since.offset, &since.epoch);
                }
            }
            Sse::preamble(&mut buf);
            StreamCodec::Sse(Sse::new(session, positions))
        }
        Format::Ndjson => StreamCodec::Ndjson(Ndjson::new(session)),
    };
    let writer = Writer {
        codec,
        out: Some(sender),
        buf,
        done: done.clone(),
    };
    let reader = Reader {
        initial,
        inbox,
        done: done.clone(),
    };
    // The body ends the session when the client goes away: hyper drops it.
    let guard = done.drop_guard();
    let body = futures_util::stream::unfold((chunks, guard), |(mut chunks, guard)| async move {
        let chunk = chunks.next().await?;
        Some((Ok::<_, Infallible>(chunk), (chunks, guard)))
    });
    (reader, writer, axum::body::Body::from_stream(body))
}

/// The reading half: the request's channels, then the commands sent by HTTP.
#[derive(Debug)]
pub(crate) struct Reader {
    initial: VecDeque<Inbound>,
    inbox: StreamInbox,
    /// Cancelled when the response ends (the client left, or the writer closed).
    done: CancellationToken,
}

impl Incoming for Reader {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        if let Some(subscribe) = self.initial.pop_front() {
            return Some(Ok(subscribe));
        }
        tokio::select! {
            () = self.done.cancelled() => None,
            input = self.inbox.recv() => match input? {
                StreamInput::Command(text) => Some(Ok(Inbound::Text(text))),
                StreamInput::Flooded => Some(Err(ReadError::Flooded)),
            },
        }
    }
}

/// The writing half: the codec's bytes, handed to the body a batch at a time.
#[derive(Debug)]
pub(crate) struct Writer {
    codec: StreamCodec,
    /// `None` once the stream has ended.
    out: Option<mpsc::Sender<Bytes>>,
    buf: BytesMut,
    done: CancellationToken,
}

impl Writer {
    /// Ends the stream: the body finishes and the reader stops.
    fn end(&mut self) {
        self.out = None;
        self.done.cancel();
    }
}

fn gone() -> WriteError {
    WriteError("the client closed the stream".into())
}

impl Outgoing for Writer {
    const ONE_WAY: bool = true;

    async fn feed(&mut self, item: Item) -> Result<usize, WriteError> {
        if self.out.is_none() {
            return Err(gone());
        }
        let before = self.buf.len();
        self.codec.encode(item, &mut self.buf);
        Ok(self.buf.len() - before)
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        let out = self.out.as_mut().ok_or_else(gone)?;
        if self.buf.is_empty() {
            return Ok(());
        }
        // Taken whole, so that an idle stream keeps no room for the next batch.
        let chunk = std::mem::take(&mut self.buf).freeze();
        out.send(chunk).await.map_err(|_| gone())
    }

    async fn close(&mut self, code: CloseCode, reason: &str, within: Duration) {
        if self.out.is_some() {
            let reason = reason.into();
            self.codec
                .encode(Item::Disconnect { code, reason }, &mut self.buf);
            let _ = tokio::time::timeout(within, self.flush()).await;
        }
        self.end();
    }

    async fn finish(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, self.flush()).await;
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the writer has for the body so far.
    fn text(writer: &mut Writer) -> String {
        String::from_utf8(writer.buf.split().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_resumed_sse_stream_starts_with_the_retry_and_keeps_each_channels_position() {
        let node = crate::server::memory_node();
        let since = |offset| {
            Some(StreamPosition {
                offset,
                epoch: "E".into(),
            })
        };
        let a = ChannelName::parse("a").unwrap();
        let b = ChannelName::parse("b").unwrap();
        let (mut reader, mut writer, _body) = open(
            Format::Sse,
            node.open_stream(),
            &[(a.clone(), since(4)), (b, since(9))],
        );
        assert!(text(&mut writer).starts_with("retry: 1000"));
        // The request's channels are the reader's first input: subscriptions, not commands.
        let Some(Ok(Inbound::Subscribe(wanted))) = reader.next().await else {
            panic!("the first input subscribes");
        };
        let Wanted { channel, since } = wanted;
        assert_eq!((channel, since.map(|s| s.offset)), (a, Some(4)));
        // A close leaves as the codec's event.
        writer
            .close(CloseCode::GoingAway, "bye", Duration::from_secs(1))
            .await;
        assert!(writer.out.is_none() && writer.done.is_cancelled());
    }

    #[tokio::test]
    async fn an_ndjson_stream_names_its_session_in_connected() {
        let node = crate::server::memory_node();
        let inbox = node.open_stream();
        let session = inbox.id().to_string();
        let (_reader, mut writer, _body) = open(Format::Ndjson, inbox, &[]);
        let greeting = crate::protocol::Greeting::pushed();
        let bytes = writer
            .feed(Item::Connected(Box::new(greeting)))
            .await
            .unwrap();
        let line = text(&mut writer);
        assert_eq!(bytes, line.len());
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["connected"]["session"], session.as_str());
    }
}
