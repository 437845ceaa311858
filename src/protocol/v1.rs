//! Protocol v1's codecs: [`V1`], one JSON object per WebSocket text message, and [`Ndjson`],
//! the same objects one per line of an HTTP stream (`GET /stream`).
//!
//! Shared items go out as the frame encoded once for every subscriber. A subscription the
//! client did not ask for by command has no reply to carry it: it is told in pushes — the
//! recovered publications as `pub`, `unrecovered` when the gap cannot be filled, then
//! `subscribed` with the position delivery continues from.

use std::sync::Arc;

use bytes::BytesMut;
use serde::Serialize;
use serde_json::value::RawValue;

use super::outgoing::{Codec, Item, Subscription};
use super::{
    ChannelName, Connected, ErrorBody, Outcome, PING_FRAME, Push, Reply, SubscribeOk,
    SubscribedPush, UnsubscribedPush, encode,
};
use crate::frame::{Frame, Messages};

const PING: Frame = Frame::from_static(PING_FRAME);

/// Protocol v1 over WebSocket: each item is one text message (a subscription told in pushes,
/// several).
#[derive(Clone, Copy, Debug, Default)]
pub struct V1;

impl Codec<Messages> for V1 {
    fn encode(&mut self, item: Item, out: &mut Messages) {
        frames(item, None, &mut |frame| out.push(frame));
    }

    fn shared<'a>(&self, item: &'a Item) -> Option<&'a Frame> {
        match item {
            Item::Publication(published) => Some(published.frame()),
            Item::Event(event) => Some(event.frame()),
            _ => None,
        }
    }
}

/// Protocol v1 as newline-delimited JSON: each frame on a line of its own. Its `connected`
/// push names the stream's session, for the commands a client sends by HTTP.
#[derive(Clone, Debug)]
pub struct Ndjson {
    session: Box<str>,
}

impl Ndjson {
    pub fn new(session: impl Into<Box<str>>) -> Self {
        Self {
            session: session.into(),
        }
    }
}

impl Codec<BytesMut> for Ndjson {
    fn encode(&mut self, item: Item, out: &mut BytesMut) {
        frames(item, Some(&self.session), &mut |frame| {
            line(frame.as_bytes(), out);
        });
    }
}

/// `text` on one line: JSON's line breaks can only be whitespace (a string cannot hold them
/// raw), so they become spaces.
fn line(text: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(text);
    for byte in &mut out[start..] {
        if *byte == b'\n' || *byte == b'\r' {
            *byte = b' ';
        }
    }
    out.extend_from_slice(b"\n");
}

/// The `connected` push of a stream: the session id first.
#[derive(Serialize)]
struct StreamConnected<'a> {
    session: &'a str,
    #[serde(flatten)]
    connected: &'a Connected,
}

/// An error push that names the channel it is about.
#[derive(Serialize)]
pub(super) struct ChannelError<'a> {
    pub code: u16,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a ChannelName>,
}

/// The body of an `unrecovered` push.
#[derive(Serialize)]
pub(super) struct Unrecovered<'a> {
    pub channel: &'a ChannelName,
    pub offset: u64,
    pub epoch: &'a str,
    pub reason: &'a str,
}

/// The body of a stream's `close` push.
#[derive(Serialize)]
pub(super) struct Close<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// `{"NAME":BODY}`: a push.
fn named<T: Serialize>(name: &str, body: &T) -> String {
    format!("{{\"{name}\":{}}}", encode(body))
}

/// Every v1 frame `item` becomes, in order. `session`: the stream's session id (streams only).
/// A `Disconnect` is a frame only on a stream (a WebSocket closes with a close frame).
pub(super) fn frames(item: Item, session: Option<&str>, emit: &mut dyn FnMut(Frame)) {
    // The fan-out's items first, outside the function that encodes the rest: its frame on
    // the stack is near a kilobyte, set up for every call.
    match item {
        Item::Publication(published) => emit(published.frame().clone()),
        Item::Event(event) => emit(event.frame().clone()),
        item => encoded(item, session, emit),
    }
}

