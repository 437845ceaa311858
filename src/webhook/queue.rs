//! The queue's bound: how many events and bytes may wait, and the room kept for user, member
//! and receipt events (channel events, which any client can cause, get at most half).

use std::time::{SystemTime, UNIX_EPOCH};

use super::RETRY_WINDOW;
pub use crate::config::QueueBound;

impl QueueBound {
    /// Whether an event of `len` bytes fits beside `queued` events of `queued_bytes`, given
    /// how many of them (and of their bytes) are channel events.
    pub fn admits(&self, event: &str, queued: Queued) -> bool {
        let len = event.len();
        if is_channel_event(event) {
            queued.channel_events < self.events / 2
                && queued.channel_bytes + len <= self.bytes / 2
                && queued.events < self.events
                && queued.bytes + len <= self.bytes
        } else {
            queued.events < self.events && queued.bytes + len <= self.bytes
        }
    }
}

/// What the queue holds: events and bytes, all and of channel events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub events: usize,
    pub bytes: usize,
    pub channel_events: usize,
    pub channel_bytes: usize,
}

impl Queued {
    /// Counts `event` in (entering the queue) or out.
    pub fn count(&mut self, event: &str, enter: bool) {
        let len = event.len();
        let channel = is_channel_event(event);
        if enter {
            self.events += 1;
            self.bytes += len;
            if channel {
                self.channel_events += 1;
                self.channel_bytes += len;
            }
        } else {
            self.events = self.events.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(len);
            if channel {
                self.channel_events = self.channel_events.saturating_sub(1);
                self.channel_bytes = self.channel_bytes.saturating_sub(len);
            }
        }
    }
}

/// Whether a queued event (its JSON) is one anyone can cause: a channel event, a client event,
/// a cache miss. Inside a JSON string every quote is escaped, so the unescaped `"type":"` can
/// only be the key itself.
pub(super) fn is_channel_event(event: &str) -> bool {
    [
        r#""type":"channel_"#,
        r#""type":"client_event""#,
        r#""type":"cache_miss""#,
    ]
    .iter()
    .any(|kind| event.contains(kind))
}

/// Whether an event was recorded longer ago than the retry window.
pub(crate) fn expired(event: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Recorded {
        time_ms: u64,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    serde_json::from_str::<Recorded>(event)
        .is_ok_and(|r| u128::from(r.time_ms) + RETRY_WINDOW.as_millis() <= now)
}
