//! What a session says, in no wire's words: typed outgoing [`Item`]s, and the [`Codec`] that
//! turns them into one wire's bytes. This is the seam a second protocol plugs into.
//!
//! # The contract
//! The session core decides everything that matters — who the client is, what it may read and
//! publish, what it missed, when it must go — and says it as items: a reply to a command, or a
//! push (a publication, a join or leave, a subscription made or ended, the heartbeat, the
//! close). Each item carries its channel, offset and epoch where it has them, so a codec never
//! parses anything back. A transport picks a codec and only writes what the codec produced.
//!
//! A codec receives each item of one connection, in order, by value. It must:
//! - **never decide**: identity, permissions, recovery and limits were settled before the item
//!   exists; a codec only chooses bytes (and may keep per-connection state for that, such as
//!   the SSE position token);
//! - **never block** or do I/O: it runs inside the connection's writer;
//! - **never allocate per subscriber for a shared item**: a [`Published`] or [`ChannelEvent`]
//!   is one `Arc` for every subscriber on the node and carries its protocol v1 encoding,
//!   made once (and compressed once, see [`Frame`]). A codec that speaks another wire encodes
//!   from the typed fields; a per-node cache of that encoding belongs beside the v1 one.
//!
//! # Example
//! A codec that writes one line of text per publication and ignores the rest:
//!
//! ```
//! use bytes::BytesMut;
//! use tidings::protocol::{Codec, Item};
//!
//! struct Lines;
//!
//! impl Codec<BytesMut> for Lines {
//!     fn encode(&mut self, item: Item, out: &mut BytesMut) {
//!         if let Item::Publication(published) = item {
//!             let p = &published.publication;
//!             out.extend_from_slice(format!("{} #{}: {}\n", p.channel, p.offset, p.data).as_bytes());
//!         }
//!     }
//! }
//! ```

use std::any::Any;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use super::{
    ChannelName, CloseCode, Connected, ErrorBody, PresenceBatch, PresenceChange, Publication, Push,
    StreamPosition, encode,
};
use crate::frame::Frame;

/// Turns a connection's items into the bytes of one wire. `Out` is what its transport writes:
/// whole messages ([`Messages`](crate::frame::Messages), a WebSocket) or a byte stream (`BytesMut`, an HTTP body).
pub trait Codec<Out> {
    /// Appends `item`'s wire form to `out`; an item the wire has no words for writes nothing.
    fn encode(&mut self, item: Item, out: &mut Out);

    /// The one frame `item` is, when this wire sends it as the node encoded it once (a
    /// publication, an event): the transport copies or shares it from the item, where
    /// `encode` would clone it (a reference count up and down again, per subscriber of every
    /// publication). `None`: use `encode`.
    fn shared<'a>(&self, item: &'a Item) -> Option<&'a Frame> {
        let _ = item;
        None
    }

    /// The close code that says `code` on this wire (whose clients may read the numbers
    /// differently).
    fn close_code(&self, code: super::CloseCode) -> super::CloseCode {
        code
    }
}

/// One thing a session sends.
#[derive(Clone, Debug)]
pub enum Item {
    /// The `ok` reply to request `id`; `body` is its JSON object, encoded once.
    Reply { id: u64, body: Box<str> },
    /// A request refused: a reply with its id, or without one an error push.
    Error(Box<Refused>),
    /// The connection's identity and heartbeat settings: the reply to `connect`, or the push
    /// that opens a connection identified at its handshake.
    Connected(Box<Greeting>),
    /// A publication of a channel the connection subscribes to.
    Publication(Arc<Published>),
    /// A join, a leave or a presence batch in a channel the connection subscribes to.
    Event(Arc<ChannelEvent>),
    /// A subscription is in place: the reply to the client's `subscribe`, or (without an id)
    /// one the client did not ask for by command — a stream's own channels, the server API.
    Subscribed(Box<Subscription>),
    /// The server ended a subscription (server API).
    Unsubscribed(ChannelName),
    /// The heartbeat.
    Ping,
    /// The last item: the connection closes with this code. A message transport says it with
    /// its own close frame; a stream's codec writes it.
    Disconnect { code: CloseCode, reason: Box<str> },
}

impl Item {
    /// An `ok` reply to request `id` with `body`.
    pub fn reply<T: Serialize>(id: u64, body: &T) -> Self {
        Self::Reply {
            id,
            body: encode(body).into_boxed_str(),
        }
    }

    /// An error: a reply to `id`, or an error push.
    pub fn error(id: Option<u64>, error: ErrorBody) -> Self {
        Self::Error(Box::new(Refused {
            id,
            error,
            channel: None,
        }))
    }

