//! The lifecycle store of a single node: everything in this process (events not yet sent die
//! with it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::json;

use super::{
    ACK_MARK_MARGIN, Ack, Debounce, Edge, LifecycleStore, QueueBound, Queued, RECEIPT_COALESCE,
    Receipt, Tick,
};
use crate::broker::BrokerError;
use crate::protocol::ChannelName;

#[derive(Debug)]
pub struct MemoryLifecycle {
    debounce: Debounce,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: HashSet<String>,
    /// Outs waiting for their debounce: key → when due.
    pending: HashMap<String, Instant>,
    queue: VecDeque<String>,
    /// What `queue` holds, for its bound.
    queued: Queued,
    bound: QueueBound,
    /// Events dropped for a full queue since the last apply or tick reported them.
    full: u64,
    era: u128,
    seq: u64,
    receipts: HashMap<ChannelName, Vec<Tracked>>,
    /// The highest acknowledged position of each channel (epoch, offset), until when kept.
    acked: HashMap<ChannelName, (String, u64, Instant)>,
}

#[derive(Debug)]
struct Tracked {
    offset: u64,
    epoch: String,
    user: String,
    due: Instant,
}

impl MemoryLifecycle {
    pub fn new(debounce: Debounce, bound: QueueBound) -> Self {
        let era = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self {
            debounce,
            state: Mutex::new(State {
                era,
                bound,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn emit(&mut self, mut event: serde_json::Value) {
        self.seq += 1;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        event["id"] = format!("{}-{}", self.era, self.seq).into();
        event["time_ms"] = json!(time_ms);
        let event = event.to_string();
        if !self.bound.admits(&event, self.queued) {
            self.full += 1;
            return;
        }
        self.queued.count(&event, true);
        self.queue.push_back(event);
    }

    fn pop_front(&mut self) {
        if let Some(event) = self.queue.pop_front() {
            self.queued.count(&event, false);
        }
    }

    /// The event of a holding's transition.
    fn transition(&mut self, key: &str, enter: bool) {
        let Ok((kind, channel, user)) = serde_json::from_str::<(String, String, String)>(key)
        else {
            return;
        };
        let kind = match (kind.as_str(), enter) {
            ("c", true) => "channel_occupied",
            ("c", false) => "channel_vacated",
            ("m", true) => "member_added",
            ("m", false) => "member_removed",
            ("u", true) => "user_online",
            ("u", false) => "user_offline",
            _ => return,
        };
        let mut event = json!({ "type": kind });
        if !channel.is_empty() {
            event["channel"] = channel.into();
        }
        if !user.is_empty() {
            event["user"] = user.into();
        }
        self.emit(event);
    }
}

#[async_trait]
impl LifecycleStore for MemoryLifecycle {
    async fn apply(&self, edges: &[Edge]) -> Result<u64, BrokerError> {
        let now = Instant::now();
        let mut state = self.state();
        for edge in edges {
            if edge.enter {
                state.held.insert(edge.key.clone());
                if state.pending.remove(&edge.key).is_none() {
                    state.transition(&edge.key, true);
                }
            } else if state.held.remove(&edge.key) {
                let wait = match edge.key.as_bytes().get(2) {
                    Some(b'c') => self.debounce.channel,
                    Some(b'm') => self.debounce.member,
                    _ => self.debounce.user,
                };
                state.pending.insert(edge.key.clone(), now + wait);
            }
        }
        Ok(std::mem::take(&mut state.full))
    }

    async fn push(&self, events: &[serde_json::Value]) -> Result<u64, BrokerError> {
        let mut state = self.state();
        for event in events {
            state.emit(event.clone());
        }
        Ok(std::mem::take(&mut state.full))
    }

    async fn tick(&self) -> Result<Tick, BrokerError> {
        let now = Instant::now();
        let mut state = self.state();
        let mut due: Vec<(Instant, String)> = state
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, at)| (*at, key.clone()))
            .collect();
        due.sort();
        for (_, key) in due {
            state.pending.remove(&key);
            state.transition(&key, false);
        }
        let ripe: Vec<ChannelName> = state
            .receipts
            .iter()
            .filter(|(_, tracked)| {
                tracked
                    .first()
                    .is_some_and(|t| t.due + RECEIPT_COALESCE <= now)
            })
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in ripe {
            let tracked = state.receipts.remove(&channel).unwrap_or_default();
            let (due, waiting): (Vec<_>, Vec<_>) = tracked.into_iter().partition(|t| t.due <= now);
            let mut by_epoch: Vec<(String, String, Vec<u64>)> = Vec::new();
            for t in due {
                match by_epoch.iter_mut().find(|(epoch, _, _)| *epoch == t.epoch) {
                    Some((_, _, offsets)) => offsets.push(t.offset),
                    None => by_epoch.push((t.epoch, t.user, vec![t.offset])),
                }
            }
            for (epoch, user, mut offsets) in by_epoch {
                offsets.sort_unstable();
                state.emit(json!({
                    "type": "undelivered", "channel": channel.as_str(), "user": user,
                    "offsets": offsets, "epoch": epoch,
                }));
            }
            if !waiting.is_empty() {
                state.receipts.insert(channel, waiting);
            }
        }
        let before = state.queue.len();
        while state
            .queue
            .front()
            .is_some_and(|event| super::expired(event))
        {
            state.pop_front();
        }
        Ok(Tick {
            queued: state.queue.len() as u64,
            lead: true,
            fresh: false,
            expired: (before - state.queue.len()) as u64,
            full: std::mem::take(&mut state.full),
            more: false,
        })
    }

    async fn track(&self, receipt: &Receipt) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut state = self.state();
        state.acked.retain(|_, (_, _, until)| *until > now);
        let acked = state
            .acked
            .get(&receipt.channel)
            .is_some_and(|(epoch, offset, _)| *epoch == receipt.epoch && receipt.offset <= *offset);
        let tracked = state.receipts.entry(receipt.channel.clone()).or_default();
        let again = tracked
            .iter()
            .any(|t| t.offset == receipt.offset && t.epoch == receipt.epoch);
        if !acked && !again {
            tracked.push(Tracked {
                offset: receipt.offset,
                epoch: receipt.epoch.clone(),
                user: receipt.user.clone(),
                due: now + receipt.within,
            });
        }
        if tracked.is_empty() {
            state.receipts.remove(&receipt.channel);
        }
        Ok(())
    }

    async fn ack(&self, ack: &Ack) -> Result<(), BrokerError> {
        let mut state = self.state();
        if let Some(tracked) = state.receipts.get_mut(&ack.channel) {
            tracked.retain(|t| t.epoch != ack.epoch || t.offset > ack.offset);
            if tracked.is_empty() {
                state.receipts.remove(&ack.channel);
            }
        }
        let until = Instant::now() + ack.within + ACK_MARK_MARGIN;
        let mark = state
            .acked
            .entry(ack.channel.clone())
            .or_insert_with(|| (ack.epoch.clone(), 0, until));
        if mark.0 != ack.epoch || mark.1 < ack.offset {
            *mark = (ack.epoch.clone(), ack.offset, until);
        }
        Ok(())
    }

    async fn peek(&self, max: usize) -> Result<Vec<String>, BrokerError> {
        Ok(self.state().queue.iter().take(max).cloned().collect())
    }

    async fn pop(&self, count: usize) -> Result<bool, BrokerError> {
        let mut state = self.state();
        for _ in 0..count.min(state.queue.len()) {
            state.pop_front();
        }
        Ok(true)
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::webhook::Holding;

    fn edge(holding: &Holding, enter: bool) -> Edge {
        Edge {
            key: holding.key(),
            enter,
        }
    }

    fn types(events: &[String]) -> Vec<String> {
        events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["type"].to_string())
            .collect()
    }

    #[tokio::test]
    async fn an_out_waits_for_its_debounce_and_a_comeback_cancels_both() {
        let store = MemoryLifecycle::new(
            Debounce {
                channel: Duration::ZERO,
                member: Duration::ZERO,
                user: Duration::from_secs(3600),
            },
            QueueBound::default(),
        );
        let user = Holding::User("ann".into());
        let channel = Holding::Channel(ChannelName::parse("news").unwrap());
        store
            .apply(&[edge(&user, true), edge(&channel, true)])
            .await
            .unwrap();
        // The user leaves and comes back within the grace: nothing.
        store
            .apply(&[edge(&user, false), edge(&user, true)])
            .await
            .unwrap();
        // The channel is vacated once its (zero) debounce passed.
        store.apply(&[edge(&channel, false)]).await.unwrap();
        assert_eq!(store.tick().await.unwrap().queued, 3);
        let events = store.peek(10).await.unwrap();
        assert_eq!(
            types(&events),
            [
                r#""user_online""#,
                r#""channel_occupied""#,
                r#""channel_vacated""#
            ]
        );
        let ids: std::collections::HashSet<_> = events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["id"].to_string())
            .collect();
        assert_eq!(ids.len(), 3);
        store.pop(2).await.unwrap();
        assert_eq!(
            types(&store.peek(10).await.unwrap()),
            [r#""channel_vacated""#]
        );
    }

    #[tokio::test]
    async fn an_ack_before_its_track_and_a_tracked_retry_are_not_reported() {
        let store = MemoryLifecycle::new(
            Debounce {
                channel: Duration::ZERO,
                member: Duration::ZERO,
                user: Duration::ZERO,
            },
            QueueBound::default(),
        );
        let channel = ChannelName::parse("user:ann").unwrap();
        let receipt = |offset| Receipt {
            channel: channel.clone(),
            user: "ann".into(),
            epoch: "e1".into(),
            offset,
            within: Duration::ZERO,
        };
        let ack = Ack {
            channel: channel.clone(),
            epoch: "e1".into(),
            offset: 1,
            within: Duration::ZERO,
        };
        // Acknowledged on another node before the publisher tracked it.
        store.ack(&ack).await.unwrap();
        store.track(&receipt(1)).await.unwrap();
        // Tracked twice (an idempotent retry), never acknowledged.
        store.track(&receipt(2)).await.unwrap();
        store.track(&receipt(2)).await.unwrap();
        // Another epoch's offset 1 is not covered by the mark.
        let mut other = receipt(1);
        other.epoch = "e2".into();
        store.track(&other).await.unwrap();
        tokio::time::sleep(RECEIPT_COALESCE).await;
        store.tick().await.unwrap();
        let events: Vec<serde_json::Value> = store
            .peek(10)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let reported: Vec<_> = events
            .iter()
            .map(|e| (e["epoch"].as_str().unwrap(), e["offsets"].clone()))
            .collect();
        assert_eq!(
            reported,
            [
                ("e1", serde_json::json!([2])),
                ("e2", serde_json::json!([1]))
            ]
        );
    }
}
