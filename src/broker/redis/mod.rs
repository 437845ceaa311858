//! RedisBroker: offsets, history and fan-out between nodes through Redis (standalone or
//! Cluster).
//!
//! ## Keys and scripts
//! A channel `C` lives under the hash tag `{C}`, so its keys and its pub/sub channel share one
//! cluster slot: `PREFIX:{C}:meta` (hash: `o` last offset, `e` epoch), `PREFIX:{C}:history`
//! (list, newest first, entries `offset:payload`) and the pub/sub channel `PREFIX:{C}`.
//! `publish.lua` assigns the offset, appends and trims the history, sets expiries and
//! publishes, in one atomic step; `read.lua` reads a position and its history together.
//!
//! ## Fan-out
//! One dedicated subscriber connection per node, subscribed to exactly the channels that have
//! local subscribers (`SUBSCRIBE`, or `SSUBSCRIBE` in cluster mode, where the subscription goes
//! to the shard that owns the channel). Each node therefore receives only what its clients use,
//! and each publication once.
//!
//! ## Faults
//! A node starts whether or not Redis answers, and is ready once it does (`link`). While the
//! command connection is down, commands fail at once with [`BrokerError::Unavailable`]; one
//! sent that gets no answer in time fails too — and a publish then with
//! [`BrokerError::Indeterminate`]: it may have been stored.
//! The connections reconnect with exponential back-off. After the subscriber reconnects, the
//! node subscribes again and reconciles every channel with its position in Redis: subscribers
//! that missed publications meanwhile are closed to recover from history. If Redis lost the
//! data, the next read starts a new epoch and clients are told they cannot recover.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::EventInterface;
use fred::prelude::{Client, ClientLike, Error as RedisError, PubsubInterface, Value};
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Broker, BrokerError, Deliver, History, HistoryQuery, NodeSummary, PublishOptions, Retention,
    new_epoch,
};
use crate::protocol::{ChannelName, ClientInfo, Publication, StreamPosition};

mod canary;
mod failover;
mod link;
mod nodes;
mod pubsub;
mod url;

pub use link::Mismatch;
use url::redis_config;
pub use url::{RedisTls, UrlError};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const READ_LUA: &str = include_str!("read.lua");

/// How long any Redis command may take before it fails (and a publish is refused).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for Redis to answer a PING.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Pub/sub messages buffered between the connection and the delivery task; overflowing it is
/// detected (and recovered from) like any other gap. The delivery task keeps up (a backlog of
/// a message or two at a million deliveries a second to 1,000 subscribers), so this absorbs
/// bursts; every slot is allocated up front, nine channels' worth (docs/benchmarks.md).
const MESSAGE_BUFFER: usize = 4096;
/// Slots of the command client's event channels (it receives no pub/sub messages).
const EVENT_BUFFER: usize = 32;
/// How often subscribed channels are refreshed and reconciled (more often if the position TTL
/// is short).
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(30);

/// Where Redis is and how to use it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://host:port[/db]` or `redis+cluster://host:port[,host:port…]`.
    pub url: String,
    /// Treat `url` as one node of a Redis Cluster (sharded pub/sub, slot routing).
    pub cluster: bool,
    /// Prefix of every key and channel name, so several deployments can share a Redis.
    pub prefix: String,
    /// How often the node publishes a heartbeat through pub/sub to check its delivery.
    pub canary_interval: Duration,
    /// The CA and client certificate files of a `rediss` URL.
    pub tls: RedisTls,
    /// Replicas that must confirm a publication before it is acknowledged (`WAIT`), so that a
    /// failover cannot lose an acknowledged publish; 0: the primary's word is enough.
    pub replica_acks: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            prefix: "tidings".into(),
            canary_interval: Duration::from_secs(1),
            tls: RedisTls::default(),
            replica_acks: 0,
        }
    }
}

