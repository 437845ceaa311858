//! Pusher Channels (protocol 7), as pusher-js and Pusher's server SDKs speak it: the Tidings
//! Pusher door, Sockudo and Soketi measured by the same scenarios.
//!
//! Two ways to publish, two [`Protocol`](crate::conn::Protocol)s:
//! - `pusher`: subscribers on public channels, publishers trigger events over the HTTP API
//!   (`POST /apps/ID/events`, signed as the SDKs sign), one request at a time each, as a
//!   backend's workers do;
//! - `pusher-client`: everyone on `private-` channels (subscriptions signed with the app's
//!   secret), publishers send client events over their own WebSocket. Pusher never echoes a
//!   client event to its sender and allows 10 a second per connection.
//!
//! Channel names of the scenarios (`bench:fanout`) are not valid Pusher names: `:` becomes `-`.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tidings::pusher::sign::{Secret, body_md5, channel_auth_message, request_message};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Delivery, Received, Ws};

/// Client events one connection may send per second (Pusher's documented limit).
pub const CLIENT_EVENTS_PER_SECOND: f64 = 10.0;

/// The event name of every publication: client events must start with `client-`.
const TRIGGERED: &str = "bench";
const CLIENT_EVENT: &str = "client-bench";

/// The app the benchmark connects as (`--pusher-app ID:KEY:SECRET`).
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub key: String,
    secret: Secret,
}

/// `--pusher-app`'s default.
pub const DEFAULT_APP: &str = "bench:bench-key:bench-secret";

impl Default for App {
    fn default() -> Self {
        DEFAULT_APP.parse().expect("the default app is well formed")
    }
}

impl std::str::FromStr for App {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(key), Some(secret))
                if !id.is_empty() && !key.is_empty() && !secret.is_empty() =>
            {
                Ok(Self {
                    id: id.into(),
                    key: key.into(),
                    secret: Secret::new(secret),
                })
            }
            _ => Err(format!("expected APP_ID:KEY:SECRET, got {text:?}")),
        }
    }
}

/// The WebSocket URL of a node: a URL without a path gets `/app/KEY` with the query pusher-js
/// sends.
pub fn endpoint(url: &str, app: &App) -> String {
    let path = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    if path.is_empty() || path == "/" {
        format!(
            "{}/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
            url.trim_end_matches('/'),
            app.key
        )
    } else {
        url.to_owned()
    }
}

/// The Pusher name of a scenario's channel.
pub fn channel_name(channel: &str, private: bool) -> String {
    let name = channel.replace(':', "-");
    if private {
        format!("private-{name}")
    } else {
        name
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `pusher:connection_established`'s data (a JSON string in the frame).
#[derive(Deserialize)]
struct Established {
    socket_id: String,
}

/// Waits for `pusher:connection_established`; returns the socket id.
pub async fn handshake(ws: &mut Ws) -> Result<String> {
    let text = next_text(ws).await?;
    let event: Event<'_> =
        serde_json::from_str(&text).with_context(|| format!("not a Pusher event: {text:?}"))?;
    if event.event != "pusher:connection_established" {
        bail!("expected pusher:connection_established, got {text:?}");
    }
    let data = event.data.context("connection_established without data")?;
    let established: Established = serde_json::from_str(&data_text(data)?)?;
    Ok(established.socket_id)
}

/// Subscribes (signing a private channel's subscription) and waits for
/// `pusher_internal:subscription_succeeded`.
pub async fn subscribe(ws: &mut Ws, app: &App, socket_id: &str, name: &str) -> Result<()> {
    let data = if name.starts_with("private-") {
        let signature = app
            .secret
            .sign(&channel_auth_message(socket_id, name, None));
        serde_json::json!({"channel": name, "auth": format!("{}:{signature}", app.key)})
    } else {
        serde_json::json!({"channel": name})
    };
    let frame = serde_json::json!({"event": "pusher:subscribe", "data": data});
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let text = next_text(ws)
            .await
            .with_context(|| format!("subscribing to {name}"))?;
        let Ok(event) = serde_json::from_str::<Event<'_>>(&text) else {
            continue;
        };
        match &*event.event {
            "pusher_internal:subscription_succeeded" if event.channel.as_deref() == Some(name) => {
                return Ok(());
            }
            "pusher:subscription_error" | "pusher:error" => {
                bail!("subscribe {name} failed: {text}")
            }
            "pusher:ping" => ws.send(Message::text(PONG)).await?,
            _ => {}
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            return Ok(text.as_str().to_owned());
        }
    }
    bail!("connection closed")
}

/// An event's data: a JSON string (what the SDKs trigger) holds the JSON text.
fn data_text(data: &RawValue) -> Result<Cow<'_, str>> {
    if data.get().starts_with('"') {
        Ok(Cow::Owned(serde_json::from_str::<String>(data.get())?))
    } else {
        Ok(Cow::Borrowed(data.get()))
    }
}

