//! Whether a channel's history continues a client's position without a gap: what decides if
//! a subscription with `since` recovers, and if `history` with `since` may answer.

use std::sync::Arc;

use crate::broker::History;
use crate::protocol::StreamPosition;

/// Why the publications after a position cannot all be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContinuityError {
    #[error("the channel's history was lost: epoch {was:?} is now {now:?}")]
    EpochChanged { was: Arc<str>, now: Arc<str> },
    #[error("offset {offset} is ahead of the channel, which is at {at}")]
    Ahead { offset: u64, at: u64 },
    #[error("the history no longer reaches back to offset {0}")]
    TooOld(u64),
    #[error("{missed} publications were missed; only {kept} can be recovered")]
    Incomplete { missed: u64, kept: usize },
}

/// The epoch of a `since` read while its channel was unpublished, for the broker to vouch for.
pub(super) fn unpublished(since: &StreamPosition) -> Option<Arc<str>> {
    crate::broker::parse_unpublished(&since.epoch).map(|_| since.epoch.clone())
}

/// Checks that `history` continues `since` without a gap: same epoch, and (when `complete`)
/// every publication up to the current offset present. An unpublished epoch that the broker
/// vouches for stands for the current one: no other can have begun and been lost since it was
/// read, so the offsets a client counted from it are the current epoch's.
pub(super) fn continuity(
    since: &StreamPosition,
    history: &History,
    complete: bool,
) -> Result<(), ContinuityError> {
    let position = &history.position;
    if position.epoch != since.epoch && !history.vouched {
        return Err(ContinuityError::EpochChanged {
            // The client's own epoch, which could be any size: quoted, not echoed whole.
            was: crate::protocol::echo(&since.epoch).into(),
            now: position.epoch.clone(),
        });
    }
    if since.offset > position.offset {
        return Err(ContinuityError::Ahead {
            offset: since.offset,
            at: position.offset,
        });
    }
    let missed = position.offset - since.offset;
    if missed == 0 {
        return Ok(());
    }
    // `since.offset < position.offset` here, so the sum cannot overflow.
    let first_missing = since.offset + 1;
    match history.publications.first() {
        Some(first) if first.offset == first_missing => {}
        _ => return Err(ContinuityError::TooOld(first_missing)),
    }
    if complete && (history.publications.len() as u64) < missed {
        return Err(ContinuityError::Incomplete {
            missed,
            kept: history.publications.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChannelName, ClientInfo, Publication};

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    /// A history at `position` keeping the publications at `kept`.
    fn history(position: StreamPosition, kept: impl IntoIterator<Item = u64>) -> History {
        let channel = ChannelName::parse("news").unwrap();
        let publications = kept
            .into_iter()
            .map(|offset| Publication {
                channel: channel.clone(),
                offset,
                epoch: position.epoch.clone(),
                data: Arc::from(serde_json::value::to_raw_value(&offset).unwrap()),
                info: ClientInfo {
                    client: "c".into(),
                    user: "u".into(),
                },
            })
            .collect();
        History {
            publications,
            position,
            vouched: false,
        }
    }

    #[test]
    fn a_history_that_starts_right_after_the_position_continues_it() {
        let kept = history(at(5, "e"), 3..=5);
        assert_eq!(continuity(&at(2, "e"), &kept, true), Ok(()));
        assert_eq!(
            continuity(&at(5, "e"), &kept, true),
            Ok(()),
            "nothing missed"
        );
        let nothing = history(at(5, "e"), []);
        assert_eq!(continuity(&at(5, "e"), &nothing, true), Ok(()));
    }

    #[test]
    fn a_gap_a_new_epoch_or_a_position_ahead_is_told_apart() {
        let kept = history(at(5, "e"), 3..=5);
        assert_eq!(
            continuity(&at(1, "e"), &kept, true),
            Err(ContinuityError::TooOld(2))
        );
        assert_eq!(
            continuity(&at(6, "e"), &kept, true),
            Err(ContinuityError::Ahead { offset: 6, at: 5 })
        );
        assert_eq!(
            continuity(&at(3, "old"), &kept, true),
            Err(ContinuityError::EpochChanged {
                was: "old".into(),
                now: "e".into()
            })
        );
    }

    #[test]
    fn a_page_of_the_history_is_complete_only_where_it_must_be() {
        // A page cut by its limit: fine for `history`, a loss for a recovering subscription.
        let page = history(at(5, "e"), 3..=4);
        assert_eq!(continuity(&at(2, "e"), &page, false), Ok(()));
        assert_eq!(
            continuity(&at(2, "e"), &page, true),
            Err(ContinuityError::Incomplete { missed: 3, kept: 2 })
        );
    }

    #[test]
    fn an_unpublished_epoch_the_broker_vouches_for_stands_for_the_current_one() {
        let since = at(0, "~gen.100");
        assert_eq!(unpublished(&since).as_deref(), Some("~gen.100"));
        assert_eq!(unpublished(&at(0, "e")), None);
        let mut kept = history(at(2, "e"), 1..=2);
        assert!(continuity(&since, &kept, true).is_err(), "not vouched");
        kept.vouched = true;
        assert_eq!(continuity(&since, &kept, true), Ok(()));
    }
}
