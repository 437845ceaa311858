//! The node's connections to Redis as an operator (and `/readyz`) sees them. Redis being down
//! is no reason not to start (Compose and Kubernetes start everything at once), so the first
//! connection is waited for only briefly; while Redis cannot be reached a warning naming the
//! URL (never its password) is logged every [`WARN_EVERY`] and `/readyz` gives the reason, in
//! plain words. While the command connection is down, commands are refused at once.
//!
//! Some failures are not an outage but a setting that does not match the Redis it reaches —
//! credentials it refuses, a certificate that is not trusted or that it wants, `rediss://`
//! against a plaintext Redis. Retrying cannot help those: at start they stop the node, as a
//! [`Mismatch`] naming the setting and the likely cause.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use fred::error::ErrorKind;
use fred::interfaces::EventInterface;
use fred::prelude::{ClientLike, Config, Error as RedisError, Value};
use fred::types::config::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::{COMMAND_TIMEOUT, Inner, READY_TIMEOUT, unavailable};
use crate::broker::BrokerError;
use crate::config::redact_url;

/// How often the warning is repeated while Redis cannot be reached.
pub(super) const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a start waits for the first connection: the connection timeout, and the first
/// retry's back-off.
const FIRST_WAIT: Duration = COMMAND_TIMEOUT.saturating_add(Duration::from_millis(500));

/// How long the plaintext probe of a TLS URL's host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection errors of one client, as fred broadcasts them.
pub(super) type Errors = Receiver<(RedisError, Option<Server>)>;

/// The clients' connection events, listened to from before they first connect (the first
/// connection is announced as a reconnect).
pub(super) struct Events {
    pub(super) client_reconnects: Receiver<Server>,
    pub(super) subscriber_reconnects: Receiver<Server>,
    pub(super) client_errors: Errors,
    pub(super) subscriber_errors: Errors,
}

impl Inner {
    /// Waits (briefly) for the first connection; `Ok(false)` when Redis cannot be reached now.
    /// Connected, it subscribes to the control channel and loads the scripts here rather than
    /// leaving it to the reconnect tasks, so that a node that says it is listening can take
    /// publications at once.
    pub(super) async fn open(&self, events: &mut Events) -> Result<bool, BrokerError> {
        let first = self.link.first_connection(
            self,
            &mut events.client_errors,
            &mut events.subscriber_errors,
        );
        let connected = match first.await {
            Ok(connected) => connected,
            Err(mismatch) => {
                let _ = self.subscriber.quit().await;
                let _ = self.client.quit().await;
                return Err(BrokerError::Internal {
                    context: "connecting to Redis",
                    source: Box::new(mismatch),
                });
            }
        };
        if connected {
            if let Err(err) = self.control_subscribe().await {
                tracing::warn!(%err, "subscribing to the control channel failed");
            }
            if let Err(err) = self.load_scripts().await {
                tracing::warn!(%err, "loading the Lua scripts failed");
            }
            // Done: the reconnect tasks need not hear of this connection.
            while events.client_reconnects.try_recv().is_ok() {}
            while events.subscriber_reconnects.try_recv().is_ok() {}
        }
        Ok(connected)
    }

    /// Refuses at once while the command connection is down: a command sent now would wait in
    /// the client's queue until it timed out, and a timed-out publish would be reported as
    /// "may or may not have been stored" though it never left this process.
    pub(super) fn connected(&self, context: &'static str) -> Result<(), BrokerError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable {
                context,
                source: self.link.reason().into(),
            })
        }
    }

    /// Ready when both connections answer a PING in time and the canary's heartbeats come
    /// back. A Redis that is frozen (SIGSTOP, a stalled host) keeps its TCP connections open,
    /// so "connected" alone says nothing; not connected says more than the canary's symptom
    /// of it.
    pub(super) async fn ready(&self) -> Result<(), BrokerError> {
        if !self.client.is_connected() || !self.subscriber.is_connected() {
            return Err(BrokerError::Unavailable {
                context: "checking readiness",
                source: self.link.reason().into(),
            });
        }
        self.canary
            .check()
            .map_err(|cause| BrokerError::Unavailable {
                context: "broker canary",
                source: cause.to_string().into(),
            })?;
        let pings = async {
            self.client.ping::<Value>(None).await?;
            self.subscriber.ping::<Value>(None).await
        };
        match tokio::time::timeout(READY_TIMEOUT, pings).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(unavailable("pinging Redis", err)),
            Err(_) => Err(BrokerError::Unavailable {
                context: "checking readiness",
                source: format!("Redis did not answer a PING within {READY_TIMEOUT:?}").into(),
            }),
        }
    }
}

