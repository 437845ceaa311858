//! Brokers: where a channel's offsets are assigned and where publications travel between
//! nodes.
//!
//! A [`Broker`] assigns each publication of a channel the next offset, atomically, and hands
//! every publication of the channels this node subscribed to to the node's [`Deliver`] sink.
//! [`MemoryBroker`](memory::MemoryBroker) serves one process; [`RedisBroker`](redis::RedisBroker)
//! serves many. Sessions and the HTTP API never see which one runs: they talk to `Node`.
//!
//! ## Ordering
//! Offsets of a channel are 1, 2, 3… with no gaps within one epoch, and publications of a
//! channel reach [`Deliver::deliver`] in offset order, one call at a time per channel.
//!
//! ## Epochs
//! An epoch names one continuous history of a channel. When a broker loses a channel's history
//! (a restart without persistence, an expiry) it starts a new epoch, so a client holding an
//! old position learns that offsets no longer line up instead of silently missing messages.
//!
//! ## Unpublished channels
//! A channel that has never been published to (or whose position was forgotten) has no stored
//! position: subscribing to it, or reading it, stores nothing, so a client that churns through
//! names costs nothing once it leaves. Its position is offset 0 in an *unpublished epoch*,
//! `~GENERATION.SECONDS`: which incarnation of the broker's storage read it, and when. The
//! first publication starts a real epoch at offset 1. An unpublished epoch that the broker can
//! still vouch for ([`History::vouched`]: same storage, read less than
//! [`Retention::position_ttl`] ago, so no epoch can have begun and been lost since) stands for
//! the channel's current epoch, whatever it is now; one it cannot vouch for is a lost epoch.
//!
//! ## Subscriptions
//! `subscribe`/`unsubscribe` are node-level: the node calls them for the first and last local
//! subscriber of a channel. A broker must deliver every publication of a subscribed channel;
//! it may deliver others too (the hub drops channels without local subscribers).
//!
//! ## History
//! A broker keeps up to [`Retention::history_size`] publications per channel, dropping them
//! once the channel has been quiet for [`Retention::history_ttl`]. History is what recovery
//! reads; a position older than the history cannot be recovered, and says so.
//!
//! ## Failures
//! A [`BrokerError`] says which of three things happened: the backend is
//! [unavailable](BrokerError::Unavailable) and the operation did not happen; it did not answer
//! in time and the operation [may or may not have happened](BrokerError::Indeterminate) — a
//! timed-out `publish` may have been stored and delivered, so a publisher that must not
//! duplicate retries with the same idempotency key; or it failed for another
//! [internal](BrokerError::Internal) reason. Every error keeps the backend's own error as its
//! source, for the log; what a client is told is decided by the node, in one place.
//!
//! ## Example
//! ```
//! use std::sync::Arc;
//! use tidings::broker::memory::MemoryBroker;
//! use tidings::broker::{Broker, Deliver, PublishOptions, Retention};
//! use tidings::protocol::{ChannelName, ClientInfo, Publication, StreamPosition};
//!
//! /// A node's side, reduced to printing what it is handed.
//! struct Print;
//!
//! impl Deliver for Print {
//!     fn deliver(&self, publication: &Publication) {
//!         println!("{} #{}: {}", publication.channel, publication.offset, publication.data);
//!     }
//!     fn reconcile(&self, _: &ChannelName, _: &StreamPosition) {}
//!     fn control(&self, _: &[u8]) {}
//!     fn event(&self, _: &ChannelName, _: &[u8]) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MemoryBroker::new(Arc::new(Print), Retention::default());
//! let channel = ChannelName::parse("chat:lobby")?;
//! broker.subscribe(&channel).await?;
//! let data = serde_json::value::to_raw_value(&"hello")?;
//! let info = ClientInfo::server();
//! let position = broker
//!     .publish(&channel, Arc::from(data), info, &PublishOptions::default())
//!     .await?;
//! assert_eq!(position.offset, 1, "offsets count from 1");
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::protocol::{ChannelName, ClientInfo, IdempotencyKey, Publication, StreamPosition};