    /// About how many bytes the item holds and will be on the wire: what queuing it costs.
    /// Shared items count whole for every connection that queues them, as the bytes each
    /// connection will write.
    pub fn cost(&self) -> usize {
        match self {
            Self::Reply { body, .. } => body.len() + 24,
            Self::Error(refused) => {
                let channel = refused.channel.as_ref().map_or(0, |c| c.as_str().len());
                refused.error.message.len() + channel + 48
            }
            Self::Connected(greeting) => {
                greeting.connected.client.len() + greeting.connected.user.len() + 160
            }
            Self::Publication(published) => published.frame.len(),
            Self::Event(event) => event.frame.len(),
            Self::Subscribed(subscription) => subscription.cost(),
            Self::Unsubscribed(channel) => channel.as_str().len() + 32,
            Self::Ping | Self::Disconnect { .. } => 16,
        }
    }
}

/// A refused request.
#[derive(Clone, Debug)]
pub struct Refused {
    pub id: Option<u64>,
    pub error: ErrorBody,
    /// The channel of a subscription the client asked for without a command (a stream's
    /// channels): an error push names it.
    pub channel: Option<ChannelName>,
}

/// `connected`: the reply to `connect` (with its id), or the first push.
#[derive(Clone, Debug)]
pub struct Greeting {
    pub id: Option<u64>,
    pub connected: Connected,
}

#[cfg(test)]
impl Greeting {
    /// A `connected` push of an anonymous client `c`, for the tests of codecs and transports.
    pub(crate) fn pushed() -> Self {
        let connected = Connected {
            client: "c".into(),
            user: "u".into(),
            version: super::PROTOCOL_VERSION,
            ping_interval_ms: 1,
            pong_timeout_ms: 1,
            authenticated: false,
            expires_in_ms: None,
        };
        Self {
            id: None,
            connected,
        }
    }
}

/// From `compress_from` bytes on, a publication's frame may go out compressed.
fn publication_frame(text: String, compress_from: Option<usize>) -> Frame {
    match compress_from {
        Some(min) if text.len() >= min => Frame::compressible(text),
        _ => Frame::from(text),
    }
}

/// A publication, with its protocol v1 push (`{"pub":{...}}`) encoded once for every
/// subscriber on the node.
pub struct Published {
    pub publication: Publication,
    frame: Frame,
    compress_from: Option<usize>,
    /// Another wire's encoding, made by the first of that wire's connections to send this
    /// publication and shared by the node's others (see [`Published::encoded`]).
    other: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("publication", &self.publication)
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

impl Published {
    /// Encodes `publication`; from `compress_from` bytes on, the frame may go out compressed.
    pub fn new(publication: Publication, compress_from: Option<usize>) -> Self {
        let frame = publication_frame(encode(&Push::Pub(&publication)), compress_from);
        Self {
            publication,
            frame,
            compress_from,
            other: OnceLock::new(),
        }
    }

    /// A frame of `text` that compresses as this publication's channel does: for a codec that
    /// encodes the publication in another wire's words.
    pub fn frame_of(&self, text: String) -> Frame {
        publication_frame(text, self.compress_from)
    }

    /// Another wire's encoding of this publication, lent to `with`: `encode` runs once per
    /// node, for the first of that wire's connections to send it, and every other borrows the
    /// result (no reference count touched per connection, as for the v1 frame). One other wire
    /// is cached; were a third to ask for the same publication, it would encode per connection.
    pub fn encoded<T: Any + Send + Sync, R>(
        &self,
        encode: impl Fn(&Self) -> T,
        with: impl FnOnce(&T) -> R,
    ) -> R {
        let shared = self
            .other
            .get_or_init(|| Box::new(encode(self)) as Box<dyn Any + Send + Sync>);
        match shared.downcast_ref::<T>() {
            Some(encoded) => with(encoded),
            None => with(&encode(self)),
        }
    }

    /// The v1 push, `{"pub":{...}}`.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The push's object alone, `{...}`: a slice of the frame.
    pub fn body(&self) -> &[u8] {
        push_body(&self.frame, "pub")
    }
}

/// What happened in a channel's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    Join(PresenceChange),
    Leave(PresenceChange),
    Batch(PresenceBatch),
}

impl Membership {
    /// The push's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Join(_) => "join",
            Self::Leave(_) => "leave",
            Self::Batch(_) => "presence_batch",
        }
    }

    pub fn channel(&self) -> &ChannelName {
        match self {
            Self::Join(change) | Self::Leave(change) => &change.channel,
            Self::Batch(batch) => &batch.channel,
        }
    }
}

/// A presence event with its v1 push encoded once for every subscriber on the node.
#[derive(Debug)]
pub struct ChannelEvent {
    pub presence: Membership,
    frame: Frame,
}

impl ChannelEvent {
    pub fn new(presence: Membership) -> Self {
        let text = match &presence {
            Membership::Join(change) => encode(&Push::<()>::Join(change.clone())),
            Membership::Leave(change) => encode(&Push::<()>::Leave(change.clone())),
            Membership::Batch(batch) => encode(&Push::<()>::PresenceBatch(batch.clone())),
        };
        Self {
            presence,
            frame: Frame::from(text),
        }
    }

