//! HTTP streaming endpoints: `GET /sse` (Server-Sent Events), `GET /stream` (newline-delimited
//! JSON), and `POST /sse` / `POST /stream`, which carry a stream session's commands to it on
//! whichever node holds it (see `crate::transport::stream` and `crate::node::StreamInbox`).
//!
//! They admit a client as `/ws` does — origin, caps, token or name — but answer what they can
//! with an HTTP status before the stream starts: an `EventSource` stops reconnecting on an
//! HTTP error, whereas a stream that opens and closes would be reopened forever.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ws::{Trust, bearer_token, check_origin, forwarded};
use super::{AppState, JsonBody};
use crate::metrics::metrics;
use crate::node::{StreamError, session_node};
use crate::protocol::Positions;
use crate::protocol::{ChannelName, Secret, StreamPosition};
use crate::session::{self, Handshake, Start};
use crate::transport::stream::{self, Format};

/// The header that names a stream session for its command requests.
pub const SESSION_HEADER: &str = "tidings-session";

/// Commands one request may carry.
pub const MAX_COMMANDS: usize = 100;

/// Bytes a command request may carry beyond one message of the largest size.
pub const BATCH_ALLOWANCE: usize = 64 * 1024;

/// `GET /sse`.
pub async fn sse(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    open(Format::Sse, state, peer, &headers, query.as_deref()).await
}

/// `GET /stream`.
pub async fn ndjson(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    open(Format::Ndjson, state, peer, &headers, query.as_deref()).await
}

/// What the query of `/sse` and `/stream` holds.
#[derive(Debug, Default)]
struct StreamParams {
    channels: Vec<ChannelName>,
    name: Option<String>,
    token: Option<Secret>,
    /// Where to resume: `since` (a JSON object), or an SSE `Last-Event-ID` token.
    since: Option<Positions>,
}

fn parse_query(query: Option<&str>, headers: &HeaderMap) -> Result<StreamParams, String> {
    let mut params = StreamParams::default();
    let mut last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "channel" => {
                let channel = ChannelName::parse(&value)
                    .map_err(|err| format!("channel {value:?}: {err}"))?;
                if !params.channels.contains(&channel) {
                    params.channels.push(channel);
                }
            }
            "name" => params.name = Some(value.into_owned()),
            "token" => params.token = Some(Secret::new(value.into_owned())),
            "since" => {
                let since = Positions::from_since(&value).ok_or(
                    "since: expected a JSON object {\"CHANNEL\":{\"offset\":N,\"epoch\":\"E\"},…}",
                )?;
                params.since = Some(since);
            }
            // For EventSource polyfills that cannot set the header.
            "last_event_id" | "lastEventId" => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if params.since.is_none()
        && let Some(id) = last_event_id
    {
        let since = Positions::from_token(&id)
            .ok_or("Last-Event-ID: not a position token of this server")?;
        params.since = Some(since);
    }
    Ok(params)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": { "message": message.into() } });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn open(
    format: Format,
    state: AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    if state.shutdown.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let trust = match browser_trust(headers, &state.allowed_origins, peer) {
        Ok(trust) => trust,
        Err((status, message)) => return refuse(status, message),
    };
    let params = match parse_query(query, headers) {
        Ok(params) => params,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    if params.channels.len() > state.session.max_subscriptions {
        let most = state.session.max_subscriptions;
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("at most {most} channels per stream (--max-subscriptions)"),
        );
    }
    let token = params.token.or_else(|| bearer_token(headers));
    if let Some(token) = &token
        && let Err(err) = state.gate.check_token(token.expose())
    {
        return refuse(StatusCode::UNAUTHORIZED, format!("token rejected: {err}"));
    }
    let backend_decides = state.gate.backend.handles_connect();
    if token.is_none() && !state.gate.allow_anonymous && !backend_decides {
        // The session would wait for a `connect` that a one-way reader cannot send.
        let message = "a token is required (token=… or Authorization: Bearer)";
        return refuse(StatusCode::UNAUTHORIZED, message);
    }
    let ticket = match state.admission.admit(peer.ip()) {
        Ok(ticket) => ticket,
        Err(refused) => {
            tracing::info!(%peer, %refused, "connection refused");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, refused.to_string());
        }
    };
    let tracked = state.connections.token();
    let inbox = state.node.open_stream();
    let session_id = inbox.id().clone();
    let subscribe: Vec<(ChannelName, Option<StreamPosition>)> = params
        .channels
        .into_iter()
        .map(|channel| {
            let since = params.since.as_ref().and_then(|s| s.get(channel.as_str()));
            (channel, since)
        })
        .collect();
    let (reader, writer, body) = stream::open(format, inbox, &subscribe);
    let forwarded = forwarded(&state, headers, trust);
    let start = Box::new(Start {
        node: state.node,
        config: state.session,
        gate: state.gate.clone(),
        handshake: Handshake {
            transport: format.name(),
            name: params.name,
            token,
            ticket,
            forwarded,
        },
        shutdown: state.shutdown,
    });
    tokio::spawn(async move {
        session::run(reader, writer, start).await;
        drop(tracked);
    });
    respond(format, body, &session_id, headers, trust)
}