/// The Redis-backed broker.
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    client: Client,
    subscriber: SubscriberClient,
    publish_script: Script,
    read_script: Script,
    retention: Retention,
    prefix: String,
    sharded: bool,
    deliver: Arc<dyn Deliver>,
    /// The channels this node is subscribed to in Redis: what a reconnect restores.
    subscribed: Mutex<HashSet<ChannelName>>,
    /// Reconciliations for the pump, which performs them in order with the messages.
    reconciliations: mpsc::UnboundedSender<(ChannelName, StreamPosition)>,
    /// This node's id among the announcements of channel counts.
    node_id: String,
    /// The pub/sub channel of server commands. It has no `{…}` part, so no client channel
    /// can map onto it.
    control_channel: String,
    /// The pub/sub channel of the nodes' heartbeats, and what they tell.
    canary_channel: String,
    canary: canary::Canary,
    replica_acks: u32,
    /// How the connections are doing, in words for operators.
    link: link::Link,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.prefix)
            .field("sharded", &self.inner.sharded)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a history entry and a pub/sub message carry after the offset.
#[derive(Serialize, Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    info: ClientInfo,
}

fn unavailable(context: &'static str, err: RedisError) -> BrokerError {
    BrokerError::Unavailable {
        context,
        source: Box::new(err),
    }
}

impl RedisBroker {
    /// Checks the URL and the TLS files without connecting: what a start would refuse.
    pub fn check(options: &RedisOptions) -> Result<(), UrlError> {
        redis_config(options).map(drop)
    }

    /// The setting at fault when [`connect`](Self::connect) failed because of the settings,
    /// not of Redis being down: its long flag name.
    pub fn settings_flag(err: &BrokerError) -> Option<&'static str> {
        let BrokerError::Internal { source, .. } = err else {
            return None;
        };
        if let Some(url) = source.downcast_ref::<UrlError>() {
            return Some(url.flag());
        }
        source
            .downcast_ref::<Mismatch>()
            .map(|mismatch| mismatch.flag)
    }

    /// Connects and starts delivering. A Redis that cannot be reached now is no failure: the
    /// broker starts not ready, keeps trying, and is ready once Redis answers (see `link`).
    /// One that answers but refuses the settings (credentials, TLS) is: a [`Mismatch`].
    pub async fn connect(
        options: RedisOptions,
        deliver: Arc<dyn Deliver>,
        retention: Retention,
    ) -> Result<Self, BrokerError> {
        let mut config = redis_config(&options)?;
        // Retry a first connection that fails as any other: see `link`.
        config.fail_fast = false;
        let link = link::Link::new(&options.url, &config);
        let sharded = config.server.is_clustered();
        let (client, subscriber) =
            url::clients(config).map_err(|err| unavailable("building the Redis clients", err))?;
        // Listening before connecting: the first connection is announced as a reconnect.
        let mut events = link::Events {
            client_reconnects: client.reconnect_rx(),
            subscriber_reconnects: subscriber.reconnect_rx(),
            client_errors: client.error_rx(),
            subscriber_errors: subscriber.error_rx(),
        };
        client.connect();
        subscriber.connect();

        let (reconciliations, reconciliations_rx) = mpsc::unbounded_channel();
        let control_channel = format!("{}:control", options.prefix);
        let canary_channel = format!("{}:canary", options.prefix);
        let inner = Arc::new(Inner {
            publish_script: Script::from_lua(PUBLISH_LUA),
            read_script: Script::from_lua(READ_LUA),
            client,
            subscriber,
            retention,
            prefix: options.prefix,
            sharded,
            deliver,
            subscribed: Mutex::new(HashSet::new()),
            reconciliations,
            node_id: format!("{:016x}", fastrand::u64(..)),
            control_channel,
            canary_channel,
            canary: canary::Canary::new(options.canary_interval),
            replica_acks: options.replica_acks,
            link,
        });
        let connected = inner.open(&mut events).await?;
        let tasks = vec![
            tokio::spawn(pubsub::pump_messages(inner.clone(), reconciliations_rx)),
            tokio::spawn(pubsub::restore_after_reconnects(
                inner.clone(),
                events.subscriber_reconnects,
                connected,
            )),
            tokio::spawn(pubsub::maintain(inner.clone())),
            tokio::spawn(pubsub::reload_scripts_after_reconnects(
                inner.clone(),
                events.client_reconnects,
            )),
            tokio::spawn(canary::run(inner.clone())),
            tokio::spawn(link::watch(
                inner.clone(),
                events.client_errors,
                events.subscriber_errors,
                connected,
            )),
        ];
        Ok(Self { inner, tasks })
    }
}

impl Inner {
    pub(super) async fn load_scripts(&self) -> Result<(), RedisError> {
        self.publish_script.load(&self.client).await?;
        self.read_script.load(&self.client).await
    }

