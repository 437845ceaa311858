//! Node: this process's handle on the system — the hub of local subscribers and the broker.
//!
//! Sessions and the HTTP API call only the node. It keeps the two in step: the first local
//! subscriber of a channel subscribes the node at the broker (undone if that fails), the last
//! one to leave unsubscribes it. Both happen under a per-channel async lock, so a second
//! subscriber never gets its reply before the node's broker subscription is in place.

use std::hash::BuildHasher;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::Mutex;

use crate::broker::{Broker, BrokerError};
use crate::hub::{Hub, SubscriberId};
use crate::outbox::Outbox;
use crate::protocol::{ChannelName, ClientInfo, StreamPosition};

const CHANNEL_LOCKS: usize = 256;

/// Cheap-to-clone handle shared by every session and request handler.
#[derive(Clone, Debug)]
pub struct Node(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    /// Serialises subscribe/unsubscribe per channel (sharded: channels may share a lock).
    channel_locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Node {
    pub fn new(hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Self {
        Self(Arc::new(Inner {
            hub,
            broker,
            channel_locks: (0..CHANNEL_LOCKS).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }))
    }

    fn channel_lock(&self, channel: &ChannelName) -> &Mutex<()> {
        let index = (self.0.hasher.hash_one(channel) as usize) % self.0.channel_locks.len();
        &self.0.channel_locks[index]
    }

    /// Registers a local subscriber and returns the channel's current position. Publications
    /// reach `outbox` from the moment of registration, possibly before this returns; the
    /// outbox's pending state holds them back until the caller completes the subscription.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        id: SubscriberId,
        outbox: &Outbox,
    ) -> Result<StreamPosition, BrokerError> {
        let _guard = self.channel_lock(channel).lock().await;
        if self.0.hub.add(channel, id, outbox.clone()) {
            if let Err(err) = self.0.broker.subscribe(channel).await {
                self.0.hub.remove(channel, id);
                return Err(err);
            }
        }
        match self.0.broker.position(channel).await {
            Ok(position) => Ok(position),
            Err(err) => {
                if self.0.hub.remove(channel, id) {
                    let _ = self.0.broker.unsubscribe(channel).await;
                }
                Err(err)
            }
        }
    }

    /// Removes a local subscriber; the last one out unsubscribes the node at the broker.
    pub async fn unsubscribe(&self, channel: &ChannelName, id: SubscriberId) {
        let _guard = self.channel_lock(channel).lock().await;
        if self.0.hub.remove(channel, id) {
            if let Err(err) = self.0.broker.unsubscribe(channel).await {
                // The broker may keep sending this channel; the hub drops it, so only
                // bandwidth is wasted.
                tracing::warn!(%channel, %err, "broker unsubscribe failed");
            }
        }
    }

    /// Publishes `data` to `channel` as `info`; returns the publication's position.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
    ) -> Result<StreamPosition, BrokerError> {
        self.0.broker.publish(channel, data, info).await
    }

    /// How many connections on this node subscribe to `channel`.
    pub fn local_subscribers(&self, channel: &ChannelName) -> usize {
        self.0.hub.subscriber_count(channel)
    }
}
