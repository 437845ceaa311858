//! Tidings: a real-time messaging server.
//!
//! # Layout
//! Each module uses only the ones listed after it.
//!
//! - [`server`]: wiring and lifecycle — builds everything, serves, shuts down in order.
//! - [`config`]: every flag and environment variable, validated once.
//! - [`api`]: HTTP routes and WebSocket endpoints; translates to calls on the node.
//! - [`session`]: one connection — reader, writer, identity, subscriptions, heartbeats.
//! - [`node`]: this process's handle on the system: hub + broker kept in step.
//! - [`auth`]: tokens → identities; who may subscribe and publish where.
//! - [`limits`]: per-connection rate limits and connection caps.
//! - [`hub`]: local channel → subscribers; fan-out of frames encoded once.
//! - [`metrics`]: the counters the server keeps.
//! - [`outbox`]: one connection's bounded outgoing queue; slow-consumer detection.
//! - [`broker`]: offsets, history and delivery between nodes (memory, Redis, Redis Cluster).
//! - [`transport`]: the WebSocket library behind a small seam.
//! - [`protocol`]: the wire format, pure data.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod transport;
