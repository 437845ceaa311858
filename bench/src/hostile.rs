//! `hostile`: what one client can make Tidings do to everyone else (issue 22), measured over
//! real connections on loopback, for docs/benchmarks.md's "Hostile clients" table.
//!
//! - `churn`: C anonymous connections subscribe to and leave a new channel name each time, at
//!   just under the default command rate, for D seconds: the node's RSS and Redis's memory
//!   added, and — with a webhook receiver served here — how late a real `user_online` arrives
//!   when a user connects halfway through.
//! - `presence-churn`: M members in one chat room while one connection joins and leaves it at
//!   the command rate: the presence frames each member receives a second.
//! - `stream-flood`: one address POSTs command requests for made-up stream sessions (and for
//!   one a digit off a real one) to every node for D seconds: what Redis delivered meanwhile,
//!   and whether a real session's commands still got through.
//! - `backend-answers`: serves a backend whose `rpc` answers never end (or declare 200 MB) and
//!   calls it through Tidings: how far the node's RSS moved.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{self, ProcessSample};
use crate::scenario::Env;

#[derive(Clone, Debug, clap::Args)]
pub struct HostileArgs {
    #[command(subcommand)]
    pub kind: Kind,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum Kind {
    /// Anonymous connections churning through unique channel names.
    Churn(ChurnArgs),
    /// One connection joining and leaving a room of members.
    PresenceChurn(PresenceChurnArgs),
    /// Command requests for made-up stream sessions.
    StreamFlood(FloodArgs),
    /// A backend whose answers never end.
    BackendAnswers(AnswersArgs),
}

#[derive(Clone, Debug, clap::Args)]
pub struct ChurnArgs {
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,
    #[arg(long, short = 'd', default_value_t = 60.0)]
    pub duration: f64,
    /// Commands a second per connection (the default command rate is 2,000).
    #[arg(long, default_value_t = 1800)]
    pub rate: u32,
    /// Redis (HOST:PORT) whose memory to report.
    #[arg(long)]
    pub redis: Option<String>,
    /// Serve a webhook receiver here (Tidings' --webhook-url http://ADDR/hook) and time a real
    /// user's `user_online` halfway through.
    #[arg(long)]
    pub webhook_listen: Option<SocketAddr>,
    /// How long the receiver takes to answer each POST, in ms (a backend writing to its
    /// database).
    #[arg(long, default_value_t = 50)]
    pub receiver_latency_ms: u64,
    /// Tidings' --token-hmac-secret, to sign the real user's token.
    #[arg(long)]
    pub token_secret: Option<String>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct PresenceChurnArgs {
    #[arg(long, short = 'm', default_value_t = 200)]
    pub members: usize,
    #[arg(long, short = 'd', default_value_t = 60.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1800)]
    pub rate: u32,
}

#[derive(Clone, Debug, clap::Args)]
pub struct FloodArgs {
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub duration: f64,
    /// Redis (HOST:PORT) whose delivered bytes to report.
    #[arg(long)]
    pub redis: Option<String>,
    /// The flood's source address (the real session uses 127.0.0.1).
    #[arg(long, default_value = "127.0.0.2")]
    pub from: IpAddr,
}

#[derive(Clone, Debug, clap::Args)]
pub struct AnswersArgs {
    /// Where the backend listens (Tidings' --proxy-rpc http://ADDR/rpc).
    #[arg(long, default_value = "127.0.0.1:9191")]
    pub listen: SocketAddr,
    /// Calls of each kind.
    #[arg(long, default_value_t = 5)]
    pub calls: usize,
}

/// What a hostile run measured.
#[derive(Debug, Default, Serialize)]
pub struct HostileReport {
    pub scenario: String,
    pub seconds: f64,
    /// What the hostile client did: names churned, changes made, requests sent.
    pub actions: u64,
    /// The node's RSS before and after (and its peak during), KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_rss_kib: u64,
    /// Redis's `used_memory` added, bytes.
    pub redis_memory_added: Option<i64>,
    /// Redis's `total_net_output_bytes` added: replies and what pub/sub delivered.
    pub redis_output_bytes: Option<u64>,
    /// From the real user's connect to its `user_online` at the receiver.
    pub user_online_ms: Option<f64>,
    /// Presence frames a member received a second (the most any member did).
    pub presence_frames_per_second: Option<f64>,
    /// HTTP statuses of the flood's requests, and what the real session got through.
    pub statuses: BTreeMap<u16, u64>,
    pub real_commands: Option<(u64, u64)>,
    /// Error codes the calls got.
    pub errors: BTreeMap<u16, u64>,
    pub servers: Vec<ProcessSample>,
    pub generator: Option<ProcessSample>,
}

impl HostileReport {
    pub fn print(&self) {
        println!("scenario      {} for {:.0} s", self.scenario, self.seconds);
        println!("actions       {}", self.actions);
        println!(
            "node rss      {:.1} → {:.1} MiB (peak {:.1} MiB, added {:+.1} MiB)",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.peak_rss_kib as f64 / 1024.0,
            (self.rss_after_kib as f64 - self.rss_before_kib as f64) / 1024.0
        );
        if let Some(added) = self.redis_memory_added {
            println!("redis memory  {:+.2} MiB", added as f64 / 1048576.0);
        }
        if let Some(bytes) = self.redis_output_bytes {
            println!("redis output  {:.2} MiB", bytes as f64 / 1048576.0);
        }
        if let Some(ms) = self.user_online_ms {
            println!("user_online   {ms:.0} ms after the user connected");
        }
        if let Some(frames) = self.presence_frames_per_second {
            println!("presence      {frames:.1} frames/s per member (the most)");
        }
        if !self.statuses.is_empty() {
            println!("statuses      {:?}", self.statuses);
        }
        if let Some((sent, ok)) = self.real_commands {
            println!("real session  {ok} of {sent} commands answered");
        }
        if !self.errors.is_empty() {
            println!("errors        {:?}", self.errors);
        }
        for s in self.servers.iter().chain(&self.generator) {
            println!(
                "process {:<7} cpu {:.0}%  rss {:.1} MiB",
                s.pid,
                s.cpu_percent,
                s.rss_kib as f64 / 1024.0
            );
        }
    }
}

pub async fn hostile(env: &Env, args: &HostileArgs) -> Result<HostileReport> {
    let pid = *env
        .pids
        .first()
        .context("--pid: the Tidings node to measure")?;
    let (rss_before_kib, _) = report::memory_kib(pid).context("reading the node's memory")?;
    let ticks: Vec<Option<u64>> = env.pids.iter().map(|&p| report::cpu_ticks(p)).collect();
    let own = report::cpu_ticks(std::process::id());
    let started = Instant::now();
    let mut report = match &args.kind {
        Kind::Churn(args) => churn(env, args).await?,
        Kind::PresenceChurn(args) => presence_churn(env, args).await?,
        Kind::StreamFlood(args) => stream_flood(env, args).await?,
        Kind::BackendAnswers(args) => backend_answers(env, args).await?,
    };
    let window = started.elapsed();
    report.seconds = window.as_secs_f64();
    report.rss_before_kib = rss_before_kib;
    (report.rss_after_kib, report.peak_rss_kib) = report::memory_kib(pid).unwrap_or_default();
    report.servers = report::sample(&env.pids, &ticks, window);
    report.generator = report::sample(&[std::process::id()], &[own], window).pop();
    Ok(report)
}

/// Opens a Tidings WebSocket as `name`, reading (and dropping) whatever it is sent.
async fn churner(
    url: &str,
    name: &str,
) -> Result<futures_util::stream::SplitSink<crate::conn::Ws, Message>> {
    let target = crate::conn::Target {
        urls: vec![format!("{url}?name={name}")],
        protocol: crate::conn::Protocol::Tidings,
        source_ips: 1,
        deflate: false,
        pusher: Default::default(),
    };
    let (ws, _) = target.connect(0).await?;
    let (sink, mut stream) = ws.split();
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    Ok(sink)
}

/// Subscribes to and leaves `channel(n)` for n = 0, 1, 2… at `rate` commands a second until
/// `until`; counts the names in `done`.
async fn churn_loop(
    mut sink: futures_util::stream::SplitSink<crate::conn::Ws, Message>,
    channel: impl Fn(u64) -> String,
    rate: u32,
    until: Instant,
    done: Arc<AtomicU64>,
) -> Result<()> {
    let per_tick = u64::from(rate / 200).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    while Instant::now() < until {
        tick.tick().await;
        for _ in 0..per_tick {
            let channel = channel(n);
            for op in ["subscribe", "unsubscribe"] {
                let command = json!({"op": op, "channel": channel}).to_string();
                sink.feed(Message::text(command)).await?;
            }
            n += 1;
        }
        sink.flush().await?;
        done.fetch_add(per_tick, Ordering::Relaxed);
    }
    Ok(())
}

async fn churn(env: &Env, args: &ChurnArgs) -> Result<HostileReport> {
    let url = env.target.urls.first().context("--url")?.clone();
    let redis_before = match &args.redis {
        Some(redis) => Some(redis_info(redis, "memory", "used_memory").await?),
        None => None,
    };
    let receiver = match args.webhook_listen {
        Some(addr) => Some(Receiver::serve(addr, args.receiver_latency_ms).await?),
        None => None,
    };
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let names = Arc::new(AtomicU64::new(0));
    let mut churners = Vec::new();
    for n in 0..args.connections {
        let sink = churner(&url, &format!("churner{n}")).await?;
        let prefix = format!("{}-churn{n}", env.prefix);
        let unique = move |i| format!("{prefix}-{i}");
        churners.push(tokio::spawn(churn_loop(
            sink,
            unique,
            args.rate,
            until,
            names.clone(),
        )));
    }
    let mut user_online_ms = None;
    if let (Some(receiver), Some(secret)) = (&receiver, &args.token_secret) {
        tokio::time::sleep(Duration::from_secs_f64(args.duration / 2.0)).await;
        let token = hs256(secret, "bench-user")?;
        let connected = Instant::now();
        let (_user, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
        let arrived =
            tokio::time::timeout(Duration::from_secs(60), receiver.user_online("bench-user"))
                .await
                .context("no user_online within 60 s")?;
        user_online_ms = Some(arrived.duration_since(connected).as_secs_f64() * 1000.0);
    }
    for churner in churners {
        churner.await??;
    }
    let redis_memory_added = match (&args.redis, redis_before) {
        (Some(redis), Some(before)) => {
            Some(redis_info(redis, "memory", "used_memory").await? as i64 - before as i64)
        }
        _ => None,
    };
    Ok(HostileReport {
        scenario: format!("churn, {} connections", args.connections),
        actions: names.load(Ordering::Relaxed),
        redis_memory_added,
        user_online_ms,
        ..HostileReport::default()
    })
}

async fn presence_churn(env: &Env, args: &PresenceChurnArgs) -> Result<HostileReport> {
    let url = env.target.urls.first().context("--url")?.clone();
    let channel = format!("chat:{}-room", env.prefix);
    let frames = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let per_member: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; args.members]));
    for n in 0..args.members {
        let target = crate::conn::Target {
            urls: vec![format!("{url}?name=member{n}")],
            protocol: crate::conn::Protocol::Tidings,
            source_ips: 8,
            deflate: false,
            pusher: Default::default(),
        };
        let (mut ws, _) = target.connect(n).await?;
        crate::conn::subscribe(&mut ws, crate::conn::Protocol::Tidings, &channel).await?;
        let (mut sink, mut stream) = ws.split();
        let (frames, counting, per_member) = (frames.clone(), counting.clone(), per_member.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if text.starts_with("{\"ping\"") {
                    let _ = sink
                        .send(Message::text(crate::conn::pong(
                            crate::conn::Protocol::Tidings,
                        )))
                        .await;
                    continue;
                }
                let presence = ["{\"join\"", "{\"leave\"", "{\"presence_batch\""];
                if counting.load(Ordering::Relaxed) && presence.iter().any(|p| text.starts_with(p))
                {
                    frames.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut counts) = per_member.lock() {
                        counts[n] += 1;
                    }
                }
            }
        });
    }
    // The members' own joins come batched; their batch is out within two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let sink = churner(&url, "churner").await?;
    let rounds = Arc::new(AtomicU64::new(0));
    let room = channel.clone();
    churn_loop(
        sink,
        move |_| room.clone(),
        args.rate,
        until,
        rounds.clone(),
    )
    .await?;
    // What the churn caused has gone out within its batch interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seconds = started.elapsed().as_secs_f64();
    let most = per_member
        .lock()
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .unwrap_or(0);
    Ok(HostileReport {
        scenario: format!("presence-churn, {} members", args.members),
        actions: 2 * rounds.load(Ordering::Relaxed),
        presence_frames_per_second: Some(most as f64 / seconds),
        ..HostileReport::default()
    })
}

