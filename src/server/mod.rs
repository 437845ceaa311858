//! Wiring and lifecycle: builds the broker, hub, node and router, serves them, and shuts down
//! in order. The only module that names concrete brokers.
//!
//! The accept loop is ours rather than `axum::serve`, for two things it lacks: a deadline on
//! reading request headers (a client that opens TCP connections and sends nothing must not
//! hold them forever) and the peer address for the per-IP connection cap.
//!
//! Shutdown: stop accepting, tell every session to close with 1001, wait for their close
//! handshakes (bounded by `--shutdown-timeout`), then return so the process exits 0.

mod accept;
mod streaming;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use accept::{TcpTimeouts, serve};

use crate::api::{self, AppState};
use crate::auth::{KeyError, Verifier};
use crate::backend::Backend;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, RedisOptions, RedisTls, UrlError};
use crate::broker::{Broker, BrokerError, Retention};
use crate::config::{Config, SessionSettings};
use crate::limits::{AddressBudgets, Admission, Rate};
use crate::node::{Local, Node};
use crate::presence::PresenceStore;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::session::{Gate, SessionConfig};
use crate::webhook::memory::MemoryLifecycle;
use crate::webhook::redis::RedisLifecycle;
use crate::webhook::{
    Debounce, Destination, Destinations, Lifecycle, LifecycleStore, PusherDestination, QueueBound,
    SETTLE,
};

/// The process's panic hook: one `error` event per panic, in the same log as everything else,
/// naming the client when a session panicked (the session then closes with 1011 and releases
/// what it held: see `session::run`).
pub fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    match crate::session::current_client() {
        Some(client) => tracing::error!(
            %client,
            panic = message,
            %location,
            backtrace,
            "session panicked; its connection closes with 1011 and its subscriptions are released"
        ),
        None => tracing::error!(panic = message, %location, backtrace, "panicked"),
    }
}

