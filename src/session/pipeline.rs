//! Publishes in flight. A connection's publishes go to the broker without waiting for the one
//! before to be acknowledged (with Redis each is a round trip), and their replies go back in
//! the order they came. Any other command waits until the publishes before it are settled,
//! so a client never sees, say, a history that lacks what it published just before.
//!
//! Order is kept end to end: each publish reaches the node in arrival order (its future is
//! first polled when pushed, and `FuturesOrdered` polls new futures in push order), the
//! broker keeps a connection's commands in order, and replies are taken in push order.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;

use crate::node::NodeError;
use crate::protocol::StreamPosition;

/// Publishes one connection may have in flight before it stops reading.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// A settled publish: the request's id and what the node said.
pub(super) type Published = (Option<u64>, Result<StreamPosition, NodeError>);

/// The publishes in flight; nothing is allocated while there are none, and the set is boxed
/// so that an idle connection holds a pointer, not the set's 64 bytes (most connections never
/// publish, and every byte is paid per connection).
#[derive(Default)]
pub(super) struct Pipeline {
    running: Option<Box<FuturesOrdered<BoxFuture<'static, Published>>>>,
}

impl Pipeline {
    pub(super) fn len(&self) -> usize {
        self.running.as_ref().map_or(0, |running| running.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, publish: BoxFuture<'static, Published>) {
        self.running
            .get_or_insert_with(Box::default)
            .push_back(publish);
    }

    /// The next settled publish, in push order; `None` when nothing is in flight.
    pub(super) async fn next(&mut self) -> Option<Published> {
        let running = self.running.as_mut()?;
        let next = running.next().await;
        if running.is_empty() {
            self.running = None;
        }
        next
    }
}
