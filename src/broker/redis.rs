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
//! Commands time out instead of hanging while Redis is unreachable, and fail with
//! [`BrokerError::Unavailable`]: a publish is either acknowledged and in history, or refused.
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
use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as RedisError, PubsubInterface, ReconnectPolicy,
    Value,
};
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, Message};
use fred::util::redis_keyslot;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Broker, BrokerError, Control, Deliver, History, HistoryQuery, PublishOptions, Retention,
    new_epoch,
};
use crate::protocol::{ChannelName, ClientInfo, Publication, StreamPosition};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const READ_LUA: &str = include_str!("read.lua");

/// How long any Redis command may take before it fails (and a publish is refused).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for Redis to answer a PING.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Pub/sub messages buffered between the connection and the delivery task; overflowing it is
/// detected (and recovered from) like any other gap.
const MESSAGE_BUFFER: usize = 1 << 16;
/// How often subscribed channels are refreshed and reconciled (more often if the position TTL
/// is short).
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(30);
/// How often a node writes its channels and their subscriber counts for the others to read.
const ANNOUNCE_PERIOD: Duration = Duration::from_secs(5);
/// A node whose announcement is older than this counts as gone.
const ANNOUNCE_TTL: Duration = Duration::from_secs(15);

/// Where Redis is and how to use it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://host:port[/db]` or `redis+cluster://host:port[,host:port…]`.
    pub url: String,
    /// Treat `url` as one node of a Redis Cluster (sharded pub/sub, slot routing).
    pub cluster: bool,
    /// Prefix of every key and channel name, so several deployments can share a Redis.
    pub prefix: String,
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

fn unavailable(context: &str, err: RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("{context}: {err}"))
}

/// Turns `redis+cluster://h1:p1,h2:p2` (or `redis://…` with `cluster`) into fred's config.
fn redis_config(options: &RedisOptions) -> Result<Config, BrokerError> {
    let url = options.url.trim();
    let (cluster, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis://") {
        (options.cluster, rest)
    } else if url.starts_with("redis-cluster://") {
        return Config::from_url(url)
            .map_err(|err| BrokerError::Internal(format!("invalid Redis URL {url:?}: {err}")));
    } else {
        return Err(BrokerError::Internal(format!(
            "unsupported Redis URL {url:?}: use redis://HOST:PORT or \
             redis+cluster://HOST:PORT[,HOST:PORT…] (TLS is not supported yet)"
        )));
    };
    let url = if cluster {
        let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let mut hosts = hosts.split(',');
        let first = hosts.next().unwrap_or_default();
        let mut url = format!("redis-cluster://{first}/{tail}");
        let others: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
        if !others.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&others.join("&"));
        }
        url
    } else {
        format!("redis://{rest}")
    };
    Config::from_url(&url)
        .map_err(|err| BrokerError::Internal(format!("invalid Redis URL {url:?}: {err}")))
}

impl RedisBroker {
    /// Connects (failing if Redis cannot be reached now) and starts delivering.
    pub async fn connect(
        options: RedisOptions,
        deliver: Arc<dyn Deliver>,
        retention: Retention,
    ) -> Result<Self, BrokerError> {
        let mut config = redis_config(&options)?;
        // An unreachable Redis at start-up is a configuration error worth stopping for.
        config.fail_fast = true;
        let sharded = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // Never replay a command after a reconnect: a publish script that ran before
                // the connection dropped would run twice and be stored under two offsets.
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                p.broadcast_channel_capacity = MESSAGE_BUFFER;
            })
            // Retry forever: 100 ms doubling to 5 s, with jitter.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        let client = builder
            .build()
            .map_err(|err| unavailable("building the Redis client", err))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|err| unavailable("building the Redis subscriber", err))?;
        client
            .init()
            .await
            .map_err(|err| unavailable("connecting to Redis", err))?;
        subscriber
            .init()
            .await
            .map_err(|err| unavailable("connecting the Redis subscriber", err))?;

        let (reconciliations, reconciliations_rx) = mpsc::unbounded_channel();
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
        });
        inner
            .control_subscribe()
            .await
            .map_err(|err| unavailable("subscribing to the control channel", err))?;
        let tasks = vec![
            tokio::spawn(pump_messages(inner.clone(), reconciliations_rx)),
            tokio::spawn(restore_after_reconnects(inner.clone())),
            tokio::spawn(maintain(inner.clone())),
            tokio::spawn(announce(inner.clone())),
        ];
        Ok(Self { inner, tasks })
    }
}

