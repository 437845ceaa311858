//! MemoryBroker: offsets and delivery inside one process, the default when no Redis is
//! configured.
//!
//! Each channel that has been published to has a stream (last offset, epoch, history) behind
//! its own lock; a publish takes that lock, assigns the next offset and delivers while holding
//! it, which is what keeps a channel's deliveries in offset order without a global lock.
//!
//! Limits: nothing survives a restart (a restarted process is a new generation: its
//! unpublished epochs and streams are new). History is a bounded ring per channel, emptied
//! after the history TTL without publications. A channel never published to has no stream at
//! all (only the set of subscribed channels names it), so subscribing to names costs nothing
//! once the subscribers leave. A stream that has no subscribed node and has been idle for the
//! position TTL is forgotten, so memory follows the channels in use rather than every name
//! ever published to; a later publication starts the channel again at offset 1 in a new
//! epoch, which is exactly what epochs announce. Positions with no history left to recover
//! (and no subscribed node) are kept at most [`MAX_BARE_POSITIONS`], the least recently used
//! forgotten first, however many channel names are published to within the position TTL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::{
    Broker, BrokerError, Deliver, History, HistoryQuery, PublishOptions, Retention, new_epoch,
    parse_unpublished, unpublished_epoch,
};
use crate::protocol::{ChannelName, ClientInfo, IdempotencyKey, Publication, StreamPosition};

/// Positions of channels without a subscribed node and with no history left kept at most:
/// such a position only tells a client that was exactly at its end that it missed nothing.
pub const MAX_BARE_POSITIONS: usize = 100_000;

/// The in-process broker.
pub struct MemoryBroker {
    streams: Mutex<Streams>,
    deliver: Arc<dyn Deliver>,
    retention: Retention,
    /// This process's generation: the storage its unpublished epochs were read from.
    generation: Arc<str>,
    /// The clock of unpublished epochs (monotonic: they are read back by this process only).
    started: Instant,
}

struct Streams {
    /// Channels that have been published to.
    by_channel: HashMap<ChannelName, Arc<Mutex<Stream>>>,
    /// Channels this node subscribes to: their streams are never forgotten while someone may
    /// hold their positions.
    subscribed: HashSet<ChannelName>,
    last_sweep: Instant,
    /// Bare positions are bounded when `by_channel` reaches this many streams.
    next_bound: usize,
    /// [`MAX_BARE_POSITIONS`] (smaller in tests).
    bare_bound: usize,
}

#[derive(Debug)]
struct Stream {
    offset: u64,
    epoch: Arc<str>,
    last_used: Instant,
    last_published: Instant,
    history: VecDeque<Publication>,
    /// The history's lifetime, as the last publication asked.
    history_ttl: std::time::Duration,
    /// Idempotency keys seen recently: key → (offset, remembered until).
    idempotency: HashMap<IdempotencyKey, (u64, Instant)>,
    /// Removed from the map by a sweep; whoever still holds it must look the channel up again.
    evicted: bool,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(deliver: Arc<dyn Deliver>, retention: Retention) -> Self {
        Self {
            streams: Mutex::new(Streams {
                by_channel: HashMap::new(),
                subscribed: HashSet::new(),
                last_sweep: Instant::now(),
                next_bound: MAX_BARE_POSITIONS,
                bare_bound: MAX_BARE_POSITIONS,
            }),
            deliver,
            retention,
            generation: new_epoch(),
            started: Instant::now(),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the channel's live stream, under the stream's lock; `None` when the channel
    /// has none (nothing was published, or it was forgotten), unless `create`.
    fn with_stream<T>(
        &self,
        channel: &ChannelName,
        create: bool,
        f: impl FnOnce(&mut Stream) -> T,
    ) -> Option<T> {
        loop {
            let stream = self.lookup(channel, create)?;
            let mut stream = stream.lock().unwrap_or_else(PoisonError::into_inner);
            if stream.evicted {
                continue;
            }
            let now = Instant::now();
            stream.last_used = now;
            if now.duration_since(stream.last_published) >= stream.history_ttl {
                stream.history.clear();
            }
            return Some(f(&mut stream));
        }
    }

    fn lookup(&self, channel: &ChannelName, create: bool) -> Option<Arc<Mutex<Stream>>> {
        let mut streams = self.streams();
        let now = Instant::now();
        // Sweeping a quarter-TTL apart bounds the cost to one pass per period, amortised over
        // the calls of that period.
        if now.duration_since(streams.last_sweep) >= self.retention.position_ttl / 4 {
            streams.last_sweep = now;
            let ttl = self.retention.position_ttl;
            let Streams {
                by_channel,
                subscribed,
                ..
            } = &mut *streams;
            by_channel.retain(|channel, stream| match stream.try_lock() {
                Ok(mut stream) => {
                    let keep =
                        subscribed.contains(channel) || now.duration_since(stream.last_used) < ttl;
                    stream.evicted = !keep;
                    keep
                }
                // In use right now, so not idle.
                Err(_) => true,
            });
        }
        if !create {
            return streams.by_channel.get(channel).cloned();
        }
        if streams.by_channel.len() >= streams.next_bound
            && !streams.by_channel.contains_key(channel)
        {
            streams.bound_bare(now);
        }
        let stream = streams
            .by_channel
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    offset: 0,
                    epoch: new_epoch(),
                    last_used: now,
                    last_published: now,
                    history: VecDeque::new(),
                    history_ttl: self.retention.history_ttl,
                    idempotency: HashMap::new(),
                    evicted: false,
                }))
            })
            .clone();
        Some(stream)
    }

    #[cfg(test)]
    fn bound_bare_positions_to(&self, bound: usize) {
        let mut streams = self.streams();
        streams.bare_bound = bound;
        streams.next_bound = bound;
    }

    /// Where a channel without a stream stands: nothing published, as read now.
    fn unpublished(&self) -> StreamPosition {
        StreamPosition {
            offset: 0,
            epoch: unpublished_epoch(&self.generation, self.started.elapsed().as_secs()),
        }
    }

    /// Whether `epoch` is an unpublished epoch of this process read less than the position
    /// TTL ago: a stream forgotten since would have had to idle that long after it.
    fn vouches_for(&self, epoch: Option<&str>) -> bool {
        let Some((generation, seconds)) = epoch.and_then(parse_unpublished) else {
            return false;
        };
        let now = self.started.elapsed().as_secs();
        generation == &*self.generation
            && seconds <= now
            && now - seconds < self.retention.position_ttl.as_secs()
    }
}

