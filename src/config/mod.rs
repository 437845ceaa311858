//! Configuration: every flag and its `TIDINGS_*` environment twin, validated once into plain
//! settings ([`Config`]). A leaf: it knows no other module but the wire's [`Secret`]; `server`
//! turns these settings into the session, broker, auth and limit configurations.
//!
//! Precedence: flags > environment > the configuration file (`file`) > defaults. Nothing
//! else in the crate reads the environment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::Secret;

mod backend;
mod cli;
mod reference;
mod file;
mod namespaces;
mod origin;
mod pusher;

pub use cli::{Cli, CliCommand, ConfigCommand, LogFormat, ServeArgs, SizeError, parse_size};
pub use file::{FileError, Invocation, check_file, parse_command_line};
pub use namespaces::{
    CHAT_NAMESPACE, Compression, DEFAULT_JOIN_LEAVE_BATCH, DEFAULT_JOIN_LEAVE_LIMIT,
    HistorySettings, JoinLeave, NamespaceError, NamespaceOptions, Namespaces, PERSONAL_NAMESPACE,
    SubscribeRule, parse_namespace,
};
pub use origin::{Origin, Origins, stray_environment};
pub use pusher::PusherApp;
pub use reference::{example, reference};

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
    // The rule's own error follows as the source: the chain printed says it once.
    #[error("--{flag}")]
    Namespace {
        flag: &'static str,
        #[source]
        source: NamespaceError,
    },
    #[error("--{flag} {reason}")]
    Invalid {
        flag: &'static str,
        reason: &'static str,
    },
    #[error("--api-key must be at least 16 bytes long")]
    ShortApiKey,
    #[error("--namespace {0} is given twice")]
    DuplicateNamespace(String),
    #[error(
        "--allow-anonymous=false with no token key: nobody could connect; configure \
         --token-hmac-secret, --token-public-key, --token-jwks or --proxy-connect"
    )]
    NobodyCanConnect,
    #[error(
        "--{flag} {value:?} is not an address to listen on: use HOST:PORT (127.0.0.1:8000, \
         0.0.0.0:8000, [::]:8000; port 0 picks a free one)"
    )]
    Address { flag: &'static str, value: String },
    /// `url` is shown without its password.
    #[error("--{flag} {url:?} is not a usable URL: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: String,
    },
    /// `from` is `--log` (or its variable, or the file's key) or `RUST_LOG`.
    #[error("{from} {filter:?} is not a log filter: {reason}")]
    LogFilter {
        from: &'static str,
        filter: String,
        reason: String,
    },
}

/// The machine's host name, as the kernel has it; `tidings` where it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().chars().take(64).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tidings".into())
}

impl ConfigError {
    /// The setting the mistake is about, by its long flag name; `None` when it is no single
    /// setting's (a filter from `RUST_LOG`).
    pub fn flag(&self) -> Option<&'static str> {
        Some(match self {
            Self::Zero { flag }
            | Self::TooLong { flag }
            | Self::Namespace { flag, .. }
            | Self::Invalid { flag, .. }
            | Self::Address { flag, .. }
            | Self::Url { flag, .. } => flag,
            Self::QueueSmallerThanMessage { .. } => "max-queue-size",
            Self::ShortApiKey => "api-key",
            Self::DuplicateNamespace(_) => "namespace",
            Self::NobodyCanConnect => "allow-anonymous",
            Self::LogFilter { from, .. } => return (*from == "--log").then_some("log"),
        })
    }
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
    pub canary_interval: Duration,
    pub replica_acks: u32,
    /// For `rediss://`: the CA file and the client certificate and key, when given.
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// Where the app's backend is called, for what, and with which of the client's headers.
#[derive(Clone, Debug, Default)]
pub struct ProxySettings {
    pub connect: Option<String>,
    pub subscribe: Option<String>,
    pub publish: Option<String>,
    pub refresh: Option<String>,
    pub rpc: Option<String>,
    pub timeout: Duration,
    pub headers: Vec<String>,
    /// The largest publication data (`--max-message-size`): what bounds the backend's answers.
    pub max_message_size: usize,
}

