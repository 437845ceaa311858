//! Transports: one module per way a client reaches a session. Each turns its connection into
//! the session's `Incoming` and `Outgoing` halves; the session core never knows which one
//! carries it.
//!
//! - `ws`: WebSocket (RFC 6455; the frames in `frames`), with permessage-deflate (RFC 7692,
//!   [`deflate`]).
//! - `stream`: Server-Sent Events and newline-delimited JSON over a streaming HTTP response,
//!   with commands as HTTP requests.
//!
//! Only [`deflate`] is public: the load generator inflates with the server's own reader.

pub mod deflate;
pub(crate) mod frames;
pub(crate) mod pusher;
pub(crate) mod stream;
pub(crate) mod ws;