async fn stream_flood(env: &Env, args: &FloodArgs) -> Result<HostileReport> {
    let bases: Vec<String> = env
        .target
        .urls
        .iter()
        .map(|url| {
            url.replacen("ws://", "http://", 1)
                .trim_end_matches("/ws")
                .to_owned()
        })
        .collect();
    let client = reqwest::Client::new();
    // The real session: a stream on the first node, its commands to every node in turn.
    let mut stream = client
        .get(format!("{}/stream?name=real", bases[0]))
        .send()
        .await
        .context("opening the real stream")?;
    let session = stream
        .headers()
        .get("tidings-session")
        .and_then(|v| v.to_str().ok())
        .context("no Tidings-Session header")?
        .to_owned();
    let (node, secret) = session
        .split_once('.')
        .context("a session id NODE.SECRET")?;
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let off_by_one = format!("{node}.{}{last}", &secret[..secret.len() - 1]);
    let made_up = format!("{:016x}.{}", fastrand::u64(..), "ab".repeat(16));
    let replies = Arc::new(AtomicU64::new(0));
    let counted = replies.clone();
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = stream.chunk().await {
            let ids = chunk.windows(5).filter(|w| w == b"\"id\":").count() as u64;
            counted.fetch_add(ids, Ordering::Relaxed);
        }
    });
    let output_before = match &args.redis {
        Some(redis) => Some(redis_info(redis, "stats", "total_net_output_bytes").await?),
        None => None,
    };
    let flooder = reqwest::Client::builder()
        .local_address(args.from)
        .build()?;
    let bulk = json!({"op": "publish", "channel": "x", "data": "y".repeat(1000)});
    let commands: Vec<Value> = (0..50).map(|_| bulk.clone()).collect();
    let until = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut floods = Vec::new();
    for base in &bases {
        for id in [&made_up, &off_by_one] {
            let (client, base) = (flooder.clone(), base.clone());
            let body = json!({"session": id, "commands": commands}).to_string();
            floods.push(tokio::spawn(async move {
                let mut statuses = BTreeMap::<u16, u64>::new();
                while Instant::now() < until {
                    let sent = client
                        .post(format!("{base}/stream"))
                        .body(body.clone())
                        .send()
                        .await;
                    *statuses
                        .entry(sent.map_or(0, |r| r.status().as_u16()))
                        .or_default() += 1;
                }
                statuses
            }));
        }
    }
    let mut sent = 0u64;
    while Instant::now() < until {
        let base = &bases[sent as usize % bases.len()];
        let command = json!({"id": sent + 1, "op": "publish", "channel": "real", "data": sent});
        let body = json!({"session": session, "commands": [command]}).to_string();
        let status = client
            .post(format!("{base}/stream"))
            .body(body)
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("the real session's request was answered {status}");
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = BTreeMap::new();
    for flood in floods {
        for (status, count) in flood.await? {
            *statuses.entry(status).or_default() += count;
        }
    }
    // The last replies are on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis_output_bytes = match (&args.redis, output_before) {
        (Some(redis), Some(before)) => {
            Some(redis_info(redis, "stats", "total_net_output_bytes").await? - before)
        }
        _ => None,
    };
    Ok(HostileReport {
        scenario: format!("stream-flood, {} nodes", bases.len()),
        actions: statuses.values().sum(),
        statuses,
        redis_output_bytes,
        real_commands: Some((sent, replies.load(Ordering::Relaxed))),
        ..HostileReport::default()
    })
}

