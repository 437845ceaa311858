//! Connections and the protocols the benchmark speaks: Tidings protocol v1, the naive
//! broadcast peer (every text frame goes to everybody), Socket.IO v5 over Engine.IO v4
//! WebSockets (the socketioxide peer in bench/peers/socketioxide), and Pusher Channels
//! ([`crate::pusher`]: Tidings' Pusher door, Sockudo, Soketi).
//!
//! Connections are spread over several 127.0.0.x source addresses so that one load generator
//! can open more connections to one server port than one source address has ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tidings::protocol::{
    ChannelName, Command, Outcome, PublicationRef, Publish, Push, Reply, Request, ServerFrame,
    Subscribe,
};
use tidings::transport::deflate::Inflating;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<Inflating<MaybeTlsStream<TcpStream>>>;

/// The largest message a benchmark client takes (inflated).
const MAX_MESSAGE: usize = 64 << 20;

/// What the server speaks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Tidings protocol v1 (subscribe, publish, pub pushes with offsets).
    Tidings,
    /// The naive broadcast peer: no channels, every text frame is sent to every connection.
    Naive,
    /// Socket.IO (Engine.IO v4, WebSocket transport only), namespace "/": event `subscribe`
    /// with the channel (acked), `publish` with channel and payload, deliveries as `message`.
    Socketio,
    /// Pusher Channels protocol 7 at /app/KEY (--pusher-app): public channels, publishers
    /// trigger events over the HTTP API (`POST /apps/ID/events`), one request at a time each.
    Pusher,
    /// Pusher Channels on `private-` channels: publishers send client events over their
    /// WebSocket (at most 10/s each, as Pusher allows) and, being subscribed, receive everyone
    /// else's (a client event never comes back to its sender).
    #[value(name = "pusher-client")]
    #[serde(rename = "pusher-client")]
    PusherClient,
}

impl Protocol {
    pub fn is_pusher(self) -> bool {
        matches!(self, Protocol::Pusher | Protocol::PusherClient)
    }

    /// How many connections receive one publication on a channel with `subscribers`
    /// subscribing connections and `publishers` publishing ones: Pusher's client events come
    /// to every other connection on the channel, publishers included (they must subscribe to
    /// send); everywhere else, to the subscribers.
    pub fn audience(self, subscribers: usize, publishers: usize) -> u64 {
        match self {
            Protocol::PusherClient => (subscribers + publishers).saturating_sub(1) as u64,
            _ => subscribers as u64,
        }
    }
}

/// How a chat member reaches a Tidings server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A WebSocket.
    Ws,
    /// An HTTP stream (`GET /stream`, NDJSON) and command requests (`POST /stream`).
    Stream,
    /// Server-Sent Events (`GET /sse`): `idle` only.
    Sse,
}

