//! The scenarios: connection set-up, open-loop publishers, receivers, and the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Protocol, Received, Target, Transport, Ws};
use crate::coordinator::Coordinator;
use crate::lean;
use crate::pusher;
use crate::report::{self, Histograms, Latency, Report, Tally};

/// What every scenario shares.
#[derive(Debug)]
pub struct Env {
    pub target: Target,
    pub pids: Vec<u32>,
    pub connect_concurrency: usize,
    /// How long to wait for the last deliveries after the last publication.
    pub drain: Duration,
    /// Namespace of the channels used, so several generator processes can share a server.
    pub prefix: String,
    /// Start the measured window at this wall-clock time (ms since the Unix epoch), so that
    /// several generator processes measure the same window.
    pub start_at: Option<u64>,
    /// Set in a child of `--processes`: the parent, over stdin and stdout, says when to start
    /// and when to let the connections go.
    pub coordinator: Option<Coordinator>,
}

impl Env {
    /// When the measured window starts: the agreed time if there is one, else now.
    fn start(&self) -> tokio::time::Instant {
        match self.start_at {
            Some(at) => instant_at(at),
            None => tokio::time::Instant::now(),
        }
    }

    /// Like [`Env::start`], but a `--processes` child first tells the parent it is ready and
    /// waits for the start the parent chose. `sockets` are connections that nothing reads yet;
    /// they answer heartbeats while waiting (other processes may take long to connect) and are
    /// handed back.
    pub(crate) async fn agree_start(
        &self,
        sockets: Vec<Ws>,
    ) -> Result<(tokio::time::Instant, Vec<Ws>)> {
        let Some(coordinator) = &self.coordinator else {
            return Ok((self.start(), sockets));
        };
        let (release, released) = watch::channel(false);
        let keepers: Vec<_> = sockets
            .into_iter()
            .map(|ws| tokio::spawn(keep_alive(ws, self.target.protocol, released.clone())))
            .collect();
        let at = coordinator.ready().await;
        let _ = release.send(true);
        let mut sockets = Vec::with_capacity(keepers.len());
        for keeper in keepers {
            sockets.push(keeper.await?);
        }
        Ok((instant_at(at?), sockets))
    }
}

/// The monotonic instant of `at` (ms since the Unix epoch); now if it has passed.
fn instant_at(at: u64) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let wall = conn::now_ns() / 1_000_000;
    if at < wall {
        eprintln!(
            "warning: --start-at passed {} ms ago while connecting",
            wall - at
        );
    }
    now + Duration::from_millis(at.saturating_sub(wall))
}

#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    /// Subscribers on the channel.
    #[arg(long, short = 's', default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishing connections.
    #[arg(long, short = 'p', default_value_t = 4)]
    pub publishers: usize,
    /// Publications per second, all publishers together.
    #[arg(long, short = 'r', default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of padding in each payload (the payload is about 70 bytes more).
    #[arg(long, default_value_t = 64)]
    pub padding: usize,
    /// A realistic chat message (about 330 bytes of JSON) in each payload instead of padding.
    #[arg(long)]
    pub chat_payload: bool,
    /// Id of this process's first publisher: under `--processes`, publishers of different
    /// processes publish to the same channel, so their ids must not collide.
    #[arg(long, hide = true, default_value_t = 0)]
    pub first_publisher: u32,
    /// Publishers of all processes together (default: --publishers); the rate is shared by
    /// them all and every subscriber expects all of their publications.
    #[arg(long, hide = true)]
    pub all_publishers: Option<usize>,
}

#[derive(Clone, Debug, Args)]
pub struct ChatArgs {
    /// Rooms.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub rooms: usize,
    /// Members per room (each subscribes and publishes).
    #[arg(long, short = 'm', default_value_t = 10)]
    pub members: usize,
    /// Messages per second per member.
    #[arg(long, short = 'r', default_value_t = 1.0)]
    pub rate: f64,
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 64)]
    pub padding: usize,
    /// How members reach the server: `ws`, a WebSocket each; or `stream`, an HTTP stream each
    /// (`GET /stream`, NDJSON), publishing with `POST /stream` commands (Tidings only; members
    /// spread over at least as many --source-ips as the server's per-address budget for
    /// command requests needs).
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Rooms of all processes together (default: --rooms): under `--processes`, every
    /// process spreads its streams' command requests over the addresses the whole chat needs.
    #[arg(long, hide = true)]
    pub all_rooms: Option<usize>,
}

