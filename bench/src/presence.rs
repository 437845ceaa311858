//! The `presence` scenario: what presence costs. Against a channel whose members are already
//! there (held by an `idle` run, say), it times `presence_stats` and one `presence` page, and
//! optionally churns: opens a connection that subscribes and closes again, `--churn` times a
//! second — a join and a leave each — while a witness subscriber counts the pushes that reach
//! one member and /proc gives the servers' CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tidings::protocol::{
    ChannelName, Command, Outcome, Presence, PresenceStats, Push, Reply, Request, ServerFrame,
};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Ws};
use crate::report::{self, Latency, ProcessSample};
use crate::scenario::{Env, Window};

#[derive(Clone, Debug, clap::Args)]
pub struct PresenceArgs {
    /// The channel to measure (its namespace must have presence=true).
    #[arg(long)]
    pub channel: String,
    /// How many times to time each query.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Members the presence pages ask for.
    #[arg(long, default_value_t = 100)]
    pub page: usize,
    /// Connections per second that subscribe and leave again (0: no churn).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Seconds of churn.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds each churning connection stays before it leaves (longer than a batching
    /// interval, or batches net its join and leave away).
    #[arg(long, default_value_t = 3.0)]
    pub stay: f64,
}

/// What one `presence` run measured.
#[derive(Debug, Serialize)]
pub struct PresenceReport {
    pub scenario: &'static str,
    pub channel: String,
    /// `presence_stats` as the server reported it before the queries.
    pub clients: u64,
    pub users: u64,
    pub stats_ms: Latency,
    pub page_ms: Latency,
    pub page_size: usize,
    /// Joins and leaves made by the churn.
    pub churned: u64,
    /// Join, leave and batch pushes that reached the witness during the churn.
    pub witness_pushes: u64,
    /// Members the witness learned of (a batch counts each of its members).
    pub witness_changes: u64,
    pub churn_seconds: f64,
    pub servers: Vec<ProcessSample>,
}

impl PresenceReport {
    pub fn print(&self) {
        println!("scenario      presence, {}", self.channel);
        println!(
            "present       {} clients, {} users",
            self.clients, self.users
        );
        let show = |name: &str, l: &Latency| {
            println!(
                "{name:<13} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            )
        };
        show("stats", &self.stats_ms);
        show(&format!("page of {}", self.page_size), &self.page_ms);
        if self.churned > 0 {
            println!(
                "churn         {} joins+leaves in {:.1} s; the witness got {} pushes for {} changes",
                self.churned, self.churn_seconds, self.witness_pushes, self.witness_changes
            );
        }
        for s in &self.servers {
            println!(
                "server {:<7} cpu {:.0}%  rss {:.1} MiB",
                s.pid,
                s.cpu_percent,
                s.rss_kib as f64 / 1024.0
            );
        }
    }
}

/// Sends one request and waits for its reply's `ok` body, skipping pushes.
async fn ask(ws: &mut Ws, id: u64, command: Command<()>) -> Result<serde_json::Value> {
    let request = Request {
        id: Some(id),
        command,
    };
    ws.send(Message::text(serde_json::to_string(&request)?))
        .await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        match ServerFrame::parse(&text)? {
            ServerFrame::Reply(Reply {
                id: got,
                outcome: Outcome::Ok(body),
            }) if got == id => return Ok(body),
            ServerFrame::Reply(Reply {
                outcome: Outcome::Error(error),
                ..
            }) => bail!("request {id} failed: {error:?}"),
            ServerFrame::Push(Push::Ping {}) => {
                ws.send(Message::text(conn::pong(conn::Protocol::Tidings)))
                    .await?
            }
            _ => {}
        }
    }
    bail!("connection closed")
}

fn micros(since: Instant) -> u64 {
    (since.elapsed().as_micros() as u64).max(1)
}

