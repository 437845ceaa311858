//! Node: this process's handle on the system — the hub of local subscribers, the broker, the
//! per-namespace options, and the registry of which local connections belong to which user.
//!
//! One concept per file: `local` is the broker's sink and dispatches what it hands down;
//! `users` keeps user → connections and their mailboxes; `lookup` asks every node for a
//! user's connections; `presence` turns presence changes
//! into `join`/`leave` pushes; `streams` routes commands to stream sessions; `control` is the
//! node-to-node message they travel in; `continuity` decides whether a history continues a
//! position; `receipts` tracks delivery receipts.
//!
//! Sessions and the HTTP API call only the node. It keeps the hub and the broker in step: the
//! first local subscriber of a channel subscribes the node at the broker (undone if that
//! fails), the last one to leave unsubscribes it. Both happen under a per-channel async lock,
//! so a second subscriber never gets its reply before the node's broker subscription is in
//! place. Whether a connection is subscribed to a channel is its [`Outbox`]'s to say (that is
//! where its deliveries are filtered); the hub is only the index for fan-out.
//!
//! ## Server commands
//! Subscribing, unsubscribing and disconnecting a user (from the server API) must reach the
//! user's connections on every node: the node encodes a `Control` message, the broker carries
//! it as opaque bytes to every node, and each node hands it to the [`Mailbox`] of each of its
//! connections of that user.
//!
//! ## Presence
//! In namespaces with `presence=true` a subscription makes its connection present: the node
//! adds it to the [`PresenceStore`] once the subscription is in place (a failure undoes the
//! subscription) and removes it when the connection leaves. Every node receives each change
//! as an event from the broker's path and pushes `join`/`leave` to its local subscribers as
//! the namespace's `join-leave` option says — one by one, or, past `join-leave-limit` present
//! connections, netted into one `presence_batch` push per `join-leave-batch` interval.
//!
//! ## Failures
//! A [`NodeError`] is what a failed operation tells whoever asked: [`NodeError::code`] is the
//! one mapping from a broker failure to the protocol's error code (and so to the server API's
//! HTTP status), and [`NodeError::client_message`] the documented text a client sees. The
//! backend's own error text stays in the log.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::auth::{ChannelRules, Identity};
use crate::broker::{
    ANNOUNCE_PERIOD, Broker, BrokerError, History, HistoryQuery, HistoryRetention, Idempotency,
    NodeSummary, PublishOptions,
};
use crate::config::Namespaces;
use crate::hub::Hub;
use crate::limits::EventBudget;
use crate::metrics::{Metrics, metrics};
use crate::outbox::Outbox;
use crate::presence::{Page, PresenceStore, Stats};
use crate::protocol::{
    ChannelName, ClientInfo, ErrorCode, IdempotencyKey, Member, Publication, StreamPosition,
};
use crate::webhook::Lifecycle;
use continuity::{continuity, unpublished};

mod continuity;
mod control;
mod local;
mod lookup;
mod presence;
mod receipts;
mod streams;
mod users;

pub use continuity::ContinuityError;
pub use local::Local;
pub use lookup::Lookup;
pub use streams::{StreamError, StreamInbox, StreamInput, session_node};
pub use users::{Mailbox, UserCommand};

const CHANNEL_LOCKS: usize = 256;

