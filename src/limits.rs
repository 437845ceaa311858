//! Limits that keep one client from hurting the others: per-connection command and publish
//! rates (token buckets), and caps on connections per node, per user and per IP address.
//!
//! ## Rates
//! A connection spends one token per command, and one more from a second bucket per publish.
//! An empty bucket refuses the command (the client gets error 112 and may retry later). A
//! client that keeps going after being refused — more refusals than the burst size within ten
//! seconds — is closed with 4004: a third bucket counts the refusals.
//!
//! ## Budgets
//! Some work a client causes lands on everyone else: webhook events ([`EventBudget`], per
//! connection) and the commands of stream sessions, which travel through the broker
//! ([`AddressBudgets`], per client address, in requests and bytes).
//!
//! ## Connection caps
//! [`Admission`] counts open WebSocket connections. A connection holds a [`Ticket`] for its
//! whole life; dropping the ticket gives its places back, so a cap can never leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::ConnectionCaps;
use crate::protocol::CloseCode;

/// A sustained rate with a burst allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// A token bucket. The rate lives with the caller, so each bucket is eight bytes of state
/// plus a timestamp.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst as f32,
            last: now,
        }
    }

    fn refill(&mut self, per_second: f32, burst: f32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.last = now;
    }

    fn take(&mut self, per_second: f32, burst: f32, now: Instant) -> bool {
        self.refill(per_second, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many lifecycle changes (a channel or member held for the first time on this node) one
/// connection's subscriptions may cause: a burst, then a few a second. A connection that
/// churns through channel names past it still subscribes, but its subscriptions are not
/// counted for webhooks (and the events they would have caused are counted as dropped), so
/// one client cannot fill the webhook queue for everyone.
pub const LIFECYCLE_BUDGET: Rate = Rate {
    per_second: 10,
    burst: 100,
};

/// One connection's allowance of lifecycle changes ([`LIFECYCLE_BUDGET`]).
#[derive(Clone, Copy, Debug)]
pub struct EventBudget(Bucket);

impl EventBudget {
    pub fn new(now: Instant) -> Self {
        Self(Bucket::full(LIFECYCLE_BUDGET, now))
    }

    /// Spends one change; false when the budget is spent.
    pub fn spend(&mut self) -> bool {
        let Rate { per_second, burst } = LIFECYCLE_BUDGET;
        self.0.take(per_second as f32, burst as f32, Instant::now())
    }
}

/// A budget at a rate the caller keeps (one connection's client events on a second wire).
#[derive(Clone, Copy, Debug)]
pub struct Allowance(Bucket);

impl Allowance {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self(Bucket::full(rate, now))
    }

    /// Spends one; false when the budget is spent.
    pub fn spend(&mut self, rate: Rate, now: Instant) -> bool {
        self.0.take(rate.per_second as f32, rate.burst as f32, now)
    }
}

/// How many command requests (`POST /stream`, `POST /sse`) one client address may make: a
/// session sends one at a time, each answered once the broker has it.
pub const ADDRESS_REQUESTS: Rate = Rate {
    per_second: 200,
    burst: 400,
};

/// Client addresses whose budgets are remembered at most; a new address past this is refused
/// until old ones are forgotten (those whose buckets have refilled).
const MAX_ADDRESSES: usize = 65_536;

/// Per client address: a budget of command requests, in requests ([`ADDRESS_REQUESTS`]) and
/// in bytes (of commands), so that no address can make the node push more than that through
/// the broker, however many sessions (real or made up) it names.
#[derive(Debug)]
pub struct AddressBudgets {
    bytes: Rate,
    by_address: Mutex<HashMap<IpAddr, [Bucket; 2]>>,
}

impl AddressBudgets {
    /// `bytes` a second, with bursts of two seconds' worth.
    pub fn new(bytes_per_second: u32) -> Self {
        Self {
            bytes: Rate::new(bytes_per_second, bytes_per_second.saturating_mul(2)),
            by_address: Mutex::default(),
        }
    }

    /// Charges one request of `bytes` to `ip`; false when its budget is spent.
    pub fn charge(&self, ip: IpAddr, bytes: usize) -> bool {
        let now = Instant::now();
        let (requests, bytes_rate) = (ADDRESS_REQUESTS, self.bytes);
        let mut by_address = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if by_address.len() >= MAX_ADDRESSES && !by_address.contains_key(&ip) {
            // Forget the addresses that have been quiet long enough to be full again.
            by_address.retain(|_, [count, size]| {
                count.refill(requests.per_second as f32, requests.burst as f32, now);
                size.refill(bytes_rate.per_second as f32, bytes_rate.burst as f32, now);
                count.tokens < requests.burst as f32 || size.tokens < bytes_rate.burst as f32
            });
            if by_address.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let [count, size] = by_address
            .entry(ip)
            .or_insert_with(|| [Bucket::full(requests, now), Bucket::full(bytes_rate, now)]);
        let per_second = bytes_rate.per_second as f32;
        size.refill(per_second, bytes_rate.burst as f32, now);
        // A request larger than the whole burst could never pass: it may empty a full bucket.
        let cost = (bytes as f32).min(bytes_rate.burst as f32);
        if size.tokens < cost {
            return false;
        }
        if !count.take(requests.per_second as f32, requests.burst as f32, now) {
            return false;
        }
        size.tokens -= cost;
        true
    }
}

/// What to do with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it with error 112.
    Refuse,
    /// Refused too often: close the connection with 4004.
    Close,
}

/// The refusals tolerated in this window before a client counts as abusive.
const PENALTY_WINDOW_SECS: f32 = 10.0;

/// One connection's rate limits.
#[derive(Debug)]
pub struct Limiter {
    commands: Bucket,
    publishes: Bucket,
    refusals: Bucket,
}

impl Limiter {
    pub fn new(commands: Rate, publishes: Rate, now: Instant) -> Self {
        Self {
            commands: Bucket::full(commands, now),
            publishes: Bucket::full(publishes, now),
            refusals: Bucket::full(commands, now),
        }
    }

    /// Charges one command (and one publish if it is one).
    pub fn check(
        &mut self,
        commands: Rate,
        publishes: Rate,
        is_publish: bool,
        now: Instant,
    ) -> Verdict {
        let allowed = self
            .commands
            .take(commands.per_second as f32, commands.burst as f32, now)
            && (!is_publish
                || self
                    .publishes
                    .take(publishes.per_second as f32, publishes.burst as f32, now));
        if allowed {
            return Verdict::Allow;
        }
        let burst = commands.burst as f32;
        if self.refusals.take(burst / PENALTY_WINDOW_SECS, burst, now) {
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

/// Why a connection is refused, with the close code that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections on this server")]
    Total,
    #[error("too many connections from this address")]
    Ip,
    #[error("too many connections for this user")]
    User,
}

impl Refused {
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::Total => CloseCode::TryAgainLater,
            Self::Ip | Self::User => CloseCode::PolicyViolation,
        }
    }
}

/// Counts open connections against the caps.
#[derive(Debug)]
pub struct Admission {
    caps: ConnectionCaps,
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    by_user: Mutex<HashMap<Arc<str>, usize>>,
}

impl Admission {
    pub fn new(caps: ConnectionCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let ticket = Ticket {
            admission: self.clone(),
            ip: None,
            user: None,
        };
        // Dropping `ticket` on refusal gives back what was taken so far.
        if self.caps.total > 0 && total > self.caps.total {
            return Err(Refused::Total);
        }
        let mut ticket = ticket;
        if !increment(&self.by_ip, ip, self.caps.per_ip) {
            return Err(Refused::Ip);
        }
        ticket.ip = Some(ip);
        Ok(ticket)
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Adds one to `key`'s count unless that passes `cap` (0: no cap).
fn increment<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: K, cap: usize) -> bool {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    let count = map.entry(key).or_insert(0);
    if cap > 0 && *count >= cap {
        return false;
    }
    *count += 1;
    true
}

fn decrement<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// A connection's places under the caps; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Ticket {
    /// The client's address, as the caps count it.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// Counts the connection against `user`'s cap too (once identified).
    pub fn admit_user(&mut self, user: &Arc<str>) -> Result<(), Refused> {
        if self.user.is_some() {
            return Ok(());
        }
        if !increment(
            &self.admission.by_user,
            user.clone(),
            self.admission.caps.per_user,
        ) {
            return Err(Refused::User);
        }
        self.user = Some(user.clone());
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = &self.ip {
            decrement(&self.admission.by_ip, ip);
        }
        if let Some(user) = &self.user {
            decrement(&self.admission.by_user, user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_refused_then_closed_and_a_steady_client_is_not() {
        let rate = Rate::new(10, 10);
        let start = Instant::now();
        let mut limiter = Limiter::new(rate, rate, start);
        let verdicts: Vec<Verdict> = (0..40)
            .map(|_| limiter.check(rate, rate, true, start))
            .collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[10..20].iter().all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts[20], Verdict::Close);

        let mut steady = Limiter::new(rate, rate, start);
        for i in 0..1000 {
            let now = start + Duration::from_millis(100 * i);
            assert_eq!(steady.check(rate, rate, true, now), Verdict::Allow);
        }
    }

    #[test]
    fn only_publishes_spend_the_publish_bucket() {
        let commands = Rate::new(100, 100);
        let publishes = Rate::new(1, 2);
        let now = Instant::now();
        let mut limiter = Limiter::new(commands, publishes, now);
        assert_eq!(
            limiter.check(commands, publishes, true, now),
            Verdict::Allow
        );
        assert_eq!(
            limiter.check(commands, publishes, true, now),
            Verdict::Allow
        );
        assert_eq!(
            limiter.check(commands, publishes, true, now),
            Verdict::Refuse
        );
        assert_eq!(
            limiter.check(commands, publishes, false, now),
            Verdict::Allow
        );
    }

    #[test]
    fn caps_hold_and_tickets_give_places_back() {
        let admission = Admission::new(ConnectionCaps {
            total: 3,
            per_user: 1,
            per_ip: 2,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let mut second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::Ip);
        let third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Total);
        let alice: Arc<str> = "alice".into();
        second.admit_user(&alice).unwrap();
        let mut other = third;
        assert_eq!(other.admit_user(&alice).unwrap_err(), Refused::User);
        drop(second);
        other.admit_user(&alice).unwrap();
        drop((first, other));
        assert_eq!(admission.open(), 0);
        assert!(admission.by_ip.lock().unwrap().is_empty());
        assert!(admission.by_user.lock().unwrap().is_empty());
    }
}
