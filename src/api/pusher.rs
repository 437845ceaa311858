//! Pusher's HTTP API under `/apps/APP_ID/`, for Pusher's server SDKs: every request signed
//! with the app's secret ([`crate::pusher::sign`]), a wrong or stale one answered 401.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AppState, body_bytes};
use crate::protocol::{ChannelName, ClientInfo, CloseCode, Presence};
use crate::pusher::App as PusherApp;
use crate::pusher::channel;
use crate::pusher::sign::{self, MAX_CLOCK_SKEW_SECS};

/// At most this many channels per event, as Pusher allows.
const MAX_CHANNELS: usize = 100;
/// At most this many events per batch, as Pusher allows.
const MAX_BATCH: usize = 10;
/// Longest event name, as Pusher allows.
const MAX_EVENT_NAME: usize = 200;

/// A refusal in Pusher's way: a status and a line of text; or the server API's own answer
/// for a failure of the node.
#[derive(Debug)]
pub enum Refused {
    Said(StatusCode, String),
    Node(super::ApiError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Said(status, message) => (status, message).into_response(),
            Self::Node(error) => error.into_response(),
        }
    }
}

impl From<crate::node::NodeError> for Refused {
    fn from(err: crate::node::NodeError) -> Self {
        Self::Node(super::ApiError::from(err))
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused::Said(status, message.into())
}

/// Checks the request's signature; why it is refused otherwise (answered 401).
fn verify(
    app: &PusherApp,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<(), &'static str> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if get("auth_key") != Some(app.key.as_str()) {
        return Err("Unknown auth_key");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match get("auth_timestamp").and_then(|t| t.parse::<u64>().ok()) {
        Some(at) if at.abs_diff(now) <= MAX_CLOCK_SKEW_SECS => {}
        _ => {
            return Err(
                "Timestamp expired: given auth_timestamp is not within 600 s of the server's time",
            );
        }
    }
    if get("auth_version").is_some_and(|v| v != "1.0") {
        return Err("Unsupported auth_version: 1.0 is");
    }
    if !body.is_empty() && get("body_md5") != Some(sign::body_md5(body).as_str()) {
        return Err("Invalid body_md5");
    }
    let message = sign::request_message(method, path, &params);
    let signature = get("auth_signature").unwrap_or_default();
    if !app.secret.verify(&message, signature) {
        return Err(
            "Invalid signature: you should have sent HmacSHA256Hex(string_to_sign, secret)",
        );
    }
    Ok(())
}

/// A request that passed its app's signature: the app and the body.
struct Signed {
    app: Arc<PusherApp>,
    body: axum::body::Bytes,
    query: Vec<(String, String)>,
}

impl Signed {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The app named in the path, the body read, the signature checked: 404 for an unknown app,
/// 401 for a wrong or stale signature.
async fn signed(state: &AppState, app_id: &str, request: Request) -> Result<Signed, Refused> {
    let Some(app) = state
        .pusher_apps
        .iter()
        .find(|app| *app.id == *app_id)
        .cloned()
    else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("Unknown app {app_id}"),
        ));
    };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = body_bytes(request, state).await.map_err(Refused::Node)?;
    verify(&app, &method, &path, &query, &body)
        .map_err(|why| refuse(StatusCode::UNAUTHORIZED, why))?;
    let query = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    Ok(Signed { app, body, query })
}

/// One event to trigger, as `events` and each entry of `batch_events` give it.
#[derive(Deserialize)]
struct Trigger {
    name: String,
    data: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    /// The connection not to send it to (the one whose action caused it).
    #[serde(default)]
    socket_id: Option<String>,
    /// Counts to answer with: `subscription_count`, `user_count`, comma-separated.
    #[serde(default)]
    info: Option<String>,
}

/// Which counts a request asked for.
#[derive(Clone, Copy, Default)]
struct Wanted {
    subscription_count: bool,
    user_count: bool,
}

impl Wanted {
    fn parse(info: Option<&str>) -> Result<Self, Refused> {
        let mut wanted = Self::default();
        for attribute in info
            .unwrap_or_default()
            .split(',')
            .filter(|a| !a.is_empty())
        {
            match attribute {
                "subscription_count" => wanted.subscription_count = true,
                "user_count" => wanted.user_count = true,
                other => {
                    let message = format!(
                        "Unknown info attribute {other:?}: subscription_count and user_count are"
                    );
                    return Err(refuse(StatusCode::BAD_REQUEST, message));
                }
            }
        }
        Ok(wanted)
    }

    fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

/// A Pusher channel name of the app, as the Tidings channel that holds it; 400 otherwise.
fn internal(app: &PusherApp, name: &str) -> Result<(ChannelName, channel::Kind), Refused> {
    channel::kind(name)
        .ok()
        .and_then(|kind| Some((channel::internal(&app.id, name, kind)?, kind)))
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("Invalid channel name {name:?}"),
            )
        })
}

