//! Pusher's HTTP API under `/apps/APP_ID/`, for Pusher's server SDKs: every request signed
//! with the app's secret ([`crate::pusher::sign`]), a wrong or stale one answered 401.

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AppState, body_bytes};
use crate::protocol::ClientInfo;
use crate::pusher::App as PusherApp;
use crate::pusher::channel;
use crate::pusher::sign::{self, MAX_CLOCK_SKEW_SECS};

/// At most this many channels per event, as Pusher allows.
const MAX_CHANNELS: usize = 100;

/// A refusal in Pusher's way: a status and a line of text.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
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

#[derive(Deserialize)]
struct Trigger {
    name: String,
    data: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
}

/// `POST /apps/APP_ID/events {"name","data","channels"|"channel"}`: the event, to each channel.
pub async fn events(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let Some(app) = state
        .pusher_apps
        .iter()
        .find(|app| *app.id == *app_id)
        .cloned()
    else {
        return refuse(StatusCode::NOT_FOUND, format!("Unknown app {app_id}"));
    };
    let body = match body_bytes(request, &state).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let path = format!("/apps/{app_id}/events");
    if let Err(why) = verify(&app, "POST", &path, query.as_deref().unwrap_or(""), &body) {
        return refuse(StatusCode::UNAUTHORIZED, why);
    }
    let trigger: Trigger = match serde_json::from_slice(&body) {
        Ok(trigger) => trigger,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, format!("Invalid JSON: {err}")),
    };
    let names: Vec<String> = trigger
        .channels
        .or(trigger.channel.map(|c| vec![c]))
        .unwrap_or_default();
    if names.is_empty() || names.len() > MAX_CHANNELS {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("1 to {MAX_CHANNELS} channels"),
        );
    }
    if trigger.name.is_empty() || trigger.name.len() > 200 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "An event name is 1 to 200 characters",
        );
    }
    if trigger.data.len() > state.max_message_size {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "Event data too large");
    }
    let stored = serde_json::json!({"event": trigger.name, "data": trigger.data}).to_string();
    let Ok(stored) = RawValue::from_string(stored) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not store the event",
        );
    };
    let data: std::sync::Arc<RawValue> = stored.into();
    let mut channels = Vec::with_capacity(names.len());
    for name in &names {
        let internal = channel::kind(name)
            .ok()
            .and_then(|kind| channel::internal(&app.id, name, kind));
        let Some(internal) = internal else {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("Invalid channel name {name:?}"),
            );
        };
        channels.push(internal);
    }
    for internal in &channels {
        if let Err(err) = state
            .node
            .publish(internal, data.clone(), ClientInfo::server(), None)
            .await
        {
            let error = super::ApiError::from(err);
            return error.into_response();
        }
    }
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}
