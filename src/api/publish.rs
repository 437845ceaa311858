//! Server API: publish, broadcast and history, for application backends.
//!
//! Publications made here carry `info: {"client":"api","user":"server"}`, so clients can tell
//! them from their peers'. The channel rules' `publish=false` binds clients only.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiError, ApiKey, AppState, JsonBody, channel_name as channel};
use crate::protocol::{ClientInfo, HistoryOk, IdempotencyKey, StreamPosition};

/// Most channels one broadcast may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Where a publication was stored.
#[derive(Debug, Serialize)]
pub struct Published {
    offset: u64,
    epoch: String,
    /// The publication waits for its user's `ack` (a `receipts=…` namespace): without one in
    /// time, the backend hears `undelivered`.
    receipts: bool,
}

fn checked_data(state: &AppState, data: Box<RawValue>) -> Result<Arc<RawValue>, ApiError> {
    if data.get().len() > state.max_message_size {
        return Err(ApiError::TooLarge(format!(
            "data is {} bytes; the limit is {} (--max-message-size)",
            data.get().len(),
            state.max_message_size
        )));
    }
    Ok(Arc::from(data))
}

fn checked_key(key: Option<String>) -> Result<Option<IdempotencyKey>, ApiError> {
    key.map(|key| IdempotencyKey::parse(&key))
        .transpose()
        .map_err(|err| ApiError::BadRequest(err.to_string()))
}

/// `POST /api/publish {"channel","data","idempotency_key"?}` → `{"offset","epoch","receipts"}`.
pub async fn publish(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<PublishRequest>,
) -> Result<Json<Published>, ApiError> {
    let channel = channel(&request.channel)?;
    let data = checked_data(&state, request.data)?;
    let key = checked_key(request.idempotency_key)?;
    let position = state
        .node
        .publish(&channel, data, ClientInfo::server(), key)
        .await?;
    Ok(Json(Published {
        offset: position.offset,
        epoch: position.epoch.to_string(),
        receipts: state.node.tracks_receipts(&channel),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// One channel's outcome in a broadcast.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BroadcastResult {
    Published {
        channel: String,
        offset: u64,
        epoch: String,
        receipts: bool,
    },
    Failed {
        channel: String,
        error: ErrorBody,
    },
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
pub struct Broadcasted {
    results: Vec<BroadcastResult>,
}

/// `POST /api/broadcast {"channels":[…],"data","idempotency_key"?}`: one payload to many
/// channels, each published on its own (a failure on one does not undo the others); the
/// idempotency key applies per channel.
pub async fn broadcast(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<BroadcastRequest>,
) -> Result<Json<Broadcasted>, ApiError> {
    if request.channels.is_empty() || request.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "\"channels\" must name 1 to {MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    let channels = request
        .channels
        .iter()
        .map(|name| channel(name))
        .collect::<Result<Vec<_>, _>>()?;
    let data = checked_data(&state, request.data)?;
    let key = checked_key(request.idempotency_key)?;
    let mut results = Vec::with_capacity(channels.len());
    for channel in channels {
        let published = state
            .node
            .publish(&channel, data.clone(), ClientInfo::server(), key.clone())
            .await;
        results.push(match published {
            Ok(position) => BroadcastResult::Published {
                channel: channel.to_string(),
                offset: position.offset,
                epoch: position.epoch.to_string(),
                receipts: state.node.tracks_receipts(&channel),
            },
            Err(err) => {
                let err = ApiError::from(err);
                BroadcastResult::Failed {
                    channel: channel.to_string(),
                    error: ErrorBody {
                        code: err.status_and_code().1,
                        message: err.to_string(),
                    },
                }
            }
        });
    }
    Ok(Json(Broadcasted { results }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<StreamPosition>,
}

/// `POST /api/history {"channel","limit"?,"since"?}` → `{"publications","offset","epoch"}`.
pub async fn history(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<HistoryRequest>,
) -> Result<Json<HistoryOk<Arc<RawValue>>>, ApiError> {
    let channel = channel(&request.channel)?;
    let history = state
        .node
        .history(&channel, request.since.as_ref(), request.limit)
        .await?;
    Ok(Json(HistoryOk {
        publications: history.publications,
        offset: history.position.offset,
        epoch: history.position.epoch.to_string(),
    }))
}
