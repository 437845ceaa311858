//! HTTP surface: the router, its shared state, and the plain handlers (chat page, JS client,
//! health). WebSocket endpoints live in [`ws`]. Handlers translate between HTTP and the
//! [`Node`]; they hold no business logic.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Admission;
use crate::node::Node;
use crate::session::{Gate, SessionConfig};

pub mod ws;

/// What every handler may use.
#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Node,
    pub session: Arc<SessionConfig>,
    pub gate: Arc<Gate>,
    pub admission: Arc<Admission>,
    /// Origins allowed besides the server's own host (`*`: any).
    pub allowed_origins: Arc<[String]>,
    pub max_message_size: usize,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks every WebSocket connection so shutdown can wait for their close handshakes.
    pub connections: TaskTracker,
}

/// Builds the router; `/ws/echo` exists only when `enable_echo` is set.
pub fn router(state: AppState, enable_echo: bool) -> Router {
    let mut router = Router::new()
        .route("/", get(index))
        .route("/tidings.js", get(client_script))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ws", get(ws::connect));
    if enable_echo {
        router = router.route("/ws/echo", get(ws::echo));
    }
    router.with_state(state)
}

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const CLIENT_JS: &str = include_str!("../../assets/tidings.js");

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

async fn client_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
}

/// Readiness: the broker can take publications (Redis reachable, when configured).
async fn readyz(State(state): State<AppState>) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if state.shutdown.is_cancelled() {
        let body = r#"{"status":"not ready","reason":"shutting down"}"#;
        return (StatusCode::SERVICE_UNAVAILABLE, json, body).into_response();
    }
    match state.node.ready().await {
        Ok(()) => (json, r#"{"status":"ready"}"#).into_response(),
        Err(err) => {
            let body = serde_json::json!({"status": "not ready", "reason": err.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string()).into_response()
        }
    }
}

/// Liveness: the process serves HTTP.
async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}
