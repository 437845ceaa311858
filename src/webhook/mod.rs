//! Webhooks: the app's backend hears about lifecycle transitions — a channel occupied or
//! vacated, a user added to or removed from a presence channel, a user online or offline — and
//! about personal publications nobody acknowledged (`undelivered`), as signed POSTs to
//! `--webhook-url`.
//!
//! ## Exactly once across nodes
//! Each node counts its own holders of each [`Holding`] (subscriptions of a channel, a user's
//! connections present in a channel, a user's connections) and tells the [`LifecycleStore`]
//! only of its edges: its first holder came, its last one left. The store counts the nodes
//! holding each one and turns the first node in into the "in" event and the last node out into
//! the "out" event, in one atomic step with enqueuing the event — so however many nodes see a
//! transition, it is one event. Outs are debounced: the event waits ([`Debounce`]: a second for
//! channels and members, `--webhook-offline-grace` for users) and is dropped if a holder comes
//! back meanwhile, together with the "in" that came back. A page reload, or a user moving from
//! one node to another, is no event at all.
//!
//! ## Delivery
//! Events wait in one queue, in the order of their transitions (with Redis, in Redis: they
//! survive a restart of any node). One node at a time holds the sending lease; it POSTs up to
//! [`MAX_BATCH`] events per request, `{"events":[…]}`, signed with
//! `Tidings-Signature: t=SECONDS,v1=HEX` (HMAC-SHA256 of `"{t}.{body}"`). A failure (timeout,
//! refused connection, any status but 2xx) is retried with exponential back-off — from
//! [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`] — with the same events and ids, so order holds;
//! an event not taken within [`RETRY_WINDOW`] of its transition is dropped, counted and logged.
//!
//! ## Bounds
//! One client must not be able to fill the queue for everyone. Each connection has a budget
//! (`LIFECYCLE_BUDGET`: a burst of 100, then 10 a second) of channels and memberships it may
//! newly hold on its node; past it its subscriptions still work but are not counted, so churning
//! through channel names makes no events. The queue holds at most [`QueueBound`] events and
//! bytes, and channel events (`channel_occupied`, `channel_vacated`: anyone can cause them) at
//! most half of either, so that they never crowd out user, member and receipt events. What is
//! not queued is counted in `tidings_webhook_events_dropped_total{reason}`: `budget`,
//! `queue_full`, or `expired` (not delivered within the retry window).
//!
//! ## Receipts
//! On a namespace with `receipts=WITHIN`, each publication to a personal channel waits for an
//! `ack` from any connection of its user; those still unacknowledged WITHIN later (gathered for
//! [`RECEIPT_COALESCE`] more, so a burst is one event) become one `undelivered` event.
//!
//! ## Nodes that die
//! A node refreshes its liveness every tick; once it has been silent for [`ALIVE_TTL`], the
//! others release what it held (its outs debounced as usual).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::BrokerError;
use crate::limits::EventBudget;
use crate::metrics::{DropReason, metrics};
use crate::protocol::ChannelName;

pub mod memory;
mod pusher;
mod queue;
pub mod redis;
mod send;

pub(crate) use queue::expired;
pub use queue::{QueueBound, Queued};
use send::Sender;
pub use send::{Destination, Destinations, PusherDestination, sign};

/// Events per POST, at most.
pub const MAX_BATCH: usize = 100;
/// The first retry of a failed POST waits this long; each next one twice as long.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long after its transition an event is given up on if not delivered.
pub const RETRY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often due outs and receipts are looked at, and the queue is sent.
pub const TICK: Duration = Duration::from_millis(250);
/// A node silent this long is dead: the others release its holdings.
pub const ALIVE_TTL: Duration = Duration::from_secs(5);
/// The sending lease lapses this long after its holder's last round: longer than a POST may
/// take, so that a slow receiver does not make two nodes send the same batch.
pub const LEASE_TTL: Duration = Duration::from_secs(8);
/// Unacknowledged publications of a personal channel are gathered this long past the first
/// one's deadline into one `undelivered` event.
pub const RECEIPT_COALESCE: Duration = Duration::from_secs(1);
/// How much longer than the receipt window an acknowledgement mark is kept.
pub const ACK_MARK_MARGIN: Duration = Duration::from_secs(60);
/// The debounce of channel and member outs.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Edges waiting for the store, at most (a long outage of Redis drops the excess, logged).
const MAX_PENDING_EDGES: usize = 65_536;

