//! Client → server: a [`Request`] is an optional `id`, an `op`, and that operation's fields.
//!
//! Clients build requests from these types and serialise them; the server reads them with
//! [`decode_request`], which reads `id` and `op` first (a thin pre-pass) so that every mistake
//! gets its precise code: 100 not JSON, 101 not a command, 102 unknown op, 103 a field missing
//! or of the wrong type, 104 a bad channel name. Unknown fields are ignored, so newer clients
//! can talk to older servers.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{ChannelName, ErrorCode, IdempotencyKey, Secret, StreamPosition};

/// One client request. `D` is how `publish` data is held: the raw JSON text on the server,
/// anything serialisable in a client.
#[derive(Debug, Serialize)]
pub struct Request<D = Box<RawValue>> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub command: Command<D>,
}

/// What a client asks for, tagged by `op`.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command<D = Box<RawValue>> {
    Connect(Connect),
    Refresh(Refresh),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Publish(Publish<D>),
    History(History),
    Presence(Presence),
    PresenceStats(PresenceStats),
    /// A call to the app's backend (`--proxy-rpc`), answered with its `data`.
    Rpc(Rpc<D>),
    /// The client processed a channel's publications up to an offset (delivery receipts).
    Ack(Ack),
    /// A client-side liveness probe; replied to with `ok {}`.
    Ping,
    /// The answer to a server `{"ping":{}}`; never replied to.
    Pong,
    /// Another wire's sign-in; never on the v1 wire.
    #[serde(skip)]
    SignIn(SignIn),
}

impl<D> Command<D> {
    /// The channel the command names, if it names one.
    pub fn channel(&self) -> Option<&ChannelName> {
        match self {
            Self::Subscribe(c) => Some(&c.channel),
            Self::Unsubscribe(c) => Some(&c.channel),
            Self::Publish(c) => Some(&c.channel),
            Self::History(c) => Some(&c.channel),
            Self::Presence(c) => Some(&c.channel),
            Self::PresenceStats(c) => Some(&c.channel),
            Self::Ack(c) => Some(&c.channel),
            Self::Connect(_)
            | Self::Refresh(_)
            | Self::Rpc(_)
            | Self::Ping
            | Self::Pong
            | Self::SignIn(_) => None,
        }
    }
}

/// First command only: sets the user's name, or proves who the user is with a token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Connect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// Replaces the connection's token before it expires (same user).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refresh {
    pub token: Secret,
}

/// With `since`, the reply also recovers what was published after that position; `token` is
/// a subscription token, for channels that require one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscribe {
    pub channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Never on the v1 wire: what another wire's decoder asks for besides the subscription.
    #[serde(skip)]
    pub extras: SubscribeExtras,
}

/// What a subscribe made by another wire's decoder (Pusher's) asks besides the subscription.
/// Never read from v1 JSON, so no native client can ask for it.
#[derive(Clone, Debug, Default)]
pub struct SubscribeExtras {
    /// Be present in the channel as this user (a Pusher presence subscription's
    /// `channel_data`, already verified), whoever the connection is; the reply then lists the
    /// members.
    pub present_as: Option<Presenting>,
    /// The reply carries the channel's latest publication, or says there is none.
    pub latest: bool,
}

/// Who a connection is in one channel's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presenting {
    pub user: Arc<str>,
    pub info: Option<Arc<serde_json::Value>>,
}

/// The user a connection proved it is by another wire's sign-in (Pusher's `pusher:signin`,
/// already verified): from then on the connection acts as, and is reachable as, that user.
#[derive(Clone, Debug)]
pub struct SignIn {
    pub user: Arc<str>,
    pub info: Option<Arc<serde_json::Value>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub channel: ChannelName,
}

/// A remote procedure call handled by the app's backend: `method` names it, `data` is passed
/// through as is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rpc<D = Box<RawValue>> {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
}

/// Cumulative: every publication of `channel` up to `offset` was processed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ack {
    pub channel: ChannelName,
    pub offset: u64,
}

/// With `idempotency_key`, a retry within the server's window is answered with the first
/// publication's offset and not published again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publish<D = Box<RawValue>> {
    pub channel: ChannelName,
    pub data: D,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// Never on the v1 wire: the webhook hears of this publication once it is published
    /// (a Pusher client event's `client_event`).
    #[serde(skip)]
    pub webhook: bool,
}

/// Publications kept in the channel's history: after `since`, or the latest ones.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct History {
    pub channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Who is present in a channel, a page at a time: at most `limit` (default
/// [`Presence::DEFAULT_LIMIT`], at most [`Presence::MAX_LIMIT`]) after `cursor`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Presence {
    pub channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Presence {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;
}

/// How many connections and users are present in a channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresenceStats {
    pub channel: ChannelName,
}

