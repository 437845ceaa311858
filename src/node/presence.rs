//! Joins and leaves as subscribers see them: each presence change from the broker becomes a
//! `join`/`leave` push to this node's subscribers of the channel, as its namespace's
//! `join-leave` option says — one by one while the channel is small and calm, or netted into
//! one `presence_batch` push per interval once it is big or churning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use crate::config::{JoinLeave, Namespaces};
use crate::hub::Hub;
use crate::presence::{Change, PresenceEvent};
use crate::protocol::{
    ChannelEvent, ChannelName, Member, Membership, PresenceBatch, PresenceChange,
};

/// The joins and leaves of one interval, netted per client (or user): only the first and the
/// last change of each matter.
#[derive(Debug, Default)]
struct Batch {
    order: Vec<Arc<str>>,
    changes: HashMap<Arc<str>, (Change, Change, Member)>,
}

/// Joins and leaves a channel may push one by one: a burst, then a few a second. Past it they
/// are batched (`presence_batch`), so that a client subscribing and unsubscribing as fast as
/// its command rate allows costs each member about one frame a second, not one per change.
const PRESENCE_PUSHES: crate::limits::Rate = crate::limits::Rate {
    per_second: 10,
    burst: 10,
};

/// Each channel's budget of one-by-one pushes; a channel without an entry has a full one.
#[derive(Debug, Default)]
struct PushBudgets {
    /// Tokens left and when they were counted.
    by_channel: HashMap<ChannelName, (f32, tokio::time::Instant)>,
    swept: Option<tokio::time::Instant>,
}

impl PushBudgets {
    fn spend(&mut self, channel: &ChannelName, now: tokio::time::Instant) -> bool {
        let (rate, burst) = (
            PRESENCE_PUSHES.per_second as f32,
            PRESENCE_PUSHES.burst as f32,
        );
        let refilled = |(tokens, at): (f32, tokio::time::Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f32() * rate).min(burst)
        };
        // Full budgets are forgotten, a second apart: the map holds only channels with changes
        // in the last moments, whatever names a client churns through.
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            self.swept = Some(now);
            self.by_channel
                .retain(|_, budget| refilled(*budget) < burst);
        }
        let tokens = self
            .by_channel
            .get(channel)
            .map_or(burst, |budget| refilled(*budget));
        if tokens < 1.0 {
            return false;
        }
        self.by_channel.insert(channel.clone(), (tokens - 1.0, now));
        true
    }
}

/// Turns presence changes into pushes to this node's subscribers.
#[derive(Debug)]
pub(super) struct Joins {
    hub: Arc<Hub>,
    namespaces: Arc<Namespaces>,
    /// Joins and leaves waiting to go out together, per channel.
    batches: StdMutex<HashMap<ChannelName, Batch>>,
    /// What is left of each channel's budget of joins and leaves pushed one by one.
    push_budgets: StdMutex<PushBudgets>,
}

