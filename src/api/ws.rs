//! WebSocket endpoints: `/ws` (protocol v1, one [`session`](crate::session) per connection) and `/ws/echo`
//! (the conformance route: echoes every message through the same stack).
//!
//! Before upgrading, `/ws` passes the one admission step of every transport
//! ([`super::admission`]): origin, caps, credentials. The token travels on to the session,
//! which verifies it and closes with 1008 when it is bad: a browser sees a close code and
//! reason, never the body of an HTTP error.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::admission::{self, Admitted, Door, admit};
use super::{ApiError, AppState};
use crate::protocol::{CloseCode, Secret};
use crate::session::{Handshake, Inbound, Outgoing};
use crate::transport::ws::{NotAnUpgrade, Received, SocketSettings, Upgrade};

/// The echo route's message limit: large enough for the conformance suite's biggest cases.
const ECHO_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    name: Option<String>,
    token: Option<Secret>,
}

/// `GET /ws`: upgrades to a protocol v1 session. A refusal is readable from any page
/// (`Access-Control-Allow-Origin: *`): a browser's WebSocket sees only 1006, and a client
/// asks the route over plain HTTP why (a foreign origin, say) rather than retry forever.
pub async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Result<Query<ConnectParams>, QueryRejection>,
    upgrade: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    handshake(state, peer, headers, params, upgrade)
        .await
        .unwrap_or_else(|refused| {
            let mut response = refused.into_response();
            let anyone = HeaderValue::from_static("*");
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, anyone);
            response
        })
}

async fn handshake(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    params: Result<Query<ConnectParams>, QueryRejection>,
    upgrade: Result<Upgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    // Before the handshake's own checks: a plain GET from a refused origin hears why.
    let admitted = admit(&state, peer, &headers, Door::WebSocket, params.token)?;
    let upgrade = upgrade?;
    let name = params.name;
    let settings = SocketSettings {
        max_message_size: state.max_message_size,
        compression: state.compression,
    };
    Ok(
        upgrade.accept(settings, move |reader, mut writer| async move {
            let Admitted {
                token,
                forwarded,
                ticket,
                tracked,
                ..
            } = admitted;
            let ticket = match ticket {
                Ok(ticket) => ticket,
                Err(refused) => {
                    let reason = refused.to_string();
                    let within = state.session.close_timeout;
                    writer.close(refused.close_code(), &reason, within).await;
                    return;
                }
            };
            let handshake = Handshake {
                client: crate::session::client_id(),
                transport: "websocket",
                name,
                token,
                ticket,
                forwarded,
            };
            admission::run_session(state, handshake, tracked, reader, writer);
        }),
    )
}

/// Query parameters of `/app/KEY` (Pusher's clients send them; `protocol` is checked).
#[derive(Debug, Deserialize)]
pub struct PusherParams {
    protocol: Option<u32>,
}

/// The protocol version of Pusher Channels spoken here.
const PUSHER_PROTOCOL: u32 = 7;

/// `GET /app/KEY`: a Pusher Channels client of the app with that key, on the same session
/// core as `/ws`. An unknown key is told after the upgrade with Pusher's 4001, as Pusher
/// does, since a browser's WebSocket cannot read an HTTP refusal.
pub async fn pusher(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(key): axum::extract::Path<String>,
    headers: HeaderMap,
    params: Result<Query<PusherParams>, QueryRejection>,
    upgrade: Result<Upgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let admitted = admit(&state, peer, &headers, Door::Pusher, None)?;
    let upgrade = upgrade?;
    let app = state.pusher_apps.iter().find(|app| app.key == key).cloned();
    let settings = SocketSettings {
        max_message_size: state.max_message_size,
        compression: state.compression,
    };
    Ok(upgrade.accept(settings, move |reader, writer| async move {
        let Admitted {
            forwarded,
            ticket,
            tracked,
            ..
        } = admitted;
        let refusal = match (&app, &ticket) {
            (None, _) => Some((4001, format!("App key {key} not in this cluster"))),
            _ if params.protocol.is_some_and(|p| p != PUSHER_PROTOCOL) => Some((
                4007,
                format!("Unsupported protocol version: speak {PUSHER_PROTOCOL}"),
            )),
            (_, Err(refused)) => Some((4100, refused.to_string())),
            _ => None,
        };
        let (Some(app), Ok(ticket), None) = (app, ticket, &refusal) else {
            let (code, reason) = refusal.unwrap_or((4200, String::new()));
            // Pusher's codes are all in the application range.
            let code = CloseCode::app(code).unwrap_or(CloseCode::PolicyViolation);
            let mut writer = writer;
            writer
                .close(code, &reason, state.session.close_timeout)
                .await;
            return;
        };
        let asked = crate::pusher::codec::Asked::default();
        let activity = state.session.ping_interval.as_secs().max(1);
        let client = crate::session::client_id();
        let codec = crate::pusher::codec::Pusher::new(
            app.id.clone(),
            client.clone(),
            asked.clone(),
            activity,
        );
        let reader =
            crate::transport::pusher::PusherReader::new(reader, app, client.clone(), asked);
        let handshake = Handshake {
            client,
            transport: "pusher",
            // Pusher connections are anonymous until they sign in.
            name: Some("pusher".into()),
            token: None,
            ticket,
            forwarded,
        };
        admission::run_session(state, handshake, tracked, reader, writer.with_codec(codec));
    }))
}

/// `GET /ws/echo`: echoes text and binary messages, closing as `/ws` does on bad input.
pub async fn echo(
    State(state): State<AppState>,
    upgrade: Result<Upgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    let tracked = state.connections.token();
    let close_timeout = state.session.close_timeout;
    let settings = SocketSettings {
        max_message_size: ECHO_MAX_MESSAGE_SIZE,
        compression: state.compression,
    };
    Ok(upgrade.accept(settings, move |reader, writer| async move {
        echo_loop(reader, writer, state.shutdown, close_timeout).await;
        drop(tracked);
    }))
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
                Inbound::Alive
                | Inbound::Binary
                | Inbound::Subscribe(_)
                | Inbound::Command(_)
                | Inbound::Invalid(_),
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