/// Why the server stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the broker")]
    Broker(#[source] BrokerError),
    #[error("cannot load the token keys")]
    Keys(#[source] KeyError),
    #[error("cannot use the Redis settings")]
    Redis(#[source] UrlError),
    #[error("cannot listen on {0} for metrics")]
    MetricsListen(String, #[source] std::io::Error),
    #[error("cannot set up calls to the backend")]
    Backend(#[source] crate::backend::SettingsError),
}

impl ServerError {
    /// The setting at fault, by its long flag name, when the settings are to blame rather than
    /// the machine or the network: what makes the process exit 2 instead of 1.
    pub fn settings_flag(&self) -> Option<&'static str> {
        match self {
            Self::Keys(err) => Some(err.flag()),
            Self::Redis(err) => Some(err.flag()),
            Self::Broker(err) => RedisBroker::settings_flag(err),
            Self::MetricsListen(..) | Self::Backend(_) => None,
        }
    }
}

/// The settings checked against this machine: key files read, the Redis URL and TLS files
/// loaded, the backend's client made. No network is touched: `tidings config check` runs
/// this, and a start runs it before anything else.
#[derive(Debug)]
pub struct Prepared {
    config: Config,
    verifier: Option<Verifier>,
    backend: Backend,
    webhook: Option<Destination>,
    redis: Option<RedisOptions>,
}

impl Prepared {
    /// The address to listen on (`--listen`).
    pub fn listen(&self) -> &str {
        &self.config.listen
    }
}

/// See [`Prepared`].
pub fn prepare(config: Config) -> Result<Prepared, ServerError> {
    let verifier = Verifier::load(&config.tokens).map_err(ServerError::Keys)?;
    let redis = config.redis.as_ref().map(|redis| RedisOptions {
        url: redis.url.clone(),
        cluster: redis.cluster,
        prefix: redis.prefix.clone(),
        canary_interval: redis.canary_interval,
        replica_acks: redis.replica_acks,
        tls: RedisTls {
            ca: redis.tls_ca.clone(),
            client: redis.tls_client.clone(),
        },
    });
    if let Some(options) = &redis {
        RedisBroker::check(options).map_err(ServerError::Redis)?;
    }
    let backend = Backend::new(&config.proxy).map_err(ServerError::Backend)?;
    let webhook = match &config.webhook {
        // The URL was parsed when the settings were read; this is the same parser.
        Some(webhook) => Some(Destination {
            url: reqwest::Url::parse(&webhook.url).map_err(|err| {
                ServerError::Backend(crate::backend::SettingsError::new(format!(
                    "--webhook-url: {err}"
                )))
            })?,
            secret: webhook.secret.clone(),
        }),
        None => None,
    };
    Ok(Prepared {
        config,
        verifier,
        backend,
        webhook,
        redis,
    })
}

/// Everything the server needs before it accepts connections: keys read, broker connected.
#[derive(Debug)]
pub struct Server {
    app: Router,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    lifecycle: Option<Arc<Lifecycle>>,
    stopping: CancellationToken,
    connections: TaskTracker,
    /// `--metrics-listen`: `/metrics` on an address of its own.
    metrics_listener: Option<TcpListener>,
    session: Arc<SessionConfig>,
    config: Config,
}

impl Server {
    /// [`prepare`]s the settings and [`start`](Self::start)s.
    pub async fn build(config: Config) -> Result<Self, ServerError> {
        Self::start(prepare(config)?).await
    }

    /// Connects the broker and binds the metrics listener: what can fail is found out before
    /// the process says it is listening. A Redis that is down is no failure: the node starts
    /// not ready.
    pub async fn start(prepared: Prepared) -> Result<Self, ServerError> {
        let Prepared {
            config,
            verifier,
            backend,
            webhook,
            redis,
        } = prepared;
        let retention = Retention {
            history_size: config.history.size,
            history_ttl: config.history.ttl,
            position_ttl: config.position_ttl,
        };
        let local = Local::new(Arc::new(config.namespaces.clone()));
        let (broker, presence, lifecycle_store) =
            brokers(&config, redis, &local, retention).await?;
        let apps = pusher_apps(&config.pusher_apps);
        let lifecycle = lifecycle(&config, webhook, &apps, lifecycle_store)?;
        let node = Node::new(
            config.node_name.clone(),
            local,
            broker.clone(),
            presence.clone(),
            config.idempotency_window,
            lifecycle.clone(),
        );
        let stopping = CancellationToken::new();
        tokio::spawn({
            let (node, stopping) = (node.clone(), stopping.clone());
            async move { node.announce_until(stopping).await }
        });
        let connections = TaskTracker::new();
        let metrics_listener = metrics_listener(&config).await?;
        let session = Arc::new(session_config(
            &config.session,
            config.max_message_size,
            config.shutdown_timeout,
            config.drain_window,
        ));
        let rates = Arc::new(api::admin::Rates::default());
        if config.api_key.is_some() {
            tokio::spawn(rates.clone().sample_until(stopping.clone()));
        }
        let state = AppState {
            node,
            session: session.clone(),
            gate: Arc::new(Gate {
                verifier,
                allow_anonymous: config.allow_anonymous,
                backend: Arc::new(backend),
            }),
            admission: Admission::new(config.caps),
            stream_budgets: Arc::new(AddressBudgets::new(
                u32::try_from(config.max_message_size).unwrap_or(u32::MAX),
            )),
            allowed_origins: config.allowed_origins.clone().into(),
            api_key: config.api_key.clone(),
            max_message_size: config.max_message_size,
            compression: config.namespaces.any_compression(),
            body_timeout: config.body_timeout,
            shutdown: stopping.clone(),
            connections: connections.clone(),
            broker_kind: broker_kind(&config),
            rates: rates.clone(),
            pusher_apps: apps,
        };
        Ok(Self {
            app: api::router(state, config.enable_echo, metrics_listener.is_none()),
            metrics_listener,
            broker,
            presence,
            lifecycle,
            stopping,
            connections,
            session,
            config,
        })
    }

    /// Serves `listener` until `shutdown` resolves, then closes every connection and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let Self {
            app,
            broker,
            presence,
            lifecycle,
            stopping,
            connections,
            metrics_listener,
            session,
            config,
        } = self;
        let drain_window = config.drain_window;
        let signal = {
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                tracing::info!(
                    ?drain_window,
                    "shutting down: no new connections; closing the open ones over the drain window"
                );
                let _ = session.drain_started.set(tokio::time::Instant::now());
                stopping.cancel();
            }
        };
        tokio::spawn(signal);
        let timeouts = TcpTimeouts {
            header: config.session.handshake_timeout,
            unacknowledged: config.session.ping_interval + config.session.pong_timeout,
        };
        // The listeners stay open while the sessions drain, so that probes hear "not ready"
        // (and new WebSockets "shutting down") rather than find the port closed.
        let closed = CancellationToken::new();
        if let Some(listener) = metrics_listener {
            let closed = closed.clone();
            tokio::spawn(async move {
                let http = serve(listener, api::metrics_router(), timeouts, closed).await;
                http.close();
            });
        }
        let accepting = tokio::spawn(serve(listener, app, timeouts, closed.clone()));

        stopping.cancelled().await;
        connections.close();
        let deadline = tokio::time::Instant::now() + drain_window + config.shutdown_timeout;
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "connections still open at the shutdown deadline; dropping them"
            );
        }
        closed.cancel();
        if let Ok(http) = accepting.await {
            http.close();
            // Plain HTTP requests in flight get what is left of the same deadline.
            let _ = tokio::time::timeout_at(deadline, http.wait()).await;
        }
        // Sessions removed their members as they closed; the store's refreshes can stop.
        presence.close().await;
        if let Some(lifecycle) = lifecycle {
            lifecycle.close().await;
        }
        broker.close().await;
        tracing::info!("stopped");
    }
}

