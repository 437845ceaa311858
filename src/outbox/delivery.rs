//! Where delivery stands in one channel of one connection, and the rules that keep it
//! gap-free: what a publication or event arriving now must become.

use std::sync::Arc;

use crate::protocol::{Item, StreamPosition};

/// One channel's delivery.
#[derive(Debug)]
pub(super) enum Delivery {
    /// Subscribing: live items wait here until the reply is queued. `floor` is the latest
    /// position a reconciliation reported meanwhile: delivery must reach it.
    Pending {
        held: Vec<Item>,
        floor: Option<StreamPosition>,
    },
    /// Subscribed: the last offset queued, in this epoch.
    Live { last: u64, epoch: Arc<str> },
}

/// What becomes of an item of a channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// Queue it now.
    Queue,
    /// Hold it until the subscription completes.
    Hold,
    /// Drop it: already delivered (or the channel is not subscribed).
    Drop,
    /// Publications were missed: the connection must recover from history.
    Gap,
}

impl Delivery {
    pub(super) fn pending() -> Self {
        Self::Pending {
            held: Vec::new(),
            floor: None,
        }
    }

    /// Decides an item's fate; `place` is a publication's offset and epoch (`None` for an
    /// event, which has none). A live channel moves on to the publication it queues.
    pub(super) fn admit(&mut self, place: Option<(u64, &Arc<str>)>) -> Fate {
        match (self, place) {
            (Self::Pending { .. }, _) => Fate::Hold,
            (Self::Live { .. }, None) => Fate::Queue,
            (Self::Live { last, epoch: live }, Some((offset, epoch))) => {
                // Brokers hand out one shared epoch per channel: comparing pointers first
                // skips the string comparison on the fan-out path.
                let same_epoch = Arc::ptr_eq(live, epoch) || **live == **epoch;
                if !same_epoch && starts_epoch(*last, offset) {
                    // The channel was unpublished: its first publication starts the epoch.
                    live.clone_from(epoch);
                } else if !same_epoch || offset > *last + 1 {
                    return Fate::Gap;
                }
                if offset <= *last {
                    return Fate::Drop;
                }
                *last = offset;
                Fate::Queue
            }
        }
    }
}

/// A publication's offset and epoch; `None` for any other item.
pub(super) fn place(item: &Item) -> Option<(u64, &Arc<str>)> {
    match item {
        Item::Publication(published) => {
            let p = &published.publication;
            Some((p.offset, &p.epoch))
        }
        _ => None,
    }
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
pub(super) fn continues(last: u64, epoch: &Arc<str>, position: &StreamPosition) -> bool {
    (*epoch == position.epoch && last >= position.offset) || (last == 0 && position.offset == 0)
}

/// Replays what was held while subscribing onto a subscription that starts at `position`:
/// the items to queue, in arrival order, and where delivery then stands — or `None` if the
/// held publications do not continue the position (a gap, another epoch).
pub(super) fn release(held: Vec<Item>, position: &StreamPosition) -> Option<(Vec<Item>, Delivery)> {
    let mut delivery = Delivery::Live {
        last: position.offset,
        epoch: position.epoch.clone(),
    };
    let mut queued = Vec::with_capacity(held.len());
    // Brokers deliver a channel's publications in offset order, and its events in order with
    // them: what was held is released in arrival order.
    for item in held {
        match delivery.admit(place(&item)) {
            Fate::Queue => queued.push(item),
            Fate::Drop | Fate::Hold => {}
            Fate::Gap => return None,
        }
    }
    Some((queued, delivery))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(last: u64) -> Delivery {
        Delivery::Live {
            last,
            epoch: "e".into(),
        }
    }

    #[test]
    fn a_live_channel_queues_the_next_offset_drops_old_ones_and_sees_gaps() {
        let e: Arc<str> = "e".into();
        let mut d = live(5);
        assert_eq!(d.admit(Some((5, &e))), Fate::Drop);
        assert_eq!(d.admit(Some((6, &e))), Fate::Queue);
        assert_eq!(d.admit(None), Fate::Queue);
        assert_eq!(d.admit(Some((8, &e))), Fate::Gap);
        assert_eq!(d.admit(Some((7, &"f".into()))), Fate::Gap);
        // An unpublished channel's first publication starts whatever epoch it has.
        let mut fresh = live(0);
        assert_eq!(fresh.admit(Some((1, &"f".into()))), Fate::Queue);
        assert_eq!(fresh.admit(Some((2, &"f".into()))), Fate::Queue);
        assert_eq!(Delivery::pending().admit(None), Fate::Hold);
    }

    #[test]
    fn continuity_needs_the_same_epoch_unless_both_are_unpublished() {
        let e: Arc<str> = "e".into();
        let at = |offset, epoch: &str| StreamPosition {
            offset,
            epoch: epoch.into(),
        };
        assert!(continues(5, &e, &at(5, "e")));
        assert!(!continues(5, &e, &at(6, "e")));
        assert!(!continues(5, &e, &at(1, "f")));
        assert!(continues(0, &e, &at(0, "f")));
    }
}
