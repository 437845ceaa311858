//! Integration tests: every test starts the real `tidings` binary on an ephemeral port and
//! talks to it over real sockets.

// A failed unwrap in a test is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod support;

/// `/admin`: the API key guards it; in headless Chromium it shows every node and live rates.
mod admin;
/// The layout rules: who may use the broker, who names a concrete one, file and function size.
mod architecture;
/// Tokens, channel rules, personal channels, subscription tokens and the origin check.
mod auth;
/// The example backend of docs/backend.md (Python) and the Node.js signature recipe, against
/// a real Tidings.
mod backend_example;
/// Bad input of every kind gets its documented answer; the connection or the server survives.
mod bad_input;
/// The Broker contract, one body per test run against the memory and the Redis broker.
mod broker_contract;
/// The chat page in headless Chromium.
mod browser;
/// The broker canary: a node whose pub/sub connection stops delivering notices, reports not
/// ready, reconnects and recovers what its subscribers missed.
mod canary;
/// Tidings on a local three-master Redis Cluster.
mod cluster;
/// permessage-deflate: the same publications with and without it, really compressed on the
/// wire, a namespace opting out, a decompression bomb.
mod compression;
/// The configuration file: `config check`, `config example`, docs/config.md, precedence.
mod config_file;
/// The files in `deploy/` against the binary: real flags and variables, stop timeouts that
/// outlast the drain, a balancer that checks `/readyz`.
mod deploy;
/// Redis going away and coming back, with and without its data.
mod faults;
/// HTTP routes other than the protocol: chat page, JS client, health, echo.
mod http;
/// The server HTTP API: key, errors, publish, broadcast, history, idempotency, channels, and
/// user commands on every node.
mod http_api;
/// Slow consumers and shutdown: the lifecycle of a connection (heartbeats are tested on
/// tokio's paused clock beside the session core).
mod lifecycle;
/// Rate limits, connection caps, handshake and idle timeouts.
mod limits;
/// `/metrics`: exact counts after a scripted session, the text format, bounded labels; the
/// per-connection log lines.
mod metrics;
/// Presence: the store contract on memory, Redis and Redis Cluster; crash safety; presence
/// across real nodes.
mod presence;
/// Calls to the app's backend: `rpc` through `--proxy-rpc`, forwarded headers, the backend's
/// answers and failures.
mod proxy;
/// Channels: subscribe, publish, unsubscribe, ordering under concurrency.
mod pubsub;
/// History and recovery from a position.
mod recovery;
/// Redis over TLS (with client certificates; no secret in any log line) and behind Sentinel
/// through a failover.
mod redis_deployments;
/// Bug-reproducing tests, named `issue_<N>_…` after the issue that found the bug.
mod regression;
/// Several nodes through Redis: cross-node delivery, failover, recovery elsewhere.
mod scale_out;
/// `/sse` and `/stream` on the wire: on a socket of their own or after other requests,
/// chunked or (HTTP/1.0) ended by the close, bad heads refused, clients that talk cut off.
mod stream_sockets;
/// HTTP streams: SSE (Python and Chromium's EventSource) and `/stream`, resumed on another
/// node; the two-way fallback behind a balancer that is never sticky.
mod streams;
/// Webhooks (lifecycle events once per transition across nodes, signed, retried, kept in
/// Redis) and delivery receipts.
mod webhook;