/// What a node may hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holding {
    /// The channel has subscribers.
    Channel(ChannelName),
    /// The user is present in the channel (a presence namespace).
    Member(ChannelName, Arc<str>),
    /// The user has a connection.
    User(Arc<str>),
}

impl Holding {
    /// The store's key: the same JSON array for the same holding on every node.
    pub fn key(&self) -> String {
        let (kind, channel, user) = match self {
            Self::Channel(channel) => ("c", channel.as_str(), ""),
            Self::Member(channel, user) => ("m", channel.as_str(), &**user),
            Self::User(user) => ("u", "", &**user),
        };
        serde_json::json!([kind, channel, user]).to_string()
    }
}

/// A change of this node's holdings: its first holder of `key` came, or its last one left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub key: String,
    pub enter: bool,
}

/// How long each kind of out waits for a holder to come back.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub channel: Duration,
    pub member: Duration,
    pub user: Duration,
}

/// A personal publication awaiting an acknowledgement.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub channel: ChannelName,
    pub user: String,
    pub epoch: String,
    pub offset: u64,
    pub within: Duration,
}

/// A connection processed a personal channel up to a position.
#[derive(Clone, Debug)]
pub struct Ack {
    pub channel: ChannelName,
    pub epoch: String,
    pub offset: u64,
    /// The namespace's receipt window: how long the mark must outlive a late `track`.
    pub within: Duration,
}

/// Where holdings are counted across nodes and events wait to be sent.
///
/// # Example
///
/// A channel's first subscriber comes: `channel_occupied`. Its last one leaves and another
/// comes back within the debounce (a reload): no event at all. The last one leaves for good:
/// `channel_vacated`, once the debounce has passed and a tick looked. The sender takes events
/// from the front of the queue and pops them once delivered.
///
/// ```
/// use std::time::Duration;
///
/// use tidings::config::QueueBound;
/// use tidings::protocol::ChannelName;
/// use tidings::webhook::memory::MemoryLifecycle;
/// use tidings::webhook::{Debounce, Edge, Holding, LifecycleStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tidings::broker::BrokerError> {
/// let settle = Duration::from_millis(50);
/// let debounce = Debounce { channel: settle, member: settle, user: settle };
/// let store = MemoryLifecycle::new(debounce, QueueBound::default());
/// let news = Holding::Channel(ChannelName::parse("news").unwrap()).key();
/// let came = Edge { key: news.clone(), enter: true };
/// let went = Edge { key: news, enter: false };
///
/// store.apply(&[came.clone()]).await?;
/// store.apply(&[went.clone(), came]).await?; // a reload
/// store.apply(&[went]).await?;
/// tokio::time::sleep(settle * 2).await;
/// store.tick().await?;
///
/// let kinds: Vec<String> = store
///     .peek(10)
///     .await?
///     .iter()
///     .map(|event| serde_json::from_str::<serde_json::Value>(event).unwrap())
///     .map(|event| event["type"].as_str().unwrap().to_owned())
///     .collect();
/// assert_eq!(kinds, ["channel_occupied", "channel_vacated"]);
/// assert!(store.pop(2).await?, "one node: it holds the lease");
/// assert!(store.peek(10).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait LifecycleStore: Send + Sync + fmt::Debug {
    /// Records this node's edges, in order; each first node in and last node out enqueues its
    /// event (outs once their debounce has passed). Returns how many events found the queue
    /// full and were dropped.
    async fn apply(&self, edges: &[Edge]) -> Result<u64, BrokerError>;
    /// Queues occurrences that are not transitions (`client_event`, `cache_miss`: JSON
    /// objects with a `type`), each once. Returns how many found the queue full.
    async fn push(&self, events: &[serde_json::Value]) -> Result<u64, BrokerError>;
    /// Keeps this node alive and does what is due: outs whose debounce passed, the holdings of
    /// dead nodes, receipts past their window.
    async fn tick(&self) -> Result<Tick, BrokerError>;
    async fn track(&self, receipt: &Receipt) -> Result<(), BrokerError>;
    /// Everything of `channel` in `epoch` up to `offset` is acknowledged (and publications
    /// tracked after this, up to there, are not tracked).
    async fn ack(&self, ack: &Ack) -> Result<(), BrokerError>;
    /// The first `max` events of the queue, as JSON objects.
    async fn peek(&self, max: usize) -> Result<Vec<String>, BrokerError>;
    /// Removes the first `count` events (sent, or given up on); false if this node no longer
    /// holds the lease (and nothing was removed).
    async fn pop(&self, count: usize) -> Result<bool, BrokerError>;
    /// This node leaves: its lease and liveness go.
    async fn close(&self);
}

