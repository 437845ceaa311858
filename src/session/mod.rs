//! Session: one client connection — its identity, its commands, its subscriptions with their
//! recovery, its limits and its outbox — whatever carries it.
//!
//! A session does not know its transport. A transport hands it an [`Incoming`] half (what the
//! client sent: text frames, proof of life, a close) and an [`Outgoing`] half (frames out, and
//! the close), and [`run`] serves the two concurrently in one task: the reader decodes each
//! request and asks the [`Node`], queuing the reply in the connection's [`Outbox`]; the writer
//! is the only code that writes, draining the outbox in batches, sending heartbeats and
//! performing the close. The WebSocket transport lives in `crate::transport::ws`; the tests
//! drive sessions through an in-memory one.
//!
//! ## Identity
//! No command but `connect` and `pong` runs without an [`Identity`]: the reader obtains one (or
//! closes the connection) before dispatching, and every command takes it as an argument.
//!
//! ## Heartbeats
//! Every `ping_interval` the writer queues `{"ping":{}}`; a client that sends nothing within
//! `pong_timeout` after it left is closed with [`CloseCode::NoPong`] (see [`heartbeat`]).
//!
//! ## Slow consumers
//! A client whose outbox fills (it stopped reading), or whose transport accepts nothing for a
//! pong timeout, is closed with [`CloseCode::SlowConsumer`]; its queue is freed at once, and
//! others are not affected.
//!
//! ## Closing
//! Whoever decides to close (a read error, overflow, shutdown, missing pong, the server API)
//! tells the outbox; the writer sends the close and the reader waits a bounded time for the
//! peer's answer. However the session ends — a panic included — its `Drop` leaves every
//! channel and gives back its user registration and its place under the connection caps.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{Denied, Identity};
use crate::limits::{EventBudget, Limiter, Rate, Ticket, Verdict};
use crate::metrics::metrics;
use crate::node::{Mailbox, Node, NodeError};
use crate::outbox::{Closing, Outbox};
use crate::protocol::{
    ChannelName, ClientInfo, CloseCode, ErrorBody, ErrorCode, Item, Refused, Secret,
    StreamPosition, Subscribe,
};

mod backend;
mod dispatch;
mod heartbeat;
mod identity;
mod pipeline;
mod transport;
mod writer;

use heartbeat::{Clocks, NEVER};
pub(crate) use identity::Gate;
pub(crate) use transport::{Inbound, Incoming, Invalid, Outgoing, ReadError, Wanted, WriteError};

/// Per-connection settings, shared by every session.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    /// Bytes a connection may have queued before it is closed as a slow consumer.
    pub max_queue_size: usize,
    /// The largest publication data, in bytes (what the backend's rewritten data must fit).
    pub max_message_size: usize,
    /// Channels one connection may subscribe to at once.
    pub max_subscriptions: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// How long one batch may take to reach the transport before the client counts as a slow
    /// consumer (a client that stops reading on a quiet channel never fills its queue).
    pub write_timeout: Duration,
    /// How long a close may take to leave, and how long to wait for the peer's reply.
    pub close_timeout: Duration,
    pub publish_rate: Rate,
    pub command_rate: Rate,
    /// How long a connection that must authenticate has to send `connect`.
    pub handshake_timeout: Duration,
    /// Close connections with no subscription that send no command for this long.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, connections close with 1001 spread evenly over this window.
    pub drain_window: Duration,
    /// When the drain began; set just before the shutdown token is cancelled.
    pub drain_started: Arc<OnceLock<tokio::time::Instant>>,
}

/// What the client sent with its request to connect, and its place under the caps.
#[derive(Debug)]
pub(crate) struct Handshake {
    /// The connection's id, from [`client_id`].
    pub client: Arc<str>,
    /// The transport's name: `websocket`, `sse`, `stream` or `pusher`.
    pub transport: &'static str,
    pub name: Option<String>,
    /// From the `token` query parameter or an `Authorization: Bearer` header.
    pub token: Option<Secret>,
    pub ticket: Ticket,
    /// The handshake headers named with `--proxy-header`, for the backend.
    pub forwarded: crate::backend::Forwarded,
}

