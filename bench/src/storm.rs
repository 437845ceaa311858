//! The `storm` scenario: a reconnect storm. N clients are subscribed on the first `--url`'s
//! node, spread over `--channels` channels, while a publisher on the second node publishes
//! to every channel in turn. `--before` seconds in, that first node is SIGKILLed
//! (`--kill PID`): every client reconnects to the other nodes at once, after the jittered
//! back-off `tidings.js` uses (full jitter, doubling from `--min-delay-ms` up to
//! `--max-delay-ms`), and subscribes from the last position it had — a Socket.IO client
//! can only rejoin its room. The publisher goes on for `--after` seconds.
//!
//! Reported: how long until every client was subscribed again (from the kill), the
//! handshakes' connect times, the publications lost, duplicated and out of order, the
//! subscriptions the server could not recover, and the nodes' CPU and RSS before the kill
//! (all nodes) and through the storm (the survivors).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Delivery, Protocol, Received, Target, Ws};
use crate::jitter::{self, Position};
use crate::report::{self, Latency, ProcessSample};
use crate::scenario::{self, Env, Window};

#[derive(Clone, Debug, clap::Args)]
pub struct StormArgs {
    /// Clients, all on the first --url's node until it is killed.
    #[arg(long, short = 'n', default_value_t = 15_000)]
    pub clients: usize,
    /// Channels the clients are spread over (client i on channel i mod C).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Publications per second, over all channels in turn (each acknowledged before the next).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of publishing before the first node is killed.
    #[arg(long, default_value_t = 2.0)]
    pub before: f64,
    /// Seconds of publishing after the kill.
    #[arg(long, default_value_t = 10.0)]
    pub after: f64,
    /// Process id of the first --url's node, SIGKILLed `--before` seconds in.
    #[arg(long, value_name = "PID")]
    pub kill: u32,
    /// The reconnect back-off's base: a client waits base/2 plus a random share of
    /// min(max, base · 2^attempt), as tidings.js does.
    #[arg(long, default_value_t = 300)]
    pub min_delay_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub max_delay_ms: u64,
    /// Seconds after the last publication for every client to be back and caught up.
    #[arg(long, default_value_t = 30.0)]
    pub grace: f64,
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub clients: usize,
    pub channels: usize,
    pub publications: u64,
    /// Deliveries every client should have had (each publication to each of its channel's
    /// clients).
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Clients subscribed again after the kill.
    pub back: usize,
    /// Subscriptions answered `recovered: false`.
    pub unrecovered: u64,
    /// Reconnect attempts that failed (refused, reset, timed out) and were retried.
    pub failed_attempts: u64,
    /// The failed attempts by cause.
    pub failures: BTreeMap<String, u64>,
    /// From the kill until the last client was subscribed again.
    pub all_back_ms: Option<f64>,
    /// From the kill until each client was subscribed again.
    pub back_ms: Option<Latency>,
    /// The reconnects' TCP and WebSocket (and Engine.IO) handshakes.
    pub connect_ms: Option<Latency>,
    /// All nodes, from every client subscribed until the kill.
    pub before_kill: Vec<ProcessSample>,
    /// The surviving nodes, from the kill until every client was back and caught up.
    pub storm: Vec<ProcessSample>,
    pub storm_seconds: f64,
    /// This generator's CPU through the storm, in % of one core.
    pub generator_cpu_percent: f64,
}

