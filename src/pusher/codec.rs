//! The session's items in Pusher's words (protocol 7): the [`Codec`] of a Pusher connection.
//!
//! Pusher answers few commands by name, so the connection's decoder notes what each command it
//! handed the session was ([`Asked`]); the codec reads that note when the reply comes — a
//! `pusher:pong` for a ping, `pusher:subscription_error` naming the channel for a refused
//! subscribe — and writes nothing for replies Pusher has no words for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::value::RawValue;

use super::channel;
use crate::frame::{Frame, Messages};
use crate::protocol::{
    CloseCode, Codec, ErrorCode, Item, Member, Membership, Publication, Published, Subscription,
};

/// What the decoder asked the session, by request id; shared by one connection's two halves.
#[derive(Clone, Debug, Default)]
pub struct Asked(Arc<Mutex<HashMap<u64, Question>>>);

/// One command the decoder handed the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    Ping,
    /// A subscribe to this Pusher channel.
    Subscribe(String),
    /// A sign-in with this `user_data`.
    SignIn(String),
    /// Anything answered by nothing on Pusher's wire (unsubscribe, a client event's publish).
    Quiet,
}

impl Asked {
    pub fn note(&self, id: u64, question: Question) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, question);
    }

    fn answered(&self, id: u64) -> Option<Question> {
        let mut asked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let question = asked.remove(&id);
        if asked.is_empty() {
            // A map keeps its capacity once emptied: ~180 bytes on every idle connection that
            // once asked something (its subscribe).
            *asked = HashMap::new();
        }
        question
    }
}

/// Pusher's socket id for a connection: its client id (16 hex digits) as two decimal halves,
/// `HIGH.LOW`, the shape Pusher's SDKs check (`^\d+\.\d+$`).
pub fn socket_id(client: &str) -> String {
    let id = u64::from_str_radix(client, 16).unwrap_or_default();
    format!("{}.{}", id >> 32, id & 0xffff_ffff)
}

/// The client id a socket id was made from ([`socket_id`] backwards), if it is one.
fn client_of(socket_id: &str) -> Option<Box<str>> {
    let (high, low) = socket_id.split_once('.')?;
    let (high, low): (u32, u32) = (high.parse().ok()?, low.parse().ok()?);
    Some(format!("{:016x}", (u64::from(high) << 32) | u64::from(low)).into())
}

/// The codec of one Pusher connection of app `app`.
#[derive(Debug)]
pub struct Pusher {
    app: Arc<str>,
    asked: Asked,
    /// Seconds of silence after which a client pings (`activity_timeout`).
    activity_timeout: u64,
    /// This connection's client id (its socket id is made from it).
    client: Arc<str>,
}

impl Pusher {
    /// `client`: the connection's client id, shared with its reader (the greeting names it
    /// again, and only a different one is copied).
    pub fn new(
        app: impl Into<Arc<str>>,
        client: Arc<str>,
        asked: Asked,
        activity_timeout: u64,
    ) -> Self {
        Self {
            app: app.into(),
            asked,
            activity_timeout,
            client,
        }
    }

    /// A subscription's `pusher_internal:subscription_succeeded`: with the members of a
    /// presence channel (one entry per user), then a cache channel's last event or its miss.
    fn subscribed(&mut self, subscription: &Subscription, out: &mut Messages) {
        let Some((_, name)) = channel::external(&subscription.channel) else {
            return;
        };
        if let Some(id) = subscription.id {
            self.asked.answered(id);
        }
        let event = "pusher_internal:subscription_succeeded";
        let extras = subscription.extras.as_deref();
        match extras.and_then(|extras| extras.members.as_ref()) {
            Some(members) => {
                let mut ids: Vec<&str> = Vec::new();
                let mut hash = serde_json::Map::new();
                for member in members {
                    if !hash.contains_key(&*member.user) {
                        ids.push(&member.user);
                        let info = member.info.as_deref().cloned();
                        hash.insert(member.user.to_string(), info.unwrap_or_default());
                    }
                }
                let presence = serde_json::json!({
                    "presence": {"ids": ids, "hash": hash, "count": ids.len()}
                });
                out.push(frame(event, Some(&name), presence.to_string()));
            }
            None => out.push(frame(event, Some(&name), "{}")),
        }
        match extras.and_then(|extras| extras.latest.as_ref()) {
            Some(Some(latest)) => {
                if let Some(event) = PusherEvent::of(latest, Frame::from) {
                    self.deliver(&event, out);
                }
            }
            Some(None) => out.push(frame("pusher:cache_miss", Some(&name), "{}")),
            None => {}
        }
    }