pub mod memory;
pub mod redis;

pub use redis::RedisStore;

/// The node's side of a broker: what a broker hands down. Every method must return quickly and
/// never block (it runs on the broker's delivery path).
pub trait Deliver: Send + Sync + 'static {
    /// Called once per publication, in offset order per channel.
    fn deliver(&self, publication: &Publication);

    /// Called when the broker may have missed publications of `channel` (it lost its
    /// connection): `position` is where the channel stands now.
    fn reconcile(&self, channel: &ChannelName, position: &StreamPosition);

    /// A message some node sent with [`Broker::control`]; opaque to the broker.
    fn control(&self, message: &[u8]);

    /// An event of `channel` other than a publication (a presence change), opaque to the
    /// broker, in order with the channel's publications. Brokers whose pub/sub carries such
    /// events (Redis) hand them down; presence stores in the same process call it directly.
    fn event(&self, channel: &ChannelName, message: &[u8]);
}

/// The underlying error of a failed broker operation.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why a broker operation failed. The `context` says what was being done; the source is the
/// backend's own error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot be reached or cannot guarantee ordering now; the operation did not
    /// happen, and retrying later may work.
    #[error("broker unavailable: {context}")]
    Unavailable {
        context: &'static str,
        #[source]
        source: Source,
    },
    /// The backend did not answer in time: the operation may or may not have happened.
    #[error("broker did not answer in time: {context}")]
    Indeterminate {
        context: &'static str,
        #[source]
        source: Source,
    },
    /// Anything else the backend reported.
    #[error("broker failed: {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Source,
    },
}

/// Assigns offsets and carries publications between nodes. See the module docs for the
/// contract every implementation keeps.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Appends a publication to `channel`, assigning the next offset, and delivers it to every
    /// node subscribed to the channel. Returns the publication's position. An `Indeterminate`
    /// error means it may have been stored and delivered all the same.
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError>;

    /// Starts delivering `channel`'s publications to this node.
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// Stops delivering `channel`'s publications to this node.
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// The channel's current position: the last offset assigned and the epoch.
    async fn position(&self, channel: &ChannelName) -> Result<StreamPosition, BrokerError>;

    /// Reads the channel's history (see [`HistoryQuery`]) and its position, consistently: no
    /// publication between the two is missing from the answer.
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError>;

    /// Hands `message` to [`Deliver::control`] on every node, this one included.
    async fn control(&self, message: &[u8]) -> Result<(), BrokerError>;

    /// Hands `message` to [`Deliver::control`] on the node named `node` (a
    /// [`Broker::node_id`]) only; no other node reads it, and a node that is not there gets
    /// nothing. Messages to one node arrive in the order they were sent, whoever sent them.
    async fn control_to(&self, node: &str, message: &[u8]) -> Result<(), BrokerError>;

    /// The ids of the nodes alive, this one included (those that announced themselves
    /// recently).
    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        Ok(vec![self.node_id()])
    }

    /// Publishes this node's channels and their local subscriber counts for the other nodes.
    /// The node calls it every [`ANNOUNCE_PERIOD`]; an announcement not renewed within three
    /// periods counts as a node gone.
    async fn announce(&self, counts: &[(ChannelName, usize)]) -> Result<(), BrokerError>;

    /// The channels the *other* nodes announced, with their subscriber counts summed.
    async fn channels(&self) -> Result<HashMap<ChannelName, usize>, BrokerError>;

    /// Publishes this node's summary for the other nodes' admin pages; renewed like
    /// [`Broker::announce`].
    async fn announce_node(&self, _summary: &NodeSummary) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The summaries the *other* nodes announced (none with a broker that serves one node).
    async fn nodes(&self) -> Result<Vec<NodeSummary>, BrokerError> {
        Ok(Vec::new())
    }

    /// This node's id among the nodes.
    fn node_id(&self) -> String {
        "local".into()
    }

    /// Whether the broker can serve requests now (for `/readyz`).
    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Closes connections on shutdown.
    async fn close(&self) {}
}