pub async fn presence(env: &Env, args: &PresenceArgs) -> Result<PresenceReport> {
    let channel = ChannelName::parse(&args.channel)?;
    let (mut ws, _) = env.target.connect(0).await?;
    let stats = || {
        Command::PresenceStats(PresenceStats {
            channel: channel.clone(),
        })
    };
    let counted = ask(&mut ws, 1, stats()).await?;
    let (mut stats_us, mut page_us) = (report::histogram(), report::histogram());
    for n in 0..args.queries as u64 {
        let started = Instant::now();
        ask(&mut ws, 10 + 2 * n, stats()).await?;
        stats_us.record(micros(started))?;
        let started = Instant::now();
        let page = Command::Presence(Presence {
            channel: channel.clone(),
            limit: Some(args.page),
            cursor: None,
        });
        ask(&mut ws, 11 + 2 * n, page).await?;
        page_us.record(micros(started))?;
    }
    let (churned, pushes, changes, churn_seconds, servers) = if args.churn > 0.0 {
        churn(env, args).await?
    } else {
        (0, 0, 0, 0.0, Vec::new())
    };
    Ok(PresenceReport {
        scenario: "presence",
        channel: args.channel.clone(),
        clients: counted["clients"].as_u64().unwrap_or(0),
        users: counted["users"].as_u64().unwrap_or(0),
        stats_ms: Latency::of(&stats_us),
        page_ms: Latency::of(&page_us),
        page_size: args.page,
        churned,
        witness_pushes: pushes,
        witness_changes: changes,
        churn_seconds,
        servers,
    })
}

/// Subscribes a witness, then opens and subscribes a connection `--churn` times a second for
/// `--duration`, each closing `--stay` seconds later; returns (joins + leaves, witness pushes, witness changes,
/// seconds, server samples).
async fn churn(env: &Env, args: &PresenceArgs) -> Result<(u64, u64, u64, f64, Vec<ProcessSample>)> {
    let (mut witness, _) = env.target.connect(1).await?;
    conn::subscribe(&mut witness, conn::Protocol::Tidings, &args.channel).await?;
    let (pushes, changes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counting = tokio::spawn({
        let (pushes, changes) = (pushes.clone(), changes.clone());
        async move {
            while let Some(Ok(message)) = witness.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let (frames, members) = match serde_json::from_str::<Push>(&text) {
                    Ok(Push::Join(_) | Push::Leave(_)) => (1, 1),
                    Ok(Push::PresenceBatch(batch)) => {
                        (1, (batch.joined.len() + batch.left.len()) as u64)
                    }
                    Ok(Push::Ping {}) => {
                        let pong = conn::pong(conn::Protocol::Tidings);
                        let _ = witness.send(Message::text(pong)).await;
                        (0, 0)
                    }
                    _ => (0, 0),
                };
                pushes.fetch_add(frames, Ordering::Relaxed);
                changes.fetch_add(members, Ordering::Relaxed);
            }
        }
    });
    let window = Window::open(&env.pids);
    let period = Duration::from_secs_f64(1.0 / args.churn);
    let total = (args.churn * args.duration).round() as u64;
    let mut ticker = tokio::time::interval(period);
    let mut running = Vec::new();
    for n in 0..total {
        ticker.tick().await;
        let (target, channel) = (env.target.clone(), args.channel.clone());
        let stay = Duration::from_secs_f64(args.stay);
        running.push(tokio::spawn(async move {
            let (mut ws, _) = target.connect(2 + n as usize).await?;
            conn::subscribe(&mut ws, conn::Protocol::Tidings, &channel).await?;
            // Stays, reading (and dropping) what the room pushes, then leaves.
            let _ =
                tokio::time::timeout(stay, async { while let Some(Ok(_)) = ws.next().await {} })
                    .await;
            ws.close(None).await?;
            anyhow::Ok(())
        }));
    }
    for task in running {
        task.await?.context("a churning connection")?;
    }
    // The last leaves (and a last batch) arrive within a batching interval or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seconds = window.started.elapsed();
    let servers = report::sample(&env.pids, &window.ticks, seconds);
    counting.abort();
    let (pushes, changes) = (
        pushes.load(Ordering::Relaxed),
        changes.load(Ordering::Relaxed),
    );
    Ok((2 * total, pushes, changes, seconds.as_secs_f64(), servers))
}
