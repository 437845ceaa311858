//! The sender: the node holding the lease POSTs the queue, signed, in order, retried with
//! back-off (see the module docs of `webhook`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::pusher::{self, Route};
use super::{FIRST_BACKOFF, LifecycleStore, MAX_BACKOFF, MAX_BATCH, POST_TIMEOUT, TICK, Tick};
use crate::broker::BrokerError;
use crate::metrics::metrics;
use crate::protocol::Secret;

/// Where events go and how they are signed.
#[derive(Clone)]
pub struct Destination {
    pub url: reqwest::Url,
    pub secret: Secret,
}

/// Where events go: the app's backend (`--webhook-url`) in Tidings' format, and each Pusher
/// app's events (`--pusher-webhook-url`) in Pusher's. An event no destination takes is
/// dropped as it reaches the head of the queue.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    pub native: Option<Destination>,
    pub pusher: Option<PusherDestination>,
}

impl Destinations {
    pub fn any(&self) -> bool {
        self.native.is_some() || self.pusher.is_some()
    }
}

/// Pusher apps' webhooks: one URL, each POST signed with its app's key and secret.
#[derive(Clone)]
pub struct PusherDestination {
    pub url: reqwest::Url,
    pub apps: Arc<[Arc<crate::pusher::App>]>,
}

impl fmt::Debug for PusherDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PusherDestination")
            .field("url", &self.url.origin().ascii_serialization())
            .field("apps", &self.apps.len())
            .finish()
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("url", &self.url.origin().ascii_serialization())
            .finish_non_exhaustive()
    }
}

/// Sends the queue from the node holding the lease.
pub(super) struct Sender {
    store: Arc<dyn LifecycleStore>,
    /// The latest tick: whether events wait, and whether this node holds the lease.
    ticks: watch::Receiver<Tick>,
    destinations: Destinations,
    client: reqwest::Client,
    backoff: Duration,
    /// No POST before this (the back-off after a failure); rounds go on, renewing the lease.
    next_attempt: Instant,
}

impl Sender {
    pub(super) fn new(
        store: Arc<dyn LifecycleStore>,
        ticks: watch::Receiver<Tick>,
        destinations: Destinations,
        client: reqwest::Client,
    ) -> Self {
        Self {
            store,
            ticks,
            destinations,
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
        let mut events = self.store.peek(MAX_BATCH).await?;
        let Some(first) = events.first() else {
            return Ok(TICK);
        };
        // The run of events at the head that goes to one destination: order holds, and each
        // event is sent to one place once.
        let route = self.route(first);
        let run = events
            .iter()
            .take_while(|event| self.route(event) == route)
            .count();
        events.truncate(run);
        let sent = match route {
            Route::Nowhere => Ok(()),
            Route::Native => self.post(&events).await,
            Route::Pusher(app) => self.post_pusher(app, &events).await,
        };
        match sent {
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

    fn route(&self, event: &str) -> Route {
        let native = self.destinations.native.is_some();
        pusher::route(event, native, self.destinations.pusher.as_ref())
    }

    async fn post(&self, events: &[String]) -> Result<(), String> {
        let Some(destination) = &self.destinations.native else {
            return Ok(());
        };
        let body = format!("{{\"events\":[{}]}}", events.join(","));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(destination.secret.expose().as_bytes(), now, body.as_bytes());
        let request = self
            .client
            .post(destination.url.clone())
            .header("Tidings-Signature", signature);
        self.send(request, body).await
    }

    /// A Pusher app's events, in Pusher's format and signed with its key and secret.
    async fn post_pusher(&self, app: usize, events: &[String]) -> Result<(), String> {
        let Some(destination) = &self.destinations.pusher else {
            return Ok(());
        };
        let Some(app) = destination.apps.get(app) else {
            return Ok(());
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let body = pusher::body(events, now);
        let request = self
            .client
            .post(destination.url.clone())
            .header("X-Pusher-Key", app.key.as_str())
            .header("X-Pusher-Signature", app.secret.sign(&body));
        self.send(request, body).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: String) -> Result<(), String> {
        let started = Instant::now();
        let sent = request
            .timeout(POST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
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
