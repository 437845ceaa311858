//! HTTP streaming transports: Server-Sent Events (`GET /sse`) and newline-delimited JSON
//! (`GET /stream`). The response body is the session's outgoing half; its incoming half is the
//! channels of the request (subscribed at once, from where the client left off) and whatever
//! commands the client sends as HTTP requests, which reach this node through the broker
//! (`crate::node::StreamInbox`).
//!
//! The session writes protocol v1 frames as it would to a WebSocket; the writer here reshapes
//! them. For `/stream` each frame is one line. For `/sse` each push is an event named after it
//! (`pub`, `join`, …) whose data is the push's object, a reply is a `reply` event, and the
//! heartbeat is a comment. Both report the outcome of the request's own subscriptions as
//! pushes (`subscribed`, `unrecovered`, `error`) rather than replies nobody asked for.
//!
//! Every `pub` and `subscribed` event of `/sse` carries as its `id` a [`Positions`] token: where
//! the stream stands in **every** channel. The browser sends it back as `Last-Event-ID` when it
//! reconnects, to any node, which subscribes each channel from there.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::node::{StreamInbox, StreamInput};
use crate::outbox::Frame;
use crate::protocol::{ChannelName, CloseCode, StreamPosition};
use crate::session::{Inbound, Incoming, Outgoing, ReadError, WriteError};

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

/// Request ids from here up belong to the transport's own subscriptions (the request's
/// channels); a client's command never needs one this large.
pub(crate) const OWN_IDS: u64 = 1 << 62;

/// Batches handed to the HTTP layer and not yet written: a client that stops reading blocks
/// the session's writer here, which then closes it as a slow consumer.
const CHUNKS_IN_FLIGHT: usize = 2;

/// How soon an `EventSource` reconnects after the stream ends.
const SSE_RETRY_MS: u32 = 1000;

/// Where a stream stands in each of its channels: offset and epoch of the last publication
/// delivered (or of the subscription's start). Travels as an opaque token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Positions(BTreeMap<String, (u64, String)>);

/// The longest token accepted back (HTTP servers refuse much longer headers anyway): about
/// 700 channels' positions with names of typical length.
const MAX_TOKEN_LEN: usize = 48 * 1024;

impl Positions {
    /// `1.` and the positions as base64url JSON: `[[channel, offset, epoch], …]`.
    pub(crate) fn token(&self) -> String {
        let list: Vec<(&str, u64, &str)> = self
            .0
            .iter()
            .map(|(channel, (offset, epoch))| (channel.as_str(), *offset, epoch.as_str()))
            .collect();
        let json = serde_json::to_vec(&list).unwrap_or_default();
        format!("1.{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads a token back; `None` if it is not one.
    pub(crate) fn from_token(token: &str) -> Option<Self> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let json = URL_SAFE_NO_PAD.decode(token.strip_prefix("1.")?).ok()?;
        let list: Vec<(String, u64, String)> = serde_json::from_slice(&json).ok()?;
        Some(Self(
            list.into_iter()
                .map(|(channel, offset, epoch)| (channel, (offset, epoch)))
                .collect(),
        ))
    }

    /// The `since` object of `/stream`: `{"CHANNEL":{"offset":N,"epoch":"E"},…}`.
    pub(crate) fn from_since(since: &str) -> Option<Self> {
        if since.len() > MAX_TOKEN_LEN {
            return None;
        }
        let map: BTreeMap<String, StreamPosition> = serde_json::from_str(since).ok()?;
        Some(Self(
            map.into_iter()
                .map(|(channel, p)| (channel, (p.offset, p.epoch.to_string())))
                .collect(),
        ))
    }

    pub(crate) fn get(&self, channel: &str) -> Option<StreamPosition> {
        self.0.get(channel).map(|(offset, epoch)| StreamPosition {
            offset: *offset,
            epoch: epoch.as_str().into(),
        })
    }

    fn remove(&mut self, channel: &str) {
        self.0.remove(channel);
    }

    fn set(&mut self, channel: &str, offset: u64, epoch: &str) {
        match self.0.get_mut(channel) {
            Some(at) => {
                at.0 = offset;
                if at.1 != epoch {
                    epoch.clone_into(&mut at.1);
                }
            }
            None => {
                self.0
                    .insert(channel.to_owned(), (offset, epoch.to_owned()));
            }
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
    let mut own = HashMap::new();
    let mut initial = VecDeque::new();
    for (n, (channel, since)) in (OWN_IDS..).zip(subscribe) {
        let command = serde_json::json!({
            "id": n,
            "op": "subscribe",
            "channel": channel,
            "since": since,
        });
        initial.push_back(Frame::from(command.to_string()));
        own.insert(n, channel.to_string());
    }
    // Where the client stood: kept until each channel moves on, so that an event sent before a
    // slow (or failed) resubscription does not drop another channel's position from the token.
    let mut positions = Positions::default();
    for (channel, since) in subscribe {
        if let Some(since) = since {
            positions.set(channel.as_str(), since.offset, &since.epoch);
        }
    }
    let mut writer = Writer {
        format,
        session: inbox.id().to_string(),
        out: Some(sender),
        buf: BytesMut::new(),
        positions,
        own,
        done: done.clone(),
    };
    if format == Format::Sse {
        writer
            .buf
            .extend_from_slice(format!("retry: {SSE_RETRY_MS}\n\n").as_bytes());
    }
    let reader = Reader {
        initial,
        inbox,
        done: done.clone(),
    };
    // The body ends the session when the client goes away: hyper drops it.
    let guard = done.drop_guard();
    let body = futures_util::stream::unfold((chunks, guard), |(mut chunks, guard)| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, Infallible>(chunk), (chunks, guard)))
    });
    (reader, writer, axum::body::Body::from_stream(body))
}

