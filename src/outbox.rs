//! Outbox: one connection's bounded queue of outgoing [`Frame`]s, and the one record of which
//! channels the connection subscribes to.
//!
//! The hub pushes publications into it, the session pushes replies, and the session's writer
//! drains it in batches into whatever transport carries the connection. It is the single place
//! where a connection's memory is bounded.
//!
//! ## Slow consumers
//! Queued bytes are counted; a push that would pass the limit empties the queue and asks the
//! writer to close with [`CloseCode::SLOW_CONSUMER`]. Pushing never blocks and never waits for
//! the socket, so one client that stops reading cannot delay anybody else's delivery.
//!
//! ## Ordering and subscriptions
//! Per channel the outbox keeps where delivery stands. A subscription is *pending* from before
//! the session registers in the hub until its reply is queued: publications arriving meanwhile
//! are held back. Completing the subscription queues the reply, then the held publications
//! past the position it reported, in offset order. A live channel drops any publication at or
//! below the last offset queued, so a subscriber never sees an offset twice or out of order;
//! a publication that skips offsets or comes from another epoch means this node missed some,
//! and the connection is closed with [`CloseCode::INSUFFICIENT_STATE`] so that the client
//! reconnects and recovers them from history — never a silent gap.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::hub::SubscriberId;
use crate::protocol::{ChannelName, CloseCode, StreamPosition};

/// Up to this many frames a wake-up, the queue and the writer's batch give their capacity
/// back after writing (see [`Outbox::drain`]).
pub const SMALL_BATCH: usize = 4;

/// A text frame whose bytes are shared: cloning it for another subscriber is a reference-count
/// increment, never a copy or a re-encode. The bytes are the WebSocket library's own type, so
/// that transport hands them to the socket as they are.
///
/// A publication that may go out compressed also carries a slot for its compressed form, made
/// by the first connection that needs it and shared by every other: one compression per
/// publication on a node, however many subscribers.
#[derive(Clone, Debug)]
pub struct Frame {
    text: Utf8Bytes,
    deflated: Option<Arc<OnceLock<Option<Bytes>>>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Frame {}

impl Frame {
    pub const fn from_static(text: &'static str) -> Self {
        Self {
            text: Utf8Bytes::from_static(text),
            deflated: None,
        }
    }

    /// A frame that may go out compressed (a publication, on a channel that compresses).
    pub fn compressible(text: String) -> Self {
        Self {
            text: Utf8Bytes::from(text),
            deflated: Some(Arc::default()),
        }
    }

    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// Payload length in bytes: what a queued frame costs.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// The compressed form, made with `deflate` by the first caller; `None` if this frame is
    /// not to be compressed, or compressing did not make it smaller.
    pub fn deflated(&self, deflate: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        let slot = self.deflated.as_ref()?;
        slot.get_or_init(|| deflate(self.text.as_bytes())).clone()
    }

