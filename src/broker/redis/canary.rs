//! The canary: every node publishes a heartbeat on one pub/sub channel each interval and
//! watches its own — and its peers' — come back through its subscriber connection.
//!
//! It catches what a connection check cannot: a subscriber connection that is up, perhaps
//! even answering PING, but delivers nothing (a proxy in the middle eating pub/sub, a
//! subscription the server dropped, a wedged connection). Such a node would silently stop
//! delivering to its clients. When its own heartbeats stop returning, the node reports not
//! ready, logs the cause once, and reconnects the subscriber; the reconnect subscribes again
//! and reconciles every channel, so subscribers recover what they missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fred::prelude::{ClientLike, PubsubInterface};
use tokio::time::{Instant, MissedTickBehavior};

use super::Inner;
use crate::metrics::metrics;

/// A node's heartbeats that have not come back after this many intervals mean its pub/sub
/// connection is not delivering.
const MISSED_HEARTBEATS: u32 = 3;

/// Peers whose heartbeats are remembered at most (a bound, whatever shares the Redis).
const MAX_PEERS: usize = 1024;

/// The canary's state, read by `/readyz` and updated by the pump and the heartbeat task.
pub(super) struct Canary {
    interval: Duration,
    /// Heartbeats carry the time since this instant: only their sender can read them, and
    /// need not trust another host's clock.
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the oldest heartbeat not yet seen back was sent.
    unanswered_since: Option<Instant>,
    /// Why the canary is failing, when it is.
    failing: Option<Arc<str>>,
    /// When each peer's last heartbeat arrived.
    peers: HashMap<Box<str>, Instant>,
}

impl Canary {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(10)),
            started: Instant::now(),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timeout(&self) -> Duration {
        self.interval * MISSED_HEARTBEATS
    }

    /// `Err(cause)` while the canary is failing.
    pub(super) fn check(&self) -> Result<(), Arc<str>> {
        match &self.state().failing {
            Some(cause) => Err(cause.clone()),
            None => Ok(()),
        }
    }

    fn heartbeat(&self, node_id: &str) -> String {
        format!("{node_id}:{}", self.started.elapsed().as_micros())
    }

    /// A heartbeat came through pub/sub (the pump calls this, in order with publications, so
    /// the round trip includes any backlog of the pump: `backlog` messages are still queued).
    pub(super) fn arrived(&self, node_id: &str, message: &[u8], backlog: usize) {
        let Some((sender, micros)) = std::str::from_utf8(message)
            .ok()
            .and_then(|text| text.rsplit_once(':'))
        else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state();
        if sender != node_id {
            if state.peers.len() >= MAX_PEERS && !state.peers.contains_key(sender) {
                return;
            }
            state.peers.insert(sender.into(), now);
            return;
        }
        let Ok(micros) = micros.parse::<u64>() else {
            return;
        };
        let sent = self.started + Duration::from_micros(micros);
        let round_trip = now.saturating_duration_since(sent).as_secs_f64();
        let m = metrics();
        m.broker.round_trip.observe(round_trip);
        m.broker.canary_round_trip.set(round_trip);
        m.broker
            .pubsub_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if state.unanswered_since.is_some_and(|since| since <= sent) {
            state.unanswered_since = None;
        }
        if let Some(cause) = state.failing.take() {
            tracing::info!(%cause, "broker canary healthy again: heartbeats come back");
            m.broker.up.set(1);
        }
    }

    fn sent(&self, at: Instant) {
        self.state().unanswered_since.get_or_insert(at);
    }

    /// Heartbeats cannot be published (Redis is unreachable): whether delivery works cannot
    /// be told, so nothing is overdue, but the node is not healthy either.
    fn publish_failed(&self, err: &fred::error::Error) {
        let mut state = self.state();
        state.unanswered_since = None;
        if state.failing.is_none() {
            tracing::warn!(%err, "broker canary: heartbeats cannot be published");
            state.failing = Some(format!("heartbeats cannot be published: {err}").into());
            metrics().broker.up.set(0);
        }
    }

    /// Redis cannot be reached at all: failing until a heartbeat comes back.
    fn down(&self, cause: &str) {
        self.state().failing = Some(cause.into());
        metrics().broker.up.set(0);
    }

    /// Whether heartbeats have stopped coming back: then the state is failing (logged once)
    /// and a new timeout starts, so the caller reconnects once per timeout.
    fn overdue(&self, now: Instant) -> bool {
        let mut state = self.state();
        let Some(since) = state.unanswered_since else {
            return false;
        };
        if now.saturating_duration_since(since) < self.timeout() {
            return false;
        }
        state.unanswered_since = None;
        if state.failing.is_none() {
            let cause = format!(
                "heartbeats published through Redis did not come back within {:?}: the \
                 pub/sub connection is not delivering",
                self.timeout()
            );
            tracing::warn!(
                %cause,
                "broker canary failed; reconnecting the subscriber, then resubscribing and \
                 reconciling every channel"
            );
            state.failing = Some(cause.into());
            metrics().broker.up.set(0);
        }
        true
    }

    /// Forgets peers not heard from within the timeout and counts the others.
    fn peers_alive(&self, now: Instant) -> usize {
        let timeout = self.timeout();
        let mut state = self.state();
        state
            .peers
            .retain(|_, heard| now.saturating_duration_since(*heard) < timeout);
        state.peers.len()
    }
}

/// Publishes a heartbeat every interval and acts on the ones that do not come back.
pub(super) async fn run(inner: Arc<Inner>) {
    let canary = &inner.canary;
    let mut ticker = tokio::time::interval(canary.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A node that starts while Redis is down is not up until its heartbeats come back.
    if inner.client.is_connected() {
        metrics().broker.up.set(1);
    } else {
        canary.down(&inner.link.reason());
    }
    loop {
        ticker.tick().await;
        let heartbeat = canary.heartbeat(&inner.node_id);
        let channel = inner.canary_channel.clone();
        let at = Instant::now();
        let published = if inner.sharded {
            inner.client.spublish::<(), _, _>(channel, heartbeat).await
        } else {
            inner.client.publish::<(), _, _>(channel, heartbeat).await
        };
        match published {
            Ok(()) => canary.sent(at),
            Err(err) => canary.publish_failed(&err),
        }
        let now = Instant::now();
        if canary.overdue(now) {
            // A reconnect is followed by a resubscribe and a reconciliation of every channel
            // (`pubsub::restore_after_reconnects`).
            if let Err(err) = inner.subscriber.force_reconnection().await {
                tracing::warn!(%err, "reconnecting the Redis subscriber failed");
            }
        }
        let peers = canary.peers_alive(now);
        metrics()
            .broker
            .canary_peers
            .set(i64::try_from(peers).unwrap_or(i64::MAX));
    }
}