#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    /// Idle connections.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub connections: usize,
    /// Distinct channels they subscribe to (connection i takes channel i mod this).
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Seconds to hold the connections after measuring.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// How the connections reach the server: WebSockets, or idle HTTP streams (`stream`:
    /// `GET /stream`, NDJSON; `sse`: `GET /sse`), each subscribed by its query.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Index of this process's first connection: under `--processes`, connection i of all
    /// processes still takes channel i mod --channels, so the channels are the same as with
    /// one process.
    #[arg(long, hide = true, default_value_t = 0)]
    pub first_connection: usize,
}

#[derive(Clone, Debug, Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Multiply the rate by this after each step that holds.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// Stop after this rate.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// A step fails when its p99 latency passes this many milliseconds (or anything is lost).
    #[arg(long, default_value_t = 50.0)]
    pub p99_bound_ms: f64,
}

/// How long one connection's handshake and subscribe may take during set-up.
pub(crate) const SET_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens `n` connections (numbered from `first`), subscribing connection i to `channel(i)`.
/// Until every one is open, each is kept alive by a task that answers heartbeats: opening
/// tens of thousands can take longer than the server's ping interval.
async fn open(
    env: &Env,
    first: usize,
    n: usize,
    channel: impl Fn(usize) -> Option<String>,
) -> Result<(Vec<Ws>, Histogram<u64>)> {
    let protocol = env.target.protocol;
    let (release, released) = watch::channel(false);
    let results: Vec<Result<(usize, tokio::task::JoinHandle<Ws>, Duration)>> =
        futures_util::stream::iter(first..first + n)
            .map(|i| {
                let target = env.target.clone();
                let channel = channel(i);
                let released = released.clone();
                async move {
                    // A server that accepts TCP but never answers (out of file descriptors,
                    // a lost ack) must fail the run, not hang it.
                    let set_up = target.open(i, channel.as_deref());
                    let (ws, took) = tokio::time::timeout(SET_UP_TIMEOUT, set_up)
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "connection {i}: no handshake or subscribe reply within {}s",
                                SET_UP_TIMEOUT.as_secs()
                            )
                        })??;
                    Ok((i, tokio::spawn(keep_alive(ws, protocol, released)), took))
                }
            })
            .buffer_unordered(env.connect_concurrency)
            .collect()
            .await;
    // In index order: connection i is on channel(i), and a chat member publishes there.
    let mut results = results;
    results.sort_by_key(|result| result.as_ref().map_or(0, |(i, _, _)| *i));
    // Same bounds as every other histogram: --processes merges them bucket by bucket.
    let mut connect = report::histogram();
    let mut keepers = Vec::with_capacity(n);
    for result in results {
        let (_, keeper, took) = result?;
        let _ = connect.record((took.as_micros() as u64).max(1));
        keepers.push(keeper);
    }
    let _ = release.send(true);
    let mut sockets = Vec::with_capacity(n);
    for keeper in keepers {
        sockets.push(keeper.await?);
    }
    Ok((sockets, connect))
}

/// Answers heartbeats on an opened connection until it is released to its scenario.
async fn keep_alive(mut ws: Ws, protocol: Protocol, mut released: watch::Receiver<bool>) -> Ws {
    loop {
        if *released.borrow() {
            return ws;
        }
        tokio::select! {
            _ = released.changed() => {}
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Received::Ping = conn::parse(protocol, &text) {
                        let _ = ws.send(Message::text(conn::pong(protocol))).await;
                    }
                }
                Some(Ok(_)) => {}
                // Closed: polling again would return at once, spinning a core for as long as
                // the hold lasts (under --processes, while other processes connect). The
                // scenario sees the closed connection when it reads.
                _ => {
                    let _ = released.wait_for(|released| *released).await;
                    return ws;
                }
            },
        }
    }
}

/// Reads deliveries until told to stop, answering heartbeats.
async fn receive(
    mut ws: Ws,
    protocol: Protocol,
    publishers: usize,
    delivered: Arc<AtomicU64>,
    latencies: lean::Latencies,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    if lean::Lean::can_take(&ws) {
        let lean = lean::Lean::take(ws);
        return lean::receive(lean, protocol, publishers, delivered, latencies, stop).await;
    }
    let mut tally = Tally::new(publishers);
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let Some(Ok(message)) = message else {
            tally.errors += 1;
            break;
        };
        let Message::Text(text) = message else {
            continue;
        };
        if take(protocol, &text, &mut tally, &delivered) {
            let _ = ws.send(Message::text(conn::pong(protocol))).await;
        }
    }
    tally.wire_bytes = ws.get_ref().bytes_read();
    tally
}