/// The counts of one channel that `wanted` names (a user count for presence channels only).
async fn counts(
    state: &AppState,
    channel: &ChannelName,
    kind: channel::Kind,
    wanted: Wanted,
    subscribers: &std::collections::HashMap<ChannelName, usize>,
) -> Result<serde_json::Map<String, serde_json::Value>, Refused> {
    let mut counts = serde_json::Map::new();
    let presence = kind.access == channel::Access::Presence;
    let stats = if presence && wanted.any() {
        Some(state.node.presence_stats(channel).await?)
    } else {
        None
    };
    if wanted.subscription_count {
        // Presence counts are exact across nodes; others are as of each node's last
        // announcement.
        let count = stats.map_or_else(
            || subscribers.get(channel).copied().unwrap_or(0) as u64,
            |s| s.clients,
        );
        counts.insert("subscription_count".into(), count.into());
    }
    // A user count only means something in a presence channel; elsewhere it is left out.
    if let Some(stats) = stats.filter(|_| wanted.user_count) {
        counts.insert("user_count".into(), stats.users.into());
    }
    Ok(counts)
}

/// Every channel with subscribers, by Tidings name, with its count.
async fn subscribers(
    state: &AppState,
) -> Result<std::collections::HashMap<ChannelName, usize>, Refused> {
    let channels = state.node.channels().await?;
    Ok(channels.into_iter().collect())
}

/// Publishes one event to each of its channels; its counts when `info` asked for them.
async fn trigger(
    state: &AppState,
    app: &PusherApp,
    trigger: Trigger,
) -> Result<Option<serde_json::Value>, Refused> {
    let names: Vec<String> = trigger
        .channels
        .or(trigger.channel.map(|c| vec![c]))
        .unwrap_or_default();
    if names.is_empty() || names.len() > MAX_CHANNELS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("1 to {MAX_CHANNELS} channels"),
        ));
    }
    if trigger.name.is_empty() || trigger.name.len() > MAX_EVENT_NAME {
        let message = format!("An event name is 1 to {MAX_EVENT_NAME} characters");
        return Err(refuse(StatusCode::BAD_REQUEST, message));
    }
    if trigger.data.len() > state.max_message_size {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Event data too large",
        ));
    }
    let except = trigger.socket_id.filter(|id| !id.is_empty());
    if let Some(id) = &except
        && !is_socket_id(id)
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("Invalid socket_id {id:?}"),
        ));
    }
    let wanted = Wanted::parse(trigger.info.as_deref())?;
    let mut stored = serde_json::json!({"event": trigger.name, "data": trigger.data});
    if let Some(except) = except {
        stored["except"] = except.into();
    }
    let Ok(stored) = RawValue::from_string(stored.to_string()) else {
        return Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not store the event",
        ));
    };
    let data: Arc<RawValue> = stored.into();
    let channels = names
        .iter()
        .map(|name| internal(app, name))
        .collect::<Result<Vec<_>, _>>()?;
    for (channel, _) in &channels {
        state
            .node
            .publish(channel, data.clone(), ClientInfo::server(), None)
            .await?;
    }
    if !wanted.any() {
        return Ok(None);
    }
    let subscribers = subscribers(state).await?;
    let mut info = serde_json::Map::new();
    for ((channel, kind), name) in channels.iter().zip(&names) {
        let counts = counts(state, channel, *kind, wanted, &subscribers).await?;
        info.insert(name.clone(), counts.into());
    }
    Ok(Some(info.into()))
}

/// Pusher's socket id shape: `DIGITS.DIGITS`.
fn is_socket_id(id: &str) -> bool {
    id.len() <= 32
        && id.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        })
}