/// Where lifecycle events go, and how they are signed.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Secret,
    /// A user is offline after this long without a connection anywhere.
    pub offline_grace: Duration,
    /// How much the event queue may hold.
    pub queue: QueueBound,
}

/// How much the webhook's event queue may hold (`--webhook-queue-events`,
/// `--webhook-queue-bytes`); channel events get at most half of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBound {
    pub events: usize,
    pub bytes: usize,
}

impl Default for QueueBound {
    fn default() -> Self {
        Self {
            events: 10_000,
            bytes: 4 << 20,
        }
    }
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
    /// `--node-name`, or the host name.
    pub node_name: String,
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
    /// How long presence entries outlive their node's last refresh.
    pub presence_ttl: Duration,
    /// Origins allowed besides the server's own host; `*` allows any.
    pub allowed_origins: Vec<String>,
    pub caps: ConnectionCaps,
    pub body_timeout: Duration,
    /// `None`: the server API is off.
    pub api_key: Option<Secret>,
    /// Pusher Channels apps served beside the native protocol.
    pub pusher_apps: Vec<PusherApp>,
    /// Where Pusher apps' webhooks go; `None`: nowhere.
    pub pusher_webhook_url: Option<String>,
    /// Calls to the app's backend.
    pub proxy: ProxySettings,
    /// `None`: no webhooks.
    pub webhook: Option<WebhookSettings>,
    pub idempotency_window: Duration,
    /// On SIGTERM, open connections close spread over this window.
    pub drain_window: Duration,
    /// `None`: `/metrics` is served beside the other routes.
    pub metrics_listen: Option<String>,
}

