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

use crate::auth::ChannelRules;
use crate::broker::{
    Broker, BrokerError, Control, History, HistoryQuery, HistoryRetention, Idempotency,
    PublishOptions,
};
use crate::hub::{Hub, SubscriberId};
use crate::outbox::Outbox;
use crate::protocol::{ChannelName, ClientInfo, Publication, StreamPosition};

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
    /// Per-namespace history settings, where they differ from `history`.
    rules: Arc<ChannelRules>,
    /// The server-wide history setting.
    history: HistoryRetention,
    /// How long an idempotency key is remembered.
    idempotency_window: std::time::Duration,
}

/// A local subscription in place: where the channel stands, and what recovery found.
#[derive(Debug)]
pub struct Subscribed {
    pub position: StreamPosition,
    /// `None` without `since`.
    pub recovery: Option<Recovery>,
}

/// The outcome of recovering a subscription from a position.
#[derive(Debug)]
pub enum Recovery {
    /// Every publication after the position, in offset order (possibly none).
    Recovered(Vec<Publication>),
    /// Not all of them can be had; the reason is meant for people.
    Unrecoverable(String),
}

/// Why a history read cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Unrecoverable(String),
}

impl Node {
    pub fn new(
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        rules: Arc<ChannelRules>,
        history: HistoryRetention,
        idempotency_window: std::time::Duration,
    ) -> Self {
        Self(Arc::new(Inner {
            hub,
            broker,
            channel_locks: (0..CHANNEL_LOCKS).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            rules,
            history,
            idempotency_window,
        }))
    }

    /// The channel rules this node applies.
    pub fn rules(&self) -> &ChannelRules {
        &self.0.rules
    }

    /// How much history `channel` keeps: its namespace's setting, else the server's.
    fn history_of(&self, channel: &ChannelName) -> HistoryRetention {
        self.0.rules.rule(channel).history.unwrap_or(self.0.history)
    }

    fn channel_lock(&self, channel: &ChannelName) -> &Mutex<()> {
        let index = (self.0.hasher.hash_one(channel) as usize) % self.0.channel_locks.len();
        &self.0.channel_locks[index]
    }

    /// Registers a local subscriber and returns the channel's current position, with `since`
    /// also the publications after it. Publications reach `outbox` from the moment of
    /// registration — before the position is read, so none can fall between the two; the
    /// outbox holds them back until the caller completes the subscription, then delivers only
    /// those past the position.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        id: SubscriberId,
        outbox: &Outbox,
        since: Option<&StreamPosition>,
    ) -> Result<Subscribed, BrokerError> {
        let _guard = self.channel_lock(channel).lock().await;
        if self.0.hub.add(channel, id, outbox.clone()) {
            if let Err(err) = self.0.broker.subscribe(channel).await {
                self.0.hub.remove(channel, id);
                return Err(err);
            }
        }
        let read = match since {
            None => self
                .0
                .broker
                .position(channel)
                .await
                .map(|position| Subscribed {
                    position,
                    recovery: None,
                }),
            Some(since) => {
                let query = HistoryQuery {
                    since: Some(since.offset),
                    limit: self.history_of(channel).size,
                };
                self.0.broker.history(channel, query).await.map(|history| {
                    let recovery = match continuity(since, &history, true) {
                        Ok(()) => Recovery::Recovered(history.publications),
                        Err(reason) => Recovery::Unrecoverable(reason),
                    };
                    Subscribed {
                        position: history.position,
                        recovery: Some(recovery),
                    }
                })
            }
        };
        if read.is_err() && self.0.hub.remove(channel, id) {
            let _ = self.0.broker.unsubscribe(channel).await;
        }
        read
    }

    /// Reads a channel's history: after `since` (which must be in this epoch and still within
    /// the history), or the latest publications; at most `limit` and the history size.
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, HistoryError> {
        let limit = limit
            .unwrap_or(usize::MAX)
            .min(self.history_of(channel).size);
        let query = HistoryQuery {
            since: since.map(|s| s.offset),
            limit,
        };
        let history = self.0.broker.history(channel, query).await?;
        if let Some(since) = since {
            continuity(since, &history, false).map_err(HistoryError::Unrecoverable)?;
        }
        Ok(history)
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

    /// Publishes `data` to `channel` as `info`; returns the publication's position. With an
    /// idempotency key, a retry within the window returns the first one's position and
    /// publishes nothing.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
        idempotency_key: Option<String>,
    ) -> Result<StreamPosition, BrokerError> {
        let options = PublishOptions {
            history: Some(self.history_of(channel)),
            idempotency: idempotency_key.map(|key| Idempotency {
                key,
                window: self.0.idempotency_window,
            }),
        };
        self.0.broker.publish(channel, data, info, &options).await
    }

    /// Tells every local subscriber of `channel` where the broker says it stands, so that a
    /// subscriber that missed publications (the node lost its broker connection for a while)
    /// is closed to recover instead of waiting for a publication that was already sent.
    pub fn reconcile(&self, channel: &ChannelName, position: &StreamPosition) {
        self.0.hub.reconcile(channel, position);
    }

    /// Sends a server command to every node (this one included).
    pub async fn control(&self, command: &Control) -> Result<(), BrokerError> {
        self.0.broker.control(command).await
    }

    /// Every channel with subscribers on any node, sorted by name, with their counts.
    pub async fn channels(&self) -> Result<Vec<(ChannelName, usize)>, BrokerError> {
        let mut channels: Vec<(ChannelName, usize)> =
            self.0.broker.channels().await?.into_iter().collect();
        channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(channels)
    }

    /// Makes a connection of an authenticated user reachable by server commands.
    pub fn add_user(&self, user: &Arc<str>, id: SubscriberId, outbox: &Outbox) {
        self.0.hub.add_user(user, id, outbox.clone());
    }

    pub fn remove_user(&self, user: &str, id: SubscriberId) {
        self.0.hub.remove_user(user, id);
    }

    /// Whether the broker can serve requests now.
    pub async fn ready(&self) -> Result<(), BrokerError> {
        self.0.broker.ready().await
    }
}

/// Checks that `history` continues `since` without a gap: same epoch, and (when `complete`)
/// every publication up to the current offset present.
fn continuity(since: &StreamPosition, history: &History, complete: bool) -> Result<(), String> {
    let position = &history.position;
    if position.epoch != since.epoch {
        return Err(format!(
            "the channel's history was lost: epoch {:?} is now {:?}",
            since.epoch, position.epoch
        ));
    }
    if since.offset > position.offset {
        return Err(format!(
            "offset {} is ahead of the channel, which is at {}",
            since.offset, position.offset
        ));
    }
    let missed = position.offset - since.offset;
    if missed == 0 {
        return Ok(());
    }
    match history.publications.first() {
        Some(first) if first.offset == since.offset + 1 => {}
        _ => {
            return Err(format!(
                "the history no longer reaches back to offset {}",
                since.offset + 1
            ));
        }
    }
    if complete && (history.publications.len() as u64) < missed {
        return Err(format!(
            "{missed} publications were missed; only {} can be recovered",
            history.publications.len()
        ));
    }
    Ok(())
}
