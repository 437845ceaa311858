//! Protocol v1: the single definition of the wire format, shared by the server, the tests and
//! the benchmark. `docs/protocol.md` is its prose twin; change both together.
//!
//! Every frame is one JSON object in a WebSocket text frame.
//!
//! * Client → server: a [`Request`], `{"id":N,"op":"...",...}`. `id` is optional; a request with
//!   an `id` gets exactly one reply carrying it, `{"id":N,"ok":{...}}` or
//!   `{"id":N,"error":{"code":C,"message":M}}`. A failed request without an id gets an
//!   `{"error":{...}}` push instead, so no failure is ever silent.
//! * Server → client pushes: `{"connected":{...}}`, `{"pub":{...}}`, `{"ping":{}}`,
//!   `{"error":{...}}`.
//!
//! Invariants: decoding never panics on any input; every error a client can cause maps to one
//! [`ErrorCode`]; a publication's push frame is produced by [`encode_publication`] once per
//! publication, never per subscriber. Pure data: no I/O lives here.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The protocol version this server speaks; reported in the `connected` push.
pub const PROTOCOL_VERSION: u32 = 1;

/// A validated channel name: `namespace:name` or plain `name`.
///
/// Allowed: 1 to [`ChannelName::MAX_LEN`] bytes of ASCII letters, digits and `_ - . : = @ /`.
/// The namespace is the part before the first `:`; it must be non-empty and use only letters,
/// digits, `_` and `-`, and the name after it must be non-empty. Cloning is cheap (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Longest accepted channel name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates `name`, explaining what is wrong when it is not a channel name.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("channel name is empty".into());
        }
        if name.len() > Self::MAX_LEN {
            return Err(format!(
                "channel name is {} bytes long; the limit is {}",
                name.len(),
                Self::MAX_LEN
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-.:=@/".contains(*c)))
        {
            return Err(format!(
                "channel name contains {bad:?}; allowed are ASCII letters, digits and _ - . : = @ /"
            ));
        }
        if let Some((namespace, rest)) = name.split_once(':') {
            if namespace.is_empty() || rest.is_empty() {
                return Err("namespace and name around ':' must both be non-empty".into());
            }
            if !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err("a namespace uses only ASCII letters, digits, _ and -".into());
            }
        }
        Ok(Self(name.into()))
    }

    /// The channel name as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace, if the name has one (`chat` for `chat:lobby`).
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(namespace, _)| namespace)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret (a token, a key): its `Debug` form never shows it, so no log line can print it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(secret: impl Into<Arc<str>>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(text))
    }
}

/// A position in a channel's stream: the last offset and the epoch of the history it belongs to.
///
/// Offsets number a channel's publications 1, 2, 3… without gaps. The epoch names one
/// continuous history; a different epoch means offsets from the old one mean nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// Who published: stamped by the server from the session, never taken from the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's unique id.
    pub client: Arc<str>,
    /// The user's name (later: the token's subject).
    pub user: Arc<str>,
}

/// One publication as brokers store and deliver it.
#[derive(Clone, Debug)]
pub struct Publication {
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: Arc<str>,
    /// Any JSON value, kept as the publisher's text so it is never re-encoded.
    pub data: Arc<RawValue>,
    pub info: ClientInfo,
}

/// A publication serialises as its wire body: `{"channel","offset","epoch","data","info"}`.
impl Serialize for Publication {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            channel: &'a str,
            offset: u64,
            epoch: &'a str,
            data: &'a RawValue,
            info: &'a ClientInfo,
        }
        Body {
            channel: self.channel.as_str(),
            offset: self.offset,
            epoch: &self.epoch,
            data: &self.data,
            info: &self.info,
        }
        .serialize(serializer)
    }
}

/// Encodes the `{"pub":{...}}` push for a publication: once per publication, shared by every
/// subscriber.
pub fn encode_publication(publication: &Publication) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        #[serde(rename = "pub")]
        publication: &'a Publication,
    }
    to_json(&Push { publication })
}

