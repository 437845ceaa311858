//! Configuration: every flag and its `TIDINGS_*` environment twin, validated once into plain
//! settings ([`Config`]). A leaf: it knows no other module but the wire's [`Secret`]; `server`
//! turns these settings into the session, broker, auth and limit configurations.
//!
//! Precedence: flags > environment > defaults (a config file joins later, between the
//! environment and the defaults). Nothing else in the crate reads the environment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::protocol::Secret;

/// Tidings: a real-time messaging server. Clients hold a WebSocket to `/ws`, subscribe to
/// channels and receive every publication, in order, within milliseconds.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// `tidings` alone means `tidings serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
}

impl Cli {
    /// The server settings, whichever form the command line took.
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(CliCommand::Serve(args)) => args,
            None => self.serve,
        }
    }
}

/// Settings of `tidings serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT. Port 0 picks a free port; the address actually bound
    /// is printed as `listening on ADDR`.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,

    /// Serve `/ws/echo`, which echoes every message through the same WebSocket stack as `/ws`
    /// with a 16 MiB limit: the route the conformance suite runs against. Off by default.
    #[arg(long, env = "TIDINGS_ENABLE_ECHO", value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_echo: bool,

    /// Largest WebSocket message a client may send, in bytes (suffixes KiB, MiB accepted).
    /// A larger one closes the connection with 1009.
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Bytes that may wait in one connection's outgoing queue. A client that reads so slowly
    /// that its queue passes this is closed with 4000 (slow consumer) and should reconnect.
    #[arg(long, env = "TIDINGS_MAX_QUEUE_SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_queue_size: usize,

    /// Channels one connection may subscribe to at the same time.
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,

    /// How often the server sends `{"ping":{}}` to each client (e.g. 25s, 500ms).
    #[arg(long, env = "TIDINGS_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long after a ping the server waits for any frame before closing with 4001.
    #[arg(long, env = "TIDINGS_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,

    /// Use Redis as the broker, so that several nodes share channels, offsets and history:
    /// `redis://HOST:PORT[/DB]`, or `redis+cluster://HOST:PORT[,HOST:PORT…]` for a Redis
    /// Cluster. Without it, the in-memory broker serves this process alone.
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Treat --redis-url as a node of a Redis Cluster (sharded pub/sub; keys hash-tagged per
    /// channel). Implied by a `redis+cluster://` URL.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,

    /// Prefix of every Redis key and pub/sub channel, so deployments can share one Redis.
    #[arg(long, env = "TIDINGS_REDIS_PREFIX", default_value = "tidings")]
    pub redis_prefix: String,

    /// Publications kept per channel for history and recovery (0 disables history).
    #[arg(long, env = "TIDINGS_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// History is dropped once a channel has had no publication for this long.
    #[arg(long, env = "TIDINGS_HISTORY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// How long a channel's position (offset and epoch) outlives its last publication. After
    /// that the channel starts again at offset 1 in a new epoch.
    #[arg(long, env = "TIDINGS_POSITION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub position_ttl: Duration,

    /// On SIGINT/SIGTERM, how long to wait for connections to finish their close handshake.
    #[arg(long, env = "TIDINGS_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Secret for HS256 connection and subscription tokens (at least 32 bytes).
    #[arg(long, env = "TIDINGS_TOKEN_HMAC_SECRET", hide_env_values = true)]
    pub token_hmac_secret: Option<Secret>,

    /// PEM public key for RS256 (RSA), ES256 (P-256) or EdDSA (Ed25519) tokens; repeatable.
    /// The environment variable takes a comma-separated list.
    #[arg(long, env = "TIDINGS_TOKEN_PUBLIC_KEY", value_delimiter = ',')]
    pub token_public_key: Vec<PathBuf>,

    /// JWKS file (`{"keys":[...]}`) of public keys; a token's `kid` picks its key.
    #[arg(long, env = "TIDINGS_TOKEN_JWKS")]
    pub token_jwks: Option<PathBuf>,

    /// Clock skew tolerated on a token's `exp` and `nbf`.
    #[arg(long, env = "TIDINGS_TOKEN_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub token_leeway: Duration,

    /// Require this `aud` claim in every token.
    #[arg(long, env = "TIDINGS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Require this `iss` claim in every token.
    #[arg(long, env = "TIDINGS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Let connections without a token in (they pick a display name; `authenticated` is
    /// false). Default: on when no token key is configured, off otherwise.
    #[arg(long, env = "TIDINGS_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,

    /// Rules for channels without a namespace and in namespaces not listed with --namespace:
    /// `subscribe=anyone|authenticated|token|user,publish=true|false,history-size=N,history-ttl=DUR`.
    #[arg(
        long,
        env = "TIDINGS_CHANNEL_RULE",
        default_value = "subscribe=anyone,publish=true"
    )]
    pub channel_rule: String,

    /// Rules of one namespace, `NAME:key=value,…` (keys as in --channel-rule); repeatable.
    /// `user` is personal (`user:<id>` readable only by user `<id>`, no client publishing)
    /// unless listed. The environment variable takes a `;`-separated list.
    #[arg(long = "namespace", env = "TIDINGS_NAMESPACES", value_delimiter = ';')]
    pub namespaces: Vec<String>,

    /// Origin allowed to open WebSockets from a browser (e.g. `https://chat.example.com`), or
    /// `*` for any; repeatable. By default only pages served from the same host may connect;
    /// clients that send no Origin (non-browsers) are always allowed.
    #[arg(long, env = "TIDINGS_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,

    /// Publishes per second one connection may make on average; more get error 112.
    #[arg(long, env = "TIDINGS_PUBLISH_RATE", default_value_t = 1000)]
    pub publish_rate: u32,

    /// Publishes one connection may make in a burst above --publish-rate.
    #[arg(long, env = "TIDINGS_PUBLISH_BURST", default_value_t = 1000)]
    pub publish_burst: u32,

    /// Commands of any kind per second one connection may send on average; more get error
    /// 112. A client refused more than the burst size within 10 seconds is closed with 4004.
    #[arg(long, env = "TIDINGS_COMMAND_RATE", default_value_t = 2000)]
    pub command_rate: u32,

    /// Commands one connection may send in a burst above --command-rate.
    #[arg(long, env = "TIDINGS_COMMAND_BURST", default_value_t = 2000)]
    pub command_burst: u32,

    /// WebSocket connections this node holds at once (0: no limit); more are closed with 1013.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Connections one authenticated user may hold on this node (0: no limit); more are
    /// closed with 1008.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: usize,

    /// Connections one client IP address may hold on this node (0: no limit); more are
    /// closed with 1008. Behind a proxy every client has the proxy's address: raise it or
    /// set 0 there.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_IP", default_value_t = 10_000)]
    pub max_connections_per_ip: usize,

    /// Time a new TCP connection has to send its HTTP request headers, and a WebSocket that
    /// must authenticate with `connect` has to do so; after it the connection is dropped
    /// (closed with 1008 for WebSockets).
    #[arg(long, env = "TIDINGS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Time an HTTP request has to send its whole body once its headers have arrived; a
    /// request whose body is slower gets 408.
    #[arg(long, env = "TIDINGS_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// A connection subscribed to nothing that sends no command for this long is closed
    /// with 4500 (0s: never).
    #[arg(long, env = "TIDINGS_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Key of the server HTTP API (`/api/...`), sent as `Authorization: apikey KEY`; at least
    /// 16 bytes. Without it the API is off.
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// How long a publish's idempotency key is remembered: a retry with the same key within
    /// it is answered with the first publication's offset and stored once.
    #[arg(long, env = "TIDINGS_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `tidings=debug`). Without it
    /// (and without TIDINGS_LOG) `RUST_LOG` applies, and without that `info`. No level prints
    /// tokens or keys: the WebSocket library's frame dumps (trace) are never logged.
    #[arg(long, env = "TIDINGS_LOG")]
    pub log: Option<String>,
}

