//! A session's clocks: the heartbeat, a small state machine the writer drives, and the
//! deadlines the reader sets and the writer enforces (token expiry, idleness, authentication).
//!
//! ## Heartbeat
//! Every `ping_interval` a ping goes out with the next batch. From the moment it has left, the
//! client has `pong_timeout` to send anything at all (normally `{"op":"pong"}`); a client that
//! stayed silent is closed with [`CloseCode::NoPong`]. Any frame proves life, so a busy client
//! that forgets to pong is not cut off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::SessionConfig;
use crate::outbox::Closing;
use crate::protocol::CloseCode;

/// Where the heartbeat stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting until the next ping is due, at the deadline.
    Resting,
    /// A ping must go out with the next batch; no deadline until it has.
    Due,
    /// A ping left at `sent`; the client must show life before the deadline.
    Awaiting { sent: Instant },
}

/// What the heartbeat asks of the writer when its deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Beat {
    /// Nothing to do (the deadline moved).
    Rest,
    /// Queue a ping with the next batch.
    Ping,
    /// The client stayed silent after a ping: close with [`CloseCode::NoPong`].
    Dead,
}

#[derive(Debug)]
pub(super) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    phase: Phase,
    deadline: Instant,
}

impl Heartbeat {
    pub(super) fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            phase: Phase::Resting,
            deadline: now + interval,
        }
    }

    /// When to wake up for the heartbeat; `None` while a ping waits to be sent.
    pub(super) fn deadline(&self) -> Option<Instant> {
        (self.phase != Phase::Due).then_some(self.deadline)
    }

    /// Whether a ping should go out with this batch.
    pub(super) fn ping_due(&self) -> bool {
        self.phase == Phase::Due
    }

    /// The ping has left: the pong clock starts now, not when it was queued.
    pub(super) fn ping_sent(&mut self, now: Instant) {
        self.phase = Phase::Awaiting { sent: now };
        self.deadline = now + self.timeout;
    }

    /// The deadline passed at `now`; `alive` says whether the client sent anything since the
    /// last ping was queued.
    pub(super) fn expire(&mut self, now: Instant, alive: bool) -> Beat {
        if now < self.deadline {
            return Beat::Rest;
        }
        match self.phase {
            Phase::Resting => {
                self.phase = Phase::Due;
                Beat::Ping
            }
            Phase::Due => Beat::Ping,
            Phase::Awaiting { sent } if alive => {
                self.phase = Phase::Resting;
                self.deadline = (sent + self.interval).max(now);
                Beat::Rest
            }
            Phase::Awaiting { .. } => Beat::Dead,
        }
    }
}

/// "No deadline" in [`Clocks`].
pub(super) const NEVER: u64 = u64::MAX;
const DAY_MS: u64 = 86_400_000;

/// Deadlines the reader sets and the writer enforces, in milliseconds since the session
/// started ([`NEVER`] when unset), and the reader's proof of life for the heartbeat.
#[derive(Debug)]
pub(super) struct Clocks {
    pub(super) start: Instant,
    /// When the token expires.
    pub(super) expires: AtomicU64,
    /// Since when the connection has been idle (no subscription, no command).
    pub(super) idle_since: AtomicU64,
    /// By when the connection must have authenticated.
    pub(super) identify_by: AtomicU64,
    /// Something arrived from the client since the last ping was queued.
    pub(super) alive: AtomicBool,
}

impl Clocks {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            expires: AtomicU64::new(NEVER),
            idle_since: AtomicU64::new(0),
            identify_by: AtomicU64::new(NEVER),
            alive: AtomicBool::new(true),
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.millis(Instant::now())
    }

    pub(super) fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(NEVER - 1)
    }

    pub(super) fn at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    pub(super) fn set(&self, deadline: &AtomicU64, millis: u64) {
        deadline.store(millis, Ordering::Relaxed);
    }

    /// The idle deadline, if the connection is idle and idling is limited.
    fn idle_deadline(&self, config: &SessionConfig) -> u64 {
        match (self.idle_since.load(Ordering::Relaxed), config.idle_timeout) {
            (NEVER, _) | (_, None) => NEVER,
            (since, Some(timeout)) => since.saturating_add(millis(timeout)),
        }
    }

    /// The earliest deadline, but no more than a day away: a day is as good as never (the
    /// heartbeat comes much sooner anyway), and a token may expire in the year 9999.
    pub(super) fn next_deadline(&self, config: &SessionConfig) -> Instant {
        let earliest = self
            .expires
            .load(Ordering::Relaxed)
            .min(self.identify_by.load(Ordering::Relaxed))
            .min(self.idle_deadline(config));
        self.at(earliest.min(self.now().saturating_add(DAY_MS)))
    }

    /// The close owed to a deadline that has passed at `now`.
    pub(super) fn expired(&self, now: Instant, config: &SessionConfig) -> Option<Closing> {
        let now = self.millis(now);
        if self.identify_by.load(Ordering::Relaxed) <= now {
            return Some(Closing::because(
                CloseCode::PolicyViolation,
                "authentication required: no connect with a token in time",
            ));
        }
        if self.expires.load(Ordering::Relaxed) <= now {
            return Some(Closing::with(CloseCode::TokenExpired));
        }
        if self.idle_deadline(config) <= now {
            return Some(Closing::with(CloseCode::Idle));
        }
        None
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(25);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_ping_is_due_each_interval_and_a_live_client_rests_again() {
        let mut beat = Heartbeat::new(Instant::now(), INTERVAL, TIMEOUT);
        assert_eq!(beat.expire(Instant::now(), true), Beat::Rest, "too early");
        tokio::time::sleep_until(beat.deadline().unwrap()).await;
        assert_eq!(beat.expire(Instant::now(), true), Beat::Ping);
        assert!(beat.ping_due());
        assert_eq!(beat.deadline(), None, "no timer while the ping waits");

        tokio::time::advance(Duration::from_millis(300)).await;
        let sent = Instant::now();
        beat.ping_sent(sent);
        assert_eq!(beat.deadline(), Some(sent + TIMEOUT));
        tokio::time::sleep_until(sent + TIMEOUT).await;
        assert_eq!(beat.expire(Instant::now(), true), Beat::Rest);
        assert_eq!(
            beat.deadline(),
            Some(sent + INTERVAL),
            "the next ping is an interval after the last one left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dead_a_pong_timeout_after_the_ping_left() {
        let mut beat = Heartbeat::new(Instant::now(), INTERVAL, TIMEOUT);
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(beat.expire(Instant::now(), false), Beat::Ping);
        // A slow socket: the ping leaves five seconds after it was queued.
        tokio::time::advance(Duration::from_secs(5)).await;
        beat.ping_sent(Instant::now());
        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        assert_eq!(beat.expire(Instant::now(), false), Beat::Rest);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(beat.expire(Instant::now(), false), Beat::Dead);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_a_day_or_a_millennium_away_wake_the_writer_within_a_day() {
        let clocks = Clocks::new();
        let config = super::super::tests::config();
        clocks.set(&clocks.expires, NEVER - 1);
        let wake = clocks.next_deadline(&config);
        assert!(wake <= Instant::now() + Duration::from_secs(86_400));
        assert_eq!(clocks.expired(Instant::now(), &config), None);
        clocks.set(&clocks.expires, clocks.now());
        assert_eq!(
            clocks.expired(Instant::now(), &config),
            Some(Closing::with(CloseCode::TokenExpired))
        );
    }
}
