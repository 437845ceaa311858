//! Hub: which local connections subscribe to which channel, and the fan-out of each
//! publication to them.
//!
//! A publication is encoded to its push frame once, and only if the channel has local
//! subscribers; every subscriber's outbox receives a clone of the same shared bytes. Pushing
//! into an outbox never blocks (a full one closes its own connection), so a slow client cannot
//! delay the others. The map is sharded by channel so that publishes to different channels do
//! not contend; each shard is a std `Mutex` held for short, non-async sections only, and the
//! encoding happens outside it.
//!
//! The hub never calls the broker: the node decides when a channel's first subscriber needs a
//! broker subscription.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::sync::Arc;

use crate::connection::ConnectionId;
use crate::outbox::Outbox;
use crate::protocol::{ChannelEvent, ChannelName, Publication, Published, StreamPosition};

const SHARDS: usize = 64;

/// One shard: channel → its local subscribers.
type Shard = HashMap<ChannelName, Vec<Outbox>>;

/// Local channel → subscribers map with encode-once fan-out.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(channel) as usize) % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a subscriber; returns true if it is the channel's first on this node.
    pub fn add(&self, channel: &ChannelName, outbox: Outbox) -> bool {
        let mut shard = self.shard(channel);
        let entry = shard.entry(channel.clone());
        // The map's own name for the channel, which every subscriber then shares.
        let name = entry.key().clone();
        let subscribers = entry.or_default();
        subscribers.push(outbox.clone());
        let first = subscribers.len() == 1;
        drop(shard);
        outbox.share_name(&name);
        first
    }

    /// Removes a subscriber; returns true if it was the channel's last one on this node.
    pub fn remove(&self, channel: &ChannelName, id: ConnectionId) -> bool {
        let mut shard = self.shard(channel);
        let Some(subscribers) = shard.get_mut(channel) else {
            return false;
        };
        let before = subscribers.len();
        subscribers.retain(|outbox| outbox.id() != id);
        let removed = subscribers.len() < before;
        if subscribers.is_empty() {
            shard.remove(channel);
        }
        removed && !shard.contains_key(channel)
    }

    /// How many local connections subscribe to `channel`.
    #[cfg(test)]
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        self.shard(channel).get(channel).map_or(0, Vec::len)
    }

    /// Every channel with local subscribers, and how many.
    pub fn local_channels(&self) -> Vec<(ChannelName, usize)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard
                    .iter()
                    .map(|(channel, subscribers)| (channel.clone(), subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Fans a publication out to the channel's local subscribers.
    /// `compress_from`: the size from which the frame may go out compressed (`None`: never).
    pub fn broadcast(&self, publication: &Publication, compress_from: Option<usize>) {
        let channel = &publication.channel;
        if !self.shard(channel).contains_key(channel) {
            return;
        }
        // Encoded between two short holds of the lock rather than under it: subscribers that
        // come or go meanwhile get or miss it exactly as if it had arrived a moment later or
        // earlier, which their outbox's offset check already allows for.
        let published = Arc::new(Published::new(publication.clone(), compress_from));
        let shard = self.shard(channel);
        if let Some((name, subscribers)) = shard.get_key_value(channel) {
            for outbox in subscribers {
                outbox.push_publication_on(name, &published);
            }
        }
    }

    /// Hands an event (a join, a leave) to the channel's local subscribers.
    pub fn broadcast_event(&self, event: &Arc<ChannelEvent>) {
        let channel = event.channel();
        let shard = self.shard(channel);
        for outbox in shard.get(channel).into_iter().flatten() {
            outbox.push_event(event);
        }
    }

    /// Has every local subscriber of `channel` compare its delivery with `position`.
    pub fn reconcile(&self, channel: &ChannelName, position: &StreamPosition) {
        let shard = self.shard(channel);
        for outbox in shard.get(channel).into_iter().flatten() {
            outbox.check_position(channel, position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Messages};
    use crate::protocol::{ClientInfo, Codec, V1};
    use serde_json::value::RawValue;

    #[test]
    fn first_and_last_subscribers_are_reported() {
        let hub = Hub::new();
        let ch = ChannelName::parse("c").unwrap();
        let (first, second) = (Outbox::new(1024, "c".into()), Outbox::new(1024, "c".into()));
        assert!(hub.add(&ch, first.clone()));
        assert!(!hub.add(&ch, second.clone()));
        assert_eq!(hub.subscriber_count(&ch), 2);
        assert!(!hub.remove(&ch, first.id()));
        assert!(
            !hub.remove(&ch, first.id()),
            "removing twice is not a last removal"
        );
        assert!(hub.remove(&ch, second.id()));
        assert_eq!(hub.subscriber_count(&ch), 0);
    }

    fn live_outboxes(hub: &Hub, ch: &ChannelName, n: usize) -> Vec<Outbox> {
        (0..n)
            .map(|_| {
                let outbox = Outbox::new(1 << 16, "c".into());
                outbox.begin_subscription(ch);
                outbox.complete_subscription(
                    ch,
                    vec![],
                    &StreamPosition {
                        offset: 0,
                        epoch: "e".into(),
                    },
                );
                hub.add(ch, outbox.clone());
                outbox
            })
            .collect()
    }

    fn publication(ch: &ChannelName, offset: u64) -> Publication {
        Publication {
            channel: ch.clone(),
            offset,
            epoch: "e".into(),
            data: Arc::from(RawValue::from_string(r#"{"text":"hello"}"#.into()).unwrap()),
            info: ClientInfo {
                client: "c".into(),
                user: "u".into(),
            },
        }
    }

    /// Heap allocations made by the second fan-out of a publication to `n` live subscribers
    /// (the first one grows every queue to its working size, as a running server's have).
    fn allocations_per_broadcast(n: usize) -> u64 {
        let hub = Hub::new();
        let ch = ChannelName::parse("c").unwrap();
        let outboxes = live_outboxes(&hub, &ch, n);
        let mut batch = Vec::new();
        let (first, second) = (publication(&ch, 1), publication(&ch, 2));
        hub.broadcast(&first, None);
        for outbox in &outboxes {
            outbox.drain(&mut batch);
            batch.clear();
        }
        let counted = allocation_counter::measure(|| hub.broadcast(&second, None));
        for outbox in &outboxes {
            outbox.drain(&mut batch);
            assert_eq!(batch.len(), 1, "every subscriber got the publication");
            batch.clear();
        }
        counted.count_total
    }

    #[test]
    fn a_publication_allocates_the_same_for_ten_thousand_subscribers_as_for_one() {
        let one = allocations_per_broadcast(1);
        let many = allocations_per_broadcast(10_000);
        eprintln!("allocations per publication: {one} for 1 subscriber, {many} for 10,000");
        assert!(one > 0, "the allocation counter is active");
        assert_eq!(
            many, one,
            "fan-out to 10,000 subscribers allocated {many} times, to one {one} times"
        );
    }

    /// Allocations and compressions made by the second fan-out of a compressible publication
    /// to `n` subscribers, each of whose writers asks for the compressed frame.
    fn compressed_broadcast(n: usize) -> (u64, usize) {
        let hub = Hub::new();
        let ch = ChannelName::parse("c").unwrap();
        let outboxes = live_outboxes(&hub, &ch, n);
        let mut batch = Vec::new();
        let compressions = std::sync::atomic::AtomicUsize::new(0);
        let deflate = |text: &[u8]| {
            compressions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::transport::deflate::deflate(text)
        };
        // What the WebSocket transport does with each item: the v1 codec, then the shared
        // compressed form.
        let mut fan_out = |publication: &Publication| {
            hub.broadcast(publication, Some(0));
            for outbox in &outboxes {
                outbox.drain(&mut batch);
                for item in batch.drain(..) {
                    let mut messages = Messages::default();
                    V1.encode(item, &mut messages);
                    for frame in messages {
                        assert!(frame.deflated(deflate).is_some(), "compressed");
                    }
                }
            }
        };
        fan_out(&publication(&ch, 1));
        compressions.store(0, std::sync::atomic::Ordering::Relaxed);
        let counted = allocation_counter::measure(|| fan_out(&publication(&ch, 2)));
        (
            counted.count_total,
            compressions.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[test]
    fn a_compressed_publication_is_compressed_once_for_ten_thousand_subscribers() {
        let (one, once) = compressed_broadcast(1);
        let (many, still_once) = compressed_broadcast(10_000);
        eprintln!("compressed fan-out: {one} allocations for 1 subscriber, {many} for 10,000");
        assert_eq!(
            (once, still_once),
            (1, 1),
            "one compression per publication"
        );
        assert_eq!(many, one, "allocations do not grow with the subscribers");
    }

    #[test]
    fn every_subscriber_gets_the_same_shared_frame() {
        let hub = Hub::new();
        let ch = ChannelName::parse("c").unwrap();
        let outboxes: Vec<Outbox> = (0..3).map(|_| Outbox::new(1 << 16, "c".into())).collect();
        for outbox in &outboxes {
            outbox.begin_subscription(&ch);
            outbox.complete_subscription(
                &ch,
                vec![],
                &StreamPosition {
                    offset: 0,
                    epoch: "e".into(),
                },
            );
            hub.add(&ch, outbox.clone());
        }
        hub.broadcast(
            &Publication {
                channel: ch.clone(),
                offset: 1,
                epoch: "e".into(),
                data: Arc::from(RawValue::from_string("1".into()).unwrap()),
                info: ClientInfo {
                    client: "c".into(),
                    user: "u".into(),
                },
            },
            None,
        );
        let frames: Vec<Frame> = outboxes
            .iter()
            .flat_map(|outbox| {
                let mut batch = Vec::new();
                outbox.drain(&mut batch);
                assert_eq!(batch.len(), 1);
                let mut messages = Messages::default();
                V1.encode(batch.remove(0), &mut messages);
                messages
            })
            .collect();
        assert_eq!(frames.len(), 3);
        let first = frames[0].as_str().as_ptr();
        assert!(frames.iter().all(|f| f.as_str().as_ptr() == first));
    }
}
