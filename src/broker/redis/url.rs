//! `--redis-url` and the `--redis-tls-*` files: the forms Tidings accepts, turned into the
//! Redis clients and their configuration.
//!
//! | URL | Redis |
//! | --- | --- |
//! | `redis://HOST:PORT[/DB]` | one server |
//! | `redis+cluster://HOST:PORT[,HOST:PORT…]` | a Redis Cluster, found from any of the nodes |
//! | `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME` | the primary of `MASTER_NAME`, found (and followed through failovers) by asking the Sentinels |
//!
//! `rediss` instead of `redis` in any of them means TLS. Credentials go before the first host
//! (`redis://:PASSWORD@HOST:PORT`, `redis://USER:PASSWORD@…`).

use std::path::{Path, PathBuf};

use fred::clients::SubscriberClient;
use fred::prelude::{Builder, Client, Config, Error as RedisError, ReconnectPolicy};
use fred::types::config::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::{COMMAND_TIMEOUT, EVENT_BUFFER, MESSAGE_BUFFER, RedisOptions};
use crate::broker::BrokerError;
use crate::config::redact_url;

/// Why `--redis-url` or a TLS file cannot be used. URLs in it are shown without their
/// credentials ([`redact_url`]): these messages reach terminals and logs.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "unsupported Redis URL {0:?}: use redis://HOST:PORT, \
         redis+cluster://HOST:PORT[,HOST:PORT…] or \
         redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME (rediss… for TLS)"
    )]
    Scheme(String),
    #[error("invalid Redis URL {url:?}")]
    Invalid {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis URL {0:?} names no master: use redis+sentinel://HOST:PORT/MASTER_NAME")]
    NoMaster(String),
    #[error("--redis-tls-* files need a TLS URL (rediss://…), not {0:?}")]
    TlsWithoutTls(String),
    #[error("TLS file {file}: {reason}")]
    TlsFile {
        /// `redis-tls-ca`, `redis-tls-cert` or `redis-tls-key`.
        flag: &'static str,
        file: PathBuf,
        reason: String,
    },
}

impl UrlError {
    /// The setting at fault, by its long flag name.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::TlsFile { flag, .. } => flag,
            Self::TlsWithoutTls(_) => "redis-tls-ca",
            Self::Scheme(_) | Self::Invalid { .. } | Self::NoMaster(_) => "redis-url",
        }
    }
}

impl From<UrlError> for BrokerError {
    fn from(err: UrlError) -> Self {
        BrokerError::Internal {
            context: "reading --redis-url",
            source: Box::new(err),
        }
    }
}

/// TLS settings beyond the `rediss` scheme.
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    /// PEM certificates of the authorities to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate chain and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// What kind of deployment a URL names.
enum Topology {
    Single,
    Cluster,
    Sentinel,
}

/// Turns any accepted URL into fred's config, with the TLS files applied.
pub(super) fn redis_config(options: &RedisOptions) -> Result<Config, UrlError> {
    let url = options.url.trim();
    let invalid = |url: &str| {
        let url = redact_url(url);
        move |source| UrlError::Invalid { url, source }
    };
    if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
        return with_tls(Config::from_url(url).map_err(invalid(url))?, url, options);
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| UrlError::Scheme(redact_url(url)))?;
    let (tls, topology) = match scheme {
        "redis" if options.cluster => (false, Topology::Cluster),
        "rediss" if options.cluster => (true, Topology::Cluster),
        "redis" => (false, Topology::Single),
        "rediss" => (true, Topology::Single),
        "redis+cluster" => (false, Topology::Cluster),
        "rediss+cluster" => (true, Topology::Cluster),
        "redis+sentinel" => (false, Topology::Sentinel),
        "rediss+sentinel" => (true, Topology::Sentinel),
        _ => return Err(UrlError::Scheme(redact_url(url))),
    };
    let s = if tls { "s" } else { "" };
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, hosts) = match hosts.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), hosts),
    };
    let mut hosts = hosts.split(',');
    let first = hosts.next().unwrap_or_default();
    let others: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
    let (converted, config) = match topology {
        Topology::Single => {
            let converted = format!("redis{s}://{rest}");
            let config = Config::from_url(&converted);
            (converted, config)
        }
        Topology::Cluster => {
            let converted = with_query(
                format!("redis{s}-cluster://{credentials}{first}/{tail}"),
                &others,
            );
            let config = Config::from_url(&converted);
            (converted, config)
        }
        Topology::Sentinel => {
            let master = tail.split(['/', '?']).next().unwrap_or_default();
            if master.is_empty() {
                return Err(UrlError::NoMaster(redact_url(url)));
            }
            let mut query = others;
            query.insert(0, format!("sentinelServiceName={master}"));
            let converted =
                with_query(format!("redis{s}-sentinel://{credentials}{first}/"), &query);
            let config = Config::from_url_sentinel(&converted);
            (converted, config)
        }
    };
    with_tls(config.map_err(invalid(&converted))?, url, options)
}

