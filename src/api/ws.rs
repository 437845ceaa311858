//! WebSocket endpoints: `/ws` (protocol v1, one [`session`] per connection) and `/ws/echo`
//! (the conformance route: echoes every message through the same stack).
//!
//! Before upgrading, `/ws` checks the browser's `Origin` (cross-site WebSocket hijacking) and
//! takes the connection's place under the caps. The token travels on to the session, which
//! verifies it and closes with 1008 when it is bad: a browser sees a close code and reason,
//! never the body of an HTTP error.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::backend::Forwarded;
use crate::protocol::{CloseCode, Secret};
use crate::session::{self, Handshake, Inbound, Outgoing, Start};
use crate::transport::ws::{Received, SocketSettings, Upgrade};

/// The echo route's message limit: large enough for the conformance suite's biggest cases.
const ECHO_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    name: Option<String>,
    token: Option<Secret>,
}

/// `GET /ws`: upgrades to a protocol v1 session.
pub async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<ConnectParams>,
    upgrade: Upgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let trust = match check_origin(&headers, &state.allowed_origins) {
        Ok(trust) => trust,
        Err(origin) => {
            tracing::info!(%peer, origin, "WebSocket from a foreign origin refused");
            return (
                StatusCode::FORBIDDEN,
                format!("origin {origin} may not open WebSockets here (see --allowed-origin)"),
            )
                .into_response();
        }
    };
    // Taken before the upgrade completes, so shutdown waits for this connection too.
    let tracked = state.connections.token();
    let admitted = state.admission.admit(peer.ip());
    let token = params.token.or_else(|| bearer_token(&headers));
    let name = params.name;
    let forwarded = forwarded(&state, &headers, trust);
    let settings = SocketSettings {
        max_message_size: state.max_message_size,
        compression: state.compression,
    };
    upgrade.accept(settings, move |reader, mut writer| async move {
        let ticket = match admitted {
            Ok(ticket) => ticket,
            Err(refused) => {
                tracing::info!(%peer, %refused, "connection refused");
                let reason = refused.to_string();
                let within = state.session.close_timeout;
                writer.close(refused.close_code(), &reason, within).await;
                return;
            }
        };
        let start = Box::new(Start {
            node: state.node,
            config: state.session,
            gate: state.gate,
            handshake: Handshake {
                transport: "websocket",
                name,
                token,
                ticket,
                forwarded,
            },
            shutdown: state.shutdown,
        });
        // A task of its own, sized to the session alone: the upgrade task (with this
        // closure's state) ends here instead of living as long as the socket.
        tokio::spawn(async move {
            session::run(reader, writer, start).await;
            drop(tracked);
        });
    })
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(token.trim()))
}

/// How far a request's origin is trusted (once [`check_origin`] let it through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trust {
    /// No `Origin` (not a browser's cross-origin request), the server's own host, or an origin
    /// listed by name: the request's ambient credentials (cookies) are its caller's.
    Full,
    /// Let through only by `--allowed-origin '*'`: any page may use the server as anyone may,
    /// but the browser's cookies are not that page's to use, so they are not forwarded to the
    /// backend, and CORS answers a literal `*` without credentials.
    Public,
}

/// Lets through requests without an `Origin` (not from a browser), from the server's own
/// host, or from an allowed origin, saying how far each is trusted; returns the refused
/// origin otherwise.
pub(super) fn check_origin<'h>(
    headers: &'h HeaderMap,
    allowed: &[String],
) -> Result<Trust, &'h str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(Trust::Full);
    };
    let origin = origin.to_str().map_err(|_| "(not text)")?;
    let listed = allowed
        .iter()
        .any(|a| a != "*" && a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same_host = matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h));
    if listed || same_host {
        Ok(Trust::Full)
    } else if allowed.iter().any(|a| a == "*") {
        Ok(Trust::Public)
    } else {
        Err(origin)
    }
}

/// The headers forwarded to the backend, less the browser's ambient credentials (cookies,
/// cached HTTP authentication) when the origin is not trusted with them.
pub(super) fn forwarded(state: &AppState, headers: &HeaderMap, trust: Trust) -> Forwarded {
    let forwarded = state.gate.backend.forwarded(headers);
    match trust {
        Trust::Full => forwarded,
        Trust::Public => forwarded
            .into_iter()
            .filter(|(name, _)| name != header::COOKIE && name != header::AUTHORIZATION)
            .collect(),
    }
}

/// `GET /ws/echo`: echoes text and binary messages, closing as `/ws` does on bad input.
pub async fn echo(State(state): State<AppState>, upgrade: Upgrade) -> Response {
    let tracked = state.connections.token();
    let close_timeout = state.session.close_timeout;
    let settings = SocketSettings {
        max_message_size: ECHO_MAX_MESSAGE_SIZE,
        compression: state.compression,
    };
    upgrade.accept(settings, move |reader, writer| async move {
        echo_loop(reader, writer, state.shutdown, close_timeout).await;
        drop(tracked);
    })
}

async fn echo_loop(
    mut reader: crate::transport::ws::Reader,
    mut writer: crate::transport::ws::Writer,
    shutdown: CancellationToken,
    close_timeout: Duration,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => {
                let code = CloseCode::GoingAway;
                writer.close(code, code.reason(), close_timeout).await;
                return;
            }
            received = reader.next_message() => received,
        };
        let sent = match received {
            None => return,
            Some(Err(err)) => {
                if let Some(crate::outbox::Closing::Send { code, reason }) = err.closing() {
                    writer.close(code, &reason, close_timeout).await;
                }
                return;
            }
            Some(Ok(Received::Inbound(Inbound::Close))) => {
                writer.finish(close_timeout).await;
                return;
            }
            Some(Ok(Received::Inbound(
                Inbound::Alive | Inbound::Binary | Inbound::Subscribe(_),
            ))) => continue,
            Some(Ok(Received::Inbound(Inbound::Text(text)))) => {
                writer.feed_echo(false, bytes::Bytes::from(text)).await
            }
            Some(Ok(Received::Binary(bytes))) => writer.feed_echo(true, bytes).await,
        };
        if sent.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins_are_checked_against_the_host_and_the_allowed_list() {
        let none: &[String] = &[];
        let full = Ok(Trust::Full);
        assert_eq!(check_origin(&headers(None, "a.test"), none), full);
        assert_eq!(
            check_origin(&headers(Some("https://a.test"), "a.test"), none),
            full
        );
        assert!(check_origin(&headers(Some("https://evil.test"), "a.test"), none).is_err());
        let allowed = ["https://app.test".to_owned()];
        assert_eq!(
            check_origin(&headers(Some("https://app.test"), "a.test"), &allowed),
            full
        );
        assert!(check_origin(&headers(Some("http://app.test"), "a.test"), &allowed).is_err());
        let any = ["*".to_owned(), "https://app.test".to_owned()];
        let foreign = headers(Some("https://x.test"), "a.test");
        assert_eq!(check_origin(&foreign, &any), Ok(Trust::Public));
        assert_eq!(
            check_origin(&headers(Some("https://app.test"), "a.test"), &any),
            full
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(
            bearer_token(&h).as_ref().map(Secret::expose),
            Some("abc.def")
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer_token(&h), None);
    }
}