/// What a tick found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Events waiting.
    pub queued: u64,
    /// This node holds the sending lease (it took it if free, renewed it if its own).
    pub lead: bool,
    /// The store had forgotten this node (lost data, or released it as dead): the node must
    /// tell again what it holds.
    pub fresh: bool,
    /// Events given up on by this tick: older than [`RETRY_WINDOW`].
    pub expired: u64,
    /// Events this tick found the queue full for, and dropped.
    pub full: u64,
    /// More is due than one tick does: tick again at once.
    pub more: bool,
}

/// The subscriptions counted as holders, by channel and client id, with the user of those
/// present in the channel.
type Counted = HashMap<(ChannelName, Arc<str>), Option<Arc<str>>>;

/// This node's side of the lifecycle: its holders, counted, and the tasks that feed the store
/// and send the queue.
#[derive(Debug)]
pub struct Lifecycle {
    store: Arc<dyn LifecycleStore>,
    holdings: Arc<Holdings>,
    /// The subscriptions that count (a leave knows only the client): one past its connection's
    /// budget does not, and its leave must release nothing.
    counted: Mutex<Counted>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Which holdings anyone will hear of: native ones with `--webhook-url`, Pusher apps'
    /// with `--pusher-webhook-url`. The others are not counted at all.
    native: bool,
    pusher: bool,
}

/// This node's holders, counted per key, and the way its edges go to the store.
#[derive(Debug)]
struct Holdings {
    counts: Mutex<HashMap<String, u32>>,
    edges: mpsc::Sender<Message>,
}

impl Holdings {
    fn hold(&self, holding: Holding) {
        self.hold_all([holding], None);
    }

    /// Holds every one of `holdings`, or none: when one would be this node's first holder of
    /// its key (an edge, so perhaps an event) and `budget` is spent.
    fn hold_all<const N: usize>(
        &self,
        holdings: [Holding; N],
        budget: Option<&mut EventBudget>,
    ) -> bool {
        let keys = holdings.map(|holding| holding.key());
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let edge = keys.iter().any(|key| !counts.contains_key(key));
        if edge && budget.is_some_and(|budget| !budget.spend()) {
            return false;
        }
        for key in keys {
            let count = counts.entry(key.clone()).or_default();
            *count += 1;
            if *count == 1 {
                // Sent under the lock: edges of one key reach the store in their order.
                self.send(Edge { key, enter: true });
            }
        }
        true
    }

    fn release(&self, holding: Holding) {
        let key = holding.key();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(count) = counts.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
            self.send(Edge { key, enter: false });
        }
    }

    /// Tells the store again of everything held (it forgot this node); entering what it still
    /// knows changes nothing.
    fn reassert(&self) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.is_empty() {
            return;
        }
        let holdings = counts.len();
        tracing::info!(
            holdings,
            "telling the lifecycle store again what this node holds"
        );
        // One message however many: the queue's bound is for edges, not for this.
        let keys = counts.keys().cloned().collect();
        if self.edges.try_send(Message::Reassert(keys)).is_err() {
            tracing::error!("the lifecycle queue is full; what this node holds was not re-sent");
        }
    }

    fn send(&self, edge: Edge) {
        if self.edges.try_send(Message::Edge(edge)).is_err() {
            tracing::error!(
                "{MAX_PENDING_EDGES} lifecycle changes are waiting for the store; dropping one \
                 (webhook events may be missed)"
            );
        }
    }
}

/// What the applier receives: an edge, or a request to say when all before it are recorded.
#[derive(Debug)]
enum Message {
    Edge(Edge),
    Occurred(serde_json::Value),
    /// Everything this node holds, to be entered again.
    Reassert(Vec<String>),
    Flush(oneshot::Sender<()>),
}