/// A new connection's id: 16 hex digits, random. Made before the session starts so that a
/// transport can name the connection in its own words first (Pusher's socket id).
pub(crate) fn client_id() -> Arc<str> {
    format!("{:016x}", fastrand::u64(..)).into()
}

/// Everything a session starts from besides its transport.
#[derive(Debug)]
pub(crate) struct Start {
    pub node: Node,
    pub config: Arc<SessionConfig>,
    pub gate: Arc<Gate>,
    pub handshake: Handshake,
    pub shutdown: CancellationToken,
}

/// With the `fault-injection` feature (test builds only), this frame panics its session.
#[cfg(feature = "fault-injection")]
const FAULT_PANIC: &str = r#"{"op":"fault-injection:panic"}"#;

tokio::task_local! {
    /// The client id of the session being polled, for the panic hook to name.
    static CLIENT: Arc<str>;
}

/// The client id of the session whose code is running on this thread, if any.
pub(crate) fn current_client() -> Option<Arc<str>> {
    CLIENT.try_with(Arc::clone).ok()
}

/// Serves one connection until it closes.
///
/// Every byte of this future is paid by every idle connection, hence its shape: the start is
/// boxed (and freed as soon as it is unpacked), and this is a function returning an `async
/// move` block rather than an `async fn`, which would keep each argument twice — as the
/// argument and as the local it is moved into.
///
/// A panic inside the session is caught here: the panic hook has logged it (naming the
/// client), the session's `Drop` has released its subscriptions and registrations, and the
/// client is told 1011 so that it reconnects. Other sessions never notice.
pub(crate) fn run<I: Incoming, O: Outgoing>(
    mut incoming: I,
    mut outgoing: O,
    start: Box<Start>,
) -> impl Future<Output = ()> + Send {
    let close_timeout = start.config.close_timeout;
    async move {
        // Made inside the block and moved on before the first await: a captured copy would be
        // kept for the session's life.
        let client = start.handshake.client.clone();
        let serving = serve(&mut incoming, &mut outgoing, start);
        let served = AssertUnwindSafe(CLIENT.scope(client, serving))
            .catch_unwind()
            .await;
        if served.is_err() {
            let code = CloseCode::InternalError;
            count_close(&Closing::with(code));
            outgoing.close(code, code.reason(), close_timeout).await;
        }
    }
}

async fn serve<I: Incoming, O: Outgoing>(incoming: &mut I, outgoing: &mut O, start: Box<Start>) {
    let clocks = Clocks::new();
    // Everything only the start needs lives in this block: a local of the function's own scope
    // keeps its place in the future across the loops' await even once moved out (the
    // handshake alone was 136 bytes), and every idle connection would pay for it.
    let (mut session, outbox, config, shutdown, _open) = {
        let Start {
            node,
            config,
            gate,
            handshake,
            shutdown,
        } = unbox(start);
        let Handshake {
            client,
            transport,
            name,
            token,
            ticket,
            forwarded,
        } = handshake;
        let outbox = Outbox::new(config.max_queue_size, client.clone());
        let mut session = Session {
            client,
            identity: None,
            node,
            outbox: outbox.clone(),
            config: config.clone(),
            gate,
            limiter: Limiter::new(config.command_rate, config.publish_rate, clocks.start),
            budget: EventBudget::new(clocks.start),
            ticket,
            clocks: &clocks,
            mailbox: None,
            pipeline: pipeline::Pipeline::default(),
            forwarded,
            refreshed_for: NEVER,
            transport,
        };
        let open = OpenConnection::count(session.transport);
        if token.is_none() && session.gate.backend.handles_connect() {
            Box::pin(session.connect_via_backend(name.as_deref())).await;
        } else {
            session.greet(token.as_ref(), name.as_deref());
        }
        (session, outbox, config, shutdown, open)
    };
    tracing::debug!(
        client = %session.client,
        user = session.identity.as_ref().map(|i| &*i.user),
        remote = ?session.ticket.ip(),
        "connection opened"
    );
    let (_, closing) = tokio::join!(
        session.read_loop(incoming),
        writer::write_loop(outgoing, &outbox, &clocks, &config, &shutdown),
    );
    if let Closing::Send { .. } = closing {
        // Give the peer a bounded moment to answer our close.
        let _ = tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(inbound)) = incoming.next().await {
                if let Inbound::Close = inbound {
                    break;
                }
            }
        })
        .await;
    }
    session.node.leave_all(&session.outbox).await;
    let code = count_close(&closing);
    tracing::debug!(
        client = %session.client,
        user = session.identity.as_ref().map(|i| &*i.user),
        remote = ?session.ticket.ip(),
        code,
        "connection closed"
    );
}

