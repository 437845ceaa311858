//! What a test that drives a broker (or a presence store) directly plugs in on the node's side:
//! a [`Sink`] that records every delivery, and the retention such tests share.

use std::sync::Mutex;
use std::time::Duration;

use tidings::broker::{Deliver, Retention};
use tidings::protocol::{ChannelName, Publication, StreamPosition};
use tokio::sync::Notify;

use super::{WAIT, within};

/// Collects what a broker delivers.
#[derive(Default)]
pub struct Sink {
    pub publications: Mutex<Vec<Publication>>,
    pub controls: Mutex<Vec<Vec<u8>>>,
    pub events: Mutex<Vec<(String, Vec<u8>)>>,
    pub changed: Notify,
}

impl Deliver for Sink {
    fn deliver(&self, publication: &Publication) {
        self.publications.lock().unwrap().push(publication.clone());
        self.changed.notify_waiters();
    }

    fn reconcile(&self, _: &ChannelName, _: &StreamPosition) {}

    fn control(&self, message: &[u8]) {
        self.controls.lock().unwrap().push(message.to_vec());
        self.changed.notify_waiters();
    }

    fn event(&self, channel: &ChannelName, message: &[u8]) {
        let mut events = self.events.lock().unwrap();
        events.push((channel.to_string(), message.to_vec()));
        self.changed.notify_waiters();
    }
}

impl Sink {
    /// Waits until `n` publications of `channel` arrived; returns their offsets in order.
    pub async fn offsets(&self, channel: &str, n: usize) -> Vec<u64> {
        within(WAIT, "deliveries", async {
            loop {
                let changed = self.changed.notified();
                let offsets: Vec<u64> = self
                    .publications
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|p| p.channel.as_str() == channel)
                    .map(|p| p.offset)
                    .collect();
                if offsets.len() >= n {
                    return offsets;
                }
                changed.await;
            }
        })
        .await
    }
}

/// Ten publications of history for a minute, positions for ten minutes.
pub fn retention() -> Retention {
    Retention {
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        position_ttl: Duration::from_secs(600),
    }
}
