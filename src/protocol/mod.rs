//! Protocol v1: the single definition of the wire format, used by the server, the tests and
//! `tidings-bench`. `docs/protocol.md` is its prose twin; change both together.
//!
//! Every frame is one JSON object in a WebSocket text frame.
//!
//! * Client → server: a [`Request`], `{"id":N,"op":"...",...}`, decoded by [`decode_request`].
//!   `id` is optional; a request with an `id` gets exactly one [`Reply`] carrying it,
//!   `{"id":N,"ok":{...}}` or `{"id":N,"error":{"code":C,"message":M}}`. A failed request
//!   without an id gets an `{"error":{...}}` push instead, so no failure is ever silent.
//! * Server → client: replies and [`Push`]es (`connected`, `pub`, `subscribed`,
//!   `unsubscribed`, `ping`, `error`). A client reads any frame as a [`ServerFrame`].
//!
//! Invariants: decoding never panics on any input; every error a client can cause maps to one
//! [`ErrorCode`]; every close the server decides is a [`CloseCode`] that says whether to
//! reconnect; a publication's push frame is encoded once per publication, never per
//! subscriber. Pure data: no I/O lives here.
//!
//! The server's side of the wire is a seam: a session speaks in typed [`Item`]s, and a
//! [`Codec`] turns them into bytes — [`V1`] for WebSocket messages, [`Ndjson`] and [`Sse`] for
//! HTTP streams (see [`outgoing`](Item) for the contract a new codec keeps).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod codes;
mod frames;
mod outgoing;
mod request;
mod sse;
mod v1;

pub use codes::{AppCode, CloseCode, ErrorCode};
pub use frames::{
    Connected, Empty, ErrorBody, HistoryOk, Outcome, PING_FRAME, PresenceBatch, PresenceChange,
    PresenceOk, PresenceStatsOk, PublishOk, Push, Refreshed, Reply, RpcOk, ServerFrame,
    SubscribeOk, SubscribedPush, UnsubscribedPush, encode, encode_error, encode_error_body,
    encode_ok,
};
pub use outgoing::{
    ChannelEvent, Codec, Greeting, Item, Membership, Published, Recovered, Refused, Subscription,
    SubscriptionExtras,
};
pub use request::{
    Ack, Command, Connect, DecodeError, History, Presence, PresenceStats, Presenting, Publish,
    Refresh, Request, Rpc, SignIn, Subscribe, SubscribeExtras, Unsubscribe, decode_request,
};
pub use sse::{Positions, Sse};
pub use v1::{Ndjson, V1};

/// The protocol version this server speaks; reported in the `connected` push.
pub const PROTOCOL_VERSION: u32 = 1;

/// A validated channel name: `namespace:name` or plain `name`.
///
/// Allowed: 1 to [`ChannelName::MAX_LEN`] bytes of ASCII letters, digits and `_ - . : = @ /`.
/// The namespace is the part before the first `:`; it must be non-empty and use only letters,
/// digits, `_` and `-`, and the name after it must be non-empty. Cloning is cheap (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is {max}", max = ChannelName::MAX_LEN)]
    TooLong(usize),
    #[error("channel name contains {0:?}; allowed are ASCII letters, digits and _ - . : = @ /")]
    Character(char),
    #[error("namespace and name around ':' must both be non-empty")]
    EmptyPart,
    #[error("a namespace uses only ASCII letters, digits, _ and -")]
    Namespace,
}

impl ChannelName {
    /// Longest accepted channel name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates `name`, saying what is wrong when it is not a channel name.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(ChannelNameError::TooLong(name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-.:=@/".contains(*c)))
        {
            return Err(ChannelNameError::Character(bad));
        }
        if let Some((namespace, rest)) = name.split_once(':') {
            if namespace.is_empty() || rest.is_empty() {
                return Err(ChannelNameError::EmptyPart);
            }
            if !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ChannelNameError::Namespace);
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

impl PartialEq<str> for ChannelName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for ChannelName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// An idempotency key: 1–128 ASCII letters, digits and `- _ . :` (a UUID fits). It becomes part
/// of a storage key, hence the narrow alphabet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

/// Why a string is not an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"idempotency_key\" must be 1 to {max} ASCII letters, digits, - _ . or :",
    max = IdempotencyKey::MAX_LEN
)]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    /// Longest idempotency key, in bytes.
    pub const MAX_LEN: usize = 128;

    pub fn parse(key: &str) -> Result<Self, IdempotencyKeyError> {
        let ok = !key.is_empty()
            && key.len() <= Self::MAX_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if ok {
            Ok(Self(key.to_owned()))
        } else {
            Err(IdempotencyKeyError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&key).map_err(serde::de::Error::custom)
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
    /// The user: the token's `sub`, or an anonymous connection's chosen name.
    pub user: Arc<str>,
}

/// One connection present in a channel: its client id, its user, whether a token proved the
/// user, and the token's `info` claim when it had one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub client: Arc<str>,
    pub user: Arc<str>,
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<serde_json::Value>>,
}

/// The most of a client's own text (an epoch, a name) that a reply quotes back: no answer may
/// grow with what the request sent.
pub const MAX_ECHO: usize = 64;

/// `text` as a reply may quote it: whole up to [`MAX_ECHO`] characters, cut short with `…`
/// beyond.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

impl Member {
    /// Who the member is, for counting a user's connections: an authenticated user and an
    /// anonymous connection that chose the same name are two people.
    pub fn user_key(&self) -> String {
        let proof = if self.authenticated { 'a' } else { 'n' };
        format!("{proof}:{}", self.user)
    }
}

impl ClientInfo {
    /// Who publishes through the server API: `{"client":"api","user":"server"}`.
    pub fn server() -> Self {
        Self {
            client: "api".into(),
            user: "server".into(),
        }
    }
}

/// One publication: how brokers store and deliver it, and the body of a `{"pub":{...}}` push.
///
/// `D` is the data: the publisher's JSON text, kept verbatim and never re-encoded, on the
/// server; whatever a client wants to read it as (`serde_json::Value`, its own type) in
/// clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Publication<D = Arc<RawValue>> {
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: D,
    pub info: ClientInfo,
}

/// A `pub` body read without allocating: what a client that counts many publications and
/// keeps only its data (the benchmark) needs. Reads exactly what [`Publication`] writes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PublicationRef<'a, D> {
    #[serde(borrow)]
    pub channel: std::borrow::Cow<'a, str>,
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: std::borrow::Cow<'a, str>,
    pub data: D,
}

#[cfg(test)]
mod tests;
