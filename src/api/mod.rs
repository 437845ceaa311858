//! HTTP surface: the router, its shared state, and the plain handlers (chat page, JS client,
//! health). WebSocket endpoints live in [`ws`]; the server API for application backends in
//! [`publish`], [`channels`] and [`presence`], behind [`ApiKey`], answering errors as [`ApiError`].
//! Handlers translate between HTTP and the [`Node`]; they hold no business logic.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Admission;
use crate::metrics::{self, metrics};
use crate::node::{Node, NodeError};
use crate::protocol::{ChannelName, ErrorCode, Secret};
use crate::session::{Gate, SessionConfig};

pub mod admin;
mod admission;
pub mod channels;
pub mod presence;
pub mod publish;
mod pusher;
pub mod stream;
pub mod ws;

/// What every handler may use.
#[derive(Clone, Debug)]
pub struct AppState {
    pub node: Node,
    pub session: Arc<SessionConfig>,
    pub gate: Arc<Gate>,
    pub admission: Arc<Admission>,
    /// Command requests of stream sessions, per client address.
    pub stream_budgets: Arc<crate::limits::AddressBudgets>,
    /// Origins allowed besides the server's own host (`*`: any).
    pub allowed_origins: Arc<[String]>,
    /// The server API's key; `None`: the API is off.
    pub api_key: Option<Secret>,
    pub max_message_size: usize,
    /// Agree to permessage-deflate with WebSocket clients that offer it.
    pub compression: bool,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks every WebSocket connection so shutdown can wait for their close handshakes.
    pub connections: TaskTracker,
    /// `memory` or `redis`, for the admin page.
    pub broker_kind: &'static str,
    /// This node's message rates over the last minutes, for the admin page.
    pub rates: Arc<admin::Rates>,
    /// Pusher Channels apps (`--pusher-app`).
    pub pusher_apps: Arc<[Arc<crate::pusher::App>]>,
}

/// Builds the router; `/ws/echo` exists only when `enable_echo` is set, `/metrics` unless
/// metrics are served on an address of their own (`--metrics-listen`).
pub fn router(state: AppState, enable_echo: bool, with_metrics: bool) -> Router {
    // A command request holds one message of the largest size, and a few small ones.
    let commands_limit =
        axum::extract::DefaultBodyLimit::max(state.max_message_size + stream::BATCH_ALLOWANCE);
    let mut router = Router::new()
        .route("/", get(index))
        .route("/tidings.js", get(client_script))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ws", get(ws::connect))
        .route("/app/{key}", get(ws::pusher))
        .route("/apps/{app_id}/events", post(pusher::events))
        .route("/apps/{app_id}/batch_events", post(pusher::batch_events))
        .route("/apps/{app_id}/channels", get(pusher::channels))
        .route("/apps/{app_id}/channels/{name}", get(pusher::channel))
        .route("/apps/{app_id}/channels/{name}/users", get(pusher::users))
        .route(
            "/apps/{app_id}/users/{user}/terminate_connections",
            post(pusher::terminate_connections),
        )
        .route(
            "/users/{user}/terminate_connections",
            post(pusher::terminate_connections_of_key),
        )
        .route(
            "/sse",
            get(stream::sse)
                .post(stream::commands)
                .layer(commands_limit),
        )
        .route(
            "/stream",
            get(stream::ndjson)
                .post(stream::commands)
                .layer(commands_limit),
        )
        .route("/api/openapi.json", get(openapi))
        .route("/api/publish", post(publish::publish))
        .route("/api/broadcast", post(publish::broadcast))
        .route("/api/history", post(publish::history))
        .route("/api/channels", post(channels::channels))
        .route("/api/subscribe", post(channels::subscribe))
        .route("/api/unsubscribe", post(channels::unsubscribe))
        .route("/api/disconnect", post(channels::disconnect))
        .route("/api/connections", post(channels::connections))
        .route("/api/presence", post(presence::presence))
        .route("/api/presence_stats", post(presence::presence_stats))
        .route("/admin", get(admin::page))
        .route("/admin/stats", get(admin::stats));
    if with_metrics {
        router = router.route("/metrics", get(prometheus_metrics));
    }
    if enable_echo {
        router = router.route("/ws/echo", get(ws::echo));
    }
    // Every endpoint answers JSON, mistakes in the path or the method too.
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// At most this much of a request's path is echoed in an error message.
const ECHOED_PATH: usize = 128;

fn echoed(uri: &axum::http::Uri) -> &str {
    let path = uri.path();
    let mut end = path.len().min(ECHOED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no endpoint {method} {}; see /api/openapi.json",
        echoed(&uri)
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not take {method} (the Allow header lists what it takes)",
        echoed(&uri)
    ))
}

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const OPENAPI_JSON: &str = include_str!("../../assets/openapi.json");

