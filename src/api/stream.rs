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

use super::admission::{self, Admitted, Door, Trust, admit, check_origin};
use super::{ApiError, AppState, JsonBody};
use crate::metrics::metrics;
use crate::node::{StreamError, session_node};
use crate::protocol::Positions;
use crate::protocol::{ChannelName, Secret, StreamPosition};
use crate::session::Handshake;
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
) -> Result<Response, ApiError> {
    open(Format::Sse, state, peer, &headers, query.as_deref()).await
}

/// `GET /stream`.
pub async fn ndjson(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
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

async fn open(
    format: Format,
    state: AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut params = parse_query(query, headers).map_err(ApiError::BadRequest)?;
    let admitted = admit(&state, peer, headers, Door::Stream, params.token.take())?;
    if params.channels.len() > state.session.max_subscriptions {
        let most = state.session.max_subscriptions;
        return Err(ApiError::BadRequest(format!(
            "at most {most} channels per stream (--max-subscriptions)"
        )));
    }
    let Admitted {
        trust,
        token,
        forwarded,
        ticket,
        tracked,
    } = admitted;
    // A stream is refused before it starts: `admit` answered a full server already.
    let ticket = ticket?;
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
    let handshake = Handshake {
        client: crate::session::client_id(),
        transport: format.name(),
        name: params.name,
        token,
        ticket,
        forwarded,
    };
    admission::run_session(state, handshake, tracked, reader, writer);
    Ok(respond(format, body, &session_id, headers, trust))
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
fn well_formed(request: &Commands, max_message_size: usize) -> Result<(), ApiError> {
    if session_node(&request.session).is_none() {
        let message = "session: not a stream session id (NODE.SECRET)".to_owned();
        return Err(ApiError::BadRequest(message));
    }
    if request.commands.is_empty() || request.commands.len() > MAX_COMMANDS {
        let message = format!("commands: between 1 and {MAX_COMMANDS} per request");
        return Err(ApiError::BadRequest(message));
    }
    if let Some(big) = request
        .commands
        .iter()
        .find(|c| c.get().len() > max_message_size)
    {
        let size = big.get().len();
        let message =
            format!("a command of {size} bytes is over the {max_message_size}-byte limit");
        return Err(ApiError::TooLarge(message));
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
) -> Result<Response, ApiError> {
    let outcome = |name: &str| {
        metrics()
            .http
            .stream_commands
            .with_label_values(&[name])
            .inc();
    };
    if state.shutdown.is_cancelled() {
        outcome("refused");
        return Err(ApiError::ShuttingDown);
    }
    let Ok(trust) = check_origin(&headers, &state.allowed_origins) else {
        outcome("refused");
        let message = "origin not allowed (see --allowed-origin)";
        return Err(ApiError::Forbidden(message.into()));
    };
    if let Err(err) = well_formed(&request, state.max_message_size) {
        outcome("refused");
        return Err(err);
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
        let message = "too many command requests from this address; slow down";
        return Err(ApiError::RateLimited(message));
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
            ApiError::NotFound(StreamError::Unknown.to_string()).into_response()
        }
        Err(StreamError::Node(err)) => {
            outcome("failed");
            ApiError::from(err).into_response()
        }
    };
    allow_origin(&headers, trust, response.headers_mut());
    Ok(response)
}