/// A Redis that answers, but not as the settings expect: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Mismatch {
    /// The setting to change, by its long flag name.
    pub flag: &'static str,
    reason: String,
}

/// What the node knows about its connections to Redis.
pub(super) struct Link {
    /// The URL as messages show it: no password.
    shown: String,
    tls: bool,
    /// The first host of the URL: where the plaintext probe knocks.
    first_host: Option<(String, u16)>,
    /// Why the last attempt to connect failed, in plain words.
    failure: Mutex<Option<String>>,
}

/// Why a connection attempt failed, and whether retrying can help.
enum Failure {
    Down(String),
    Mismatch(Mismatch),
}

impl Link {
    pub(super) fn new(url: &str, config: &Config) -> Self {
        let first_host = config
            .server
            .hosts()
            .first()
            .map(|server| (server.host.to_string(), server.port));
        Self {
            shown: redact_url(url.trim()),
            tls: config.tls.is_some(),
            first_host,
            failure: Mutex::new(None),
        }
    }

    /// Why the node is not connected, for `/readyz`.
    pub(super) fn reason(&self) -> String {
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match &*failure {
            Some(failure) => format!("not connected to Redis at {}: {failure}", self.shown),
            None => format!("not connected to Redis at {} (connecting)", self.shown),
        }
    }

    fn record(&self, failure: &str) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure.to_owned());
    }

    /// Waits (briefly) for the first connection of both clients. `Ok(false)`: Redis cannot be
    /// reached now, which has been logged; the node starts anyway.
    pub(super) async fn first_connection(
        &self,
        inner: &Inner,
        client_errors: &mut Errors,
        subscriber_errors: &mut Errors,
    ) -> Result<bool, Mismatch> {
        let attempts = async {
            attempt(&inner.client, client_errors).await?;
            attempt(&inner.subscriber, subscriber_errors).await
        };
        let failure = match tokio::time::timeout(FIRST_WAIT, attempts).await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(err)) => self.classify(&err).await,
            Err(_) => Failure::Down(format!("no answer within {FIRST_WAIT:?}")),
        };
        match failure {
            Failure::Mismatch(mismatch) => Err(mismatch),
            Failure::Down(reason) => {
                self.record(&reason);
                tracing::warn!(
                    "cannot reach Redis at {}: {reason}; starting anyway, not ready until it \
                     answers (retrying; this warning repeats every {WARN_EVERY:?})",
                    self.shown
                );
                Ok(false)
            }
        }
    }

    /// Plain words for a failed connection attempt, and whether it is a mismatch.
    async fn classify(&self, err: &RedisError) -> Failure {
        let details = err.details();
        let mismatch = |flag, reason: String| Failure::Mismatch(Mismatch { flag, reason });
        match err.kind() {
            ErrorKind::Auth => {
                return mismatch(
                    "redis-url",
                    format!(
                        "Redis at {} refused the credentials of --redis-url: {details}",
                        self.shown
                    ),
                );
            }
            ErrorKind::Config | ErrorKind::Url => {
                return mismatch("redis-url", format!("{}: {details}", self.shown));
            }
            _ => {}
        }
        let plain = plain_words(err);
        if self.tls {
            if let Some(cause) = tls_cause(details) {
                return mismatch(
                    cause.0,
                    format!(
                        "TLS with Redis at {} failed: {plain}: {}",
                        self.shown, cause.1
                    ),
                );
            }
            if self.speaks_plaintext().await {
                return mismatch(
                    "redis-url",
                    format!(
                        "{} asks for TLS (rediss), but the server answers plaintext Redis ({plain}): \
                         use redis://, or the port of Redis's tls-port",
                        self.shown
                    ),
                );
            }
        }
        Failure::Down(plain)
    }

    /// Whether the URL's first host answers a plaintext `PING` as Redis does: then a TLS URL
    /// points at a port without TLS, the likeliest reason for a handshake that never ends.
    async fn speaks_plaintext(&self) -> bool {
        let Some((host, port)) = &self.first_host else {
            return false;
        };
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 1];
            stream.read_exact(&mut reply).await?;
            // `+PONG`, or `-NOAUTH …`: RESP either way. A TLS server answers an alert (0x15).
            Ok::<_, std::io::Error>(matches!(reply[0], b'+' | b'-'))
        };
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Ok(true))
        )
    }
}

