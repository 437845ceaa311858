//! `--redis-url`: the forms Tidings accepts, turned into the Redis client's configuration.

use fred::prelude::{Config, Error as RedisError};

use super::RedisOptions;
use crate::broker::BrokerError;

/// Why `--redis-url` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "unsupported Redis URL {0:?}: use redis://HOST:PORT or \
         redis+cluster://HOST:PORT[,HOST:PORT…] (TLS is not supported yet)"
    )]
    Scheme(String),
    #[error("invalid Redis URL {url:?}")]
    Invalid {
        url: String,
        #[source]
        source: RedisError,
    },
}

impl From<UrlError> for BrokerError {
    fn from(err: UrlError) -> Self {
        BrokerError::Internal {
            context: "reading --redis-url",
            source: Box::new(err),
        }
    }
}

/// Turns `redis+cluster://h1:p1,h2:p2` (or `redis://…` with `cluster`) into fred's config.
pub(super) fn redis_config(options: &RedisOptions) -> Result<Config, UrlError> {
    let url = options.url.trim();
    let invalid = |url: &str| {
        let url = url.to_owned();
        move |source| UrlError::Invalid { url, source }
    };
    let (cluster, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis://") {
        (options.cluster, rest)
    } else if url.starts_with("redis-cluster://") {
        return Config::from_url(url).map_err(invalid(url));
    } else {
        return Err(UrlError::Scheme(url.to_owned()));
    };
    let url = if cluster {
        let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let mut hosts = hosts.split(',');
        let first = hosts.next().unwrap_or_default();
        let mut url = format!("redis-cluster://{first}/{tail}");
        let others: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
        if !others.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&others.join("&"));
        }
        url
    } else {
        format!("redis://{rest}")
    };
    Config::from_url(&url).map_err(invalid(&url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str, cluster: bool) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            cluster,
            prefix: "t".into(),
            ..RedisOptions::default()
        }
    }

    #[test]
    fn cluster_urls_name_every_node() {
        let config = redis_config(&options(
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            false,
        ))
        .unwrap();
        assert!(config.server.is_clustered());
        assert_eq!(config.server.hosts().len(), 2);
        let config = redis_config(&options("redis://127.0.0.1:7000", true)).unwrap();
        assert!(config.server.is_clustered());
        let config = redis_config(&options("redis://127.0.0.1:6379", false)).unwrap();
        assert!(!config.server.is_clustered());
        assert!(redis_config(&options("http://nope", false)).is_err());
    }
}