impl StormReport {
    pub fn print(&self) {
        println!(
            "scenario      storm ({:?}) {}",
            self.protocol,
            self.urls.join(" ")
        );
        println!(
            "clients       {} on {} channels   publications {}   expected {}",
            self.clients, self.channels, self.publications, self.expected
        );
        println!(
            "delivered     {}   lost {}   duplicated {}   out of order {}   unrecovered {}",
            self.delivered, self.lost, self.duplicated, self.out_of_order, self.unrecovered
        );
        let all = self
            .all_back_ms
            .map_or("not all".to_owned(), |ms| format!("all in {ms:.0} ms"));
        println!(
            "back          {} of {} ({all}); {} failed attempts",
            self.back, self.clients, self.failed_attempts
        );
        for (why, count) in &self.failures {
            println!("  {count:>8} × {why}");
        }
        let show = |name: &str, l: &Option<Latency>| {
            if let Some(l) = l {
                println!(
                    "{name:<13} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                );
            }
        };
        show("back after", &self.back_ms);
        show("connect", &self.connect_ms);
        for (when, samples) in [("before kill", &self.before_kill), ("storm", &self.storm)] {
            for s in samples {
                println!(
                    "{when:<13} server {:>6}  cpu {:.0}%  rss {:.0} MiB (peak {:.0})",
                    s.pid,
                    s.cpu_percent,
                    s.rss_kib as f64 / 1024.0,
                    s.peak_rss_kib as f64 / 1024.0
                );
            }
        }
        println!(
            "generator     cpu {:.0}% over the storm ({:.1} s)",
            self.generator_cpu_percent, self.storm_seconds
        );
    }
}

/// What the clients share: the run's settings, the windows and the storm's counters.
struct Storm {
    args: StormArgs,
    protocol: Protocol,
    prefix: String,
    pids: Vec<u32>,
    first: Target,
    rest: Target,
    /// Opened once every client is subscribed; closed by the kill.
    calm: OnceLock<Window>,
    before_kill: OnceLock<Vec<ProcessSample>>,
    /// The surviving nodes' window, opened by the kill, and their pids.
    window: OnceLock<(Window, Vec<u32>)>,
    killed: OnceLock<Instant>,
    done: watch::Receiver<bool>,
    back: Mutex<Histogram<u64>>,
    connect: Mutex<Histogram<u64>>,
    back_count: AtomicUsize,
    delivered: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// One client's count.
#[derive(Default)]
struct Tally {
    seen: HashSet<u64>,
    duplicated: u64,
    out_of_order: u64,
    unrecovered: u64,
}

impl Tally {
    fn record(&mut self, storm: &Storm, delivery: &Delivery) {
        if self.seen.insert(delivery.s) {
            storm.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicated += 1;
        }
    }
}

/// A client that panicked holding a lock leaves its counts usable.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).clamp(1, 600_000_000)
}

/// Subscribes `ws` (from `position`, for Tidings); `false` if that failed.
async fn subscribe(
    storm: &Storm,
    ws: &mut Ws,
    channel: &str,
    position: &mut Position,
    tally: &mut Tally,
) -> bool {
    if storm.protocol != Protocol::Tidings {
        return conn::subscribe(ws, storm.protocol, channel).await.is_ok();
    }
    let Some(answer) = jitter::subscribe_since(ws, channel, position.since()).await else {
        return false;
    };
    if !answer.recovered {
        tally.unrecovered += 1;
    }
    for (offset, epoch, delivery) in &answer.publications {
        position.advance(*offset, epoch, &mut tally.out_of_order);
        if let Some(delivery) = delivery {
            tally.record(storm, delivery);
        }
    }
    position.settle(answer.offset, &answer.epoch);
    true
}

/// Reads deliveries until the connection ends (`true`) or the run does (`false`).
async fn listen(storm: &Storm, ws: &mut Ws, position: &mut Position, tally: &mut Tally) -> bool {
    let mut done = storm.done.clone();
    loop {
        let message = tokio::select! {
            _ = done.changed() => return false,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            _ => return true,
        };
        match conn::parse(storm.protocol, &text) {
            Received::Delivery { offset, delivery } => {
                if let (Some(offset), Some(epoch)) = (offset, jitter::epoch_of(&text)) {
                    position.advance(offset, &epoch, &mut tally.out_of_order);
                }
                tally.record(storm, &delivery);
            }
            Received::Ping => {
                let _ = ws.send(Message::text(conn::pong(storm.protocol))).await;
            }
            Received::Error | Received::Other => {}
        }
    }
}

/// Reconnects to the surviving nodes after tidings.js's back-off until subscribed again;
/// `None` once the run is over.
async fn come_back(
    storm: &Storm,
    index: usize,
    channel: &str,
    position: &mut Position,
    tally: &mut Tally,
) -> Option<Ws> {
    let mut done = storm.done.clone();
    for attempt in 0u32.. {
        let base = storm.args.min_delay_ms as f64;
        let ceiling =
            (base * 2f64.powi(attempt.min(30) as i32)).min(storm.args.max_delay_ms as f64);
        let pause = Duration::from_secs_f64((base / 2.0 + fastrand::f64() * ceiling) / 1000.0);
        if tokio::time::timeout(pause, done.changed()).await.is_ok() {
            return None;
        }
        let which = index + attempt as usize;
        let (mut ws, took) = match storm.rest.connect(which).await {
            Ok(connected) => connected,
            Err(err) => {
                storm.failed(format!("{:#}", err.root_cause()));
                continue;
            }
        };
        if !subscribe(storm, &mut ws, channel, position, tally).await {
            storm.failed("subscription refused or connection lost".to_owned());
            continue;
        }
        let _ = locked(&storm.connect).record(micros(took));
        if let Some(killed) = storm.killed.get() {
            let _ = locked(&storm.back).record(micros(killed.elapsed()));
        }
        storm.back_count.fetch_add(1, Ordering::Relaxed);
        return Some(ws);
    }
    None
}

/// One client: subscribed on the first node, back on another once it is gone, until done.
async fn client(
    storm: Arc<Storm>,
    index: usize,
    setup: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<Result<()>>,
) -> Tally {
    let channel = storm.channel(index);
    let mut tally = Tally::default();
    let mut position = Position::default();
    let first = async {
        let _permit = setup.acquire().await;
        let (mut ws, _) = storm.first.connect(index).await?;
        let subscribed = subscribe(&storm, &mut ws, &channel, &mut position, &mut tally).await;
        ensure!(subscribed, "subscription to {channel} failed");
        Ok(ws)
    };
    let mut ws = match first.await {
        Ok(ws) => ws,
        Err(err) => {
            let _ = ready.send(Err(err)).await;
            return tally;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    // A second node lost (or a server close) is met the same way as the first.
    while listen(&storm, &mut ws, &mut position, &mut tally).await {
        // The dead socket's descriptor is given back before a new one is opened.
        drop(ws);
        match come_back(&storm, index, &channel, &mut position, &mut tally).await {
            Some(again) => ws = again,
            None => break,
        }
    }
    tally
}

/// Publishes to every channel in turn at the rate, each acknowledged (Tidings, with an
/// idempotency key) or sent (Socket.IO), killing the first node `--before` seconds in;
/// returns how many went to each channel.
async fn publisher(storm: Arc<Storm>) -> Result<Vec<u64>> {
    let args = &storm.args;
    let mut sent = vec![0u64; args.channels];
    let (mut ws, _) = storm
        .rest
        .connect(0)
        .await
        .context("the publisher's connection")?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let total = ((args.before + args.after) * args.rate).round() as u64;
    let kill_at = (args.before * args.rate).round() as u64;
    for seq in 0..total {
        ticker.tick().await;
        if seq == kill_at {
            storm.kill()?;
        }
        let channel = seq as usize % args.channels;
        let name = storm.channel(channel);
        let payload = conn::payload(conn::now_ns(), 0, seq, "");
        let accepted = match storm.protocol {
            Protocol::Tidings => jitter::publish_once(&mut ws, &name, &payload, seq).await,
            protocol => {
                let frame = conn::publish_frame(protocol, &name, &payload);
                ws.send(Message::text(frame)).await.is_ok()
            }
        };
        ensure!(accepted, "publication {seq} was not accepted");
        sent[channel] += 1;
    }
    Ok(sent)
}

impl Storm {
    /// Counts a failed reconnect attempt by its cause.
    fn failed(&self, why: String) {
        *locked(&self.failures).entry(why).or_default() += 1;
    }

    fn channel(&self, index: usize) -> String {
        format!("{}:storm-{}", self.prefix, index % self.args.channels)
    }

    /// Samples every node, SIGKILLs the first and opens the storm's window.
    fn kill(&self) -> Result<()> {
        if let Some(calm) = self.calm.get() {
            let samples = report::sample(&self.pids, &calm.ticks, calm.started.elapsed());
            let _ = self.before_kill.set(samples);
        }
        let survivors: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|&p| p != self.args.kill)
            .collect();
        let _ = self.window.set((Window::open(&survivors), survivors));
        let _ = self.killed.set(Instant::now());
        let status = std::process::Command::new("kill")
            .args(["-KILL", &self.args.kill.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -KILL {} failed", self.args.kill);
        eprintln!(
            "killed {}; {} clients coming back",
            self.args.kill, self.args.clients
        );
        Ok(())
    }
}

pub async fn storm(env: Env, args: &StormArgs) -> Result<StormReport> {
    ensure!(
        env.target.urls.len() >= 2,
        "storm needs two --url: the node the clients start on (killed) and one to reconnect to"
    );
    ensure!(
        args.channels > 0 && args.rate > 0.0,
        "--channels and --rate must be positive"
    );
    let target = |urls: &[String]| Target {
        urls: urls.to_vec(),
        protocol: env.target.protocol,
        source_ips: env.target.source_ips,
        deflate: env.target.deflate,
        pusher: env.target.pusher.clone(),
    };
    let (done_tx, done) = watch::channel(false);
    let storm = Arc::new(Storm {
        args: args.clone(),
        protocol: env.target.protocol,
        prefix: env.prefix.clone(),
        pids: env.pids.clone(),
        first: target(&env.target.urls[..1]),
        rest: target(&env.target.urls[1..]),
        calm: OnceLock::new(),
        before_kill: OnceLock::new(),
        window: OnceLock::new(),
        killed: OnceLock::new(),
        done,
        back: Mutex::new(report::histogram()),
        connect: Mutex::new(report::histogram()),
        back_count: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        failures: Mutex::default(),
    });
    let setup = Arc::new(Semaphore::new(env.connect_concurrency));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let clients: Vec<_> = (0..args.clients)
        .map(|index| {
            tokio::spawn(client(
                storm.clone(),
                index,
                setup.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..args.clients {
        ready_rx
            .recv()
            .await
            .context("a client never answered")?
            .context("a client could not subscribe")?;
    }
    eprintln!("{} clients subscribed; publishing", args.clients);
    let _ = storm.calm.set(Window::open(&env.pids));
    let publishing = tokio::spawn(publisher(storm.clone()));
    // Every client back, or the publisher done and the grace over.
    let deadline = Instant::now() + Duration::from_secs_f64(args.before + args.after + args.grace);
    while storm.back_count.load(Ordering::Relaxed) < args.clients && Instant::now() < deadline {
        if publishing.is_finished() && storm.killed.get().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_back = storm.killed.get().map(Instant::elapsed);
    let (storm_samples, generator_cpu_percent, storm_seconds) = match storm.window.get() {
        Some((window, survivors)) => {
            let elapsed = window.started.elapsed();
            let samples = report::sample(survivors, &window.ticks, elapsed);
            (samples, window.own_cpu_percent(), elapsed.as_secs_f64())
        }
        None => (Vec::new(), 0.0, 0.0),
    };
    let sent = publishing.await.context("the publisher panicked")??;
    let expected: u64 = (0..args.clients)
        .map(|index| sent[index % args.channels])
        .sum();
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(
        left,
        scenario::drain(&storm.delivered, expected, Duration::from_secs(3)),
    )
    .await;
    let _ = done_tx.send(true);
    let mut total = Tally::default();
    let mut delivered = 0;
    for client in clients {
        let tally = client.await?;
        delivered += tally.seen.len() as u64;
        total.duplicated += tally.duplicated;
        total.out_of_order += tally.out_of_order;
        total.unrecovered += tally.unrecovered;
    }
    let back = storm.back_count.load(Ordering::Relaxed);
    let failures = locked(&storm.failures).clone();
    let back_hist = locked(&storm.back);
    let connect_hist = locked(&storm.connect);
    Ok(StormReport {
        scenario: "storm",
        protocol: storm.protocol,
        urls: env.target.urls.clone(),
        clients: args.clients,
        channels: args.channels,
        publications: sent.iter().sum(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated: total.duplicated,
        out_of_order: total.out_of_order,
        back,
        unrecovered: total.unrecovered,
        failed_attempts: failures.values().sum(),
        failures,
        all_back_ms: (back == args.clients)
            .then(|| all_back.map(|d| d.as_secs_f64() * 1000.0))
            .flatten(),
        back_ms: (!back_hist.is_empty()).then(|| Latency::of(&back_hist)),
        connect_ms: (!connect_hist.is_empty()).then(|| Latency::of(&connect_hist)),
        before_kill: storm.before_kill.get().cloned().unwrap_or_default(),
        storm: storm_samples,
        storm_seconds,
        generator_cpu_percent,
    })
}
