//! Commands, carried out with an identity in hand: each client command, and each server
//! command from the session's mailbox, becomes calls on the node and a reply or push in the
//! outbox.
//!
//! Subscribing has two entry points over one core: [`Session::subscribe`] for the client (the
//! channel rules apply; the reply says how it went) and [`Session::subscribe_for_server`] for
//! the server API (the application decided; the client learns it from a `subscribed` push).

use std::borrow::Cow;
use std::sync::Arc;

use super::pipeline::Published;
use super::{Refusal, Session};
use crate::auth::Identity;

use crate::metrics::metrics;
use crate::node::{ContinuityError, Node, Recovery, Subscribed, UserCommand};
use crate::outbox::Closing;
use crate::protocol::{
    Ack, ChannelName, Command, Empty, ErrorBody, ErrorCode, History, HistoryOk, Item, Presence,
    PresenceOk, PresenceStats, PresenceStatsOk, Publish, PublishOk, Recovered, Rpc, RpcOk, Secret,
    StreamPosition, Subscribe, SubscribeExtras, Subscription, SubscriptionExtras, Unsubscribe,
};
use crate::protocol::{Request, decode_request};

/// A recovery as the client is told it, counted.
fn told_recovery(recovery: Recovery) -> Recovered {
    count_recovery(&recovery);
    match recovery {
        Recovery::Recovered(publications) => Recovered {
            publications,
            unrecovered: None,
        },
        Recovery::Unrecoverable(reason) => Recovered {
            publications: Vec::new(),
            unrecovered: Some(reason.to_string()),
        },
    }
}

/// Counts a recovery's outcome.
fn count_recovery(recovery: &Recovery) {
    let outcome = match recovery {
        Recovery::Recovered(_) => "recovered",
        Recovery::Unrecoverable(ContinuityError::EpochChanged { .. }) => "epoch_changed",
        Recovery::Unrecoverable(ContinuityError::Ahead { .. }) => "ahead",
        Recovery::Unrecoverable(ContinuityError::TooOld(_)) => "too_old",
        Recovery::Unrecoverable(ContinuityError::Incomplete { .. }) => "incomplete",
    };
    metrics().recoveries.with_label_values(&[outcome]).inc();
}

/// A `subscribe` without an id has no reply to carry its outcome: recovered publications
/// come as pushes, and a failed recovery as an error push.
fn without_reply(subscription: Subscription) -> Vec<Item> {
    let Some(recovery) = subscription.recovery else {
        return Vec::new();
    };
    if let Some(reason) = recovery.unrecovered {
        super::count_error(ErrorCode::UnrecoverablePosition);
        let message = format!("{}: {reason}", subscription.channel);
        let error = ErrorBody::new(ErrorCode::UnrecoverablePosition, message);
        return vec![Item::error(None, error)];
    }
    recovery
        .publications
        .into_iter()
        .map(|p| Item::Publication(Arc::new(crate::protocol::Published::new(p, None))))
        .collect()
}

/// Who asked for something, and so how the outcome is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asker {
    /// A client command: a reply when it has an id, pushes otherwise.
    Command(Option<u64>),
    /// A channel the client named when it connected: pushes that name the channel.
    Stream,
}