/// Counts an open connection for as long as it lives, a panicking session included.
struct OpenConnection(&'static str);

impl OpenConnection {
    fn count(transport: &'static str) -> Self {
        let metrics = metrics();
        metrics.connections_opened.inc();
        metrics.connections.inc();
        metrics
            .http
            .transports
            .with_label_values(&[transport])
            .inc();
        Self(transport)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let metrics = metrics();
        metrics.connections.dec();
        metrics.http.transports.with_label_values(&[self.0]).dec();
    }
}

/// Counts a close; returns its code as logs and metrics show it (`peer`, `gone` or a number).
fn count_close(closing: &Closing) -> String {
    let metrics = metrics();
    let code = match closing {
        Closing::ByPeer => "peer".to_owned(),
        Closing::Gone => "gone".to_owned(),
        Closing::Send { code, .. } => code.number().to_string(),
    };
    metrics.connections_closed.with_label_values(&[&code]).inc();
    if let Closing::Send {
        code: CloseCode::SlowConsumer,
        ..
    } = closing
    {
        metrics.slow_consumer_closes.inc();
    }
    code
}

/// Counts a binary message (always true: it only counts).
fn count_binary() -> bool {
    metrics().messages_in.inc();
    true
}

pub(super) fn count_error(code: ErrorCode) {
    let metrics = metrics();
    metrics
        .errors
        .with_label_values(&[&code.as_u16().to_string()])
        .inc();
    if code == ErrorCode::RateLimited {
        metrics.rate_limited.inc();
    }
}

/// Moves the value out and frees the box now: `*start` in the body of an async fn would keep
/// the allocation until the session ends. The box is the point, so clippy's advice against
/// boxed arguments does not apply.
#[allow(clippy::boxed_local)]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// What a refused request is told: an error code and a message for people.
#[derive(Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl ToString) -> Self {
        Self {
            code,
            message: Cow::Owned(message.to_string()),
        }
    }
}

impl From<&Denied> for Refusal {
    fn from(denied: &Denied) -> Self {
        let code = match denied {
            Denied::Token(_) => ErrorCode::InvalidToken,
            _ => ErrorCode::PermissionDenied,
        };
        Self::new(code, denied)
    }
}

struct Session<'a> {
    client: Arc<str>,
    identity: Option<Identity>,
    node: Node,
    outbox: Outbox,
    config: Arc<SessionConfig>,
    gate: Arc<Gate>,
    limiter: Limiter,
    /// The lifecycle changes (webhook events) this connection's subscriptions may cause.
    budget: EventBudget,
    ticket: Ticket,
    clocks: &'a Clocks,
    /// Server commands for this connection; only authenticated connections can be named.
    mailbox: Option<Arc<Mailbox>>,
    /// Publishes sent to the node, not yet answered.
    pipeline: pipeline::Pipeline,
    /// The handshake headers forwarded to the backend.
    forwarded: crate::backend::Forwarded,
    /// The expiry the backend was last asked to extend (`--proxy-refresh`).
    refreshed_for: u64,
    transport: &'static str,
}