#[inline(never)]
fn encoded(item: Item, session: Option<&str>, emit: &mut dyn FnMut(Frame)) {
    let text = match item {
        Item::Reply { id, body } => format!(r#"{{"id":{id},"ok":{body}}}"#),
        Item::Error(refused) => match refused.id {
            Some(id) => encode(&Reply::<()> {
                id,
                outcome: Outcome::Error(refused.error),
            }),
            None => named(
                "error",
                &ChannelError {
                    code: refused.error.code,
                    message: &refused.error.message,
                    channel: refused.channel.as_ref(),
                },
            ),
        },
        Item::Connected(greeting) => match (greeting.id, session) {
            (Some(id), _) => encode(&Reply {
                id,
                outcome: Outcome::Ok(&greeting.connected),
            }),
            (None, Some(session)) => named(
                "connected",
                &StreamConnected {
                    session,
                    connected: &greeting.connected,
                },
            ),
            (None, None) => named("connected", &greeting.connected),
        },
        Item::Publication(published) => return emit(published.frame().clone()),
        Item::Event(event) => return emit(event.frame().clone()),
        Item::Subscribed(subscription) => return subscribed(*subscription, emit),
        Item::Unsubscribed(channel) => encode(&Push::<()>::Unsubscribed(UnsubscribedPush {
            channel: channel.to_string(),
        })),
        Item::Ping => return emit(PING),
        Item::Disconnect { code, reason } if session.is_some() => named(
            "close",
            &Close {
                code: code.number(),
                reason: &reason,
            },
        ),
        Item::Disconnect { .. } => return,
    };
    emit(Frame::from(text));
}

/// A subscription: the `subscribe` reply, or pushes.
fn subscribed(subscription: Subscription, emit: &mut dyn FnMut(Frame)) {
    let Some(id) = subscription.id else {
        for told in told(&subscription) {
            emit(Frame::from(match told {
                Told::Pub(publication) => encode(&Push::Pub(publication)),
                Told::Unrecovered(unrecovered) => named("unrecovered", &unrecovered),
                Told::Subscribed(subscribed) => encode(&Push::<()>::Subscribed(subscribed)),
            }));
        }
        return;
    };
    let Subscription {
        channel,
        position,
        recovery,
        receipts,
        ..
    } = subscription;
    let (recovered, publications, reason) = match recovery {
        None => (None, None, None),
        Some(recovery) => (
            Some(recovery.unrecovered.is_none()),
            Some(recovery.publications),
            recovery.unrecovered,
        ),
    };
    let reply = SubscribeOk::<Arc<RawValue>> {
        channel: channel.to_string(),
        offset: position.offset,
        epoch: position.epoch.to_string(),
        recovered,
        publications,
        reason,
        receipts,
    };
    emit(Frame::from(encode(&Reply {
        id,
        outcome: Outcome::Ok(reply),
    })));
}

/// One push of a subscription the client learns of by pushes.
pub(super) enum Told<'a> {
    /// A recovered publication.
    Pub(&'a super::Publication),
    /// The gap since the client's position cannot be filled.
    Unrecovered(Unrecovered<'a>),
    /// The subscription is in place: delivery continues from here.
    Subscribed(SubscribedPush),
}

/// The pushes that tell a subscription, in the order they go out: the recovered publications,
/// `unrecovered` if the gap cannot be filled, then `subscribed`. Every codec that tells
/// subscriptions in pushes writes this list, each in its own words.
pub(super) fn told(subscription: &Subscription) -> impl Iterator<Item = Told<'_>> {
    let Subscription {
        channel,
        position,
        recovery,
        receipts,
        ..
    } = subscription;
    let publications = recovery.iter().flat_map(|r| r.publications.iter());
    let unrecovered = recovery
        .as_ref()
        .and_then(|r| r.unrecovered.as_deref())
        .map(|reason| Unrecovered {
            channel,
            offset: position.offset,
            epoch: &position.epoch,
            reason,
        });
    let subscribed = SubscribedPush {
        channel: channel.to_string(),
        offset: position.offset,
        epoch: position.epoch.to_string(),
        receipts: *receipts,
    };
    publications
        .map(Told::Pub)
        .chain(unrecovered.map(Told::Unrecovered))
        .chain(std::iter::once(Told::Subscribed(subscribed)))
}

/// An error body as a reply or push: for a codec that wraps v1 replies (SSE's `reply` event).
pub(super) fn error_reply(id: u64, error: ErrorBody) -> String {
    encode(&Reply::<()> {
        id,
        outcome: Outcome::Error(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::outgoing::{Greeting, Recovered, Refused};
    use crate::protocol::{
        ChannelEvent, ClientInfo, Member, Membership, PresenceChange, Publication, Published,
    };
    use crate::protocol::{CloseCode, ErrorCode, StreamPosition};

    fn lines(items: Vec<Item>) -> Vec<serde_json::Value> {
        let mut codec = Ndjson::new("s1");
        let mut out = BytesMut::new();
        for item in items {
            codec.encode(item, &mut out);
        }
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_subscription_nobody_asked_for_by_command_is_told_in_pushes() {
        let channel = ChannelName::parse("a").unwrap();
        let subscription = |id| {
            Item::Subscribed(Box::new(Subscription {
                id,
                channel: channel.clone(),
                position: StreamPosition {
                    offset: 3,
                    epoch: "N".into(),
                },
                recovery: Some(Recovered {
                    publications: vec![],
                    unrecovered: Some("gone".into()),
                }),
                receipts: false,
                extras: None,
            }))
        };
        let out = lines(vec![subscription(None)]);
        assert_eq!(out[0]["unrecovered"]["reason"], "gone");
        assert_eq!(out[1]["subscribed"]["offset"], 3);
        let out = lines(vec![subscription(Some(5))]);
        assert_eq!(
            (out[0]["id"].clone(), out[0]["ok"]["recovered"].clone()),
            (5.into(), false.into())
        );
    }

    #[test]
    fn a_stream_names_its_session_and_its_close_and_errors_name_their_channel() {
        let greeting = Item::Connected(Box::new(Greeting::pushed()));
        let refused = Item::Error(Box::new(Refused {
            id: None,
            error: ErrorBody::new(ErrorCode::PermissionDenied, "no"),
            channel: Some(ChannelName::parse("b").unwrap()),
        }));
        let close = Item::Disconnect {
            code: CloseCode::GoingAway,
            reason: "bye".into(),
        };
        let out = lines(vec![greeting.clone(), refused, close.clone()]);
        assert_eq!(out[0]["connected"]["session"], "s1");
        assert_eq!(out[0]["connected"]["client"], "c");
        assert_eq!(out[1]["error"]["channel"], "b");
        assert_eq!(out[2]["close"]["code"], 1001);
        let mut ws = Messages::default();
        V1.encode(greeting, &mut ws);
        V1.encode(close, &mut ws);
        let ws: Vec<Frame> = ws.into_iter().collect();
        assert_eq!(ws.len(), 1, "a WebSocket closes with a close frame");
        assert!(!ws[0].as_str().contains("session"));
    }

    #[test]
    fn replies_carry_their_body_and_lines_never_break() {
        let out = lines(vec![Item::Reply {
            id: 7,
            body: "{\"a\":\n1}".into(),
        }]);
        assert_eq!(out[0]["ok"]["a"], 1);
        assert_eq!(out[0]["id"], 7);
    }

    /// What `encode` makes of `item`, as text.
    fn encoded(item: Item) -> Vec<String> {
        let mut out = Messages::default();
        V1.encode(item, &mut out);
        out.into_iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn the_frame_shared_from_an_item_is_the_one_encode_sends_and_only_fan_out_items_have_one() {
        let channel = ChannelName::parse("news").unwrap();
        let publication = Item::Publication(Arc::new(Published::new(
            Publication {
                channel: channel.clone(),
                offset: 3,
                epoch: "E".into(),
                data: Arc::from(RawValue::from_string("{\"t\":1}".into()).unwrap()),
                info: ClientInfo::server(),
            },
            None,
        )));
        let event = Item::Event(Arc::new(ChannelEvent::new(Membership::Join(
            PresenceChange {
                channel,
                info: Member {
                    client: "c".into(),
                    user: "u".into(),
                    authenticated: false,
                    info: None,
                },
            },
        ))));
        for item in [publication, event] {
            let shared = V1
                .shared(&item)
                .expect("a fan-out item")
                .as_str()
                .to_owned();
            assert!(shared.contains("\"news\""), "{shared}");
            assert_eq!(encoded(item), [shared]);
        }
        for item in [
            Item::Ping,
            Item::Reply {
                id: 1,
                body: "{}".into(),
            },
        ] {
            assert!(V1.shared(&item).is_none());
            assert_eq!(encoded(item).len(), 1);
        }
    }
}
