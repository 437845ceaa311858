//! Namespaces: everything configured per namespace (who may subscribe and publish, how much
//! history the channels keep, presence and its join/leave pushes), and the
//! `NAME:key=value,…` rules that set it.

use std::collections::HashMap;
use std::time::Duration;

use crate::pusher::channel::{NAMESPACE as PUSHER, PRESENCE_NAMESPACE as PUSHER_PRESENCE};

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
    #[error(
        "{spec:?}: unknown key {key:?} (subscribe, publish, history-size, history-ttl, presence, \
         join-leave, join-leave-limit, join-leave-batch, proxy-subscribe, proxy-publish, receipts, \
         compression)"
    )]
    Key { spec: String, key: String },
    #[error("{spec:?}: join-leave needs presence=true")]
    JoinLeaveWithoutPresence { spec: String },
    #[error("{spec:?}: receipts are for personal channels: they need subscribe=user")]
    ReceiptsNotPersonal { spec: String },
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

/// Which presence changes are pushed to a channel's subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinLeave {
    Off,
    /// Every connection's join and leave.
    Client,
    /// A user's first connection (join) and last (leave), as "who is online" lists want.
    User,
}

/// Everything configured per namespace: who may do what, and how the channels behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceOptions {
    pub subscribe: SubscribeRule,
    /// Whether clients may publish (the server API always may).
    pub publish: bool,
    pub history: HistorySettings,
    /// Subscribers are present in the channel (`presence`, `presence_stats`).
    pub presence: bool,
    pub join_leave: JoinLeave,
    /// Above this many present connections, joins and leaves are coalesced (or suppressed).
    pub join_leave_limit: u64,
    /// How often coalesced joins and leaves go out; zero suppresses them above the limit.
    pub join_leave_batch: Duration,
    /// The app's backend decides client subscriptions (`--proxy-subscribe`).
    pub proxy_subscribe: bool,
    /// The app's backend decides, and may rewrite, client publishes (`--proxy-publish`).
    pub proxy_publish: bool,
    /// Personal channels whose publications must be acknowledged within this long, or the
    /// backend hears `undelivered`.
    pub receipts: Option<Duration>,
    /// Whether publications go out compressed (permessage-deflate) to connections that
    /// agreed to it; `None`: as `--compression` says.
    pub compression: Option<bool>,
}

impl NamespaceOptions {
    /// Anyone may subscribe and publish; no presence; joins and leaves at their defaults.
    pub fn open(history: HistorySettings) -> Self {
        Self {
            subscribe: SubscribeRule::Anyone,
            publish: true,
            history,
            presence: false,
            join_leave: JoinLeave::Off,
            join_leave_limit: DEFAULT_JOIN_LEAVE_LIMIT,
            join_leave_batch: DEFAULT_JOIN_LEAVE_BATCH,
            proxy_subscribe: false,
            proxy_publish: false,
            receipts: None,
            compression: None,
        }
    }
}

/// The namespace of personal channels unless configured otherwise.
pub const PERSONAL_NAMESPACE: &str = "user";
/// The chat page's namespace: presence and per-user joins and leaves unless configured
/// otherwise.
pub const CHAT_NAMESPACE: &str = "chat";
/// Joins and leaves pushed one by one up to this many present connections.
pub const DEFAULT_JOIN_LEAVE_LIMIT: u64 = 1000;
/// Above the limit, one batch of joins and leaves per this interval.
pub const DEFAULT_JOIN_LEAVE_BATCH: Duration = Duration::from_secs(1);

/// Per-namespace options, with the default for channels without a namespace or in one nobody
/// configured. `user` is personal and `chat` has presence unless listed.
#[derive(Clone, Debug)]
pub struct Namespaces {
    default: NamespaceOptions,
    by_name: HashMap<String, NamespaceOptions>,
    compression: Compression,
}

/// permessage-deflate, server-wide: `--compression` and `--compression-min-size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compression {
    /// Namespaces without a `compression=` of their own compress.
    pub enabled: bool,
    /// Publications smaller than this go uncompressed: too small to gain.
    pub min_size: usize,
}

impl Namespaces {
    pub fn new(default: NamespaceOptions, mut by_name: HashMap<String, NamespaceOptions>) -> Self {
        for name in [PERSONAL_NAMESPACE, CHAT_NAMESPACE, PUSHER, PUSHER_PRESENCE] {
            by_name
                .entry(name.to_owned())
                .or_insert_with(|| Self::base(name, &default));
        }
        Self {
            default,
            by_name,
            compression: Compression::default(),
        }
    }

    /// With `--compression` and `--compression-min-size`.
    pub fn with_compression(self, compression: Compression) -> Self {
        Self {
            compression,
            ..self
        }
    }

    /// The size from which publications of `namespace` go out compressed; `None`: never.
    pub fn compress_from(&self, namespace: Option<&str>) -> Option<usize> {
        let on = self
            .get(namespace)
            .compression
            .unwrap_or(self.compression.enabled);
        on.then_some(self.compression.min_size)
    }

    /// Whether any channel compresses, so that connections agree to permessage-deflate.
    pub fn any_compression(&self) -> bool {
        self.all()
            .any(|options| options.compression.unwrap_or(self.compression.enabled))
    }