impl Session<'_> {
    /// A command's text, handled on the heap.
    pub(super) fn handle_text(&mut self, text: String) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move { self.handle(&text).await })
    }

    async fn handle(&mut self, text: &str) {
        #[cfg(feature = "fault-injection")]
        if text == super::FAULT_PANIC {
            panic!("fault injection: this session was asked to panic");
        }
        let request = match decode_request(text) {
            Ok(request) => request,
            Err(err) => {
                if self.admit(err.id, false) {
                    self.reply_error(err.id, &Refusal::new(err.code, err.message));
                }
                return;
            }
        };
        self.handle_request(request).await;
    }

    /// A command another wire's decoder read (already typed), handled on the heap.
    pub(super) fn handle_command(
        &mut self,
        request: Request,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.handle_request(request))
    }

    /// One command, whichever wire it came in: rate-limited, then carried out.
    async fn handle_request(&mut self, request: Request) {
        let id = request.id;
        if !self.admit(id, matches!(request.command, Command::Publish(_))) {
            return;
        }
        // A Pusher app's channels answer to Pusher's signatures only: a native client reaches
        // none of them, by any command (their history or presence included).
        if self.transport != "pusher"
            && let Some(channel) = request.command.channel()
            && crate::pusher::channel::external(channel).is_some()
        {
            let message = format!("{channel} belongs to a Pusher app: connect at /app/KEY");
            return self.reply_error(id, &Refusal::new(ErrorCode::PermissionDenied, message));
        }
        match request.command {
            Command::Pong => return,
            Command::Connect(connect) => {
                self.settle().await;
                self.connect(id, connect)
            }
            command => {
                self.note_activity();
                let Some(identity) = self.identity_for_command() else {
                    return;
                };
                if !matches!(command, Command::Publish(_)) {
                    // Whatever follows a publish sees it done.
                    self.settle().await;
                }
                self.dispatch(&identity, id, command).await;
            }
        }
        self.note_activity();
    }

    /// Runs one client command other than `connect` and `pong`.
    pub(super) async fn dispatch(
        &mut self,
        identity: &Identity,
        id: Option<u64>,
        command: Command,
    ) {
        // A connection's task is as large as its largest state and most connections sit idle:
        // the rarer commands' states live on the heap only while they run.
        match command {
            Command::Subscribe(subscribe) => {
                Box::pin(self.subscribe(identity, Asker::Command(id), subscribe)).await
            }
            Command::History(history) => Box::pin(self.history(identity, id, history)).await,
            Command::Unsubscribe(Unsubscribe { channel }) => {
                // Unsubscribing from a channel one is not subscribed to succeeds: the state
                // asked for holds either way, and retries stay harmless.
                Box::pin(self.node.unsubscribe(&channel, &self.outbox)).await;
                self.reply_ok(id, &Empty {});
            }
            Command::Publish(publish) => self.publish(identity, id, publish).await,
            Command::Presence(presence) => Box::pin(self.presence(identity, id, presence)).await,
            Command::PresenceStats(PresenceStats { channel }) => {
                Box::pin(self.presence_stats(identity, id, channel)).await
            }
            Command::Refresh(refresh) => self.refresh(identity, id, refresh.token.expose()),
            Command::Rpc(rpc) => Box::pin(self.rpc(identity, id, rpc)).await,
            Command::Ack(ack) => Box::pin(self.ack(id, ack)).await,
            Command::Ping => self.reply_ok(id, &Empty {}),
            Command::SignIn(sign_in) => self.sign_in(id, sign_in),
            Command::Connect(_) | Command::Pong => {}
        }
    }

    /// `rpc`: the backend answers (`--proxy-rpc`); the session waits for it, so a connection
    /// has one call in flight at most.
    async fn rpc(&mut self, identity: &Identity, id: Option<u64>, rpc: Rpc) {
        let backend = self.gate.backend.clone();
        if !backend.handles_rpc() {
            let message = "rpc is off: the server has no --proxy-rpc";
            return self.reply_error(id, &Refusal::new(ErrorCode::NotEnabled, message));
        }
        let caller = self.caller(identity);
        let answer = backend.rpc(&caller, &rpc.method, rpc.data.as_deref()).await;
        if let Some(data) = self.decided(Asker::Command(id), None, answer) {
            self.reply_ok(id, &RpcOk { data });
        }
    }

    /// `ack`: the connection processed a channel it is subscribed to up to an offset; on a
    /// channel with receipts its user got those publications.
    async fn ack(&mut self, id: Option<u64>, Ack { channel, offset }: Ack) {
        if !self.outbox.is_subscribed(&channel) {
            let message = format!("not subscribed to {channel}");
            return self.reply_error(id, &Refusal::new(ErrorCode::PermissionDenied, message));
        }
        // The epoch is the one this connection is being delivered; a subscription still
        // pending has delivered nothing to acknowledge.
        let Some(epoch) = self.outbox.live_epoch(&channel) else {
            return self.reply_ok(id, &Empty {});
        };
        match self.node.ack(&channel, &epoch, offset).await {
            Ok(()) => self.reply_ok(id, &Empty {}),
            Err(err) => {
                let refusal = self.node_failure(err);
                self.reply_error(id, &refusal)
            }
        }
    }

    /// Carries out a server command that reached this connection.
    pub(super) async fn apply(&mut self, command: UserCommand) {
        match command {
            UserCommand::Subscribe(channel) => {
                // Only connections with an identity have a mailbox.
                if let Some(identity) = self.identity.clone() {
                    Box::pin(self.subscribe_for_server(&identity, channel)).await
                }
            }
            UserCommand::Unsubscribe(channel) => {
                if self.node.unsubscribe(&channel, &self.outbox).await {
                    self.outbox.push(Item::Unsubscribed(channel));
                }
            }
            UserCommand::Disconnect { code, reason } => {
                self.outbox.close(Closing::because(code, reason));
            }
        }
        self.note_activity();
    }

    /// The client's `subscribe` (or a channel it named when it connected): the channel rules
    /// apply, and the reply (or the pushes) tell the outcome — with `since`, the recovered
    /// publications or why there are none.
    pub(super) async fn subscribe(
        &mut self,
        identity: &Identity,
        asker: Asker,
        request: Subscribe,
    ) {
        let Subscribe {
            channel,
            since,
            token,
            extras,
        } = request;
        let refuse = |session: &Self, refusal: &Refusal| {
            session.refuse_to(asker, Some(&channel), refusal);
        };
        let allowed = self.node.rules().check_subscribe(
            identity,
            &channel,
            token.as_ref().map(Secret::expose),
            self.gate.verifier.as_ref(),
        );
        if let Err(denied) = allowed {
            return refuse(self, &Refusal::from(&denied));
        }
        if self.outbox.is_subscribed(&channel) {
            let message = format!("already subscribed to {channel}");
            return refuse(self, &Refusal::new(ErrorCode::AlreadySubscribed, message));
        }
        let mut identity = match &extras.present_as {
            // Verified by the wire's decoder: the connection is this member here.
            Some(presenting) => Cow::Owned(Identity {
                user: presenting.user.clone(),
                info: presenting.info.clone(),
                authenticated: true,
            }),
            None => Cow::Borrowed(identity),
        };
        if self.node.rules().options(&channel).proxy_subscribe {
            let backend = self.gate.backend.clone();
            let answer = backend.subscribe(&self.caller(&identity), &channel).await;
            let Some(result) = self.decided(asker, Some(&channel), answer) else {
                return;
            };
            if let Some(info) = result.info {
                // The backend's info is the connection's in this channel's presence.
                identity.to_mut().info = Some(Arc::new(info));
            }
        }
        let opened = self.open(&identity, &channel, since.as_ref()).await;
        let Subscribed { position, recovery } = match opened {
            Ok(subscribed) => subscribed,
            Err(refusal) => return refuse(self, &refusal),
        };
        let recovery = recovery.map(told_recovery);
        let extras = Box::pin(Self::subscription_extras(&self.node, &channel, &extras)).await;
        let subscription = Subscription {
            id: None,
            receipts: self.node.tracks_receipts(&channel),
            channel,
            position,
            recovery,
            extras,
        };
        let position = subscription.position.clone();
        let channel = subscription.channel.clone();
        let items = match asker {
            Asker::Command(None) => without_reply(subscription),
            Asker::Command(id) => vec![Item::Subscribed(Box::new(Subscription {
                id,
                ..subscription
            }))],
            Asker::Stream => vec![Item::Subscribed(Box::new(subscription))],
        };
        self.outbox
            .complete_subscription(&channel, items, &position);
    }

    /// The server API's subscribe: no rules, nothing to reply to, a `subscribed` push instead;
    /// a connection already subscribed is left as it is.
    pub(super) async fn subscribe_for_server(&mut self, identity: &Identity, channel: ChannelName) {
        if self.outbox.is_subscribed(&channel) {
            return;
        }
        match self.open(identity, &channel, None).await {
            Ok(Subscribed { position, .. }) => {
                let subscription = Subscription {
                    id: None,
                    receipts: self.node.tracks_receipts(&channel),
                    channel: channel.clone(),
                    position: position.clone(),
                    recovery: None,
                    extras: None,
                };
                let items = vec![Item::Subscribed(Box::new(subscription))];
                self.outbox
                    .complete_subscription(&channel, items, &position);
            }
            Err(refusal) => self.reply_error(None, &refusal),
        }
    }

    /// What a subscription made by another wire's decoder carries besides: the members it
    /// joined, the latest publication. A failure to read them leaves them out (logged): the
    /// subscription itself holds.
    async fn subscription_extras(
        node: &Node,
        channel: &ChannelName,
        asked: &SubscribeExtras,
    ) -> Option<Box<SubscriptionExtras>> {
        if asked.present_as.is_none() && !asked.latest {
            return None;
        }
        let mut extras = SubscriptionExtras::default();
        if asked.present_as.is_some() {
            let page = node.presence(channel, None, Presence::MAX_LIMIT).await;
            extras.members = Some(page.map(|page| page.members).unwrap_or_else(|err| {
                tracing::warn!(%channel, error = %err, "presence of a new member not read");
                Vec::new()
            }));
        }
        if asked.latest {
            let latest = node.history(channel, None, Some(1)).await;
            let latest = match latest {
                Ok(history) => history.publications.into_iter().next_back(),
                Err(err) => {
                    tracing::warn!(%channel, error = %err, "latest publication not read");
                    None
                }
            };
            if latest.is_none() {
                node.missed_latest(channel);
            }
            extras.latest = Some(latest);
        }
        Some(Box::new(extras))
    }

    /// The core both entry points share: the subscription limit, then the node.
    async fn open(
        &mut self,
        identity: &Identity,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
    ) -> Result<Subscribed, Refusal> {
        let limit = self.config.max_subscriptions;
        if self.outbox.subscription_count() >= limit {
            let message = format!("a connection may hold at most {limit} subscriptions");
            return Err(Refusal::new(ErrorCode::LimitExceeded, message));
        }
        self.node
            .subscribe(channel, &self.outbox, since, identity, &mut self.budget)
            .await
            .map_err(|err| self.node_failure(err))
    }

    /// Whoever may subscribe may read; a channel that needs a subscription token is readable
    /// once subscribed with one.
    fn may_read(&self, identity: &Identity, channel: &ChannelName) -> Result<(), Refusal> {
        if self.outbox.is_subscribed(channel) {
            return Ok(());
        }
        let verifier = self.gate.verifier.as_ref();
        self.node
            .rules()
            .check_subscribe(identity, channel, None, verifier)
            .map_err(|denied| Refusal::from(&denied))
    }

    async fn presence(&mut self, identity: &Identity, id: Option<u64>, request: Presence) {
        let Presence {
            channel,
            limit,
            cursor,
        } = request;
        if let Err(refusal) = self.may_read(identity, &channel) {
            return self.reply_error(id, &refusal);
        }
        let limit = limit.unwrap_or(Presence::DEFAULT_LIMIT);
        if limit == 0 || limit > Presence::MAX_LIMIT {
            let message = format!("\"limit\" must be 1 to {}", Presence::MAX_LIMIT);
            return self.reply_error(id, &Refusal::new(ErrorCode::InvalidField, message));
        }
        match self.node.presence(&channel, cursor.as_deref(), limit).await {
            Ok(page) => self.reply_ok(
                id,
                &PresenceOk {
                    clients: page.members,
                    cursor: page.cursor,
                },
            ),
            Err(err) => {
                let refusal = self.node_failure(err);
                self.reply_error(id, &refusal)
            }
        }
    }

    async fn presence_stats(&mut self, identity: &Identity, id: Option<u64>, channel: ChannelName) {
        if let Err(refusal) = self.may_read(identity, &channel) {
            return self.reply_error(id, &refusal);
        }
        match self.node.presence_stats(&channel).await {
            Ok(stats) => self.reply_ok(
                id,
                &PresenceStatsOk {
                    clients: stats.clients,
                    users: stats.users,
                },
            ),
            Err(err) => {
                let refusal = self.node_failure(err);
                self.reply_error(id, &refusal)
            }
        }
    }

    async fn history(&mut self, identity: &Identity, id: Option<u64>, request: History) {
        let History {
            channel,
            since,
            limit,
        } = request;
        if let Err(refusal) = self.may_read(identity, &channel) {
            return self.reply_error(id, &refusal);
        }
        match self.node.history(&channel, since.as_ref(), limit).await {
            Ok(history) => self.reply_ok(
                id,
                &HistoryOk::<Arc<serde_json::value::RawValue>> {
                    publications: history.publications,
                    offset: history.position.offset,
                    epoch: history.position.epoch.to_string(),
                },
            ),
            Err(err) => {
                let refusal = self.node_failure(err);
                self.reply_error(id, &refusal)
            }
        }
    }

    /// Sends a publish on its way (see `pipeline`); its reply follows when it settles. Where
    /// the backend decides publishes, the session waits for its answer first: publishes stay
    /// in order, and a connection has one call to the backend in flight at most.
    pub(super) async fn publish(&mut self, identity: &Identity, id: Option<u64>, request: Publish) {
        let Publish {
            channel,
            mut data,
            idempotency_key,
            webhook,
        } = request;
        if let Err(denied) = self.node.rules().check_publish(&channel) {
            return self.reply_error(id, &Refusal::from(&denied));
        }
        if self.node.rules().options(&channel).proxy_publish {
            let backend = self.gate.backend.clone();
            let answer = backend
                .publish(&self.caller(identity), &channel, &data)
                .await;
            let Some(result) = self.decided(Asker::Command(id), None, answer) else {
                return;
            };
            if let Some(replaced) = result.data {
                let limit = self.config.max_message_size;
                if replaced.get().len() > limit {
                    let message = format!(
                        "the backend's data for this publish is larger than the limit ({limit} bytes)"
                    );
                    return self.reply_error(id, &Refusal::new(ErrorCode::BadBackend, message));
                }
                data = replaced;
            }
        }
        let info = self.client_info(identity);
        let node = self.node.clone();
        let data: Arc<serde_json::value::RawValue> = Arc::from(data);
        self.pipeline.push(Box::pin(async move {
            let published = node
                .publish(&channel, data.clone(), info, idempotency_key)
                .await;
            if webhook && published.is_ok() {
                node.published_for_webhook(&channel, &data);
            }
            (id, published)
        }));
    }

    /// Replies to a settled publish.
    pub(super) fn published(&mut self, (id, published): Published) {
        match published {
            Ok(position) => self.reply_ok(
                id,
                &PublishOk {
                    offset: position.offset,
                },
            ),
            Err(err) => {
                let refusal = self.node_failure(err);
                self.reply_error(id, &refusal)
            }
        }
    }

    /// Waits for every publish in flight and replies to each, in order.
    pub(super) async fn settle(&mut self) {
        while let Some(published) = self.pipeline.next().await {
            self.published(published);
        }
    }
}
