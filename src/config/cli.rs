//! The command line: every flag with its `TIDINGS_*` environment twin, as clap reads them.
//! [`ServeArgs::into_config`] turns them into the validated [`Config`](super::Config).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::origin::Origins;
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
    Serve(Box<ServeArgs>),
    /// Check or write a configuration file (`--config FILE`).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE without starting: exit 0 when the server would accept it, exit 2 with a
    /// message naming the file and the key (or the variable) when not. Every check of a start
    /// runs — key and TLS files are read, URLs and addresses parsed — except the network's.
    /// Flags do not apply; `TIDINGS_*` environment variables do, as they would for the server.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print a complete configuration file: every setting, commented out at its default.
    Example,
    /// Print the reference of every setting as Markdown (docs/config.md).
    #[command(hide = true)]
    Reference,
}

impl Cli {
    /// The server settings, whichever form the command line took.
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(CliCommand::Serve(args)) => *args,
            Some(CliCommand::Config(_)) | None => self.serve,
        }
    }
}

/// Settings of `tidings serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// TOML file of settings: every flag below is a key of the same name (`max-queue-size =
    /// "1MiB"`), namespaces are tables (`[namespace.room]`). Flags and environment variables
    /// override the file; `tidings config example` prints a complete one.
    #[arg(long, env = "TIDINGS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on, HOST:PORT. Port 0 picks a free port; the address actually bound
    /// is printed as `listening on ADDR`.
    #[arg(
        value_name = "ADDR",
        long,
        env = "TIDINGS_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: String,

    /// This node's name on the admin page and in the server API's answers, beside its id
    /// (1 to 64 characters). Default: the host name.
    #[arg(value_name = "NAME", long, env = "TIDINGS_NODE_NAME")]
    pub node_name: Option<String>,

    /// Serve `/ws/echo`, which echoes every message through the same WebSocket stack as `/ws`
    /// with a 16 MiB limit: the route the conformance suite runs against. Off by default.
    #[arg(long, env = "TIDINGS_ENABLE_ECHO", value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_echo: bool,

    /// Largest WebSocket message a client may send, in bytes (suffixes KiB, MiB accepted),
    /// counted inflated when it came compressed. A larger one closes the connection with 1009.
    #[arg(value_name = "SIZE", long, env = "TIDINGS_MAX_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Bytes that may wait in one connection's outgoing queue. A client that reads so slowly
    /// that its queue passes this is closed with 4000 (slow consumer) and should reconnect.
    #[arg(value_name = "SIZE", long, env = "TIDINGS_MAX_QUEUE_SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_queue_size: usize,

    /// Compress publications (permessage-deflate, RFC 7692) for WebSocket clients that offer
    /// it: each publication is compressed once per node and shared by every subscriber. A
    /// namespace's `compression=false` opts its channels out (`compression=true` opts them in
    /// without this flag).
    #[arg(long, env = "TIDINGS_COMPRESSION", value_parser = clap::builder::BoolishValueParser::new())]
    pub compression: bool,

    /// Publications smaller than this go out uncompressed (too small to gain).
    #[arg(value_name = "SIZE", long, env = "TIDINGS_COMPRESSION_MIN_SIZE", default_value = "256", value_parser = parse_size)]
    pub compression_min_size: usize,

    /// Channels one connection may subscribe to at the same time.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_MAX_SUBSCRIPTIONS",
        default_value_t = 1024
    )]
    pub max_subscriptions: usize,

    /// How often the server sends `{"ping":{}}` to each client (e.g. 25s, 500ms).
    #[arg(value_name = "DURATION", long, env = "TIDINGS_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long after a ping the server waits for any frame before closing with 4001.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_PONG_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,

    /// Use Redis as the broker, so that several nodes share channels, offsets and history:
    /// `redis://HOST:PORT[/DB]`, `redis+cluster://HOST:PORT[,HOST:PORT…]` for a Redis Cluster,
    /// or `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER` for the primary that Sentinel
    /// names; `rediss://`, `rediss+cluster://`, `rediss+sentinel://` for TLS. A password goes
    /// before the first host (`redis://:PASSWORD@HOST:PORT`) and is never shown in messages.
    /// Without it, the in-memory broker serves this process alone.
    #[arg(value_name = "URL", long, env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Treat --redis-url as a node of a Redis Cluster (sharded pub/sub; keys hash-tagged per
    /// channel). Implied by a `redis+cluster://` URL.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,

    /// Prefix of every Redis key and pub/sub channel, so deployments can share one Redis.
    #[arg(
        value_name = "PREFIX",
        long,
        env = "TIDINGS_REDIS_PREFIX",
        default_value = "tidings"
    )]
    pub redis_prefix: String,

    /// How often each node publishes a heartbeat through Redis pub/sub and checks that its own
    /// come back; three missed in a row make the node not ready and reconnect its subscriber.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_REDIS_CANARY_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_canary_interval: Duration,

    /// Replicas that must confirm each publication before it is acknowledged (Redis `WAIT`), so
    /// that a failover cannot lose an acknowledged publish; 0: the primary's word is enough.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_REDIS_REPLICA_ACKS",
        default_value_t = 0
    )]
    pub redis_replica_acks: u32,

    /// With a `rediss://` URL: the PEM file of the certificate authorities that sign Redis's
    /// certificate (default: the system's).
    #[arg(value_name = "FILE", long, env = "TIDINGS_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// With a `rediss://` URL: a PEM client certificate (chain) for Redis servers that require
    /// one (`tls-auth-clients yes`); needs --redis-tls-key.
    #[arg(value_name = "FILE", long, env = "TIDINGS_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<PathBuf>,

    /// The PEM private key of --redis-tls-cert.
    #[arg(value_name = "FILE", long, env = "TIDINGS_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<PathBuf>,

    /// Publications kept per channel for history and recovery (0 disables history).
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_HISTORY_SIZE",
        default_value_t = 100
    )]
    pub history_size: usize,

    /// History is dropped once a channel has had no publication for this long.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_HISTORY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// How long a channel's position (offset and epoch) outlives its last publication. After
    /// that the channel starts again at offset 1 in a new epoch.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_POSITION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub position_ttl: Duration,

    /// On SIGINT/SIGTERM, how long to wait for connections to finish their close handshake.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// On SIGTERM/SIGINT the node stops accepting and closes its connections with 1001 spread
    /// evenly over this window, so clients do not all reconnect elsewhere at once (0s: all at
    /// once); --shutdown-timeout then bounds their close handshakes. A second signal ends the
    /// process at once.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_DRAIN_WINDOW", default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// Secret for HS256 connection and subscription tokens (at least 32 bytes).
    #[arg(
        value_name = "SECRET",
        long,
        env = "TIDINGS_TOKEN_HMAC_SECRET",
        hide_env_values = true
    )]
    pub token_hmac_secret: Option<Secret>,

    /// PEM public key for RS256 (RSA), ES256 (P-256) or EdDSA (Ed25519) tokens; repeatable.
    /// The environment variable takes a comma-separated list.
    #[arg(
        value_name = "FILE",
        long,
        env = "TIDINGS_TOKEN_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub token_public_key: Vec<PathBuf>,

    /// JWKS file (`{"keys":[...]}`) of public keys; a token's `kid` picks its key.
    #[arg(value_name = "FILE", long, env = "TIDINGS_TOKEN_JWKS")]
    pub token_jwks: Option<PathBuf>,

    /// Clock skew tolerated on a token's `exp` and `nbf`.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_TOKEN_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub token_leeway: Duration,

    /// Require this `aud` claim in every token.
    #[arg(value_name = "AUD", long, env = "TIDINGS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Require this `iss` claim in every token.
    #[arg(value_name = "ISS", long, env = "TIDINGS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Let connections without a token in (they pick a display name; `authenticated` is
    /// false). Default: on when neither a token key nor --proxy-connect is configured.
    #[arg(value_name = "BOOL", long, env = "TIDINGS_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,

    /// Rules for channels without a namespace and in namespaces not listed with --namespace:
    /// `subscribe=anyone|authenticated|token|user,publish=true|false,history-size=N,
    /// history-ttl=DUR,presence=true|false,join-leave=false|true|client|user,
    /// join-leave-limit=N,join-leave-batch=DUR,proxy-subscribe=true|false,
    /// proxy-publish=true|false,receipts=DUR,compression=true|false` (defaults: no presence;
    /// joins and leaves one by one up to 1000 present connections, then one batch a second;
    /// the backend decides nothing; no receipts; compression as --compression says).
    /// `proxy-subscribe` and `proxy-publish` need their --proxy-* URL; `receipts` is for
    /// personal namespaces (`subscribe=user`) and needs --webhook-url.
    #[arg(
        value_name = "RULES",
        long,
        env = "TIDINGS_CHANNEL_RULE",
        default_value = "subscribe=anyone,publish=true"
    )]
    pub channel_rule: String,

    /// Rules of one namespace, `NAME:key=value,…` (keys as in --channel-rule); repeatable.
    /// Unless listed, `user` is personal (`user:<id>` readable only by user `<id>`, no client
    /// publishing) and `chat` has presence with per-user joins and leaves
    /// (`presence=true,join-leave=user`). The environment variable takes a `;`-separated list.
    #[arg(
        value_name = "NAME:RULES",
        long = "namespace",
        env = "TIDINGS_NAMESPACES",
        value_delimiter = ';'
    )]
    pub namespaces: Vec<String>,

    /// Origin allowed to open WebSockets and streams from a browser (e.g.
    /// `https://chat.example.com`), or `*` for any; repeatable. By default only pages served
    /// from the same host may connect; clients that send no Origin (non-browsers) are always
    /// allowed. Origins let in only by `*` connect as anyone: their CORS answers are a literal
    /// `*` without credentials, and their cookies are never forwarded to the backend.
    #[arg(
        value_name = "ORIGIN",
        long,
        env = "TIDINGS_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,

    /// Publishes per second one connection may make on average; more get error 112.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_PUBLISH_RATE",
        default_value_t = 1000
    )]
    pub publish_rate: u32,

    /// Publishes one connection may make in a burst above --publish-rate.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_PUBLISH_BURST",
        default_value_t = 1000
    )]
    pub publish_burst: u32,

    /// Commands of any kind per second one connection may send on average; more get error
    /// 112. A client refused more than the burst size within 10 seconds is closed with 4004.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_COMMAND_RATE",
        default_value_t = 2000
    )]
    pub command_rate: u32,

    /// Commands one connection may send in a burst above --command-rate.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_COMMAND_BURST",
        default_value_t = 2000
    )]
    pub command_burst: u32,

    /// WebSocket connections this node holds at once (0: no limit); more are closed with 1013.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Connections one authenticated user may hold on this node (0: no limit); more are
    /// closed with 1008.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_MAX_CONNECTIONS_PER_USER",
        default_value_t = 100
    )]
    pub max_connections_per_user: usize,

    /// Connections one client IP address may hold on this node (0: no limit); more are
    /// closed with 1008. Behind a proxy every client has the proxy's address: raise it or
    /// set 0 there.
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_MAX_CONNECTIONS_PER_IP",
        default_value_t = 10_000
    )]
    pub max_connections_per_ip: usize,

    /// Time a new TCP connection has to send its HTTP request headers, and a WebSocket that
    /// must authenticate with `connect` has to do so; after it the connection is dropped
    /// (closed with 1008 for WebSockets).
    #[arg(value_name = "DURATION", long, env = "TIDINGS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Time an HTTP request has to send its whole body once its headers have arrived; a
    /// request whose body is slower gets 408.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// A connection subscribed to nothing that sends no command for this long is closed
    /// with 4500 (0s: never).
    #[arg(value_name = "DURATION", long, env = "TIDINGS_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long a node's presence entries outlive its last refresh (it refreshes every quarter
    /// of this): the members of a node that died without a goodbye leave presence — with a
    /// `leave` push each — within this plus a quarter.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_PRESENCE_TTL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// A Pusher Channels app, `APP_ID:KEY:SECRET` (repeatable): Pusher clients connect at
    /// `/app/KEY`. The environment variable takes a `;`-separated list.
    #[arg(
        value_name = "APP_ID:KEY:SECRET",
        long = "pusher-app",
        env = "TIDINGS_PUSHER_APPS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub pusher_apps: Vec<String>,

    /// Where Pusher apps' webhooks (channel_occupied/vacated, member_added/removed,
    /// client_event, cache_miss) are POSTed in Pusher's format, each signed with its app's key
    /// and secret (`X-Pusher-Key`, `X-Pusher-Signature`).
    #[arg(value_name = "URL", long, env = "TIDINGS_PUSHER_WEBHOOK_URL")]
    pub pusher_webhook_url: Option<String>,

    /// Key of the server HTTP API (`/api/...`), sent as `Authorization: apikey KEY`; at least
    /// 16 bytes. Without it the API is off.
    #[arg(
        value_name = "KEY",
        long,
        env = "TIDINGS_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,

    /// The app's backend decides connections that come without a token (from the forwarded
    /// headers, e.g. its session cookie): Tidings POSTs each to this URL (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_PROXY_CONNECT")]
    pub proxy_connect: Option<String>,

    /// The app's backend handles `rpc` commands: Tidings POSTs each to this URL
    /// (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_PROXY_RPC")]
    pub proxy_rpc: Option<String>,

    /// The app's backend decides subscriptions to channels of namespaces with
    /// `proxy-subscribe=true`: Tidings POSTs each to this URL (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_PROXY_SUBSCRIBE")]
    pub proxy_subscribe: Option<String>,

    /// The app's backend decides (and may rewrite) client publishes to channels of namespaces
    /// with `proxy-publish=true`: Tidings POSTs each to this URL (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_PROXY_PUBLISH")]
    pub proxy_publish: Option<String>,

    /// The app's backend extends connections that would expire (their token's or the connect
    /// proxy's `expire_at`): Tidings POSTs to this URL shortly before (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_PROXY_REFRESH")]
    pub proxy_refresh: Option<String>,

    /// How long a call to the app's backend may take before the client gets error 502.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_PROXY_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub proxy_timeout: Duration,

    /// A request header of the client's WebSocket handshake (e.g. Cookie) copied into every
    /// call to the backend; only the headers named are ever forwarded.
    #[arg(
        value_name = "NAME",
        long = "proxy-header",
        env = "TIDINGS_PROXY_HEADER",
        value_delimiter = ','
    )]
    pub proxy_headers: Vec<String>,

    /// Where lifecycle events (channel occupied/vacated, member added/removed, user
    /// online/offline, undelivered) are POSTed, signed with --webhook-secret (docs/backend.md).
    #[arg(value_name = "URL", long, env = "TIDINGS_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// The key webhook bodies are signed with (HMAC-SHA256, header `Tidings-Signature`); at
    /// least 32 bytes.
    #[arg(
        value_name = "SECRET",
        long,
        env = "TIDINGS_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,

    /// A user is reported offline only after having no connection on any node for this long:
    /// a page reload is not an offline.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_WEBHOOK_OFFLINE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_offline_grace: Duration,

    /// Webhook events that may wait to be sent (while the receiver is slow or down), at most;
    /// channel events (which any client can cause) at most half. Past it events are dropped
    /// and counted (`tidings_webhook_events_dropped_total{reason="queue_full"}`).
    #[arg(
        value_name = "N",
        long,
        env = "TIDINGS_WEBHOOK_QUEUE_EVENTS",
        default_value = "10000"
    )]
    pub webhook_queue_events: usize,

    /// Bytes of webhook events that may wait to be sent, at most (suffixes KiB, MiB
    /// accepted); channel events at most half. In Redis when the nodes share one.
    #[arg(value_name = "SIZE", long, env = "TIDINGS_WEBHOOK_QUEUE_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub webhook_queue_bytes: usize,

    /// How long a publish's idempotency key is remembered: a retry with the same key within
    /// it is answered with the first publication's offset and stored once.
    #[arg(value_name = "DURATION", long, env = "TIDINGS_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,

    /// Serve `/metrics` (Prometheus text format) on this address, HOST:PORT, instead of
    /// beside the other routes: keeps it off a public listener.
    #[arg(value_name = "ADDR", long, env = "TIDINGS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `tidings=debug`). Without it
    /// (and without TIDINGS_LOG) `RUST_LOG` applies, and without that `info`. No level prints
    /// tokens or keys: the WebSocket library's frame dumps (trace) are never logged.
    #[arg(value_name = "FILTER", long, env = "TIDINGS_LOG")]
    pub log: Option<String>,

    /// Log lines as readable text (`text`) or as one JSON object per line (`json`).
    #[arg(
        value_name = "FORMAT",
        long,
        env = "TIDINGS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Where each value came from (a flag, a variable, a key of the file), so that a mistake
    /// is reported where it was made; filled by [`parse_command_line`](super::parse_command_line).
    #[arg(skip)]
    pub origins: Origins,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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

/// Why a size setting cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size like 65536, 64KiB or 1MiB")]
    Number(String),
    #[error("unknown size unit {0:?}; use B, KiB, MiB or GiB")]
    Unit(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `65536`, `64KiB`, `64kb`, `1MiB`, `2mb` (binary units either way).
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| SizeError::Number(text.to_owned()))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(SizeError::Unit(other.to_owned())),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}
