//! A Pusher client's WebSocket (`/app/KEY`): the same socket as `/ws`, read through Pusher's
//! frames ([`crate::pusher::frames`]) into the session's typed commands, and written with the
//! Pusher codec. The session core does the rest, as for any native client.
//!
//! Pusher's authorization is the wire's own: a private or presence subscription, and a
//! sign-in, carry an HMAC of the connection's socket id made by the app's backend with the
//! app's secret. It is checked here, where the socket id and the app are known, before the
//! session sees the command; what the signature proves (a presence member, a signed-in user)
//! goes to the session as a typed part of the command that no native client can set.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::limits::{Allowance, Rate};
use crate::protocol::{
    ChannelName, Command, ErrorCode, Presenting, Publish, Request, SignIn, Subscribe,
    SubscribeExtras, Unsubscribe,
};
use crate::pusher::App;
use crate::pusher::channel::{self, Access, Kind};
use crate::pusher::codec::{Asked, Question};
use crate::pusher::frames::{self, ClientFrame};
use crate::pusher::sign;
use crate::session::{Inbound, Incoming, Invalid, ReadError};
use crate::transport::ws::Reader;

/// Client events one connection may send, as Pusher documents: 10 a second.
pub const CLIENT_EVENTS: Rate = Rate {
    per_second: 10,
    burst: 10,
};

/// Channels one connection may hold an authorization for at once (each entry remembers the
/// presence user id that its client events carry): a few dozen kilobytes at most, however many
/// signatures the app's auth endpoint hands one client.
const MAX_AUTHORIZED: usize = 128;

/// Longest presence `user_id`, as Pusher limits it.
const MAX_USER_ID: usize = 128;

/// Longest `channel_data` or `user_data`: a member's info is copied into every member list.
const MAX_MEMBER_DATA: usize = 2048;

/// The reading half of a Pusher socket: the socket, and what its frames mean.
#[derive(Debug)]
pub(crate) struct PusherReader {
    inner: Reader,
    wire: Translator,
}

impl PusherReader {
    pub(crate) fn new(inner: Reader, app: Arc<App>, client: Arc<str>, asked: Asked) -> Self {
        Self {
            inner,
            wire: Translator::new(app, client, asked),
        }
    }
}

/// A Pusher connection's frames turned into the session's commands, with what that takes: the
/// signatures checked, the channels it was authorized for, its client-event allowance. Apart
/// from the socket so that it can be driven (tested, fuzzed) frame by frame.
#[derive(Debug)]
pub(crate) struct Translator {
    app: Arc<App>,
    /// The connection's client id, its socket id made from it where a signature needs it.
    client: Arc<str>,
    asked: Asked,
    /// Ids of the commands handed to the session (the wire has none).
    next_id: u64,
    /// Made by the first signature that holds: most connections never sign anything.
    signed: Option<Box<Signed>>,
}

/// What a connection that signed something keeps.
#[derive(Debug)]
struct Signed {
    client_events: Allowance,
    /// Signed channels this connection was authorized for, with its presence user id there.
    authorized: HashMap<String, Option<Arc<str>>>,
    /// The user id of a sign-in, once verified.
    signed_in: Option<Arc<str>>,
}

/// A presence subscription's `channel_data`.
#[derive(Deserialize)]
struct ChannelData {
    user_id: UserId,
    #[serde(default)]
    user_info: Option<serde_json::Value>,
}

/// A sign-in's `user_data`.
#[derive(Deserialize)]
struct UserData {
    id: UserId,
}

/// Pusher's SDKs send user ids as strings; some apps give numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum UserId {
    Text(String),
    Number(serde_json::Number),
}

impl UserId {
    fn checked(self) -> Result<Arc<str>, String> {
        let id = match self {
            Self::Text(text) => text,
            Self::Number(number) => number.to_string(),
        };
        if id.is_empty() || id.chars().count() > MAX_USER_ID {
            return Err(format!("user id must be 1 to {MAX_USER_ID} characters"));
        }
        Ok(id.into())
    }
}

/// A client event as it is stored and delivered: the codec writes it back in Pusher's words,
/// and skips it on the connection named by `except`.
#[derive(serde::Serialize)]
struct ClientEvent<'a> {
    event: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    except: &'a str,
}

impl Translator {
    pub(crate) fn new(app: Arc<App>, client: Arc<str>, asked: Asked) -> Self {
        Self {
            app,
            client,
            asked,
            next_id: 0,
            signed: None,
        }
    }

    fn ask(&mut self, question: Question, command: Command) -> Inbound {
        self.next_id += 1;
        self.asked.note(self.next_id, question);
        Inbound::Command(Request {
            id: Some(self.next_id),
            command,
        })
    }

