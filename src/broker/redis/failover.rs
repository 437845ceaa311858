//! What a failover of the Redis primary can do to a channel, and how Tidings keeps it from
//! going unnoticed.
//!
//! Redis replicates asynchronously: a primary that acknowledged a publication (and published
//! it to the nodes) may be replaced by a replica that never received it. The new primary then
//! assigns the same offsets again, to other publications — which subscribers that saw the lost
//! ones would drop as duplicates, a silent loss. Two defences:
//! - `--redis-replica-acks N` makes a publish wait (`WAIT`) until N replicas hold it, so an
//!   acknowledged publication survives the failover; one not confirmed in time is reported as
//!   [`Indeterminate`](BrokerError::Indeterminate).
//! - Every node watches each channel's offsets on pub/sub: an offset at or below one it already
//!   saw in the same epoch means the history went back. The node then starts a new epoch for the
//!   channel (once, whichever node is first) and closes its subscribers, who are told plainly
//!   that the gap cannot be recovered instead of silently missing what was published twice
//!   under one offset.

use fred::prelude::{ClientLike, Value};
use fred::types::scripts::Script;

use super::{COMMAND_TIMEOUT, Inner, unavailable};
use crate::broker::{BrokerError, new_epoch};
use crate::protocol::{ChannelName, StreamPosition};

/// Starts a new epoch if the channel is still in `epoch`, dropping its history (it mixes two
/// timelines).
const NEW_EPOCH_LUA: &str = r"
if redis.call('hget', KEYS[1], 'e') == ARGV[1] then
  redis.call('hset', KEYS[1], 'e', ARGV[2])
  redis.call('del', KEYS[2])
  return 1
end
return 0
";

impl Inner {
    /// With `replica_acks`, waits (`WAIT`, on the connection that wrote) until that many
    /// replicas hold every write so far. Fewer in time: the publication is stored on the
    /// primary but a failover could lose it, so its publisher must not take it as safe.
    pub(super) async fn wait_for_replicas(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        use fred::types::{ClusterHash, CustomCommand};
        if self.replica_acks == 0 {
            return Ok(());
        }
        let slot = fred::util::redis_keyslot(self.pubsub_channel(channel).as_bytes());
        let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), true);
        let timeout = COMMAND_TIMEOUT / 2;
        let args: Vec<Value> = vec![
            i64::from(self.replica_acks).into(),
            i64::try_from(timeout.as_millis()).unwrap_or(1000).into(),
        ];
        let acked: i64 =
            self.client
                .custom(wait, args)
                .await
                .map_err(|err| BrokerError::Indeterminate {
                    context: "waiting for Redis replicas",
                    source: Box::new(err),
                })?;
        if acked < i64::from(self.replica_acks) {
            return Err(BrokerError::Indeterminate {
                context: "waiting for Redis replicas",
                source: format!(
                    "stored on the primary but confirmed by {acked} of {} replicas within                      {timeout:?}: a failover could lose it",
                    self.replica_acks
                )
                .into(),
            });
        }
        Ok(())
    }
}

/// The history of `channel` went back in `epoch` (a failover lost publications): moves the
/// channel to a new epoch, then has every local subscriber recover, which tells them plainly.
pub(super) async fn rewound(inner: &Inner, channel: &ChannelName, epoch: &str) {
    tracing::warn!(
        %channel,
        epoch,
        "channel offsets went back (a Redis failover lost publications): starting a new epoch"
    );
    let script = Script::from_lua(NEW_EPOCH_LUA);
    let args: Vec<Value> = vec![epoch.into(), new_epoch().to_string().into()];
    let started: Result<i64, _> = script
        .evalsha_with_reload(&inner.client, inner.keys(channel), args)
        .await;
    if let Err(err) = started {
        let err = unavailable("starting a new epoch", err);
        tracing::warn!(%channel, %err, "could not start a new epoch");
    }
    // Subscribers still in the old epoch are closed to recover (and told they cannot); those
    // that already moved to the new one (another node was first) stay.
    let position = match inner.read(channel, false, None).await {
        Ok((position, ..)) => position,
        Err(_) => StreamPosition {
            offset: u64::MAX,
            epoch: "".into(),
        },
    };
    inner.deliver.reconcile(channel, &position);
}
