//! The sender: the node holding the lease POSTs the queue, signed, in order, retried with
//! back-off (see the module docs of `webhook`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::{
    Destination, FIRST_BACKOFF, LifecycleStore, MAX_BACKOFF, MAX_BATCH, POST_TIMEOUT, TICK, Tick,
};
use crate::broker::BrokerError;
use crate::metrics::metrics;

/// Sends the queue from the node holding the lease.
pub(super) struct Sender {
    store: Arc<dyn LifecycleStore>,
    /// The latest tick: whether events wait, and whether this node holds the lease.
    ticks: watch::Receiver<Tick>,
    destination: Destination,
    client: reqwest::Client,
    backoff: Duration,
    /// No POST before this (the back-off after a failure); rounds go on, renewing the lease.
    next_attempt: Instant,
}

impl Sender {
    pub(super) fn new(
        store: Arc<dyn LifecycleStore>,
        ticks: watch::Receiver<Tick>,
        destination: Destination,
        client: reqwest::Client,
    ) -> Self {
        Self {
            store,
            ticks,
            destination,
            client,
            backoff: FIRST_BACKOFF,
            next_attempt: Instant::now(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let wait = match self.round().await {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::debug!(%err, "webhook round failed");
                    TICK
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One round: what is due, then (as the leader) one POST; returns how long to wait.
    async fn round(&mut self) -> Result<Duration, BrokerError> {
        let Tick { queued, lead, .. } = *self.ticks.borrow();
        if queued == 0 || !lead || Instant::now() < self.next_attempt {
            return Ok(TICK);
        }
        let events = self.store.peek(MAX_BATCH).await?;
        if events.is_empty() {
            return Ok(TICK);
        }
        match self.post(&events).await {
            Ok(()) => {
                // Not popped: the lease passed to another node meanwhile, which sends them
                // again (same ids).
                if self.store.pop(events.len()).await? {
                    metrics().webhook.sent.inc_by(events.len() as u64);
                }
                self.backoff = FIRST_BACKOFF;
                // More may be waiting: no pause.
                Ok(if events.len() == MAX_BATCH {
                    Duration::ZERO
                } else {
                    TICK
                })
            }
            Err(err) => {
                // Retried until the ticks give the events up, RETRY_WINDOW after their
                // transitions.
                metrics().webhook.retries.inc();
                tracing::warn!(%err, retry_in = ?self.backoff, "webhook delivery failed; retrying");
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Ok(TICK)
            }
        }
    }

    async fn post(&self, events: &[String]) -> Result<(), String> {
        let body = format!("{{\"events\":[{}]}}", events.join(","));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(
            self.destination.secret.expose().as_bytes(),
            now,
            body.as_bytes(),
        );
        let started = Instant::now();
        let sent = self
            .client
            .post(self.destination.url.clone())
            .timeout(POST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Tidings-Signature", signature)
            .body(body)
            .send()
            .await;
        metrics()
            .webhook
            .duration
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status().as_u16();
                let note = crate::backend::redirect_note(status);
                Err(format!("the receiver answered HTTP {status}{note}"))
            }
            Err(err) if err.is_timeout() => Err(format!("no answer within {POST_TIMEOUT:?}")),
            Err(err) => Err(crate::backend::without_url(&err)),
        }
    }
}

/// The `Tidings-Signature` header of `body` sent at Unix time `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={t},v1={hex}")
}