impl Streams {
    /// Forgets the least recently used bare positions (no subscribed node, no history left)
    /// past the bound. One pass over the streams, then none before as many new streams again
    /// as half the bound: amortised, a few steps per new stream.
    fn bound_bare(&mut self, now: Instant) {
        let Self {
            by_channel,
            subscribed,
            ..
        } = self;
        let mut bare: Vec<(Instant, ChannelName)> = by_channel
            .iter()
            .filter(|(channel, _)| !subscribed.contains(*channel))
            .filter_map(|(channel, stream)| {
                let stream = stream.try_lock().ok()?;
                let spent = stream.history.is_empty()
                    || now.duration_since(stream.last_published) >= stream.history_ttl;
                spent.then(|| (stream.last_used, channel.clone()))
            })
            .collect();
        if bare.len() > self.bare_bound {
            bare.sort_unstable_by_key(|(used, _)| *used);
            let excess = bare.len() - self.bare_bound;
            let doomed: HashSet<ChannelName> = bare
                .into_iter()
                .take(excess)
                .map(|(_, channel)| channel)
                .collect();
            by_channel.retain(|channel, stream| {
                if !doomed.contains(channel) {
                    return true;
                }
                match stream.try_lock() {
                    Ok(mut stream) => {
                        // Whoever still holds it looks the channel up again.
                        stream.evicted = true;
                        false
                    }
                    Err(_) => true,
                }
            });
        }
        self.next_bound = self.by_channel.len() + self.bare_bound / 2;
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let history = options.history.unwrap_or_else(|| self.retention.history());
        let published = self.with_stream(channel, true, |stream| {
            let now = Instant::now();
            if let Some(idempotency) = &options.idempotency {
                // Forgetting expired keys here keeps the map bounded by the publish rate
                // times the window, amortised over the publications that fill it.
                stream.idempotency.retain(|_, (_, until)| *until > now);
                if let Some((offset, _)) = stream.idempotency.get(&idempotency.key) {
                    return StreamPosition {
                        offset: *offset,
                        epoch: stream.epoch.clone(),
                    };
                }
                stream.idempotency.insert(
                    idempotency.key.clone(),
                    (stream.offset + 1, now + idempotency.window),
                );
            }
            stream.offset += 1;
            let publication = Publication {
                channel: channel.clone(),
                offset: stream.offset,
                epoch: stream.epoch.clone(),
                data,
                info,
            };
            self.deliver.deliver(&publication);
            stream.last_published = Instant::now();
            stream.history_ttl = history.ttl;
            if history.size > 0 {
                stream.history.push_back(publication);
            }
            while stream.history.len() > history.size {
                stream.history.pop_front();
            }
            StreamPosition {
                offset: stream.offset,
                epoch: stream.epoch.clone(),
            }
        });
        published.ok_or_else(|| BrokerError::Internal {
            context: "publishing in memory",
            source: "the channel's stream could not be created".into(),
        })
    }

    async fn control(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.deliver.control(message);
        Ok(())
    }

    async fn control_to(&self, node: &str, message: &[u8]) -> Result<(), BrokerError> {
        if node == self.node_id() {
            self.deliver.control(message);
        }
        Ok(())
    }

    /// One process is the only node: there is nobody to tell.
    async fn announce(&self, _: &[(ChannelName, usize)]) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn channels(&self) -> Result<HashMap<ChannelName, usize>, BrokerError> {
        Ok(HashMap::new())
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        // Every publication is delivered locally anyway; this only pins the stream.
        self.streams().subscribed.insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.streams().subscribed.remove(channel);
        Ok(())
    }

