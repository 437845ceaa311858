//! The lifecycle store shared by every node through Redis: holdings counted per node, outs
//! debounced, receipts and the event queue, all in one script (`lifecycle.lua`) whose every
//! call is one atomic step. Pending events live in Redis and outlive any node.

use async_trait::async_trait;
use fred::interfaces::ListInterface;
use fred::prelude::{Client, Error as RedisError, Value};
use fred::types::scripts::Script;

use super::{
    ACK_MARK_MARGIN, ALIVE_TTL, Ack, Debounce, Edge, LEASE_TTL, LifecycleStore, QueueBound,
    RECEIPT_COALESCE, RETRY_WINDOW, Receipt, Tick,
};

use crate::broker::BrokerError;
use crate::broker::RedisStore;

/// Due outs and receipts one tick turns into events at most: the script blocks Redis while it
/// runs (about a millisecond per thousand); a tick that leaves more is followed by another at
/// once, so the queue fills as fast as the receiver can be sent it.
const DUE_PER_TICK: i64 = 1000;

/// Lifecycle state in Redis.
pub struct RedisLifecycle {
    client: Client,
    /// `{PREFIX:wh}`: every key shares this hash tag.
    base: String,
    node: String,
    debounce: Debounce,
    bound: QueueBound,
    script: Script,
}

impl std::fmt::Debug for RedisLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLifecycle")
            .field("base", &self.base)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn unavailable(context: &'static str, err: RedisError) -> BrokerError {
    BrokerError::Unavailable {
        context,
        source: Box::new(err),
    }
}

fn millis(duration: std::time::Duration) -> Value {
    Value::from(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

impl RedisLifecycle {
    pub fn new(shared: RedisStore, node: String, debounce: Debounce, bound: QueueBound) -> Self {
        Self {
            client: shared.client,
            base: format!("{{{}:wh}}", shared.prefix),
            node,
            debounce,
            bound,
            script: Script::from_lua(include_str!("lifecycle.lua")),
        }
    }

    async fn call(
        &self,
        context: &'static str,
        op: &str,
        extra: Vec<Value>,
    ) -> Result<Value, BrokerError> {
        let mut args: Vec<Value> = vec![
            op.into(),
            millis(self.debounce.channel),
            millis(self.debounce.member),
            millis(self.debounce.user),
            self.node.clone().into(),
            millis(ALIVE_TTL),
            Value::from(i64::try_from(self.bound.events).unwrap_or(i64::MAX)),
            Value::from(i64::try_from(self.bound.bytes).unwrap_or(i64::MAX)),
        ];
        args.extend(extra);
        self.script
            .evalsha_with_reload(&self.client, vec![self.base.clone()], args)
            .await
            .map_err(|err| unavailable(context, err))
    }
}

#[async_trait]
impl LifecycleStore for RedisLifecycle {
    async fn apply(&self, edges: &[Edge]) -> Result<u64, BrokerError> {
        let args = edges
            .iter()
            .flat_map(|edge| {
                [
                    if edge.enter { "e" } else { "l" }.into(),
                    edge.key.clone().into(),
                ]
            })
            .collect();
        let full = self
            .call("recording lifecycle changes", "apply", args)
            .await?;
        Ok(full.as_u64().unwrap_or(0))
    }

    async fn push(&self, events: &[serde_json::Value]) -> Result<u64, BrokerError> {
        let args = events
            .iter()
            .map(|event| event.to_string().into())
            .collect();
        let full = self.call("queueing webhook events", "push", args).await?;
        Ok(full.as_u64().unwrap_or(0))
    }

    async fn tick(&self) -> Result<Tick, BrokerError> {
        let args = vec![
            Value::from(DUE_PER_TICK),
            millis(RECEIPT_COALESCE),
            millis(LEASE_TTL),
            millis(RETRY_WINDOW),
        ];
        let answer = self
            .call("running due lifecycle events", "tick", args)
            .await?;
        match answer.into_array().as_slice() {
            [queued, lead, fresh, expired, full, more] => Ok(Tick {
                queued: queued.as_u64().unwrap_or(0),
                lead: lead.as_u64() == Some(1),
                fresh: fresh.as_u64() == Some(1),
                expired: expired.as_u64().unwrap_or(0),
                full: full.as_u64().unwrap_or(0),
                more: more.as_u64() == Some(1),
            }),
            other => Err(BrokerError::Internal {
                context: "running due lifecycle events",
                source: format!("unexpected answer {other:?}").into(),
            }),
        }
    }

    async fn track(&self, receipt: &Receipt) -> Result<(), BrokerError> {
        let args = vec![
            receipt.channel.as_str().into(),
            receipt.user.clone().into(),
            receipt.epoch.clone().into(),
            Value::from(i64::try_from(receipt.offset).unwrap_or(i64::MAX)),
            millis(receipt.within),
            millis(RECEIPT_COALESCE),
        ];
        self.call("tracking a receipt", "track", args).await?;
        Ok(())
    }

    async fn ack(&self, ack: &Ack) -> Result<(), BrokerError> {
        let args = vec![
            ack.channel.as_str().into(),
            ack.epoch.clone().into(),
            Value::from(i64::try_from(ack.offset).unwrap_or(i64::MAX)),
            millis(ack.within + ACK_MARK_MARGIN),
        ];
        self.call("recording an ack", "ack", args).await?;
        Ok(())
    }

    async fn peek(&self, max: usize) -> Result<Vec<String>, BrokerError> {
        let last = i64::try_from(max).unwrap_or(i64::MAX) - 1;
        self.client
            .lrange(format!("{}:queue", self.base), 0, last)
            .await
            .map_err(|err| unavailable("reading the webhook queue", err))
    }

    async fn pop(&self, count: usize) -> Result<bool, BrokerError> {
        let args = vec![Value::from(i64::try_from(count).unwrap_or(i64::MAX))];
        let popped = self.call("trimming the webhook queue", "pop", args).await?;
        Ok(popped.as_u64() == Some(1))
    }

    async fn close(&self) {
        if let Err(err) = self
            .call("leaving the lifecycle store", "close", Vec::new())
            .await
        {
            tracing::debug!(%err, "could not leave the lifecycle store");
        }
    }
}
