//! The `jitter` scenario: delivery under churn. N clients on one channel, each dropped about
//! every `--period` seconds and offline about `--offline` seconds, while one publisher
//! broadcasts `--broadcasts` messages at `--rate` a second. A Tidings client reconnects (to
//! any of the URLs) and subscribes from the last position it had, recovering what it missed;
//! a Socket.IO client can only rejoin the room. Reported: the share delivered, duplicates,
//! out-of-order deliveries, how many recoveries the server refused, the replay latency (from
//! a message's publication to its arrival through a recovery, i.e. at a client that was away
//! when it was sent), and the longest time a client dropped by the server (a node killed, a
//! Redis restart) took to be subscribed again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tidings::protocol::{
    ChannelName, Command, IdempotencyKey, Outcome, Publish, Reply, Request, ServerFrame,
    StreamPosition, Subscribe,
};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Delivery, Protocol, Received, Ws};
use crate::report::{self, Latency, ProcessSample};
use crate::scenario::{Env, Window};

#[derive(Clone, Debug, clap::Args)]
pub struct JitterArgs {
    /// Clients on the channel.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub clients: usize,
    /// Messages the publisher broadcasts.
    #[arg(long, default_value_t = 120)]
    pub broadcasts: u64,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Mean seconds between a client's forced disconnects (each drawn from half to one and a
    /// half times this).
    #[arg(long, default_value_t = 15.0)]
    pub period: f64,
    /// Mean seconds a client stays offline (drawn from half to one and a half times this).
    #[arg(long, default_value_t = 2.0)]
    pub offline: f64,
    /// Seconds after the last broadcast for clients to catch up.
    #[arg(long, default_value_t = 20.0)]
    pub grace: f64,
}

#[derive(Debug, Serialize)]
pub struct JitterReport {
    pub scenario: &'static str,
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub clients: usize,
    pub broadcasts: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_percent: f64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Subscriptions answered `recovered: false`.
    pub unrecovered: u64,
    /// Forced disconnects (planned) and connections the server side dropped (unplanned).
    pub planned_drops: u64,
    pub unplanned_drops: u64,
    pub live_ms: Option<Latency>,
    pub replay_ms: Option<Latency>,
    /// From the start of a reconnect to the arrival of each publication it recovered: how
    /// fast a client that is back catches up (the replay latency adds the time it was away).
    pub catch_up_ms: Option<Latency>,
    /// The longest a client dropped by the server took to be subscribed again.
    pub back_max_ms: f64,
    pub servers: Vec<ProcessSample>,
    pub generator_cpu_percent: f64,
    pub seconds: f64,
}

impl JitterReport {
    pub fn print(&self) {
        println!(
            "scenario      jitter ({:?}) {}",
            self.protocol,
            self.urls.join(" ")
        );
        println!(
            "clients       {}   broadcasts {}   expected {}",
            self.clients, self.broadcasts, self.expected
        );
        println!(
            "delivered     {} ({:.3}%)   duplicated {}   out of order {}   unrecovered {}",
            self.delivered,
            self.delivered_percent,
            self.duplicated,
            self.out_of_order,
            self.unrecovered
        );
        println!(
            "drops         {} forced, {} by the server; longest back {:.0} ms",
            self.planned_drops, self.unplanned_drops, self.back_max_ms
        );
        let show = |name: &str, l: &Option<Latency>| {
            if let Some(l) = l {
                println!(
                    "{name:<13} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                );
            }
        };
        show("live", &self.live_ms);
        show("replay", &self.replay_ms);
        show("catch-up", &self.catch_up_ms);
        for s in &self.servers {
            println!("server {:>6}  cpu {:.0}%", s.pid, s.cpu_percent);
        }
        println!("generator     cpu {:.0}%", self.generator_cpu_percent);
    }
}

/// One client's view of the run.
struct Tally {
    seen: HashSet<u64>,
    duplicated: u64,
    out_of_order: u64,
    unrecovered: u64,
    planned: u64,
    unplanned: u64,
    live: Histogram<u64>,
    replay: Histogram<u64>,
    catch_up: Histogram<u64>,
    back_max: Duration,
}

impl Tally {
    fn new() -> Self {
        Self {
            seen: HashSet::new(),
            duplicated: 0,
            out_of_order: 0,
            unrecovered: 0,
            planned: 0,
            unplanned: 0,
            live: report::histogram(),
            replay: report::histogram(),
            catch_up: report::histogram(),
            back_max: Duration::ZERO,
        }
    }