/// Error codes carried in `{"error":{"code":C,"message":M}}`. Values are a public contract.
///
/// 1xx: the request was wrong and will fail again unchanged. 5xx: the server could not do it
/// now; the same request may succeed later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    MalformedJson = 100,
    /// Valid JSON, but not a command object (not an object, a bad `id`, no `op`).
    InvalidCommand = 101,
    /// `op` names no operation of this protocol version.
    UnknownOp = 102,
    /// A field the operation needs is missing or has the wrong type.
    InvalidField = 103,
    /// The channel name breaks the naming rules.
    InvalidChannel = 104,
    /// Binary frames carry nothing in protocol v1.
    BinaryFrame = 105,
    /// `connect` came after the connection's identity was already set.
    AlreadyConnected = 106,
    /// The connection is already subscribed to this channel.
    AlreadySubscribed = 107,
    /// A per-connection limit (such as subscriptions) would be exceeded.
    LimitExceeded = 108,
    /// `history` with a `since` the history cannot serve: another epoch, or too far back.
    UnrecoverablePosition = 109,
    /// The connection may not do this: subscribe to or publish in this channel, or anything
    /// before `connect` when the server requires a token.
    PermissionDenied = 110,
    /// A token (in `connect`, `refresh` or `subscribe`) was rejected; the message says why.
    InvalidToken = 111,
    /// Too many commands or publishes per second: slow down (sustained, it closes with 4004).
    RateLimited = 112,
    /// Something failed inside the server; the request may be retried.
    Internal = 500,
    /// The broker cannot guarantee delivery right now; retry later.
    Unavailable = 503,
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

/// WebSocket close codes the server sends. 1xxx are RFC 6455's; 4000–4499 mean "reconnect
/// (with back-off) and recover"; 4500–4999 mean "do not reconnect without a change".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode;

impl CloseCode {
    /// The client closed, or the server finished a close the client started.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect with jittered back-off, to another node if any.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke RFC 6455 framing.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Refused by policy (a bad token at the handshake).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message exceeded `--max-message-size`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// An unexpected server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The client read too slowly and its outgoing queue filled: reconnect and recover.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// No frame from the client within the pong timeout after a ping: reconnect.
    pub const NO_PONG: u16 = 4001;
    /// The server saw a subscribed channel skip offsets or change epoch (a node missed
    /// publications): reconnect and subscribe with `since` to recover.
    pub const INSUFFICIENT_STATE: u16 = 4002;
    /// The connection's token expired without a `refresh`: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// The client kept exceeding its rate limits after being told: reconnect after back-off.
    pub const RATE_LIMITED: u16 = 4004;
    /// More connections than `--max-connections` (RFC 6455 "try again later"): reconnect
    /// with back-off, to another node if any.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Disconnected by the application through the server API, which allows reconnecting.
    pub const DISCONNECTED_RECONNECT: u16 = 4005;
    /// The connection subscribed to nothing and sent nothing for `--idle-timeout`; reconnect
    /// only when there is something to do.
    pub const IDLE: u16 = 4500;
    /// Disconnected by the application through the server API: do not reconnect.
    pub const DISCONNECTED: u16 = 4501;
}

/// One decoded client request.
#[derive(Debug)]
pub struct Request {
    pub id: Option<u64>,
    pub command: Command,
}

/// What a client asks for. Unknown fields are ignored so that clients can send newer fields.
#[derive(Debug)]
pub enum Command {
    /// First command only: sets the user's name, or proves who the user is with a token.
    Connect {
        name: Option<String>,
        token: Option<Secret>,
    },
    /// Replaces the connection's token before it expires (same user).
    Refresh {
        token: Secret,
    },
    /// With `since`, the reply also recovers what was published after that position;
    /// `token` is a subscription token, for channels that require one.
    Subscribe {
        channel: ChannelName,
        since: Option<StreamPosition>,
        token: Option<Secret>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    /// With `idempotency_key`, a retry within the server's window is answered with the first
    /// publication's offset and not published again.
    Publish {
        channel: ChannelName,
        data: Box<RawValue>,
        idempotency_key: Option<String>,
    },
    /// Publications kept in the channel's history: after `since`, or the latest ones.
    History {
        channel: ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    },
    /// A client-side liveness probe; replied to with `ok {}`.
    Ping,
    /// The answer to a server `{"ping":{}}`; never replied to.
    Pong,
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

/// All fields any command may carry, kept raw so that a wrong type gets a precise message.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(borrow, default, deserialize_with = "present")]
    name: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    idempotency_key: Option<&'a RawValue>,
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// An idempotency key is 1–128 ASCII letters, digits and `- _ . :` (a UUID fits); it becomes
/// part of a storage key.
pub fn valid_idempotency_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"idempotency_key\" must be 1 to {MAX_IDEMPOTENCY_KEY} ASCII letters, digits, - _ . or :"
        ))
    }
}