/// The next connection of `client`, or the error of its next failed attempt.
async fn attempt<C: ClientLike>(client: &C, errors: &mut Errors) -> Result<(), RedisError> {
    tokio::select! {
        connected = client.wait_for_connect() => connected,
        error = next_error(errors) => Err(error),
    }
}

async fn next_error(errors: &mut Errors) -> RedisError {
    loop {
        match errors.recv().await {
            Ok((err, _)) => return err,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// A failure of the TLS handshake that names its cause, and the setting to look at.
fn tls_cause(details: &str) -> Option<(&'static str, &'static str)> {
    if details.contains("CertificateRequired") || details.contains("certificate required") {
        return Some((
            "redis-tls-cert",
            "Redis wants a client certificate: give --redis-tls-cert and --redis-tls-key",
        ));
    }
    if details.contains("InvalidCertificate") || details.contains("BadCertificate") {
        return Some((
            "redis-tls-ca",
            "Redis's certificate is not trusted, or does not name the URL's host: check \
             --redis-tls-ca and the host in --redis-url",
        ));
    }
    None
}

/// A connection error in words, not Rust's debug text: fred shows an I/O error as its `Debug`
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`).
pub(super) fn plain_words(err: &RedisError) -> String {
    let details = err.details();
    match err.kind() {
        ErrorKind::Timeout => format!("no answer within {COMMAND_TIMEOUT:?}"),
        ErrorKind::IO => plain_io(details),
        _ => details.trim_end_matches('.').to_owned(),
    }
}

fn plain_io(details: &str) -> String {
    if let Some((_, message)) = details.split_once("message: \"") {
        return message.split('"').next().unwrap_or(message).to_lowercase();
    }
    if let Some((_, error)) = details.split_once("error: ") {
        return error.trim_end_matches(['}', ' ']).to_owned();
    }
    match details
        .strip_prefix("Kind(")
        .and_then(|k| k.strip_suffix(')'))
    {
        Some("UnexpectedEof") => "the connection closed before Redis answered".into(),
        Some(kind) => kind.to_owned(),
        None => details.to_owned(),
    }
}

/// Logs a warning naming the URL every [`WARN_EVERY`] while either connection is down, and
/// once when both are back; keeps the reason `/readyz` gives current.
pub(super) async fn watch(
    inner: std::sync::Arc<Inner>,
    mut client_errors: Errors,
    mut subscriber_errors: Errors,
    mut connected: bool,
) {
    let link = &inner.link;
    let mut client_reconnects = inner.client.reconnect_rx();
    let mut subscriber_reconnects = inner.subscriber.reconnect_rx();
    let start = tokio::time::Instant::now() + WARN_EVERY;
    let mut ticker = tokio::time::interval_at(start, WARN_EVERY);
    loop {
        let due = tokio::select! {
            err = next_error(&mut client_errors) => {
                let failure = match link.classify(&err).await {
                    Failure::Down(reason) => reason,
                    Failure::Mismatch(mismatch) => mismatch.reason,
                };
                link.record(&failure);
                false
            }
            err = next_error(&mut subscriber_errors) => {
                link.record(&plain_words(&err));
                false
            }
            Ok(_) = client_reconnects.recv() => {
                // Announced before the client counts itself connected.
                let _ = tokio::time::timeout(FIRST_WAIT, inner.client.wait_for_connect()).await;
                false
            }
            Ok(_) = subscriber_reconnects.recv() => {
                let connecting = inner.subscriber.wait_for_connect();
                let _ = tokio::time::timeout(FIRST_WAIT, connecting).await;
                false
            }
            _ = ticker.tick() => true,
        };
        let up = inner.client.is_connected() && inner.subscriber.is_connected();
        if up && !connected {
            tracing::info!("connected to Redis at {}", link.shown);
            *link.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        connected = up;
        if due && !up {
            tracing::warn!("{}; not ready, retrying", link.reason());
        }
    }
}
