//! Users on this node: which local connections belong to which authenticated user, each with
//! its [`Mailbox`], and the server commands (subscribe, unsubscribe, disconnect a user) that
//! reach them on every node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::control::Control;
use super::lookup::ConnectionInfo;
use super::{Node, NodeError};
use crate::connection::ConnectionId;
use crate::outbox::Outbox;
use crate::protocol::{ChannelName, CloseCode};

/// Authenticated user → mailboxes of their connections here. Touched on connect, close and
/// server commands only, never on the publish path, so one std lock serves.
#[derive(Debug, Default)]
pub(super) struct Users(StdMutex<ByUser>);

/// Each user's connections here, oldest first.
type ByUser = HashMap<Arc<str>, Vec<Registered>>;

/// One connection of a user: its mailbox, and what a lookup tells of it.
#[derive(Debug)]
struct Registered {
    mailbox: Arc<Mailbox>,
    /// The connection's outbox, which knows its id and channels.
    outbox: Outbox,
    transport: &'static str,
    /// Unix milliseconds.
    connected_at: u64,
}

impl Users {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByUser> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, user: &Arc<str>, outbox: &Outbox, transport: &'static str) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::default());
        let connected_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let registered = Registered {
            mailbox: mailbox.clone(),
            outbox: outbox.clone(),
            transport,
            connected_at,
        };
        self.lock()
            .entry(user.clone())
            .or_default()
            .push(registered);
        mailbox
    }

    /// Forgets a connection; true if it was registered.
    fn unregister(&self, user: &Arc<str>, id: ConnectionId) -> bool {
        let mut users = self.lock();
        let Some(connections) = users.get_mut(user) else {
            return false;
        };
        let before = connections.len();
        connections.retain(|registered| registered.outbox.id() != id);
        let removed = connections.len() < before;
        if connections.is_empty() {
            users.remove(user);
        }
        removed
    }

    /// Hands `command` to every connection of `user` here.
    pub(super) fn send(&self, user: &str, command: &UserCommand) {
        let users = self.lock();
        for registered in users.get(user).into_iter().flatten() {
            registered.mailbox.send(command.clone());
        }
    }

    /// The first `max` connections of `user` here, each with at most `max` of its channels,
    /// and how many connections there are.
    pub(super) fn describe(&self, user: &str, max: usize) -> (Vec<ConnectionInfo>, usize) {
        // Read the outboxes after letting go of the registry: their locks are the sessions'.
        let (listed, total): (Vec<(Outbox, &'static str, u64)>, usize) = {
            let users = self.lock();
            let connections = users.get(user).map_or(&[][..], Vec::as_slice);
            let listed = connections
                .iter()
                .take(max)
                .map(|r| (r.outbox.clone(), r.transport, r.connected_at))
                .collect();
            (listed, connections.len())
        };
        let described = listed
            .into_iter()
            .map(|(outbox, transport, connected_at)| {
                let mut channels: Vec<String> =
                    outbox.channels().iter().map(ToString::to_string).collect();
                channels.sort_unstable();
                let subscriptions = channels.len();
                channels.truncate(max);
                ConnectionInfo {
                    client: outbox.client().to_string(),
                    transport: transport.to_owned(),
                    connected_at,
                    channels,
                    subscriptions,
                }
            })
            .collect();
        (described, total)
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

impl Node {
    /// Makes a connection of an authenticated user reachable by server commands; its commands
    /// arrive in the returned mailbox.
    pub fn register_user(
        &self,
        user: &Arc<str>,
        outbox: &Outbox,
        transport: &'static str,
    ) -> Arc<Mailbox> {
        let mailbox = self.0.local.users.register(user, outbox, transport);
        if let Some(lifecycle) = &self.0.lifecycle {
            lifecycle.connected(user);
        }
        mailbox
    }

    pub fn unregister_user(&self, user: &Arc<str>, id: ConnectionId) {
        let removed = self.0.local.users.unregister(user, id);
        if let Some(lifecycle) = self.0.lifecycle.as_ref().filter(|_| removed) {
            lifecycle.disconnected(user);
        }
    }

    /// Subscribes every connection of `user`, on every node, regardless of the rules.
    pub async fn subscribe_user(&self, user: &str, channel: &ChannelName) -> Result<(), NodeError> {
        let user = user.to_owned();
        let channel = channel.clone();
        self.control(&Control::Subscribe { user, channel }).await
    }

    /// Unsubscribes every connection of `user`, on every node.
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &ChannelName,
    ) -> Result<(), NodeError> {
        let user = user.to_owned();
        let channel = channel.clone();
        self.control(&Control::Unsubscribe { user, channel }).await
    }

    /// Closes every connection of `user`, on every node.
    pub async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), NodeError> {
        let (user, reason) = (user.to_owned(), reason.to_owned());
        self.control(&Control::Disconnect { user, code, reason })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::new(1 << 16, "client".into())
    }

    #[tokio::test]
    async fn a_command_reaches_every_connection_of_its_user_and_no_other() {
        let users = Users::default();
        let (ann, bob): (Arc<str>, Arc<str>) = ("ann".into(), "bob".into());
        let (one, two) = (outbox(), outbox());
        let first = users.register(&ann, &one, "websocket");
        let second = users.register(&ann, &two, "sse");
        let other = users.register(&bob, &outbox(), "websocket");
        let channel = ChannelName::parse("news").unwrap();
        users.send("ann", &UserCommand::Subscribe(channel.clone()));
        assert_eq!(first.recv().await, UserCommand::Subscribe(channel.clone()));
        assert_eq!(second.recv().await, UserCommand::Subscribe(channel.clone()));
        assert!(
            other.commands.lock().unwrap().is_empty(),
            "bob heard ann's command"
        );

        assert!(users.unregister(&ann, one.id()));
        assert!(!users.unregister(&ann, one.id()), "forgotten twice");
        users.send("ann", &UserCommand::Unsubscribe(channel.clone()));
        assert_eq!(second.recv().await, UserCommand::Unsubscribe(channel));
        assert!(first.commands.lock().unwrap().is_empty());
        assert!(users.unregister(&ann, two.id()));
        assert!(
            users.lock().get("ann").is_none(),
            "a user without connections is kept"
        );
    }

    #[test]
    fn a_description_lists_each_connection_with_its_channels_within_the_bound() {
        let users = Users::default();
        let ann: Arc<str> = "ann".into();
        let (one, two, three) = (outbox(), outbox(), outbox());
        for name in ["b", "a", "c"] {
            one.begin_subscription(&ChannelName::parse(name).unwrap());
        }
        users.register(&ann, &one, "websocket");
        users.register(&ann, &two, "sse");
        users.register(&ann, &three, "stream");

        let (listed, total) = users.describe("ann", 2);
        assert_eq!(total, 3);
        assert_eq!(listed.len(), 2, "more than the bound listed");
        assert_eq!(listed[0].channels, ["a", "b"], "sorted, cut at the bound");
        assert_eq!(listed[0].subscriptions, 3);
        assert_eq!(listed[0].transport, "websocket");
        assert_eq!(listed[1].transport, "sse");
        assert!(listed[1].channels.is_empty());
        assert!(
            listed[0].connected_at > 1_700_000_000_000,
            "not unix milliseconds"
        );
        assert_eq!(users.describe("bob", 2), (Vec::new(), 0));
    }
}