/// The reading half: the request's subscriptions, then the commands sent by HTTP.
#[derive(Debug)]
pub(crate) struct Reader {
    initial: VecDeque<Frame>,
    inbox: StreamInbox,
    /// Cancelled when the response ends (the client left, or the writer closed).
    done: CancellationToken,
}

impl Incoming for Reader {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        if let Some(frame) = self.initial.pop_front() {
            return Some(Ok(Inbound::Text(frame)));
        }
        tokio::select! {
            () = self.done.cancelled() => None,
            input = self.inbox.recv() => match input? {
                StreamInput::Command(text) => Some(Ok(Inbound::Text(Frame::from(text)))),
                StreamInput::Flooded => Some(Err(ReadError::Flooded)),
            },
        }
    }
}

/// The writing half: reshapes frames for the format and hands each batch to the body.
#[derive(Debug)]
pub(crate) struct Writer {
    format: Format,
    session: String,
    /// `None` once the stream has ended.
    out: Option<mpsc::Sender<Bytes>>,
    buf: BytesMut,
    positions: Positions,
    /// The transport's own subscribe requests: id → channel.
    own: HashMap<u64, String>,
    done: CancellationToken,
}

/// The head of a `pub` or `subscribed` push: where it puts the channel.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    offset: u64,
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
}

/// An `unsubscribed` push.
#[derive(Deserialize)]
struct Gone<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
}

/// The reply to one of the transport's own subscribes.
#[derive(Deserialize)]
struct OwnReply<'a> {
    #[serde(borrow, default)]
    ok: Option<SubscribeOk<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeOk<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    offset: u64,
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    recovered: Option<bool>,
    #[serde(borrow, default)]
    publications: Vec<&'a RawValue>,
    reason: Option<String>,
    #[serde(default)]
    receipts: bool,
}

