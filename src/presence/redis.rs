//! RedisPresence: presence shared by every node through Redis (standalone or Cluster), on the
//! broker's connection.
//!
//! ## Keys
//! A channel `C`'s presence lives beside its stream, under the same hash tag: `PREFIX:{C}:pm`
//! (hash: client id → member JSON), `PREFIX:{C}:po` (sorted set of client ids, all scored 0, so
//! that pages go by id), `PREFIX:{C}:pu` (hash: user → connections present), `PREFIX:{C}:pn`
//! (sorted set: node id → when its entries expire) and one `PREFIX:{C}:pn:NODE` set of client
//! ids per node. Every script changes them together and publishes the join or leave on the
//! channel's pub/sub channel in the same atomic step, so every node hears each change once and
//! in order with the channel's publications.
//!
//! ## A node that dies
//! Redis 7.0 has no per-field expiry, so entries expire per node: every node refreshes its own
//! entry in each channel where it has members every quarter of the TTL. Any script that
//! touches a channel first removes the members of nodes whose entry expired, announcing each
//! one's leave exactly once (the removal and the announcement are one atomic step). A node's
//! own refreshes run those sweeps in its channels, so the members of a node killed with
//! SIGKILL leave within the TTL plus a quarter — and reads (`page`, `stats`) sweep first, so
//! nothing stale is ever counted.
//!
//! ## Failures
//! A member this node could not remove (Redis unreachable) is removed again at every refresh
//! until Redis takes it. A node whose entries were swept while it was cut off, or lost by a
//! Redis restart, adds its members again at the next refresh (announcing their joins).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, Error as RedisError, Value};
use fred::types::scripts::Script;
use tokio::task::JoinHandle;

use super::{Page, PresenceStore, Stats};
use crate::broker::BrokerError;
use crate::broker::RedisStore;
use crate::protocol::{ChannelName, Member};

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::from_lua(format!("{COMMON}\n{body}"))
}

fn unavailable(context: &'static str, err: RedisError) -> BrokerError {
    BrokerError::Unavailable {
        context,
        source: Box::new(err),
    }
}

/// The Redis-backed presence store.
pub struct RedisPresence {
    inner: Arc<Inner>,
    refresher: JoinHandle<()>,
}

struct Inner {
    /// The broker's connection and naming, for the channels' pub/sub names.
    store: RedisStore,
    client: Client,
    prefix: String,
    sharded: bool,
    /// This node's id in every channel's presence.
    node: String,
    ttl: Duration,
    add: Script,
    remove: Script,
    refresh: Script,
    page: Script,
    stats: Script,
    /// This node's members: what it refreshes, and adds again if Redis lost them.
    local: Mutex<HashMap<ChannelName, HashMap<Arc<str>, Member>>>,
    /// Removals Redis did not take yet.
    unremoved: Mutex<Vec<(ChannelName, Arc<str>)>>,
}

impl fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl RedisPresence {
    /// A store on the broker's connection; entries outlive their node's last refresh by `ttl`.
    pub fn new(shared: RedisStore, ttl: Duration) -> Self {
        let inner = Arc::new(Inner {
            client: shared.client.clone(),
            prefix: shared.prefix.clone(),
            sharded: shared.sharded,
            store: shared,
            node: format!("{:016x}", fastrand::u64(..)),
            ttl,
            add: script(include_str!("lua/add.lua")),
            remove: script(include_str!("lua/remove.lua")),
            refresh: script(include_str!("lua/refresh.lua")),
            page: script(include_str!("lua/page.lua")),
            stats: script(include_str!("lua/stats.lua")),
            local: Mutex::new(HashMap::new()),
            unremoved: Mutex::new(Vec::new()),
        });
        let refresher = tokio::spawn(refresh_forever(inner.clone()));
        Self { inner, refresher }
    }
}

impl Inner {
    fn key(&self, channel: &ChannelName, name: &str) -> String {
        format!("{}:{{{channel}}}:{name}", self.prefix)
    }

    /// `KEYS[1..=4]` of every script, and `KEYS[5]`: this node's set.
    fn keys(&self, channel: &ChannelName, own_set: bool) -> Vec<String> {
        let mut keys = vec![
            self.key(channel, "pm"),
            self.key(channel, "po"),
            self.key(channel, "pu"),
            self.key(channel, "pn"),
        ];
        if own_set {
            keys.push(format!("{}:{}", self.key(channel, "pn"), self.node));
        }
        keys
    }

    /// ARGV[1..=4] of every script.
    fn args(&self, channel: &ChannelName) -> Vec<Value> {
        let key_ttl = (self.ttl * 10).as_secs().max(60);
        vec![
            format!("{}:", self.key(channel, "pn")).into(),
            self.store.pubsub_channel(channel).into(),
            (if self.sharded { "1" } else { "0" }).into(),
            i64::try_from(key_ttl).unwrap_or(i64::MAX).into(),
        ]
    }

