//! The settings of the app's backend in the loop: the proxies' URLs and forwarded headers, the
//! webhook's URL and secret, and the namespace options that need them.

use super::{ConfigError, Namespaces, ProxySettings, ServeArgs, WebhookSettings};

/// Shortest webhook secret, in bytes: HMAC-SHA256's block of entropy.
const MIN_WEBHOOK_SECRET: usize = 32;

impl ServeArgs {
    pub(super) fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            connect: self.proxy_connect.clone(),
            subscribe: self.proxy_subscribe.clone(),
            publish: self.proxy_publish.clone(),
            refresh: self.proxy_refresh.clone(),
            rpc: self.proxy_rpc.clone(),
            timeout: self.proxy_timeout,
            headers: self.proxy_headers.clone(),
            max_message_size: self.max_message_size,
        }
    }

    pub(super) fn webhook_settings(&self) -> Option<WebhookSettings> {
        Some(WebhookSettings {
            url: self.webhook_url.clone()?,
            secret: self.webhook_secret.clone()?,
            offline_grace: self.webhook_offline_grace,
            queue: super::QueueBound {
                events: self.webhook_queue_events,
                bytes: self.webhook_queue_bytes,
            },
        })
    }

    /// The backend's URLs, the headers named for it, and the webhook's secret.
    pub(super) fn check_proxy(&self) -> Result<(), ConfigError> {
        if self.proxy_timeout.is_zero() {
            return Err(ConfigError::Zero {
                flag: "proxy-timeout",
            });
        }
        for (url, flag) in [
            (&self.proxy_connect, "proxy-connect"),
            (&self.proxy_subscribe, "proxy-subscribe"),
            (&self.proxy_publish, "proxy-publish"),
            (&self.proxy_refresh, "proxy-refresh"),
            (&self.proxy_rpc, "proxy-rpc"),
            (&self.webhook_url, "webhook-url"),
        ] {
            if let Some(url) = url {
                check_http_url(flag, url)?;
            }
        }
        let token = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !self.proxy_headers.iter().all(|name| token(name.trim())) {
            return Err(ConfigError::Invalid {
                flag: "proxy-header",
                reason: "must be HTTP header names (e.g. Cookie, X-Session)",
            });
        }
        // Half of the queue is the room of channel events: some of each kind must fit.
        if self.webhook_queue_events < 2 {
            return Err(ConfigError::Invalid {
                flag: "webhook-queue-events",
                reason: "must be at least 2 (channel events may use half of it)",
            });
        }
        if self.webhook_queue_bytes < 4096 {
            return Err(ConfigError::Invalid {
                flag: "webhook-queue-bytes",
                reason: "must be at least 4KiB (an event takes a few hundred bytes)",
            });
        }
        match (&self.webhook_url, &self.webhook_secret) {
            (Some(_), None) => Err(ConfigError::Invalid {
                flag: "webhook-url",
                reason: "needs --webhook-secret: webhooks are always signed",
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                flag: "webhook-secret",
                reason: "is only used with --webhook-url",
            }),
            (Some(_), Some(secret)) if secret.expose().len() < MIN_WEBHOOK_SECRET => {
                Err(ConfigError::Invalid {
                    flag: "webhook-secret",
                    reason: "must be at least 32 bytes long",
                })
            }
            _ => Ok(()),
        }
    }

    /// Namespace options that call the backend need its URL.
    pub(super) fn check_namespaces_backend(
        &self,
        namespaces: &Namespaces,
    ) -> Result<(), ConfigError> {
        for options in namespaces.all() {
            if options.proxy_subscribe && self.proxy_subscribe.is_none() {
                return Err(ConfigError::Invalid {
                    flag: "namespace",
                    reason: "proxy-subscribe=true needs --proxy-subscribe URL",
                });
            }
            if options.proxy_publish && self.proxy_publish.is_none() {
                return Err(ConfigError::Invalid {
                    flag: "namespace",
                    reason: "proxy-publish=true needs --proxy-publish URL",
                });
            }
            if options.receipts.is_some() && self.webhook_url.is_none() {
                return Err(ConfigError::Invalid {
                    flag: "namespace",
                    reason: "receipts=DURATION needs --webhook-url (undelivered events are webhooks)",
                });
            }
        }
        Ok(())
    }
}

/// An absolute http(s) URL with a host, parsed as the HTTP client will parse it, so that what
/// it would refuse at the first call is refused at start instead.
pub(super) fn check_http_url(flag: &'static str, text: &str) -> Result<(), ConfigError> {
    if !text.starts_with("http://") && !text.starts_with("https://") {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be an http:// or https:// URL",
        });
    }
    let refused = |reason: String| ConfigError::Url {
        flag,
        url: super::redact_url(text),
        reason,
    };
    let url = url::Url::parse(text).map_err(|err| refused(err.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refused("it names no host".into()));
    }
    Ok(())
}