    /// A publication of this app's channel, in Pusher's words; nothing for the connection
    /// it excludes (a client event's sender, a trigger's `socket_id`).
    fn event(&self, published: &Published, out: &mut Messages) {
        // Encoded once per node, by the first Pusher connection to send it.
        published.encoded(
            |published| PusherEvent::of(&published.publication, |text| published.frame_of(text)),
            |encoded| {
                if let Some(event) = encoded {
                    self.deliver(event, out);
                }
            },
        );
    }

    fn deliver(&self, event: &PusherEvent, out: &mut Messages) {
        if *event.app == *self.app && event.except.as_deref() != Some(&*self.client) {
            out.push(event.frame.clone());
        }
    }

    /// A presence change: `member_added` and `member_removed` for a user's first connection
    /// in and last out, never for this connection's own.
    fn membership(&self, membership: &Membership, out: &mut Messages) {
        let Some((app, name)) = channel::external(membership.channel()) else {
            return;
        };
        if app != &*self.app {
            return;
        }
        let mut told = |member: &Member, joined: bool| {
            if member.client == self.client {
                return;
            }
            let data = if joined {
                serde_json::json!({"user_id": member.user, "user_info": member.info})
            } else {
                serde_json::json!({"user_id": member.user})
            };
            let event = if joined {
                "pusher_internal:member_added"
            } else {
                "pusher_internal:member_removed"
            };
            out.push(frame(event, Some(&name), data.to_string()));
        };
        match membership {
            Membership::Join(change) => told(&change.info, true),
            Membership::Leave(change) => told(&change.info, false),
            Membership::Batch(batch) => {
                batch.joined.iter().for_each(|member| told(member, true));
                batch.left.iter().for_each(|member| told(member, false));
            }
        }
    }
}

/// Pusher's code for a refusal, where it has one.
fn pusher_code(code: u16) -> Option<u16> {
    if code == ErrorCode::RateLimited.as_u16() {
        Some(4301)
    } else if code == ErrorCode::InvalidToken.as_u16() {
        Some(4009)
    } else {
        None
    }
}

#[derive(Serialize)]
struct Event<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: Option<u16>,
    message: &'a str,
}

#[derive(Serialize)]
struct SubscriptionError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: &'a str,
    status: u16,
}

fn frame<D: Serialize>(event: &str, channel: Option<&str>, data: D) -> Frame {
    let event = Event {
        event,
        channel,
        data,
        user_id: None,
    };
    Frame::from(serde_json::to_string(&event).unwrap_or_default())
}

/// A publication of a Pusher channel in Pusher's words, shared by the node's Pusher
/// connections: the app it belongs to and the socket id it skips are checked per connection.
struct PusherEvent {
    app: Box<str>,
    /// The client id of the socket it skips.
    except: Option<Box<str>>,
    frame: Frame,
}

impl PusherEvent {
    /// `None` for a publication that is not a Pusher event (not of a Pusher channel, or not
    /// stored as one).
    fn of(publication: &Publication, frame: impl FnOnce(String) -> Frame) -> Option<Self> {
        let (app, name) = channel::external(&publication.channel)?;
        let stored = serde_json::from_str::<Stored<'_>>(publication.data.get()).ok()?;
        let event = Event {
            event: &stored.event,
            channel: Some(&name),
            data: stored.data,
            user_id: stored.user_id.as_deref(),
        };
        Some(Self {
            app: app.into(),
            except: stored.except.as_deref().and_then(client_of),
            frame: frame(serde_json::to_string(&event).ok()?),
        })
    }
}

/// A Pusher event's payload as Tidings keeps it: `{"event": NAME, "data": …}`, with the
/// sender's `user_id` on a presence channel and the socket id it skips (`except`).
#[derive(serde::Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    except: Option<std::borrow::Cow<'a, str>>,
}

/// Pusher's close code for a session's close, as pusher-js reads the ranges: 4000–4099 do not
/// reconnect (and 4000 means "use TLS"), 4100–4199 reconnect after a back-off, 4200–4299 at
/// once, 4300 and above do not.
pub fn close_code(code: CloseCode) -> CloseCode {
    let number = match code {
        // Said by the app (a backend's or the HTTP API's choice): as chosen.
        CloseCode::App(_) => return code,
        CloseCode::Normal
        | CloseCode::ProtocolError
        | CloseCode::InvalidPayload
        | CloseCode::MessageTooBig => return code,
        CloseCode::PolicyViolation | CloseCode::TokenExpired | CloseCode::Disconnected => 4009,
        CloseCode::TryAgainLater | CloseCode::SlowConsumer | CloseCode::BackendUnavailable => 4100,
        CloseCode::GoingAway
        | CloseCode::InternalError
        | CloseCode::InsufficientState
        | CloseCode::DisconnectedReconnect => 4200,
        CloseCode::NoPong => 4201,
        CloseCode::Idle => 4202,
        CloseCode::RateLimited => 4301,
    };
    CloseCode::app(number).unwrap_or(code)
}

