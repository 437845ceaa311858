//! The node's local side: what the broker hands down (publications, reconciliations, server
//! commands, channel events), the registry of which local connections belong to which user
//! with each connection's [`Mailbox`], and the batching of joins and leaves in big rooms.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::broker::Deliver;
use crate::config::{JoinLeave, Namespaces};
use crate::connection::ConnectionId;
use crate::hub::Hub;
use crate::presence::{Change, PresenceEvent};
use crate::protocol::{
    ChannelEvent, ChannelName, CloseCode, Member, Membership, PresenceBatch, PresenceChange,
    Publication, StreamPosition,
};

/// What this node holds of its own connections, and where the broker hands things down.
#[derive(Debug)]
pub struct Local {
    pub(super) hub: Hub,
    /// Authenticated user → mailboxes of their connections here. Touched on connect, close and
    /// server commands only, never on the publish path, so one std lock serves.
    users: StdMutex<Users>,
    pub(super) namespaces: Arc<Namespaces>,
    /// Joins and leaves waiting to go out together, per channel.
    batches: StdMutex<HashMap<ChannelName, Batch>>,
    /// What is left of each channel's budget of joins and leaves pushed one by one.
    push_budgets: StdMutex<PushBudgets>,
    /// Stream sessions here, which take commands from any node.
    pub(super) streams: super::streams::Streams,
    /// Itself, for the tasks that flush batches.
    this: Weak<Local>,
}

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
pub const PRESENCE_PUSHES: crate::limits::Rate = crate::limits::Rate {
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

/// Authenticated user → their connections on this node, each with its mailbox.
type Users = HashMap<Arc<str>, Vec<(ConnectionId, Arc<Mailbox>)>>;

impl Local {
    pub fn new(namespaces: Arc<Namespaces>) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            hub: Hub::new(),
            users: StdMutex::default(),
            namespaces,
            batches: StdMutex::default(),
            push_budgets: StdMutex::default(),
            streams: super::streams::Streams::default(),
            this: this.clone(),
        })
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Batch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a change to the channel's batch, starting the batch (and its flush) if needed.
    fn coalesce(
        &self,
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
            let (this, channel) = (self.this.clone(), channel.clone());
            tokio::spawn(async move {
                tokio::time::sleep(every).await;
                if let Some(local) = this.upgrade() {
                    local.flush(&channel);
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

    pub(super) fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Deliver for Local {
    fn deliver(&self, publication: &Publication) {
        let compress_from = self
            .namespaces
            .compress_from(publication.channel.namespace());
        self.hub.broadcast(publication, compress_from);
    }

    fn reconcile(&self, channel: &ChannelName, position: &StreamPosition) {
        self.hub.reconcile(channel, position);
    }

    fn event(&self, channel: &ChannelName, message: &[u8]) {
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

    fn control(&self, message: &[u8]) {
        let Ok(control) = serde_json::from_slice::<Control>(message) else {
            tracing::warn!("undecodable server command from the broker");
            return;
        };
        let (user, command) = match control {
            Control::Commands { session, commands } => {
                return self.streams.deliver(&session, commands);
            }
            Control::Disconnect { user, code, reason } => {
                (user, UserCommand::Disconnect { code, reason })
            }
            Control::Subscribe { user, channel } => (user, UserCommand::Subscribe(channel)),
            Control::Unsubscribe { user, channel } => (user, UserCommand::Unsubscribe(channel)),
        };
        let users = self.users();
        for (_, mailbox) in users.get(user.as_str()).into_iter().flatten() {
            mailbox.send(command.clone());
        }
    }
}

/// A server command for every connection of one user, or commands for one stream session, as
/// they travel between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Control {
    Disconnect {
        user: String,
        code: CloseCode,
        reason: String,
    },
    Subscribe {
        user: String,
        channel: ChannelName,
    },
    Unsubscribe {
        user: String,
        channel: ChannelName,
    },
    /// Protocol commands (JSON text) for the stream session `session`.
    Commands {
        session: String,
        commands: Vec<String>,
    },
}

impl Control {
    pub(super) fn encode(&self) -> Result<Vec<u8>, super::NodeError> {
        serde_json::to_vec(self).map_err(|err| {
            crate::broker::BrokerError::Internal {
                context: "encoding a server command",
                source: Box::new(err),
            }
            .into()
        })
    }
}

/// What the server API asks of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserCommand {
    /// Subscribe regardless of the channel's rules, telling the client with a push.
    Subscribe(ChannelName),
    /// Unsubscribe, telling the client with a push.
    Unsubscribe(ChannelName),
    Disconnect {
        code: CloseCode,
        reason: String,
    },
}

/// One connection's queue of server commands. Nothing is allocated until a command arrives:
/// every authenticated connection has one, and most never receive anything.
#[derive(Debug, Default)]
pub struct Mailbox {
    commands: StdMutex<VecDeque<UserCommand>>,
    /// `notify_one` keeps a permit, so a command sent between two `recv`s is never missed.
    ready: Notify,
}

impl Mailbox {
    fn send(&self, command: UserCommand) {
        self.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(command);
        self.ready.notify_one();
    }

    /// The next command, in the order they were sent.
    pub async fn recv(&self) -> UserCommand {
        loop {
            let next = self
                .commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            if let Some(command) = next {
                return command;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NamespaceOptions, Namespaces};
    use crate::outbox::Outbox;
    use crate::protocol::Item;

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
        let local = Local::new(Arc::new(namespaces));
        let channel = ChannelName::parse("big:room").unwrap();
        let outbox = Outbox::new(1 << 20, "watcher".into());
        outbox.begin_subscription(&channel);
        let position = StreamPosition {
            offset: 0,
            epoch: "e".into(),
        };
        outbox.complete_subscription(&channel, vec![], &position);
        local.hub.add(&channel, outbox.clone());

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
            local.event(&channel, &event(change, client));
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
            local.event(&channel, &event(Change::Join, &format!("storm-{n:03}")));
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
