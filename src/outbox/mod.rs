//! Outbox: one connection's bounded queue of outgoing [`Item`]s, and the one record of which
//! channels the connection subscribes to.
//!
//! The hub pushes publications and events into it (one shared `Arc` for every subscriber),
//! the session pushes replies and pushes, and the session's writer drains it in batches into
//! whatever transport carries the connection, whose codec makes the bytes. It is the single
//! place where a connection's memory is bounded; [`delivery`] keeps each channel gap-free.
//!
//! ## Slow consumers
//! Queued bytes are counted; a push that would pass the limit empties the queue and asks the
//! writer to close with [`CloseCode::SlowConsumer`]. Pushing never blocks and never waits for
//! the socket, so one client that stops reading cannot delay anybody else's delivery.
//!
//! ## Ordering and subscriptions
//! Per channel the outbox keeps where delivery stands. A subscription is *pending* from before
//! the session registers in the hub until its reply is queued: publications arriving meanwhile
//! are held back. Completing the subscription queues the reply, then the held publications
//! past the position it reported, in offset order. A live channel drops any publication at or
//! below the last offset queued, so a subscriber never sees an offset twice or out of order;
//! a publication that skips offsets or comes from another epoch means this node missed some,
//! and the connection is closed with [`CloseCode::InsufficientState`] so that the client
//! reconnects and recovers them from history — never a silent gap.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::connection::ConnectionId;
use crate::protocol::{ChannelEvent, ChannelName, CloseCode, Item, Published, StreamPosition};

mod channels;
mod delivery;

use channels::Channels;

use delivery::{Delivery, Fate, continues, place, release};

/// Up to this many items a wake-up, the queue and the writer's batch give their capacity
/// back after writing (see [`Outbox::drain`]).
pub const SMALL_BATCH: usize = 4;

/// Why the connection is closing: what the writer must do last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer sent a close frame; the transport has queued the reply, the writer flushes it.
    ByPeer,
    /// The connection is gone; nothing more can be written.
    Gone,
    /// Send this close code, then end.
    Send {
        code: CloseCode,
        reason: Cow<'static, str>,
    },
}

impl Closing {
    /// A close with the code's documented reason.
    pub fn with(code: CloseCode) -> Self {
        Self::Send {
            code,
            reason: Cow::Borrowed(code.reason()),
        }
    }

    /// A close with a reason of its own.
    pub fn because(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Send {
            code,
            reason: reason.into(),
        }
    }
}