/// Keeps an explicit `null` as present, so `"data":null` is a value and not a missing field.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Decodes one text frame into a request.
pub fn decode_request(text: &str) -> Result<Request, DecodeError> {
    // serde would read a JSON array as a struct's fields in order; a command is an object.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => DecodeError::new(
                None,
                ErrorCode::InvalidCommand,
                "a command is a JSON object with an \"op\" field",
            ),
            Err(err) => DecodeError::new(
                None,
                ErrorCode::MalformedJson,
                format!("invalid JSON: {err}"),
            ),
        });
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|err| {
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
                format!("a command is a JSON object with an \"op\" field: {err}"),
            ),
        }
    })?;
    let id = match envelope.id {
        None => None,
        Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            DecodeError::new(
                None,
                ErrorCode::InvalidCommand,
                "\"id\" must be a non-negative integer",
            )
        })?),
    };
    let op: String = match envelope.op {
        None => {
            return Err(DecodeError::new(
                id,
                ErrorCode::InvalidCommand,
                "missing field \"op\"",
            ));
        }
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
            DecodeError::new(id, ErrorCode::InvalidCommand, "\"op\" must be a string")
        })?,
    };
    let channel = || -> Result<ChannelName, DecodeError> {
        let raw = envelope.channel.ok_or_else(|| {
            DecodeError::new(
                id,
                ErrorCode::InvalidField,
                format!("{op} needs the field \"channel\""),
            )
        })?;
        let name: String = serde_json::from_str(raw.get()).map_err(|_| {
            DecodeError::new(id, ErrorCode::InvalidField, "\"channel\" must be a string")
        })?;
        ChannelName::parse(&name)
            .map_err(|message| DecodeError::new(id, ErrorCode::InvalidChannel, message))
    };
    let optional_string =
        |field: &str, raw: Option<&RawValue>| -> Result<Option<String>, DecodeError> {
            match raw {
                None => Ok(None),
                Some(raw) if raw.get() == "null" => Ok(None),
                Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
                    DecodeError::new(
                        id,
                        ErrorCode::InvalidField,
                        format!("\"{field}\" must be a string"),
                    )
                }),
            }
        };
    let since = |raw: Option<&RawValue>| -> Result<Option<StreamPosition>, DecodeError> {
        match raw {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<StreamPosition>(raw.get())
                .map(Some)
                .map_err(|_| {
                    DecodeError::new(
                        id,
                        ErrorCode::InvalidField,
                        "\"since\" must be {\"offset\":INT,\"epoch\":STR}",
                    )
                }),
        }
    };
    let command = match op.as_str() {
        "connect" => Command::Connect {
            name: optional_string("name", envelope.name)?,
            token: optional_string("token", envelope.token)?.map(Secret::new),
        },
        "refresh" => Command::Refresh {
            token: optional_string("token", envelope.token)?
                .map(Secret::new)
                .ok_or_else(|| {
                    DecodeError::new(
                        id,
                        ErrorCode::InvalidField,
                        "refresh needs the field \"token\"",
                    )
                })?,
        },
        "subscribe" => Command::Subscribe {
            channel: channel()?,
            since: since(envelope.since)?,
            token: optional_string("token", envelope.token)?.map(Secret::new),
        },
        "history" => Command::History {
            channel: channel()?,
            since: since(envelope.since)?,
            limit: match envelope.limit {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) => Some(serde_json::from_str::<usize>(raw.get()).map_err(|_| {
                    DecodeError::new(
                        id,
                        ErrorCode::InvalidField,
                        "\"limit\" must be a non-negative integer",
                    )
                })?),
            },
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel()?,
        },
        "publish" => {
            let channel = channel()?;
            let data = envelope.data.ok_or_else(|| {
                DecodeError::new(
                    id,
                    ErrorCode::InvalidField,
                    "publish needs the field \"data\"",
                )
            })?;
            let idempotency_key = optional_string("idempotency_key", envelope.idempotency_key)?;
            if let Some(key) = &idempotency_key {
                valid_idempotency_key(key)
                    .map_err(|message| DecodeError::new(id, ErrorCode::InvalidField, message))?;
            }
            Command::Publish {
                channel,
                data,
                idempotency_key,
            }
        }
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(DecodeError::new(
                id,
                ErrorCode::UnknownOp,
                format!("unknown op {shown:?}"),
            ));
        }
    };
    Ok(Request { id, command })
}

