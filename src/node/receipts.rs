//! Delivery receipts, as the node sees them: publications to personal channels of a
//! `receipts=WITHIN` namespace wait for an `ack` from any connection of their user, or the
//! backend hears `undelivered` (`crate::webhook`). And the lifecycle's other occurrences: a
//! publication the webhook asked to hear of, a cache miss.

use super::{Node, NodeError};
use crate::protocol::{ChannelName, StreamPosition};
use crate::webhook::{Ack, Receipt};

impl Node {
    /// A publication the webhook hears of (a Pusher client event): `client_event`.
    pub fn published_for_webhook(&self, channel: &ChannelName, data: &serde_json::value::RawValue) {
        if let Some(lifecycle) = &self.0.lifecycle {
            lifecycle.occurred(serde_json::json!({
                "type": "client_event",
                "channel": channel,
                "data": data.get(),
            }));
        }
    }

    /// A subscriber asked for the channel's latest publication and there was none:
    /// `cache_miss`.
    pub fn missed_latest(&self, channel: &ChannelName) {
        if let Some(lifecycle) = &self.0.lifecycle {
            lifecycle.occurred(serde_json::json!({ "type": "cache_miss", "channel": channel }));
        }
    }

    /// Whether publications to `channel` wait for receipts.
    pub fn tracks_receipts(&self, channel: &ChannelName) -> bool {
        self.0.lifecycle.is_some()
            && self
                .0
                .namespaces
                .get(channel.namespace())
                .receipts
                .is_some()
    }

    /// On a `receipts=WITHIN` namespace, the publication now waits for its user's `ack`.
    pub(super) async fn track_receipt(&self, channel: &ChannelName, position: &StreamPosition) {
        let (Some(lifecycle), Some(within)) = (
            &self.0.lifecycle,
            self.0.namespaces.get(channel.namespace()).receipts,
        ) else {
            return;
        };
        let user = channel
            .as_str()
            .split_once(':')
            .map_or("", |(_, user)| user);
        let receipt = Receipt {
            channel: channel.clone(),
            user: user.to_owned(),
            epoch: position.epoch.to_string(),
            offset: position.offset,
            within,
        };
        if let Err(err) = lifecycle.track(&receipt).await {
            tracing::warn!(%channel, %err, "a publication's receipt could not be tracked");
        }
    }

    /// A connection processed `channel` (in `epoch`) up to `offset`: its user got those
    /// publications.
    pub async fn ack(
        &self,
        channel: &ChannelName,
        epoch: &str,
        offset: u64,
    ) -> Result<(), NodeError> {
        let within = self.0.namespaces.get(channel.namespace()).receipts;
        let (Some(lifecycle), Some(within)) = (&self.0.lifecycle, within) else {
            return Ok(());
        };
        let ack = Ack {
            channel: channel.clone(),
            epoch: epoch.to_owned(),
            offset,
            within,
        };
        Ok(lifecycle.ack(&ack).await?)
    }
}