/// `GET /api/openapi.json`: the server API's description (served even when the API is off).
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// Every refusal of every route — the server API, `/ws`, `/sse`, `/stream`, `/admin`, an
/// unknown path or method: an HTTP status and one JSON body,
/// `{"error":{"code":"…","message":"…"}}`. The code is the contract (docs/api.md); the message
/// is for people, and never carries a dependency's error chain.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(std::borrow::Cow<'static, str>),
    /// A browser's origin (or kind of request) may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// The API key is not configured: what is off, and how to turn it on.
    #[error("{0}")]
    Disabled(&'static str),
    #[error("{0}")]
    TooLarge(String),
    #[error("the request body did not arrive within {0:?} (--body-timeout)")]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A request to a WebSocket route that is not a WebSocket handshake.
    #[error("{1}")]
    NotAWebSocket(StatusCode, &'static str),
    /// Too many requests from one address; answered with `Retry-After`.
    #[error("{0}")]
    RateLimited(&'static str),
    #[error("the server is shutting down; connect to another node")]
    ShuttingDown,
    /// No place under the connection caps.
    #[error(transparent)]
    Refused(#[from] crate::limits::Refused),
    /// A node operation failed: the status and the code's name follow from its
    /// [`ErrorCode`], the message is the client-facing one.
    #[error("{message}")]
    Failed { code: ErrorCode, message: String },
}

/// The server API's [`ApiError::Disabled`].
pub const API_OFF: &str = "the server API is off: start tidings with --api-key";

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Disabled(_) => (StatusCode::NOT_FOUND, "api_disabled"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::NotAWebSocket(StatusCode::METHOD_NOT_ALLOWED, _) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Self::NotAWebSocket(status, _) => (*status, "not_a_websocket"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            Self::Failed { code, .. } => (
                StatusCode::from_u16(code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                code.name(),
            ),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(err: NodeError) -> Self {
        if let NodeError::Broker(err) = &err {
            // Logged here, where it is handled; the caller gets the documented message.
            let err: &dyn std::error::Error = err;
            tracing::warn!(error = err, "server API request failed");
        }
        Self::Failed {
            code: err.code(),
            message: err.client_message(),
        }
    }
}

impl From<crate::transport::ws::NotAnUpgrade> for ApiError {
    fn from(not: crate::transport::ws::NotAnUpgrade) -> Self {
        Self::NotAWebSocket(not.status(), not.reason())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Self::RateLimited(_) = self {
            let retry = axum::http::HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

/// Proof that a request carries the server API key: `Authorization: apikey KEY`, or HTTP
/// Basic with the key as the password — what a browser that opened `/admin` sends, so the
/// admin page calls this same API. Basic is refused from another origin's page: the browser
/// would attach the remembered credentials to a forged cross-site request.
#[derive(Debug)]
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state
            .api_key
            .as_ref()
            .ok_or(ApiError::Disabled(API_OFF))?
            .expose();
        let given = match presented_key(&parts.headers) {
            Some(Presented::ApiKey(key)) => key,
            Some(Presented::Basic(_)) if !same_origin(&parts.headers) => {
                let message = "HTTP Basic credentials are accepted only from this server's own \
                               pages; send Authorization: apikey KEY";
                return Err(ApiError::Unauthorized(message.into()));
            }
            Some(Presented::Basic(key)) => key,
            None => {
                let message = "missing the header Authorization: apikey KEY";
                return Err(ApiError::Unauthorized(message.into()));
            }
        };
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized("wrong API key".into()))
        }
    }
}

/// How a request presents the API key.
enum Presented {
    /// `Authorization: apikey KEY`.
    ApiKey(String),
    /// `Authorization: Basic …` with the key as the password (any user name).
    Basic(String),
}

fn presented_key(headers: &axum::http::HeaderMap) -> Option<Presented> {
    let (scheme, value) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    if scheme.eq_ignore_ascii_case("apikey") {
        Some(Presented::ApiKey(value.trim().to_owned()))
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        Some(Presented::Basic(password.to_owned()))
    } else {
        None
    }
}

/// Whether the request did not come from another origin's page. Browsers say so in
/// `Sec-Fetch-Site`; older ones send `Origin`, compared with the host the request was sent to
/// (as the client or a proxy in front names it); a request with neither is not a browser's.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = text("origin") else {
        return true;
    };
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    [text("host"), text("x-forwarded-host")].contains(&Some(authority))
}

/// Compares without stopping at the first difference, so response times do not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A channel name from a request body, or a 400 saying what is wrong with it.
fn channel_name(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|err| ApiError::BadRequest(format!("{name:?}: {err}")))
}

/// A request's body, within `--body-timeout` of its headers.
pub(crate) async fn body_bytes(
    request: axum::extract::Request,
    state: &AppState,
) -> Result<axum::body::Bytes, ApiError> {
    use axum::extract::FromRequest;
    // Headers have a deadline (--handshake-timeout); without this one a client could hold
    // a request open forever by never sending the body it announced.
    let read = axum::body::Bytes::from_request(request, state);
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(bytes) => bytes.map_err(|err| ApiError::TooLarge(format!("request body: {err}"))),
        Err(_) => {
            metrics().http.body_timeouts.inc();
            let total = metrics().http.body_timeouts.get();
            tracing::info!(total, "request body too slow; answered 408");
            Err(ApiError::BodyTimeout(state.body_timeout))
        }
    }
}

/// A JSON request body, refused with a JSON 400 (not axum's plain-text rejection).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> axum::extract::FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let bytes = body_bytes(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|err| ApiError::BadRequest(format!("invalid JSON body: {err}")))
    }
}
/// The JS client: the npm package's own source (`clients/js`), served as it is.
const CLIENT_JS: &str = include_str!("../../clients/js/src/tidings.js");

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

/// `GET /tidings.js`: a public script, so any page may import it (`*`, no credentials).
async fn client_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
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
            // For operators: the whole cause chain, Redis's own words included.
            let reason = error_chain(&err);
            let body = serde_json::json!({"status": "not ready", "reason": reason});
            (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string()).into_response()
        }
    }
}

/// `err: its source: its source's source…`
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Only `/metrics`: what `--metrics-listen` serves.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(prometheus_metrics))
}

/// The Prometheus text exposition of every metric.
async fn prometheus_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics().render(),
    )
}

/// Liveness: the process serves HTTP.
async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}