/// Cheap-to-clone handle shared by every session and request handler.
#[derive(Clone, Debug)]
pub struct Node(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    local: Arc<Local>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    /// Serialises subscribe/unsubscribe per channel (sharded: channels may share a lock).
    channel_locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    namespaces: Arc<Namespaces>,
    rules: ChannelRules,
    /// How long an idempotency key is remembered.
    idempotency_window: Duration,
    /// Lifecycle webhooks and receipts, when configured.
    lifecycle: Option<Arc<Lifecycle>>,
    /// The nodes alive, for the commands of stream sessions.
    live_nodes: std::sync::Mutex<streams::LiveNodes>,
    /// The operator's name for this node (`--node-name`), beside the broker's id.
    name: String,
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
    /// Not all of them can be had.
    Unrecoverable(ContinuityError),
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Unrecoverable(#[from] ContinuityError),
    #[error("presence is not enabled in the namespace of {0}")]
    PresenceOff(ChannelName),
}

impl NodeError {
    /// The protocol's error code for this failure; the server API's HTTP status follows from
    /// it ([`ErrorCode::http_status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Broker(BrokerError::Unavailable { .. } | BrokerError::Indeterminate { .. }) => {
                ErrorCode::Unavailable
            }
            Self::Broker(BrokerError::Internal { .. }) => ErrorCode::Internal,
            Self::Unrecoverable(_) => ErrorCode::UnrecoverablePosition,
            Self::PresenceOff(_) => ErrorCode::NotEnabled,
        }
    }

    /// What a client is told: documented texts, never the backend's own error.
    pub fn client_message(&self) -> String {
        match self {
            Self::Broker(BrokerError::Unavailable { .. }) => {
                "the broker cannot take requests now; retry later".into()
            }
            Self::Broker(BrokerError::Indeterminate { .. }) => {
                "the broker did not answer in time: the publication may or may not have been \
                 stored; retry with the same idempotency_key to be sure"
                    .into()
            }
            Self::Broker(BrokerError::Internal { .. }) => "internal error".into(),
            Self::Unrecoverable(err) => err.to_string(),
            Self::PresenceOff(_) => self.to_string(),
        }
    }
}

impl Node {
    pub fn new(
        name: String,
        local: Arc<Local>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        idempotency_window: Duration,
        lifecycle: Option<Arc<Lifecycle>>,
    ) -> Self {
        let namespaces = local.namespaces.clone();
        local.lookups.answer_with(&broker, name.clone());
        Self(Arc::new(Inner {
            local,
            broker,
            presence,
            channel_locks: (0..CHANNEL_LOCKS).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            rules: ChannelRules::new(namespaces.clone()),
            namespaces,
            idempotency_window,
            lifecycle,
            live_nodes: std::sync::Mutex::default(),
            name,
        }))
    }

    /// Who may subscribe and publish where.
    pub fn rules(&self) -> &ChannelRules {
        &self.0.rules
    }

    fn hub(&self) -> &Hub {
        &self.0.local.hub
    }

    /// How much history `channel` keeps: its namespace's setting.
    fn history_of(&self, channel: &ChannelName) -> HistoryRetention {
        let history = self.0.namespaces.get(channel.namespace()).history;
        HistoryRetention {
            size: history.size,
            ttl: history.ttl,
        }
    }

    fn channel_lock(&self, channel: &ChannelName) -> &Mutex<()> {
        let index = (self.0.hasher.hash_one(channel) as usize) % self.0.channel_locks.len();
        &self.0.channel_locks[index]
    }

