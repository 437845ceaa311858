//! Looking a user up on every node: which connections the user has, where, and what each
//! subscribes to — for the server API's `connections` and the admin page.
//!
//! The asking node sends one `Lookup` to every node (itself included), and each answers with a
//! `Found` addressed to the asker alone. The asker waits for the nodes it knows to be alive, at
//! most [`LOOKUP_TIMEOUT`], and says which did not answer rather than waiting on a dead one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::control::Control;
use super::users::Users;
use super::{Node, NodeError};
use crate::broker::Broker;

/// How long the asker waits for the nodes alive to answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many connections per node, and channels per connection, are listed (with the
/// totals beside them), so that one answer stays one modest broker message.
pub const MAX_LISTED: usize = 100;

/// One connection of the user, as its node describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection's client id (as in presence).
    pub client: String,
    /// `websocket`, `sse` or `stream`.
    pub transport: String,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// The channels it subscribes to, by name (at most [`MAX_LISTED`]).
    pub channels: Vec<String>,
    /// How many channels it subscribes to.
    pub subscriptions: usize,
}

/// One node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConnections {
    pub node: String,
    pub name: String,
    /// At most [`MAX_LISTED`], oldest first.
    pub connections: Vec<ConnectionInfo>,
    /// How many connections the user has on that node.
    pub total: usize,
}

/// What a lookup found: the answers of the nodes that have the user, and the nodes alive that
/// did not answer in time (their connections, if any, are not counted).
#[derive(Debug, Default, Serialize)]
pub struct Lookup {
    pub nodes: Vec<NodeConnections>,
    pub unanswered: Vec<String>,
}

/// The lookups this node is waiting on, and how it answers others'.
#[derive(Debug, Default)]
pub(super) struct Lookups {
    next: AtomicU64,
    pending: StdMutex<HashMap<u64, mpsc::UnboundedSender<NodeConnections>>>,
    /// Set once the node exists: the broker (weak: the broker holds this node's sink) and this
    /// node's name.
    answerer: OnceLock<(Weak<dyn Broker>, String)>,
}

impl Lookups {
    pub(super) fn answer_with(&self, broker: &Arc<dyn Broker>, name: String) {
        let _ = self.answerer.set((Arc::downgrade(broker), name));
    }

    /// Another node (or this one) asks about `user`: the answer goes to `reply_to` alone.
    pub(super) fn asked(&self, users: &Users, user: &str, request: u64, reply_to: String) {
        let Some((broker, name)) = self.answerer.get() else {
            return;
        };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let (connections, total) = users.describe(user, MAX_LISTED);
        let found = Control::Found {
            request,
            found: NodeConnections {
                node: broker.node_id(),
                name: name.clone(),
                connections,
                total,
            },
        };
        let Ok(message) = found.encode() else {
            return;
        };
        // The broker's sink must not wait on the broker.
        tokio::spawn(async move {
            if let Err(err) = broker.control_to(&reply_to, &message).await {
                tracing::debug!(%err, "answering a user lookup failed");
            }
        });
    }

    /// A node answered one of this node's lookups (a late answer finds nobody waiting).
    pub(super) fn found(&self, request: u64, found: NodeConnections) {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiting) = pending.get(&request) {
            let _ = waiting.send(found);
        }
    }
}

/// Forgets a lookup however its wait ends.
struct Waiting<'a>(&'a Lookups, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.remove(&self.1);
    }
}

impl Node {
    /// The connections of `user` on every node alive, with their channels.
    pub async fn lookup_user(&self, user: &str) -> Result<Lookup, NodeError> {
        let lookups = &self.0.local.lookups;
        let mut alive = self.0.broker.live_nodes().await?;
        let request = lookups.next.fetch_add(1, Ordering::Relaxed);
        let (answers, mut answered) = mpsc::unbounded_channel();
        lookups
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request, answers);
        let _waiting = Waiting(lookups, request);
        self.control(&Control::Lookup {
            user: user.to_owned(),
            request,
            reply_to: self.0.broker.node_id(),
        })
        .await?;
        let mut lookup = Lookup::default();
        let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
        while !alive.is_empty() {
            let Ok(Some(found)) = tokio::time::timeout_at(deadline, answered.recv()).await else {
                break;
            };
            // A node that came up after the list was read answers too; it counts all the same.
            alive.retain(|node| *node != found.node);
            if found.total > 0 {
                lookup.nodes.push(found);
            }
        }
        lookup
            .nodes
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.node.cmp(&b.node)));
        alive.sort();
        lookup.unanswered = alive;
        Ok(lookup)
    }
}
