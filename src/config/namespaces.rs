//! Namespaces: everything configured per namespace (who may subscribe and publish, how much
//! history the channels keep), and the `NAME:key=value,…` rules that set it.

use std::collections::HashMap;
use std::time::Duration;

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
