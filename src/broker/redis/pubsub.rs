//! The Redis broker's receiving side: one task pumps pub/sub messages to the node in the order
//! Redis sent them; after a reconnect the node's channels are subscribed again and reconciled
//! with their positions, so that subscribers who missed publications recover them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::interfaces::EventInterface;
use fred::prelude::{ClientLike, Value};
use fred::types::config::Options;
use fred::types::{ClusterHash, Message};
use fred::util::redis_keyslot;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::{Inner, MAINTENANCE_PERIOD, unavailable};
use crate::broker::BrokerError;
use crate::metrics::metrics;
use crate::protocol::{ChannelName, StreamPosition};

/// The channel, epoch and last offset seen on each pub/sub channel, so that a burst of
/// messages shares one `ChannelName` and one epoch instead of allocating both per message, and
/// an offset seen twice in one epoch is noticed (see `failover`).
#[derive(Default)]
struct Interned {
    by_pubsub: HashMap<Box<str>, (ChannelName, Arc<str>, u64)>,
}

impl Interned {
    /// Bounded by the channels in use: once it holds far more names than the node subscribes
    /// to, it starts over.
    fn lookup(
        &mut self,
        inner: &Inner,
        pubsub: &str,
        epoch: &str,
    ) -> Option<(ChannelName, Arc<str>)> {
        if let Some((channel, interned, last)) = self.by_pubsub.get_mut(pubsub) {
            if **interned != *epoch {
                *interned = epoch.into();
                *last = 0;
            }
            return Some((channel.clone(), interned.clone()));
        }
        let channel = inner.channel_of(pubsub)?;
        if self.by_pubsub.len() > 2 * inner.subscribed().len() + 64 {
            self.by_pubsub.clear();
        }
        let epoch: Arc<str> = epoch.into();
        self.by_pubsub
            .insert(pubsub.into(), (channel.clone(), epoch.clone(), 0));
        Some((channel, epoch))
    }

    /// Records `offset` as the last seen on `pubsub` (after [`Self::lookup`]); false when it is
    /// not past the previous one: the channel's history went back.
    fn advance(&mut self, pubsub: &str, offset: u64) -> bool {
        match self.by_pubsub.get_mut(pubsub) {
            Some((_, _, last)) => std::mem::replace(last, offset) < offset,
            None => true,
        }
    }
}