impl ServeArgs {
    /// The log filter: `--log`, else `TIDINGS_LOG`, else `RUST_LOG`, else `info`.
    pub fn log_filter(&self) -> String {
        self.log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .filter(|filter| !filter.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned())
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--{flag} must be at most 100 years")]
    TooLong { flag: &'static str },
    #[error(
        "--max-queue-size ({queue} bytes) must be at least --max-message-size ({message}) + 1 KiB"
    )]
    QueueSmallerThanMessage { queue: usize, message: usize },
    #[error("--{flag}: {source}")]
    Namespace {
        flag: &'static str,
        #[source]
        source: NamespaceError,
    },
    #[error("--api-key must be at least 16 bytes long")]
    ShortApiKey,
    #[error("--namespace {0} is given twice")]
    DuplicateNamespace(String),
    #[error(
        "--allow-anonymous=false with no token key: nobody could connect; configure \
         --token-hmac-secret, --token-public-key or --token-jwks"
    )]
    NobodyCanConnect,
}

/// Why a namespace rule (`NAME:key=value,…`) cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "{spec:?}: a namespace rule is NAME:key=value,… with NAME made of letters, digits, _ and -"
    )]
    Name { spec: String },
    #[error("{spec:?}: {pair:?} is not key=value")]
    Pair { spec: String, pair: String },
    #[error("{spec:?}: {key}={value} is not {expected}")]
    Value {
        spec: String,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{spec:?}: unknown key {key:?} (subscribe, publish, history-size, history-ttl)")]
    Key { spec: String, key: String },
}