    async fn position(&self, channel: &ChannelName) -> Result<StreamPosition, BrokerError> {
        let position = self.with_stream(channel, false, |stream| StreamPosition {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
        });
        Ok(position.unwrap_or_else(|| self.unpublished()))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        let vouched = self.vouches_for(query.unpublished.as_deref());
        let history = self.with_stream(channel, false, |stream| {
            let publications = query
                .select(stream.history.iter())
                .into_iter()
                .cloned()
                .collect();
            History {
                publications,
                position: StreamPosition {
                    offset: stream.offset,
                    epoch: stream.epoch.clone(),
                },
                vouched,
            }
        });
        Ok(history.unwrap_or_else(|| History {
            publications: Vec::new(),
            position: self.unpublished(),
            vouched,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Collect(Mutex<Vec<(String, u64)>>);

    impl Deliver for Collect {
        fn deliver(&self, publication: &Publication) {
            self.0
                .lock()
                .unwrap()
                .push((publication.channel.to_string(), publication.offset));
        }

        fn reconcile(&self, _: &ChannelName, _: &StreamPosition) {}

        fn control(&self, _: &[u8]) {}

        fn event(&self, _: &ChannelName, _: &[u8]) {}
    }

    fn data() -> Arc<RawValue> {
        Arc::from(RawValue::from_string("1".into()).unwrap())
    }

    fn info() -> ClientInfo {
        ClientInfo {
            client: "c".into(),
            user: "u".into(),
        }
    }

    #[tokio::test]
    async fn offsets_count_from_one_per_channel_and_every_publication_is_delivered() {
        let collect = Arc::new(Collect(Mutex::new(Vec::new())));
        let broker = MemoryBroker::new(collect.clone(), Retention::default());
        let (a, b) = (
            ChannelName::parse("a").unwrap(),
            ChannelName::parse("b").unwrap(),
        );
        let options = PublishOptions::default();
        let publish = |channel| broker.publish(channel, data(), info(), &options);
        assert_eq!(publish(&a).await.unwrap().offset, 1);
        assert_eq!(publish(&a).await.unwrap().offset, 2);
        assert_eq!(publish(&b).await.unwrap().offset, 1);
        assert_eq!(broker.position(&a).await.unwrap().offset, 2);
        assert_eq!(
            *collect.0.lock().unwrap(),
            [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]
        );
    }

    #[tokio::test]
    async fn bare_positions_are_bounded_least_recently_used_first() {
        let broker = MemoryBroker::new(
            Arc::new(Collect(Mutex::new(Vec::new()))),
            Retention {
                history_size: 0,
                ..Retention::default()
            },
        );
        broker.bound_bare_positions_to(10);
        let kept = ChannelName::parse("kept").unwrap();
        let pinned = broker
            .publish(&kept, data(), info(), &PublishOptions::default())
            .await
            .unwrap();
        broker.subscribe(&kept).await.unwrap();
        for n in 0..100 {
            let channel = ChannelName::parse(&format!("bare-{n}")).unwrap();
            broker
                .publish(&channel, data(), info(), &PublishOptions::default())
                .await
                .unwrap();
        }
        // At most the bound and half of it again between passes, whatever was published to.
        let streams = broker.streams.lock().unwrap().by_channel.len();
        assert!(streams <= 1 + 10 + 5, "{streams} streams kept");
        // The subscribed channel keeps its position; the newest bare one too.
        assert_eq!(broker.position(&kept).await.unwrap(), pinned);
        let newest = ChannelName::parse("bare-99").unwrap();
        assert_eq!(broker.position(&newest).await.unwrap().offset, 1);
        let oldest = ChannelName::parse("bare-0").unwrap();
        assert_eq!(broker.position(&oldest).await.unwrap().offset, 0);
    }

    #[tokio::test]
    async fn idle_unsubscribed_streams_are_forgotten_and_restart_in_a_new_epoch() {
        let retention = Retention {
            position_ttl: Duration::ZERO,
            ..Retention::default()
        };
        let broker = MemoryBroker::new(Arc::new(Collect(Mutex::new(Vec::new()))), retention);
        let idle = ChannelName::parse("idle").unwrap();
        let pinned = ChannelName::parse("pinned").unwrap();
        broker.subscribe(&pinned).await.unwrap();
        let first = broker
            .publish(&idle, data(), info(), &PublishOptions::default())
            .await
            .unwrap();
        let kept = broker
            .publish(&pinned, data(), info(), &PublishOptions::default())
            .await
            .unwrap();
        // With a zero TTL every lookup sweeps: the idle stream is gone, the pinned one stays.
        let again = broker
            .publish(&idle, data(), info(), &PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
        let next = broker
            .publish(&pinned, data(), info(), &PublishOptions::default())
            .await
            .unwrap();
        assert_eq!((next.offset, &next.epoch), (kept.offset + 1, &kept.epoch));
        assert_eq!(broker.streams.lock().unwrap().by_channel.len(), 1);
    }
}
