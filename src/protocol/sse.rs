//! Protocol v1 as Server-Sent Events (`GET /sse`): each push is an event named after it
//! (`pub`, `join`, `subscribed`, …) whose data is the push's object; a reply is a `reply` event
//! holding the v1 reply; the heartbeat is a comment; the close is a `close` event.
//!
//! Every `pub` and `subscribed` event carries as its `id` a [`Positions`] token: where the
//! stream stands in **every** channel. The browser sends it back as `Last-Event-ID` when it
//! reconnects, to any node, which subscribes each channel from there.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::BytesMut;
use serde::Serialize;

use super::outgoing::{Codec, Item, Subscription};
use super::v1::{ChannelError, Close, Told, error_reply, told};
use super::{Connected, Outcome, Reply, StreamPosition, SubscribedPush, UnsubscribedPush, encode};

/// How soon an `EventSource` reconnects after the stream ends.
const SSE_RETRY_MS: u32 = 1000;

/// Where a stream stands in each of its channels: offset and epoch of the last publication
/// delivered (or of the subscription's start). Travels as an opaque token.
///
/// Sorted by channel, in a list rather than a `BTreeMap`: a stream follows a few channels, and
/// a map's first node takes room for eleven of them (~630 bytes for one, held as long as the
/// stream is open).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(Vec<(String, (u64, String))>);

/// The longest token accepted back (HTTP servers refuse much longer headers anyway): about
/// 700 channels' positions with names of typical length.
const MAX_TOKEN_LEN: usize = 48 * 1024;

impl Positions {
    /// `1.` and the positions as base64url JSON: `[[channel, offset, epoch], …]`.
    pub fn token(&self) -> String {
        let list: Vec<(&str, u64, &str)> = self
            .0
            .iter()
            .map(|(channel, (offset, epoch))| (channel.as_str(), *offset, epoch.as_str()))
            .collect();
        let json = serde_json::to_vec(&list).unwrap_or_default();
        format!("1.{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads a token back; `None` if it is not one.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let json = URL_SAFE_NO_PAD.decode(token.strip_prefix("1.")?).ok()?;
        let list: Vec<(String, u64, String)> = serde_json::from_slice(&json).ok()?;
        // Sorted, and a channel named twice keeps its last position.
        let map: BTreeMap<String, (u64, String)> = list
            .into_iter()
            .map(|(channel, offset, epoch)| (channel, (offset, epoch)))
            .collect();
        Some(Self(map.into_iter().collect()))
    }

    /// The `since` object of `/stream`: `{"CHANNEL":{"offset":N,"epoch":"E"},…}`.
    pub fn from_since(since: &str) -> Option<Self> {
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

    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(name, _)| name.as_str().cmp(channel))
    }

    pub fn get(&self, channel: &str) -> Option<StreamPosition> {
        let (_, (offset, epoch)) = &self.0[self.find(channel).ok()?];
        Some(StreamPosition {
            offset: *offset,
            epoch: epoch.as_str().into(),
        })
    }

    fn remove(&mut self, channel: &str) {
        if let Ok(at) = self.find(channel) {
            self.0.remove(at);
        }
    }

    pub fn set(&mut self, channel: &str, offset: u64, epoch: &str) {
        match self.find(channel) {
            Ok(at) => {
                let at = &mut self.0[at].1;
                at.0 = offset;
                if at.1 != epoch {
                    epoch.clone_into(&mut at.1);
                }
            }
            Err(at) => {
                let position = (channel.to_owned(), (offset, epoch.to_owned()));
                self.0.insert(at, position);
            }
        }
    }
}

/// The SSE codec of one stream: it keeps the stream's positions for the events' ids.
#[derive(Debug)]
pub struct Sse {
    session: Box<str>,
    positions: Positions,
}

/// The `connected` event's data: the session id first.
#[derive(Serialize)]
struct StreamConnected<'a> {
    session: &'a str,
    #[serde(flatten)]
    connected: &'a Connected,
}

impl Sse {
    /// The codec of stream `session`, which resumes from `positions` (kept until each channel
    /// moves on, so that an event sent before a slow, or failed, resubscription does not drop
    /// another channel's position from the token).
    pub fn new(session: impl Into<Box<str>>, positions: Positions) -> Self {
        Self {
            session: session.into(),
            positions,
        }
    }

    /// What the stream starts with: how soon to reconnect.
    pub fn preamble(out: &mut BytesMut) {
        out.extend_from_slice(format!("retry: {SSE_RETRY_MS}\n\n").as_bytes());
    }

    /// The `pub`, `unrecovered` and `subscribed` events of a subscription told in pushes;
    /// the `pub` and `subscribed` events carry the positions they move to.
    fn subscribed(&mut self, subscription: &Subscription, out: &mut BytesMut) {
        for told in told(subscription) {
            match told {
                Told::Pub(publication) => {
                    let channel = publication.channel.as_str();
                    self.positions
                        .set(channel, publication.offset, &publication.epoch);
                    self.event("pub", true, encode(publication).as_bytes(), out);
                }
                Told::Unrecovered(unrecovered) => {
                    self.event("unrecovered", false, encode(&unrecovered).as_bytes(), out);
                }
                Told::Subscribed(subscribed) => {
                    let SubscribedPush {
                        channel,
                        offset,
                        epoch,
                        ..
                    } = &subscribed;
                    self.positions.set(channel, *offset, epoch);
                    self.event("subscribed", true, encode(&subscribed).as_bytes(), out);
                }
            }
        }
    }

