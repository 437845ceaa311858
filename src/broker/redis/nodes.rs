//! Node announcements: each node writes its channels' local subscriber counts under its own
//! expiring key and its id with the time into a sorted set, so that any node can sum the
//! counts of the nodes alive (`GET /api/channels`). And the control channels: one every node
//! reads, and one per node for messages to it alone.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::{Error as RedisError, PubsubInterface};

use super::{Inner, unavailable};
use crate::broker::{ANNOUNCE_PERIOD, BrokerError, NodeSummary};
use crate::protocol::ChannelName;

/// A node whose announcement is older than this counts as gone.
const ANNOUNCE_TTL: Duration = Duration::from_secs(3 * ANNOUNCE_PERIOD.as_secs());

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Inner {
    /// This node's own control channel: messages for it alone.
    pub(super) fn node_control_channel(&self, node: &str) -> String {
        format!("{}:{node}", self.control_channel)
    }

    /// Whether `pubsub` carries control messages for this node.
    pub(super) fn is_control(&self, pubsub: &str) -> bool {
        pubsub
            .strip_prefix(self.control_channel.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.strip_prefix(':') == Some(&self.node_id))
    }

    /// Subscribes to the channels of server commands (every node's and this node's) and
    /// heartbeats.
    pub(super) async fn control_subscribe(&self) -> Result<(), RedisError> {
        let own = self.node_control_channel(&self.node_id);
        for channel in [&self.control_channel, &own, &self.canary_channel] {
            if self.sharded {
                self.subscriber.ssubscribe(channel.clone()).await?;
            } else {
                self.subscriber.subscribe(channel.clone()).await?;
            }
        }
        Ok(())
    }

    /// Keys of the node announcements, all in one slot so they can be read together.
    fn nodes_key(&self) -> String {
        format!("{{{}:nodes}}", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{{{}:nodes}}:{id}", self.prefix)
    }

    /// Writes the counts (JSON, expiring) under this node's key and the node's id with the
    /// time into a sorted set, so that any node can sum the counts of the nodes alive.
    pub(super) async fn announce(
        &self,
        counts: &[(ChannelName, usize)],
    ) -> Result<(), BrokerError> {
        use fred::interfaces::{KeysInterface, SortedSetsInterface};
        use fred::types::Expiration;
        let inner = self;
        let counts: HashMap<&str, usize> = counts
            .iter()
            .map(|(channel, count)| (channel.as_str(), *count))
            .collect();
        let json = serde_json::to_string(&counts).unwrap_or_else(|_| "{}".into());
        let now = unix_seconds();
        let ttl = i64::try_from(ANNOUNCE_TTL.as_secs()).unwrap_or(15);
        let fail = |err| unavailable("announcing channel counts", err);
        let key = inner.node_key(&inner.node_id);
        let expiry = Some(Expiration::EX(ttl));
        inner
            .client
            .set::<(), _, _>(key, json, expiry, None, false)
            .await
            .map_err(fail)?;
        let member = (now as f64, inner.node_id.as_str());
        inner
            .client
            .zadd::<(), _, _>(inner.nodes_key(), None, None, false, false, member)
            .await
            .map_err(fail)?;
        let gone = (now - 4 * ttl) as f64;
        inner
            .client
            .zremrangebyscore::<(), _, _, _>(inner.nodes_key(), f64::NEG_INFINITY, gone)
            .await
            .map_err(fail)
    }

    /// The ids of the other nodes that announced themselves within the announcement TTL.
    pub(super) async fn others_alive(&self) -> Result<Vec<String>, BrokerError> {
        use fred::interfaces::SortedSetsInterface;
        let since = (unix_seconds() - i64::try_from(ANNOUNCE_TTL.as_secs()).unwrap_or(15)) as f64;
        let nodes: Vec<String> = self
            .client
            .zrangebyscore(self.nodes_key(), since, f64::INFINITY, false, None)
            .await
            .map_err(|err| unavailable("listing nodes", err))?;
        Ok(nodes.into_iter().filter(|id| *id != self.node_id).collect())
    }

    /// The channels the other nodes announced, their counts summed.
    pub(super) async fn other_channels(&self) -> Result<HashMap<ChannelName, usize>, BrokerError> {
        use fred::interfaces::KeysInterface;
        let inner = self;
        let others: Vec<String> = self
            .others_alive()
            .await?
            .iter()
            .map(|id| inner.node_key(id))
            .collect();
        let mut total: HashMap<ChannelName, usize> = HashMap::new();
        if others.is_empty() {
            return Ok(total);
        }
        let announced: Vec<Option<String>> = inner
            .client
            .mget(others)
            .await
            .map_err(|err| unavailable("reading node announcements", err))?;
        for json in announced.into_iter().flatten() {
            let counts: HashMap<String, usize> = serde_json::from_str(&json).unwrap_or_default();
            for (name, count) in counts {
                if let Ok(channel) = ChannelName::parse(&name) {
                    *total.entry(channel).or_default() += count;
                }
            }
        }
        Ok(total)
    }

    fn summary_key(&self, id: &str) -> String {
        format!("{{{}:nodes}}:{id}:summary", self.prefix)
    }

    /// Writes this node's summary under an expiring key beside its channel counts.
    pub(super) async fn announce_node(&self, summary: &NodeSummary) -> Result<(), BrokerError> {
        use fred::interfaces::KeysInterface;
        use fred::types::Expiration;
        let json = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
        let ttl = i64::try_from(ANNOUNCE_TTL.as_secs()).unwrap_or(15);
        self.client
            .set::<(), _, _>(
                self.summary_key(&self.node_id),
                json,
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await
            .map_err(|err| unavailable("announcing the node summary", err))
    }

    /// The summaries of the other nodes alive.
    pub(super) async fn other_nodes(&self) -> Result<Vec<NodeSummary>, BrokerError> {
        use fred::interfaces::KeysInterface;
        let keys: Vec<String> = self
            .others_alive()
            .await?
            .iter()
            .map(|id| self.summary_key(id))
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let summaries: Vec<Option<String>> = self
            .client
            .mget(keys)
            .await
            .map_err(|err| unavailable("reading node summaries", err))?;
        Ok(summaries
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }
}
