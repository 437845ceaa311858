//! Server API: who is present in a channel, and how many, for application backends. The
//! channel's rules do not apply (the backend may read any channel's presence), its namespace's
//! `presence` option does.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::{ApiError, ApiKey, AppState, JsonBody, channel_name as channel};
use crate::protocol::{Presence, PresenceOk, PresenceStatsOk};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `POST /api/presence {"channel","limit"?,"cursor"?}` → `{"clients":[…],"cursor"}`: at most
/// `limit` (100; up to 1,000) members ordered by client id; pass `cursor` back for the next
/// page, until it is `null`.
pub async fn presence(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<PresenceRequest>,
) -> Result<Json<PresenceOk>, ApiError> {
    let channel = channel(&request.channel)?;
    let limit = request.limit.unwrap_or(Presence::DEFAULT_LIMIT);
    if limit == 0 || limit > Presence::MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "\"limit\" must be 1 to {}",
            Presence::MAX_LIMIT
        )));
    }
    let page = state
        .node
        .presence(&channel, request.cursor.as_deref(), limit)
        .await?;
    Ok(Json(PresenceOk {
        clients: page.members,
        cursor: page.cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsRequest {
    channel: String,
}

/// `POST /api/presence_stats {"channel"}` → `{"clients","users"}`, without scanning members.
pub async fn presence_stats(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<StatsRequest>,
) -> Result<Json<PresenceStatsOk>, ApiError> {
    let channel = channel(&request.channel)?;
    let stats = state.node.presence_stats(&channel).await?;
    Ok(Json(PresenceStatsOk {
        clients: stats.clients,
        users: stats.users,
    }))
}
