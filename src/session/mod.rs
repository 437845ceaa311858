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
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Denied, Identity, Verifier, millis_until};
use crate::broker::{BrokerError, Control};
use crate::hub::SubscriberId;
use crate::limits::{Limiter, Rate, Ticket, Verdict};
use crate::node::{HistoryError, Node, Recovery, Subscribed};
use crate::outbox::{Closing, Outbox};
use crate::protocol::{
    self, ChannelName, ClientInfo, CloseCode, Command, Connected, Empty, ErrorCode, HistoryOk,
    PublishOk, Refreshed, Secret, StreamPosition, SubscribeOk,
};
use crate::transport::{Frame, Inbound, Reader, Writer};

mod writer;

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
    pub publish_rate: Rate,
    pub command_rate: Rate,
    /// How long a connection that must authenticate has to send `connect`.
    pub handshake_timeout: Duration,
    /// Close connections with no subscription that send no command for this long.
    pub idle_timeout: Option<Duration>,
}

/// How connections prove who they are.
#[derive(Debug)]
pub struct Gate {
    /// `None`: no token key is configured, and tokens are refused.
    pub verifier: Option<Verifier>,
    pub allow_anonymous: bool,
}

impl Gate {
    fn verify(&self, token: &str) -> Result<crate::auth::ConnectionClaims, AuthError> {
        self.verifier
            .as_ref()
            .ok_or(AuthError::NoKeys)?
            .connection(token)
    }
}

/// What the client sent with the WebSocket handshake, and its place under the caps.
#[derive(Debug)]
pub struct Handshake {
    pub name: Option<String>,
    /// From the `token` query parameter or an `Authorization: Bearer` header.
    pub token: Option<Secret>,
    pub ticket: Ticket,
}

/// With the `fault-injection` feature (test builds only), this frame panics its session.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = r#"{"op":"fault-injection:panic"}"#;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

const PING: Frame = Frame::from_static(protocol::PING_FRAME);

/// "No deadline" in [`Clocks`].
const NEVER: u64 = u64::MAX;
const DAY_MS: u64 = 86_400_000;

/// Deadlines the reader sets and the writer enforces, in milliseconds since the session
/// started ([`NEVER`] when unset).
#[derive(Debug)]
struct Clocks {
    start: Instant,
    /// When the token expires.
    expires: AtomicU64,
    /// Since when the connection has been idle (no subscription, no command).
    idle_since: AtomicU64,
    /// By when the connection must have authenticated.
    identify_by: AtomicU64,
}

impl Clocks {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            expires: AtomicU64::new(NEVER),
            idle_since: AtomicU64::new(0),
            identify_by: AtomicU64::new(NEVER),
        }
    }

    fn now(&self) -> u64 {
        self.millis(Instant::now())
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    fn set(&self, deadline: &AtomicU64, millis: u64) {
        deadline.store(millis, Ordering::Relaxed);
    }

    /// The idle deadline, if the connection is idle and idling is limited.
    fn idle_deadline(&self, config: &SessionConfig) -> u64 {
        match (self.idle_since.load(Ordering::Relaxed), config.idle_timeout) {
            (NEVER, _) | (_, None) => NEVER,
            (since, Some(timeout)) => since.saturating_add(millis(timeout)),
        }
    }

    /// The earliest deadline, but no more than a day away: a day is as good as never (the
    /// ping deadline comes much sooner anyway), and a token may expire in the year 9999.
    fn next_deadline(&self, config: &SessionConfig) -> Instant {
        let earliest = self
            .expires
            .load(Ordering::Relaxed)
            .min(self.identify_by.load(Ordering::Relaxed))
            .min(self.idle_deadline(config));
        self.at(earliest.min(self.now().saturating_add(DAY_MS)))
    }

    /// The close owed to a deadline that has passed at `now`.
    fn expired(&self, now: Instant, config: &SessionConfig) -> Option<Closing> {
        let now = self.millis(now);
        if self.identify_by.load(Ordering::Relaxed) <= now {
            return Some(Closing::Send {
                code: CloseCode::POLICY_VIOLATION,
                reason: "authentication required: no connect with a token in time".into(),
            });
        }
        if self.expires.load(Ordering::Relaxed) <= now {
            return Some(Closing::Send {
                code: CloseCode::TOKEN_EXPIRED,
                reason: "token expired".into(),
            });
        }
        if self.idle_deadline(config) <= now {
            return Some(Closing::Send {
                code: CloseCode::IDLE,
                reason: "idle: no subscription and no command".into(),
            });
        }
        None
    }
}