    /// The shared bytes, for the transport.
    pub fn into_bytes(self) -> Utf8Bytes {
        self.text
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self {
            text: Utf8Bytes::from(text),
            deflated: None,
        }
    }
}

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Self {
        Self {
            text,
            deflated: None,
        }
    }
}

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

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Inner {
    /// The connection's id in the hub.
    id: SubscriberId,
    /// The connection's client id, as clients and presence know it.
    client: Arc<str>,
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` keeps a permit, so a push between a drain and the next
    /// wait is never missed.
    ready: Notify,
    closed: CancellationToken,
    max_bytes: usize,
}

/// The queue proper. Most wake-ups find one frame, so the first lives inline: a connection
/// that gets a frame now and then allocates nothing for it, and an idle one keeps no heap
/// capacity (see [`Outbox::drain`]).
#[derive(Debug, Default)]
struct Frames {
    /// Set whenever `rest` is not empty: the oldest frame.
    first: Option<Frame>,
    rest: VecDeque<Frame>,
}

impl Frames {
    fn push_back(&mut self, frame: Frame) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    /// Moves every frame into `batch`, in order, and gives back the capacity of a queue that
    /// held few: the next small wake-up costs one allocation, which its system call dwarfs,
    /// while a connection under load keeps what it needs, up to a bound.
    fn drain_into(&mut self, batch: &mut Vec<Frame>) {
        let drained = self.rest.len() + 1;
        batch.extend(self.first.take());
        batch.extend(self.rest.drain(..));
        if drained <= SMALL_BATCH {
            self.rest = VecDeque::new();
        } else if self.rest.capacity() > 64 {
            self.rest.shrink_to(16);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: Frames,
    /// Bytes in `queue`.
    queued_bytes: usize,
    /// Bytes held for pending subscriptions.
    held_bytes: usize,
    /// Every channel the connection subscribes to (pending or live), and where its delivery
    /// stands: the node's one answer to "is this connection subscribed to C?".
    channels: HashMap<ChannelName, Delivery>,
    closing: Option<Closing>,
}

#[derive(Debug)]
enum Delivery {
    /// Subscribing: live publications wait here until the reply is queued. `floor` is the
    /// latest position a reconciliation reported meanwhile: delivery must reach it.
    Pending {
        held: Vec<Held>,
        floor: Option<StreamPosition>,
    },
    /// Subscribed: the last offset queued, in this epoch.
    Live { last: u64, epoch: Arc<str> },
}

/// Whether a publication at `offset` in another epoch than the one delivered up to `last`
/// starts that channel's first epoch: the subscriber saw the channel unpublished (offset 0, in
/// an unpublished epoch), and offset 1 is the first publication of any epoch.
fn starts_epoch(last: u64, offset: u64) -> bool {
    last == 0 && offset == 1
}

/// Whether delivery up to `last` in `epoch` accounts for everything up to `position`: the same
/// epoch and not behind, or both unpublished (offset 0; their epochs say only when each was
/// read).
fn continues(last: u64, epoch: &Arc<str>, position: &StreamPosition) -> bool {
    (*epoch == position.epoch && last >= position.offset) || (last == 0 && position.offset == 0)
}

/// Something that arrived while its channel's subscription was pending: a publication (with
/// its place in the stream) or an event (a join or leave, which has none).
#[derive(Debug)]
struct Held {
    publication: Option<(u64, Arc<str>)>,
    frame: Frame,
}

impl Outbox {
    /// An empty outbox that holds at most `max_bytes` of queued frames.
    pub fn new(max_bytes: usize, client: Arc<str>) -> Self {
        Self(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closed: CancellationToken::new(),
            max_bytes,
        }))
    }

    /// The connection's id, unique in this process.
    pub fn id(&self) -> SubscriberId {
        self.0.id
    }

    /// The connection's client id.
    pub fn client(&self) -> &Arc<str> {
        &self.0.client
    }

    /// Whether the connection subscribes to `channel` (or is subscribing).
    /// The epoch of a live subscription (`None` while it is pending, or without one).
    pub fn live_epoch(&self, channel: &ChannelName) -> Option<Arc<str>> {
        match self.state().channels.get(channel) {
            Some(Delivery::Live { epoch, .. }) => Some(epoch.clone()),
            _ => None,
        }
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.state().channels.contains_key(channel)
    }

    /// How many channels the connection subscribes to.
    pub fn subscription_count(&self) -> usize {
        self.state().channels.len()
    }

    /// The channels the connection subscribes to.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.state().channels.keys().cloned().collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so poisoning is ignored.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply or push. Returns false if the connection is closing.
    pub fn push(&self, frame: Frame) -> bool {
        let mut state = self.state();
        if state.closing.is_some() {
            return false;
        }
        if !self.reserve_reply(&mut state, frame.len()) {
            return false;
        }
        state.queued_bytes += frame.len();
        state.queue.push_back(frame);
        drop(state);
        self.0.ready.notify_one();
        true
    }

    /// Queues a publication of `channel`, applying the per-channel delivery rules: held while
    /// pending; dropped at or below the last offset; the connection closed with
    /// [`CloseCode::INSUFFICIENT_STATE`] on a gap or another epoch.
    pub fn push_publication(
        &self,
        channel: &ChannelName,
        offset: u64,
        epoch: &Arc<str>,
        frame: &Frame,
    ) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        // One map lookup per subscriber and publication: this is the fan-out's hot path.
        let fits = state.queued_bytes + state.held_bytes + frame.len() <= self.0.max_bytes;
        let queue = match state.channels.get_mut(channel) {
            // Unsubscribed while this publication was in flight.
            None => return,
            Some(Delivery::Live { last, epoch: live }) => {
                // Brokers hand out one shared epoch per channel: comparing pointers first
                // skips the string comparison on the fan-out path.
                let same_epoch = Arc::ptr_eq(live, epoch) || **live == **epoch;
                if !same_epoch && starts_epoch(*last, offset) {
                    // The channel was unpublished: its first publication starts the epoch.
                    live.clone_from(epoch);
                } else if !same_epoch || offset > *last + 1 {
                    drop(state);
                    return self.close_insufficient();
                }
                if offset <= *last {
                    return;
                }
                if fits {
                    *last = offset;
                }
                true
            }
            Some(Delivery::Pending { held, .. }) => {
                if fits {
                    held.push(Held {
                        publication: Some((offset, epoch.clone())),
                        frame: frame.clone(),
                    });
                }
                false
            }
        };
        if !fits {
            // Closes the connection as a slow consumer.
            self.reserve(&mut state, frame.len());
            return;
        }
        if !queue {
            state.held_bytes += frame.len();
            return;
        }
        state.queued_bytes += frame.len();
        state.queue.push_back(frame.clone());
        drop(state);
        self.0.ready.notify_one();
    }

    /// Queues an event of `channel` (a join or leave): held while the subscription is pending,
    /// in order with its publications; dropped when the connection does not subscribe.
    pub fn push_event(&self, channel: &ChannelName, frame: &Frame) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        let fits = state.queued_bytes + state.held_bytes + frame.len() <= self.0.max_bytes;
        let live = match state.channels.get_mut(channel) {
            None => return,
            Some(Delivery::Live { .. }) => true,
            Some(Delivery::Pending { held, .. }) => {
                if fits {
                    held.push(Held {
                        publication: None,
                        frame: frame.clone(),
                    });
                }
                false
            }
        };
        if !fits {
            // Closes the connection as a slow consumer.
            self.reserve(&mut state, frame.len());
            return;
        }
        if !live {
            state.held_bytes += frame.len();
            return;
        }
        state.queued_bytes += frame.len();
        state.queue.push_back(frame.clone());
        drop(state);
        self.0.ready.notify_one();
    }

    /// Marks `channel` pending: call before registering in the hub.
    pub fn begin_subscription(&self, channel: &ChannelName) {
        let mut state = self.state();
        state.channels.insert(
            channel.clone(),
            Delivery::Pending {
                held: Vec::new(),
                floor: None,
            },
        );
    }

    /// Queues the subscription's reply (or the pushes standing for it), then the held
    /// publications past `position`,
    /// and makes the channel live. Held publications that do not continue the position (a gap,
    /// another epoch) close the connection to recover.
    pub fn complete_subscription(
        &self,
        channel: &ChannelName,
        reply: Vec<Frame>,
        position: &StreamPosition,
    ) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        let live = Delivery::Live {
            last: position.offset,
            epoch: position.epoch.clone(),
        };
        let (held, floor) = match state.channels.insert(channel.clone(), live) {
            Some(Delivery::Pending { held, floor }) => (held, floor),
            _ => (Vec::new(), None),
        };
        state.held_bytes -= held.iter().map(|h| h.frame.len()).sum::<usize>();
        for reply in reply {
            if !self.reserve_reply(&mut state, reply.len()) {
                return;
            }
            state.queued_bytes += reply.len();
            state.queue.push_back(reply);
        }
        // Brokers deliver a channel's publications in offset order, and its events in order
        // with them: what was held is released in arrival order.
        let mut last = position.offset;
        let mut live_epoch = position.epoch.clone();
        for h in held {
            if let Some((offset, epoch)) = &h.publication {
                if *epoch != live_epoch && starts_epoch(last, *offset) {
                    live_epoch.clone_from(epoch);
                } else if *epoch != live_epoch || *offset > last + 1 {
                    drop(state);
                    return self.close_insufficient();
                }
                if *offset <= last {
                    continue;
                }
                last = *offset;
            }
            if !self.reserve(&mut state, h.frame.len()) {
                return;
            }
            state.queued_bytes += h.frame.len();
            state.queue.push_back(h.frame);
        }
        if let Some(floor) = floor {
            // A reconciliation while subscribing saw the channel further than this
            // subscription can account for: publications were missed in between.
            if !continues(last, &live_epoch, &floor) {
                drop(state);
                return self.close_insufficient();
            }
        }
        if let Some(Delivery::Live {
            last: live_last,
            epoch,
        }) = state.channels.get_mut(channel)
        {
            *live_last = last;
            *epoch = live_epoch;
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

    /// Forgets `channel`: publications still in flight for it are dropped. False when the
    /// connection did not subscribe to it.
    pub fn end_subscription(&self, channel: &ChannelName) -> bool {
        let mut state = self.state();
        match state.channels.remove(channel) {
            Some(Delivery::Pending { held, .. }) => {
                let freed: usize = held.iter().map(|h| h.frame.len()).sum();
                state.held_bytes -= freed;
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
        self.0.closed.cancel();
    }

    /// Resolves once the connection is closing, for whatever reason.
    pub async fn closed(&self) {
        self.0.closed.cancelled().await
    }

    /// Resolves when there may be something to drain.
    pub async fn ready(&self) {
        self.0.ready.notified().await
    }

    /// Moves every queued frame into `batch` (in order) and reports whether to close after
    /// writing them.
    pub fn drain(&self, batch: &mut Vec<Frame>) -> Option<Closing> {
        let mut state = self.state();
        state.queue.drain_into(batch);
        state.queued_bytes = 0;
        state.closing.clone()
    }

    /// Checks that a reply of `len` bytes fits. Replies are data the client asked for and may
    /// be larger than the limit (a recovery can be the whole history): one is accepted while
    /// the backlog is under half the limit, so a client that reads is never cut off for asking.
    fn reserve_reply(&self, state: &mut State, len: usize) -> bool {
        let used = state.queued_bytes + state.held_bytes;
        used < self.0.max_bytes / 2 || self.reserve(state, len)
    }

    /// Checks that `len` more bytes fit, or closes the connection as a slow consumer.
    ///
    /// The limit bounds the backlog. What the writer is writing is not counted: it is at most
    /// one earlier backlog, so a connection holds at most about twice the limit (plus one
    /// large reply).
    fn reserve(&self, state: &mut State, len: usize) -> bool {
        let used = state.queued_bytes + state.held_bytes;
        if used + len <= self.0.max_bytes {
            return true;
        }
        tracing::debug!(
            queued = state.queued_bytes,
            held = state.held_bytes,
            len,
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
        self.0.closed.cancel();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_owned())
    }

    fn drained(outbox: &Outbox) -> (Vec<String>, Option<Closing>) {
        let mut batch = Vec::new();
        let closing = outbox.drain(&mut batch);
        (
            batch.iter().map(|f| f.as_str().to_owned()).collect(),
            closing,
        )
    }

    fn e() -> Arc<str> {
        "e".into()
    }

    fn at(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    #[test]
    fn pending_publications_follow_the_reply_and_skip_old_offsets() {
        let outbox = Outbox::new(1 << 20, "c".into());
        let ch = ChannelName::parse("c").unwrap();
        outbox.begin_subscription(&ch);
        outbox.push_publication(&ch, 5, &e(), &frame("p5"));
        outbox.push_publication(&ch, 6, &e(), &frame("p6"));
        outbox.complete_subscription(&ch, vec![frame("reply")], &at(5));
        outbox.push_publication(&ch, 6, &e(), &frame("p6-again"));
        outbox.push_publication(&ch, 7, &e(), &frame("p7"));
        assert_eq!(drained(&outbox).0, ["reply", "p6", "p7"]);
    }

    #[test]
    fn events_wait_with_publications_while_subscribing_and_keep_their_order() {
        let outbox = Outbox::new(1 << 20, "c".into());
        let ch = ChannelName::parse("c").unwrap();
        outbox.push_event(&ch, &frame("before"));
        outbox.begin_subscription(&ch);
        outbox.push_event(&ch, &frame("join"));
        outbox.push_publication(&ch, 5, &e(), &frame("p5"));
        outbox.push_publication(&ch, 6, &e(), &frame("p6"));
        outbox.push_event(&ch, &frame("leave"));
        outbox.complete_subscription(&ch, vec![frame("reply")], &at(5));
        outbox.push_event(&ch, &frame("live"));
        assert_eq!(
            drained(&outbox).0,
            ["reply", "join", "p6", "leave", "live"],
            "nothing before the subscription; p5 was already in the position"
        );
        outbox.end_subscription(&ch);
        outbox.push_event(&ch, &frame("after"));
        assert!(drained(&outbox).0.is_empty());
    }

    fn insufficient() -> Option<Closing> {
        Some(Closing::with(CloseCode::InsufficientState))
    }

    #[test]
    fn a_gap_or_a_new_epoch_closes_to_recover() {
        let ch = ChannelName::parse("c").unwrap();
        let live = || {
            let outbox = Outbox::new(1 << 20, "c".into());
            outbox.begin_subscription(&ch);
            outbox.complete_subscription(&ch, vec![], &at(5));
            outbox
        };
        let gap = live();
        gap.push_publication(&ch, 7, &e(), &frame("p7"));
        assert_eq!(drained(&gap), (vec![], insufficient()));

        let epoch = live();
        epoch.push_publication(&ch, 1, &"other".into(), &frame("p1"));
        assert_eq!(drained(&epoch), (vec![], insufficient()));

        let behind = live();
        behind.check_position(&ch, &at(5));
        assert_eq!(drained(&behind), (vec![], None));
        behind.check_position(&ch, &at(6));
        assert_eq!(drained(&behind), (vec![], insufficient()));

        // A reconciliation during the subscription saw offset 9; the subscription accounts
        // only for 6 (its position) and 7 (held): 8 and 9 were missed.
        let floor = Outbox::new(1 << 20, "c".into());
        floor.begin_subscription(&ch);
        floor.push_publication(&ch, 7, &e(), &frame("p7"));
        floor.check_position(&ch, &at(9));
        floor.complete_subscription(&ch, vec![frame("reply")], &at(6));
        assert_eq!(drained(&floor), (vec![], insufficient()));
        let reached = Outbox::new(1 << 20, "c".into());
        reached.begin_subscription(&ch);
        reached.check_position(&ch, &at(6));
        reached.complete_subscription(&ch, vec![frame("reply")], &at(6));
        assert_eq!(drained(&reached), (vec!["reply".to_string()], None));

        let held_gap = Outbox::new(1 << 20, "c".into());
        held_gap.begin_subscription(&ch);
        held_gap.push_publication(&ch, 8, &e(), &frame("p8"));
        held_gap.complete_subscription(&ch, vec![frame("reply")], &at(6));
        assert_eq!(drained(&held_gap), (vec![], insufficient()));
    }

    #[test]
    fn unsubscribed_channels_receive_nothing() {
        let outbox = Outbox::new(1 << 20, "c".into());
        let ch = ChannelName::parse("c").unwrap();
        outbox.push_publication(&ch, 1, &e(), &frame("p1"));
        outbox.begin_subscription(&ch);
        outbox.complete_subscription(&ch, vec![], &at(1));
        outbox.push_publication(&ch, 2, &e(), &frame("p2"));
        outbox.end_subscription(&ch);
        outbox.push_publication(&ch, 3, &e(), &frame("p3"));
        assert_eq!(drained(&outbox).0, ["p2"]);
    }

    #[test]
    fn overflow_empties_the_queue_and_closes_as_slow_consumer() {
        let outbox = Outbox::new(10, "c".into());
        assert!(outbox.push(frame("123456")));
        assert!(!outbox.push(frame("123456")));
        let (frames, closing) = drained(&outbox);
        assert!(frames.is_empty());
        assert_eq!(closing, Some(Closing::with(CloseCode::SlowConsumer)));
        assert!(!outbox.push(frame("x")), "a closing outbox accepts nothing");
    }

    #[test]
    fn draining_frees_the_budget_and_one_large_reply_fits_a_short_queue() {
        let outbox = Outbox::new(10, "c".into());
        for _ in 0..5 {
            assert!(outbox.push(frame("12345678")));
            assert_eq!(drained(&outbox).0.len(), 1);
        }
        assert!(
            outbox.push(frame(&"x".repeat(100))),
            "asked-for data may exceed"
        );
        assert!(
            !outbox.push(frame("1")),
            "but nothing may pile up behind it"
        );
        let ch = ChannelName::parse("c").unwrap();
        let strict = Outbox::new(10, "c".into());
        strict.begin_subscription(&ch);
        strict.complete_subscription(&ch, vec![], &at(0));
        strict.push_publication(&ch, 1, &e(), &frame(&"x".repeat(11)));
        assert!(
            drained(&strict).1.is_some(),
            "live publications get no such allowance"
        );
    }

    #[test]
    fn dropped_publications_cost_nothing() {
        let outbox = Outbox::new(10, "c".into());
        let ch = ChannelName::parse("c").unwrap();
        outbox.begin_subscription(&ch);
        outbox.complete_subscription(&ch, vec![], &at(5));
        for _ in 0..5 {
            outbox.push_publication(&ch, 3, &e(), &frame("12345678"));
            outbox.push_publication(
                &ChannelName::parse("other").unwrap(),
                9,
                &e(),
                &frame("123"),
            );
        }
        assert!(outbox.push(frame("12345678")));
    }
}