/// Records what a received frame means; true if it is a heartbeat to answer.
pub(crate) fn take(
    protocol: Protocol,
    text: &str,
    tally: &mut Tally,
    delivered: &AtomicU64,
) -> bool {
    match conn::parse(protocol, text) {
        Received::Delivery { offset, delivery } => {
            tally.record(conn::now_ns(), delivery.t, delivery.p, delivery.s, offset);
            delivered.fetch_add(1, Ordering::Relaxed);
        }
        Received::Ping => return true,
        Received::Error => tally.errors += 1,
        Received::Other => {}
    }
    false
}

/// One publisher's part of a fan-out: `count` payloads on `channel` at `rate` per second from
/// `start`.
#[derive(Clone)]
struct Schedule {
    channel: String,
    start: tokio::time::Instant,
    rate: f64,
    count: u64,
    padding: String,
}

/// Publishes as `schedule` says, open loop: when behind schedule it sends at once, never
/// slower. Returns how many were sent.
async fn publish(mut ws: Ws, protocol: Protocol, publisher: u32, schedule: Schedule) -> u64 {
    let Schedule {
        channel,
        start,
        rate,
        count,
        padding,
    } = schedule;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    let mut sent = 0;
    while sent < count {
        let due = start + interval.mul_f64(sent as f64);
        // Send everything that is due in one batch, then flush once.
        let now = tokio::time::Instant::now();
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                message = ws.next() => {
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Received::Ping = conn::parse(protocol, &text) {
                                let _ = ws.send(Message::text(conn::pong(protocol))).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return sent,
                    }
                    continue;
                }
            }
        }
        let now = tokio::time::Instant::now();
        while sent < count && start + interval.mul_f64(sent as f64) <= now {
            let body = conn::payload(conn::now_ns(), publisher, sent, &padding);
            let frame = conn::publish_frame(protocol, &channel, &body);
            if ws.feed(Message::text(frame)).await.is_err() {
                return sent;
            }
            sent += 1;
        }
        if ws.flush().await.is_err() {
            return sent;
        }
    }
    // Keep the connection until the server has read everything.
    let _ = ws.flush().await;
    sent
}