impl ServeArgs {
    /// Checks the settings against each other and builds the server's configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.check()?;
        let history = HistorySettings {
            size: self.history_size,
            ttl: self.history_ttl,
        };
        let namespaces = namespaces(&self.channel_rule, &self.namespaces, history)?
            .with_compression(Compression {
                enabled: self.compression,
                min_size: self.compression_min_size,
            });
        self.check_namespaces_backend(&namespaces)?;
        let (proxy, webhook) = (self.proxy_settings(), self.webhook_settings());
        let (pusher_apps, pusher_webhook_url) = pusher::settings(&self)?;
        let tokens = TokenSettings {
            hmac_secret: self.token_hmac_secret,
            public_keys: self.token_public_key,
            jwks: self.token_jwks,
            leeway: self.token_leeway,
            audience: self.token_audience,
            issuer: self.token_issuer,
        };
        // With a connect proxy the backend decides: a connection it refuses must not get in
        // anonymously by default.
        let other_way_in = tokens.has_keys() || self.proxy_connect.is_some();
        let allow_anonymous = self.allow_anonymous.unwrap_or(!other_way_in);
        if !allow_anonymous && !other_way_in {
            return Err(ConfigError::NobodyCanConnect);
        }
        Ok(Config {
            node_name: self.node_name.unwrap_or_else(host_name),
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
                canary_interval: self.redis_canary_interval,
                replica_acks: self.redis_replica_acks,
                tls_ca: self.redis_tls_ca,
                tls_client: self.redis_tls_cert.zip(self.redis_tls_key),
            }),
            shutdown_timeout: self.shutdown_timeout,
            tokens,
            allow_anonymous,
            namespaces,
            presence_ttl: self.presence_ttl,
            allowed_origins: self.allowed_origin,
            caps: ConnectionCaps {
                total: self.max_connections,
                per_user: self.max_connections_per_user,
                per_ip: self.max_connections_per_ip,
            },
            body_timeout: self.body_timeout,
            api_key: self.api_key,
            pusher_apps,
            pusher_webhook_url,
            proxy,
            webhook,
            idempotency_window: self.idempotency_window,
            metrics_listen: self.metrics_listen,
            drain_window: self.drain_window,
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
        self.check_addresses()?;
        self.check_log_filter()?;
        self.check_redis()?;
        self.check_proxy()?;
        if self.presence_ttl < std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                flag: "presence-ttl",
                reason: "must be at least 1s",
            });
        }
        for (value, flag) in [
            (self.ping_interval, "ping-interval"),
            (self.pong_timeout, "pong-timeout"),
            (self.history_ttl, "history-ttl"),
            (self.position_ttl, "position-ttl"),
            (self.shutdown_timeout, "shutdown-timeout"),
            (self.drain_window, "drain-window"),
            (self.redis_canary_interval, "redis-canary-interval"),
            (self.token_leeway, "token-leeway"),
            (self.handshake_timeout, "handshake-timeout"),
            (self.body_timeout, "body-timeout"),
            (self.idle_timeout, "idle-timeout"),
            (self.idempotency_window, "idempotency-window"),
            (self.presence_ttl, "presence-ttl"),
            (self.proxy_timeout, "proxy-timeout"),
            (self.webhook_offline_grace, "webhook-offline-grace"),
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
        if self.node_name.as_ref().is_some_and(|name| {
            !(1..=64).contains(&name.chars().count()) || name.chars().any(char::is_control)
        }) {
            return Err(ConfigError::Invalid {
                flag: "node-name",
                reason: "must be 1 to 64 characters, none of them control characters",
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

    /// `--listen` and `--metrics-listen` are HOST:PORT: what binding would refuse (a bare port,
    /// a missing host) is a settings mistake, found without binding.
    fn check_addresses(&self) -> Result<(), ConfigError> {
        for (flag, value) in [
            ("listen", Some(&self.listen)),
            ("metrics-listen", self.metrics_listen.as_ref()),
        ] {
            let Some(value) = value else { continue };
            if !is_host_and_port(value) {
                return Err(ConfigError::Address {
                    flag,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// The log filter parses, wherever it came from.
    fn check_log_filter(&self) -> Result<(), ConfigError> {
        let filter = self.log_filter();
        let Err(err) = tracing_subscriber::EnvFilter::try_new(&filter) else {
            return Ok(());
        };
        let text = err.to_string();
        // The parser's message repeats itself ("x: y: x: y"): say it once.
        let first = text.split(": ").next().unwrap_or_default();
        let reason = match text[first.len()..].find(first) {
            Some(again) => text[..first.len() + again]
                .trim_end_matches(": ")
                .to_owned(),
            None => text,
        };
        Err(ConfigError::LogFilter {
            from: if self.log.is_some() {
                "--log"
            } else {
                "RUST_LOG"
            },
            filter,
            reason,
        })
    }

    /// The Redis settings that only make sense together.
    fn check_redis(&self) -> Result<(), ConfigError> {
        if self.redis_canary_interval.is_zero() {
            return Err(ConfigError::Zero {
                flag: "redis-canary-interval",
            });
        }
        match (&self.redis_tls_cert, &self.redis_tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    flag: "redis-tls-cert",
                    reason: "needs --redis-tls-key: a client certificate needs its key",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "redis-tls-key",
                    reason: "needs --redis-tls-cert: the key is of a client certificate",
                });
            }
            _ => {}
        }
        let tls_files = self.redis_tls_ca.is_some() || self.redis_tls_cert.is_some();
        if tls_files
            && !self
                .redis_url
                .as_deref()
                .is_some_and(|url| url.trim_start().starts_with("rediss"))
        {
            let flag = if self.redis_tls_ca.is_some() {
                "redis-tls-ca"
            } else {
                "redis-tls-cert"
            };
            return Err(ConfigError::Invalid {
                flag,
                reason: "needs a TLS Redis URL (rediss://… or rediss+sentinel://…)",
            });
        }
        Ok(())
    }
}

/// `HOST:PORT` with a port number and a host (a name, an IPv4 address or a bracketed IPv6 one);
/// whether the name resolves is the network's business.
fn is_host_and_port(value: &str) -> bool {
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && port.parse::<u16>().is_ok()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `url` as it may be shown: whatever stands before its last `@` (the userinfo, with any
/// password) replaced by `***`. Malformed URLs too — they are the ones messages show — so no
/// parser decides what counts as the password.
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = url.find("://").map_or(0, |scheme| scheme + 3);
    if start > at {
        return url.to_owned();
    }
    format!("{}***{}", &url[..start], &url[at..])
}

/// The default rule (`--channel-rule`, over the server-wide history) and every `--namespace`
/// (over the default rule).
fn namespaces(
    channel_rule: &str,
    specs: &[String],
    history: HistorySettings,
) -> Result<Namespaces, ConfigError> {
    let open = NamespaceOptions::open(history);
    let (_, default) =
        parse_namespace(&format!("default:{channel_rule}"), &open).map_err(|source| {
            ConfigError::Namespace {
                flag: "channel-rule",
                source,
            }
        })?;
    let mut by_name = HashMap::new();
    for spec in specs {
        let base = Namespaces::base(
            spec.split_once(':').map_or(&**spec, |(name, _)| name),
            &default,
        );
        let (name, options) =
            parse_namespace(spec, &base).map_err(|source| ConfigError::Namespace {
                flag: "namespace",
                source,
            })?;
        if by_name.insert(name.clone(), options).is_some() {
            return Err(ConfigError::DuplicateNamespace(name));
        }
    }
    Ok(Namespaces::new(default, by_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss+sentinel://user:pw@a:1,b:2/master"),
            "rediss+sentinel://***@a:1,b:2/master"
        );
        assert_eq!(redact_url(":hunter2@127.0.0.1:6379"), "***@127.0.0.1:6379");
        assert_eq!(redact_url("redis://:pa/ss@host:1"), "redis://***@host:1");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for good in ["127.0.0.1:0", "0.0.0.0:8000", "[::]:8000", "localhost:80"] {
            assert!(is_host_and_port(good), "{good}");
        }
        for bad in [
            "8000",
            ":8000",
            "localhost",
            "127.0.0.1:http",
            "a b:80",
            "[::1]",
        ] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
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

    fn config_of(args: &[&str]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("tidings").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap()
            .into_serve_args()
            .into_config()
    }

    #[test]
    fn backend_options_need_their_urls_and_receipts_a_personal_namespace() {
        let config = config_of(&[
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-secret",
            &"s".repeat(32),
            "--namespace",
            "user:receipts=30s",
            "--proxy-subscribe",
            "http://127.0.0.1:9/subscribe",
            "--namespace",
            "room:proxy-subscribe=true",
        ])
        .unwrap();
        // Listing `user` keeps it personal: the rule starts from the built-in one.
        let user = config.namespaces.get(Some(PERSONAL_NAMESPACE));
        assert_eq!(user.subscribe, SubscribeRule::User);
        assert_eq!(user.receipts, Some(Duration::from_secs(30)));
        assert!(config.namespaces.get(Some("room")).proxy_subscribe);
        assert_eq!(
            config.webhook.unwrap().offline_grace,
            Duration::from_secs(10)
        );

        for args in [
            &["--namespace", "room:proxy-publish=true"][..],
            &["--namespace", "user:receipts=30s"],
            &["--webhook-url", "http://h/x", "--webhook-secret", "short"],
            &["--webhook-url", "http://h/x"],
            &["--proxy-refresh", "ftp://h/x"],
        ] {
            assert!(
                matches!(config_of(args), Err(ConfigError::Invalid { .. })),
                "{args:?}"
            );
        }
        let base = Namespaces::default().get(None).clone();
        assert!(matches!(
            parse_namespace("news:receipts=30s", &base),
            Err(NamespaceError::ReceiptsNotPersonal { .. })
        ));
        assert!(matches!(
            parse_namespace("user:receipts=0s", &base),
            Err(NamespaceError::Value { .. })
        ));
    }
}