/// How connections prove who they are: the token keys and how strictly tokens are checked.
#[derive(Clone, Debug, Default)]
pub struct TokenSettings {
    pub hmac_secret: Option<Secret>,
    pub public_keys: Vec<PathBuf>,
    pub jwks: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl TokenSettings {
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }
}

/// Who may subscribe to a namespace's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeRule {
    Anyone,
    /// Connections with a verified token.
    Authenticated,
    /// Connections that present a subscription token for the channel.
    Token,
    /// Personal channels: `<namespace>:<id>` only for the authenticated user `<id>`.
    User,
}

/// How much history a channel keeps: at most `size` publications, dropped once the channel has
/// been quiet for `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySettings {
    pub size: usize,
    pub ttl: Duration,
}

/// Everything configured per namespace: who may do what, and how the channels behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceOptions {
    pub subscribe: SubscribeRule,
    /// Whether clients may publish (the server API always may).
    pub publish: bool,
    pub history: HistorySettings,
}

/// The namespace of personal channels unless configured otherwise.
pub const PERSONAL_NAMESPACE: &str = "user";

/// Per-namespace options, with the default for channels without a namespace or in one nobody
/// configured. `user` is personal unless listed.
#[derive(Clone, Debug)]
pub struct Namespaces {
    default: NamespaceOptions,
    by_name: HashMap<String, NamespaceOptions>,
}

impl Namespaces {
    pub fn new(default: NamespaceOptions, mut by_name: HashMap<String, NamespaceOptions>) -> Self {
        by_name
            .entry(PERSONAL_NAMESPACE.to_owned())
            .or_insert(NamespaceOptions {
                subscribe: SubscribeRule::User,
                publish: false,
                history: default.history,
            });
        Self { default, by_name }
    }

    /// The options of a channel in `namespace` (`None`: a channel without one).
    pub fn get(&self, namespace: Option<&str>) -> &NamespaceOptions {
        namespace
            .and_then(|ns| self.by_name.get(ns))
            .unwrap_or(&self.default)
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new(
            NamespaceOptions {
                subscribe: SubscribeRule::Anyone,
                publish: true,
                history: HistorySettings {
                    size: 100,
                    ttl: Duration::from_secs(600),
                },
            },
            HashMap::new(),
        )
    }
}