    fn record(&mut self, delivery: &Delivery, replayed: bool) {
        if !self.seen.insert(delivery.s) {
            self.duplicated += 1;
            return;
        }
        let micros = (conn::now_ns().saturating_sub(delivery.t) / 1000).max(1);
        let histogram = if replayed {
            &mut self.replay
        } else {
            &mut self.live
        };
        let _ = histogram.record(micros.min(600_000_000));
    }
}

/// Where a Tidings client stands: the last offset it got, and its epoch.
#[derive(Default)]
pub(crate) struct Position {
    last: Option<(u64, String)>,
}

impl Position {
    /// Moves to a delivered publication's offset; one at or before the last counts as out
    /// of order.
    pub(crate) fn advance(&mut self, offset: u64, epoch: &str, out_of_order: &mut u64) {
        if let Some((last, known)) = &self.last
            && known == epoch
            && offset <= *last
        {
            *out_of_order += 1;
            return;
        }
        self.last = Some((offset, epoch.to_owned()));
    }

    /// Takes a subscription reply's position unless the client is already past it.
    pub(crate) fn settle(&mut self, offset: u64, epoch: &str) {
        let stale = self
            .last
            .as_ref()
            .is_none_or(|(last, known)| known != epoch || *last < offset);
        if stale {
            self.last = Some((offset, epoch.to_owned()));
        }
    }