/// Everything a session starts from.
#[derive(Debug)]
pub struct Connection {
    pub reader: Reader,
    pub writer: Writer,
    pub node: Node,
    pub config: Arc<SessionConfig>,
    pub gate: Arc<Gate>,
    pub handshake: Handshake,
    pub shutdown: CancellationToken,
}

tokio::task_local! {
    /// The client id of the session being polled, for the panic hook to name.
    static CLIENT: Arc<str>;
}

/// The client id of the session whose code is running on this thread, if any.
pub fn current_client() -> Option<Arc<str>> {
    CLIENT.try_with(Arc::clone).ok()
}

/// Serves one upgraded connection until it closes.
///
/// Takes its start boxed: an async fn keeps its arguments and the locals they move into side
/// by side, and every byte of this future is paid by every idle connection.
///
/// A panic inside the session is caught here: the panic hook has logged it (naming the
/// client), the session's `Drop` has released its subscriptions and registrations, and the
/// client is told 1011 so that it reconnects. Other sessions never notice.
pub async fn run(connection: Box<Connection>) {
    let Connection {
        mut reader,
        mut writer,
        node,
        config,
        gate,
        handshake,
        shutdown,
    } = *connection;
    let client: Arc<str> = random_id().into();
    let close_timeout = config.close_timeout;
    let parts = Parts {
        node,
        config,
        gate,
        handshake,
        shutdown,
    };
    let serving = serve(&mut reader, &mut writer, client.clone(), parts);
    let served = AssertUnwindSafe(CLIENT.scope(client, serving))
        .catch_unwind()
        .await;
    if served.is_err() {
        writer
            .close(CloseCode::INTERNAL_ERROR, "internal error", close_timeout)
            .await;
    }
}

/// What a session starts from besides its socket.
struct Parts {
    node: Node,
    config: Arc<SessionConfig>,
    gate: Arc<Gate>,
    handshake: Handshake,
    shutdown: CancellationToken,
}

