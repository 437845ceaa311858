//! Outbox: one connection's bounded queue of outgoing frames.
//!
//! The hub pushes publications into it, the session pushes replies, and the session's writer
//! drains it in batches. It is the single place where a connection's memory is bounded.
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
//! below the last offset queued, so a subscriber never sees an offset twice or out of order.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ChannelName, CloseCode};
use crate::transport::Frame;

/// Why the connection is closing: what the writer must do last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer sent a close frame; the library has queued the reply, the writer flushes it.
    ByPeer,
    /// The connection is gone; nothing more can be written.
    Gone,
    /// Send this close frame, then end.
    Send { code: u16, reason: &'static str },
}

/// A cheap-to-clone handle on one connection's queue.
#[derive(Clone, Debug)]
pub struct Outbox(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` keeps a permit, so a push between a drain and the next
    /// wait is never missed.
    ready: Notify,
    closed: CancellationToken,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    /// Bytes in `queue`.
    queued_bytes: usize,
    /// Bytes held for pending subscriptions.
    held_bytes: usize,
    /// Bytes drained by the writer and not yet written: they still occupy memory.
    in_flight_bytes: usize,
    channels: HashMap<ChannelName, Delivery>,
    closing: Option<Closing>,
}

#[derive(Debug)]
enum Delivery {
    /// Subscribing: live publications wait here until the reply is queued.
    Pending(Vec<(u64, Frame)>),
    /// Subscribed: the last offset queued.
    Live { last: u64 },
}

impl Outbox {
    /// An empty outbox that holds at most `max_bytes` of queued frames.
    pub fn new(max_bytes: usize) -> Self {
        Self(Arc::new(Inner {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closed: CancellationToken::new(),
            max_bytes,
        }))
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
        if !self.reserve(&mut state, frame.len()) {
            return false;
        }
        state.queued_bytes += frame.len();
        state.queue.push_back(frame);
        drop(state);
        self.0.ready.notify_one();
        true
    }

    /// Queues a publication of `channel` at `offset`, applying the per-channel delivery rules.
    pub fn push_publication(&self, channel: &ChannelName, offset: u64, frame: &Frame) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        let pending = match state.channels.get(channel) {
            // Unsubscribed while this publication was in flight.
            None => return,
            Some(Delivery::Live { last }) if offset <= *last => return,
            Some(Delivery::Live { .. }) => false,
            Some(Delivery::Pending(_)) => true,
        };
        if !self.reserve(&mut state, frame.len()) {
            return;
        }
        match state.channels.get_mut(channel) {
            Some(Delivery::Pending(held)) if pending => {
                held.push((offset, frame.clone()));
                state.held_bytes += frame.len();
                return;
            }
            Some(Delivery::Live { last }) => *last = offset,
            _ => return,
        }
        state.queued_bytes += frame.len();
        state.queue.push_back(frame.clone());
        drop(state);
        self.0.ready.notify_one();
    }

    /// Marks `channel` pending: call before registering in the hub.
    pub fn begin_subscription(&self, channel: &ChannelName) {
        let mut state = self.state();
        state
            .channels
            .insert(channel.clone(), Delivery::Pending(Vec::new()));
    }

    /// Queues the subscription's reply (if any), then the held publications past `offset`, and
    /// makes the channel live.
    pub fn complete_subscription(&self, channel: &ChannelName, reply: Option<Frame>, offset: u64) {
        let mut state = self.state();
        if state.closing.is_some() {
            return;
        }
        let held = match state.channels.entry(channel.clone()) {
            Entry::Occupied(mut entry) => {
                match std::mem::replace(entry.get_mut(), Delivery::Live { last: offset }) {
                    Delivery::Pending(held) => held,
                    Delivery::Live { .. } => Vec::new(),
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(Delivery::Live { last: offset });
                Vec::new()
            }
        };
        if let Some(reply) = reply {
            if !self.reserve(&mut state, reply.len()) {
                return;
            }
            state.queued_bytes += reply.len();
            state.queue.push_back(reply);
        }
        let mut last = offset;
        for (held_offset, frame) in held {
            state.held_bytes -= frame.len();
            if held_offset > last {
                last = held_offset;
                state.queued_bytes += frame.len();
                state.queue.push_back(frame);
            }
        }
        state
            .channels
            .insert(channel.clone(), Delivery::Live { last });
        drop(state);
        self.0.ready.notify_one();
    }

    /// Forgets `channel`: publications still in flight for it are dropped.
    pub fn end_subscription(&self, channel: &ChannelName) {
        let mut state = self.state();
        if let Some(Delivery::Pending(held)) = state.channels.remove(channel) {
            let freed: usize = held.iter().map(|(_, frame)| frame.len()).sum();
            state.held_bytes -= freed;
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
        batch.extend(state.queue.drain(..));
        state.in_flight_bytes += state.queued_bytes;
        state.queued_bytes = 0;
        // An outbox that once held a burst should not keep its capacity on an idle connection.
        if state.queue.capacity() > 64 {
            state.queue.shrink_to(16);
        }
        state.closing.clone()
    }

    /// The writer finished (or abandoned) everything it drained.
    pub fn sent(&self) {
        self.state().in_flight_bytes = 0;
    }

    /// Checks that `len` more bytes fit, or closes the connection as a slow consumer.
    fn reserve(&self, state: &mut State, len: usize) -> bool {
        let used = state.queued_bytes + state.held_bytes + state.in_flight_bytes;
        if used + len <= self.0.max_bytes {
            return true;
        }
        state.queue.clear();
        state.channels.clear();
        state.queued_bytes = 0;
        state.held_bytes = 0;
        state.closing = Some(Closing::Send {
            code: CloseCode::SLOW_CONSUMER,
            reason: "slow consumer",
        });
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

    #[test]
    fn pending_publications_follow_the_reply_and_skip_old_offsets() {
        let outbox = Outbox::new(1 << 20);
        let ch = ChannelName::parse("c").unwrap();
        outbox.begin_subscription(&ch);
        outbox.push_publication(&ch, 5, &frame("p5"));
        outbox.push_publication(&ch, 6, &frame("p6"));
        outbox.complete_subscription(&ch, Some(frame("reply")), 5);
        outbox.push_publication(&ch, 6, &frame("p6-again"));
        outbox.push_publication(&ch, 7, &frame("p7"));
        assert_eq!(drained(&outbox).0, ["reply", "p6", "p7"]);
    }

    #[test]
    fn unsubscribed_channels_receive_nothing() {
        let outbox = Outbox::new(1 << 20);
        let ch = ChannelName::parse("c").unwrap();
        outbox.push_publication(&ch, 1, &frame("p1"));
        outbox.begin_subscription(&ch);
        outbox.complete_subscription(&ch, None, 1);
        outbox.push_publication(&ch, 2, &frame("p2"));
        outbox.end_subscription(&ch);
        outbox.push_publication(&ch, 3, &frame("p3"));
        assert_eq!(drained(&outbox).0, ["p2"]);
    }

    #[test]
    fn overflow_empties_the_queue_and_closes_as_slow_consumer() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(frame("123456")));
        assert!(!outbox.push(frame("123456")));
        let (frames, closing) = drained(&outbox);
        assert!(frames.is_empty());
        assert_eq!(
            closing,
            Some(Closing::Send {
                code: CloseCode::SLOW_CONSUMER,
                reason: "slow consumer"
            })
        );
        assert!(!outbox.push(frame("x")), "a closing outbox accepts nothing");
    }

    #[test]
    fn only_written_frames_free_the_budget() {
        let outbox = Outbox::new(10);
        for _ in 0..5 {
            assert!(outbox.push(frame("12345678")));
            assert_eq!(drained(&outbox).0.len(), 1);
            outbox.sent();
        }
        assert!(outbox.push(frame("12345678")));
        drained(&outbox);
        assert!(
            !outbox.push(frame("12345678")),
            "bytes being written still count"
        );
    }

    #[test]
    fn dropped_publications_cost_nothing() {
        let outbox = Outbox::new(10);
        let ch = ChannelName::parse("c").unwrap();
        outbox.begin_subscription(&ch);
        outbox.complete_subscription(&ch, None, 5);
        for _ in 0..5 {
            outbox.push_publication(&ch, 3, &frame("12345678"));
            outbox.push_publication(&ChannelName::parse("other").unwrap(), 9, &frame("123"));
        }
        assert!(outbox.push(frame("12345678")));
    }
}