/// Parses a namespace rule: `NAME:key=value,…` with keys `subscribe`
/// (`anyone|authenticated|token|user`), `publish` (`true|false`), `history-size` (count) and
/// `history-ttl` (duration). Unset keys take `base`'s values.
pub fn parse_namespace(
    spec: &str,
    base: &NamespaceOptions,
) -> Result<(String, NamespaceOptions), NamespaceError> {
    let (name, rules) = spec.split_once(':').unwrap_or((spec, ""));
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(NamespaceError::Name { spec: spec.into() });
    }
    let mut options = base.clone();
    for pair in rules.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| NamespaceError::Pair {
            spec: spec.into(),
            pair: pair.into(),
        })?;
        let (key, value) = (key.trim(), value.trim());
        let bad = |key: &'static str, expected: &'static str| NamespaceError::Value {
            spec: spec.into(),
            key,
            value: value.into(),
            expected,
        };
        match key {
            "subscribe" => {
                options.subscribe = match value {
                    "anyone" => SubscribeRule::Anyone,
                    "authenticated" => SubscribeRule::Authenticated,
                    "token" => SubscribeRule::Token,
                    "user" => SubscribeRule::User,
                    _ => return Err(bad("subscribe", "anyone, authenticated, token or user")),
                }
            }
            "publish" => {
                options.publish = value.parse().map_err(|_| bad("publish", "true or false"))?
            }
            "history-size" => {
                options.history.size = value.parse().map_err(|_| bad("history-size", "a count"))?
            }
            "history-ttl" => {
                options.history.ttl = humantime::parse_duration(value)
                    .map_err(|_| bad("history-ttl", "a duration like 10m"))?
            }
            other => {
                return Err(NamespaceError::Key {
                    spec: spec.into(),
                    key: other.into(),
                });
            }
        }
    }
    Ok((name.to_owned(), options))
}

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub max_queue_size: usize,
    pub max_subscriptions: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub command_rate: u32,
    pub command_burst: u32,
    /// For the connection to authenticate, and for HTTP request headers.
    pub handshake_timeout: Duration,
    /// `None`: idle connections are never closed.
    pub idle_timeout: Option<Duration>,
}

/// Where Redis is.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` or `redis+cluster://host:port[,host:port…]`.
    pub url: String,
    pub cluster: bool,
    pub prefix: String,
}

/// Caps on open connections; 0 means no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: usize,
    pub per_user: usize,
    pub per_ip: usize,
}

/// Upper bound of what a `pub` push adds to the publisher's data: channel, epoch, info, keys.
const PUSH_OVERHEAD: usize = 1024;

/// The longest duration any setting accepts: 100 years.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Validated settings of a running server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    pub enable_echo: bool,
    pub max_message_size: usize,
    pub session: SessionSettings,
    /// The server-wide history (each namespace's default).
    pub history: HistorySettings,
    /// How long a channel's position outlives its last use.
    pub position_ttl: Duration,
    /// `None`: the in-memory broker.
    pub redis: Option<RedisSettings>,
    pub shutdown_timeout: Duration,
    pub tokens: TokenSettings,
    pub allow_anonymous: bool,
    pub namespaces: Namespaces,
    /// Origins allowed besides the server's own host; `*` allows any.
    pub allowed_origins: Vec<String>,
    pub caps: ConnectionCaps,
    pub body_timeout: Duration,
    /// `None`: the server API is off.
    pub api_key: Option<Secret>,
    pub idempotency_window: Duration,
}

