//! Tidings: a real-time messaging server.
//!
//! # Layout
//! The modules in layer order: each uses only the ones listed after it, and
//! `tests/it/architecture.rs` reads every `crate::` path of the source to keep it so (and
//! checks that sessions and the HTTP API never reach past the node, and that only `server`
//! names a concrete broker).
//!
//! - [`server`]: wiring and lifecycle — builds everything from the settings, serves, shuts
//!   down in order; the only module that names concrete brokers. Its accept loop hands each
//!   connection to hyper, or serves a stream opened as its first request on the socket itself.
//! - `api`: HTTP routes; translates requests into calls on the node. One admission step
//!   (origin, caps, credentials) for every transport, and one JSON error body for every
//!   refusal of every route.
//! - [`transport`]: the ways a client reaches a session (WebSocket, SSE, NDJSON); each picks a
//!   codec and only writes what it makes.
//! - `session`: one connection, whatever carries it and whatever its wire — identity,
//!   commands, subscriptions, heartbeats, limits, its outbox. It speaks in typed items.
//! - `node`: this process's handle on the system: hub, broker and namespace options kept in
//!   step; what a failure tells a client. One concept per file: the broker's sink (`local`),
//!   users' connections and their mailboxes (`users`), join/leave pushes (`presence`), stream
//!   sessions' commands (`streams`), the node-to-node message (`control`), and whether a
//!   history continues a position (`continuity`).
//! - `hub`: local channel → subscribers; fan-out of items encoded once.
//! - `outbox`: one connection's bounded queue of outgoing items and its subscriptions'
//!   delivery state.
//! - [`webhook`]: lifecycle events and receipts, counted across nodes (memory, Redis) and
//!   sent, signed, to the app's backend.
//! - [`presence`]: who is present in each channel, on every node (memory, Redis), and the
//!   join and leave events.
//! - [`broker`]: offsets, history and delivery between nodes (memory, Redis, Redis Cluster).
//!   The Redis stores of `presence` and `webhook` ride on its connection through one seam,
//!   [`broker::RedisStore`], and name nothing else of it.
//! - [`backend`]: calls to the app's backend over HTTP (`--proxy-*`). Sessions reach it
//!   through one seam (`session/backend.rs`); a failure reaches a client as a documented
//!   text, never the HTTP client's error.
//! - [`auth`]: tokens → identities; who may subscribe and publish where.
//! - `limits`: per-connection rate limits and connection caps.
//! - [`config`]: every flag and environment variable, validated once into plain settings.
//! - `metrics`: the counters the server keeps.
//! - [`pusher`]: Pusher Channels' frames, channel names and signatures, pure data like
//!   `protocol` (its transport and routes are being built: issue 25).
//! - [`protocol`]: the wire format, pure data; shared with the tests and the benchmark. Also
//!   the seam every wire plugs into: the session's outgoing [`Item`](protocol::Item)s and the
//!   [`Codec`](protocol::Codec)s that turn them into bytes.
//! - `connection`: the id of a local connection.
//! - [`frame`]: encoded bytes shared by every connection that sends them.
//!
//! # The seam between the session core and a wire
//! A session decides; a codec formats. The session core checks identity and permissions,
//! recovers, and applies limits, then emits [`Item`](protocol::Item)s: replies, and pushes
//! carrying their channel, offset and epoch. A publication is one shared
//! [`Published`](protocol::Published) for every subscriber on the node, encoded once (and
//! compressed once). A transport owns a [`Codec`](protocol::Codec) — protocol v1 for
//! WebSocket, SSE, NDJSON — which turns each item into bytes without blocking, without
//! deciding anything, and without allocating per subscriber for a shared item; the transport
//! writes them. A second protocol (Pusher Channels) is a new codec and a new transport entry,
//! never a change to the session core.
//!
//! # Lock order
//! Locks are std mutexes held for short sections without `.await`, except the node's
//! per-channel subscribe locks (tokio, held across the broker calls of one subscribe or
//! unsubscribe). When several are held they are taken in this order, never the reverse:
//! node channel lock → memory broker stream lock → hub shard → outbox state. The node's user
//! registry, a mailbox, the admission counters and the Redis broker's channel set are each
//! taken alone.

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod server;
pub(crate) mod api;
pub mod transport;
pub(crate) mod session;
pub(crate) mod node;
pub(crate) mod hub;
pub(crate) mod outbox;
pub mod webhook;
pub mod presence;
pub mod broker;
pub mod backend;
pub mod auth;
pub(crate) mod limits;
pub mod config;
pub(crate) mod metrics;
pub mod pusher;
pub mod protocol;
pub(crate) mod connection;
pub mod frame;
