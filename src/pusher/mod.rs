//! Pusher Channels, the second wire (issue 25): what a Pusher client sends ([`frames`]),
//! its channel names and where each app's channels live among Tidings' ([`channel`]), and
//! Pusher's signatures for subscriptions, sign-ins and HTTP API requests ([`sign`]).
//!
//! Pure data and functions, like [`crate::protocol`]: the Pusher transport and routes reach
//! the session core through the same seam as the native wire, never the node or the broker.

pub mod channel;
pub mod codec;
pub mod frames;
pub mod sign;

/// One Pusher app as the server holds it: its id, key and secret.
#[derive(Debug)]
pub struct App {
    pub id: std::sync::Arc<str>,
    pub key: String,
    pub secret: sign::Secret,
}