impl Writer {
    /// One frame, reshaped into the buffer.
    fn write(&mut self, text: &str) {
        let Ok(fields) = serde_json::from_str::<BTreeMap<&str, &RawValue>>(text) else {
            return self.raw("message", text);
        };
        if let Some(id) = fields.get("id") {
            let own = serde_json::from_str::<u64>(id.get()).ok();
            if let Some(channel) = own.and_then(|id| self.own.remove(&id)) {
                return self.own_reply(&channel, text);
            }
            return self.raw("reply", text);
        }
        let Some((&kind, body)) = fields.iter().next().filter(|_| fields.len() == 1) else {
            return self.raw("message", text);
        };
        match kind {
            "ping" if self.format == Format::Sse => self.buf.extend_from_slice(b": ping\n\n"),
            "pub" | "subscribed" => {
                if let Ok(head) = serde_json::from_str::<Head<'_>>(body.get()) {
                    self.positions.set(&head.channel, head.offset, &head.epoch);
                }
                self.push(kind, body.get(), true);
            }
            "unsubscribed" => {
                if let Ok(gone) = serde_json::from_str::<Gone<'_>>(body.get()) {
                    self.positions.remove(&gone.channel);
                }
                self.push(kind, body.get(), false);
            }
            "connected" => {
                // The session id, for the commands a two-way client sends.
                let inner = body.get().trim_start();
                let rest = inner.strip_prefix('{').unwrap_or(inner);
                let connected = format!(r#"{{"session":"{}",{rest}"#, self.session);
                self.push(kind, &connected, false);
            }
            _ => self.push(kind, body.get(), false),
        }
    }

    /// What the request's own subscribe came to, as pushes: the recovered publications, an
    /// `unrecovered` push if the gap could not be filled, and `subscribed` with the position
    /// delivery continues from — or an `error` naming the channel.
    fn own_reply(&mut self, channel: &str, text: &str) {
        let Ok(reply) = serde_json::from_str::<OwnReply<'_>>(text) else {
            return self.raw("reply", text);
        };
        if let Some(ok) = reply.ok {
            for publication in &ok.publications {
                if let Ok(head) = serde_json::from_str::<Head<'_>>(publication.get()) {
                    self.positions.set(&head.channel, head.offset, &head.epoch);
                }
                self.push("pub", publication.get(), true);
            }
            if ok.recovered == Some(false) {
                let unrecovered = serde_json::json!({
                    "channel": ok.channel,
                    "offset": ok.offset,
                    "epoch": ok.epoch,
                    "reason": ok.reason,
                });
                self.push("unrecovered", &unrecovered.to_string(), false);
            }
            self.positions.set(&ok.channel, ok.offset, &ok.epoch);
            let mut subscribed = serde_json::json!({
                "channel": ok.channel,
                "offset": ok.offset,
                "epoch": ok.epoch,
            });
            if ok.receipts {
                subscribed["receipts"] = true.into();
            }
            self.push("subscribed", &subscribed.to_string(), true);
        } else if let Some(error) = reply.error {
            let mut error: serde_json::Value =
                serde_json::from_str(error.get()).unwrap_or_default();
            if let Some(fields) = error.as_object_mut() {
                fields.insert("channel".into(), channel.into());
            }
            self.push("error", &error.to_string(), false);
        }
    }

    /// A push: an SSE event named `kind` with the push's object as data (and the positions
    /// as id when `positioned`), or a line `{"kind":body}`.
    fn push(&mut self, kind: &str, body: &str, positioned: bool) {
        match self.format {
            Format::Sse => {
                let id = positioned.then(|| self.positions.token());
                self.event(kind, id.as_deref(), body);
            }
            Format::Ndjson => {
                self.buf.extend_from_slice(b"{\"");
                self.buf.extend_from_slice(kind.as_bytes());
                self.buf.extend_from_slice(b"\":");
                self.line(body);
                self.buf.extend_from_slice(b"}\n");
            }
        }
    }

    /// A frame passed on whole: an SSE event `kind`, or a line.
    fn raw(&mut self, kind: &str, text: &str) {
        match self.format {
            Format::Sse => self.event(kind, None, text),
            Format::Ndjson => {
                self.line(text);
                self.buf.extend_from_slice(b"\n");
            }
        }
    }

    fn event(&mut self, kind: &str, id: Option<&str>, data: &str) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(kind.as_bytes());
        if let Some(id) = id {
            self.buf.extend_from_slice(b"\nid: ");
            self.buf.extend_from_slice(id.as_bytes());
        }
        // Line breaks can only be JSON whitespace (a string cannot hold them raw); each piece
        // goes in a `data:` line of its own, which the browser joins back with `\n`.
        for piece in data.split(['\r', '\n']) {
            self.buf.extend_from_slice(b"\ndata: ");
            self.buf.extend_from_slice(piece.as_bytes());
        }
        self.buf.extend_from_slice(b"\n\n");
    }

    /// JSON on one line: its line breaks (whitespace, never inside a string) become spaces.
    fn line(&mut self, text: &str) {
        let start = self.buf.len();
        self.buf.extend_from_slice(text.as_bytes());
        for byte in &mut self.buf[start..] {
            if *byte == b'\n' || *byte == b'\r' {
                *byte = b' ';
            }
        }
    }

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

    async fn feed(&mut self, frame: Frame) -> Result<(), WriteError> {
        if self.out.is_none() {
            return Err(gone());
        }
        self.write(frame.as_str());
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        let out = self.out.as_ref().ok_or_else(gone)?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        out.send(chunk).await.map_err(|_| gone())
    }

    async fn close(&mut self, code: CloseCode, reason: &str, within: Duration) {
        if self.out.is_some() {
            let close = serde_json::json!({ "code": code.number(), "reason": reason });
            self.push("close", &close.to_string(), false);
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

    fn writer(format: Format) -> Writer {
        let (sender, _chunks) = mpsc::channel(1);
        Writer {
            format,
            session: "s1".into(),
            out: Some(sender),
            buf: BytesMut::new(),
            positions: Positions::default(),
            own: HashMap::from([(OWN_IDS, "a".to_owned())]),
            done: CancellationToken::new(),
        }
    }

    fn text(writer: &mut Writer) -> String {
        String::from_utf8(writer.buf.split().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_resumed_stream_keeps_each_channels_position_until_it_moves_on() {
        let node = crate::server::memory_node();
        let since = |offset| {
            Some(StreamPosition {
                offset,
                epoch: "E".into(),
            })
        };
        let a = ChannelName::parse("a").unwrap();
        let b = ChannelName::parse("b").unwrap();
        let (_reader, mut writer, _body) = open(
            Format::Sse,
            node.open_stream(),
            &[(a, since(4)), (b, since(9))],
        );
        // A publication of `a` comes before `b`'s resubscription has answered: the token still
        // holds where `b` stood.
        writer.write(r#"{"pub":{"channel":"a","offset":5,"epoch":"E","data":1}}"#);
        let out = text(&mut writer);
        let id = out.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
        let positions = Positions::from_token(id).unwrap();
        assert_eq!(positions.get("a").map(|p| p.offset), Some(5));
        assert_eq!(positions.get("b").map(|p| p.offset), Some(9));
        // A channel the stream was unsubscribed from leaves the token.
        writer.write(r#"{"unsubscribed":{"channel":"b"}}"#);
        writer.write(r#"{"pub":{"channel":"a","offset":6,"epoch":"E","data":1}}"#);
        let out = text(&mut writer);
        let id = out.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
        assert_eq!(Positions::from_token(id).unwrap().get("b"), None);
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let mut positions = Positions::default();
        positions.set("chat:a", 4, "E1");
        positions.set("b", 0, "E2");
        let token = positions.token();
        assert_eq!(Positions::from_token(&token), Some(positions.clone()));
        assert_eq!(Positions::from_token("2.abc"), None);
        assert_eq!(Positions::from_token("1.!!"), None);
        let since = r#"{"chat:a":{"offset":4,"epoch":"E1"},"b":{"offset":0,"epoch":"E2"}}"#;
        assert_eq!(Positions::from_since(since), Some(positions));
    }

    #[test]
    fn sse_events_carry_every_channels_position() {
        let mut w = writer(Format::Sse);
        w.write(r#"{"pub":{"channel":"a","offset":1,"epoch":"E","data":{"t":"x\ny"}}}"#);
        w.write(r#"{"pub":{"channel":"b","offset":7,"epoch":"F","data":1}}"#);
        let out = text(&mut w);
        let last_id = out
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .next_back();
        let positions = Positions::from_token(last_id.unwrap()).unwrap();
        assert_eq!(positions.get("a").map(|p| p.offset), Some(1));
        assert_eq!(positions.get("b").map(|p| p.offset), Some(7));
        assert!(out.starts_with("event: pub\nid: 1."));
        w.write(r#"{"ping":{}}"#);
        assert_eq!(text(&mut w), ": ping\n\n");
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let mut w = writer(Format::Sse);
        w.write("{\"join\":{\"channel\":\"a\",\n\"info\":{}}}");
        assert_eq!(
            text(&mut w),
            "event: join\ndata: {\"channel\":\"a\",\ndata: \"info\":{}}\n\n"
        );
        let mut w = writer(Format::Ndjson);
        w.write("{\"join\":{\"channel\":\"a\",\n\"info\":{}}}");
        assert_eq!(
            text(&mut w),
            "{\"join\":{\"channel\":\"a\", \"info\":{}}}\n"
        );
    }

    #[test]
    fn own_subscribes_become_pushes() {
        let mut w = writer(Format::Ndjson);
        let reply = format!(
            r#"{{"id":{OWN_IDS},"ok":{{"channel":"a","offset":3,"epoch":"N","recovered":false,"publications":[],"reason":"gone"}}}}"#
        );
        w.write(&reply);
        let out = text(&mut w);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["unrecovered"]["reason"], "gone");
        assert_eq!(lines[1]["subscribed"]["offset"], 3);
        // A client's own reply passes as it is.
        w.write(r#"{"id":5,"ok":{}}"#);
        assert_eq!(text(&mut w), "{\"id\":5,\"ok\":{}}\n");
        w.write(r#"{"connected":{"client":"c"}}"#);
        assert_eq!(
            text(&mut w),
            "{\"connected\":{\"session\":\"s1\",\"client\":\"c\"}}\n"
        );
    }
}
