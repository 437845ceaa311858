//! Server API: which channels are active, and acting on a user's connections on every node
//! (subscribe, unsubscribe, disconnect). The commands travel through the broker, so with Redis
//! they reach the user's connections wherever they are.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiKey, AppState, JsonBody, channel_name as channel};
use crate::protocol::CloseCode;

/// Channels per page unless the request asks for fewer; and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsRequest {
    /// Only channels whose name starts with this.
    #[serde(default)]
    prefix: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// `name` (the default) or `subscribers`: the busiest first, ties by name.
    #[serde(default)]
    order: Order,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Order {
    #[default]
    Name,
    Subscribers,
}

/// Where a page ordered by subscribers ended: `COUNT/CHANNEL` (a channel name may hold `/`;
/// the count never does).
fn after_busiest(cursor: &str) -> Result<(usize, &str), ApiError> {
    cursor
        .split_once('/')
        .and_then(|(count, channel)| Some((count.parse().ok()?, channel)))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("\"cursor\" {cursor:?} is not one this API gave"))
        })
}

#[derive(Debug, Serialize)]
pub struct ChannelEntry {
    channel: String,
    subscribers: usize,
}

#[derive(Debug, Serialize)]
pub struct ChannelsPage {
    channels: Vec<ChannelEntry>,
    /// Pass it as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// `POST /api/channels {"prefix"?,"cursor"?,"limit"?,"order"?}`: channels with subscribers on
/// any node, by name (or the busiest first), with their subscriber counts (other nodes' as of
/// at most a few seconds ago).
pub async fn channels(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ChannelsRequest>,
) -> Result<Json<ChannelsPage>, ApiError> {
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "\"limit\" must be 1 to {MAX_PAGE}"
        )));
    }
    let prefix = request.prefix.unwrap_or_default();
    let mut all: Vec<(crate::protocol::ChannelName, usize)> = state.node.channels().await?;
    all.retain(|(channel, _)| channel.as_str().starts_with(&prefix));
    let mut page: Vec<ChannelEntry> = match request.order {
        Order::Name => all
            .into_iter()
            .filter(|(channel, _)| {
                let cursor = request.cursor.as_deref();
                cursor.is_none_or(|cursor| channel.as_str() > cursor)
            })
            .take(limit + 1)
            .map(|(channel, subscribers)| ChannelEntry {
                channel: channel.to_string(),
                subscribers,
            })
            .collect(),
        Order::Subscribers => {
            let after = request.cursor.as_deref().map(after_busiest).transpose()?;
            // Busiest first; among equals, by name (the list comes sorted by name).
            all.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            all.into_iter()
                .filter(|(channel, count)| {
                    after.is_none_or(|(after_count, after_channel)| {
                        *count < after_count
                            || (*count == after_count && channel.as_str() > after_channel)
                    })
                })
                .take(limit + 1)
                .map(|(channel, subscribers)| ChannelEntry {
                    channel: channel.to_string(),
                    subscribers,
                })
                .collect()
        }
    };
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|entry| match request.order {
            Order::Name => entry.channel.clone(),
            Order::Subscribers => format!("{}/{}", entry.subscribers, entry.channel),
        })
    } else {
        None
    };
    Ok(Json(ChannelsPage {
        channels: page,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChannelRequest {
    user: String,
    channel: String,
}

#[derive(Debug, Serialize)]
pub struct Done {}

fn user(name: &str) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::BadRequest(
            "\"user\" must be 1 to 256 bytes (a token's sub)".into(),
        ));
    }
    Ok(name.to_owned())
}

/// `POST /api/subscribe {"user","channel"}`: subscribes every connection of the user, on every
/// node, regardless of the channel's rules; each gets a `subscribed` push.
pub async fn subscribe(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<UserChannelRequest>,
) -> Result<Json<Done>, ApiError> {
    let (user, channel) = (user(&request.user)?, channel(&request.channel)?);
    state.node.subscribe_user(&user, &channel).await?;
    Ok(Json(Done {}))
}

/// `POST /api/unsubscribe {"user","channel"}`: unsubscribes every connection of the user, on
/// every node; each gets an `unsubscribed` push.
pub async fn unsubscribe(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<UserChannelRequest>,
) -> Result<Json<Done>, ApiError> {
    let (user, channel) = (user(&request.user)?, channel(&request.channel)?);
    state.node.unsubscribe_user(&user, &channel).await?;
    Ok(Json(Done {}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    user: String,
    /// Let the clients reconnect (close 4005) instead of telling them not to (4501).
    #[serde(default)]
    reconnect: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/disconnect {"user","reconnect"?,"reason"?}`: closes every connection of the
/// user on every node.
pub async fn disconnect(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DisconnectRequest>,
) -> Result<Json<Done>, ApiError> {
    let user = user(&request.user)?;
    let code = if request.reconnect {
        CloseCode::DisconnectedReconnect
    } else {
        CloseCode::Disconnected
    };
    let reason = request.reason.as_deref().unwrap_or(code.reason());
    state.node.disconnect_user(&user, code, reason).await?;
    Ok(Json(Done {}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsRequest {
    user: String,
}

/// `POST /api/connections {"user"}`: the user's connections on every node alive, each with
/// its channels; the nodes that did not answer within two seconds are named in `unanswered`.
pub async fn connections(
    _: ApiKey,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ConnectionsRequest>,
) -> Result<Json<crate::node::Lookup>, ApiError> {
    let user = user(&request.user)?;
    Ok(Json(state.node.lookup_user(&user).await?))
}
