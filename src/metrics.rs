//! Metrics: every counter the server keeps, in one place, each with what it counts.
//!
//! Counters are plain atomics bumped where the event is handled and reported in that event's
//! log line.

use std::sync::atomic::AtomicU64;

/// The server's counters; one instance per process, shared by handle.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Server API requests answered 408 because their body did not arrive within
    /// `--body-timeout`.
    pub body_timeouts: AtomicU64,
}