impl Inner {
    fn keys(&self, channel: &ChannelName) -> Vec<String> {
        vec![
            format!("{}:{{{channel}}}:meta", self.prefix),
            format!("{}:{{{channel}}}:history", self.prefix),
        ]
    }

    /// The pub/sub channel of server commands. It has no `{…}` part, so no client channel
    /// can map onto it.
    fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    async fn control_subscribe(&self) -> Result<(), RedisError> {
        if self.sharded {
            self.subscriber.ssubscribe(self.control_channel()).await
        } else {
            self.subscriber.subscribe(self.control_channel()).await
        }
    }

    /// Keys of the node announcements, all in one slot so they can be read together.
    fn nodes_key(&self) -> String {
        format!("{{{}:nodes}}", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{{{}:nodes}}:{id}", self.prefix)
    }

    fn pubsub_channel(&self, channel: &ChannelName) -> String {
        format!("{}:{{{channel}}}", self.prefix)
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

    /// Runs read.lua: the position, and the history entries (newest first) if asked.
    async fn read(
        &self,
        channel: &ChannelName,
        with_history: bool,
    ) -> Result<(StreamPosition, Vec<Bytes>), BrokerError> {
        let args: Vec<Value> = vec![
            new_epoch().to_string().into(),
            ttl_seconds(self.retention.position_ttl).into(),
            (if with_history { "1" } else { "0" }).into(),
        ];
        let (offset, epoch, entries): (u64, String, Vec<Bytes>) = self
            .read_script
            .evalsha_with_reload(&self.client, self.keys(channel), args)
            .await
            .map_err(|err| unavailable("reading from Redis", err))?;
        Ok((
            StreamPosition {
                offset,
                epoch: epoch.into(),
            },
            entries,
        ))
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

/// Delivers every pub/sub message to the node, in the order Redis sent them, and carries out
/// reconciliations in that same order (see [`reconcile`]).
async fn pump_messages(
    inner: Arc<Inner>,
    mut reconciliations: mpsc::UnboundedReceiver<(ChannelName, StreamPosition)>,
) {
    let mut messages = inner.subscriber.message_rx();
    loop {
        let message = tokio::select! {
            biased;
            message = messages.recv() => message,
            Some((channel, position)) = reconciliations.recv() => {
                // Everything Redis sent before the barrier is buffered by now: deliver it
                // first, so only publications this node truly missed count as missed.
                loop {
                    match messages.try_recv() {
                        Ok(message) => inner.deliver_message(&message),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                inner.deliver.reconcile(&channel, &position);
                continue;
            }
        };
        match message {
            Ok(message) => inner.deliver_message(&message),
            Err(RecvError::Lagged(missed)) => {
                // Messages were dropped before we read them: the gaps they leave are caught
                // per subscriber, and reconciling catches the ones at the end of a burst.
                tracing::warn!(missed, "Redis pub/sub buffer overflowed; reconciling");
                let inner = inner.clone();
                tokio::spawn(async move { reconcile_all(&inner).await });
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl Inner {
    fn deliver_message(&self, message: &Message) {
        if *message.channel == *self.control_channel() {
            let command = message
                .value
                .as_str()
                .and_then(|text| serde_json::from_str::<Control>(&text).ok());
            match command {
                Some(command) => self.deliver.control(&command),
                None => tracing::warn!("undecodable control message"),
            }
            return;
        }
        let Some(channel) = self.channel_of(&message.channel) else {
            return;
        };
        let Ok(raw) = message.value.clone().convert::<Bytes>() else {
            return;
        };
        let decoded = std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| text.split_once(':'))
            .and_then(|(epoch, entry)| self.decode(&channel, &epoch.into(), entry.as_bytes()));
        match decoded {
            Some(publication) => self.deliver.deliver(&publication),
            None => tracing::warn!(%channel, "undecodable pub/sub message"),
        }
    }
}

/// After every reconnect of the subscriber: subscribe again, then reconcile.
async fn restore_after_reconnects(inner: Arc<Inner>) {
    let mut reconnects = inner.subscriber.reconnect_rx();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                // Several nodes of a cluster may report at once: one pass serves them all.
                while reconnects.try_recv().is_ok() {}
                tracing::info!(%server, "Redis subscriber reconnected; restoring subscriptions");
                restore(&inner).await;
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Subscribes again to every channel this node needs, then reconciles them.
async fn restore(inner: &Inner) {
    if let Err(err) = inner.control_subscribe().await {
        tracing::warn!(%err, "resubscribing to the control channel failed");
    }
    let channels: Vec<ChannelName> = inner.subscribed().iter().cloned().collect();
    for channel in &channels {
        if let Err(err) = inner.redis_subscribe(channel).await {
            // Until it succeeds this node hears nothing of the channel; closing its
            // subscribers makes them reconnect (perhaps elsewhere) and recover.
            tracing::warn!(%channel, %err, "resubscribing failed");
            inner.deliver.reconcile(
                channel,
                &StreamPosition {
                    offset: u64::MAX,
                    epoch: "".into(),
                },
            );
        }
    }
    reconcile_all(inner).await;
}

/// Periodically keeps subscribed channels' positions from expiring while clients hold them,
/// and in cluster mode subscribes again (a slot that moved to another shard silently drops
/// its sharded subscriptions) and reconciles.
async fn maintain(inner: Arc<Inner>) {
    let period = (inner.retention.position_ttl / 4).min(MAINTENANCE_PERIOD);
    loop {
        tokio::time::sleep(period).await;
        if inner.sharded {
            restore(&inner).await;
        } else {
            reconcile_all(&inner).await;
        }
    }
}

/// Periodically writes this node's channel counts (JSON, expiring) and its id with the time
/// into a sorted set, so that any node can sum the counts of the nodes alive.
async fn announce(inner: Arc<Inner>) {
    loop {
        if let Err(err) = announce_once(&inner).await {
            tracing::debug!(%err, "announcing channel counts failed");
        }
        tokio::time::sleep(ANNOUNCE_PERIOD).await;
    }
}

async fn announce_once(inner: &Inner) -> Result<(), RedisError> {
    use fred::interfaces::{KeysInterface, SortedSetsInterface};
    use fred::types::Expiration;
    let counts: HashMap<String, usize> = inner
        .deliver
        .local_channels()
        .into_iter()
        .map(|(channel, count)| (channel.to_string(), count))
        .collect();
    let json = serde_json::to_string(&counts).unwrap_or_else(|_| "{}".into());
    let now = unix_seconds();
    let ttl = i64::try_from(ANNOUNCE_TTL.as_secs()).unwrap_or(15);
    inner
        .client
        .set::<(), _, _>(
            inner.node_key(&inner.node_id),
            json,
            Some(Expiration::EX(ttl)),
            None,
            false,
        )
        .await?;
    inner
        .client
        .zadd::<(), _, _>(
            inner.nodes_key(),
            None,
            None,
            false,
            false,
            (now as f64, inner.node_id.as_str()),
        )
        .await?;
    inner
        .client
        .zremrangebyscore::<(), _, _, _>(
            inner.nodes_key(),
            f64::NEG_INFINITY,
            (now - 4 * ttl) as f64,
        )
        .await
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Compares every subscribed channel's local delivery with its position in Redis.
async fn reconcile_all(inner: &Inner) {
    let channels: Vec<ChannelName> = inner.subscribed().iter().cloned().collect();
    for channel in channels {
        if let Err(err) = reconcile(inner, &channel).await {
            tracing::warn!(%channel, %err, "reconciling failed");
        }
    }
}

/// Reads the channel's position (which also keeps it from expiring), then a PING on the
/// subscriber connection as a barrier: its answer comes after every message Redis published
/// before the read. The pump then delivers what it buffered before comparing.
async fn reconcile(inner: &Inner, channel: &ChannelName) -> Result<(), BrokerError> {
    let (position, _) = inner.read(channel, false).await?;
    let barrier = Options {
        cluster_hash: Some(ClusterHash::Custom(redis_keyslot(
            inner.pubsub_channel(channel).as_bytes(),
        ))),
        ..Default::default()
    };
    inner
        .subscriber
        .with_options(&barrier)
        .ping::<Value>(None)
        .await
        .map_err(|err| unavailable("pinging the subscriber", err))?;
    let _ = inner.reconciliations.send((channel.clone(), position));
    Ok(())
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
        let history = options.history.unwrap_or_else(|| inner.retention.history());
        let payload = serde_json::to_string(&Payload { data: &data, info })
            .map_err(|err| BrokerError::Internal(format!("encoding a publication: {err}")))?;
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
                inner.prefix, idempotency.key
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
                    BrokerError::Unavailable(
                        "Redis did not answer in time; the publication may or may not have \
                         been stored"
                            .into(),
                    )
                } else {
                    unavailable("publishing through Redis", err)
                }
            })?;
        Ok(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
    }

    async fn control(&self, command: &Control) -> Result<(), BrokerError> {
        let json = serde_json::to_string(command)
            .map_err(|err| BrokerError::Internal(format!("encoding a command: {err}")))?;
        let channel = self.inner.control_channel();
        let sent = if self.inner.sharded {
            self.inner.client.spublish::<(), _, _>(channel, json).await
        } else {
            self.inner.client.publish::<(), _, _>(channel, json).await
        };
        sent.map_err(|err| unavailable("sending a command to the nodes", err))
    }

    async fn channels(&self) -> Result<HashMap<ChannelName, usize>, BrokerError> {
        use fred::interfaces::{KeysInterface, SortedSetsInterface};
        let inner = &self.inner;
        let since = (unix_seconds() - i64::try_from(ANNOUNCE_TTL.as_secs()).unwrap_or(15)) as f64;
        let nodes: Vec<String> = inner
            .client
            .zrangebyscore(inner.nodes_key(), since, f64::INFINITY, false, None)
            .await
            .map_err(|err| unavailable("listing nodes", err))?;
        let others: Vec<String> = nodes
            .into_iter()
            .filter(|id| *id != inner.node_id)
            .map(|id| inner.node_key(&id))
            .collect();
        // This node's own counts are live; the others' as of their last announcement.
        let mut total: HashMap<ChannelName, usize> =
            inner.deliver.local_channels().into_iter().collect();
        if !others.is_empty() {
            let announced: Vec<Option<String>> = inner
                .client
                .mget(others)
                .await
                .map_err(|err| unavailable("reading node announcements", err))?;
            for json in announced.into_iter().flatten() {
                let counts: HashMap<String, usize> =
                    serde_json::from_str(&json).unwrap_or_default();
                for (name, count) in counts {
                    if let Ok(channel) = ChannelName::parse(&name) {
                        *total.entry(channel).or_default() += count;
                    }
                }
            }
        }
        Ok(total)
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
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
        Ok(self.inner.read(channel, false).await?.0)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        let (position, entries) = self.inner.read(channel, true).await?;
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
        })
    }

    /// Ready when both connections answer a PING in time. A Redis that is frozen (SIGSTOP, a
    /// stalled host) keeps its TCP connections open, so "connected" alone says nothing.
    async fn ready(&self) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if !inner.client.is_connected() || !inner.subscriber.is_connected() {
            return Err(BrokerError::Unavailable("not connected to Redis".into()));
        }
        let pings = async {
            inner.client.ping::<Value>(None).await?;
            inner.subscriber.ping::<Value>(None).await
        };
        match tokio::time::timeout(READY_TIMEOUT, pings).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(unavailable("pinging Redis", err)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "Redis did not answer a PING within {READY_TIMEOUT:?}"
            ))),
        }
    }

    async fn close(&self) {
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str, cluster: bool) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            cluster,
            prefix: "t".into(),
        }
    }

    #[test]
    fn cluster_urls_name_every_node() {
        let config = redis_config(&options(
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            false,
        ))
        .unwrap();
        assert!(config.server.is_clustered());
        assert_eq!(config.server.hosts().len(), 2);
        let config = redis_config(&options("redis://127.0.0.1:7000", true)).unwrap();
        assert!(config.server.is_clustered());
        let config = redis_config(&options("redis://127.0.0.1:6379", false)).unwrap();
        assert!(!config.server.is_clustered());
        assert!(redis_config(&options("http://nope", false)).is_err());
    }
}