    fn keys(&self, channel: &ChannelName) -> Vec<String> {
        vec![
            format!("{}:{{{channel}}}:meta", self.prefix),
            format!("{}:{{{channel}}}:history", self.prefix),
        ]
    }

    fn pubsub_channel(&self, channel: &ChannelName) -> String {
        pubsub_channel(&self.prefix, channel)
    }

    fn channel_of(&self, pubsub: &str) -> Option<ChannelName> {
        let name = pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        ChannelName::parse(name).ok()
    }

    fn subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<ChannelName>> {
        self.subscribed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn redis_subscribe(&self, channel: &ChannelName) -> Result<(), RedisError> {
        let name = self.pubsub_channel(channel);
        if self.sharded {
            // fred waits for SSUBSCRIBE's own reply (it follows MOVED).
            self.subscriber.ssubscribe(name).await
        } else {
            // SUBSCRIBE resolves once written; a PING behind it on the same connection returns
            // only after Redis has processed it, so no publication can slip past.
            self.subscriber.subscribe(name).await?;
            self.subscriber.ping::<Value>(None).await.map(|_| ())
        }
    }

    async fn redis_unsubscribe(&self, channel: &ChannelName) -> Result<(), RedisError> {
        let name = self.pubsub_channel(channel);
        if self.sharded {
            self.subscriber.sunsubscribe(name).await
        } else {
            self.subscriber.unsubscribe(name).await
        }
    }

    /// Runs read.lua: the position, the history entries (newest first) if asked, and
    /// whether the `unpublished` epoch is vouched for.
    async fn read(
        &self,
        channel: &ChannelName,
        with_history: bool,
        unpublished: Option<&str>,
    ) -> Result<(StreamPosition, Vec<Bytes>, bool), BrokerError> {
        self.connected("reading from Redis")?;
        let mut args: Vec<Value> = vec![
            ttl_seconds(self.retention.position_ttl).into(),
            (if with_history { "1" } else { "0" }).into(),
        ];
        args.extend(unpublished.map(Value::from));
        let (offset, epoch, entries, vouched): (u64, String, Vec<Bytes>, u8) = self
            .read_script
            .evalsha_with_reload(&self.client, self.keys(channel), args)
            .await
            .map_err(|err| unavailable("reading from Redis", err))?;
        let position = StreamPosition {
            offset,
            epoch: epoch.into(),
        };
        Ok((position, entries, vouched == 1))
    }

    /// Decodes one publication from `offset:payload` (history) with its channel and epoch.
    fn decode(&self, channel: &ChannelName, epoch: &Arc<str>, entry: &[u8]) -> Option<Publication> {
        let text = std::str::from_utf8(entry).ok()?;
        let (offset, payload) = text.split_once(':')?;
        let payload: Payload<'_> = serde_json::from_str(payload).ok()?;
        Some(Publication {
            channel: channel.clone(),
            offset: offset.parse().ok()?,
            epoch: epoch.clone(),
            data: Arc::from(payload.data.to_owned()),
            info: payload.info,
        })
    }
}

fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// The pub/sub channel that carries `channel`'s publications and events. It shares the hash
/// tag `{C}` with the channel's keys, so in a cluster all of them live on one shard.
fn pubsub_channel(prefix: &str, channel: &ChannelName) -> String {
    format!("{prefix}:{{{channel}}}")
}

/// The first byte of an event message on a channel's pub/sub channel; a publication's first
/// byte is its epoch's (a letter or digit).
pub(crate) const EVENT_MARKER: u8 = b'~';

/// The seam for stores that keep their state in the broker's own Redis (presence, webhook
/// events): the broker's connection and its naming, and nothing else of the broker. A store
/// takes one of these from `server` and never names the Redis broker itself.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) sharded: bool,
}

