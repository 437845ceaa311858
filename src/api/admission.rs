//! One admission step for every connection, whatever its transport (`/ws`, `/sse`,
//! `/stream`): the server is not shutting down, the browser's origin is allowed (and, for the
//! streams a page can open by navigating, the request is not a foreign page's), the
//! credentials are read (the `token` parameter or `Authorization: Bearer`), and the connection
//! takes its place under the caps.
//!
//! The transports differ only in when a refusal is told, never in what is checked: a stream
//! answers every refusal with its HTTP status before it starts (an `EventSource` stops
//! reconnecting on an HTTP error, whereas a stream that opens and closes is reopened forever),
//! while a WebSocket is refused a bad token or a full server after the upgrade, with a close
//! code and reason — what a browser can read, where it never sees an HTTP error's body.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};
use futures_util::FutureExt;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{ApiError, AppState};
use crate::backend::Forwarded;
use crate::limits::{Refused, Ticket};
use crate::protocol::Secret;
use crate::session::{self, Handshake, Incoming, Outgoing, Start};

/// Which kind of connection asks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Door {
    WebSocket,
    /// `/sse` or `/stream`: one-way, answered with an HTTP status while it can be.
    Stream,
    /// `/app/KEY`: a Pusher client. As on Pusher, any page may open one unless
    /// `--allowed-origin` says otherwise: what it may do rests on the app's signatures, and it
    /// carries no ambient credentials (it is trusted as `Public`).
    Pusher,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Self::WebSocket | Self::Pusher => "WebSockets",
            Self::Stream => "streams",
        }
    }
}

/// A connection let in: how far its origin is trusted, its credentials, and its place.
#[derive(Debug)]
pub(super) struct Admitted {
    pub trust: Trust,
    pub token: Option<Secret>,
    /// The handshake headers for the app's backend.
    pub forwarded: Forwarded,
    /// The place under the caps; a WebSocket's refusal is told after the upgrade.
    pub ticket: Result<Ticket, Refused>,
    /// Keeps shutdown waiting for this connection.
    pub tracked: TaskTrackerToken,
}

/// Lets a connection in, or says why not. `token` is the query's, if any.
pub(super) fn admit(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    door: Door,
    token: Option<Secret>,
) -> Result<Admitted, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let any = ["*".to_owned()];
    let allowed = if door == Door::Pusher && state.allowed_origins.is_empty() {
        &any[..]
    } else {
        &state.allowed_origins[..]
    };
    let trust = check_origin(headers, allowed).map_err(|origin| {
        tracing::info!(%peer, origin, "{} from a foreign origin refused", door.name());
        let what = door.name();
        ApiError::Forbidden(format!(
            "origin {origin} may not open {what} here (see --allowed-origin)"
        ))
    })?;
    let token = token.or_else(|| bearer_token(headers));
    if door == Door::Stream {
        if let Some(how) = foreign_browsing(headers) {
            tracing::info!(%peer, how, "stream opened by a browser without an allowed origin refused");
            return Err(ApiError::Forbidden(format!(
                "a {how} request may not open a stream: open it with fetch() or EventSource \
                 from an allowed origin"
            )));
        }
        identified(state, token.as_ref())?;
    }
    let ticket = state.admission.admit(peer.ip());
    if let Err(refused) = &ticket {
        tracing::info!(%peer, %refused, "connection refused");
        if door == Door::Stream {
            return Err(ApiError::Refused(*refused));
        }
    }
    Ok(Admitted {
        trust,
        forwarded: forwarded(state, headers, trust),
        token,
        ticket,
        tracked: state.connections.token(),
    })
}

/// Runs the session of a connection let in, whatever its transport, on a task of its own
/// sized to the session alone: the handler (and its state) ends here instead of living as long
/// as the connection. Shutdown waits for it through `tracked`.
pub(super) fn run_session<I, O>(
    state: AppState,
    handshake: Handshake,
    tracked: TaskTrackerToken,
    reader: I,
    writer: O,
) where
    I: Incoming + 'static,
    O: Outgoing + 'static,
{
    let start = Box::new(Start {
        node: state.node,
        config: state.session,
        gate: state.gate,
        handshake,
        shutdown: state.shutdown,
    });
    // `map`, not an `async move` block around the session: a block would keep its own copy of
    // the reader and writer beside the session future that took them (96 bytes per native
    // connection, 304 per Pusher one).
    tokio::spawn(session::run(reader, writer, start).map(move |()| drop(tracked)));
}

/// Refuses a stream whose credentials the session could only refuse later: a bad token, or
/// none where one is needed (the session would wait for a `connect` that a one-way reader
/// cannot send).
fn identified(state: &AppState, token: Option<&Secret>) -> Result<(), ApiError> {
    if let Some(token) = token {
        return state
            .gate
            .check_token(token.expose())
            .map_err(|err| ApiError::Unauthorized(format!("token rejected: {err}").into()));
    }
    if !state.gate.allow_anonymous && !state.gate.backend.handles_connect() {
        let message = "a token is required (token=… or Authorization: Bearer)";
        return Err(ApiError::Unauthorized(message.into()));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<Secret> {
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
fn forwarded(state: &AppState, headers: &HeaderMap, trust: Trust) -> Forwarded {
    let forwarded = state.gate.backend.forwarded(headers);
    match trust {
        Trust::Full => forwarded,
        Trust::Public => forwarded
            .into_iter()
            .filter(|(name, _)| name != header::COOKIE && name != header::AUTHORIZATION)
            .collect(),
    }
}

/// What kind of browser request this is when it may not open a stream: a cross-site one, a
/// navigation or a `no-cors` load (an `<img>`, a link) that carries no `Origin` to check — the
/// page behind it could otherwise open a stream as the cookie's user. Requests from outside
/// browsers carry no `Sec-Fetch-*` headers and pass.
fn foreign_browsing(headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(header::ORIGIN) {
        // The origin check has judged it.
        return None;
    }
    let fetch = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (fetch("sec-fetch-site"), fetch("sec-fetch-mode")) {
        (Some("cross-site"), _) => Some("cross-site"),
        (_, Some("navigate")) => Some("navigation"),
        (_, Some("no-cors")) => Some("no-cors"),
        _ => None,
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