/// Where Engine.IO listens unless told otherwise.
const SOCKETIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The URL to open: a Socket.IO URL without a path gets the default Engine.IO endpoint, so
/// `ws://host:port` is enough.
pub fn endpoint(protocol: Protocol, url: &str) -> String {
    let path = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    if protocol == Protocol::Socketio && (path.is_empty() || path == "/") {
        format!("{}{SOCKETIO_PATH}", url.trim_end_matches('/'))
    } else {
        url.to_owned()
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub urls: Vec<String>,
    pub protocol: Protocol,
    /// Spread connections over 127.0.0.1 … 127.0.0.N (loopback targets only).
    pub source_ips: u8,
    /// Offer permessage-deflate, as browsers do.
    pub deflate: bool,
    /// The app Pusher connections use.
    pub pusher: std::sync::Arc<crate::pusher::App>,
}

impl Target {
    /// Opens connection number `index` (see [`Target::connect`]) and subscribes it to
    /// `channel`, if any.
    pub async fn open(&self, index: usize, channel: Option<&str>) -> Result<(Ws, Duration)> {
        let (mut ws, took, socket_id) = self.connect_as(index).await?;
        if let Some(channel) = channel {
            match socket_id {
                Some(socket_id) => {
                    let private = self.protocol == Protocol::PusherClient;
                    let name = crate::pusher::channel_name(channel, private);
                    crate::pusher::subscribe(&mut ws, &self.pusher, &socket_id, &name).await?;
                }
                None => subscribe(&mut ws, self.protocol, channel).await?,
            }
        }
        Ok((ws, took))
    }

    /// Opens connection number `index`: URL and source address chosen round-robin.
    pub async fn connect(&self, index: usize) -> Result<(Ws, Duration)> {
        let (ws, took, _) = self.connect_as(index).await?;
        Ok((ws, took))
    }

    /// Opens connection number `index`; a Pusher connection's socket id with it.
    async fn connect_as(&self, index: usize) -> Result<(Ws, Duration, Option<String>)> {
        let url = &self.urls[index % self.urls.len()];
        let authority = url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .context("URL without scheme")?;
        let addr: SocketAddr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .with_context(|| format!("cannot resolve {authority}"))?;
        let started = Instant::now();
        let socket = TcpSocket::new_v4()?;
        if addr.ip().is_loopback() && self.source_ips > 1 {
            let last = 1 + (index % usize::from(self.source_ips)) as u8;
            socket.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                0,
            ))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        // Small buffers: the load generator must hold tens of thousands of connections.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        if self.deflate {
            request.headers_mut().insert(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits".parse()?,
            );
        }
        let io = Inflating::new(MaybeTlsStream::Plain(stream), MAX_MESSAGE, false);
        let (mut ws, response) =
            tokio_tungstenite::client_async_with_config(request, io, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake with {url}"))?;
        if response.headers().contains_key("sec-websocket-extensions") {
            ws.get_mut().enable();
        }
        if self.protocol == Protocol::Socketio {
            // Not usable before the namespace is joined, so that counts as connecting too.
            socketio_handshake(&mut ws)
                .await
                .with_context(|| format!("Socket.IO handshake with {url}"))?;
        }
        let socket_id = if self.protocol.is_pusher() {
            // Not usable before the socket id is known either.
            let id = crate::pusher::handshake(&mut ws)
                .await
                .with_context(|| format!("Pusher handshake with {url}"))?;
            Some(id)
        } else {
            None
        };
        Ok((ws, started.elapsed(), socket_id))
    }
}

/// Engine.IO open packet (`0{…}`), then joins namespace "/": `40` answered by `40{"sid":…}`.
async fn socketio_handshake(ws: &mut Ws) -> Result<()> {
    let open = next_text(ws).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:?}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let text = next_text(ws).await?;
        match text.as_str() {
            "2" => ws.send(Message::text(SOCKETIO_PONG)).await?,
            t if t.starts_with("40") => return Ok(()),
            t => bail!("namespace / refused: {t:?}"),
        }
    }
}

/// The next text frame, skipping others.
async fn next_text(ws: &mut Ws) -> Result<String> {
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            return Ok(text.as_str().to_owned());
        }
    }
    bail!("connection closed")
}

/// Subscribes and waits for the reply (Tidings) or the ack (Socket.IO); the naive peer
/// needs nothing.
pub async fn subscribe(ws: &mut Ws, protocol: Protocol, channel: &str) -> Result<()> {
    match protocol {
        Protocol::Naive => return Ok(()),
        Protocol::Socketio => return socketio_subscribe(ws, channel).await,
        Protocol::Pusher | Protocol::PusherClient => {
            bail!("a Pusher connection subscribes with Target::open (it signs with its socket id)")
        }
        Protocol::Tidings => {}
    }
    let request = Request {
        id: Some(1),
        command: Command::<()>::Subscribe(Subscribe {
            channel: ChannelName::parse(channel)?,
            since: None,
            token: None,
            extras: Default::default(),
        }),
    };
    ws.send(Message::text(serde_json::to_string(&request)?))
        .await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        match ServerFrame::parse(&text)? {
            ServerFrame::Reply(Reply {
                id: 1,
                outcome: Outcome::Ok(_),
            }) => return Ok(()),
            ServerFrame::Reply(Reply {
                outcome: Outcome::Error(error),
                ..
            }) => bail!("subscribe {channel} failed: {error:?}"),
            _ => continue,
        }
    }
    bail!("connection closed while subscribing")
}