/// The body of an error reply or push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

/// `ok` body of a `subscribe` reply: the channel's current position, and with `since` the
/// outcome of recovery. `P` is [`Publication`] on the server and [`PubPush`] in clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeOk<P = PubPush> {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// Only with `since`: whether every publication after it is in `publications`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Only with `since`: the publications after it, in offset order (empty if not recovered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications: Option<Vec<P>>,
    /// Only when `recovered` is false: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `ok` body of a `history` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryOk<P = PubPush> {
    pub publications: Vec<P>,
    pub offset: u64,
    pub epoch: String,
}

/// `ok` body of a `publish` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOk {
    pub offset: u64,
}

/// The identity and heartbeat settings of a connection: the `connect` reply's body and the
/// `{"connected":{...}}` push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    pub client: String,
    pub user: String,
    pub version: u32,
    /// The server sends `{"ping":{}}` this often; the client answers `{"op":"pong"}`.
    pub ping_interval_ms: u64,
    /// How long the server waits for any frame after a ping before closing with 4001.
    pub pong_timeout_ms: u64,
    /// Whether `user` was proven by a token (false: an anonymous, self-chosen name).
    #[serde(default)]
    pub authenticated: bool,
    /// Milliseconds until the token expires: send `refresh` before then, or the connection
    /// closes with 4003. Absent when the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// `ok` body of a `refresh` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// Encodes `{"id":N,"ok":BODY}`.
pub fn encode_ok<T: Serialize>(id: u64, body: &T) -> String {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        id: u64,
        ok: &'a T,
    }
    to_json(&Ok { id, ok: body })
}

/// Encodes an error reply (with an id) or an error push (without).
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        error: Body<'a>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        code: ErrorCode,
        message: &'a str,
    }
    to_json(&Error {
        id,
        error: Body { code, message },
    })
}

/// Encodes the `{"connected":{...}}` push.
pub fn encode_connected(connected: &Connected) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        connected: &'a Connected,
    }
    to_json(&Push { connected })
}

/// The body of a `{"subscribed":{...}}` push: the server subscribed this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedPush {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
}

/// The body of an `{"unsubscribed":{...}}` push: the server unsubscribed this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribedPush {
    pub channel: String,
}

/// Encodes `{"subscribed":{...}}`.
pub fn encode_subscribed(push: &SubscribedPush) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        subscribed: &'a SubscribedPush,
    }
    to_json(&Push { subscribed: push })
}

/// Encodes `{"unsubscribed":{...}}`.
pub fn encode_unsubscribed(push: &UnsubscribedPush) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        unsubscribed: &'a UnsubscribedPush,
    }
    to_json(&Push { unsubscribed: push })
}

/// The server's heartbeat push.
pub const PING_FRAME: &str = r#"{"ping":{}}"#;

/// An empty `ok` body, `{}`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Empty {}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs into a String cannot fail: no maps with non-string keys,
    // no fallible Serialize impls.
    serde_json::to_string(value).unwrap_or_else(|_| String::from(r#"{"error":{"code":500}}"#))
}

/// A frame as a client sees it: the typed reading of every server frame, for clients written
/// in Rust (the tests and the benchmark).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Reply {
        id: u64,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Push(Push),
}

/// The `ok` or `error` half of a reply.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok(serde_json::Value),
    Error(ErrorBody),
}

/// A push: a frame without an id.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Push {
    Connected(Connected),
    Pub(PubPush),
    Subscribed(SubscribedPush),
    Unsubscribed(UnsubscribedPush),
    Ping {},
    Error(ErrorBody),
}

/// The body of a `{"pub":{...}}` push, as a client reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PubPush {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    pub data: serde_json::Value,
    pub info: ClientInfo,
}

