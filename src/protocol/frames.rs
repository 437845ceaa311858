//! Server → client frames: replies to requests and pushes. The server encodes them with
//! [`encode`]; clients written in Rust (the tests, `tidings-bench`) read any frame as a
//! [`ServerFrame`], or a push alone as a [`Push`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ChannelName, ErrorCode, Member, Publication};

/// The reply to a request that carried an `id`: `{"id":N,"ok":BODY}` or
/// `{"id":N,"error":{...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply<T = serde_json::Value> {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome<T>,
}

/// The `ok` or `error` half of a reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome<T = serde_json::Value> {
    Ok(T),
    Error(ErrorBody),
}

/// The body of an error reply or push. `code` is an [`ErrorCode`]'s number; clients keep it
/// a number so that codes added later still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_u16(),
            message: message.into(),
        }
    }
}

/// A push: a frame without an id. `P` is how a `pub` body is held: a [`Publication`] with its
/// data as any JSON value by default, as the raw text on the server, or a
/// [`PublicationRef`](super::PublicationRef) for a client that reads many and keeps little.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Push<P = Publication<serde_json::Value>> {
    /// The connection's identity and heartbeat settings: the first frame of a session.
    Connected(Connected),
    Pub(P),
    /// The server subscribed this connection (server API).
    Subscribed(SubscribedPush),
    /// The server unsubscribed this connection (server API).
    Unsubscribed(UnsubscribedPush),
    /// A connection became present in a subscribed channel (or, in a namespace with
    /// `join-leave=user`, a user's first connection did).
    Join(PresenceChange),
    /// A connection left a subscribed channel (or a user's last one did).
    Leave(PresenceChange),
    /// In a channel past its namespace's `join-leave-limit`: the joins and leaves of one
    /// interval, netted per client (or user).
    #[serde(rename = "presence_batch")]
    PresenceBatch(PresenceBatch),
    /// The server's heartbeat: answer `{"op":"pong"}`.
    Ping {},
    /// A request without an id failed.
    Error(ErrorBody),
}

/// Any frame a client receives.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame<P = Publication<serde_json::Value>> {
    Reply(Reply),
    Push(Push<P>),
}

impl ServerFrame {
    /// Parses one server frame.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
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

/// `ok` body of a `subscribe` reply: the channel's current position, and with `since` the
/// outcome of recovery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeOk<D = serde_json::Value> {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// Only with `since`: whether every publication after it is in `publications`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Only with `since`: the publications after it, in offset order (empty if not recovered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications: Option<Vec<Publication<D>>>,
    /// Only when `recovered` is false: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The channel's publications wait for an `ack` (delivery receipts); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipts: bool,
}

/// `ok` body of a `history` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryOk<D = serde_json::Value> {
    pub publications: Vec<Publication<D>>,
    pub offset: u64,
    pub epoch: String,
}

/// `ok` body of a `publish` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOk {
    pub offset: u64,
}

/// `ok` body of an `rpc` reply: what the backend answered.
#[derive(Debug, Serialize, Deserialize)]
pub struct RpcOk<D = Box<RawValue>> {
    pub data: D,
}

/// `ok` body of a `refresh` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// The body of a `{"subscribed":{...}}` push: the server subscribed this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedPush {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// As in the `subscribe` reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipts: bool,
}

/// The body of an `{"unsubscribed":{...}}` push: the server unsubscribed this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribedPush {
    pub channel: String,
}

/// The body of a `join` or `leave` push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub channel: ChannelName,
    pub info: Member,
}

/// The body of a `presence_batch` push: who came and who went during one interval — at most
/// [`PresenceBatch::MAX_MEMBERS`] of them; `more` counts the changes left out (ask `presence`
/// for the whole list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceBatch {
    pub channel: ChannelName,
    pub joined: Vec<Member>,
    pub left: Vec<Member>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: u64,
}

impl PresenceBatch {
    /// Members one batch lists at most: a push to every member of a big room must stay small
    /// (a connection's write buffer keeps the size of the largest frame it sent).
    pub const MAX_MEMBERS: usize = 100;
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `ok` body of a `presence` reply. `cursor` is `null` on the last page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceOk {
    pub clients: Vec<Member>,
    pub cursor: Option<String>,
}

/// `ok` body of a `presence_stats` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsOk {
    pub clients: u64,
    pub users: u64,
}

/// An empty `ok` body, `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The server's heartbeat push, pre-encoded.
pub const PING_FRAME: &str = r#"{"ping":{}}"#;

/// Encodes any frame.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // These types serialise into a String without fail: no maps with non-string keys, no
    // fallible Serialize impls. The fallback keeps even the impossible case on the wire.
    serde_json::to_string(frame).unwrap_or_else(|_| String::from(r#"{"error":{"code":500}}"#))
}

/// Encodes `{"id":N,"ok":BODY}`.
pub fn encode_ok<T: Serialize>(id: u64, body: &T) -> String {
    encode(&Reply {
        id,
        outcome: Outcome::Ok(body),
    })
}

/// Encodes an error reply (with an id) or an error push (without).
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    encode_error_body(id, ErrorBody::new(code, message))
}

/// [`encode_error`] with any code: the app's own (400–1999) from its backend.
pub fn encode_error_body(id: Option<u64>, body: ErrorBody) -> String {
    match id {
        Some(id) => encode(&Reply::<()> {
            id,
            outcome: Outcome::Error(body),
        }),
        None => encode(&Push::<()>::Error(body)),
    }
}