    /// Subscribes a connection and returns the channel's current position, with `since` also
    /// the publications after it. The subscription is pending in `outbox` from before the hub
    /// knows it, so publications that race the read are held, not lost; the caller completes
    /// it ([`Outbox::complete_subscription`]) with its reply. Where the namespace has presence,
    /// the connection is then present (its own join is held like a publication). On failure
    /// nothing is left.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: &Outbox,
        since: Option<&StreamPosition>,
        identity: &Identity,
        budget: &mut EventBudget,
    ) -> Result<Subscribed, NodeError> {
        let _guard = self.channel_lock(channel).lock().await;
        outbox.begin_subscription(channel);
        if self.hub().add(channel, outbox.clone()) {
            if let Err(err) = self.0.broker.subscribe(channel).await {
                self.hub().remove(channel, outbox.id());
                outbox.end_subscription(channel);
                return Err(err.into());
            }
            self.count(&metrics().channels, channel, 1);
        }
        let mut read = self.read_position(channel, since).await;
        if read.is_ok() && self.has_presence(channel) {
            let member = Member {
                client: outbox.client().clone(),
                user: identity.user.clone(),
                authenticated: identity.authenticated,
                info: identity.info.clone(),
            };
            match self.0.presence.add(channel, &member).await {
                Ok(()) => self.count(&metrics().presence_members, channel, 1),
                Err(err) => read = Err(err.into()),
            }
        }
        if read.is_ok() {
            self.count(&metrics().subscriptions, channel, 1);
            if let Some(lifecycle) = &self.0.lifecycle {
                // Member events are about users: an anonymous name proves nobody.
                let present = self.has_presence(channel) && identity.authenticated;
                lifecycle.subscribed(channel, outbox.client(), &identity.user, present, budget);
            }
        } else {
            outbox.end_subscription(channel);
            if self.hub().remove(channel, outbox.id()) {
                self.count(&metrics().channels, channel, -1);
                let _ = self.0.broker.unsubscribe(channel).await;
            }
        }
        read
    }

    /// Moves one of the per-namespace gauges of `channel`'s namespace.
    fn count(&self, gauge: &prometheus::IntGaugeVec, channel: &ChannelName, by: i64) {
        let namespace = self.0.namespaces.label(channel.namespace());
        gauge.with_label_values(&[namespace]).add(by);
    }

    fn has_presence(&self, channel: &ChannelName) -> bool {
        self.0.namespaces.get(channel.namespace()).presence
    }

    async fn read_position(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
    ) -> Result<Subscribed, NodeError> {
        let Some(since) = since else {
            let position = self.0.broker.position(channel).await?;
            return Ok(Subscribed {
                position,
                recovery: None,
            });
        };
        let query = HistoryQuery {
            since: Some(since.offset),
            limit: self.history_of(channel).size,
            unpublished: unpublished(since),
        };
        let history = self.0.broker.history(channel, query).await?;
        let recovery = match continuity(since, &history, true) {
            Ok(()) => Recovery::Recovered(history.publications),
            Err(reason) => Recovery::Unrecoverable(reason),
        };
        Ok(Subscribed {
            position: history.position,
            recovery: Some(recovery),
        })
    }

    /// Reads a channel's history: after `since` (which must be in this epoch and still within
    /// the history), or the latest publications; at most `limit` and the history size.
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, NodeError> {
        let limit = limit
            .unwrap_or(usize::MAX)
            .min(self.history_of(channel).size);
        let query = HistoryQuery {
            since: since.map(|s| s.offset),
            limit,
            unpublished: since.and_then(unpublished),
        };
        let history = self.0.broker.history(channel, query).await?;
        if let Some(since) = since {
            continuity(since, &history, false)?;
        }
        Ok(history)
    }

    /// Unsubscribes a connection: its outbox drops what is in flight for the channel, the hub
    /// forgets it, and the last one out unsubscribes the node at the broker. False when the
    /// connection was not subscribed.
    pub async fn unsubscribe(&self, channel: &ChannelName, outbox: &Outbox) -> bool {
        if !outbox.end_subscription(channel) {
            return false;
        }
        self.count(&metrics().subscriptions, channel, -1);
        if let Some(lifecycle) = &self.0.lifecycle {
            lifecycle.unsubscribed(channel, outbox.client());
        }
        let _guard = self.channel_lock(channel).lock().await;
        if self.hub().remove(channel, outbox.id()) {
            self.count(&metrics().channels, channel, -1);
            if let Err(err) = self.0.broker.unsubscribe(channel).await {
                // The broker may keep sending this channel; the hub drops it, so only
                // bandwidth is wasted.
                tracing::warn!(%channel, %err, "broker unsubscribe failed");
            }
        }
        if self.has_presence(channel) {
            self.count(&metrics().presence_members, channel, -1);
            if let Err(err) = self.0.presence.remove(channel, outbox.client()).await {
                // The store retries: a member that left must not stay present.
                tracing::warn!(%channel, %err, "presence removal failed; retrying later");
            }
        }
        true
    }

    /// A page of who is present in `channel`, by client id after `after`.
    pub async fn presence(
        &self,
        channel: &ChannelName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, NodeError> {
        if !self.has_presence(channel) {
            return Err(NodeError::PresenceOff(channel.clone()));
        }
        Ok(self.0.presence.page(channel, after, limit).await?)
    }

    /// How many connections and users are present in `channel`.
    pub async fn presence_stats(&self, channel: &ChannelName) -> Result<Stats, NodeError> {
        if !self.has_presence(channel) {
            return Err(NodeError::PresenceOff(channel.clone()));
        }
        Ok(self.0.presence.stats(channel).await?)
    }

    /// Unsubscribes a connection from everything it holds.
    pub async fn leave_all(&self, outbox: &Outbox) {
        for channel in outbox.channels() {
            self.unsubscribe(&channel, outbox).await;
        }
    }

    /// [`Self::leave_all`] for code that cannot wait (a `Drop`): a task does it.
    pub fn leave_all_later(&self, outbox: &Outbox) {
        if outbox.channels().is_empty() {
            return;
        }
        // Without a runtime the process is exiting, and nobody is left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (node, outbox) = (self.clone(), outbox.clone());
            runtime.spawn(async move { node.leave_all(&outbox).await });
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
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<StreamPosition, NodeError> {
        let options = PublishOptions {
            history: Some(self.history_of(channel)),
            idempotency: idempotency_key.map(|key| Idempotency {
                key,
                window: self.0.idempotency_window,
            }),
        };
        let started = std::time::Instant::now();
        let position = self.0.broker.publish(channel, data, info, &options).await?;
        let namespace = self.0.namespaces.label(channel.namespace());
        metrics().published(namespace, started.elapsed());
        self.track_receipt(channel, &position).await;
        Ok(position)
    }

    /// Every channel with subscribers on any node, sorted by name, with their counts: this
    /// node's live, the others' as of their last announcement.
    pub async fn channels(&self) -> Result<Vec<(ChannelName, usize)>, NodeError> {
        let mut all = self.0.broker.channels().await?;
        for (channel, count) in self.hub().local_channels() {
            *all.entry(channel).or_default() += count;
        }
        let mut channels: Vec<(ChannelName, usize)> = all.into_iter().collect();
        channels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(channels)
    }

    /// Announces this node's channel counts and summary every [`ANNOUNCE_PERIOD`] until
    /// `stop`.
    pub async fn announce_until(&self, stop: CancellationToken) {
        loop {
            let counts = self.hub().local_channels();
            if let Err(err) = self.0.broker.announce(&counts).await {
                tracing::debug!(%err, "announcing channel counts failed");
            }
            if let Err(err) = self.0.broker.announce_node(&self.summary()).await {
                tracing::debug!(%err, "announcing the node summary failed");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ANNOUNCE_PERIOD) => {}
            }
        }
    }

    /// This node's figures, from its own metrics.
    pub fn summary(&self) -> NodeSummary {
        let m = metrics();
        NodeSummary {
            id: self.0.broker.node_id(),
            name: self.0.name.clone(),
            connections: u64::try_from(m.connections.get()).unwrap_or(0),
            subscriptions: Metrics::total(&m.subscriptions),
            channels: Metrics::total(&m.channels),
            uptime_seconds: m.uptime().as_secs(),
        }
    }

    /// Every node's summary, this one's first.
    pub async fn nodes(&self) -> Result<Vec<NodeSummary>, NodeError> {
        let mut nodes = vec![self.summary()];
        nodes.extend(self.0.broker.nodes().await?);
        Ok(nodes)
    }

    /// Whether the broker can serve requests now.
    pub async fn ready(&self) -> Result<(), NodeError> {
        Ok(self.0.broker.ready().await?)
    }
}
