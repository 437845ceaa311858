//! Connections and the protocols the benchmark speaks: Tidings protocol v1 and the naive
//! broadcast peer (every text frame goes to everybody).
//!
//! Connections are spread over several 127.0.0.x source addresses so that one load generator
//! can open more connections to one server port than one source address has ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Tidings protocol v1 (subscribe, publish, pub pushes with offsets).
    Tidings,
    /// The naive broadcast peer: no channels, every text frame is sent to every connection.
    Naive,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub urls: Vec<String>,
    pub protocol: Protocol,
    /// Spread connections over 127.0.0.1 … 127.0.0.N (loopback targets only).
    pub source_ips: u8,
}

impl Target {
    /// Opens connection number `index`: URL and source address chosen round-robin.
    pub async fn connect(&self, index: usize) -> Result<(Ws, Duration)> {
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
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok((ws, started.elapsed()))
    }
}

/// Subscribes (Tidings) and waits for the reply; the naive peer needs nothing.
pub async fn subscribe(ws: &mut Ws, protocol: Protocol, channel: &str) -> Result<()> {
    if protocol == Protocol::Naive {
        return Ok(());
    }
    let request = serde_json::json!({"id": 1, "op": "subscribe", "channel": channel});
    ws.send(Message::text(request.to_string())).await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        if frame["id"] == 1 {
            if frame.get("ok").is_some() {
                return Ok(());
            }
            bail!("subscribe {channel} failed: {}", frame["error"]);
        }
    }
    bail!("connection closed while subscribing")
}

/// The measured payload: send time (ns since the Unix epoch), publisher, sequence, padding.
pub fn payload(sent_ns: u64, publisher: u32, seq: u64, padding: &str) -> String {
    format!(r#"{{"t":{sent_ns},"p":{publisher},"s":{seq},"x":"{padding}"}}"#)
}

/// The frame a publisher sends.
pub fn publish_frame(protocol: Protocol, channel: &str, payload: &str) -> String {
    match protocol {
        // No id: success has no reply, so publishers add no traffic of their own.
        Protocol::Tidings => {
            format!(r#"{{"op":"publish","channel":"{channel}","data":{payload}}}"#)
        }
        Protocol::Naive => payload.to_owned(),
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

#[derive(Deserialize)]
struct PushFrame {
    #[serde(rename = "pub")]
    publication: Option<PubBody>,
    ping: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct PubBody {
    offset: u64,
    data: Delivery,
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
        Protocol::Tidings => match serde_json::from_str::<PushFrame>(text) {
            Ok(PushFrame {
                publication: Some(body),
                ..
            }) => Received::Delivery {
                offset: Some(body.offset),
                delivery: body.data,
            },
            Ok(PushFrame { ping: Some(_), .. }) => Received::Ping,
            Ok(PushFrame { error: Some(_), .. }) => Received::Error,
            _ => Received::Other,
        },
    }
}

/// The answer to a server heartbeat.
pub const PONG: &str = r#"{"op":"pong"}"#;

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