    fn refuse(&mut self, question: Question, code: ErrorCode, message: String) -> Inbound {
        self.next_id += 1;
        self.asked.note(self.next_id, question);
        let id = Some(self.next_id);
        Inbound::Invalid(Box::new(Invalid { id, code, message }))
    }

    fn socket_id(&self) -> String {
        crate::pusher::codec::socket_id(&self.client)
    }

    /// What a signature that held is kept in, made by the first.
    fn signed(&mut self) -> &mut Signed {
        self.signed.get_or_insert_with(|| {
            Box::new(Signed {
                client_events: Allowance::new(CLIENT_EVENTS, Instant::now()),
                authorized: HashMap::new(),
                signed_in: None,
            })
        })
    }

    fn internal(&self, name: &str, kind: Kind) -> Result<ChannelName, String> {
        channel::internal(&self.app.id, name, kind).ok_or_else(|| format!("{name}: too long"))
    }

    /// One text frame as the session's input.
    pub(crate) fn translate(&mut self, text: &str) -> Inbound {
        let frame = match frames::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                let code = ErrorCode::InvalidCommand;
                return self.refuse(Question::Quiet, code, err.to_string());
            }
        };
        match frame {
            ClientFrame::Ping => self.ask(Question::Ping, Command::Ping),
            ClientFrame::Pong => Inbound::Command(Request {
                id: None,
                command: Command::Pong,
            }),
            ClientFrame::Subscribe {
                channel: name,
                auth,
                channel_data,
            } => {
                let question = Question::Subscribe(name.clone());
                match self.subscribe(&name, auth.as_deref(), channel_data.as_deref()) {
                    Ok(subscribe) => self.ask(question, Command::Subscribe(subscribe)),
                    Err((code, message)) => self.refuse(question, code, message),
                }
            }
            ClientFrame::Unsubscribe { channel: name } => {
                if let Some(signed) = &mut self.signed {
                    signed.authorized.remove(&name);
                }
                let internal = channel::kind(&name)
                    .map_err(|err| err.to_string())
                    .and_then(|kind| self.internal(&name, kind));
                match internal {
                    Ok(channel) => self.ask(
                        Question::Quiet,
                        Command::Unsubscribe(Unsubscribe { channel }),
                    ),
                    Err(message) => {
                        self.refuse(Question::Quiet, ErrorCode::InvalidChannel, message)
                    }
                }
            }
            ClientFrame::Signin { auth, user_data } => match self.sign_in(&auth, &user_data) {
                Ok(sign_in) => self.ask(Question::SignIn(user_data), Command::SignIn(sign_in)),
                Err(message) => self.refuse(
                    Question::SignIn(user_data),
                    ErrorCode::InvalidToken,
                    message,
                ),
            },
            ClientFrame::ClientEvent {
                event,
                channel: name,
                data,
            } => match self.client_event(&event, &name, &data) {
                Ok(publish) => self.ask(Question::Quiet, Command::Publish(publish)),
                Err((code, message)) => self.refuse(Question::Quiet, code, message),
            },
        }
    }

    /// A `pusher:subscribe`, its signature checked for the channels that need one.
    fn subscribe(
        &mut self,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<Subscribe, (ErrorCode, String)> {
        let kind =
            channel::kind(name).map_err(|err| (ErrorCode::InvalidChannel, err.to_string()))?;
        let denied = |message: String| (ErrorCode::PermissionDenied, message);
        let mut extras = SubscribeExtras {
            latest: kind.cache,
            ..SubscribeExtras::default()
        };
        match kind.access {
            Access::Public => {}
            Access::ServerToUser => {
                let own = self
                    .signed
                    .as_ref()
                    .and_then(|signed| signed.signed_in.as_deref())
                    .is_some_and(|user| name == format!("#server-to-user-{user}"));
                if !own {
                    return Err(denied(format!("{name}: sign in as that user first")));
                }
            }
            Access::Private | Access::Encrypted | Access::Presence => {
                let data = if kind.access == Access::Presence {
                    let Some(data) = channel_data else {
                        return Err(denied(format!(
                            "{name}: a presence channel needs channel_data"
                        )));
                    };
                    Some(data)
                } else {
                    None
                };
                let Some(auth) = auth else {
                    return Err(denied(format!("{name}: a signed auth is required")));
                };
                let socket_id = self.socket_id();
                let message = sign::channel_auth_message(&socket_id, name, data);
                if !sign::check_auth(&self.app.key, &self.app.secret, &message, auth) {
                    return Err(denied(format!(
                        "{name}: invalid signature for socket {socket_id}"
                    )));
                }
                let user = match data {
                    Some(data) => {
                        let (user, info) = member(data).map_err(denied)?;
                        extras.present_as = Some(Presenting {
                            user: user.clone(),
                            info,
                        });
                        Some(user)
                    }
                    None => None,
                };
                let authorized = &mut self.signed().authorized;
                if authorized.len() >= MAX_AUTHORIZED && !authorized.contains_key(name) {
                    let message = format!("at most {MAX_AUTHORIZED} signed channels at once");
                    return Err((ErrorCode::LimitExceeded, message));
                }
                authorized.insert(name.to_owned(), user);
            }
        }
        Ok(Subscribe {
            channel: self
                .internal(name, kind)
                .map_err(|m| (ErrorCode::InvalidChannel, m))?,
            since: None,
            token: None,
            extras,
        })
    }

    /// A `pusher:signin`, its signature checked.
    fn sign_in(&mut self, auth: &str, user_data: &str) -> Result<SignIn, String> {
        if self
            .signed
            .as_ref()
            .is_some_and(|signed| signed.signed_in.is_some())
        {
            return Err("this connection is signed in already".into());
        }
        let socket_id = self.socket_id();
        let message = sign::signin_message(&socket_id, user_data);
        if !sign::check_auth(&self.app.key, &self.app.secret, &message, auth) {
            return Err(format!("invalid signature for socket {socket_id}"));
        }
        if user_data.len() > MAX_MEMBER_DATA {
            return Err(format!("user_data is over {MAX_MEMBER_DATA} bytes"));
        }
        // Read once: the id is checked, the whole object is the user's info.
        let info: serde_json::Value = serde_json::from_str(user_data).unwrap_or_default();
        let parsed = UserData::deserialize(&info)
            .map_err(|_| "user_data must be a JSON object with an \"id\"".to_owned())?;
        let id = parsed.id.checked()?;
        let info = Some(Arc::new(info));
        self.signed().signed_in = Some(id.clone());
        Ok(SignIn {
            // A user of this app, whoever else has the same id elsewhere.
            user: format!("pusher:{}:{id}", self.app.id).into(),
            info,
        })
    }

    /// A `client-*` event: on a signed channel this connection was authorized for, within
    /// the rate Pusher documents.
    fn client_event(
        &mut self,
        event: &str,
        name: &str,
        data: &str,
    ) -> Result<Publish, (ErrorCode, String)> {
        let denied = |message: String| (ErrorCode::PermissionDenied, message);
        let kind =
            channel::kind(name).map_err(|err| (ErrorCode::InvalidChannel, err.to_string()))?;
        if !kind.is_signed() {
            return Err(denied(format!(
                "{event}: client events go to private and presence channels only"
            )));
        }
        let socket_id = self.socket_id();
        let Some(signed) = &mut self.signed else {
            return Err(denied(format!("{event}: not subscribed to {name}")));
        };
        let Some(user) = signed.authorized.get(name) else {
            return Err(denied(format!("{event}: not subscribed to {name}")));
        };
        if !signed.client_events.spend(CLIENT_EVENTS, Instant::now()) {
            let message = format!(
                "{event}: over {} client events a second",
                CLIENT_EVENTS.per_second
            );
            return Err((ErrorCode::RateLimited, message));
        }
        let raw = RawValue::from_string(data.to_owned())
            .map_err(|_| (ErrorCode::InvalidCommand, "data is not JSON".to_owned()))?;
        let stored = ClientEvent {
            event,
            data: &raw,
            user_id: user.as_deref(),
            except: &socket_id,
        };
        let stored = serde_json::to_string(&stored).unwrap_or_default();
        let data = RawValue::from_string(stored)
            .map_err(|_| (ErrorCode::InvalidCommand, "data is not JSON".to_owned()))?;
        Ok(Publish {
            channel: self
                .internal(name, kind)
                .map_err(|m| (ErrorCode::InvalidChannel, m))?,
            data,
            idempotency_key: None,
            webhook: true,
        })
    }
}