/// How far a stream request from a browser is trusted, or its refusal: a foreign origin, or a
/// [`foreign_browsing`] request.
fn browser_trust(
    headers: &HeaderMap,
    allowed: &[String],
    peer: SocketAddr,
) -> Result<Trust, (StatusCode, String)> {
    let trust = check_origin(headers, allowed).map_err(|origin| {
        tracing::info!(%peer, origin, "stream from a foreign origin refused");
        let message = format!("origin {origin} may not open streams here (see --allowed-origin)");
        (StatusCode::FORBIDDEN, message)
    })?;
    if let Some(how) = foreign_browsing(headers) {
        tracing::info!(%peer, how, "stream opened by a browser without an allowed origin refused");
        let message = format!(
            "a {how} request may not open a stream: open it with fetch() or EventSource from \
             an allowed origin"
        );
        return Err((StatusCode::FORBIDDEN, message));
    }
    Ok(trust)
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

/// The stream's response: its body, and headers that keep proxies and caches out of its way.
fn respond(
    format: Format,
    body: axum::body::Body,
    session_id: &str,
    headers: &HeaderMap,
    trust: Trust,
) -> Response {
    let mut response = Response::new(body);
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx (and proxies that copy it) not to buffer the stream.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(id) = HeaderValue::from_str(session_id) {
        out.insert(SESSION_HEADER, id);
    }
    allow_origin(headers, trust, out);
    response
}

/// Lets a page of an allowed origin read the response (the origin check has passed): with its
/// cookies if the origin is trusted with them, as anyone (`*`, no credentials) otherwise.
fn allow_origin(request: &HeaderMap, trust: Trust, response: &mut HeaderMap) {
    if let Some(origin) = request.get(header::ORIGIN) {
        match trust {
            Trust::Full => {
                response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                response.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            Trust::Public => {
                response.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        response.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(SESSION_HEADER),
        );
        response.insert(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// The body of `POST /stream`: protocol v1 commands for one stream session.
#[derive(Debug, Deserialize)]
pub struct Commands {
    session: String,
    commands: Vec<Box<RawValue>>,
}

/// Refuses a command request that names no session, or carries too few, too many or too big
/// commands.
fn well_formed(request: &Commands, max_message_size: usize) -> Result<(), (StatusCode, String)> {
    if session_node(&request.session).is_none() {
        let message = "session: not a stream session id (NODE.SECRET)".to_owned();
        return Err((StatusCode::BAD_REQUEST, message));
    }
    if request.commands.is_empty() || request.commands.len() > MAX_COMMANDS {
        let message = format!("commands: between 1 and {MAX_COMMANDS} per request");
        return Err((StatusCode::BAD_REQUEST, message));
    }
    if let Some(big) = request
        .commands
        .iter()
        .find(|c| c.get().len() > max_message_size)
    {
        let size = big.get().len();
        let message =
            format!("a command of {size} bytes is over the {max_message_size}-byte limit");
        return Err((StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    Ok(())
}

/// `POST /sse`, `POST /stream`: hands the commands to their session, on whichever node holds
/// it, in order. Answered 202 once the broker has them; the replies come on the stream.
pub async fn commands(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<Commands>,
) -> Response {
    let outcome = |name: &str| {
        metrics()
            .http
            .stream_commands
            .with_label_values(&[name])
            .inc();
    };
    if state.shutdown.is_cancelled() {
        outcome("refused");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let Ok(trust) = check_origin(&headers, &state.allowed_origins) else {
        outcome("refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "origin not allowed (see --allowed-origin)",
        );
    };
    if let Err((status, message)) = well_formed(&request, state.max_message_size) {
        outcome("refused");
        return refuse(status, message);
    }
    // What the request would push through the broker: its commands and their envelope.
    let bytes = request.session.len()
        + request
            .commands
            .iter()
            .map(|c| c.get().len() + 8)
            .sum::<usize>();
    if !state.stream_budgets.charge(peer.ip(), bytes) {
        outcome("limited");
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many command requests from this address; slow down",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let commands = request
        .commands
        .into_iter()
        .map(|command| String::from(Box::<str>::from(command)))
        .collect();
    let mut response = match state.node.send_to_stream(&request.session, commands).await {
        Ok(()) => {
            outcome("accepted");
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response()
        }
        Err(StreamError::Unknown) => {
            outcome("unknown");
            refuse(StatusCode::NOT_FOUND, StreamError::Unknown.to_string())
        }
        Err(StreamError::Node(err)) => {
            outcome("failed");
            refuse(StatusCode::SERVICE_UNAVAILABLE, err.client_message())
        }
    };
    allow_origin(&headers, trust, response.headers_mut());
    response
}