/// The command client and the subscriber of `config`, not yet connected: timeouts on every
/// command, no command replayed, reconnecting forever.
pub(super) fn clients(config: Config) -> Result<(Client, SubscriberClient), RedisError> {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
            // Never replay a command after a reconnect: a publish script that ran before the
            // connection dropped would run twice and be stored under two offsets.
            c.max_command_attempts = 1;
            c.tcp.nodelay = Some(true);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Every client preallocates this many slots in each of its nine event channels
            // (messages, errors, reconnects…): the command client receives no messages and
            // needs few.
            p.broadcast_channel_capacity = EVENT_BUFFER;
        })
        // Retry forever: 100 ms doubling to 5 s, with jitter.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    let client = builder.build()?;
    builder.with_performance_config(|p| p.broadcast_channel_capacity = MESSAGE_BUFFER);
    Ok((client, builder.build_subscriber_client()?))
}

fn with_query(mut url: String, pairs: &[String]) -> String {
    if !pairs.is_empty() {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&pairs.join("&"));
    }
    url
}

/// Replaces the system-trusting TLS of a `rediss` URL with the configured files, if any.
fn with_tls(mut config: Config, url: &str, options: &RedisOptions) -> Result<Config, UrlError> {
    if !options.tls.is_set() {
        return Ok(config);
    }
    if config.tls.is_none() {
        return Err(UrlError::TlsWithoutTls(redact_url(url)));
    }
    config.tls = Some(tls_connector(&options.tls)?.into());
    Ok(config)
}

fn tls_connector(tls: &RedisTls) -> Result<TlsConnector, UrlError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(file) => {
            for cert in certificates("redis-tls-ca", file)? {
                roots
                    .add(cert)
                    .map_err(|err| tls_error("redis-tls-ca", file, err))?;
            }
        }
        // The system's roots, as a `rediss` URL without --redis-tls-ca trusts.
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match &tls.client {
        Some((cert, key)) => {
            let chain = certificates("redis-tls-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| tls_error("redis-tls-key", key, err))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| tls_error("redis-tls-cert", cert, err))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(config))
}

/// Every certificate of a PEM file; at least one.
fn certificates(flag: &'static str, file: &Path) -> Result<Vec<CertificateDer<'static>>, UrlError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect())
        .map_err(|err| tls_error(flag, file, err))?;
    if certs.is_empty() {
        return Err(tls_error(flag, file, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn tls_error(flag: &'static str, file: &Path, reason: impl std::fmt::Display) -> UrlError {
    UrlError::TlsFile {
        flag,
        file: file.to_owned(),
        reason: reason.to_string(),
    }
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

    #[test]
    fn sentinel_urls_name_every_sentinel_and_the_master() {
        let config = redis_config(&options(
            "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster",
            false,
        ))
        .unwrap();
        assert_eq!(config.server.hosts().len(), 2);
        assert_eq!(config.password.as_deref(), Some("pw"));
        match &config.server {
            fred::types::config::ServerConfig::Sentinel { service_name, .. } => {
                assert_eq!(service_name, "mymaster");
            }
            other => panic!("not a sentinel config: {other:?}"),
        }
        assert!(config.tls.is_none());
        let tls = redis_config(&options("rediss+sentinel://127.0.0.1:26379/m", false)).unwrap();
        assert!(tls.tls.is_some());
        assert!(matches!(
            redis_config(&options("redis+sentinel://127.0.0.1:26379", false)),
            Err(UrlError::NoMaster(_))
        ));
    }

    #[test]
    fn malformed_urls_are_reported_without_their_password() {
        for url in [
            ":hunter2@127.0.0.1:6379",
            "http://:hunter2@127.0.0.1:6379",
            "redis+sentinel://:hunter2@127.0.0.1:26379",
        ] {
            let err = redis_config(&options(url, false)).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("***@127.0.0.1"), "{err}");
        }
    }

    #[test]
    fn tls_files_need_a_tls_url_and_readable_pem() {
        let mut with_ca = options("redis://127.0.0.1:6379", false);
        with_ca.tls.ca = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            redis_config(&with_ca),
            Err(UrlError::TlsWithoutTls(_))
        ));
        with_ca.url = "rediss://127.0.0.1:6379".into();
        let err = redis_config(&with_ca).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