impl ServeArgs {
    /// Checks the settings against each other and builds the server's configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.check()?;
        let tokens = TokenSettings {
            hmac_secret: self.token_hmac_secret,
            public_keys: self.token_public_key,
            jwks: self.token_jwks,
            leeway: self.token_leeway,
            audience: self.token_audience,
            issuer: self.token_issuer,
        };
        let allow_anonymous = self.allow_anonymous.unwrap_or(!tokens.has_keys());
        if !allow_anonymous && !tokens.has_keys() {
            return Err(ConfigError::NobodyCanConnect);
        }
        let history = HistorySettings {
            size: self.history_size,
            ttl: self.history_ttl,
        };
        let namespaces = namespaces(&self.channel_rule, &self.namespaces, history)?;
        Ok(Config {
            listen: self.listen,
            enable_echo: self.enable_echo,
            max_message_size: self.max_message_size,
            session: SessionSettings {
                max_queue_size: self.max_queue_size,
                max_subscriptions: self.max_subscriptions,
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                publish_rate: self.publish_rate,
                publish_burst: self.publish_burst,
                command_rate: self.command_rate,
                command_burst: self.command_burst,
                handshake_timeout: self.handshake_timeout,
                idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            },
            history,
            // A position must outlive the history it numbers.
            position_ttl: self.position_ttl.max(self.history_ttl),
            redis: self.redis_url.map(|url| RedisSettings {
                url,
                cluster: self.redis_cluster,
                prefix: self.redis_prefix,
            }),
            shutdown_timeout: self.shutdown_timeout,
            tokens,
            allow_anonymous,
            namespaces,
            allowed_origins: self.allowed_origin,
            caps: ConnectionCaps {
                total: self.max_connections,
                per_user: self.max_connections_per_user,
                per_ip: self.max_connections_per_ip,
            },
            body_timeout: self.body_timeout,
            api_key: self.api_key,
            idempotency_window: self.idempotency_window,
        })
    }

    /// The checks that need no assembly: zeros, lengths, sizes.
    fn check(&self) -> Result<(), ConfigError> {
        let nonzero = |value: u128, flag| {
            if value == 0 {
                Err(ConfigError::Zero { flag })
            } else {
                Ok(())
            }
        };
        nonzero(self.max_message_size as u128, "max-message-size")?;
        nonzero(self.max_subscriptions as u128, "max-subscriptions")?;
        nonzero(self.ping_interval.as_millis(), "ping-interval")?;
        nonzero(self.pong_timeout.as_millis(), "pong-timeout")?;
        nonzero(self.position_ttl.as_millis(), "position-ttl")?;
        if self.history_size > 0 {
            nonzero(self.history_ttl.as_millis(), "history-ttl")?;
        }
        nonzero(self.publish_rate.into(), "publish-rate")?;
        nonzero(self.publish_burst.into(), "publish-burst")?;
        nonzero(self.command_rate.into(), "command-rate")?;
        nonzero(self.command_burst.into(), "command-burst")?;
        nonzero(self.handshake_timeout.as_millis(), "handshake-timeout")?;
        nonzero(self.body_timeout.as_millis(), "body-timeout")?;
        nonzero(self.idempotency_window.as_millis(), "idempotency-window")?;
        for (value, flag) in [
            (self.ping_interval, "ping-interval"),
            (self.pong_timeout, "pong-timeout"),
            (self.history_ttl, "history-ttl"),
            (self.position_ttl, "position-ttl"),
            (self.shutdown_timeout, "shutdown-timeout"),
            (self.token_leeway, "token-leeway"),
            (self.handshake_timeout, "handshake-timeout"),
            (self.body_timeout, "body-timeout"),
            (self.idle_timeout, "idle-timeout"),
            (self.idempotency_window, "idempotency-window"),
        ] {
            // Far past any use, and short enough that no deadline built from it overflows.
            if value > MAX_DURATION {
                return Err(ConfigError::TooLong { flag });
            }
        }
        // The push of the largest publication (its data plus channel, epoch and info) must fit
        // the queue, or every subscriber would be cut off by one honest publish.
        if self.max_queue_size < self.max_message_size + PUSH_OVERHEAD {
            return Err(ConfigError::QueueSmallerThanMessage {
                queue: self.max_queue_size,
                message: self.max_message_size,
            });
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|key| key.expose().len() < 16)
        {
            return Err(ConfigError::ShortApiKey);
        }
        Ok(())
    }
}