impl Lifecycle {
    /// Starts feeding `store` and sending its queue to `destination`.
    pub fn start(
        store: Arc<dyn LifecycleStore>,
        destinations: Destinations,
        client: reqwest::Client,
    ) -> Arc<Self> {
        let (edges, pending) = mpsc::channel(MAX_PENDING_EDGES);
        let holdings = Arc::new(Holdings {
            counts: Mutex::default(),
            edges,
        });
        let applier = tokio::spawn(apply_edges(store.clone(), pending));
        let (latest, ticks) = watch::channel(Tick::default());
        // Ticks go on while a POST waits: the node stays alive and keeps its lease.
        let ticker = tokio::spawn(tick_until_closed(store.clone(), holdings.clone(), latest));
        let (native, pusher) = (destinations.native.is_some(), destinations.pusher.is_some());
        let sender = Sender::new(store.clone(), ticks, destinations, client);
        Arc::new(Self {
            store,
            holdings,
            native,
            pusher,
            counted: Mutex::default(),
            tasks: Mutex::new(vec![applier, ticker, tokio::spawn(sender.run())]),
        })
    }

    /// A connection subscribed to `channel`; `present` in a presence namespace. It counts
    /// unless it would be a new holding and the connection's `budget` is spent.
    pub fn subscribed(
        &self,
        channel: &ChannelName,
        client: &Arc<str>,
        user: &Arc<str>,
        present: bool,
        budget: &mut EventBudget,
    ) {
        let wanted = if crate::pusher::channel::external(channel).is_some() {
            self.pusher
        } else {
            self.native
        };
        if !wanted {
            return;
        }
        let holding = Holding::Channel(channel.clone());
        let held = if present {
            let member = Holding::Member(channel.clone(), user.clone());
            self.holdings.hold_all([holding, member], Some(budget))
        } else {
            self.holdings.hold_all([holding], Some(budget))
        };
        if !held {
            metrics().webhook.dropped(DropReason::Budget, 1);
            return;
        }
        let member = present.then(|| user.clone());
        self.counted()
            .insert((channel.clone(), client.clone()), member);
    }

    /// A connection left `channel`.
    pub fn unsubscribed(&self, channel: &ChannelName, client: &Arc<str>) {
        let Some(member) = self.counted().remove(&(channel.clone(), client.clone())) else {
            return;
        };
        if let Some(user) = member {
            self.release(Holding::Member(channel.clone(), user));
        }
        self.release(Holding::Channel(channel.clone()));
    }

    /// An authenticated user's connection opened.
    /// Something that happened once (not a transition): a client's publication the webhook
    /// asked to hear of, a cache miss. Dropped, counted, when too many wait for the store.
    pub fn occurred(&self, event: serde_json::Value) {
        if !self.pusher {
            return; // Only Pusher's webhooks have words for these.
        }
        let edges = &self.holdings.edges;
        if edges.try_send(Message::Occurred(event)).is_err() {
            metrics().webhook.dropped(DropReason::QueueFull, 1);
        }
    }

    pub fn connected(&self, user: &Arc<str>) {
        if self.hears_of(user) {
            self.hold(Holding::User(user.clone()));
        }
    }

    pub fn disconnected(&self, user: &Arc<str>) {
        if self.hears_of(user) {
            self.release(Holding::User(user.clone()));
        }
    }

    /// Whether anyone hears of this user's online and offline: native users with
    /// `--webhook-url`; Pusher has no such webhook for its signed-in users.
    fn hears_of(&self, user: &str) -> bool {
        self.native && !user.starts_with("pusher:")
    }

    pub async fn track(&self, receipt: &Receipt) -> Result<(), BrokerError> {
        self.store.track(receipt).await
    }

    pub async fn ack(&self, ack: &Ack) -> Result<(), BrokerError> {
        self.store.ack(ack).await
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, Counted> {
        self.counted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, holding: Holding) {
        self.holdings.hold(holding);
    }

    fn release(&self, holding: Holding) {
        self.holdings.release(holding);
    }

    /// Hands every edge to the store (within [`POST_TIMEOUT`]) and leaves: what is queued
    /// waits in the store for the next node to send it.
    pub async fn close(&self) {
        let (flushed, done) = oneshot::channel();
        let edges = &self.holdings.edges;
        let flush =
            async { edges.send(Message::Flush(flushed)).await.is_ok() && done.await.is_ok() };
        if !tokio::time::timeout(POST_TIMEOUT, flush)
            .await
            .unwrap_or(false)
        {
            tracing::warn!("lifecycle changes not recorded before shutdown");
        }
        for task in std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner))
        {
            task.abort();
        }
        self.store.close().await;
    }
}