async fn serve(reader: &mut Reader, writer: &mut Writer, client: Arc<str>, parts: Parts) {
    let Parts {
        node,
        config,
        gate,
        handshake,
        shutdown,
    } = parts;
    let outbox = Outbox::new(config.max_queue_size);
    let alive = AtomicBool::new(true);
    let clocks = Clocks::new();
    let mut session = Session {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        client,
        identity: None,
        node,
        outbox: outbox.clone(),
        config: config.clone(),
        gate,
        subscriptions: HashSet::new(),
        limiter: Limiter::new(config.command_rate, config.publish_rate, clocks.start),
        ticket: handshake.ticket,
        clocks: &clocks,
    };
    tracing::debug!(client = %session.client, "connection opened");
    match (&handshake.token, &handshake.name) {
        (Some(token), _) => session.connect_with_token(None, token.expose()),
        (None, Some(name)) if session.gate.allow_anonymous => {
            session.establish_anonymous(None, Some(name))
        }
        _ if !session.gate.allow_anonymous => {
            let by = clocks.millis(clocks.start + config.handshake_timeout);
            clocks.set(&clocks.identify_by, by);
        }
        _ => {}
    }

    let (_, closing) = tokio::join!(
        session.read_loop(reader, &alive),
        writer::write_loop(writer, &outbox, &alive, &clocks, &config, &shutdown),
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

struct Session<'a> {
    id: SubscriberId,
    client: Arc<str>,
    identity: Option<Identity>,
    node: Node,
    outbox: Outbox,
    config: Arc<SessionConfig>,
    gate: Arc<Gate>,
    subscriptions: HashSet<ChannelName>,
    limiter: Limiter,
    ticket: Ticket,
    clocks: &'a Clocks,
}

impl Session<'_> {
    async fn read_loop(&mut self, reader: &mut Reader, alive: &AtomicBool) {
        let outbox = self.outbox.clone();
        loop {
            let inbound = tokio::select! {
                biased;
                () = outbox.closed() => return,
                command = outbox.next_command() => {
                    Box::pin(self.apply(command)).await;
                    continue;
                }
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
                        Some((code, reason)) => Closing::Send {
                            code,
                            reason: reason.into(),
                        },
                        None => Closing::Gone,
                    });
                    return;
                }
                Some(Ok(inbound)) => inbound,
            };
            alive.store(true, Ordering::Relaxed);
            match inbound {
                // A connection's task is as large as its largest state, and most connections
                // sit idle: a command's state lives on the heap only while it runs.
                Inbound::Text(text) => Box::pin(self.handle(text.as_str())).await,
                Inbound::Binary(_) => {
                    if self.admit(None, false) {
                        self.reply_error(
                            None,
                            ErrorCode::BinaryFrame,
                            "binary frames are not part of protocol v1; send JSON text frames",
                        )
                    }
                }
                Inbound::Control => {}
                Inbound::Close(_) => {
                    outbox.close(Closing::ByPeer);
                    return;
                }
            }
        }
    }

    /// Charges a command to the rate limits; false (after telling the client) if refused.
    fn admit(&mut self, id: Option<u64>, is_publish: bool) -> bool {
        let verdict = self.limiter.check(
            self.config.command_rate,
            self.config.publish_rate,
            is_publish,
            Instant::now(),
        );
        match verdict {
            Verdict::Allow => true,
            Verdict::Refuse => {
                let what = if is_publish { "publishes" } else { "commands" };
                self.reply_error(
                    id,
                    ErrorCode::RateLimited,
                    &format!("too many {what} per second; slow down"),
                );
                false
            }
            Verdict::Close => {
                tracing::info!(client = %self.client, "closing a client that ignores its rate limit");
                self.outbox.close(Closing::Send {
                    code: CloseCode::RATE_LIMITED,
                    reason: "rate limit exceeded repeatedly".into(),
                });
                false
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        #[cfg(feature = "fault-injection")]
        if text == FAULT_PANIC {
            panic!("fault injection: this session was asked to panic");
        }
        let request = match protocol::decode_request(text) {
            Ok(request) => request,
            Err(err) => {
                if self.admit(err.id, false) {
                    self.reply_error(err.id, err.code, &err.message);
                }
                return;
            }
        };
        let id = request.id;
        let is_publish = matches!(request.command, Command::Publish { .. });
        if !self.admit(id, is_publish) {
            return;
        }
        if !matches!(request.command, Command::Pong) {
            self.note_activity();
        }
        match request.command {
            Command::Pong => {}
            Command::Connect { name, token } => {
                if self.identity.is_some() {
                    return self.reply_error(
                        id,
                        ErrorCode::AlreadyConnected,
                        "connect must be the first command of a connection",
                    );
                }
                match token {
                    Some(token) => self.connect_with_token(id, token.expose()),
                    None if self.gate.allow_anonymous => {
                        self.establish_anonymous(id, name.as_deref())
                    }
                    None => self.refuse("authentication required: connect with a token"),
                }
            }
            command => {
                if self.identity.is_none() {
                    if !self.gate.allow_anonymous {
                        return self.refuse(
                            "authentication required: the first command must be connect with a token",
                        );
                    }
                    self.establish_anonymous(None, None);
                }
                // Every connection's task is as large as its largest state, mostly idle; the
                // rarer commands' states live on the heap while they run instead.
                match command {
                    Command::Subscribe {
                        channel,
                        since,
                        token,
                    } => self.subscribe(id, channel, since, token).await,
                    Command::History {
                        channel,
                        since,
                        limit,
                    } => self.history(id, channel, since, limit).await,
                    Command::Unsubscribe { channel } => self.unsubscribe(id, channel).await,
                    Command::Publish {
                        channel,
                        data,
                        idempotency_key,
                    } => {
                        self.publish(id, channel, Arc::from(data), idempotency_key)
                            .await
                    }
                    Command::Refresh { token } => self.refresh(id, token.expose()),
                    Command::Ping => self.reply_ok(id, &Empty {}),
                    Command::Pong | Command::Connect { .. } => {}
                }
            }
        }
        self.note_activity();
    }

    /// A command arrived (or the subscriptions changed): restart the idle clock.
    fn note_activity(&self) {
        let since = if self.subscriptions.is_empty() {
            self.clocks.now()
        } else {
            NEVER
        };
        self.clocks.set(&self.clocks.idle_since, since);
    }

    /// Closes the connection with 1008 and `reason`.
    fn refuse(&self, reason: &str) {
        tracing::debug!(client = %self.client, reason, "connection refused");
        self.outbox.close(Closing::Send {
            code: CloseCode::POLICY_VIOLATION,
            reason: reason.to_owned().into(),
        });
    }

    /// Verifies a connection token and, if it holds, sets the identity it proves.
    fn connect_with_token(&mut self, id: Option<u64>, token: &str) {
        let claims = match self.gate.verify(token) {
            Ok(claims) => claims,
            Err(err) => return self.refuse(&err.to_string()),
        };
        let user: Arc<str> = claims.user.into();
        if let Err(refused) = self.ticket.admit_user(&user) {
            self.outbox.close(Closing::Send {
                code: refused.close_code(),
                reason: refused.to_string().into(),
            });
            return;
        }
        let expires_in_ms = claims.expires.map(millis_until);
        if let Some(left) = expires_in_ms {
            let at = self.clocks.now().saturating_add(left);
            self.clocks.set(&self.clocks.expires, at);
        }
        self.node.add_user(&user, self.id, &self.outbox);
        self.establish(
            id,
            Identity {
                user,
                authenticated: true,
            },
            expires_in_ms,
        );
    }

    fn establish_anonymous(&mut self, id: Option<u64>, name: Option<&str>) {
        let user: Arc<str> = name
            .and_then(valid_name)
            .unwrap_or_else(generated_name)
            .into();
        self.establish(
            id,
            Identity {
                user,
                authenticated: false,
            },
            None,
        );
    }

    /// Sets the connection's identity and tells the client: as the reply to `connect` when it
    /// has an id, as a `connected` push otherwise.
    fn establish(&mut self, id: Option<u64>, identity: Identity, expires_in_ms: Option<u64>) {
        self.clocks.set(&self.clocks.identify_by, NEVER);
        let connected = Connected {
            client: self.client.to_string(),
            user: identity.user.to_string(),
            version: protocol::PROTOCOL_VERSION,
            ping_interval_ms: millis(self.config.ping_interval),
            pong_timeout_ms: millis(self.config.pong_timeout),
            authenticated: identity.authenticated,
            expires_in_ms,
        };
        self.identity = Some(identity);
        let frame = match id {
            Some(id) => protocol::encode_ok(id, &connected),
            None => protocol::encode_connected(&connected),
        };
        self.outbox.push(Frame::from(frame));
    }

    /// Replaces the token of an authenticated connection, moving its expiry.
    fn refresh(&mut self, id: Option<u64>, token: &str) {
        let Some(identity) = self.identity.as_ref().filter(|i| i.authenticated) else {
            return self.reply_error(
                id,
                ErrorCode::PermissionDenied,
                "refresh is for connections that connected with a token",
            );
        };
        let claims = match self.gate.verify(token) {
            Ok(claims) => claims,
            Err(err) => return self.reply_error(id, ErrorCode::InvalidToken, &err.to_string()),
        };
        if *claims.user != *identity.user {
            return self.reply_error(id, ErrorCode::InvalidToken, "token is for another user");
        }
        let expires_in_ms = claims.expires.map(millis_until);
        let at = expires_in_ms.map_or(NEVER, |left| self.clocks.now().saturating_add(left));
        self.clocks.set(&self.clocks.expires, at);
        self.reply_ok(id, &Refreshed { expires_in_ms });
    }

    fn client_info(&self) -> Option<ClientInfo> {
        self.identity.as_ref().map(|identity| ClientInfo {
            client: self.client.clone(),
            user: identity.user.clone(),
        })
    }

    fn reply_denied(&self, id: Option<u64>, denied: &Denied) {
        let code = match denied {
            Denied::Permission(_) => ErrorCode::PermissionDenied,
            Denied::Token(_) => ErrorCode::InvalidToken,
        };
        self.reply_error(id, code, &denied.to_string());
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        token: Option<Secret>,
    ) {
        self.join(id, channel, since, token, false).await;
    }

    /// Subscribes for the client (`by_server` false: the channel rules apply, the client gets
    /// a reply) or for the server API (the application decided; the client gets a
    /// `subscribed` push).
    async fn join(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        token: Option<Secret>,
        by_server: bool,
    ) {
        if by_server && self.subscriptions.contains(&channel) {
            return;
        }
        if let Some(identity) = self.identity.as_ref().filter(|_| !by_server) {
            let allowed = self.node.rules().check_subscribe(
                identity,
                &channel,
                token.as_ref().map(Secret::expose),
                self.gate.verifier.as_ref(),
            );
            if let Err(denied) = allowed {
                return self.reply_denied(id, &denied);
            }
        }
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
        // Recorded before the hub knows it, so that a session ending mid-way still leaves it.
        self.subscriptions.insert(channel.clone());
        let subscribed = self
            .node
            .subscribe(&channel, self.id, &self.outbox, since.as_ref())
            .await;
        let Subscribed { position, recovery } = match subscribed {
            Ok(subscribed) => subscribed,
            Err(err) => {
                self.subscriptions.remove(&channel);
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
            None if by_server => vec![Frame::from(protocol::encode_subscribed(
                &protocol::SubscribedPush {
                    channel: channel.to_string(),
                    offset: position.offset,
                    epoch: position.epoch.to_string(),
                },
            ))],
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
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) {
        // Whoever may subscribe may read the history; a channel that needs a subscription
        // token is readable once subscribed with one.
        if let Some(identity) = self
            .identity
            .as_ref()
            .filter(|_| !self.subscriptions.contains(&channel))
        {
            let allowed = self.node.rules().check_subscribe(
                identity,
                &channel,
                None,
                self.gate.verifier.as_ref(),
            );
            if let Err(denied) = allowed {
                return self.reply_denied(id, &denied);
            }
        }
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
        idempotency_key: Option<String>,
    ) {
        if let Err(denied) = self.node.rules().check_publish(&channel) {
            return self.reply_denied(id, &denied);
        }
        let Some(info) = self.client_info() else {
            return;
        };
        match self
            .node
            .publish(&channel, data, info, idempotency_key)
            .await
        {
            Ok(position) => self.reply_ok(
                id,
                &PublishOk {
                    offset: position.offset,
                },
            ),
            Err(err) => self.reply_broker_error(id, &err),
        }
    }

    /// Carries out a server command that reached this connection.
    async fn apply(&mut self, command: Control) {
        match command {
            Control::Subscribe { channel, .. } => {
                self.join(None, channel, None, None, true).await;
                self.note_activity();
            }
            Control::Unsubscribe { channel, .. } => {
                if self.subscriptions.remove(&channel) {
                    self.node.unsubscribe(&channel, self.id).await;
                    self.outbox.end_subscription(&channel);
                    self.outbox.push(Frame::from(protocol::encode_unsubscribed(
                        &protocol::UnsubscribedPush {
                            channel: channel.to_string(),
                        },
                    )));
                    self.note_activity();
                }
            }
            // The hub closes the connection itself.
            Control::Disconnect { .. } => {}
        }
    }

    /// Leaves every channel, waiting for the broker; `Drop` does the rest.
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

/// Releases what the session holds however it ends: after `leave_all` only the user
/// registration is left (the admission place is the ticket's own `Drop`); during a panic's
/// unwinding the subscriptions too, so that no dead connection stays subscribed.
impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.outbox.close(Closing::Gone);
        if let Some(identity) = self.identity.as_ref().filter(|i| i.authenticated) {
            self.node.remove_user(&identity.user, self.id);
        }
        let channels = std::mem::take(&mut self.subscriptions);
        if channels.is_empty() {
            return;
        }
        // Unsubscribing may wait for the broker; Drop cannot, so a task finishes the job.
        // Without a runtime (the process is exiting) there is nobody left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (node, id) = (self.node.clone(), self.id);
            runtime.spawn(async move {
                for channel in channels {
                    node.unsubscribe(&channel, id).await;
                }
            });
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
