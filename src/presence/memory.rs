//! MemoryPresence: presence inside one process, the default when no Redis is configured.
//!
//! One map per channel under one lock; each change is announced to the node while the lock is
//! held, so the announcements of one channel leave in the order the changes happened. Limits:
//! nothing survives the process, which is also the only node that could hold a member.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{Change, Page, PresenceEvent, PresenceStore, Stats};
use crate::broker::{BrokerError, Deliver};
use crate::protocol::{ChannelName, Member};

/// The in-process presence store.
pub struct MemoryPresence {
    rooms: Mutex<HashMap<ChannelName, Room>>,
    deliver: Arc<dyn Deliver>,
}

#[derive(Default)]
struct Room {
    /// Ordered by client id, for paging.
    members: BTreeMap<Arc<str>, Member>,
    /// User → connections present.
    /// Connections present per user ([`Member::user_key`]).
    users: HashMap<String, u64>,
}

impl std::fmt::Debug for MemoryPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPresence").finish_non_exhaustive()
    }
}

impl MemoryPresence {
    pub fn new(deliver: Arc<dyn Deliver>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            deliver,
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Room>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &ChannelName, member: &Member) -> Result<(), BrokerError> {
        let mut rooms = self.rooms();
        let room = rooms.entry(channel.clone()).or_default();
        if room.members.contains_key(&member.client) {
            return Ok(());
        }
        room.members.insert(member.client.clone(), member.clone());
        let connections = room.users.entry(member.user_key()).or_default();
        *connections += 1;
        let event = PresenceEvent {
            change: Change::Join,
            member: member.clone(),
            user_edge: *connections == 1,
            clients: room.members.len() as u64,
        };
        self.deliver.event(channel, &event.encode());
        Ok(())
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), BrokerError> {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(channel) else {
            return Ok(());
        };
        let Some(member) = room.members.remove(client) else {
            return Ok(());
        };
        let user = member.user_key();
        let last = match room.users.get_mut(&user) {
            Some(connections) if *connections > 1 => {
                *connections -= 1;
                false
            }
            _ => {
                room.users.remove(&user);
                true
            }
        };
        let event = PresenceEvent {
            change: Change::Leave,
            member,
            user_edge: last,
            clients: room.members.len() as u64,
        };
        if room.members.is_empty() {
            rooms.remove(channel);
        }
        self.deliver.event(channel, &event.encode());
        Ok(())
    }

    async fn page(
        &self,
        channel: &ChannelName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(channel) else {
            return Ok(Page {
                members: Vec::new(),
                cursor: None,
            });
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut members: Vec<Member> = room
            .members
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, member)| member.clone())
            .collect();
        let cursor = if members.len() > limit {
            members.truncate(limit);
            members.last().map(|m| m.client.to_string())
        } else {
            None
        };
        Ok(Page { members, cursor })
    }

    async fn stats(&self, channel: &ChannelName) -> Result<Stats, BrokerError> {
        Ok(self
            .rooms()
            .get(channel)
            .map_or(Stats::default(), |room| Stats {
                clients: room.members.len() as u64,
                users: room.users.len() as u64,
            }))
    }
}