/// The measured fields of a payload that came as a JSON string (`"{\"t\":1,\"p\":2,…"`),
/// read in place: the generator reads every delivery, and unescaping each into a new string
/// to parse it again would cost it more CPU than the server spends sending it. `t`, `p` and
/// `s` come first in every payload (see `conn::payload`), so their first occurrences are
/// theirs.
fn escaped_delivery(data: &str) -> Option<Delivery> {
    if !data.starts_with("\"{") {
        return None;
    }
    let number = |key: &str| -> Option<u64> {
        let at = data.find(key)? + key.len();
        let digits = &data[at..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    Some(Delivery {
        t: number(r#"\"t\":"#)?,
        p: u32::try_from(number(r#"\"p\":"#)?).ok()?,
        s: number(r#"\"s\":"#)?,
    })
}

/// A client event carrying `payload` (as an object, as pusher-js's `trigger` sends it).
pub fn client_event(channel: &str, payload: &str) -> String {
    format!(
        r#"{{"event":"{CLIENT_EVENT}","channel":"{}","data":{payload}}}"#,
        channel_name(channel, true)
    )
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

pub fn parse(text: &str) -> Received {
    let Ok(event) = serde_json::from_str::<Event<'_>>(text) else {
        return Received::Other;
    };
    match &*event.event {
        TRIGGERED | CLIENT_EVENT => {
            let delivery = event.data.and_then(|data| {
                escaped_delivery(data.get()).or_else(|| {
                    let text = data_text(data).ok()?;
                    serde_json::from_str::<Delivery>(&text).ok()
                })
            });
            match delivery {
                Some(delivery) => Received::Delivery {
                    offset: None,
                    delivery,
                },
                None => Received::Other,
            }
        }
        "pusher:ping" => Received::Ping,
        "pusher:error" => Received::Error,
        _ => Received::Other,
    }
}

/// Triggers events over one node's HTTP API, one request at a time.
pub struct Trigger {
    client: reqwest::Client,
    /// `http://HOST:PORT`
    base: String,
    app: App,
}

impl Trigger {
    /// For the node behind WebSocket URL `url`.
    pub fn new(url: &str, app: &App) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").context("URL without scheme")?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let scheme = if scheme == "wss" { "https" } else { "http" };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            client,
            base: format!("{scheme}://{authority}"),
            app: app.clone(),
        })
    }

    /// Publishes `payload` on `channel` (a scenario's name) as event `bench`, its data a JSON
    /// string as the SDKs send it.
    pub async fn send(&self, channel: &str, payload: &str) -> Result<()> {
        let body = serde_json::json!({
            "name": TRIGGERED,
            "channels": [channel_name(channel, false)],
            "data": payload,
        })
        .to_string();
        let path = format!("/apps/{}/events", self.app.id);
        let timestamp = crate::conn::now_ns() / 1_000_000_000;
        let query = vec![
            ("auth_key".to_owned(), self.app.key.clone()),
            ("auth_timestamp".to_owned(), timestamp.to_string()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            ("body_md5".to_owned(), body_md5(body.as_bytes())),
        ];
        let signature = self
            .app
            .secret
            .sign(&request_message("POST", &path, &query));
        let mut url = format!("{}{path}?", self.base);
        for (name, value) in &query {
            url.push_str(&format!("{name}={value}&"));
        }
        url.push_str(&format!("auth_signature={signature}"));
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        ensure!(
            status.is_success(),
            "trigger answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_names_and_frames() {
        let app: App = "bench:key:secret".parse().unwrap();
        assert_eq!(
            endpoint("ws://127.0.0.1:6001", &app),
            "ws://127.0.0.1:6001/app/key?protocol=7&client=js&version=8.4.0&flash=false"
        );
        assert_eq!(endpoint("ws://h:1/app/x", &app), "ws://h:1/app/x");
        assert!("bench:key".parse::<App>().is_err());
        assert_eq!(channel_name("bench:room:3", false), "bench-room-3");
        assert_eq!(channel_name("bench:room:3", true), "private-bench-room-3");

        let body = crate::conn::payload(5, 1, 7, "xx");
        // A trigger's data arrives as a JSON string, a client event's as the object sent.
        let triggered = serde_json::json!({"event": "bench", "channel": "c", "data": body});
        let Received::Delivery { delivery, .. } = parse(&triggered.to_string()) else {
            panic!("not a delivery: {triggered}");
        };
        assert_eq!((delivery.t, delivery.p, delivery.s), (5, 1, 7));
        let chat = crate::conn::payload(1_796_000_000_000_000_000, 3, 12, crate::conn::CHAT);
        let escaped = serde_json::to_string(&chat).unwrap();
        let read = escaped_delivery(&escaped).expect("read in place");
        assert_eq!((read.t, read.p, read.s), (1_796_000_000_000_000_000, 3, 12));
        assert!(
            escaped_delivery(r#""{\"t\":1}""#).is_none(),
            "p and s missing"
        );
        let event = client_event("bench:fanout", &body);
        assert!(event.contains(r#""channel":"private-bench-fanout""#));
        let Received::Delivery { delivery, .. } = parse(&event) else {
            panic!("not a delivery: {event}");
        };
        assert_eq!(delivery.s, 7);
        assert!(matches!(
            parse(r#"{"event":"pusher:ping","data":{}}"#),
            Received::Ping
        ));
        assert!(matches!(
            parse(r#"{"event":"pusher:error","data":{"code":4301,"message":"slow"}}"#),
            Received::Error
        ));
        assert!(matches!(
            parse(r#"{"event":"other","channel":"c","data":"{}"}"#),
            Received::Other
        ));
    }
}