impl ServerFrame {
    /// Parses one server frame.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_documented_rules() {
        for ok in [
            "lobby",
            "chat:lobby",
            "user:42",
            "a:b:c",
            "doc:x-1.v2@team/y=z",
        ] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":x",
            "x:",
            "a b",
            "ch*",
            "na.me:x",
            "é",
            &"x".repeat(256),
        ] {
            assert!(ChannelName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ChannelName::parse("chat:lobby").unwrap().namespace(),
            Some("chat")
        );
        assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), None);
    }

    fn code_of(text: &str) -> (Option<u64>, ErrorCode) {
        let err = decode_request(text).expect_err(text);
        (err.id, err.code)
    }

    #[test]
    fn bad_frames_get_precise_codes() {
        assert_eq!(code_of("{"), (None, ErrorCode::MalformedJson));
        assert_eq!(code_of("nope"), (None, ErrorCode::MalformedJson));
        assert_eq!(code_of("[1]"), (None, ErrorCode::InvalidCommand));
        assert_eq!(
            code_of(r#"{"id":-1,"op":"ping"}"#),
            (None, ErrorCode::InvalidCommand)
        );
        assert_eq!(code_of(r#"{"id":3}"#), (Some(3), ErrorCode::InvalidCommand));
        assert_eq!(
            code_of(r#"{"id":3,"op":7}"#),
            (Some(3), ErrorCode::InvalidCommand)
        );
        assert_eq!(
            code_of(r#"{"id":4,"op":"fly"}"#),
            (Some(4), ErrorCode::UnknownOp)
        );
        assert_eq!(
            code_of(r#"{"id":5,"op":"subscribe"}"#),
            (Some(5), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":5,"op":"subscribe","channel":1}"#),
            (Some(5), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":6,"op":"publish","channel":"a"}"#),
            (Some(6), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":7,"op":"publish","channel":"a b","data":1}"#),
            (Some(7), ErrorCode::InvalidChannel)
        );
        assert_eq!(
            code_of(r#"{"id":8,"op":"connect","name":5}"#),
            (Some(8), ErrorCode::InvalidField)
        );
    }

    #[test]
    fn publish_keeps_data_verbatim_including_null() {
        let request = decode_request(r#"{"id":1,"op":"publish","channel":"c","data":null}"#)
            .expect("valid publish");
        match request.command {
            Command::Publish { data, .. } => assert_eq!(data.get(), "null"),
            other => panic!("decoded as {other:?}"),
        }
        let request =
            decode_request(r#"{"op":"publish","channel":"c","data":{"text":"hi","n":[1,2]}}"#)
                .expect("valid publish");
        assert_eq!(request.id, None);
        match request.command {
            Command::Publish { data, .. } => assert_eq!(data.get(), r#"{"text":"hi","n":[1,2]}"#),
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn replies_and_pushes_round_trip_through_server_frame() {
        let publication = Publication {
            channel: ChannelName::parse("chat:lobby").unwrap(),
            offset: 7,
            epoch: "ep".into(),
            data: Arc::from(RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap()),
            info: ClientInfo {
                client: "c1".into(),
                user: "alice".into(),
            },
        };
        let frame = ServerFrame::parse(&encode_publication(&publication)).unwrap();
        match frame {
            ServerFrame::Push(Push::Pub(push)) => {
                assert_eq!(push.offset, 7);
                assert_eq!(push.channel, "chat:lobby");
                assert_eq!(push.data, serde_json::json!({"text":"hi"}));
                assert_eq!(&*push.info.user, "alice");
            }
            other => panic!("parsed as {other:?}"),
        }
        let reply = ServerFrame::parse(&encode_ok(3, &PublishOk { offset: 9 })).unwrap();
        assert_eq!(
            reply,
            ServerFrame::Reply {
                id: 3,
                outcome: Outcome::Ok(serde_json::json!({"offset":9}))
            }
        );
        let error = ServerFrame::parse(&encode_error(None, ErrorCode::UnknownOp, "x")).unwrap();
        assert_eq!(
            error,
            ServerFrame::Push(Push::Error(ErrorBody {
                code: 102,
                message: "x".into()
            }))
        );
        assert_eq!(
            ServerFrame::parse(PING_FRAME).unwrap(),
            ServerFrame::Push(Push::Ping {})
        );
    }
}