    pub fn channel(&self) -> &ChannelName {
        self.presence.channel()
    }

    /// The v1 push, `{"join":{...}}` and so on.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// The push's object alone: a slice of the frame.
    pub fn body(&self) -> &[u8] {
        push_body(&self.frame, self.presence.name())
    }
}

/// The object of a v1 push `{"NAME":{...}}`, without copying; the whole frame if it is not
/// one (it always is: the frames above are encoded so).
fn push_body<'a>(frame: &'a Frame, name: &str) -> &'a [u8] {
    let bytes = frame.as_bytes();
    let head = name.len() + 4; // {"NAME":
    let framed = bytes.len() > head
        && bytes.starts_with(b"{\"")
        && bytes[2..].starts_with(name.as_bytes())
        && bytes[2 + name.len()..].starts_with(b"\":")
        && bytes.ends_with(b"}");
    if framed {
        &bytes[head..bytes.len() - 1]
    } else {
        bytes
    }
}

/// A subscription in place.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The client's `subscribe` request; `None` for a subscription it did not ask for by
    /// command, which the client learns of by pushes.
    pub id: Option<u64>,
    pub channel: ChannelName,
    /// Where delivery continues from.
    pub position: StreamPosition,
    /// Only when the client gave a position to continue from: what it missed.
    pub recovery: Option<Recovered>,
    /// The channel's publications wait for an `ack` (delivery receipts).
    pub receipts: bool,
    /// What the subscribe's [`SubscribeExtras`](super::SubscribeExtras) asked for; the v1
    /// wire never asks.
    pub extras: Option<Box<SubscriptionExtras>>,
}

/// What a subscription made for another wire carries besides.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionExtras {
    /// The channel's members once this connection joined (at most one page of
    /// [`Presence::MAX_LIMIT`](super::Presence::MAX_LIMIT) connections).
    pub members: Option<Vec<super::Member>>,
    /// Asked for the channel's latest publication: it, or `None` when there is none.
    pub latest: Option<Option<Publication>>,
}

impl Subscription {
    fn cost(&self) -> usize {
        let recovered = self.recovery.as_ref().map_or(0, |recovery| {
            recovery
                .publications
                .iter()
                .map(|p| 96 + p.channel.as_str().len() + p.epoch.len() + p.data.get().len())
                .sum::<usize>()
                + recovery.unrecovered.as_ref().map_or(0, String::len)
        });
        let extras = self.extras.as_ref().map_or(0, |extras| {
            let members = extras.members.iter().flatten().map(|member| {
                64 + member.client.len()
                    + member.user.len()
                    + member
                        .info
                        .as_ref()
                        .map_or(0, |info| info.to_string().len())
            });
            let latest = extras
                .latest
                .iter()
                .flatten()
                .map(|p| 96 + p.data.get().len());
            members.sum::<usize>() + latest.sum::<usize>()
        });
        64 + self.channel.as_str().len() + self.position.epoch.len() + recovered + extras
    }
}

/// What a subscription that continued from a position missed.
#[derive(Clone, Debug)]
pub struct Recovered {
    /// The publications after the position, in offset order (empty if not recovered).
    pub publications: Vec<Publication>,
    /// Why the gap cannot be filled, if it cannot: the client must start over.
    pub unrecovered: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientInfo, Member};

    fn publication() -> Publication {
        Publication {
            channel: ChannelName::parse("news").unwrap(),
            offset: 3,
            epoch: "E".into(),
            data: Arc::from(serde_json::value::RawValue::from_string("{\"t\":1}".into()).unwrap()),
            info: ClientInfo::server(),
        }
    }

    #[test]
    fn shared_items_slice_their_object_out_of_the_v1_frame() {
        let published = Published::new(publication(), None);
        let body: serde_json::Value = serde_json::from_slice(published.body()).unwrap();
        assert_eq!(body["offset"], 3);
        assert!(published.frame().as_str().starts_with("{\"pub\":{"));
        let member = Member {
            client: "c".into(),
            user: "u".into(),
            authenticated: false,
            info: None,
        };
        let event = ChannelEvent::new(Membership::Leave(PresenceChange {
            channel: ChannelName::parse("news").unwrap(),
            info: member,
        }));
        let body: serde_json::Value = serde_json::from_slice(event.body()).unwrap();
        assert_eq!(body["info"]["user"], "u");
        assert_eq!(event.channel().as_str(), "news");
    }

    #[test]
    fn compression_is_offered_from_the_threshold_on() {
        let small = Published::new(publication(), Some(10_000));
        assert_eq!(small.frame().deflated(|_| Some("z".into())), None);
        let big = Published::new(publication(), Some(10));
        assert!(big.frame().deflated(|_| Some("z".into())).is_some());
    }
}
