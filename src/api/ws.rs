//! WebSocket endpoints: `/ws` (protocol v1, one [`session`] per connection) and `/ws/echo`
//! (the conformance route: echoes every message through the same stack).

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::protocol::CloseCode;
use crate::session::{self, Handshake};
use crate::transport::{self, Inbound};

/// The echo route's message limit: large enough for the conformance suite's biggest cases.
const ECHO_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    name: Option<String>,
    token: Option<String>,
}

/// `GET /ws`: upgrades to a protocol v1 session.
pub async fn connect(
    State(state): State<AppState>,
    Query(params): Query<ConnectParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // Taken before the upgrade completes, so shutdown waits for this connection too.
    let tracked = state.connections.token();
    let handshake = Handshake {
        name: params.name,
        token: params.token,
    };
    transport::configure(upgrade, state.max_message_size)
        .on_failed_upgrade(|err| tracing::debug!(%err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let (reader, writer) = transport::split(socket);
            session::run(
                reader,
                writer,
                state.node,
                state.session,
                handshake,
                state.shutdown,
            )
            .await;
            drop(tracked);
        })
}

/// `GET /ws/echo`: echoes text and binary messages, closing as `/ws` does on bad input.
pub async fn echo(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let tracked = state.connections.token();
    let close_timeout = state.session.close_timeout;
    transport::configure(upgrade, ECHO_MAX_MESSAGE_SIZE).on_upgrade(move |socket| async move {
        echo_loop(socket, state.shutdown, close_timeout).await;
        drop(tracked);
    })
}

async fn echo_loop(
    socket: axum::extract::ws::WebSocket,
    shutdown: CancellationToken,
    close_timeout: Duration,
) {
    let (mut reader, mut writer) = transport::split(socket);
    loop {
        let inbound = tokio::select! {
            () = shutdown.cancelled() => {
                writer.close(CloseCode::GOING_AWAY, "server shutting down", close_timeout).await;
                return;
            }
            inbound = reader.next() => inbound,
        };
        let sent = match inbound {
            None => return,
            Some(Err(err)) => {
                if let Some((code, reason)) = err.close_frame() {
                    writer.close(code, reason, close_timeout).await;
                }
                return;
            }
            Some(Ok(Inbound::Close(_))) => {
                writer.finish(close_timeout).await;
                return;
            }
            Some(Ok(Inbound::Control)) => continue,
            Some(Ok(Inbound::Text(text))) => writer.feed(text).await,
            Some(Ok(Inbound::Binary(bytes))) => writer.feed_binary(bytes).await,
        };
        if sent.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}