/// `420["subscribe",channel]`, acknowledged by `430[…]` (ack id 0: one subscription per
/// connection).
async fn socketio_subscribe(ws: &mut Ws, channel: &str) -> Result<()> {
    let request = format!(r#"420["subscribe",{}]"#, serde_json::to_string(channel)?);
    ws.send(Message::text(request)).await?;
    loop {
        let text = next_text(ws)
            .await
            .with_context(|| format!("subscribing to {channel}"))?;
        match text.as_str() {
            "2" => ws.send(Message::text(SOCKETIO_PONG)).await?,
            t if t.starts_with("430") => return Ok(()),
            t if t.starts_with("44") || t.starts_with("41") => {
                bail!("subscribe {channel} failed: {t}")
            }
            _ => {}
        }
    }
}

/// The measured payload: send time (ns since the Unix epoch), publisher, sequence, and padding
/// (`x`) or, when `padding` is [`CHAT`], a realistic chat message.
pub fn payload(sent_ns: u64, publisher: u32, seq: u64, padding: &str) -> String {
    if padding == CHAT {
        let message = chat_message(publisher, seq);
        return format!(r#"{{"t":{sent_ns},"p":{publisher},"s":{seq},"x":{message}}}"#);
    }
    format!(r#"{{"t":{sent_ns},"p":{publisher},"s":{seq},"x":"{padding}"}}"#)
}

/// The padding that asks for chat messages instead (`--chat-payload`).
pub const CHAT: &str = "<chat>";

/// A chat message as a chat app sends it: ids, an author, a sentence, a timestamp.
fn chat_message(publisher: u32, seq: u64) -> String {
    const NAMES: [&str; 4] = ["Ann Lee", "Bob Marsh", "Chidi Okafor", "Dana Ruiz"];
    const TEXTS: [&str; 6] = [
        "Deploy finished, dashboards look good and the error rate is back to normal.",
        "Can someone review the migration before lunch? It touches the billing tables.",
        "I'll be ten minutes late to the standup, start without me.",
        "The new onboarding flow doubled the sign-ups on mobile this week!",
        "Heads up: the staging database restarts at 3pm for the upgrade.",
        "Thanks everyone, the customer confirmed the fix works on their side.",
    ];
    let name = NAMES[publisher as usize % NAMES.len()];
    let text = TEXTS[seq as usize % TEXTS.len()];
    format!(
        r#"{{"type":"message","id":"m-{publisher}-{seq}","room":"general","author":{{"id":"u-{publisher}","name":"{name}","avatar":"https://cdn.example.com/avatars/u-{publisher}.png"}},"text":"{text}","sent_at":"2026-12-01T10:{:02}:{:02}Z","reactions":[]}}"#,
        seq / 60 % 60,
        seq % 60
    )
}

/// The frame a publisher sends.
pub fn publish_frame(protocol: Protocol, channel: &str, payload: &str) -> String {
    match protocol {
        // No id: success has no reply, so publishers add no traffic of their own.
        Protocol::Tidings => {
            let (Ok(channel), Ok(data)) = (
                ChannelName::parse(channel),
                serde_json::from_str::<&RawValue>(payload),
            ) else {
                // The scenarios name valid channels and build valid payloads.
                unreachable!("invalid channel {channel:?} or payload {payload:?}")
            };
            let request = Request {
                id: None,
                command: Command::Publish(Publish {
                    channel,
                    data,
                    idempotency_key: None,
                    webhook: false,
                }),
            };
            serde_json::to_string(&request).unwrap_or_default()
        }
        Protocol::Naive => payload.to_owned(),
        // No ack requested, for the same reason.
        Protocol::Socketio => format!(r#"42["publish","{channel}",{payload}]"#),
        // Pusher publishers over HTTP (`pusher`) use crate::pusher::Trigger instead.
        Protocol::Pusher | Protocol::PusherClient => crate::pusher::client_event(channel, payload),
    }
}

/// One delivery as read back.
#[derive(Debug, Deserialize)]
pub struct Delivery {
    pub t: u64,
    pub p: u32,
    pub s: u64,
}

/// What a received frame means to the benchmark.
pub enum Received {
    Delivery {
        offset: Option<u64>,
        delivery: Delivery,
    },
    Ping,
    Error,
    Other,
}

pub fn parse(protocol: Protocol, text: &str) -> Received {
    match protocol {
        Protocol::Naive => match serde_json::from_str::<Delivery>(text) {
            Ok(delivery) => Received::Delivery {
                offset: None,
                delivery,
            },
            Err(_) => Received::Other,
        },
        // Publications are read without allocating: the generator reads every one.
        Protocol::Tidings => match serde_json::from_str::<Push<PublicationRef<'_, Delivery>>>(text)
        {
            Ok(Push::Pub(publication)) => Received::Delivery {
                offset: Some(publication.offset),
                delivery: publication.data,
            },
            Ok(Push::Ping {}) => Received::Ping,
            Ok(Push::Error(_)) => Received::Error,
            _ => Received::Other,
        },
        Protocol::Socketio => parse_socketio(text),
        Protocol::Pusher | Protocol::PusherClient => crate::pusher::parse(text),
    }
}

/// A delivery read without a JSON parser, for the lean receive path ([`crate::lean`]): the
/// generator's own payload (`{"t":…,"p":…,"s":…`) where each protocol puts it, and a Tidings
/// push's offset before it. None for anything else (heartbeats, errors, replies, Pusher's
/// data as a JSON string), which then takes [`parse`]; the two agree on deliveries (tested).
pub fn parse_fast(protocol: Protocol, text: &[u8]) -> Option<Received> {
    let (offset, payload) = match protocol {
        Protocol::Naive => (None, text),
        Protocol::Socketio => (None, text.strip_prefix(br#"42["message","#)?),
        Protocol::Tidings => {
            // What `Publication` writes: channel, offset, epoch, data, info (neither the
            // channel nor the epoch has a quote in it).
            let rest = text.strip_prefix(br#"{"pub":{"channel":""#)?;
            let (offset, rest) = number(after_quote(rest)?.strip_prefix(br#","offset":"#)?)?;
            let rest = after_quote(rest.strip_prefix(br#","epoch":""#)?)?;
            (Some(offset), rest.strip_prefix(br#","data":"#)?)
        }
        Protocol::Pusher | Protocol::PusherClient => return None,
    };
    let (t, rest) = number(payload.strip_prefix(br#"{"t":"#)?)?;
    let (p, rest) = number(rest.strip_prefix(br#","p":"#)?)?;
    let (s, _) = number(rest.strip_prefix(br#","s":"#)?)?;
    let p = u32::try_from(p).ok()?;
    Some(Received::Delivery {
        offset,
        delivery: Delivery { t, p, s },
    })
}

/// What follows the first `"` in `bytes`.
fn after_quote(bytes: &[u8]) -> Option<&[u8]> {
    let at = bytes.iter().position(|&b| b == b'"')?;
    Some(&bytes[at + 1..])
}

/// A JSON unsigned integer at the start of `bytes` (no sign, fraction or exponent: what the
/// generator writes), and what follows it.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && bytes[0] == b'0') {
        return None;
    }
    let value = bytes[..digits].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    let rest = &bytes[digits..];
    if matches!(rest.first(), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((value, rest))
}

/// One Engine.IO packet per WebSocket frame: `2` ping, `42[event,…]` event, `41` namespace
/// disconnect, `44{…}` namespace error, `1` close.
fn parse_socketio(text: &str) -> Received {
    if text == "2" {
        return Received::Ping;
    }
    if let Some(event) = text.strip_prefix("42") {
        return match serde_json::from_str::<(&str, Delivery)>(event) {
            Ok(("message", delivery)) => Received::Delivery {
                offset: None,
                delivery,
            },
            _ => Received::Other,
        };
    }
    if text == "1" || text.starts_with("41") || text.starts_with("44") {
        return Received::Error;
    }
    Received::Other
}

/// Engine.IO's answer to a ping.
const SOCKETIO_PONG: &str = "3";

/// The answer to a server heartbeat (the naive peer sends none).
pub fn pong(protocol: Protocol) -> String {
    match protocol {
        Protocol::Socketio => SOCKETIO_PONG.to_owned(),
        Protocol::Pusher | Protocol::PusherClient => crate::pusher::PONG.to_owned(),
        Protocol::Tidings | Protocol::Naive => {
            let pong = Request {
                id: None,
                command: Command::<()>::Pong,
            };
            serde_json::to_string(&pong).unwrap_or_default()
        }
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_urls_without_a_path_get_the_engine_io_endpoint() {
        let full = "ws://127.0.0.1:8010/socket.io/?EIO=4&transport=websocket";
        for url in ["ws://127.0.0.1:8010", "ws://127.0.0.1:8010/", full] {
            assert_eq!(endpoint(Protocol::Socketio, url), full);
        }
        assert_eq!(endpoint(Protocol::Tidings, "ws://h:1"), "ws://h:1");
    }

    #[test]
    fn socketio_frames() {
        let body = payload(5, 1, 7, "xx");
        let frame = format!(r#"42["message",{body}]"#);
        let Received::Delivery { offset, delivery } = parse(Protocol::Socketio, &frame) else {
            panic!("not a delivery: {frame}");
        };
        assert_eq!(
            (offset, delivery.t, delivery.p, delivery.s),
            (None, 5, 1, 7)
        );
        assert!(matches!(parse(Protocol::Socketio, "2"), Received::Ping));
        assert!(matches!(
            parse(Protocol::Socketio, r#"42["other",1]"#),
            Received::Other
        ));
        assert!(matches!(parse(Protocol::Socketio, "41"), Received::Error));
        assert_eq!(
            publish_frame(Protocol::Socketio, "c", &body),
            format!(r#"42["publish","c",{body}]"#)
        );
    }

    #[test]
    fn tidings_frames_are_what_the_server_reads_and_writes() {
        let body = payload(5, 1, 7, "xx");
        let frame = publish_frame(Protocol::Tidings, "bench", &body);
        let request = tidings::protocol::decode_request(&frame).expect("a request");
        match request.command {
            Command::Publish(publish) => {
                assert_eq!(publish.channel.as_str(), "bench");
                assert_eq!(publish.data.get(), body);
            }
            other => panic!("decoded as {other:?}"),
        }
        let push = format!(
            r#"{{"pub":{{"channel":"bench","offset":9,"epoch":"e","data":{body},"info":{{"client":"c","user":"u"}}}}}}"#
        );
        let Received::Delivery { offset, delivery } = parse(Protocol::Tidings, &push) else {
            panic!("not a delivery: {push}");
        };
        assert_eq!((offset, delivery.s), (Some(9), 7));
        assert!(matches!(
            parse(Protocol::Tidings, r#"{"ping":{}}"#),
            Received::Ping
        ));
        assert_eq!(pong(Protocol::Tidings), r#"{"op":"pong"}"#);
    }

    /// The lean path's reading agrees with the full parse on every protocol's deliveries,
    /// Tidings' as the server's own types write them, and leaves the rest to it.
    #[test]
    fn fast_parse_agrees_with_the_full_parse() {
        let body = payload(1_733_000_000_123_456_789, 3, 42, "xxxx");
        let chat = payload(5, 0, 7, CHAT);
        let publication = tidings::protocol::Publication {
            channel: ChannelName::parse("b-1:fanout").unwrap(),
            offset: 1234,
            epoch: "k3Jq9".into(),
            data: RawValue::from_string(body.clone()).unwrap(),
            info: tidings::protocol::ClientInfo {
                client: "c1".into(),
                user: "u".into(),
            },
        };
        let tidings_push = tidings::protocol::encode(&Push::Pub(publication));
        let deliveries = [
            (Protocol::Tidings, tidings_push),
            (Protocol::Naive, body.clone()),
            (Protocol::Naive, chat.clone()),
            (Protocol::Socketio, format!(r#"42["message",{body}]"#)),
            (Protocol::Socketio, format!(r#"42["message",{chat}]"#)),
        ];
        for (protocol, text) in &deliveries {
            let (
                Some(Received::Delivery { offset, delivery }),
                Received::Delivery {
                    offset: o,
                    delivery: d,
                },
            ) = (
                parse_fast(*protocol, text.as_bytes()),
                parse(*protocol, text),
            )
            else {
                panic!("{protocol:?} {text}: not a delivery both ways");
            };
            assert_eq!(
                (offset, delivery.t, delivery.p, delivery.s),
                (o, d.t, d.p, d.s),
                "{text}"
            );
        }
        for (protocol, text) in [
            (Protocol::Tidings, r#"{"ping":{}}"#),
            (Protocol::Tidings, r#"{"id":1,"ok":{}}"#),
            (Protocol::Socketio, "2"),
            (Protocol::Naive, r#"{"t":1.5,"p":0,"s":1}"#),
            (Protocol::Naive, r#"{"t":99999999999999999999,"p":0,"s":1}"#),
            (Protocol::Naive, r#"{"t":1,"p":4294967296,"s":1}"#),
            (
                Protocol::Pusher,
                r#"{"event":"e","channel":"c","data":"{\"t\":1}"}"#,
            ),
        ] {
            assert!(parse_fast(protocol, text.as_bytes()).is_none(), "{text}");
        }
    }
}
