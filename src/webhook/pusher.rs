//! Pusher's webhook format: which queued events are a Pusher app's, and how they read in
//! Pusher's words — `{"time_ms":…,"events":[{"name":"channel_occupied","channel":…},…]}`,
//! signed with `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 of the body with the app's
//! secret, in hex).

use serde::Deserialize;
use serde_json::json;

use super::PusherDestination;
use crate::protocol::ChannelName;
use crate::pusher::channel;

/// Where one queued event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `--webhook-url`, in Tidings' format.
    Native,
    /// `--pusher-webhook-url`, for the app at this index.
    Pusher(usize),
    /// Nobody asked for it.
    Nowhere,
}

/// The fields of a queued event that say where it goes and what Pusher calls it.
#[derive(Deserialize)]
struct Queued {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// A client event's stored publication (`{"event","data","user_id"?,"except"}`).
    #[serde(default)]
    data: Option<String>,
}

/// Where `event` goes, given the destinations configured.
pub(super) fn route(event: &str, native: bool, pusher: Option<&PusherDestination>) -> Route {
    let Ok(queued) = serde_json::from_str::<Queued>(event) else {
        return Route::Nowhere;
    };
    let app = queued
        .channel
        .as_deref()
        .and_then(|name| ChannelName::parse(name).ok())
        .and_then(|name| channel::external(&name).map(|(app, _)| app.to_owned()));
    if let Some(app) = app {
        return pusher
            .and_then(|pusher| pusher.apps.iter().position(|known| *known.id == *app))
            .map_or(Route::Nowhere, Route::Pusher);
    }
    // A Pusher user's sign-in makes no native event.
    let pusher_user = queued
        .user
        .as_deref()
        .is_some_and(|user| user.starts_with("pusher:"));
    if native && !pusher_user {
        Route::Native
    } else {
        Route::Nowhere
    }
}

/// One queued event as Pusher names it; `None` for kinds Pusher has no webhook for.
fn event(queued: &str) -> Option<serde_json::Value> {
    let queued: Queued = serde_json::from_str(queued).ok()?;
    let channel = ChannelName::parse(queued.channel.as_deref()?).ok()?;
    let (_, name) = channel::external(&channel)?;
    match queued.kind.as_str() {
        "channel_occupied" | "channel_vacated" | "cache_miss" => {
            Some(json!({ "name": queued.kind, "channel": name }))
        }
        "member_added" | "member_removed" => {
            Some(json!({ "name": queued.kind, "channel": name, "user_id": queued.user? }))
        }
        "client_event" => {
            #[derive(Deserialize)]
            struct Stored {
                event: String,
                data: Box<serde_json::value::RawValue>,
                #[serde(default)]
                user_id: Option<String>,
                #[serde(default)]
                except: Option<String>,
            }
            let stored: Stored = serde_json::from_str(queued.data.as_deref()?).ok()?;
            // Pusher's webhook carries the data as the client sent it, as a string.
            let data = serde_json::from_str::<String>(stored.data.get())
                .unwrap_or_else(|_| stored.data.get().to_owned());
            let mut event = json!({
                "name": "client_event",
                "channel": name,
                "event": stored.event,
                "data": data,
                "socket_id": stored.except,
            });
            if let Some(user) = stored.user_id {
                event["user_id"] = user.into();
            }
            Some(event)
        }
        _ => None,
    }
}

/// The body of one POST: the events Pusher has words for, at `time_ms`.
pub(super) fn body(events: &[String], time_ms: u128) -> String {
    let events: Vec<serde_json::Value> = events.iter().filter_map(|e| event(e)).collect();
    json!({ "time_ms": time_ms, "events": events }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_events_read_in_pushers_words() {
        let queued = [
            r#"{"type":"channel_occupied","channel":"pusher:1/news","id":"1-1","time_ms":5}"#,
            r#"{"type":"member_added","channel":"pusher-presence:1/presence-a","user":"ann"}"#,
            r#"{"type":"client_event","channel":"pusher:1/private-a","data":"{\"event\":\"client-x\",\"data\":{\"n\":1},\"except\":\"1.2\"}"}"#,
            r#"{"type":"cache_miss","channel":"pusher:1/cache-a=c"}"#,
            r#"{"type":"user_online","user":"ann"}"#,
        ]
        .map(str::to_owned);
        let body: serde_json::Value = serde_json::from_str(&body(&queued, 9)).unwrap();
        assert_eq!(
            body,
            json!({"time_ms": 9, "events": [
                {"name": "channel_occupied", "channel": "news"},
                {"name": "member_added", "channel": "presence-a", "user_id": "ann"},
                {"name": "client_event", "channel": "private-a", "event": "client-x",
                 "data": "{\"n\":1}", "socket_id": "1.2"},
                {"name": "cache_miss", "channel": "cache-a,"},
            ]})
        );
    }

    #[test]
    fn each_event_goes_where_it_belongs() {
        let apps: std::sync::Arc<[_]> = ["1", "2"]
            .map(|id| {
                std::sync::Arc::new(crate::pusher::App {
                    id: id.into(),
                    key: format!("key-{id}"),
                    secret: crate::pusher::sign::Secret::new("s"),
                })
            })
            .into();
        let pusher = PusherDestination {
            url: reqwest::Url::parse("http://127.0.0.1:1/").unwrap(),
            apps,
        };
        let app2 = r#"{"type":"channel_vacated","channel":"pusher:2/x"}"#;
        let native = r#"{"type":"channel_vacated","channel":"chat:x"}"#;
        let signed_in = r#"{"type":"user_online","user":"pusher:1:ann"}"#;
        assert_eq!(route(app2, true, Some(&pusher)), Route::Pusher(1));
        assert_eq!(route(app2, true, None), Route::Nowhere);
        assert_eq!(
            route(
                r#"{"type":"channel_vacated","channel":"pusher:9/x"}"#,
                true,
                Some(&pusher)
            ),
            Route::Nowhere
        );
        assert_eq!(route(native, true, Some(&pusher)), Route::Native);
        assert_eq!(route(native, false, Some(&pusher)), Route::Nowhere);
        assert_eq!(route(signed_in, true, Some(&pusher)), Route::Nowhere);
    }
}