/// A presence member from its `channel_data`.
fn member(data: &str) -> Result<(Arc<str>, Option<Arc<serde_json::Value>>), String> {
    if data.len() > MAX_MEMBER_DATA {
        return Err(format!("channel_data is over {MAX_MEMBER_DATA} bytes"));
    }
    let parsed: ChannelData = serde_json::from_str(data)
        .map_err(|_| "channel_data must be a JSON object with a \"user_id\"".to_owned())?;
    Ok((parsed.user_id.checked()?, parsed.user_info.map(Arc::new)))
}

impl Incoming for PusherReader {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        let inbound = self.inner.next().await?;
        Some(inbound.map(|inbound| match inbound {
            Inbound::Text(text) => self.wire.translate(&text),
            other => other,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key";

    fn translator() -> Translator {
        let app = Arc::new(App {
            id: "7".into(),
            key: KEY.into(),
            secret: sign::Secret::new("secret"),
        });
        Translator::new(app, "0000000100000002".into(), Asked::default())
    }

    fn auth(message: &str) -> String {
        format!("{KEY}:{}", sign::Secret::new("secret").sign(message))
    }

    /// `pusher:subscribe` to `channel`, signed for socket 1.2 (with `channel_data` if given).
    fn subscribe(channel: &str, channel_data: Option<&str>) -> String {
        let auth = auth(&sign::channel_auth_message("1.2", channel, channel_data));
        let mut data = serde_json::json!({"channel": channel, "auth": auth});
        if let Some(channel_data) = channel_data {
            data["channel_data"] = channel_data.into();
        }
        serde_json::json!({"event": "pusher:subscribe", "data": data}).to_string()
    }

    fn refused(inbound: Inbound) -> Option<(ErrorCode, String)> {
        match inbound {
            Inbound::Invalid(invalid) => Some((invalid.code, invalid.message)),
            _ => None,
        }
    }

    #[test]
    fn a_connection_holds_at_most_128_signed_channels() {
        let mut wire = translator();
        for n in 0..MAX_AUTHORIZED {
            let inbound = wire.translate(&subscribe(&format!("private-{n}"), None));
            assert!(refused(inbound).is_none(), "channel {n}");
        }
        let (code, message) =
            refused(wire.translate(&subscribe("private-one-more", None))).expect("refused");
        assert_eq!(code, ErrorCode::LimitExceeded);
        assert!(message.contains("128"), "{message}");
        // Signing again for a channel it holds is not one more; leaving frees a place.
        assert!(refused(wire.translate(&subscribe("private-5", None))).is_none());
        let leave = r#"{"event":"pusher:unsubscribe","data":{"channel":"private-5"}}"#;
        assert!(refused(wire.translate(leave)).is_none());
        assert!(refused(wire.translate(&subscribe("private-one-more", None))).is_none());
    }

    #[test]
    fn member_data_and_user_ids_are_bounded() {
        let mut wire = translator();
        let at_limit = format!(
            r#"{{"user_id":"u","user_info":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_MEMBER_DATA - 36)
        );
        assert_eq!(at_limit.len(), MAX_MEMBER_DATA);
        let channel = "presence-room";
        assert!(refused(wire.translate(&subscribe(channel, Some(&at_limit)))).is_none());

        let over = at_limit.replacen('a', "aa", 1);
        let (_, message) =
            refused(wire.translate(&subscribe(channel, Some(&over)))).expect("refused");
        assert!(message.contains("2048 bytes"), "{message}");

        let long_id = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(MAX_USER_ID + 1));
        let (_, message) =
            refused(wire.translate(&subscribe(channel, Some(&long_id)))).expect("refused");
        assert!(message.contains("1 to 128 characters"), "{message}");

        let user_data = format!(r#"{{"id":"{}"}}"#, "u".repeat(MAX_MEMBER_DATA));
        let signin = serde_json::json!({"event": "pusher:signin", "data": {
            "auth": auth(&sign::signin_message("1.2", &user_data)), "user_data": user_data}});
        let (_, message) = refused(wire.translate(&signin.to_string())).expect("refused");
        assert!(message.contains("2048 bytes"), "{message}");
    }

    // The clock stands still: the eleventh event comes within the same second.
    #[tokio::test(start_paused = true)]
    async fn client_events_need_a_signed_channel_of_this_connection_and_keep_to_the_rate() {
        let mut wire = translator();
        let event = |channel: &str| {
            serde_json::json!({"event": "client-typing", "channel": channel, "data": {}})
                .to_string()
        };
        let (code, _) = refused(wire.translate(&event("news"))).expect("public");
        assert_eq!(code, ErrorCode::PermissionDenied);
        let (_, message) = refused(wire.translate(&event("private-room"))).expect("not held");
        assert!(message.contains("not subscribed"), "{message}");
        // A forged signature authorizes nothing.
        let forged = subscribe("private-room", None).replace(KEY, "other");
        assert!(refused(wire.translate(&forged)).is_some());
        assert!(refused(wire.translate(&event("private-room"))).is_some());

        assert!(refused(wire.translate(&subscribe("private-room", None))).is_none());
        for n in 0..CLIENT_EVENTS.burst {
            let inbound = wire.translate(&event("private-room"));
            assert!(
                matches!(
                    &inbound,
                    Inbound::Command(Request {
                        command: Command::Publish(_),
                        ..
                    })
                ),
                "event {n}: {inbound:?}"
            );
        }
        let (code, _) = refused(wire.translate(&event("private-room"))).expect("over the rate");
        assert_eq!(code, ErrorCode::RateLimited);
    }
}