fn ok(body: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `POST /apps/APP_ID/events {"name","data","channels"|"channel","socket_id"?,"info"?}`.
pub async fn events(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let event: Trigger = serde_json::from_slice(&signed.body)
        .map_err(|err| refuse(StatusCode::BAD_REQUEST, format!("Invalid JSON: {err}")))?;
    Ok(match trigger(&state, &signed.app, event).await? {
        Some(info) => ok(serde_json::json!({ "channels": info })),
        None => ok(serde_json::json!({})),
    })
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Trigger>,
}

/// `POST /apps/APP_ID/batch_events {"batch":[EVENT, …]}`: up to 10 events, each as `events`
/// takes it (with `channel`), answered with each one's counts when any asked.
pub async fn batch_events(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let batch: Batch = serde_json::from_slice(&signed.body)
        .map_err(|err| refuse(StatusCode::BAD_REQUEST, format!("Invalid JSON: {err}")))?;
    if batch.batch.len() > MAX_BATCH {
        let message = format!("At most {MAX_BATCH} events a batch");
        return Err(refuse(StatusCode::BAD_REQUEST, message));
    }
    let mut answers = Vec::with_capacity(batch.batch.len());
    let mut any = false;
    for event in batch.batch {
        let info = trigger(&state, &signed.app, event).await?;
        any |= info.is_some();
        // One channel per batched event: its counts alone.
        let counts = info
            .and_then(|info| info.as_object().and_then(|m| m.values().next().cloned()))
            .unwrap_or_else(|| serde_json::json!({}));
        answers.push(counts);
    }
    Ok(if any {
        ok(serde_json::json!({ "batch": answers }))
    } else {
        ok(serde_json::json!({}))
    })
}

/// `GET /apps/APP_ID/channels?filter_by_prefix=&info=`: the app's occupied channels.
pub async fn channels(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let prefix = signed.param("filter_by_prefix").unwrap_or_default();
    let wanted = Wanted::parse(signed.param("info"))?;
    if wanted.user_count && !prefix.starts_with("presence-") {
        let message = "user_count needs filter_by_prefix=presence-";
        return Err(refuse(StatusCode::BAD_REQUEST, message));
    }
    let subscribers = subscribers(&state).await?;
    let mut listed = BTreeMap::new();
    for channel in subscribers.iter().filter(|(_, n)| **n > 0).map(|(c, _)| c) {
        let Some((app, name)) = channel::external(channel) else {
            continue;
        };
        if app != &*signed.app.id || !name.starts_with(prefix) {
            continue;
        }
        let Ok(kind) = channel::kind(&name) else {
            continue;
        };
        let counts = counts(&state, channel, kind, wanted, &subscribers).await?;
        listed.insert(name, counts);
    }
    Ok(ok(serde_json::json!({ "channels": listed })))
}

/// `GET /apps/APP_ID/channels/NAME?info=`: whether the channel is occupied, with counts.
pub async fn channel(
    State(state): State<AppState>,
    Path((app_id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let (channel, kind) = internal(&signed.app, &name)?;
    let wanted = Wanted::parse(signed.param("info"))?;
    let subscribers = subscribers(&state).await?;
    let asked = Wanted {
        subscription_count: true,
        ..wanted
    };
    let mut counts = counts(&state, &channel, kind, asked, &subscribers).await?;
    let occupied = counts
        .get("subscription_count")
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|n| n > 0);
    if !wanted.subscription_count {
        counts.remove("subscription_count");
    }
    counts.insert("occupied".into(), occupied.into());
    Ok(ok(counts.into()))
}

/// `GET /apps/APP_ID/channels/NAME/users`: a presence channel's user ids.
pub async fn users(
    State(state): State<AppState>,
    Path((app_id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let (channel, kind) = internal(&signed.app, &name)?;
    if kind.access != channel::Access::Presence {
        let message = "Users are listed for presence channels only";
        return Err(refuse(StatusCode::BAD_REQUEST, message));
    }
    let mut ids: Vec<Arc<str>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .node
            .presence(&channel, cursor.as_deref(), Presence::MAX_LIMIT)
            .await?;
        for member in page.members {
            if seen.insert(member.user.clone()) {
                ids.push(member.user);
            }
        }
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    let users: Vec<_> = ids
        .iter()
        .map(|id| serde_json::json!({ "id": id }))
        .collect();
    Ok(ok(serde_json::json!({ "users": users })))
}

/// `POST /users/USER_ID/terminate_connections`, as the Python SDK (3.3) sends it: the app is
/// the one whose `auth_key` signed the request.
pub async fn terminate_connections_of_key(
    State(state): State<AppState>,
    Path(user): Path<String>,
    request: Request,
) -> Result<Response, Refused> {
    let query = request.uri().query().unwrap_or_default();
    let key = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "auth_key")
        .map(|(_, key)| key.into_owned())
        .unwrap_or_default();
    let Some(app) = state.pusher_apps.iter().find(|app| app.key == key) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "Unknown auth_key"));
    };
    let app_id = app.id.to_string();
    terminate_connections(State(state), Path((app_id, user)), request).await
}

/// `POST /apps/APP_ID/users/USER_ID/terminate_connections`: closes every connection signed in
/// as that user, on every node, with Pusher's 4009 (pusher-js does not reconnect).
pub async fn terminate_connections(
    State(state): State<AppState>,
    Path((app_id, user)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Refused> {
    let signed = signed(&state, &app_id, request).await?;
    let user = format!("pusher:{}:{user}", signed.app.id);
    let code = CloseCode::app(4009).unwrap_or(CloseCode::Disconnected);
    state
        .node
        .disconnect_user(&user, code, "terminated by the app")
        .await?;
    Ok(ok(serde_json::json!({})))
}