/// Delivers every pub/sub message to the node, in the order Redis sent them, and carries out
/// reconciliations in that same order (see [`reconcile`]).
pub(super) async fn pump_messages(
    inner: Arc<Inner>,
    mut reconciliations: mpsc::UnboundedReceiver<(ChannelName, StreamPosition)>,
) {
    let mut messages = inner.subscriber.message_rx();
    let mut interned = Interned::default();
    loop {
        let message = tokio::select! {
            biased;
            message = messages.recv() => message,
            Some((channel, position)) = reconciliations.recv() => {
                // Everything Redis sent before the barrier is buffered by now: deliver it
                // first, so only publications this node truly missed count as missed.
                loop {
                    match messages.try_recv() {
                        Ok(message) if *message.channel == *inner.canary_channel => {}
                        Ok(message) => deliver_message(&inner, &mut interned, &message),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                inner.deliver.reconcile(&channel, &position);
                continue;
            }
        };
        match message {
            Ok(message) if *message.channel == *inner.canary_channel => {
                if let Ok(raw) = message.value.convert::<Bytes>() {
                    inner.canary.arrived(&inner.node_id, &raw, messages.len());
                }
            }
            Ok(message) => deliver_message(&inner, &mut interned, &message),
            Err(RecvError::Lagged(missed)) => {
                // Messages were dropped before we read them: the gaps they leave are caught
                // per subscriber, and reconciling catches the ones at the end of a burst.
                tracing::warn!(missed, "Redis pub/sub buffer overflowed; reconciling");
                let inner = inner.clone();
                tokio::spawn(async move { reconcile_all(&inner).await });
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn deliver_message(inner: &Arc<Inner>, interned: &mut Interned, message: &Message) {
    let Ok(raw) = message.value.clone().convert::<Bytes>() else {
        return;
    };
    if inner.is_control(&message.channel) {
        inner.deliver.control(&raw);
        return;
    }
    if let Some(event) = raw.strip_prefix(&[super::EVENT_MARKER]) {
        if let Some(channel) = inner.channel_of(&message.channel) {
            inner.deliver.event(&channel, event);
        }
        return;
    }
    let Some((epoch, entry)) = std::str::from_utf8(&raw)
        .ok()
        .and_then(|text| text.split_once(':'))
    else {
        tracing::warn!(channel = %message.channel, "undecodable pub/sub message");
        return;
    };
    let Some((channel, epoch)) = interned.lookup(inner, &message.channel, epoch) else {
        return;
    };
    let Some(publication) = inner.decode(&channel, &epoch, entry.as_bytes()) else {
        tracing::warn!(%channel, "undecodable pub/sub message");
        return;
    };
    // Delivered all the same: subscribers that saw the offset drop it, those that did not may
    // use it, and both are closed to recover once the channel is in a new epoch.
    inner.deliver.deliver(&publication);
    if !interned.advance(&message.channel, publication.offset) {
        let inner = inner.clone();
        tokio::spawn(async move { super::failover::rewound(&inner, &channel, &epoch).await });
    }
}

/// After every reconnect of the subscriber: subscribe again, then reconcile. `connected`:
/// whether the subscriber had connected before (else the first connection is no reconnect).
pub(super) async fn restore_after_reconnects(
    inner: Arc<Inner>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    mut connected: bool,
) {
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                // Several nodes of a cluster may report at once: one pass serves them all.
                while reconnects.try_recv().is_ok() {}
                if connected {
                    tracing::info!(%server, "Redis subscriber reconnected; restoring subscriptions");
                    metrics().broker.reconnects.inc();
                }
                connected = true;
                restore(&inner).await;
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Subscribes again to every channel this node needs, then reconciles them.
async fn restore(inner: &Inner) {
    if let Err(err) = inner.control_subscribe().await {
        tracing::warn!(%err, "resubscribing to the control channel failed");
    }
    let channels: Vec<ChannelName> = inner.subscribed().iter().cloned().collect();
    for channel in &channels {
        if let Err(err) = inner.redis_subscribe(channel).await {
            // Until it succeeds this node hears nothing of the channel; closing its
            // subscribers makes them reconnect (perhaps elsewhere) and recover.
            tracing::warn!(%channel, %err, "resubscribing failed");
            inner.deliver.reconcile(
                channel,
                &StreamPosition {
                    offset: u64::MAX,
                    epoch: "".into(),
                },
            );
        }
    }
    reconcile_all_or_recover(inner).await;
}

/// Periodically keeps subscribed channels' positions from expiring while clients hold them,
/// and in cluster mode subscribes again (a slot that moved to another shard silently drops
/// its sharded subscriptions) and reconciles.
pub(super) async fn maintain(inner: Arc<Inner>) {
    let period = (inner.retention.position_ttl / 4).min(MAINTENANCE_PERIOD);
    loop {
        tokio::time::sleep(period).await;
        if inner.sharded {
            restore(&inner).await;
        } else {
            reconcile_all(&inner).await;
        }
    }
}

/// Compares every subscribed channel's local delivery with its position in Redis.
async fn reconcile_all(inner: &Inner) {
    let channels: Vec<ChannelName> = inner.subscribed().iter().cloned().collect();
    for channel in channels {
        if let Err(err) = reconcile(inner, &channel).await {
            tracing::warn!(%channel, %err, "reconciling failed");
        }
    }
}

/// [`reconcile_all`] after a reconnect, when it must not fail: the command connection may come
/// back a moment after the subscriber's, so failures are retried for a few seconds; a channel
/// still unchecked then has its subscribers closed to recover from history, rather than left
/// with a gap nobody noticed.
async fn reconcile_all_or_recover(inner: &Inner) {
    let mut pending: Vec<ChannelName> = inner.subscribed().iter().cloned().collect();
    let mut wait = Duration::from_millis(100);
    loop {
        let mut failed = Vec::new();
        for channel in pending {
            if !inner.subscribed().contains(&channel) {
                continue;
            }
            if let Err(err) = reconcile(inner, &channel).await {
                failed.push((channel, err));
            }
        }
        if failed.is_empty() {
            return;
        }
        if wait > RECONCILE_RETRIES {
            for (channel, err) in failed {
                tracing::warn!(%channel, %err, "reconciling failed; its subscribers recover");
                let unknown = StreamPosition {
                    offset: u64::MAX,
                    epoch: "".into(),
                };
                inner.deliver.reconcile(&channel, &unknown);
            }
            return;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        pending = failed.into_iter().map(|(channel, _)| channel).collect();
    }
}

/// The longest pause between attempts to reconcile after a reconnect (0.1 s doubling: about
/// six seconds in all).
const RECONCILE_RETRIES: Duration = Duration::from_secs(3);

/// Reads the channel's position (which also keeps it from expiring), then a PING on the
/// subscriber connection as a barrier: its answer comes after every message Redis published
/// before the read. The pump then delivers what it buffered before comparing.
async fn reconcile(inner: &Inner, channel: &ChannelName) -> Result<(), BrokerError> {
    let (position, ..) = inner.read(channel, false, None).await?;
    let barrier = Options {
        cluster_hash: Some(ClusterHash::Custom(redis_keyslot(
            inner.pubsub_channel(channel).as_bytes(),
        ))),
        ..Default::default()
    };
    inner
        .subscriber
        .with_options(&barrier)
        .ping::<Value>(None)
        .await
        .map_err(|err| unavailable("pinging the subscriber", err))?;
    let _ = inner.reconciliations.send((channel.clone(), position));
    Ok(())
}

/// A restarted Redis has forgotten the scripts. `EVALSHA` would then fail with `NOSCRIPT` and
/// be retried after a `SCRIPT LOAD` — behind publishes of the same connection sent meanwhile,
/// storing them out of the order sent. Loading the scripts as soon as the connection is back
/// leaves that only to the publishes already in flight at that moment.
pub(super) async fn reload_scripts_after_reconnects(
    inner: Arc<Inner>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    loop {
        match reconnects.recv().await {
            Ok(_) => {
                if let Err(err) = inner.load_scripts().await {
                    tracing::warn!(%err, "loading the Lua scripts after a reconnect failed");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