    pub(crate) fn since(&self) -> Option<StreamPosition> {
        self.last.as_ref().map(|(offset, epoch)| StreamPosition {
            offset: *offset,
            epoch: epoch.as_str().into(),
        })
    }
}

fn jittered(mean: f64) -> Duration {
    Duration::from_secs_f64(mean * (0.5 + fastrand::f64()))
}

/// Connects and subscribes (from `position` when it has one); the recovered publications
/// are recorded as replays. `None` when the connection or the subscription failed.
async fn join(
    env: &Env,
    index: usize,
    channel: &str,
    position: &mut Position,
    tally: &mut Tally,
) -> Option<Ws> {
    let protocol = env.target.protocol;
    let started = Instant::now();
    let (mut ws, _) = env.target.connect(index).await.ok()?;
    if protocol != Protocol::Tidings {
        conn::subscribe(&mut ws, protocol, channel).await.ok()?;
        return Some(ws);
    }
    let answer = subscribe_since(&mut ws, channel, position.since()).await?;
    if !answer.recovered {
        tally.unrecovered += 1;
    }
    for (offset, epoch, delivery) in &answer.publications {
        position.advance(*offset, epoch, &mut tally.out_of_order);
        if let Some(delivery) = delivery {
            if !tally.seen.contains(&delivery.s) {
                let micros = (started.elapsed().as_micros() as u64).max(1);
                let _ = tally.catch_up.record(micros.min(600_000_000));
            }
            tally.record(delivery, true);
        }
    }
    position.settle(answer.offset, &answer.epoch);
    Some(ws)
}

/// A Tidings subscription's reply: whether the gap was recovered, the publications it
/// carried (offset, epoch, the bench payload when it is one), and the channel's position.
pub(crate) struct Subscribed {
    pub recovered: bool,
    pub publications: Vec<(u64, String, Option<Delivery>)>,
    pub offset: u64,
    pub epoch: String,
}

/// Subscribes a Tidings connection (from `since`, when given) and reads the reply; `None`
/// when the connection failed or the subscription was refused.
pub(crate) async fn subscribe_since(
    ws: &mut Ws,
    channel: &str,
    since: Option<StreamPosition>,
) -> Option<Subscribed> {
    let request = Request {
        id: Some(1),
        command: Command::<()>::Subscribe(Subscribe {
            channel: ChannelName::parse(channel).ok()?,
            since,
            token: None,
            extras: Default::default(),
        }),
    };
    ws.send(Message::text(serde_json::to_string(&request).ok()?))
        .await
        .ok()?;
    loop {
        let Message::Text(text) = ws.next().await?.ok()? else {
            continue;
        };
        let Ok(ServerFrame::Reply(Reply { outcome, .. })) = ServerFrame::parse(&text) else {
            continue;
        };
        let Outcome::Ok(body) = outcome else {
            return None;
        };
        let publications = body["publications"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|publication| {
                let offset = publication["offset"].as_u64()?;
                let epoch = publication["epoch"].as_str()?.to_owned();
                let delivery = serde_json::from_value(publication["data"].clone()).ok();
                Some((offset, epoch, delivery))
            })
            .collect();
        return Some(Subscribed {
            recovered: body["recovered"] != Value::Bool(false),
            publications,
            offset: body["offset"].as_u64().unwrap_or(0),
            epoch: body["epoch"].as_str().unwrap_or_default().to_owned(),
        });
    }
}

/// One client: subscribed, dropped now and then, back after a while, until `done`.
async fn client(
    env: Arc<Env>,
    args: JitterArgs,
    index: usize,
    channel: String,
    mut done: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Tally {
    let mut tally = Tally::new();
    let mut position = Position::default();
    let mut attempt = index;
    let mut announced = false;
    let mut dropped_at: Option<Instant> = None;
    while !*done.borrow() {
        let Some(mut ws) = join(&env, attempt, &channel, &mut position, &mut tally).await else {
            attempt += 1;
            let pause = Duration::from_millis(100 + fastrand::u64(..200));
            if tokio::time::timeout(pause, done.changed()).await.is_ok() {
                break;
            }
            continue;
        };
        if let Some(at) = dropped_at.take() {
            tally.back_max = tally.back_max.max(at.elapsed());
        }
        if !announced {
            announced = true;
            let _ = ready.send(()).await;
        }
        let leave_at = tokio::time::Instant::now() + jittered(args.period);
        let planned = loop {
            let message = tokio::select! {
                () = tokio::time::sleep_until(leave_at) => break true,
                _ = done.changed() => return tally,
                message = ws.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => break false,
            };
            match conn::parse(env.target.protocol, &text) {
                Received::Delivery { offset, delivery } => {
                    if let (Some(offset), Some(epoch)) = (offset, epoch_of(&text)) {
                        position.advance(offset, &epoch, &mut tally.out_of_order);
                    }
                    tally.record(&delivery, false);
                }
                Received::Ping => {
                    let _ = ws
                        .send(Message::text(conn::pong(env.target.protocol)))
                        .await;
                }
                Received::Error | Received::Other => {}
            }
        };
        // A forced disconnect is abrupt: the socket is dropped, no close handshake.
        drop(ws);
        attempt += 1;
        if planned {
            tally.planned += 1;
            if tokio::time::timeout(jittered(args.offline), done.changed())
                .await
                .is_ok()
            {
                break;
            }
        } else {
            tally.unplanned += 1;
            dropped_at = Some(Instant::now());
        }
    }
    tally
}

pub(crate) fn epoch_of(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value["pub"]["epoch"].as_str().map(str::to_owned)
}

/// Broadcasts with an idempotency key per message and retries (on another node) until each is
/// acknowledged: a publisher that loses its node publishes every message exactly once still.
async fn publisher(env: Arc<Env>, args: JitterArgs, channel: String) -> Result<()> {
    let protocol = env.target.protocol;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut ws: Option<Ws> = None;
    let mut attempt = 0;
    for seq in 0..args.broadcasts {
        ticker.tick().await;
        let payload = conn::payload(conn::now_ns(), 0, seq, "");
        loop {
            if ws.is_none() {
                attempt += 1;
                ws = env.target.connect(attempt).await.ok().map(|(ws, _)| ws);
                if ws.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let Some(socket) = ws.as_mut() else { continue };
            let sent = if protocol == Protocol::Tidings {
                publish_once(socket, &channel, &payload, seq).await
            } else {
                let frame = conn::publish_frame(protocol, &channel, &payload);
                socket.send(Message::text(frame)).await.is_ok()
            };
            if sent {
                break;
            }
            ws = None;
        }
    }
    Ok(())
}

/// One acknowledged publish; false when the connection failed or the publish was refused.
pub(crate) async fn publish_once(ws: &mut Ws, channel: &str, payload: &str, seq: u64) -> bool {
    let (Ok(channel), Ok(data), Ok(key)) = (
        ChannelName::parse(channel),
        serde_json::from_str::<&serde_json::value::RawValue>(payload),
        IdempotencyKey::parse(&format!("jitter-{seq}")),
    ) else {
        return false;
    };
    let request = Request {
        id: Some(seq + 1),
        command: Command::Publish(Publish {
            channel,
            data,
            idempotency_key: Some(key),
            webhook: false,
        }),
    };
    let Ok(text) = serde_json::to_string(&request) else {
        return false;
    };
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if let Ok(ServerFrame::Reply(Reply { id, outcome })) = ServerFrame::parse(&text)
                && id == seq + 1
            {
                return matches!(outcome, Outcome::Ok(_));
            }
        }
        false
    });
    answer.await.unwrap_or(false)
}

