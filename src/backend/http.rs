//! HTTP plumbing of calls to the backend and webhooks: one pooled client that follows no
//! redirect, answers read up to a bound, error texts without URLs.

use std::time::Duration;

use super::{BackendError, SettingsError};

/// What to add to a status that is a redirect: it is not followed, on purpose.
pub(crate) fn redirect_note(status: u16) -> &'static str {
    if (300..400).contains(&status) {
        " (a redirect, which is never followed: configure the final URL)"
    } else {
        ""
    }
}

/// A pooled HTTP client (keep-alive; HTTP/2 where TLS negotiates it) trusting the system's CAs,
/// that follows no redirect: only the configured URL is believed.
pub(crate) fn http_client() -> Result<reqwest::Client, SettingsError> {
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .tls_built_in_root_certs(false);
    for cert in rustls_native_certs::load_native_certs().certs {
        if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
            client = client.add_root_certificate(cert);
        }
    }
    client.build().map_err(|err| SettingsError(err.to_string()))
}

/// Reads a whole answer, failing as soon as it is longer than `limit` (a `Content-Length` that
/// says so fails before anything is read).
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BackendError> {
    let too_long = || BackendError::Garbage(format!("the answer is longer than {limit} bytes"));
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| BackendError::Unreachable(without_url(&err)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's message without the URL (whose query could hold a secret).
pub(crate) fn without_url(err: &reqwest::Error) -> String {
    let mut text = String::from(if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