/// What the admin page calls the broker.
fn broker_kind(config: &Config) -> &'static str {
    if config.redis.is_some() {
        "redis"
    } else {
        "memory"
    }
}

/// A node on the memory broker and presence store with default namespaces: what tests of
/// the layers above the node (the session) run on, so that only this module names a broker.
#[cfg(test)]
pub(crate) fn memory_node() -> Node {
    let local = Local::new(Arc::new(crate::config::Namespaces::default()));
    let broker = Arc::new(MemoryBroker::new(local.clone(), Retention::default()));
    let presence = Arc::new(MemoryPresence::new(local.clone()));
    let name = "test".to_owned();
    Node::new(
        name,
        local,
        broker,
        presence,
        Duration::from_secs(300),
        None,
    )
}

/// The sessions' settings, from the plain ones.
fn session_config(
    settings: &SessionSettings,
    max_message_size: usize,
    shutdown_timeout: Duration,
    drain_window: Duration,
) -> SessionConfig {
    SessionConfig {
        max_queue_size: settings.max_queue_size,
        max_message_size,
        max_subscriptions: settings.max_subscriptions,
        ping_interval: settings.ping_interval,
        pong_timeout: settings.pong_timeout,
        write_timeout: settings.pong_timeout,
        close_timeout: Duration::from_secs(2).min(shutdown_timeout),
        publish_rate: Rate::new(settings.publish_rate, settings.publish_burst),
        command_rate: Rate::new(settings.command_rate, settings.command_burst),
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        drain_window,
        drain_started: Arc::default(),
    }
}

/// The listener of `--metrics-listen`, if set.
async fn metrics_listener(config: &Config) -> Result<Option<TcpListener>, ServerError> {
    let Some(address) = &config.metrics_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|err| ServerError::MetricsListen(address.clone(), err))?;
    Ok(Some(listener))
}

/// The lifecycle (webhooks and receipts) the settings ask for, on its store.
fn lifecycle(
    config: &Config,
    native: Option<Destination>,
    apps: &Arc<[Arc<crate::pusher::App>]>,
    store: Arc<dyn LifecycleStore>,
) -> Result<Option<Arc<Lifecycle>>, ServerError> {
    let pusher = match &config.pusher_webhook_url {
        // Checked when the settings were read; this is the same parser.
        Some(url) => Some(PusherDestination {
            url: reqwest::Url::parse(url).map_err(|err| {
                ServerError::Backend(crate::backend::SettingsError::new(format!(
                    "--pusher-webhook-url: {err}"
                )))
            })?,
            apps: apps.clone(),
        }),
        None => None,
    };
    let destinations = Destinations { native, pusher };
    if !destinations.any() {
        return Ok(None);
    }
    let client = crate::backend::http_client().map_err(ServerError::Backend)?;
    Ok(Some(Lifecycle::start(store, destinations, client)))
}

/// The broker, presence store and lifecycle store the settings ask for: in memory, or on
/// Redis.
async fn brokers(
    config: &Config,
    redis: Option<RedisOptions>,
    local: &Arc<Local>,
    retention: Retention,
) -> Result<
    (
        Arc<dyn Broker>,
        Arc<dyn PresenceStore>,
        Arc<dyn LifecycleStore>,
    ),
    ServerError,
> {
    let debounce = Debounce {
        // A channel is vacated just after its last member is removed, not before.
        channel: SETTLE + Duration::from_millis(10),
        member: SETTLE,
        user: config
            .webhook
            .as_ref()
            .map_or(SETTLE, |webhook| webhook.offline_grace),
    };
    let queue = config
        .webhook
        .as_ref()
        .map_or_else(QueueBound::default, |webhook| webhook.queue);
    if redis.is_none() {
        // One process: nothing between publishers and subscribers can fail.
        crate::metrics::metrics().broker.up.set(1);
    }
    Ok(match redis {
        None => (
            Arc::new(MemoryBroker::new(local.clone(), retention)),
            Arc::new(MemoryPresence::new(local.clone())),
            Arc::new(MemoryLifecycle::new(debounce, queue)),
        ),
        Some(options) => {
            let broker = RedisBroker::connect(options, local.clone(), retention)
                .await
                .map_err(ServerError::Broker)?;
            let presence = RedisPresence::new(broker.shared(), config.presence_ttl);
            let lifecycle = RedisLifecycle::new(broker.shared(), broker.node_id(), debounce, queue);
            (Arc::new(broker), Arc::new(presence), Arc::new(lifecycle))
        }
    })
}

/// The Pusher apps as the routes hold them.
fn pusher_apps(apps: &[crate::config::PusherApp]) -> Arc<[Arc<crate::pusher::App>]> {
    apps.iter()
        .map(|app| {
            Arc::new(crate::pusher::App {
                id: app.id.as_str().into(),
                key: app.key.clone(),
                secret: crate::pusher::sign::Secret::new(app.secret.clone()),
            })
        })
        .collect()
}