/// The default rule (`--channel-rule`, over the server-wide history) and every `--namespace`
/// (over the default rule).
fn namespaces(
    channel_rule: &str,
    specs: &[String],
    history: HistorySettings,
) -> Result<Namespaces, ConfigError> {
    let open = NamespaceOptions {
        subscribe: SubscribeRule::Anyone,
        publish: true,
        history,
    };
    let (_, default) =
        parse_namespace(&format!("default:{channel_rule}"), &open).map_err(|source| {
            ConfigError::Namespace {
                flag: "channel-rule",
                source,
            }
        })?;
    let mut by_name = HashMap::new();
    for spec in specs {
        let (name, options) =
            parse_namespace(spec, &default).map_err(|source| ConfigError::Namespace {
                flag: "namespace",
                source,
            })?;
        if by_name.insert(name.clone(), options).is_some() {
            return Err(ConfigError::DuplicateNamespace(name));
        }
    }
    Ok(Namespaces::new(default, by_name))
}

/// Parses `65536`, `64KiB`, `64kb`, `1MiB`, `2mb` (binary units either way).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 65536, 64KiB or 1MiB"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 mb"), Ok(2 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn bare_tidings_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["tidings"]).unwrap();
        let config = cli.into_serve_args().into_config().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8000");
        assert_eq!(config.max_message_size, 64 * 1024);
        assert!(!config.enable_echo);
        let cli = Cli::try_parse_from(["tidings", "serve", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(cli.into_serve_args().listen, "127.0.0.1:0");
    }

    #[test]
    fn contradictory_limits_are_refused() {
        let cli = Cli::try_parse_from([
            "tidings",
            "--max-queue-size",
            "1KiB",
            "--max-message-size",
            "64KiB",
        ])
        .unwrap();
        assert!(cli.into_serve_args().into_config().is_err());
    }

    #[test]
    fn namespace_specs_parse_over_their_base() {
        let base = Namespaces::default().get(None).clone();
        let (name, options) = parse_namespace(
            "news:subscribe=authenticated,publish=false,history-size=5",
            &base,
        )
        .unwrap();
        assert_eq!(name, "news");
        assert_eq!(options.subscribe, SubscribeRule::Authenticated);
        assert!(!options.publish);
        assert_eq!(options.history.size, 5);
        assert_eq!(options.history.ttl, base.history.ttl, "inherited");
        assert!(matches!(
            parse_namespace("news:subscribe=nobody", &base),
            Err(NamespaceError::Value {
                key: "subscribe",
                ..
            })
        ));
        assert!(matches!(
            parse_namespace("bad name:publish=true", &base),
            Err(NamespaceError::Name { .. })
        ));
        assert!(matches!(
            parse_namespace("news:colour=blue", &base),
            Err(NamespaceError::Key { .. })
        ));
    }

    #[test]
    fn namespaces_inherit_the_server_wide_history_and_user_is_personal() {
        let cli = Cli::try_parse_from([
            "tidings",
            "--history-size",
            "7",
            "--namespace",
            "news:history-ttl=1m",
        ])
        .unwrap();
        let config = cli.into_serve_args().into_config().unwrap();
        let news = config.namespaces.get(Some("news"));
        assert_eq!(
            news.history,
            HistorySettings {
                size: 7,
                ttl: Duration::from_secs(60)
            }
        );
        assert_eq!(config.namespaces.get(Some("other")).history.size, 7);
        let user = config.namespaces.get(Some(PERSONAL_NAMESPACE));
        assert_eq!((user.subscribe, user.publish), (SubscribeRule::User, false));
    }
}
