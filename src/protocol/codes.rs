//! What a client sees when something fails: an [`ErrorCode`] in an error reply or push, or a
//! [`CloseCode`] on the closing connection. Both are public contracts (`docs/protocol.md`):
//! numbers never change meaning, new ones only extend the documented ranges.

use serde::{Deserialize, Serialize};

/// Error codes carried in `{"error":{"code":C,"message":M}}`.
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
    /// The channel's namespace does not enable this operation (`presence`, `presence_stats`
    /// where `presence=false`).
    NotEnabled = 113,
    /// Something failed inside the server; the request may be retried.
    Internal = 500,
    /// The app's backend (a proxy call) did not answer in time, could not be reached, or
    /// answered something unusable; the request may be retried.
    BadBackend = 502,
    /// The broker cannot take the request now; retry later.
    Unavailable = 503,
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code's name in the server API's error bodies (`"code":"unavailable"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidCommand => "invalid_command",
            Self::UnknownOp => "unknown_op",
            Self::InvalidField => "invalid_field",
            Self::InvalidChannel => "invalid_channel",
            Self::BinaryFrame => "binary_frame",
            Self::AlreadyConnected => "already_connected",
            Self::AlreadySubscribed => "already_subscribed",
            Self::LimitExceeded => "limit_exceeded",
            Self::UnrecoverablePosition => "unrecoverable_position",
            Self::PermissionDenied => "permission_denied",
            Self::InvalidToken => "invalid_token",
            Self::RateLimited => "rate_limited",
            Self::NotEnabled => "not_enabled",
            Self::Internal => "internal",
            Self::BadBackend => "bad_backend",
            Self::Unavailable => "unavailable",
        }
    }

    /// The HTTP status the server API answers this failure with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::UnrecoverablePosition => 409,
            Self::PermissionDenied | Self::InvalidToken => 403,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::BadBackend => 502,
            Self::Unavailable => 503,
            _ => 400,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

/// Why the server closes a connection: the WebSocket close code, its documented reason, and
/// whether the client should reconnect.
///
/// 1xxx are RFC 6455's; **4000–4499** mean "reconnect (with back-off) and recover";
/// **4500–4999** mean "do not reconnect without a change" (a new token, new parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client closed, or the server finished a close the client started.
    Normal,
    /// 1001: the server is shutting down: reconnect with jittered back-off, to another node.
    GoingAway,
    /// 1002: the peer broke RFC 6455 framing.
    ProtocolError,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload,
    /// 1008: refused by policy (a bad token, no `connect` in time, a connection cap).
    PolicyViolation,
    /// 1009: a message exceeded `--max-message-size`.
    MessageTooBig,
    /// 1011: an unexpected server error.
    InternalError,
    /// 1013: more connections than `--max-connections`: reconnect with back-off, elsewhere.
    TryAgainLater,
    /// 4000: the client read too slowly and its outgoing queue filled: reconnect and recover.
    SlowConsumer,
    /// 4001: no frame from the client within the pong timeout after a ping.
    NoPong,
    /// 4002: a subscribed channel skipped offsets or changed epoch (a node missed
    /// publications): reconnect and subscribe with `since` to recover.
    InsufficientState,
    /// 4003: the token expired without a `refresh`: reconnect with a fresh token.
    TokenExpired,
    /// 4004: the client kept exceeding its rate limits after being told.
    RateLimited,
    /// 4005: disconnected by the application through the server API, reconnect allowed.
    DisconnectedReconnect,
    /// 4006: the app's backend could not decide the connection (`--proxy-connect` timed out,
    /// was unreachable or answered garbage): reconnect with back-off.
    BackendUnavailable,
    /// 4500: subscribed to nothing and sent nothing for `--idle-timeout`.
    Idle,
    /// 4501: disconnected by the application through the server API: do not reconnect.
    Disconnected,
    /// 4000–4999 chosen by the app's backend (a proxy call answered `disconnect`); the ranges
    /// keep their meaning: below 4500 reconnect, from 4500 do not. Built only by
    /// [`CloseCode::app`], which keeps it in that range.
    App(AppCode),
}

/// A close code the app's backend chose, in 4000–4999: [`CloseCode::app`] is the only way to
/// make one, so no other number can reach a close frame as the app's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppCode(u16);

impl CloseCode {
    const ALL: [Self; 17] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::MessageTooBig,
        Self::InternalError,
        Self::TryAgainLater,
        Self::SlowConsumer,
        Self::NoPong,
        Self::InsufficientState,
        Self::TokenExpired,
        Self::RateLimited,
        Self::DisconnectedReconnect,
        Self::BackendUnavailable,
        Self::Idle,
        Self::Disconnected,
    ];

    /// The app's close code `number`, or `None` outside 4000–4999.
    pub fn app(number: u16) -> Option<Self> {
        (4000..=4999)
            .contains(&number)
            .then_some(Self::App(AppCode(number)))
    }

    /// The number sent in the close frame.
    pub const fn number(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TryAgainLater => 1013,
            Self::SlowConsumer => 4000,
            Self::NoPong => 4001,
            Self::InsufficientState => 4002,
            Self::TokenExpired => 4003,
            Self::RateLimited => 4004,
            Self::DisconnectedReconnect => 4005,
            Self::BackendUnavailable => 4006,
            Self::Idle => 4500,
            Self::Disconnected => 4501,
            Self::App(AppCode(number)) => number,
        }
    }

    /// The code a close frame's number stands for, if it is one of ours.
    pub fn from_number(number: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.number() == number)
    }

    /// The documented reason, sent when nothing more specific is known.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "protocol error",
            Self::InvalidPayload => "invalid UTF-8",
            Self::PolicyViolation => "policy violation",
            Self::MessageTooBig => "message too big",
            Self::InternalError => "internal error",
            Self::TryAgainLater => "too many connections on this server",
            Self::SlowConsumer => "slow consumer",
            Self::NoPong => "no pong",
            Self::InsufficientState => "missed publications; reconnect and recover",
            Self::TokenExpired => "token expired",
            Self::RateLimited => "rate limit exceeded repeatedly",
            Self::DisconnectedReconnect | Self::Disconnected | Self::App(_) => {
                "disconnected by the server"
            }
            Self::Idle => "idle: no subscription and no command",
            Self::BackendUnavailable => "the app's backend could not decide the connection",
        }
    }

    /// Whether a client should connect again (with back-off; after recovering where the
    /// code says so). 1002 and 1007 say yes: only once the client is fixed will it help.
    pub const fn reconnect(self) -> bool {
        match self {
            Self::App(AppCode(number)) => number < 4500,
            _ => !matches!(
                self,
                Self::Normal | Self::PolicyViolation | Self::Idle | Self::Disconnected
            ),
        }
    }
}

impl Serialize for CloseCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.number())
    }
}

impl<'de> Deserialize<'de> for CloseCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = u16::deserialize(deserializer)?;
        // An app's code (a backend's, the Pusher API's) travels between nodes as its number.
        Self::from_number(number)
            .or_else(|| Self::app(number))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{number} is not a Tidings close code"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_keep_their_documented_ranges() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_number(code.number()), Some(code));
            match code.number() {
                4000..=4499 => assert!(code.reconnect(), "{code:?}"),
                4500..=4999 => assert!(!code.reconnect(), "{code:?}"),
                _ => {}
            }
        }
        assert_eq!(CloseCode::from_number(4999), None);
    }

    #[test]
    fn an_app_close_code_is_only_ever_in_its_range() {
        for number in [0, 1000, 3999, 5000, u16::MAX] {
            assert_eq!(CloseCode::app(number), None, "{number}");
        }
        let stay = CloseCode::app(4403).expect("in range");
        assert_eq!((stay.number(), stay.reconnect()), (4403, true));
        let leave = CloseCode::app(4999).expect("in range");
        assert_eq!((leave.number(), leave.reconnect()), (4999, false));
    }
}
