//! [`ConnectionId`]: the name of one local connection, unique in this process. A leaf: the hub
//! keys subscribers by it, the node keys users' connections by it, and the outbox is named by
//! it, without any of them knowing the others.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A local connection's id: unique in this process, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

static NEXT: AtomicU64 = AtomicU64::new(1);

impl ConnectionId {
    /// A new id, never handed out before.
    pub fn next() -> Self {
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number, to spread connections evenly (the shutdown drain).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused() {
        let (a, b) = (ConnectionId::next(), ConnectionId::next());
        assert!(b > a);
    }
}