/// Applies edges in batches, in order; a failed batch is retried (Redis may be restarting).
async fn apply_edges(store: Arc<dyn LifecycleStore>, mut pending: mpsc::Receiver<Message>) {
    let mut messages = Vec::new();
    while pending.recv_many(&mut messages, 512).await > 0 {
        let mut edges = Vec::with_capacity(messages.len());
        let mut occurred = Vec::new();
        let mut flushes = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Edge(edge) => edges.push(edge),
                Message::Occurred(event) => occurred.push(event),
                Message::Reassert(keys) => {
                    edges.extend(keys.into_iter().map(|key| Edge { key, enter: true }))
                }
                Message::Flush(done) => flushes.push(done),
            }
        }
        for chunk in edges.chunks(512) {
            let mut backoff = Duration::from_millis(100);
            let full = loop {
                match store.apply(chunk).await {
                    Ok(full) => break full,
                    Err(err) => {
                        tracing::warn!(%err, "lifecycle changes could not be recorded; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            queue_full(full);
        }
        if !occurred.is_empty() {
            match store.push(&occurred).await {
                Ok(full) => queue_full(full),
                // Occurrences are not retried: unlike a transition, nothing would correct a
                // missed one later, but nothing waits on it either.
                Err(err) => {
                    tracing::warn!(%err, events = occurred.len(), "webhook events not queued");
                    metrics()
                        .webhook
                        .dropped(DropReason::QueueFull, occurred.len() as u64);
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Ticks the store every [`TICK`] (liveness, due events, the lease) and publishes the result.
async fn tick_until_closed(
    store: Arc<dyn LifecycleStore>,
    holdings: Arc<Holdings>,
    latest: watch::Sender<Tick>,
) {
    loop {
        match store.tick().await {
            Ok(tick) => {
                if tick.fresh {
                    holdings.reassert();
                }
                let webhook = &metrics().webhook;
                webhook
                    .queue
                    .set(i64::try_from(tick.queued).unwrap_or(i64::MAX));
                if tick.expired > 0 {
                    webhook.dropped(DropReason::Expired, tick.expired);
                    tracing::error!(
                        events = tick.expired,
                        "webhook events not delivered within the retry window; dropped"
                    );
                }
                queue_full(tick.full);
                latest.send_replace(tick);
                if tick.more {
                    continue;
                }
            }
            Err(err) => tracing::debug!(%err, "lifecycle tick failed"),
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Counts (and logs, at most once a minute) events dropped for a full queue.
fn queue_full(events: u64) {
    static LOGGED: Mutex<Option<Instant>> = Mutex::new(None);
    if events == 0 {
        return;
    }
    metrics().webhook.dropped(DropReason::QueueFull, events);
    let mut logged = LOGGED.lock().unwrap_or_else(PoisonError::into_inner);
    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
        *logged = Some(Instant::now());
        tracing::error!(
            events,
            "the webhook queue is full (is the receiver down?); dropping events \
             (tidings_webhook_events_dropped_total counts them all)"
        );
    }
}

/// Whether an event was recorded longer than [`RETRY_WINDOW`] ago.
#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn keys_are_one_json_array_per_holding() {
        let channel = ChannelName::parse("chat:a").unwrap();
        assert_eq!(
            Holding::Channel(channel.clone()).key(),
            r#"["c","chat:a",""]"#
        );
        assert_eq!(
            Holding::Member(channel, "a\"b".into()).key(),
            r#"["m","chat:a","a\"b"]"#
        );
        assert_eq!(Holding::User("ann".into()).key(), r#"["u","","ann"]"#);
    }

    #[test]
    fn events_older_than_the_retry_window_have_expired() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let old = now - RETRY_WINDOW.as_millis() as u64 - 1;
        assert!(expired(&format!(r#"{{"id":"1","time_ms":{old}}}"#)));
        assert!(!expired(&format!(r#"{{"id":"2","time_ms":{now}}}"#)));
        assert!(!expired("not an event"));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently with Python's hmac module.
        let signature = sign(b"0123456789abcdef0123456789abcdef", 1700000000, b"{}");
        assert_eq!(
            signature,
            "t=1700000000,v1=417adf36b901772f658597a76d329694e335e65fc0849d7715c3ca33406309b5"
        );
    }
}