/// Triggers as `schedule` says over Pusher's HTTP API, one request at a time (as one worker
/// of a backend does), open loop: behind schedule, the next request goes at once. Returns how
/// many the server accepted.
async fn trigger_events(
    trigger: pusher::Trigger,
    publisher: u32,
    phase: f64,
    schedule: Schedule,
) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / schedule.rate.max(1e-9));
    // Each publisher its own phase: 32 backend workers do not trigger in one burst.
    let start = schedule.start + interval.mul_f64(phase);
    let mut sent = 0;
    let mut failed = 0u64;
    for seq in 0..schedule.count {
        tokio::time::sleep_until(start + interval.mul_f64(seq as f64)).await;
        let body = conn::payload(conn::now_ns(), publisher, sent, &schedule.padding);
        match trigger.send(&schedule.channel, &body).await {
            Ok(()) => sent += 1,
            Err(err) => {
                if failed == 0 {
                    eprintln!("publisher {publisher}: {err:#}");
                }
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("publisher {publisher}: {failed} triggers failed");
    }
    sent
}

pub(crate) struct Window {
    pub(crate) started: Instant,
    pub(crate) ticks: Vec<Option<u64>>,
    /// This generator process's own CPU ticks at the start.
    pub(crate) own: Option<u64>,
}

impl Window {
    pub(crate) fn open(pids: &[u32]) -> Self {
        Self {
            started: Instant::now(),
            ticks: pids.iter().map(|&pid| report::cpu_ticks(pid)).collect(),
            own: report::cpu_ticks(std::process::id()),
        }
    }

    /// The CPU this generator process used since the window opened, in % of one core.
    pub(crate) fn own_cpu_percent(&self) -> f64 {
        let used = report::cpu_ticks(std::process::id())
            .zip(self.own)
            .map_or(0, |(now, then)| now.saturating_sub(then));
        report::cpu_percent(used, self.started.elapsed())
    }
}

/// Waits until `delivered` reaches `expected`, or `drain` passes without progress.
pub(crate) async fn drain(delivered: &AtomicU64, expected: u64, drain: Duration) {
    let mut last = delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while last < expected && quiet_since.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

pub async fn fanout(env: &Env, args: &FanoutArgs) -> Result<Report> {
    let protocol = env.target.protocol;
    let all_publishers = args.all_publishers.unwrap_or(args.publishers);
    let per_publisher = (args.rate / all_publishers as f64).max(1e-9);
    if protocol == Protocol::PusherClient {
        anyhow::ensure!(
            per_publisher <= pusher::CLIENT_EVENTS_PER_SECOND,
            "Pusher allows {} client events a second per connection: {per_publisher:.1} each \
             needs more --publishers (at least {:.0})",
            pusher::CLIENT_EVENTS_PER_SECOND,
            (args.rate / pusher::CLIENT_EVENTS_PER_SECOND).ceil()
        );
    }
    let channel = format!("{}:fanout", env.prefix);
    let (subscribers, connect) = open(env, 0, args.subscribers, |_| Some(channel.clone()))
        .await
        .context("opening subscribers")?;
    // Pusher's publishers trigger over HTTP (no WebSocket), or must be subscribed to send
    // client events.
    let publisher_sockets = match protocol {
        Protocol::Pusher => 0,
        _ => args.publishers,
    };
    let publishing_channel = (protocol == Protocol::PusherClient).then(|| channel.clone());
    let (publishers, _) = open(env, args.subscribers, publisher_sockets, |_| {
        publishing_channel.clone()
    })
    .await
    .context("opening publishers")?;
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let latencies = lean::latencies();
    let mut receivers: Vec<_> = subscribers
        .into_iter()
        .map(|ws| {
            tokio::spawn(receive(
                ws,
                protocol,
                all_publishers,
                delivered.clone(),
                latencies.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let (start, publishers) = env.agree_start(publishers).await?;
    let count = (per_publisher * args.duration).round() as u64;
    let padding = if args.chat_payload {
        conn::CHAT.to_owned()
    } else {
        "x".repeat(args.padding)
    };
    let schedule = Schedule {
        channel: channel.clone(),
        start,
        rate: per_publisher,
        count,
        padding,
    };
    let tasks: Vec<_> = match protocol {
        Protocol::Pusher => (0..args.publishers)
            .map(|p| {
                let url = &env.target.urls[p % env.target.urls.len()];
                let trigger = pusher::Trigger::new(url, &env.target.pusher)?;
                let publisher = args.first_publisher + p as u32;
                let phase = f64::from(publisher) / all_publishers as f64;
                Ok(tokio::spawn(trigger_events(
                    trigger,
                    publisher,
                    phase,
                    schedule.clone(),
                )))
            })
            .collect::<Result<_>>()?,
        Protocol::PusherClient => {
            // Publishers are receivers too: they count what the others send.
            let sent = Arc::new(AtomicU64::new(0));
            for (p, ws) in publishers.into_iter().enumerate() {
                let (sink, stream) = ws.split();
                let p = args.first_publisher as usize + p;
                receivers.push(tokio::spawn(member(
                    Tally::new(all_publishers),
                    sink,
                    stream,
                    protocol,
                    channel.clone(),
                    start,
                    p,
                    p as f64 / all_publishers as f64,
                    per_publisher,
                    count,
                    schedule.padding.clone(),
                    delivered.clone(),
                    sent.clone(),
                    stop_rx.clone(),
                )));
            }
            let all = count * args.publishers as u64;
            let end = start + Duration::from_secs_f64(args.duration);
            vec![tokio::spawn(async move {
                tokio::time::sleep_until(end).await;
                // A publisher behind schedule sends its last ones late.
                let late = tokio::time::Instant::now() + Duration::from_secs(5);
                while sent.load(Ordering::Relaxed) < all && tokio::time::Instant::now() < late {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sent.load(Ordering::Relaxed)
            })]
        }
        _ => publishers
            .into_iter()
            .enumerate()
            .map(|(p, ws)| {
                let publisher = args.first_publisher + p as u32;
                tokio::spawn(publish(ws, protocol, publisher, schedule.clone()))
            })
            .collect(),
    };
    tokio::time::sleep_until(start).await;
    let window = Window::open(&env.pids);
    let mut sent = 0;
    for task in tasks {
        sent += task.await?;
    }
    // Other processes' publications are counted as scheduled: this process cannot see how many
    // they sent. (The parent recomputes `expected` from every process's `sent`.)
    let others = count * all_publishers.saturating_sub(args.publishers) as u64;
    let expected = (sent + others) * protocol.audience(args.subscribers, args.publishers);
    drain(&delivered, expected, env.drain).await;
    finish(
        env,
        "fanout",
        window,
        receivers,
        stop_tx,
        sent,
        expected,
        args.rate * args.subscribers as f64,
        connect,
        args.subscribers + args.publishers,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    env: &Env,
    scenario: &str,
    window: Window,
    receivers: Vec<tokio::task::JoinHandle<Tally>>,
    stop: watch::Sender<bool>,
    sent: u64,
    expected: u64,
    offered_per_sec: f64,
    connect: Histogram<u64>,
    connections: usize,
) -> Result<Report> {
    let elapsed = window.started.elapsed();
    let servers = report::sample(&env.pids, &window.ticks, elapsed);
    if let Some(coordinator) = &env.coordinator {
        // Hold the connections until every process has measured and the parent has sampled the
        // servers: closing thousands of them now would be server work inside its window.
        coordinator.measured().await?;
    }
    let _ = stop.send(true);
    let mut total = Tally::new(0);
    for receiver in receivers {
        total.merge(&receiver.await?);
    }
    Ok(Report {
        scenario: scenario.into(),
        protocol: env.target.protocol,
        urls: env.target.urls.clone(),
        connections,
        connect_ms: Some(Latency::of(&connect)),
        sent,
        expected,
        delivered: total.delivered,
        lost: expected.saturating_sub(total.delivered),
        duplicated: total.duplicated,
        out_of_order: total.out_of_order,
        errors: total.errors,
        offered_per_sec,
        delivered_per_sec: total.delivered as f64 / elapsed.as_secs_f64(),
        latency: (!total.latency.is_empty()).then(|| Latency::of(&total.latency)),
        servers,
        generator_cpu_percent: window.own_cpu_percent(),
        rss_kib_per_connection: None,
        wire_bytes_per_delivery: (total.delivered > 0)
            .then(|| total.wire_bytes as f64 / total.delivered as f64),
        seconds: elapsed.as_secs_f64(),
        processes: None,
        histograms: env.coordinator.is_some().then(|| Histograms {
            latency_us: report::to_pairs(&total.latency),
            connect_us: report::to_pairs(&connect),
        }),
    })
}

pub async fn chat(env: &Env, args: &ChatArgs) -> Result<Report> {
    let protocol = env.target.protocol;
    anyhow::ensure!(
        protocol != Protocol::Pusher,
        "chat over Pusher sends client events: use --protocol pusher-client"
    );
    let members = args.members.max(1);
    let room = |i: usize| format!("{}:room:{}", env.prefix, i / members);
    let n = args.rooms * members;
    let (sockets, connect) = open(env, 0, n, |i| Some(room(i)))
        .await
        .context("opening members")?;
    let delivered = Arc::new(AtomicU64::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let count = (args.rate * args.duration).round() as u64;
    let padding = "x".repeat(args.padding);
    // Allocated before the start is agreed on: 10,000 histograms take the better part of a
    // second to allocate and would otherwise delay the first deliveries of the window.
    let tallies: Vec<Tally> = (0..sockets.len()).map(|_| Tally::new(members)).collect();
    let (start, sockets) = env.agree_start(sockets).await?;
    // Each member: a receiver on one half, an open-loop publisher on the other.
    let members_tasks: Vec<_> = sockets
        .into_iter()
        .zip(tallies)
        .enumerate()
        .map(|(i, (ws, tally))| {
            let (sink, stream) = ws.split();
            let delivered = delivered.clone();
            let sent_total = sent_total.clone();
            let stop = stop_rx.clone();
            let channel = room(i);
            let padding = padding.clone();
            let rate = args.rate;
            tokio::spawn(member(
                tally,
                sink,
                stream,
                protocol,
                channel,
                start,
                i % members,
                i as f64 / n as f64,
                rate,
                count,
                padding,
                delivered,
                sent_total,
                stop,
            ))
        })
        .collect();
    tokio::time::sleep_until(start).await;
    let window = Window::open(&env.pids);
    // Everyone has published once the last scheduled send is due; then drain.
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let expected_if_all = count * n as u64 * protocol.audience(members, 0);
    drain(&delivered, expected_if_all, env.drain).await;
    let sent = sent_total.load(Ordering::Relaxed);
    finish(
        env,
        "chat",
        window,
        members_tasks,
        stop_tx,
        sent,
        sent * protocol.audience(members, 0),
        args.rate * (n as u64 * protocol.audience(members, 0)) as f64,
        connect,
        n,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn member(
    mut tally: Tally,
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut stream: futures_util::stream::SplitStream<Ws>,
    protocol: Protocol,
    channel: String,
    start: tokio::time::Instant,
    index: usize,
    phase: f64,
    rate: f64,
    count: u64,
    padding: String,
    delivered: Arc<AtomicU64>,
    sent_total: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    // Every connection has its own phase: 20,000 publications a second are 20 a millisecond,
    // not one burst of 10,000 from every room's first member at the same instant.
    let start = start + interval.mul_f64(phase);
    let mut sent = 0u64;
    loop {
        let due = start + interval.mul_f64(sent as f64);
        let publishing = sent < count;
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(due), if publishing => {
                let body = conn::payload(conn::now_ns(), index as u32, sent, &padding);
                if sink.send(Message::text(conn::publish_frame(protocol, &channel, &body))).await.is_err() {
                    tally.errors += 1;
                    break;
                }
                sent += 1;
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            message = stream.next() => {
                let Some(Ok(message)) = message else {
                    tally.errors += 1;
                    break;
                };
                let Message::Text(text) = message else { continue };
                if take(protocol, &text, &mut tally, &delivered) {
                    let _ = sink.send(Message::text(conn::pong(protocol))).await;
                }
            }
        }
    }
    tally
}

pub async fn idle(env: &Env, args: &IdleArgs) -> Result<Report> {
    let protocol = env.target.protocol;
    let before: Vec<u64> = env
        .pids
        .iter()
        .filter_map(|&pid| report::memory_kib(pid).map(|(rss, _)| rss))
        .collect();
    let window = Window::open(&env.pids);
    let channels = args.channels.max(1);
    let (sockets, connect) = open(env, 0, args.connections, |i| {
        Some(format!(
            "{}:idle:{}",
            env.prefix,
            (args.first_connection + i) % channels
        ))
    })
    .await
    .context("opening idle connections")?;
    // Holders first: they answer heartbeats while the memory settles (Socket.IO drops a
    // connection that misses a ping).
    let (stop_tx, stop_rx) = watch::channel(false);
    let latencies = lean::latencies();
    let holders: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            tokio::spawn(receive(
                ws,
                protocol,
                1,
                Arc::new(AtomicU64::new(0)),
                latencies.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    // Let allocations settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(coordinator) = &env.coordinator {
        // The parent reads the servers' memory once every process is connected and settled,
        // then answers; the time it names does not matter here.
        coordinator.ready().await?;
    }
    let after: Vec<u64> = env
        .pids
        .iter()
        .filter_map(|&pid| report::memory_kib(pid).map(|(rss, _)| rss))
        .collect();
    let added: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let mut report = finish(
        env,
        "idle",
        window,
        holders,
        stop_tx,
        0,
        0,
        0.0,
        connect,
        args.connections,
    )
    .await?;
    report.rss_kib_per_connection =
        (!env.pids.is_empty()).then(|| added as f64 / args.connections.max(1) as f64);
    Ok(report)
}

/// Runs the ramp's fan-out steps with `step` (one process, or several under --processes).
pub async fn ramp<F, Fut>(args: &RampArgs, mut step: F) -> Result<Vec<Report>>
where
    F: FnMut(FanoutArgs) -> Fut,
    Fut: Future<Output = Result<Report>>,
{
    let mut reports = Vec::new();
    let mut rate = args.fanout.rate;
    let mut best = None;
    while rate <= args.max_rate {
        let mut report = step(FanoutArgs {
            rate,
            ..args.fanout.clone()
        })
        .await?;
        report.scenario = format!("ramp step {rate:.0} publications/s");
        let p99 = report.latency.as_ref().map_or(f64::INFINITY, |l| l.p99_ms);
        let held = report.lost == 0 && report.duplicated == 0 && p99 <= args.p99_bound_ms;
        eprintln!(
            "ramp: {rate:.0} publications/s × {} subscribers: delivered {:.0}/s, lost {}, p99 {p99:.2} ms → {}",
            args.fanout.subscribers,
            report.delivered_per_sec,
            report.lost,
            if held { "held" } else { "broke" }
        );
        reports.push(report);
        if !held {
            break;
        }
        best = Some(rate);
        rate *= args.factor;
    }
    eprintln!(
        "ramp: highest sustained rate {} publications/s ({} deliveries/s)",
        best.map_or("none".into(), |r| format!("{r:.0}")),
        best.map_or("none".into(), |r| format!(
            "{:.0}",
            r * args.fanout.subscribers as f64
        ))
    );
    Ok(reports)
}
