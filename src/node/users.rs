//! Users on this node: which local connections belong to which authenticated user, each with
//! its [`Mailbox`], and the server commands (subscribe, unsubscribe, disconnect a user) that
//! reach them on every node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use tokio::sync::Notify;

use super::control::Control;
use super::{Node, NodeError};
use crate::connection::ConnectionId;
use crate::protocol::{ChannelName, CloseCode};

/// Authenticated user → mailboxes of their connections here. Touched on connect, close and
/// server commands only, never on the publish path, so one std lock serves.
#[derive(Debug, Default)]
pub(super) struct Users(StdMutex<ByUser>);

/// Each user's connections here, with their mailboxes.
type ByUser = HashMap<Arc<str>, Vec<(ConnectionId, Arc<Mailbox>)>>;

impl Users {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByUser> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, user: &Arc<str>, id: ConnectionId) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::default());
        let mut users = self.lock();
        users
            .entry(user.clone())
            .or_default()
            .push((id, mailbox.clone()));
        mailbox
    }

    /// Forgets a connection; true if it was registered.
    fn unregister(&self, user: &Arc<str>, id: ConnectionId) -> bool {
        let mut users = self.lock();
        let Some(connections) = users.get_mut(user) else {
            return false;
        };
        let before = connections.len();
        connections.retain(|(connection, _)| *connection != id);
        let removed = connections.len() < before;
        if connections.is_empty() {
            users.remove(user);
        }
        removed
    }

    /// Hands `command` to every connection of `user` here.
    pub(super) fn send(&self, user: &str, command: &UserCommand) {
        let users = self.lock();
        for (_, mailbox) in users.get(user).into_iter().flatten() {
            mailbox.send(command.clone());
        }
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
    pub fn register_user(&self, user: &Arc<str>, id: ConnectionId) -> Arc<Mailbox> {
        let mailbox = self.0.local.users.register(user, id);
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

    #[tokio::test]
    async fn a_command_reaches_every_connection_of_its_user_and_no_other() {
        let users = Users::default();
        let (ann, bob): (Arc<str>, Arc<str>) = ("ann".into(), "bob".into());
        let (one, two) = (ConnectionId::next(), ConnectionId::next());
        let first = users.register(&ann, one);
        let second = users.register(&ann, two);
        let other = users.register(&bob, ConnectionId::next());
        let channel = ChannelName::parse("news").unwrap();
        users.send("ann", &UserCommand::Subscribe(channel.clone()));
        assert_eq!(first.recv().await, UserCommand::Subscribe(channel.clone()));
        assert_eq!(second.recv().await, UserCommand::Subscribe(channel.clone()));
        assert!(
            other.commands.lock().unwrap().is_empty(),
            "bob heard ann's command"
        );

        assert!(users.unregister(&ann, one));
        assert!(!users.unregister(&ann, one), "forgotten twice");
        users.send("ann", &UserCommand::Unsubscribe(channel.clone()));
        assert_eq!(second.recv().await, UserCommand::Unsubscribe(channel));
        assert!(first.commands.lock().unwrap().is_empty());
        assert!(users.unregister(&ann, two));
        assert!(
            users.lock().get("ann").is_none(),
            "a user without connections is kept"
        );
    }
}