impl Session<'_> {
    /// Acts on what came with the request to connect: an identity at once, or a deadline to
    /// authenticate by.
    fn greet(&mut self, token: Option<&Secret>, name: Option<&str>) {
        match (token, name) {
            (Some(token), _) => self.connect_with_token(None, token.expose()),
            (None, Some(name)) if self.gate.allow_anonymous => {
                self.establish_anonymous(None, Some(name))
            }
            _ if !self.gate.allow_anonymous => {
                let clocks = self.clocks;
                let by = clocks.millis(clocks.start + self.config.handshake_timeout);
                clocks.set(&clocks.identify_by, by);
            }
            _ => {}
        }
    }

    async fn read_loop<I: Incoming>(&mut self, incoming: &mut I) {
        let outbox = self.outbox.clone();
        loop {
            let mailbox = self.mailbox.clone();
            let reading = self.pipeline.len() < pipeline::MAX_IN_FLIGHT;
            let refresh_at = self.refresh_due();
            let inbound = tokio::select! {
                biased;
                () = outbox.closed() => return,
                // Boxed: the timer is only alive where the backend refreshes connections.
                Some(()) = async {
                    Box::pin(tokio::time::sleep_until(refresh_at?)).await;
                    Some(())
                }, if refresh_at.is_some() => {
                    self.settle().await;
                    Box::pin(self.refresh_via_backend()).await;
                    continue;
                }
                Some(published) = self.pipeline.next(), if !self.pipeline.is_empty() => {
                    self.published(published);
                    continue;
                }
                command = async { mailbox.as_ref()?.recv().await.into() }, if mailbox.is_some() => {
                    if let Some(command) = command {
                        self.settle().await;
                        Box::pin(self.apply(command)).await;
                    }
                    continue;
                }
                inbound = incoming.next(), if reading => inbound,
            };
            let inbound = match inbound {
                None => return outbox.close(Closing::Gone),
                Some(Err(err)) => {
                    let error: &dyn std::error::Error = &err;
                    tracing::debug!(client = %self.client, error, "read failed");
                    return outbox.close(err.closing().unwrap_or(Closing::Gone));
                }
                Some(Ok(inbound)) => inbound,
            };
            self.clocks.alive.store(true, Ordering::Relaxed);
            // One await for every input, holding nothing but the boxed step: every byte of
            // this loop's future is paid by every idle connection.
            let step = match inbound {
                Inbound::Text(text) => {
                    let metrics = metrics();
                    metrics.messages_in.inc();
                    metrics.bytes_in.inc_by(text.len() as u64);
                    self.handle_text(text)
                }
                Inbound::Subscribe(wanted) => self.subscribe_input(wanted),
                Inbound::Command(request) => {
                    metrics().messages_in.inc();
                    self.handle_command(request)
                }
                Inbound::Invalid(invalid) => {
                    metrics().messages_in.inc();
                    if self.admit(invalid.id, false) {
                        let refusal = Refusal::new(invalid.code, invalid.message);
                        self.reply_error(invalid.id, &refusal);
                    }
                    continue;
                }
                Inbound::Binary if count_binary() && self.admit(None, false) => {
                    let message =
                        "binary frames are not part of protocol v1; send JSON text frames";
                    self.reply_error(None, &Refusal::new(ErrorCode::BinaryFrame, message));
                    continue;
                }
                Inbound::Binary | Inbound::Alive => continue,
                Inbound::Close => return outbox.close(Closing::ByPeer),
            };
            step.await;
        }
    }

    /// Charges a command to the rate limits; false (after telling the client) if refused.
    fn admit(&mut self, id: Option<u64>, is_publish: bool) -> bool {
        let (commands, publishes) = (self.config.command_rate, self.config.publish_rate);
        match self
            .limiter
            .check(commands, publishes, is_publish, Instant::now())
        {
            Verdict::Allow => true,
            Verdict::Refuse => {
                let what = if is_publish { "publishes" } else { "commands" };
                let message = format!("too many {what} per second; slow down");
                self.reply_error(id, &Refusal::new(ErrorCode::RateLimited, message));
                false
            }
            Verdict::Close => {
                tracing::info!(client = %self.client, "closing a client that ignores its rate limit");
                self.outbox.close(Closing::with(CloseCode::RateLimited));
                false
            }
        }
    }

    /// A channel the client named when it connected: subscribed like a `subscribe` command
    /// without a token, and answered by pushes that name the channel.
    fn subscribe_input(&mut self, wanted: Wanted) -> futures_util::future::BoxFuture<'_, ()> {
        let Wanted { channel, since } = wanted;
        if crate::pusher::channel::external(&channel).is_some() {
            let message = format!("{channel} belongs to a Pusher app: connect at /app/KEY");
            let refusal = Refusal::new(ErrorCode::PermissionDenied, message);
            self.refuse_to(dispatch::Asker::Stream, Some(&channel), &refusal);
            return Box::pin(async {});
        }
        Box::pin(self.subscribe_channel(channel, since))
    }

    async fn subscribe_channel(&mut self, channel: ChannelName, since: Option<StreamPosition>) {
        if !self.admit(None, false) {
            return;
        }
        self.note_activity();
        let Some(identity) = self.identity_for_command() else {
            return;
        };
        self.settle().await;
        let request = Subscribe {
            channel,
            since,
            token: None,
            extras: Default::default(),
        };
        self.subscribe(&identity, dispatch::Asker::Stream, request)
            .await;
        self.note_activity();
    }

    /// A command arrived (or the subscriptions changed): restart the idle clock.
    fn note_activity(&self) {
        let since = if self.outbox.subscription_count() == 0 {
            self.clocks.now()
        } else {
            NEVER
        };
        self.clocks.set(&self.clocks.idle_since, since);
    }

    /// Stamps a publication with who sent it.
    fn client_info(&self, identity: &Identity) -> ClientInfo {
        ClientInfo {
            client: self.client.clone(),
            user: identity.user.clone(),
        }
    }

    fn reply_ok<T: serde::Serialize>(&self, id: Option<u64>, body: &T) {
        if let Some(id) = id {
            self.outbox.push(Item::reply(id, body));
        }
    }

    /// An error reply, or an error push for a request without an id: never silent.
    fn reply_error(&self, id: Option<u64>, refusal: &Refusal) {
        self.refuse_to(dispatch::Asker::Command(id), None, refusal);
    }

    /// Tells whoever asked that a request was refused (and counts it).
    fn refuse_to(&self, asker: dispatch::Asker, channel: Option<&ChannelName>, refusal: &Refusal) {
        count_error(refusal.code);
        let error = ErrorBody::new(refusal.code, refusal.message.as_ref());
        self.tell_error(asker, channel, error);
    }

    /// An error as whoever asked hears it: a reply or push for a command, a push naming the
    /// channel for a stream's own channel.
    fn tell_error(&self, asker: dispatch::Asker, channel: Option<&ChannelName>, error: ErrorBody) {
        let item = match asker {
            dispatch::Asker::Command(id) => Item::error(id, error),
            dispatch::Asker::Stream => Item::Error(Box::new(Refused {
                id: None,
                error,
                channel: channel.cloned(),
            })),
        };
        self.outbox.push(item);
    }

    /// Logs a node failure where it is handled, and says what the client is told.
    fn node_failure(&self, err: NodeError) -> Refusal {
        if let NodeError::Broker(err) = &err {
            let err: &dyn std::error::Error = err;
            tracing::warn!(client = %self.client, error = err, "broker operation failed");
        }
        Refusal::new(err.code(), err.client_message())
    }
}

/// Releases what the session holds however it ends: after a clean end only the user
/// registration is left (the admission place is the ticket's own `Drop`); during a panic's
/// unwinding the subscriptions too, so that no dead connection stays subscribed.
impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.outbox.close(Closing::Gone);
        if let Some(identity) = self.identity.as_ref().filter(|i| i.authenticated) {
            self.node.unregister_user(&identity.user, self.outbox.id());
        }
        self.node.leave_all_later(&self.outbox);
    }
}

#[cfg(test)]
pub(crate) mod tests;