    /// What a namespace starts from before its own rule: `user` is personal and `chat` has
    /// presence, over the default rule; any other namespace is the default rule.
    pub fn base(name: &str, default: &NamespaceOptions) -> NamespaceOptions {
        match name {
            PERSONAL_NAMESPACE => NamespaceOptions {
                subscribe: SubscribeRule::User,
                publish: false,
                presence: false,
                join_leave: JoinLeave::Off,
                ..default.clone()
            },
            CHAT_NAMESPACE => NamespaceOptions {
                presence: true,
                join_leave: JoinLeave::User,
                ..default.clone()
            },
            // Pusher's own rules apply on its wire (signatures, client events on signed
            // channels only); native clients never reach these namespaces. A cache channel
            // needs its last event kept.
            PUSHER | PUSHER_PRESENCE => NamespaceOptions {
                subscribe: SubscribeRule::Anyone,
                publish: true,
                history: HistorySettings {
                    size: default.history.size.max(1),
                    ..default.history
                },
                presence: name == PUSHER_PRESENCE,
                join_leave: if name == PUSHER_PRESENCE {
                    JoinLeave::User
                } else {
                    JoinLeave::Off
                },
                proxy_subscribe: false,
                proxy_publish: false,
                receipts: None,
                ..default.clone()
            },
            _ => default.clone(),
        }
    }

    /// Every namespace's options, the default's included.
    pub fn all(&self) -> impl Iterator<Item = &NamespaceOptions> {
        std::iter::once(&self.default).chain(self.by_name.values())
    }

    /// The options of a channel in `namespace` (`None`: a channel without one).
    /// The namespace as metrics label it: a configured one by name, any other `default`, so
    /// that clients cannot grow a label's values.
    pub fn label<'a>(&'a self, namespace: Option<&str>) -> &'a str {
        namespace
            .and_then(|ns| self.by_name.get_key_value(ns))
            .map_or("default", |(name, _)| name.as_str())
    }

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
                presence: false,
                join_leave: JoinLeave::Off,
                join_leave_limit: DEFAULT_JOIN_LEAVE_LIMIT,
                join_leave_batch: DEFAULT_JOIN_LEAVE_BATCH,
                proxy_subscribe: false,
                proxy_publish: false,
                receipts: None,
                compression: None,
            },
            HashMap::new(),
        )
    }
}

/// Parses a namespace rule: `NAME:key=value,…` with keys `subscribe`
/// (`anyone|authenticated|token|user`), `publish` (`true|false`), `history-size` (count),
/// `history-ttl` (duration), `presence` (`true|false`), `join-leave`
/// (`false|true|client|user`; `true` is `client`), `join-leave-limit` (count) and
/// `join-leave-batch` (duration; `0s` suppresses), `proxy-subscribe` and `proxy-publish`
/// (`true|false`), `receipts` (duration, or `false`) and `compression` (`true|false`). Unset
/// keys take `base`'s values.
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
        set(&mut options, spec, key.trim(), value.trim())?;
    }
    if options.join_leave != JoinLeave::Off && !options.presence {
        return Err(NamespaceError::JoinLeaveWithoutPresence { spec: spec.into() });
    }
    if options.receipts.is_some() && options.subscribe != SubscribeRule::User {
        return Err(NamespaceError::ReceiptsNotPersonal { spec: spec.into() });
    }
    Ok((name.to_owned(), options))
}

/// Sets one `key=value` of the rule `spec`.
fn set(
    options: &mut NamespaceOptions,
    spec: &str,
    key: &str,
    value: &str,
) -> Result<(), NamespaceError> {
    let bad = |key: &'static str, expected: &'static str| NamespaceError::Value {
        spec: spec.into(),
        key,
        value: value.into(),
        expected,
    };
    let flag = |key| value.parse::<bool>().map_err(|_| bad(key, "true or false"));
    let count = |key| value.parse::<u64>().map_err(|_| bad(key, "a count"));
    let duration = |key, example| humantime::parse_duration(value).map_err(|_| bad(key, example));
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
        "publish" => options.publish = flag("publish")?,
        "history-size" => {
            options.history.size = value.parse().map_err(|_| bad("history-size", "a count"))?
        }
        "history-ttl" => options.history.ttl = duration("history-ttl", "a duration like 10m")?,
        "presence" => options.presence = flag("presence")?,
        "join-leave" => {
            options.join_leave = match value {
                "false" => JoinLeave::Off,
                "true" | "client" => JoinLeave::Client,
                "user" => JoinLeave::User,
                _ => return Err(bad("join-leave", "true, false, client or user")),
            }
        }
        "join-leave-limit" => options.join_leave_limit = count("join-leave-limit")?,
        "join-leave-batch" => {
            options.join_leave_batch = duration("join-leave-batch", "a duration like 1s")?
        }
        "proxy-subscribe" => options.proxy_subscribe = flag("proxy-subscribe")?,
        "proxy-publish" => options.proxy_publish = flag("proxy-publish")?,
        "compression" => options.compression = Some(flag("compression")?),
        "receipts" => {
            let expected = "a duration like 30s, or false";
            options.receipts = match value {
                "false" | "off" => None,
                _ => Some(duration("receipts", expected)?)
                    .filter(|within| !within.is_zero())
                    .map(Some)
                    .ok_or_else(|| bad("receipts", expected))?,
            }
        }
        other => {
            return Err(NamespaceError::Key {
                spec: spec.into(),
                key: other.into(),
            });
        }
    }
    Ok(())
}