impl RedisStore {
    /// The pub/sub channel that carries `channel`'s publications and events.
    pub(crate) fn pubsub_channel(&self, channel: &ChannelName) -> String {
        pubsub_channel(&self.prefix, channel)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("sharded", &self.sharded)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// The connection and naming, for a presence store on the same Redis.
    pub fn shared(&self) -> RedisStore {
        RedisStore {
            client: self.inner.client.clone(),
            prefix: self.inner.prefix.clone(),
            sharded: self.inner.sharded,
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let inner = &self.inner;
        inner.connected("publishing through Redis")?;
        let history = options.history.unwrap_or_else(|| inner.retention.history());
        let payload = serde_json::to_string(&Payload { data: &data, info }).map_err(|err| {
            BrokerError::Internal {
                context: "encoding a publication",
                source: Box::new(err),
            }
        })?;
        let args: Vec<Value> = vec![
            payload.into(),
            i64::try_from(history.size).unwrap_or(i64::MAX).into(),
            ttl_seconds(history.ttl).into(),
            ttl_seconds(inner.retention.position_ttl).into(),
            new_epoch().to_string().into(),
            inner.pubsub_channel(channel).into(),
            (if inner.sharded { "1" } else { "0" }).into(),
        ];
        let mut keys = inner.keys(channel);
        let mut args = args;
        if let Some(idempotency) = &options.idempotency {
            keys.push(format!(
                "{}:{{{channel}}}:idem:{}",
                inner.prefix,
                idempotency.key.as_str()
            ));
            args.push(ttl_seconds(idempotency.window).into());
        }
        let (offset, epoch): (u64, String) = inner
            .publish_script
            .evalsha_with_reload(&inner.client, keys, args)
            .await
            .map_err(|err| {
                // A timeout may hide a script that ran: say so rather than claim it failed.
                if *err.kind() == fred::error::ErrorKind::Timeout {
                    BrokerError::Indeterminate {
                        context: "publishing through Redis",
                        source: Box::new(err),
                    }
                } else {
                    unavailable("publishing through Redis", err)
                }
            })?;
        inner.wait_for_replicas(channel).await?;
        Ok(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
    }

    async fn control(&self, message: &[u8]) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let message = Bytes::copy_from_slice(message);
        let channel = inner.control_channel.clone();
        let sent = if inner.sharded {
            inner.client.spublish::<(), _, _>(channel, message).await
        } else {
            inner.client.publish::<(), _, _>(channel, message).await
        };
        sent.map_err(|err| unavailable("sending a command to the nodes", err))
    }

    async fn control_to(&self, node: &str, message: &[u8]) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let message = Bytes::copy_from_slice(message);
        let channel = inner.node_control_channel(node);
        let sent = if inner.sharded {
            inner.client.spublish::<(), _, _>(channel, message).await
        } else {
            inner.client.publish::<(), _, _>(channel, message).await
        };
        sent.map_err(|err| unavailable("sending a command to a node", err))
    }

    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let mut nodes = self.inner.others_alive().await?;
        nodes.push(self.inner.node_id.clone());
        Ok(nodes)
    }

    async fn announce(&self, counts: &[(ChannelName, usize)]) -> Result<(), BrokerError> {
        self.inner.announce(counts).await
    }

    async fn channels(&self) -> Result<HashMap<ChannelName, usize>, BrokerError> {
        self.inner.other_channels().await
    }

    async fn announce_node(&self, summary: &NodeSummary) -> Result<(), BrokerError> {
        self.inner.announce_node(summary).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, BrokerError> {
        self.inner.other_nodes().await
    }

    fn node_id(&self) -> String {
        self.inner.node_id.clone()
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.connected("subscribing in Redis")?;
        self.inner.subscribed().insert(channel.clone());
        if let Err(err) = self.inner.redis_subscribe(channel).await {
            self.inner.subscribed().remove(channel);
            let _ = self.inner.redis_unsubscribe(channel).await;
            return Err(unavailable("subscribing in Redis", err));
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.subscribed().remove(channel);
        self.inner
            .redis_unsubscribe(channel)
            .await
            .map_err(|err| unavailable("unsubscribing in Redis", err))
    }

    async fn position(&self, channel: &ChannelName) -> Result<StreamPosition, BrokerError> {
        Ok(self.inner.read(channel, false, None).await?.0)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        let unpublished = query.unpublished.as_deref();
        let (position, entries, vouched) = self.inner.read(channel, true, unpublished).await?;
        // Entries are newest first.
        let publications = query.select(
            entries
                .iter()
                .rev()
                .filter_map(|entry| self.inner.decode(channel, &position.epoch, entry)),
        );
        Ok(History {
            publications,
            position,
            vouched,
        })
    }

    /// Ready when both connections answer a PING in time and the canary's heartbeats come
    /// back (see `link`).
    async fn ready(&self) -> Result<(), BrokerError> {
        self.inner.ready().await
    }

    async fn close(&self) {
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.client.quit().await;
    }
}
