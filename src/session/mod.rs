//! Session: one client connection — its identity, its subscriptions, and the reader and
//! writer that serve it concurrently.
//!
//! The reader decodes each text frame, asks the [`Node`], and queues the reply in the
//! connection's [`Outbox`]. The writer is the only code that writes to the socket: it drains
//! the outbox in batches (one flush per batch), sends heartbeats, and performs the close. Both
//! run in one task (`join!`), so an idle connection costs one task and two small buffers.
//!
//! ## Heartbeats
//! Every `ping_interval` the writer queues `{"ping":{}}`. Any frame from the client within
//! `pong_timeout` after it (normally `{"op":"pong"}`) proves it alive; otherwise the connection
//! is closed with [`CloseCode::NO_PONG`]. Clients treat silence longer than
//! `ping_interval + pong_timeout` as a dead server.
//!
//! ## Slow consumers
//! A client whose outbox fills (it stopped reading) is closed with
//! [`CloseCode::SLOW_CONSUMER`]; its queue is freed at once, and others are not affected.
//!
//! ## Closing
//! Whoever decides to close (a read error, overflow, shutdown, missing pong) tells the outbox;
//! the writer sends the close frame and the reader waits a bounded time for the peer's answer.
//! On exit the session leaves every channel it joined.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::hub::SubscriberId;
use crate::node::{HistoryError, Node, Recovery, Subscribed};
use crate::outbox::{Closing, Outbox};
use crate::protocol::{
    self, ChannelName, ClientInfo, CloseCode, Command, Connected, Empty, ErrorCode, HistoryOk,
    PublishOk, StreamPosition, SubscribeOk,
};
use crate::transport::{Frame, Inbound, Reader, Writer};

/// Per-connection settings, shared by every session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Bytes a connection may have queued before it is closed as a slow consumer.
    pub max_queue_size: usize,
    /// Channels one connection may subscribe to at once.
    pub max_subscriptions: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// How long one batch may take to reach the socket before the client counts as a slow
    /// consumer (a client that stops reading on a quiet channel never fills its queue).
    pub write_timeout: Duration,
    /// How long a close frame may take to leave, and how long to wait for the peer's reply.
    pub close_timeout: Duration,
}

/// What the client said in the handshake URL.
#[derive(Clone, Debug, Default)]
pub struct Handshake {
    pub name: Option<String>,
    pub token: Option<String>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

const PING: Frame = Frame::from_static(protocol::PING_FRAME);

/// Serves one upgraded connection until it closes.
pub async fn run(
    mut reader: Reader,
    mut writer: Writer,
    node: Node,
    config: Arc<SessionConfig>,
    handshake: Handshake,
    shutdown: CancellationToken,
) {
    let outbox = Outbox::new(config.max_queue_size);
    let alive = AtomicBool::new(true);
    let mut session = Session {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        client: random_id().into(),
        identity: None,
        node,
        outbox: outbox.clone(),
        config: config.clone(),
        subscriptions: HashSet::new(),
    };
    tracing::debug!(client = %session.client, "connection opened");
    if handshake.name.is_some() || handshake.token.is_some() {
        session.establish(None, handshake.name.as_deref());
    }

    let (_, closing) = tokio::join!(
        session.read_loop(&mut reader, &alive),
        write_loop(&mut writer, &outbox, &alive, &config, &shutdown),
    );
    if let Closing::Send { .. } = closing {
        // Give the peer a bounded moment to answer our close frame.
        let _ = tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(inbound)) = reader.next().await {
                if let Inbound::Close(_) = inbound {
                    break;
                }
            }
        })
        .await;
    }
    session.leave_all().await;
    tracing::debug!(client = %session.client, ?closing, "connection closed");
}

struct Session {
    id: SubscriberId,
    client: Arc<str>,
    identity: Option<ClientInfo>,
    node: Node,
    outbox: Outbox,
    config: Arc<SessionConfig>,
    subscriptions: HashSet<ChannelName>,
}