pub async fn jitter(env: Env, args: &JitterArgs) -> Result<JitterReport> {
    let env = Arc::new(env);
    let channel = format!("{}:jitter", env.prefix);
    let (done_tx, done) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let window = Window::open(&env.pids);
    let mut clients = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        clients.push(tokio::spawn(client(
            env.clone(),
            args.clone(),
            index,
            channel.clone(),
            done.clone(),
            ready_tx.clone(),
        )));
        // Spread the first connections out a little: a connection storm is not the test.
        if index % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    for _ in 0..args.clients {
        ready_rx.recv().await.context("a client never connected")?;
    }
    eprintln!("{} clients subscribed; broadcasting", args.clients);
    publisher(env.clone(), args.clone(), channel).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.grace)).await;
    let _ = done_tx.send(true);
    let elapsed = window.started.elapsed();
    let servers = report::sample(&env.pids, &window.ticks, elapsed);
    let generator_cpu_percent = window.own_cpu_percent();
    let mut total = Tally::new();
    let mut delivered = 0u64;
    for client in clients {
        let tally = client.await?;
        delivered += tally.seen.len() as u64;
        total.duplicated += tally.duplicated;
        total.out_of_order += tally.out_of_order;
        total.unrecovered += tally.unrecovered;
        total.planned += tally.planned;
        total.unplanned += tally.unplanned;
        total.back_max = total.back_max.max(tally.back_max);
        total.live.add(&tally.live)?;
        total.replay.add(&tally.replay)?;
        total.catch_up.add(&tally.catch_up)?;
    }
    let expected = args.broadcasts * args.clients as u64;
    Ok(JitterReport {
        scenario: "jitter",
        protocol: env.target.protocol,
        urls: env.target.urls.clone(),
        clients: args.clients,
        broadcasts: args.broadcasts,
        expected,
        delivered,
        delivered_percent: 100.0 * delivered as f64 / expected.max(1) as f64,
        duplicated: total.duplicated,
        out_of_order: total.out_of_order,
        unrecovered: total.unrecovered,
        planned_drops: total.planned,
        unplanned_drops: total.unplanned,
        live_ms: (!total.live.is_empty()).then(|| Latency::of(&total.live)),
        replay_ms: (!total.replay.is_empty()).then(|| Latency::of(&total.replay)),
        catch_up_ms: (!total.catch_up.is_empty()).then(|| Latency::of(&total.catch_up)),
        back_max_ms: total.back_max.as_secs_f64() * 1000.0,
        servers,
        generator_cpu_percent,
        seconds: elapsed.as_secs_f64(),
    })
}