impl Codec<Messages> for Pusher {
    fn close_code(&self, code: CloseCode) -> CloseCode {
        close_code(code)
    }

    fn encode(&mut self, item: Item, out: &mut Messages) {
        match item {
            Item::Connected(greeting) => {
                if *self.client != *greeting.connected.client {
                    self.client = greeting.connected.client.as_str().into();
                }
                let established = serde_json::json!({
                    "socket_id": socket_id(&self.client),
                    "activity_timeout": self.activity_timeout,
                });
                let data = established.to_string();
                out.push(frame("pusher:connection_established", None, data));
            }
            Item::Reply { id, .. } => match self.asked.answered(id) {
                Some(Question::Ping) => {
                    out.push(frame("pusher:pong", None, serde_json::json!({})));
                }
                Some(Question::SignIn(user_data)) => {
                    let data = serde_json::json!({ "user_data": user_data }).to_string();
                    out.push(frame("pusher:signin_success", None, data));
                }
                _ => {}
            },
            Item::Subscribed(subscription) => self.subscribed(&subscription, out),
            Item::Error(refused) => {
                let asked = refused.id.and_then(|id| self.asked.answered(id));
                let message = &refused.error.message;
                if let Some(Question::Subscribe(name)) = asked {
                    // As Soketi and Sockudo say it: pusher-js reports it as the subscription's
                    // `pusher:subscription_error`.
                    let error = SubscriptionError {
                        kind: "AuthError",
                        error: message,
                        status: 401,
                    };
                    out.push(frame("pusher:subscription_error", Some(&name), error));
                } else {
                    let data = ErrorData {
                        code: pusher_code(refused.error.code),
                        message,
                    };
                    out.push(frame("pusher:error", None, data));
                }
            }
            Item::Publication(published) => self.event(&published, out),
            Item::Event(event) => self.membership(&event.presence, out),
            Item::Ping => out.push(frame("pusher:ping", None, serde_json::json!({}))),
            // Pusher has no word for a server-side unsubscribe; the close is the transport's
            // close frame.
            Item::Unsubscribed(_) | Item::Disconnect { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_questions_leave_no_capacity_behind() {
        let asked = Asked::default();
        asked.note(1, Question::Ping);
        asked.note(2, Question::Quiet);
        assert_eq!(asked.answered(1), Some(Question::Ping));
        assert!(asked.0.lock().unwrap().capacity() > 0, "one still waits");
        assert_eq!(asked.answered(2), Some(Question::Quiet));
        assert_eq!(asked.0.lock().unwrap().capacity(), 0);
        assert_eq!(asked.answered(2), None);
    }
    use crate::protocol::{
        ChannelName, ClientInfo, ErrorBody, Greeting, Publication, Published, Refused,
        StreamPosition, Subscription,
    };

    fn texts(out: Messages) -> Vec<String> {
        out.into_iter()
            .map(|frame| String::from_utf8(frame.as_bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_sessions_close_reads_right_to_pusher_js() {
        let number = |code| close_code(code).number();
        // 4000 would tell pusher-js to switch to TLS; a slow consumer comes back after a pause.
        assert_eq!(number(CloseCode::SlowConsumer), 4100);
        assert_eq!(number(CloseCode::TryAgainLater), 4100);
        // Reconnect at once: the node is going, or lost state.
        assert_eq!(number(CloseCode::GoingAway), 4200);
        assert_eq!(number(CloseCode::InsufficientState), 4200);
        assert_eq!(number(CloseCode::NoPong), 4201);
        // Not again without a change.
        assert_eq!(number(CloseCode::Disconnected), 4009);
        assert_eq!(number(CloseCode::PolicyViolation), 4009);
        assert_eq!(number(CloseCode::RateLimited), 4301);
        // What the app chose, and the socket's own closes, stay as they are.
        assert_eq!(number(CloseCode::app(4009).unwrap()), 4009);
        assert_eq!(number(CloseCode::app(4550).unwrap()), 4550);
        assert_eq!(number(CloseCode::MessageTooBig), 1009);
        assert_eq!(number(CloseCode::Normal), 1000);
    }

    #[test]
    fn the_socket_id_has_the_shape_pushers_sdks_check() {
        assert_eq!(socket_id("0000000100000002"), "1.2");
        assert_eq!(socket_id("ffffffffffffffff"), "4294967295.4294967295");
        for client in ["0000000100000002", "ffffffffffffffff", "0123456789abcdef"] {
            assert_eq!(client_of(&socket_id(client)).as_deref(), Some(client));
        }
        assert_eq!(client_of("1.2.3"), None);
        assert_eq!(client_of("-1.2"), None);
    }

    #[test]
    fn items_come_out_in_pushers_words() {
        let asked = Asked::default();
        let mut codec = Pusher::new("7", "".into(), asked.clone(), 120);
        let mut out = Messages::default();
        let mut greeting = Greeting::pushed();
        greeting.connected.client = "0000000100000002".into();
        codec.encode(Item::Connected(Box::new(greeting)), &mut out);

        asked.note(1, Question::Ping);
        codec.encode(Item::reply(1, &serde_json::json!({})), &mut out);
        asked.note(2, Question::Quiet);
        codec.encode(Item::reply(2, &serde_json::json!({})), &mut out);

        let news = channel::internal("7", "news", channel::kind("news").unwrap()).unwrap();
        asked.note(3, Question::Subscribe("news".into()));
        let subscribed = Subscription {
            id: Some(3),
            channel: news.clone(),
            position: StreamPosition {
                offset: 0,
                epoch: "e".into(),
            },
            recovery: None,
            receipts: false,
            extras: None,
        };
        codec.encode(Item::Subscribed(Box::new(subscribed)), &mut out);
        asked.note(4, Question::Subscribe("private-x".into()));
        let refused = Refused {
            id: Some(4),
            error: ErrorBody::new(
                crate::protocol::ErrorCode::PermissionDenied,
                "bad signature",
            ),
            channel: None,
        };
        codec.encode(Item::Error(Box::new(refused)), &mut out);

        let publication = Publication {
            channel: news,
            offset: 1,
            epoch: "e".into(),
            data: RawValue::from_string(r#"{"event":"update","data":"{\"x\":1}"}"#.into())
                .unwrap()
                .into(),
            info: ClientInfo {
                client: "api".into(),
                user: "server".into(),
            },
        };
        codec.encode(
            Item::Publication(Arc::new(Published::new(publication, None))),
            &mut out,
        );
        // Another app's channel, or a native one, says nothing here.
        let native = Publication {
            channel: ChannelName::parse("chat:lobby").unwrap(),
            offset: 1,
            epoch: "e".into(),
            data: RawValue::from_string("1".into()).unwrap().into(),
            info: ClientInfo {
                client: "c".into(),
                user: "u".into(),
            },
        };
        codec.encode(
            Item::Publication(Arc::new(Published::new(native, None))),
            &mut out,
        );
        codec.encode(Item::Ping, &mut out);

        assert_eq!(
            texts(out),
            [
                r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}"}"#,
                r#"{"event":"pusher:pong","data":{}}"#,
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}"#,
                r#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"bad signature","status":401}}"#,
                r#"{"event":"update","channel":"news","data":"{\"x\":1}"}"#,
                r#"{"event":"pusher:ping","data":{}}"#,
            ]
        );
        assert!(
            asked.0.lock().unwrap().is_empty(),
            "every answer forgets its question"
        );
    }

    fn connected(app: &str, client: &str) -> Pusher {
        let mut codec = Pusher::new(app, "".into(), Asked::default(), 120);
        let mut greeting = Greeting::pushed();
        greeting.connected.client = client.into();
        codec.encode(
            Item::Connected(Box::new(greeting)),
            &mut Messages::default(),
        );
        codec
    }

    #[test]
    fn a_publication_is_encoded_once_for_every_pusher_connection_of_the_node() {
        let room = channel::kind("private-room").unwrap();
        let channel = channel::internal("7", "private-room", room).unwrap();
        // A client event of socket 1.1: not back to it, to every other connection of app 7.
        let data = r#"{"event":"client-typing","data":{"who":"ann"},"except":"1.1"}"#;
        let published = Arc::new(Published::new(
            Publication {
                channel,
                offset: 1,
                epoch: "e".into(),
                data: RawValue::from_string(data.into()).unwrap().into(),
                info: ClientInfo {
                    client: "c".into(),
                    user: "u".into(),
                },
            },
            Some(16),
        ));
        let mut frames = Vec::new();
        for (app, client) in [
            ("7", "0000000100000001"),
            ("7", "0000000100000002"),
            ("7", "0000000100000003"),
            ("8", "0000000100000004"),
        ] {
            let mut out = Messages::default();
            connected(app, client).encode(Item::Publication(published.clone()), &mut out);
            frames.extend(out);
        }
        let expected = r#"{"event":"client-typing","channel":"private-room","data":{"who":"ann"}}"#;
        assert_eq!(frames.len(), 2, "sender and the other app skipped");
        for frame in &frames {
            assert_eq!(frame.as_str(), expected);
        }
        // The same bytes, not an equal copy: one encoding for the node.
        assert_eq!(frames[0].as_bytes().as_ptr(), frames[1].as_bytes().as_ptr());
        // Compressed as the channel says, like the v1 frame.
        assert!(frames[0].deflated(|_| Some("z".into())).is_some());
    }
}