/// A cheap-to-clone handle on one connection's queue.
#[derive(Clone, Debug)]
pub struct Outbox(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: ConnectionId,
    /// The connection's client id, as clients and presence know it.
    client: Arc<str>,
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` keeps a permit, so a push between a drain and the next
    /// wait is never missed. Only a push into an empty queue notifies: a queue with items in
    /// it has had its wake-up since the writer last drained it (under load, most pushes).
    ready: Notify,
    /// Set once the connection is closing; `closing` wakes whoever waits for that. A flag and
    /// a `Notify` rather than a cancellation token, which allocates a tree node of its own
    /// (~100 bytes on every connection).
    closed: AtomicBool,
    closing: Notify,
    max_bytes: usize,
}

/// The queue proper. Most wake-ups find one item, so the first lives inline: a connection
/// that gets an item now and then allocates nothing for it, and an idle one keeps no heap
/// capacity (see [`Outbox::drain`]).
#[derive(Debug, Default)]
struct Queue {
    /// Set whenever `rest` is not empty: the oldest item.
    first: Option<Item>,
    rest: VecDeque<Item>,
}

impl Queue {
    fn push_back(&mut self, item: Item) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    /// Moves every item into `batch`, in order, and gives back the capacity of a queue that
    /// held few: the next small wake-up costs one allocation, which its system call dwarfs,
    /// while a connection under load keeps what its batches need. (Shrinking every large
    /// batch back to a fixed size had each one grow the queue again by doubling, four
    /// reallocations a batch at saturation.) Capacity is kept only while batches keep coming:
    /// the writer drains again after each write, and an empty or small drain frees it.
    fn drain_into(&mut self, batch: &mut Vec<Item>) {
        let drained = self.rest.len() + 1;
        batch.extend(self.first.take());
        batch.extend(self.rest.drain(..));
        if drained <= SMALL_BATCH {
            self.rest = VecDeque::new();
        } else if self.rest.capacity() > 4 * drained {
            // The load fell: keep what this batch needed.
            self.rest.shrink_to(drained);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: Queue,
    /// What the items in `queue` cost ([`Item::cost`]).
    queued_bytes: usize,
    /// What the items held for pending subscriptions cost.
    held_bytes: usize,
    /// Every channel the connection subscribes to (pending or live), and where its delivery
    /// stands: the node's one answer to "is this connection subscribed to C?".
    channels: Channels,
    closing: Option<Closing>,
}

impl State {
    /// Queues `item`; true when the queue was empty, the one case that must wake the writer.
    fn enqueue(&mut self, item: Item) -> bool {
        let was_empty = self.queue.first.is_none();
        self.queued_bytes += item.cost();
        self.queue.push_back(item);
        was_empty
    }
}

impl Outbox {
    /// An empty outbox that holds at most `max_bytes` of queued items.
    pub fn new(max_bytes: usize, client: Arc<str>) -> Self {
        Self(Arc::new(Inner {
            id: ConnectionId::next(),
            client,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            max_bytes,
        }))
    }

    /// The connection's id, unique in this process.
    pub fn id(&self) -> ConnectionId {
        self.0.id
    }

    /// The connection's client id.
    pub fn client(&self) -> &Arc<str> {
        &self.0.client
    }

    /// The epoch of a live subscription (`None` while it is pending, or without one).
    pub fn live_epoch(&self, channel: &ChannelName) -> Option<Arc<str>> {
        match self.state().channels.get(channel) {
            Some(Delivery::Live { epoch, .. }) => Some(epoch.clone()),
            _ => None,
        }
    }

    /// Whether the connection subscribes to `channel` (or is subscribing).
    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.state().channels.contains_key(channel)
    }

    /// How many channels the connection subscribes to.
    pub fn subscription_count(&self) -> usize {
        self.state().channels.len()
    }

    /// The channels the connection subscribes to.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.state().channels.keys()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so poisoning is ignored.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply or push. Returns false if the connection is closing.
    pub fn push(&self, item: Item) -> bool {
        let mut state = self.state();
        if state.closing.is_some() || !self.reserve_reply(&mut state, item.cost()) {
            return false;
        }
        let wake = state.enqueue(item);
        drop(state);
        if wake {
            self.0.ready.notify_one();
        }
        true
    }

    /// [`Outbox::push_publication_on`] under the publication's own name, for tests.
    #[cfg(test)]
    pub fn push_publication(&self, published: &Arc<Published>) {
        let channel = &published.publication.channel;
        self.push_shared(channel, Item::Publication(published.clone()));
    }

    /// Queues a publication, applying its channel's delivery rules: held while pending;
    /// dropped at or below the last offset; the connection closed with
    /// [`CloseCode::InsufficientState`] on a gap or another epoch. `channel` is the name as
    /// the hub keeps it, which the outbox shares ([`Outbox::share_name`]): the lookup
    /// compares pointers, not names.
    pub fn push_publication_on(&self, channel: &ChannelName, published: &Arc<Published>) {
        debug_assert_eq!(channel, &published.publication.channel);
        self.push_shared(channel, Item::Publication(published.clone()));
    }

    /// Keeps the hub's `Arc` of a channel's name as this connection's: the fan-out then finds
    /// the channel by pointer (one subscriber of many: one comparison saved per delivery).
    pub fn share_name(&self, channel: &ChannelName) {
        self.state().channels.share_name(channel);
    }

    /// Queues an event (a join or leave): held while the subscription is pending, in order
    /// with its publications; dropped when the connection does not subscribe.
    pub fn push_event(&self, event: &Arc<ChannelEvent>) {
        self.push_shared(event.channel(), Item::Event(event.clone()));
    }

    /// The one enqueue for what the hub fans out. One map lookup per subscriber and item:
    /// this is the fan-out's hot path.
    fn push_shared(&self, channel: &ChannelName, item: Item) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        let cost = item.cost();
        let fate = match state.channels.get_mut(channel) {
            // Unsubscribed while this item was in flight.
            None => Fate::Drop,
            Some(delivery) => delivery.admit(place(&item)),
        };
        match fate {
            Fate::Drop => {}
            Fate::Gap => {
                drop(state);
                self.close_insufficient();
            }
            // Past the limit, `reserve` closes the connection as a slow consumer.
            _ if !self.reserve(&mut state, cost) => {}
            Fate::Hold => {
                if let Some(Delivery::Pending { held, .. }) = state.channels.get_mut(channel) {
                    held.push(item);
                }
                state.held_bytes += cost;
            }
            Fate::Queue => {
                let wake = state.enqueue(item);
                drop(state);
                if wake {
                    self.0.ready.notify_one();
                }
            }
        }
    }

    /// Marks `channel` pending: call before registering in the hub.
    pub fn begin_subscription(&self, channel: &ChannelName) {
        self.state()
            .channels
            .insert(channel.clone(), Delivery::pending());
    }

    /// Queues the subscription's reply (or the pushes standing for it), then what was held
    /// past `position`, and makes the channel live. Held publications that do not continue
    /// the position (a gap, another epoch) close the connection to recover.
    pub fn complete_subscription(
        &self,
        channel: &ChannelName,
        reply: Vec<Item>,
        position: &StreamPosition,
    ) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        // Taken in place rather than removed: the entry keeps the name the hub shared.
        let taken = state
            .channels
            .get_mut(channel)
            .map(|delivery| std::mem::replace(delivery, Delivery::pending()));
        let (held, floor) = match taken {
            Some(Delivery::Pending { held, floor }) => (held, floor),
            _ => (Vec::new(), None),
        };
        state.held_bytes -= held.iter().map(Item::cost).sum::<usize>();
        let released = release(held, position);
        let continued = released
            .as_ref()
            .is_some_and(|(_, delivery)| match delivery {
                // A reconciliation while subscribing saw the channel further than this
                // subscription can account for: publications were missed in between.
                Delivery::Live { last, epoch } => floor.is_none_or(|f| continues(*last, epoch, &f)),
                Delivery::Pending { .. } => false,
            });
        let Some((items, delivery)) = released.filter(|_| continued) else {
            // Listed until the session leaves it, like every channel of a closing connection.
            state.channels.insert(channel.clone(), Delivery::pending());
            drop(state);
            return self.close_insufficient();
        };
        state.channels.insert(channel.clone(), delivery);
        for reply in reply {
            if !self.reserve_reply(&mut state, reply.cost()) {
                return;
            }
            state.enqueue(reply);
        }
        for item in items {
            if !self.reserve(&mut state, item.cost()) {
                return;
            }
            state.enqueue(item);
        }
        drop(state);
        self.0.ready.notify_one();
    }

    /// Compares the channel's delivery with where the broker says the channel stands; a
    /// subscriber that is behind (or in another epoch) missed publications and is closed to
    /// recover.
    pub fn check_position(&self, channel: &ChannelName, position: &StreamPosition) {
        let mut state = self.state();
        match state.channels.get_mut(channel) {
            Some(Delivery::Live { last, epoch }) if !continues(*last, epoch, position) => {
                drop(state);
                self.close_insufficient();
            }
            Some(Delivery::Pending { floor, .. }) => *floor = Some(position.clone()),
            _ => {}
        }
    }

    fn close_insufficient(&self) {
        let mut state = self.state();
        state.queue.clear();
        state.queued_bytes = 0;
        drop(state);
        self.close(Closing::with(CloseCode::InsufficientState));
    }

    /// Forgets `channel`: items still in flight for it are dropped. False when the connection
    /// did not subscribe to it.
    pub fn end_subscription(&self, channel: &ChannelName) -> bool {
        let mut state = self.state();
        match state.channels.remove(channel) {
            Some(Delivery::Pending { held, .. }) => {
                state.held_bytes -= held.iter().map(Item::cost).sum::<usize>();
                true
            }
            Some(Delivery::Live { .. }) => true,
            None => false,
        }
    }

    /// Asks the writer to close. The first reason wins; later ones are ignored.
    pub fn close(&self, closing: Closing) {
        let mut state = self.state();
        if state.closing.is_none() {
            state.closing = Some(closing);
        }
        drop(state);
        self.0.ready.notify_one();
        self.mark_closed();
    }

    /// Resolves once the connection is closing, for whatever reason.
    pub async fn closed(&self) {
        let notified = self.0.closing.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a close in between still wakes it.
        notified.as_mut().enable();
        if !self.0.closed.load(Ordering::Acquire) {
            notified.await;
        }
    }

    fn mark_closed(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.closing.notify_waiters();
    }

    /// Resolves when there may be something to drain.
    pub async fn ready(&self) {
        self.0.ready.notified().await
    }

    /// Moves every queued item into `batch` (in order) and reports whether to close after
    /// writing them.
    pub fn drain(&self, batch: &mut Vec<Item>) -> Option<Closing> {
        let mut state = self.state();
        state.queue.drain_into(batch);
        state.queued_bytes = 0;
        state.closing.clone()
    }

    /// Checks that a reply costing `cost` fits. Replies are data the client asked for and may
    /// be larger than the limit (a recovery can be the whole history): one is accepted while
    /// the backlog is under half the limit, so a client that reads is never cut off for asking.
    fn reserve_reply(&self, state: &mut State, cost: usize) -> bool {
        let used = state.queued_bytes + state.held_bytes;
        used < self.0.max_bytes / 2 || self.reserve(state, cost)
    }

    /// Checks that `cost` more fits, or closes the connection as a slow consumer.
    ///
    /// The limit bounds the backlog. What the writer is writing is not counted: it is at most
    /// one earlier backlog, so a connection holds at most about twice the limit (plus one
    /// large reply).
    fn reserve(&self, state: &mut State, cost: usize) -> bool {
        let used = state.queued_bytes + state.held_bytes;
        if used + cost <= self.0.max_bytes {
            return true;
        }
        tracing::debug!(
            queued = state.queued_bytes,
            held = state.held_bytes,
            cost,
            "outgoing queue full: slow consumer"
        );
        state.queue.clear();
        // The channels stay listed (the session still has to leave them); what they held goes.
        for delivery in state.channels.values_mut() {
            if let Delivery::Pending { held, .. } = delivery {
                *held = Vec::new();
            }
        }
        state.queued_bytes = 0;
        state.held_bytes = 0;
        state.closing = Some(Closing::with(CloseCode::SlowConsumer));
        self.0.ready.notify_one();
        self.mark_closed();
        false
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::{ClientInfo, Member, Membership, PresenceChange, Publication};

    /// A reply whose body names it, costing about `len` bytes.
    fn reply(name: &str) -> Item {
        Item::Reply {
            id: 1,
            body: name.into(),
        }
    }

    fn publication(channel: &str, offset: u64, epoch: &str, size: usize) -> Arc<Published> {
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(size))).unwrap();
        let publication = Publication {
            channel: ChannelName::parse(channel).unwrap(),
            offset,
            epoch: epoch.into(),
            data: Arc::from(data),
            info: ClientInfo::server(),
        };
        Arc::new(Published::new(publication, None))
    }

    fn p(offset: u64) -> Arc<Published> {
        publication("c", offset, "e", 1)
    }

    fn event(name: &str) -> Arc<ChannelEvent> {
        let change = PresenceChange {
            channel: ChannelName::parse("c").unwrap(),
            info: Member {
                client: name.into(),
                user: name.into(),
                authenticated: false,
                info: None,
            },
        };
        Arc::new(ChannelEvent::new(Membership::Join(change)))
    }

    /// What was queued, each item named: a reply by its body, a publication `pN`, an event by
    /// its client.
    fn drained(outbox: &Outbox) -> (Vec<String>, Option<Closing>) {
        let mut batch = Vec::new();
        let closing = outbox.drain(&mut batch);
        let names = batch
            .iter()
            .map(|item| match item {
                Item::Reply { body, .. } => body.to_string(),
                Item::Publication(p) => format!("p{}", p.publication.offset),
                Item::Event(e) => match &e.presence {
                    Membership::Join(change) => change.info.client.to_string(),
                    _ => "?".into(),
                },
                other => format!("{other:?}"),
            })
            .collect();
        (names, closing)
    }

    fn at(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    fn ch() -> ChannelName {
        ChannelName::parse("c").unwrap()
    }

    #[test]
    fn pending_publications_follow_the_reply_and_skip_old_offsets() {
        let outbox = Outbox::new(1 << 20, "c".into());
        outbox.begin_subscription(&ch());
        outbox.push_publication(&p(5));
        outbox.push_publication(&p(6));
        outbox.complete_subscription(&ch(), vec![reply("reply")], &at(5));
        outbox.push_publication(&p(6));
        outbox.push_publication(&p(7));
        assert_eq!(drained(&outbox).0, ["reply", "p6", "p7"]);
    }

    #[test]
    fn events_wait_with_publications_while_subscribing_and_keep_their_order() {
        let outbox = Outbox::new(1 << 20, "c".into());
        outbox.push_event(&event("before"));
        outbox.begin_subscription(&ch());
        outbox.push_event(&event("join"));
        outbox.push_publication(&p(5));
        outbox.push_publication(&p(6));
        outbox.push_event(&event("leave"));
        outbox.complete_subscription(&ch(), vec![reply("reply")], &at(5));
        outbox.push_event(&event("live"));
        assert_eq!(
            drained(&outbox).0,
            ["reply", "join", "p6", "leave", "live"],
            "nothing before the subscription; p5 was already in the position"
        );
        outbox.end_subscription(&ch());
        outbox.push_event(&event("after"));
        assert!(drained(&outbox).0.is_empty());
    }

    fn insufficient() -> Option<Closing> {
        Some(Closing::with(CloseCode::InsufficientState))
    }

    #[test]
    fn a_gap_or_a_new_epoch_closes_to_recover() {
        let live = || {
            let outbox = Outbox::new(1 << 20, "c".into());
            outbox.begin_subscription(&ch());
            outbox.complete_subscription(&ch(), vec![], &at(5));
            outbox
        };
        let gap = live();
        gap.push_publication(&p(7));
        assert_eq!(drained(&gap), (vec![], insufficient()));

        let epoch = live();
        epoch.push_publication(&publication("c", 1, "other", 1));
        assert_eq!(drained(&epoch), (vec![], insufficient()));

        let behind = live();
        behind.check_position(&ch(), &at(5));
        assert_eq!(drained(&behind), (vec![], None));
        behind.check_position(&ch(), &at(6));
        assert_eq!(drained(&behind), (vec![], insufficient()));

        // A reconciliation during the subscription saw offset 9; the subscription accounts
        // only for 6 (its position) and 7 (held): 8 and 9 were missed.
        let floor = Outbox::new(1 << 20, "c".into());
        floor.begin_subscription(&ch());
        floor.push_publication(&p(7));
        floor.check_position(&ch(), &at(9));
        floor.complete_subscription(&ch(), vec![reply("reply")], &at(6));
        assert_eq!(drained(&floor), (vec![], insufficient()));
        let reached = Outbox::new(1 << 20, "c".into());
        reached.begin_subscription(&ch());
        reached.check_position(&ch(), &at(6));
        reached.complete_subscription(&ch(), vec![reply("reply")], &at(6));
        assert_eq!(drained(&reached), (vec!["reply".to_string()], None));

        let held_gap = Outbox::new(1 << 20, "c".into());
        held_gap.begin_subscription(&ch());
        held_gap.push_publication(&p(8));
        held_gap.complete_subscription(&ch(), vec![reply("reply")], &at(6));
        assert_eq!(drained(&held_gap), (vec![], insufficient()));
    }

    #[test]
    fn unsubscribed_channels_receive_nothing() {
        let outbox = Outbox::new(1 << 20, "c".into());
        outbox.push_publication(&p(1));
        outbox.begin_subscription(&ch());
        outbox.complete_subscription(&ch(), vec![], &at(1));
        outbox.push_publication(&p(2));
        outbox.end_subscription(&ch());
        outbox.push_publication(&p(3));
        assert_eq!(drained(&outbox).0, ["p2"]);
    }

    #[test]
    fn overflow_empties_the_queue_and_closes_as_slow_consumer() {
        let limit = reply("123456").cost() + 5;
        let outbox = Outbox::new(limit, "c".into());
        assert!(outbox.push(reply("123456")));
        assert!(!outbox.push(reply("123456")));
        let (items, closing) = drained(&outbox);
        assert!(items.is_empty());
        assert_eq!(closing, Some(Closing::with(CloseCode::SlowConsumer)));
        assert!(!outbox.push(reply("x")), "a closing outbox accepts nothing");
    }

    #[test]
    fn draining_frees_the_budget_and_one_large_reply_fits_a_short_queue() {
        let limit = reply("12345678").cost() + 2;
        let outbox = Outbox::new(limit, "c".into());
        for _ in 0..5 {
            assert!(outbox.push(reply("12345678")));
            assert_eq!(drained(&outbox).0.len(), 1);
        }
        assert!(
            outbox.push(reply(&"x".repeat(1000))),
            "asked-for data may exceed"
        );
        assert!(
            !outbox.push(reply("1")),
            "but nothing may pile up behind it"
        );
        let strict = Outbox::new(limit, "c".into());
        strict.begin_subscription(&ch());
        strict.complete_subscription(&ch(), vec![], &at(0));
        strict.push_publication(&publication("c", 1, "e", limit));
        assert!(
            drained(&strict).1.is_some(),
            "live publications get no such allowance"
        );
    }

    #[test]
    fn only_a_push_into_an_empty_queue_wakes_the_writer_and_none_is_missed() {
        use futures_util::FutureExt;
        let outbox = Outbox::new(1 << 20, "c".into());
        outbox.begin_subscription(&ch());
        outbox.complete_subscription(&ch(), vec![], &at(0));
        assert!(
            outbox.ready().now_or_never().is_some(),
            "the reply's wake-up"
        );
        assert!(drained(&outbox).0.is_empty());
        for offset in 1..=3 {
            outbox.push_publication(&p(offset));
        }
        assert!(
            outbox.ready().now_or_never().is_some(),
            "woken for the batch"
        );
        assert_eq!(drained(&outbox).0, ["p1", "p2", "p3"]);
        assert!(
            outbox.ready().now_or_never().is_none(),
            "one wake-up for the whole batch"
        );
        assert!(outbox.push(reply("after")));
        assert!(
            outbox.ready().now_or_never().is_some(),
            "a push after the drain wakes it again"
        );
        assert_eq!(drained(&outbox).0, ["after"]);
    }

    #[test]
    fn dropped_publications_cost_nothing() {
        let small = p(3);
        let outbox = Outbox::new(small.frame().len() + 1, "c".into());
        outbox.begin_subscription(&ch());
        outbox.complete_subscription(&ch(), vec![], &at(5));
        for _ in 0..5 {
            outbox.push_publication(&small);
            outbox.push_publication(&publication("other", 9, "e", 1));
        }
        outbox.push_publication(&p(6));
        assert_eq!(drained(&outbox), (vec!["p6".to_string()], None));
    }
}