impl Joins {
    pub(super) fn new(hub: Arc<Hub>, namespaces: Arc<Namespaces>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            namespaces,
            batches: StdMutex::default(),
            push_budgets: StdMutex::default(),
        })
    }

    /// Pushes (now or batched) the presence change the broker handed down for `channel`.
    pub(super) fn changed(self: &Arc<Self>, channel: &ChannelName, message: &[u8]) {
        let Some(event) = PresenceEvent::decode(message) else {
            tracing::warn!(%channel, "undecodable channel event from the broker");
            return;
        };
        let options = self.namespaces.get(channel.namespace());
        let key = match options.join_leave {
            JoinLeave::Off => return,
            JoinLeave::User if !event.user_edge => return,
            JoinLeave::User => event.member.user_key().into(),
            JoinLeave::Client => event.member.client.clone(),
        };
        // Past the channel's budget, changes are batched even below the limit (and even where
        // batches are off above it): one client churning in and out must not cost every member
        // a frame per change.
        let every = if options.join_leave_batch.is_zero() {
            crate::config::DEFAULT_JOIN_LEAVE_BATCH
        } else {
            options.join_leave_batch
        };
        // A batch already open keeps taking changes, so that none overtakes it.
        if self.batches().contains_key(channel) {
            return self.coalesce(channel, event, key, every);
        }
        if event.clients > options.join_leave_limit {
            if !options.join_leave_batch.is_zero() {
                self.coalesce(channel, event, key, every);
            }
            return;
        }
        if !self.spend_push(channel) {
            return self.coalesce(channel, event, key, every);
        }
        let change = PresenceChange {
            channel: channel.clone(),
            info: event.member,
        };
        let membership = match event.change {
            Change::Join => Membership::Join(change),
            Change::Leave => Membership::Leave(change),
        };
        self.hub
            .broadcast_event(&Arc::new(ChannelEvent::new(membership)));
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Batch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a change to the channel's batch, starting the batch (and its flush) if needed.
    fn coalesce(
        self: &Arc<Self>,
        channel: &ChannelName,
        event: PresenceEvent,
        key: Arc<str>,
        every: Duration,
    ) {
        let mut batches = self.batches();
        let fresh = !batches.contains_key(channel);
        let batch = batches.entry(channel.clone()).or_default();
        match batch.changes.get_mut(&key) {
            Some((_, last, member)) => {
                *last = event.change;
                *member = event.member;
            }
            None => {
                batch.order.push(key.clone());
                let changes = (event.change, event.change, event.member);
                batch.changes.insert(key, changes);
            }
        }
        if fresh {
            let (this, channel) = (Arc::downgrade(self), channel.clone());
            tokio::spawn(async move {
                tokio::time::sleep(every).await;
                if let Some(joins) = this.upgrade() {
                    joins.flush(&channel);
                }
            });
        }
    }

    /// Pushes a channel's batch: who joined and stayed, who was there and left.
    fn flush(&self, channel: &ChannelName) {
        let Some(mut batch) = self.batches().remove(channel) else {
            return;
        };
        let (mut joined, mut left, mut more) = (Vec::new(), Vec::new(), 0);
        for key in &batch.order {
            let listed = joined.len() + left.len() < PresenceBatch::MAX_MEMBERS;
            match batch.changes.remove(key) {
                Some((Change::Join, Change::Join, member)) if listed => joined.push(member),
                Some((Change::Leave, Change::Leave, member)) if listed => left.push(member),
                Some((first, last, _)) if first == last => more += 1,
                _ => {}
            }
        }
        if joined.is_empty() && left.is_empty() {
            return;
        }
        let channel = channel.clone();
        let batch = Membership::Batch(PresenceBatch {
            channel,
            joined,
            left,
            more,
        });
        self.hub
            .broadcast_event(&Arc::new(ChannelEvent::new(batch)));
    }

    /// Spends one of `channel`'s one-by-one pushes; false when its budget is spent.
    fn spend_push(&self, channel: &ChannelName) -> bool {
        let mut budgets = self
            .push_budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        budgets.spend(channel, tokio::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NamespaceOptions, Namespaces};
    use crate::outbox::Outbox;
    use crate::protocol::{Item, StreamPosition};

    /// The batch an item carries.
    fn batch(item: &Item) -> &PresenceBatch {
        match item {
            Item::Event(event) => match &event.presence {
                Membership::Batch(batch) => batch,
                other => panic!("not a batch: {other:?}"),
            },
            other => panic!("not an event: {other:?}"),
        }
    }

    fn event(change: Change, client: &str) -> Vec<u8> {
        PresenceEvent {
            change,
            member: Member {
                client: client.into(),
                user: client.into(),
                authenticated: false,
                info: None,
            },
            user_edge: true,
            clients: 10,
        }
        .encode()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_nets_each_clients_changes_to_where_they_end() {
        let base = Namespaces::default().get(None).clone();
        let big = NamespaceOptions {
            presence: true,
            join_leave: JoinLeave::Client,
            join_leave_limit: 5,
            join_leave_batch: Duration::from_secs(1),
            ..base.clone()
        };
        let namespaces = Namespaces::new(base, [("big".to_owned(), big)].into_iter().collect());
        let hub = Arc::new(Hub::new());
        let joins = Joins::new(hub.clone(), Arc::new(namespaces));
        let channel = ChannelName::parse("big:room").unwrap();
        let outbox = Outbox::new(1 << 20, "watcher".into());
        outbox.begin_subscription(&channel);
        let position = StreamPosition {
            offset: 0,
            epoch: "e".into(),
        };
        outbox.complete_subscription(&channel, vec![], &position);
        hub.add(&channel, outbox.clone());

        for (change, client) in [
            (Change::Join, "came-and-went"),
            (Change::Leave, "came-and-went"),
            (Change::Join, "came"),
            (Change::Leave, "went"),
            (Change::Leave, "back"),
            (Change::Join, "back"),
            (Change::Join, "again"),
            (Change::Leave, "again"),
            (Change::Join, "again"),
        ] {
            joins.changed(&channel, &event(change, client));
        }
        let mut frames = Vec::new();
        outbox.drain(&mut frames);
        assert!(frames.is_empty(), "nothing before the interval ends");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        outbox.drain(&mut frames);
        assert_eq!(frames.len(), 1, "one push for the interval");
        let batch = batch(&frames[0]);
        let names = |members: &[Member]| -> Vec<String> {
            members.iter().map(|m| m.client.to_string()).collect()
        };
        // "back" was there before and is after; "again" was not and is.
        assert_eq!(names(&batch.joined), ["came", "again"]);
        assert_eq!(names(&batch.left), ["went"]);
        assert_eq!(batch.more, 0);

        // A storm: one push still, listing at most MAX_MEMBERS and counting the rest.
        for n in 0..250 {
            joins.changed(&channel, &event(Change::Join, &format!("storm-{n:03}")));
        }
        tokio::time::sleep(Duration::from_millis(1001)).await;
        frames.clear();
        outbox.drain(&mut frames);
        assert_eq!(frames.len(), 1);
        let batch = self::batch(&frames[0]);
        assert_eq!(batch.joined.len(), PresenceBatch::MAX_MEMBERS);
        assert_eq!(batch.more, 150);
    }
}