/// What a node tells the others about itself, for the admin page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeSummary {
    pub id: String,
    /// The operator's name for the node (`--node-name`); empty from a node that predates it.
    #[serde(default)]
    pub name: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub channels: u64,
    pub uptime_seconds: u64,
}

/// How often a node announces its channel counts ([`Broker::announce`]).
pub const ANNOUNCE_PERIOD: Duration = Duration::from_secs(5);

/// How much of each channel a broker keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept per channel for history and recovery (0: none).
    pub history_size: usize,
    /// History is dropped once the channel has had no publication for this long.
    pub history_ttl: Duration,
    /// A channel's position (offset, epoch) is kept this long after its last use; after that
    /// the channel starts again at offset 1 in a new epoch.
    pub position_ttl: Duration,
}

impl Retention {
    /// The server-wide history setting, used where a publication does not name its own.
    pub fn history(&self) -> HistoryRetention {
        HistoryRetention {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }
}

/// How much history one channel keeps: at most `size` publications, dropped once the channel
/// has been quiet for `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRetention {
    pub size: usize,
    pub ttl: Duration,
}

/// How one publication is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The channel's history setting (its namespace's); `None`: the broker's [`Retention`].
    pub history: Option<HistoryRetention>,
    /// Store the publication once per key: a retry with the same key within the window is
    /// answered with the first one's position and not published again.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key and how long it is remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub window: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(10 * 60),
            position_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// What `history` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications with a greater offset; `None`: the latest ones.
    pub since: Option<u64>,
    /// At most this many (the oldest ones after `since`, or the newest without it).
    pub limit: usize,
    /// The epoch of a `since` read while the channel was unpublished, for the broker to vouch
    /// for (see [`History::vouched`]).
    pub unpublished: Option<Arc<str>>,
}

impl HistoryQuery {
    /// Applies the query to a channel's history, given oldest first (owned or borrowed).
    pub fn select<P: std::borrow::Borrow<Publication>>(
        &self,
        history: impl IntoIterator<Item = P>,
    ) -> Vec<P> {
        let after = history
            .into_iter()
            .filter(|p| self.since.is_none_or(|since| p.borrow().offset > since));
        match self.since {
            Some(_) => after.take(self.limit).collect(),
            None => {
                let mut all: Vec<P> = after.collect();
                let skip = all.len().saturating_sub(self.limit);
                all.drain(..skip);
                all
            }
        }
    }
}

/// Publications from a channel's history, oldest first, and the channel's position when they
/// were read.
#[derive(Clone, Debug)]
pub struct History {
    pub publications: Vec<Publication>,
    pub position: StreamPosition,
    /// [`HistoryQuery::unpublished`] is an unpublished epoch this broker handed out, from the
    /// storage it reads now, less than the position TTL ago: no epoch can have begun and been
    /// lost since, so it stands for the current epoch.
    pub vouched: bool,
}

/// The epoch of a channel with nothing published, read from the storage named `generation`
/// at `seconds` (on that storage's clock).
pub(crate) fn unpublished_epoch(generation: &str, seconds: u64) -> Arc<str> {
    format!("~{generation}.{seconds}").into()
}

/// The generation and time of an unpublished epoch; `None` for any other epoch.
pub(crate) fn parse_unpublished(epoch: &str) -> Option<(&str, u64)> {
    let (generation, seconds) = epoch.strip_prefix('~')?.split_once('.')?;
    Some((generation, seconds.parse().ok()?))
}

/// A fresh random epoch: short, URL-safe, unlikely to repeat.
pub(crate) fn new_epoch() -> Arc<str> {
    let mut rng = fastrand::Rng::new();
    (0..8)
        .map(|_| rng.alphanumeric())
        .collect::<String>()
        .into()
}