impl Session {
    async fn read_loop(&mut self, reader: &mut Reader, alive: &AtomicBool) {
        let outbox = self.outbox.clone();
        loop {
            let inbound = tokio::select! {
                biased;
                () = outbox.closed() => return,
                inbound = reader.next() => inbound,
            };
            let inbound = match inbound {
                None => {
                    outbox.close(Closing::Gone);
                    return;
                }
                Some(Err(err)) => {
                    tracing::debug!(client = %self.client, %err, "read failed");
                    outbox.close(match err.close_frame() {
                        Some((code, reason)) => Closing::Send { code, reason },
                        None => Closing::Gone,
                    });
                    return;
                }
                Some(Ok(inbound)) => inbound,
            };
            alive.store(true, Ordering::Relaxed);
            match inbound {
                Inbound::Text(text) => self.handle(text.as_str()).await,
                Inbound::Binary(_) => self.reply_error(
                    None,
                    ErrorCode::BinaryFrame,
                    "binary frames are not part of protocol v1; send JSON text frames",
                ),
                Inbound::Control => {}
                Inbound::Close(_) => {
                    outbox.close(Closing::ByPeer);
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        let request = match protocol::decode_request(text) {
            Ok(request) => request,
            Err(err) => return self.reply_error(err.id, err.code, &err.message),
        };
        let id = request.id;
        match request.command {
            Command::Pong => {}
            Command::Connect { name, token: _ } => {
                // The token is accepted now and verified once authentication exists.
                if self.identity.is_some() {
                    return self.reply_error(
                        id,
                        ErrorCode::AlreadyConnected,
                        "connect must be the first command of a connection",
                    );
                }
                self.establish(id, name.as_deref());
            }
            command => {
                if self.identity.is_none() {
                    self.establish(None, None);
                }
                match command {
                    Command::Subscribe { channel, since } => {
                        self.subscribe(id, channel, since).await
                    }
                    Command::History {
                        channel,
                        since,
                        limit,
                    } => self.history(id, channel, since, limit).await,
                    Command::Unsubscribe { channel } => self.unsubscribe(id, channel).await,
                    Command::Publish { channel, data } => {
                        self.publish(id, channel, Arc::from(data)).await
                    }
                    Command::Ping => self.reply_ok(id, &Empty {}),
                    Command::Pong | Command::Connect { .. } => {}
                }
            }
        }
    }

    /// Sets the connection's identity and tells the client: as the reply to `connect` when it
    /// has an id, as a `connected` push otherwise.
    fn establish(&mut self, id: Option<u64>, name: Option<&str>) {
        let user: Arc<str> = name
            .and_then(valid_name)
            .unwrap_or_else(generated_name)
            .into();
        let connected = Connected {
            client: self.client.to_string(),
            user: user.to_string(),
            version: protocol::PROTOCOL_VERSION,
            ping_interval_ms: millis(self.config.ping_interval),
            pong_timeout_ms: millis(self.config.pong_timeout),
        };
        self.identity = Some(ClientInfo {
            client: self.client.clone(),
            user,
        });
        let frame = match id {
            Some(id) => protocol::encode_ok(id, &connected),
            None => protocol::encode_connected(&connected),
        };
        self.outbox.push(Frame::from(frame));
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
    ) {
        if self.subscriptions.contains(&channel) {
            return self.reply_error(
                id,
                ErrorCode::AlreadySubscribed,
                &format!("already subscribed to {channel}"),
            );
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return self.reply_error(
                id,
                ErrorCode::LimitExceeded,
                &format!(
                    "a connection may hold at most {} subscriptions",
                    self.config.max_subscriptions
                ),
            );
        }
        self.outbox.begin_subscription(&channel);
        let subscribed = self
            .node
            .subscribe(&channel, self.id, &self.outbox, since.as_ref())
            .await;
        let Subscribed { position, recovery } = match subscribed {
            Ok(subscribed) => subscribed,
            Err(err) => {
                self.outbox.end_subscription(&channel);
                return self.reply_broker_error(id, &err);
            }
        };
        let (recovered, publications, reason) = match recovery {
            None => (None, None, None),
            Some(Recovery::Recovered(publications)) => (Some(true), Some(publications), None),
            Some(Recovery::Unrecoverable(reason)) => (Some(false), Some(Vec::new()), Some(reason)),
        };
        let frames: Vec<Frame> = match id {
            Some(id) => vec![Frame::from(protocol::encode_ok(
                id,
                &SubscribeOk {
                    channel: channel.to_string(),
                    offset: position.offset,
                    epoch: position.epoch.to_string(),
                    recovered,
                    publications,
                    reason,
                },
            ))],
            // Without a reply to carry them, recovered publications come as pushes and a
            // failed recovery as an error push.
            None => match reason {
                Some(reason) => vec![Frame::from(protocol::encode_error(
                    None,
                    ErrorCode::UnrecoverablePosition,
                    &format!("{channel}: {reason}"),
                ))],
                None => publications
                    .unwrap_or_default()
                    .iter()
                    .map(|p| Frame::from(protocol::encode_publication(p)))
                    .collect(),
            },
        };
        self.outbox
            .complete_subscription(&channel, frames, &position);
        self.subscriptions.insert(channel);
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) {
        match self.node.history(&channel, since.as_ref(), limit).await {
            Ok(history) => self.reply_ok(
                id,
                &HistoryOk {
                    publications: history.publications,
                    offset: history.position.offset,
                    epoch: history.position.epoch.to_string(),
                },
            ),
            Err(HistoryError::Broker(err)) => self.reply_broker_error(id, &err),
            Err(HistoryError::Unrecoverable(reason)) => {
                self.reply_error(id, ErrorCode::UnrecoverablePosition, &reason)
            }
        }
    }

    async fn unsubscribe(&mut self, id: Option<u64>, channel: ChannelName) {
        // Unsubscribing from a channel one is not subscribed to succeeds: the state asked for
        // holds either way, and retries stay harmless.
        if self.subscriptions.remove(&channel) {
            self.node.unsubscribe(&channel, self.id).await;
            self.outbox.end_subscription(&channel);
        }
        self.reply_ok(id, &Empty {});
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        data: Arc<serde_json::value::RawValue>,
    ) {
        let Some(info) = self.identity.clone() else {
            return;
        };
        match self.node.publish(&channel, data, info).await {
            Ok(position) => self.reply_ok(
                id,
                &PublishOk {
                    offset: position.offset,
                },
            ),
            Err(err) => self.reply_broker_error(id, &err),
        }
    }

    async fn leave_all(&mut self) {
        for channel in std::mem::take(&mut self.subscriptions) {
            self.node.unsubscribe(&channel, self.id).await;
        }
    }

    fn reply_ok<T: serde::Serialize>(&self, id: Option<u64>, body: &T) {
        if let Some(id) = id {
            self.outbox.push(Frame::from(protocol::encode_ok(id, body)));
        }
    }

    fn reply_error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.outbox
            .push(Frame::from(protocol::encode_error(id, code, message)));
    }

    fn reply_broker_error(&self, id: Option<u64>, err: &BrokerError) {
        tracing::warn!(client = %self.client, %err, "broker operation failed");
        let code = match err {
            BrokerError::Unavailable(_) => ErrorCode::Unavailable,
            BrokerError::Internal(_) => ErrorCode::Internal,
        };
        self.reply_error(id, code, &err.to_string());
    }
}

/// Drains the outbox to the socket, sends heartbeats, and closes; returns how it closed.
async fn write_loop(
    writer: &mut Writer,
    outbox: &Outbox,
    alive: &AtomicBool,
    config: &SessionConfig,
    shutdown: &CancellationToken,
) -> Closing {
    enum Written {
        Done,
        Failed,
        TimedOut,
        /// Something decided to close while the write was blocked.
        Interrupted,
    }
    let mut batch = Vec::new();
    let mut ping_due = false;
    let mut awaiting_pong = false;
    let mut last_ping = Instant::now();
    let mut deadline = last_ping + config.ping_interval;
    loop {
        let closing = outbox.drain(&mut batch);
        if matches!(closing, Some(Closing::ByPeer | Closing::Gone)) {
            // After the peer's close frame nothing but the library's reply may be sent.
            batch.clear();
        }
        let with_ping = ping_due && closing.is_none();
        if with_ping {
            ping_due = false;
            alive.store(false, Ordering::Relaxed);
            batch.push(PING);
        }
        if !batch.is_empty() {
            // A client that stopped reading blocks the write: bound it, and let overflow,
            // shutdown or another close reason interrupt it.
            let limit = if closing.is_some() {
                config.close_timeout
            } else {
                config.write_timeout
            };
            let write = async {
                for frame in batch.drain(..) {
                    writer.feed(frame).await?;
                }
                writer.flush().await
            };
            let written = tokio::select! {
                result = tokio::time::timeout(limit, write) => match result {
                    Ok(Ok(())) => Written::Done,
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "write failed");
                        Written::Failed
                    }
                    Err(_) => Written::TimedOut,
                },
                () = outbox.closed(), if closing.is_none() => Written::Interrupted,
                () = shutdown.cancelled(), if closing.is_none() => {
                    outbox.close(Closing::Send {
                        code: CloseCode::GOING_AWAY,
                        reason: "server shutting down",
                    });
                    Written::Interrupted
                }
            };
            batch.clear();
            match written {
                Written::Done => {}
                Written::Failed => {
                    outbox.close(Closing::Gone);
                    return Closing::Gone;
                }
                Written::TimedOut if closing.is_some() => return Closing::Gone,
                Written::TimedOut => {
                    outbox.close(Closing::Send {
                        code: CloseCode::SLOW_CONSUMER,
                        reason: "write timed out",
                    });
                    continue;
                }
                Written::Interrupted => continue,
            }
            if with_ping {
                // The pong clock starts when the ping has left, not when it was queued.
                awaiting_pong = true;
                last_ping = Instant::now();
                deadline = last_ping + config.pong_timeout;
            }
            if batch.capacity() > 256 {
                batch = Vec::new();
            }
        }
        if let Some(closing) = closing {
            match &closing {
                Closing::Send { code, reason } => {
                    writer.close(*code, reason, config.close_timeout).await
                }
                Closing::ByPeer => writer.finish(config.close_timeout).await,
                Closing::Gone => {}
            }
            return closing;
        }
        tokio::select! {
            () = outbox.ready() => {}
            () = tokio::time::sleep_until(deadline), if !ping_due => {
                if !awaiting_pong {
                    ping_due = true;
                } else if alive.load(Ordering::Relaxed) {
                    awaiting_pong = false;
                    deadline = (last_ping + config.ping_interval).max(Instant::now());
                } else {
                    outbox.close(Closing::Send { code: CloseCode::NO_PONG, reason: "no pong" });
                }
            }
            () = shutdown.cancelled() => outbox.close(Closing::Send {
                code: CloseCode::GOING_AWAY,
                reason: "server shutting down",
            }),
        }
    }
}

/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// A user name is 1–32 characters of letters, digits, spaces and `_ - .`, trimmed.
fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '_' || c == '-' || c == '.');
    ok.then(|| name.to_owned())
}

fn generated_name() -> String {
    let mut rng = fastrand::Rng::new();
    let suffix: String = (0..6).map(|_| rng.lowercase()).collect();
    format!("guest-{suffix}")
}

fn random_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(valid_name("  alice "), Some("alice".into()));
        assert_eq!(valid_name("Zoë Müller-2.0"), Some("Zoë Müller-2.0".into()));
        assert_eq!(valid_name(""), None);
        assert_eq!(valid_name("<script>"), None);
        assert_eq!(valid_name(&"a".repeat(33)), None);
        assert!(generated_name().starts_with("guest-"));
    }
}
