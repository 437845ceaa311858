//! `--pusher-app`: the Pusher Channels apps served beside the native protocol.

use super::ConfigError;

/// One Pusher Channels app: its id (in the HTTP API's paths), its key (in the WebSocket's)
/// and the secret both sign with.
#[derive(Clone, PartialEq, Eq)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PusherApp {
    pub(super) fn parse_all(texts: &[String]) -> Result<Vec<Self>, ConfigError> {
        let apps: Vec<Self> = texts
            .iter()
            .map(|app| Self::parse(app))
            .collect::<Result<_, _>>()?;
        for (n, app) in apps.iter().enumerate() {
            if apps[..n]
                .iter()
                .any(|other| other.id == app.id || other.key == app.key)
            {
                return Err(ConfigError::Invalid {
                    flag: "pusher-app",
                    reason: "names an APP_ID or KEY twice",
                });
            }
        }
        Ok(apps)
    }

    /// `APP_ID:KEY:SECRET`: id and key of letters, digits, `_` and `-` (1 to 64), the secret
    /// anything but empty (it may hold `:`).
    fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::Invalid {
            flag: "pusher-app",
            reason,
        };
        let mut parts = text.splitn(3, ':');
        let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("must be APP_ID:KEY:SECRET"));
        };
        let word = |w: &str| {
            (1..=64).contains(&w.len())
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !word(id) || !word(key) {
            return Err(invalid(
                "APP_ID and KEY must be 1 to 64 letters, digits, _ or -",
            ));
        }
        if secret.is_empty() {
            return Err(invalid("SECRET must not be empty"));
        }
        Ok(Self {
            id: id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// `--pusher-app` and `--pusher-webhook-url` (an http(s) URL, for the apps configured).
pub(super) fn settings(
    cli: &super::cli::ServeArgs,
) -> Result<(Vec<PusherApp>, Option<String>), ConfigError> {
    let apps = PusherApp::parse_all(&cli.pusher_apps)?;
    Ok((
        apps,
        webhook_url(cli.pusher_webhook_url.clone(), !cli.pusher_apps.is_empty())?,
    ))
}

fn webhook_url(url: Option<String>, apps: bool) -> Result<Option<String>, ConfigError> {
    let Some(url) = url else {
        return Ok(None);
    };
    if !apps {
        return Err(ConfigError::Invalid {
            flag: "pusher-webhook-url",
            reason: "is only used with --pusher-app",
        });
    }
    super::backend::check_http_url("pusher-webhook-url", &url)?;
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_is_id_key_and_a_secret_that_may_hold_colons() {
        let apps = PusherApp::parse_all(&["1:app-key:se:cret".into(), "2:k2:s".into()]).unwrap();
        assert_eq!(
            (apps[0].id.as_str(), apps[0].key.as_str()),
            ("1", "app-key")
        );
        assert_eq!(apps[0].secret, "se:cret");
        assert!(
            !format!("{:?}", apps[0]).contains("cret"),
            "the secret stays out of logs"
        );
        for bad in ["1:key", "1:key:", ":key:s", "1 2:key:s", "1:k/y:s", ""] {
            assert!(PusherApp::parse_all(&[bad.into()]).is_err(), "{bad:?}");
        }
        let twice = ["1:a:s".into(), "1:b:s".into()];
        assert!(PusherApp::parse_all(&twice).is_err());
        let same_key = ["1:a:s".into(), "2:a:s".into()];
        assert!(PusherApp::parse_all(&same_key).is_err());
    }
}
