//! A minimal Socket.IO chat server: the socketioxide comparison peer for
//! `tidings-bench --protocol socketio` (build and run: README.md).
//!
//! Namespace "/", two events:
//! - `subscribe` with a room name: joins that room; acknowledged with `"ok"` when the client
//!   asks for an ack (`420["subscribe","room"]` → `430["ok"]`).
//! - `publish` with two arguments, room and payload (`42["publish","room",{…}]`): emits
//!   `message` with the payload to every socket in the room, the publisher included, through
//!   the Redis adapter, so sockets on other nodes sharing the Redis server receive it too.
//!
//! Prints `listening on ADDR` once it accepts connections.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use fred::prelude::{Builder, Config};
use fred::types::RespVersion;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide_redis::{FredAdapter, RedisAdapterCtr};

#[derive(Debug, Parser)]
#[command(about = "Socket.IO chat server (socketioxide + Redis adapter), a tidings-bench peer")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8010")]
    listen: SocketAddr,
    /// Redis shared by all nodes (Redis ≥ 7: the adapter uses RESP3 and sharded pub/sub).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Engine.IO ping interval (socketioxide's default 25,000 ms).
    #[arg(long, default_value_t = 25_000)]
    ping_interval_ms: u64,
    /// Engine.IO ping timeout (socketioxide's default 20,000 ms).
    #[arg(long, default_value_t = 20_000)]
    ping_timeout_ms: u64,
    /// Packets one socket may have waiting to be written before `emit` fails with
    /// `InternalChannelFull` and the packet is dropped. socketioxide's default, 128, drops
    /// deliveries at the first burst of a fast fan-out; 8,192 of the bench's ~100-byte
    /// packets is about the 1 MiB a Tidings connection may queue.
    #[arg(long, default_value_t = 8192)]
    max_buffer_size: usize,
}

/// Broadcasts that failed since the last report, and the last error: printing every failure
/// as it happens (thousands a second under overload) would slow the server being measured.
static FAILED: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

async fn report_failures() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let failed = FAILED.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = LAST_ERROR.lock().map(|e| e.clone()).unwrap_or_default();
            eprintln!("{failed} broadcasts failed in the last second; the last: {last:.200}");
        }
    }
}

// The event handlers are registered in a connect *middleware*: socketioxide awaits
// middlewares before it sends the namespace's connect packet, but spawns the connect handler
// as a task of its own after sending it — so handlers registered there can come too late for
// a fast client's first event, which is then dropped (tidings-bench lost subscribes that way,
// and reported it as the peer failing set-up).
async fn register_handlers<A: Adapter>(
    socket: SocketRef<A>,
) -> Result<(), std::convert::Infallible> {
    socket.on("subscribe", on_subscribe);
    socket.on("publish", on_publish);
    Ok(())
}

async fn on_connect<A: Adapter>(_: SocketRef<A>) {}

async fn on_subscribe<A: Adapter>(
    socket: SocketRef<A>,
    Data(room): Data<String>,
    ack: AckSender<A>,
) {
    socket.join(room);
    // Fails only when the socket is already gone: nobody left to tell.
    let _ = ack.send("ok");
}

// The payload stays raw JSON: the server forwards it untouched, as Tidings does.
async fn on_publish<A: Adapter>(
    socket: SocketRef<A>,
    Data((room, payload)): Data<(String, Box<RawValue>)>,
) {
    if let Err(err) = socket.within(room).emit("message", &payload).await {
        FAILED.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = LAST_ERROR.lock() {
            *last = err.to_string();
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Benchmarks open thousands of sockets; the usual 1024 descriptors are not enough.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let mut config = Config::from_url(&args.redis_url)
        .with_context(|| format!("bad Redis URL {}", args.redis_url))?;
    // The adapter's fred driver expects RESP3, and fred ignores `?protocol=` in the URL.
    config.version = RespVersion::RESP3;
    let client = Builder::from_config(config)
        .build_subscriber_client()
        .context("building the Redis client")?;
    let adapter = RedisAdapterCtr::new_with_fred(client)
        .await
        .with_context(|| format!("connecting to Redis at {}", args.redis_url))?;

    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(args.ping_interval_ms))
        .ping_timeout(Duration::from_millis(args.ping_timeout_ms))
        .max_buffer_size(args.max_buffer_size)
        .with_adapter::<FredAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect.with(register_handlers))
        .await
        .context("setting up namespace / on the Redis adapter")?;

    tokio::spawn(report_failures());
    let app = axum::Router::new().layer(layer);
    // The accept queue Tidings listens with (tokio's default, 1,024, drops SYNs when every
    // client of a lost node comes back at once), so that a reconnect storm compares the
    // servers rather than their backlogs.
    let socket = match args.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let listener = socket.listen(65_535)?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await.context("serving")
}