async fn backend_answers(env: &Env, args: &AnswersArgs) -> Result<HostileReport> {
    serve_flooding_backend(args.listen).await?;
    let url = env.target.urls.first().context("--url")?.clone();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?name=caller")).await?;
    let mut errors = BTreeMap::new();
    let mut id = 0;
    for method in ["endless", "huge"] {
        for _ in 0..args.calls {
            id += 1;
            let call = json!({"id": id, "op": "rpc", "method": method});
            ws.send(Message::text(call.to_string())).await?;
            let code = loop {
                let Some(message) = ws.next().await else {
                    bail!("connection closed")
                };
                if let Message::Text(text) = message? {
                    let reply: Value = serde_json::from_str(text.as_str())?;
                    if reply["id"] == json!(id) {
                        break reply["error"]["code"].as_u64().unwrap_or(0) as u16;
                    }
                }
            };
            *errors.entry(code).or_default() += 1;
        }
    }
    Ok(HostileReport {
        scenario: "backend-answers".into(),
        actions: id,
        errors,
        ..HostileReport::default()
    })
}

/// A backend whose `rpc` answers are endless (`endless`) or declare 200 MB (`huge`).
async fn serve_flooding_backend(listen: SocketAddr) -> Result<()> {
    use axum::body::{Body, Bytes};
    let chunk = Bytes::from(vec![b' '; 64 << 10]);
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(move |axum::Json(call): axum::Json<Value>| {
            let chunk = chunk.clone();
            async move {
                let chunks = futures_util::stream::repeat_with(move || {
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                let mut response = axum::response::Response::builder().status(200);
                let body = if call["method"] == "huge" {
                    response = response.header("content-length", (200u64 << 20).to_string());
                    Body::from_stream(chunks.take(3200))
                } else {
                    Body::from_stream(chunks)
                };
                response.body(body).unwrap_or_default()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

/// A webhook receiver that notes when each `user_online` arrived.
#[derive(Clone, Default)]
struct Receiver {
    online: Arc<Mutex<BTreeMap<String, Instant>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn serve(listen: SocketAddr, latency_ms: u64) -> Result<Self> {
        let receiver = Self::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(batch): axum::Json<Value>| {
                let state = state.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                    let now = Instant::now();
                    for event in batch["events"].as_array().into_iter().flatten() {
                        if event["type"] == "user_online" {
                            let user = event["user"].as_str().unwrap_or_default().to_owned();
                            if let Ok(mut online) = state.online.lock() {
                                online.entry(user).or_insert(now);
                            }
                            state.arrived.notify_waiters();
                        }
                    }
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    async fn user_online(&self, user: &str) -> Instant {
        loop {
            let arrived = self.arrived.notified();
            if let Some(at) = self.online.lock().ok().and_then(|o| o.get(user).copied()) {
                return at;
            }
            arrived.await;
        }
    }
}

/// An HS256 token for `user`.
fn hs256(secret: &str, user: &str) -> Result<String> {
    let claims = json!({"sub": user});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// One numeric field of Redis's `INFO section`.
async fn redis_info(addr: &str, section: &str, field: &str) -> Result<u64> {
    let mut redis = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to Redis at {addr}"))?;
    redis
        .write_all(format!("INFO {section}\r\n").as_bytes())
        .await?;
    // A bulk reply: `$LENGTH\r\n`, LENGTH bytes, `\r\n`.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let text = loop {
        let n = redis.read(&mut buffer).await?;
        if n == 0 {
            bail!("Redis closed before answering INFO");
        }
        answer.extend_from_slice(&buffer[..n]);
        let Some(head) = answer.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let length: usize = std::str::from_utf8(&answer[1..head])?.parse()?;
        if answer.len() >= head + 2 + length {
            break String::from_utf8_lossy(&answer[head + 2..head + 2 + length]).into_owned();
        }
    };
    let prefix = format!("{field}:");
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .with_context(|| format!("no {field} in INFO {section}"))?;
    Ok(value.trim().parse()?)
}