    /// An event `kind` with `data`, and the positions as its id when `positioned`.
    fn event(&self, kind: &str, positioned: bool, data: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        if positioned {
            out.extend_from_slice(b"\nid: ");
            out.extend_from_slice(self.positions.token().as_bytes());
        }
        // Line breaks can only be JSON whitespace (a string cannot hold them raw); each piece
        // goes in a `data:` line of its own, which the browser joins back with `\n`.
        for piece in data.split(|b| *b == b'\r' || *b == b'\n') {
            out.extend_from_slice(b"\ndata: ");
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(b"\n\n");
    }
}

impl Codec<BytesMut> for Sse {
    fn encode(&mut self, item: Item, out: &mut BytesMut) {
        match item {
            Item::Publication(published) => {
                let p = &published.publication;
                self.positions.set(p.channel.as_str(), p.offset, &p.epoch);
                self.event("pub", true, published.body(), out);
            }
            Item::Event(event) => self.event(event.presence.name(), false, event.body(), out),
            Item::Ping => out.extend_from_slice(b": ping\n\n"),
            Item::Subscribed(subscription) if subscription.id.is_none() => {
                self.subscribed(&subscription, out)
            }
            Item::Subscribed(subscription) => {
                // A client's own subscribe: its reply, and the channel's place in the token.
                let (channel, position) = (&subscription.channel, &subscription.position);
                self.positions
                    .set(channel.as_str(), position.offset, &position.epoch);
                let mut reply = Vec::new();
                super::v1::frames(Item::Subscribed(subscription), None, &mut |f| reply.push(f));
                for frame in reply {
                    self.event("reply", false, frame.as_bytes(), out);
                }
            }
            Item::Reply { id, body } => {
                let reply = format!(r#"{{"id":{id},"ok":{body}}}"#);
                self.event("reply", false, reply.as_bytes(), out);
            }
            Item::Error(refused) => match refused.id {
                Some(id) => {
                    let reply = error_reply(id, refused.error);
                    self.event("reply", false, reply.as_bytes(), out);
                }
                None => {
                    let error = ChannelError {
                        code: refused.error.code,
                        message: &refused.error.message,
                        channel: refused.channel.as_ref(),
                    };
                    self.event("error", false, encode(&error).as_bytes(), out);
                }
            },
            Item::Connected(greeting) => match greeting.id {
                Some(id) => {
                    let reply = encode(&Reply {
                        id,
                        outcome: Outcome::Ok(&greeting.connected),
                    });
                    self.event("reply", false, reply.as_bytes(), out);
                }
                None => {
                    let connected = StreamConnected {
                        session: &self.session,
                        connected: &greeting.connected,
                    };
                    self.event("connected", false, encode(&connected).as_bytes(), out);
                }
            },
            Item::Unsubscribed(channel) => {
                self.positions.remove(channel.as_str());
                let gone = UnsubscribedPush {
                    channel: channel.to_string(),
                };
                self.event("unsubscribed", false, encode(&gone).as_bytes(), out);
            }
            Item::Disconnect { code, reason } => {
                let close = Close {
                    code: code.number(),
                    reason: &reason,
                };
                self.event("close", false, encode(&close).as_bytes(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::outgoing::Published;
    use crate::protocol::{ChannelName, ClientInfo, Publication};

    fn publication(channel: &str, offset: u64, epoch: &str, data: &str) -> Item {
        let data = serde_json::value::RawValue::from_string(data.into()).unwrap();
        Item::Publication(Arc::new(Published::new(
            Publication {
                channel: ChannelName::parse(channel).unwrap(),
                offset,
                epoch: epoch.into(),
                data: Arc::from(data),
                info: ClientInfo::server(),
            },
            None,
        )))
    }

    fn text(out: &mut BytesMut) -> String {
        String::from_utf8(out.split().to_vec()).unwrap()
    }

    fn last_id(out: &str) -> Positions {
        let id = out
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .next_back();
        Positions::from_token(id.unwrap()).unwrap()
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
    fn events_carry_every_channels_position_and_keep_a_resumed_one_until_it_moves_on() {
        let mut resumed = Positions::default();
        resumed.set("b", 9, "E");
        let mut sse = Sse::new("s1", resumed);
        let mut out = BytesMut::new();
        sse.encode(publication("a", 5, "E", "{\"t\":\"x\\ny\"}"), &mut out);
        let first = text(&mut out);
        assert!(first.starts_with("event: pub\nid: 1."), "{first}");
        let positions = last_id(&first);
        assert_eq!(positions.get("a").map(|p| p.offset), Some(5));
        assert_eq!(positions.get("b").map(|p| p.offset), Some(9));
        sse.encode(
            Item::Unsubscribed(ChannelName::parse("b").unwrap()),
            &mut out,
        );
        assert_eq!(
            text(&mut out),
            "event: unsubscribed\ndata: {\"channel\":\"b\"}\n\n"
        );
        sse.encode(publication("a", 6, "E", "1"), &mut out);
        assert_eq!(last_id(&text(&mut out)).get("b"), None);
        sse.encode(Item::Ping, &mut out);
        assert_eq!(text(&mut out), ": ping\n\n");
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let mut sse = Sse::new("s1", Positions::default());
        let mut out = BytesMut::new();
        sse.encode(
            Item::Reply {
                id: 1,
                body: "{\"a\":\n1}".into(),
            },
            &mut out,
        );
        assert_eq!(
            text(&mut out),
            "event: reply\ndata: {\"id\":1,\"ok\":{\"a\":\ndata: 1}}\n\n"
        );
    }
}
