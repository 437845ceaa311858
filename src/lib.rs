//! Tidings: a real-time messaging server.
//!
//! # Layout
//! Each module uses only the ones listed after it (a test in `tests/it/architecture.rs` keeps
//! the rules that matter most: sessions and the HTTP API never reach past the node, and only
//! `server` names a concrete broker).
//!
//! - [`server`]: wiring and lifecycle — builds everything from the settings, serves, shuts
//!   down in order; the only module that names concrete brokers.
//! - `api`: HTTP routes; translates requests into calls on the node.
//! - `transport`: the ways a client reaches a session (WebSocket).
//! - `session`: one connection, whatever carries it — identity, commands, subscriptions,
//!   heartbeats, limits, its outbox.
//! - `node`: this process's handle on the system: hub, broker and namespace options kept in
//!   step; users' connections; what a failure tells a client.
//! - `hub`: local channel → subscribers; fan-out of frames encoded once.
//! - `outbox`: one connection's bounded outgoing queue and its subscriptions' delivery state.
//! - `limits`: per-connection rate limits and connection caps.
//! - [`broker`]: offsets, history and delivery between nodes (memory, Redis, Redis Cluster).
//! - [`presence`]: who is present in each channel, on every node (memory, Redis), and the
//!   join and leave events.
//! - [`auth`]: tokens → identities; who may subscribe and publish where.
//! - [`webhook`]: lifecycle events and receipts, counted across nodes (memory, Redis) and
//!   sent, signed, to the app's backend.
//! - [`backend`]: calls to the app's backend over HTTP (`--proxy-*`).
//! - [`config`]: every flag and environment variable, validated once into plain settings.
//! - `metrics`: the counters the server keeps.
//! - [`protocol`]: the wire format, pure data; shared with the tests and the benchmark.
//!
//! # Lock order
//! Locks are std mutexes held for short sections without `.await`, except the node's
//! per-channel subscribe locks (tokio, held across the broker calls of one subscribe or
//! unsubscribe). When several are held they are taken in this order, never the reverse:
//! node channel lock → memory broker stream lock → hub shard → outbox state. The node's user
//! registry, a mailbox, the admission counters and the Redis broker's channel set are each
//! taken alone.

pub(crate) mod api;
pub mod auth;
pub mod backend;
pub mod broker;
pub mod config;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod outbox;
pub mod presence;
pub mod protocol;
pub mod server;
pub(crate) mod session;
pub mod transport;
pub mod webhook;