/// Why a frame could not be decoded; carries the request id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// The pre-pass: the fields every request's code depends on, kept raw so that a wrong type
/// gets a precise message.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as present, so `"id":null` is a wrong id, not a missing one.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Decodes one text frame into a request.
pub fn decode_request(text: &str) -> Result<Request, DecodeError> {
    let head = decode_head(text)?;
    let id = match head.id {
        None => None,
        Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            DecodeError::new(
                None,
                ErrorCode::InvalidCommand,
                "\"id\" must be a non-negative integer",
            )
        })?),
    };
    let op: String = match head.op {
        None => {
            let message = "missing field \"op\"";
            return Err(DecodeError::new(id, ErrorCode::InvalidCommand, message));
        }
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
            DecodeError::new(id, ErrorCode::InvalidCommand, "\"op\" must be a string")
        })?,
    };
    let fields = Fields { text, id, op: &op };
    let command = match op.as_str() {
        "connect" => Command::Connect(fields.read()?),
        "refresh" => Command::Refresh(fields.read()?),
        "subscribe" => Command::Subscribe(fields.with_channel(head.channel)?),
        "unsubscribe" => Command::Unsubscribe(fields.with_channel(head.channel)?),
        "publish" => Command::Publish(fields.with_channel(head.channel)?),
        "history" => Command::History(fields.with_channel(head.channel)?),
        "presence" => Command::Presence(fields.with_channel(head.channel)?),
        "presence_stats" => Command::PresenceStats(fields.with_channel(head.channel)?),
        "rpc" => Command::Rpc(fields.read()?),
        "ack" => Command::Ack(fields.with_channel(head.channel)?),
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            let message = format!("unknown op {shown:?}");
            return Err(DecodeError::new(id, ErrorCode::UnknownOp, message));
        }
    };
    Ok(Request { id, command })
}

/// Reads `id`, `op` and `channel` raw: 100 for text that is not JSON, 101 for JSON that is not
/// an object.
fn decode_head(text: &str) -> Result<Head<'_>, DecodeError> {
    // serde would read a JSON array as a struct's fields in order; a command is an object.
    let not_a_command = "a command is a JSON object with an \"op\" field";
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => DecodeError::new(None, ErrorCode::InvalidCommand, not_a_command),
            Err(err) => DecodeError::new(
                None,
                ErrorCode::MalformedJson,
                format!("invalid JSON: {err}"),
            ),
        });
    }
    serde_json::from_str(text).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => DecodeError::new(
                None,
                ErrorCode::MalformedJson,
                format!("invalid JSON: {err}"),
            ),
            Category::Data => DecodeError::new(
                None,
                ErrorCode::InvalidCommand,
                format!("{not_a_command}: {err}"),
            ),
        }
    })
}

/// One request's text, once its `id` and `op` are known.
struct Fields<'a> {
    text: &'a str,
    id: Option<u64>,
    op: &'a str,
}

impl Fields<'_> {
    /// The operation's fields; 103 naming the field that is missing or wrong.
    fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_str(self.text).map_err(|_| {
            // Parsed again only to say where: the error path is rare, the happy one is not.
            let mut deserializer = serde_json::Deserializer::from_str(self.text);
            let message = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
                Err(err) if err.path().iter().next().is_some() => {
                    format!("{}: \"{}\": {}", self.op, err.path(), err.inner())
                }
                Err(err) => format!("{}: {}", self.op, err.inner()),
                Ok(_) => format!("{}: invalid fields", self.op),
            };
            DecodeError::new(self.id, ErrorCode::InvalidField, shorten(message))
        })
    }

    /// As [`Self::read`], for an operation on a channel: a missing or non-string `channel` is
    /// 103, a string that breaks the naming rules 104.
    fn with_channel<T: serde::de::DeserializeOwned>(
        &self,
        channel: Option<&RawValue>,
    ) -> Result<T, DecodeError> {
        let invalid = |message: String| DecodeError::new(self.id, ErrorCode::InvalidField, message);
        let raw =
            channel.ok_or_else(|| invalid(format!("{} needs the field \"channel\"", self.op)))?;
        let name: std::borrow::Cow<'_, str> = serde_json::from_str(raw.get())
            .map_err(|_| invalid("\"channel\" must be a string".into()))?;
        ChannelName::parse(&name)
            .map_err(|err| DecodeError::new(self.id, ErrorCode::InvalidChannel, err.to_string()))?;
        self.read()
    }
}

/// Longest error message sent back, in bytes: serde quotes the offending value, and a reply
/// must not grow with what the client sent.
const MAX_MESSAGE: usize = 256;

fn shorten(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}