    fn ttl_ms(&self) -> Value {
        i64::try_from(self.ttl.as_millis())
            .unwrap_or(i64::MAX)
            .into()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, HashMap<Arc<str>, Member>>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unremoved(&self) -> std::sync::MutexGuard<'_, Vec<(ChannelName, Arc<str>)>> {
        self.unremoved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn add(&self, channel: &ChannelName, member: &Member) -> Result<(), BrokerError> {
        let json = serde_json::to_string(member).map_err(|err| BrokerError::Internal {
            context: "encoding a presence member",
            source: Box::new(err),
        })?;
        let mut args = self.args(channel);
        args.extend([
            member.client.to_string().into(),
            json.into(),
            member.user_key().into(),
            self.node.clone().into(),
            self.ttl_ms(),
        ]);
        self.add
            .evalsha_with_reload::<i64, _, _>(&self.client, self.keys(channel, true), args)
            .await
            .map_err(|err| unavailable("adding to presence", err))?;
        Ok(())
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), BrokerError> {
        let mut args = self.args(channel);
        args.push(client.to_owned().into());
        self.remove
            .evalsha_with_reload::<i64, _, _>(&self.client, self.keys(channel, true), args)
            .await
            .map_err(|err| unavailable("removing from presence", err))?;
        Ok(())
    }

    /// Keeps this node's entries in `channel` alive (and sweeps dead nodes'); false when they
    /// are gone and must be added again.
    async fn refresh(&self, channel: &ChannelName) -> Result<bool, BrokerError> {
        let mut args = self.args(channel);
        args.extend([self.node.clone().into(), self.ttl_ms()]);
        let alive: i64 = self
            .refresh
            .evalsha_with_reload(&self.client, self.keys(channel, true), args)
            .await
            .map_err(|err| unavailable("refreshing presence", err))?;
        Ok(alive == 1)
    }

    /// One round: retry failed removals, then refresh every channel with members here.
    async fn refresh_all(&self) {
        let retries = std::mem::take(&mut *self.unremoved());
        for (channel, client) in retries {
            if let Err(err) = self.remove(&channel, &client).await {
                tracing::debug!(%channel, %err, "presence removal failed again");
                self.unremoved().push((channel, client));
            }
        }
        let channels: Vec<ChannelName> = self.local().keys().cloned().collect();
        for channel in channels {
            match self.refresh(&channel).await {
                Ok(true) => {}
                Ok(false) => self.restore(&channel).await,
                Err(err) => tracing::warn!(%channel, %err, "presence refresh failed"),
            }
        }
    }

    /// Adds this node's members of `channel` again (their entries were swept or lost).
    async fn restore(&self, channel: &ChannelName) {
        let members: Vec<Member> = self
            .local()
            .get(channel)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default();
        tracing::info!(%channel, members = members.len(), "presence entries lost; adding them again");
        for member in &members {
            if let Err(err) = self.add(channel, member).await {
                tracing::warn!(%channel, %err, "presence restore failed");
                return;
            }
        }
        // A member that left while this ran may have been added back after its removal.
        for member in members {
            let still_here = self
                .local()
                .get(channel)
                .is_some_and(|members| members.contains_key(&member.client));
            if !still_here {
                self.unremoved().push((channel.clone(), member.client));
            }
        }
    }
}

async fn refresh_forever(inner: Arc<Inner>) {
    let period = inner.ttl / 4;
    loop {
        tokio::time::sleep(period).await;
        inner.refresh_all().await;
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(&self, channel: &ChannelName, member: &Member) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .local()
            .entry(channel.clone())
            .or_default()
            .insert(member.client.clone(), member.clone());
        let added = inner.add(channel, member).await;
        if added.is_err() {
            // It may have been added all the same (a timeout): make sure it goes.
            forget(inner, channel, &member.client);
            inner
                .unremoved()
                .push((channel.clone(), member.client.clone()));
        }
        added
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        forget(inner, channel, client);
        let removed = inner.remove(channel, client).await;
        if removed.is_err() {
            inner.unremoved().push((channel.clone(), client.into()));
        }
        removed
    }

    async fn page(
        &self,
        channel: &ChannelName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        let inner = &self.inner;
        let mut args = inner.args(channel);
        args.extend([
            after.unwrap_or_default().to_owned().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ]);
        let reply: Vec<Value> = inner
            .page
            .evalsha_with_reload(&inner.client, inner.keys(channel, false), args)
            .await
            .map_err(|err| unavailable("reading presence", err))?;
        let mut reply = reply.into_iter();
        let more = reply.next().and_then(|v| v.as_i64()).unwrap_or(0) == 1;
        let last = reply
            .next()
            .and_then(|v| v.into_string())
            .unwrap_or_default();
        let members = reply
            .filter_map(|json| serde_json::from_str(&json.into_string()?).ok())
            .collect();
        Ok(Page {
            members,
            cursor: more.then_some(last),
        })
    }

    async fn stats(&self, channel: &ChannelName) -> Result<Stats, BrokerError> {
        let inner = &self.inner;
        let (clients, users): (u64, u64) = inner
            .stats
            .evalsha_with_reload(
                &inner.client,
                inner.keys(channel, false),
                inner.args(channel),
            )
            .await
            .map_err(|err| unavailable("reading presence stats", err))?;
        Ok(Stats { clients, users })
    }

    async fn close(&self) {
        self.refresher.abort();
    }
}

fn forget(inner: &Inner, channel: &ChannelName, client: &str) {
    let mut local = inner.local();
    if let Some(members) = local.get_mut(channel) {
        members.remove(client);
        if members.is_empty() {
            local.remove(channel);
        }
    }
}
