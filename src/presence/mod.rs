//! Presence stores: who is present in each channel, across every node, and the join and leave
//! events that follow from it.
//!
//! A [`PresenceStore`] keeps, per channel, the connections present there ([`Member`]s) and how
//! many connections each user has, and announces every change to every node as a
//! [`PresenceEvent`] through the node's [`Deliver::event`] — the same path, and the same
//! order, as the channel's publications. [`MemoryPresence`](memory::MemoryPresence) serves one
//! process; [`RedisPresence`](redis::RedisPresence) serves many. Sessions and the HTTP API never
//! see which one runs: they talk to `Node`.
//!
//! ## Guarantees
//! - A client is present at most once per channel; adding it again changes nothing and
//!   announces nothing. Removing a client that is not present announces nothing.
//! - Each change is announced exactly once to every node subscribed to the channel, in order
//!   with the channel's publications.
//! - `stats` costs the same for ten members as for a hundred thousand: it never scans them.
//! - Paging with [`Page::cursor`] until it is `None` returns every member present throughout
//!   exactly once (members are ordered by client id).
//!
//! ## Failures of a node
//! A node that dies without a goodbye (SIGKILL, a lost host) cannot remove its members. Each
//! store says how its members outlive their node: the memory store dies with it; the Redis
//! store's entries expire a bounded time after their node's last refresh, and the survivors
//! announce those members' leaves, each exactly once.
//!
//! ## Failures of the backend
//! Operations fail with [`BrokerError`] as broker operations do. A failed `remove` is retried
//! by the store itself: a member it could not remove must not stay present forever.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerError;
#[cfg(doc)]
use crate::broker::Deliver;
use crate::protocol::{ChannelName, Member};

pub mod memory;
pub mod redis;

/// One page of a channel's members, ordered by client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub members: Vec<Member>,
    /// Pass it back for the next page; `None` on the last one.
    pub cursor: Option<String>,
}

/// How many connections and distinct users are present in a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub clients: u64,
    pub users: u64,
}

/// Whether a presence change is a join or a leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Join,
    Leave,
}

/// One presence change as every node receives it (JSON through [`Deliver::event`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    #[serde(rename = "op")]
    pub change: Change,
    pub member: Member,
    /// The user's first connection in the channel (a join) or last (a leave).
    pub user_edge: bool,
    /// Connections present in the channel after the change.
    pub clients: u64,
}

impl PresenceEvent {
    pub fn encode(&self) -> Vec<u8> {
        // A plain struct of strings, numbers and a JSON value: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(message: &[u8]) -> Option<Self> {
        serde_json::from_slice(message).ok()
    }
}

/// Who is present where. See the module docs for the contract every implementation keeps.
///
/// # Example
///
/// One user's two connections join and one leaves: each change is announced once, in order,
/// saying whether it was the user's first or last connection there; adding a member again
/// announces nothing; `stats` counts connections and users.
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use tidings::broker::Deliver;
/// use tidings::presence::memory::MemoryPresence;
/// use tidings::presence::{Change, PresenceEvent, PresenceStore, Stats};
/// use tidings::protocol::{ChannelName, Member, Publication, StreamPosition};
///
/// /// A node that only listens for presence changes.
/// #[derive(Default)]
/// struct Heard(Mutex<Vec<PresenceEvent>>);
///
/// impl Deliver for Heard {
///     fn deliver(&self, _: &Publication) {}
///     fn reconcile(&self, _: &ChannelName, _: &StreamPosition) {}
///     fn control(&self, _: &[u8]) {}
///     fn event(&self, _: &ChannelName, message: &[u8]) {
///         self.0.lock().unwrap().extend(PresenceEvent::decode(message));
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tidings::broker::BrokerError> {
/// let heard = Arc::new(Heard::default());
/// let store = MemoryPresence::new(heard.clone());
/// let room = ChannelName::parse("room").unwrap();
/// let ann = |client: &str| Member {
///     client: client.into(),
///     user: "ann".into(),
///     authenticated: true,
///     info: None,
/// };
/// store.add(&room, &ann("c1")).await?;
/// store.add(&room, &ann("c1")).await?; // already present: nothing happens
/// store.add(&room, &ann("c2")).await?;
/// assert_eq!(store.stats(&room).await?, Stats { clients: 2, users: 1 });
/// store.remove(&room, "c1").await?;
///
/// let heard = heard.0.lock().unwrap();
/// let told: Vec<_> = heard.iter().map(|e| (e.change, e.user_edge, e.clients)).collect();
/// // (change, the user's first or last connection here, connections present after it)
/// assert_eq!(
///     told,
///     [(Change::Join, true, 1), (Change::Join, false, 2), (Change::Leave, false, 1)]
/// );
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait PresenceStore: Send + Sync + fmt::Debug + 'static {
    /// Makes `member` present in `channel` and announces its join.
    async fn add(&self, channel: &ChannelName, member: &Member) -> Result<(), BrokerError>;

    /// Makes `client` absent from `channel` and announces its leave.
    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), BrokerError>;

    /// At most `limit` members whose client id sorts after `after`.
    async fn page(
        &self,
        channel: &ChannelName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BrokerError>;

    /// How many connections and users are present, without scanning them.
    async fn stats(&self, channel: &ChannelName) -> Result<Stats, BrokerError>;

    /// Stops background work on shutdown.
    async fn close(&self) {}
}
