//! `tidings-bench`: the benchmark of record for Tidings.
//!
//! Scenarios (over real WebSocket connections unless said otherwise, loopback only):
//! - `fanout`: S subscribers on one channel, P publishers at a fixed total rate R for D
//!   seconds, open loop: a slow server shows as latency, never as a lower send rate.
//! - `chat`: C rooms of M members, each member publishing at r msg/s to its room (over
//!   WebSockets, or with `--transport stream` over HTTP streams and command requests).
//! - `idle`: N idle connections, each subscribed to a channel: server RSS per connection.
//! - `ramp`: fan-out at rising rates until loss or the p99 bound breaks; the highest rate
//!   sustained.
//! - `rpc`: calls through Tidings to the app's backend (`backend` serves a minimal one).
//! - `hostile`: what one client can make the node do to everyone else (churn, floods, huge
//!   backend answers).
//! - `storm`: a node SIGKILLed under N subscribed clients, all back on another node.
//! - cross-node: any scenario given several `--url`s (connections spread over them).
//! - `--processes N`: any scenario split over N generator processes, one merged report.
//!
//! Every payload carries its send time and (publisher, sequence), so each receiver counts
//! lost, duplicated and out-of-order deliveries and the latency of each.

mod backend;
mod conn;
mod coordinator;
mod hostile;
mod lean;
mod idle_stream;
mod jitter;
mod presence;
mod processes;
mod pusher;
mod report;
mod scenario;
mod storm;
mod stream;

use std::time::Duration;

use anyhow::{Result, ensure};
use clap::{Args, Parser, Subcommand};

use conn::{Protocol, Target, Transport};

#[derive(Debug, Parser)]
#[command(
    name = "tidings-bench",
    version,
    about = "Load generator and benchmark of record for Tidings"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct Common {
    /// WebSocket URL of a node (repeat for several nodes: connections are spread over them).
    /// With `--protocol socketio`, a URL without a path (ws://HOST:PORT) gets the Engine.IO
    /// endpoint /socket.io/?EIO=4&transport=websocket appended.
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8000/ws")]
    urls: Vec<String>,
    /// The protocol the target speaks. With `pusher` and `pusher-client`, a URL without a path
    /// (ws://HOST:PORT) gets /app/KEY?protocol=7&… appended.
    #[arg(long, global = true, value_enum, default_value = "tidings")]
    protocol: Protocol,
    /// The Pusher app to connect as (`--protocol pusher` or `pusher-client`):
    /// APP_ID:KEY:SECRET, as the server was given it.
    #[arg(
        long,
        global = true,
        default_value = pusher::DEFAULT_APP,
        value_name = "APP_ID:KEY:SECRET"
    )]
    pusher_app: String,
    /// Server process ids whose RSS and CPU to report (repeatable).
    #[arg(long = "pid", global = true)]
    pids: Vec<u32>,
    /// Spread connections over 127.0.0.1 … 127.0.0.N.
    #[arg(long, global = true, default_value_t = 8)]
    source_ips: u8,
    /// Offer permessage-deflate (RFC 7692) on every connection, as browsers do.
    #[arg(long, global = true)]
    deflate: bool,
    /// Connections opened at once while setting up.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Channel namespace; give each generator process its own when several share a server
    /// (--processes derives what each of its processes needs from it).
    #[arg(long, global = true, default_value = "bench")]
    prefix: String,
    /// Begin the measured window at this time (ms since the Unix epoch), after connecting: lets
    /// several generator processes (one process holds at most ~19,000 connections here)
    /// measure the same window (--processes does this itself).
    #[arg(long, global = true)]
    start_at: Option<u64>,
    /// Run the scenario as N generator processes (copies of this program) and print one merged
    /// report: for more connections than one process may open (~19,000 here).
    ///
    /// They connect one after the other (one connection storm at a time); once the last has
    /// connected, all start their window together, 0.5 s later (or at --start-at if that is
    /// later); --pid is sampled once, by this process, over that window. fanout: subscribers
    /// and publishers split, one channel for all, every subscriber expects every process's
    /// publications; chat: whole rooms per process (channel prefix PREFIX-K); idle:
    /// connections split over the same --channels channels, RSS per connection over all of
    /// them; ramp: every step split so. Counts are summed, latency and connect-time
    /// histograms merged (exact percentiles).
    #[arg(long, global = true, default_value_t = 1, value_name = "N", value_parser = at_least_one)]
    processes: usize,
    /// Run as one of --processes' children: say when connected and take the start time from
    /// stdin.
    #[arg(long, global = true, hide = true)]
    child: bool,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(0) => Err("at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(format!("{err}")),
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S subscribers on one channel, P publishers at a total rate R (open loop).
    Fanout(scenario::FanoutArgs),
    /// C rooms of M members, each publishing at r msg/s to its room.
    Chat(scenario::ChatArgs),
    /// N idle subscribed connections: server memory per connection.
    Idle(scenario::IdleArgs),
    /// Fan-out at rising rates until loss or the latency bound breaks.
    Ramp(scenario::RampArgs),
    /// Presence: the time of presence_stats and of a page, and (with --churn) what joins and
    /// leaves cost the servers.
    Presence(presence::PresenceArgs),
    /// Delivery under churn: clients dropped and back again while a publisher broadcasts;
    /// the share delivered and the replay latency.
    Jitter(jitter::JitterArgs),
    /// Calls through Tidings to the app's backend (`--proxy-rpc`): calls/s and latency.
    Rpc(backend::RpcArgs),
    /// Serves a minimal backend for `rpc` (echoes `data`).
    Backend(backend::BackendArgs),
    /// What one client can make the node do to everyone else: churn, floods, huge answers.
    Hostile(hostile::HostileArgs),
    /// A reconnect storm: every client of a node SIGKILLed comes back on another node, from
    /// where it was (Tidings) or into its room (Socket.IO).
    Storm(storm::StormArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Tens of thousands of sockets need more than the usual 1024 descriptors.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if !cli.common.json {
        eprintln!("open-files limit: {limit}");
    }
    let app: pusher::App = cli.common.pusher_app.parse().map_err(anyhow::Error::msg)?;
    let target = Target {
        urls: cli
            .common
            .urls
            .iter()
            .map(|url| match cli.common.protocol.is_pusher() {
                true => pusher::endpoint(url, &app),
                false => conn::endpoint(cli.common.protocol, url),
            })
            .collect(),
        protocol: cli.common.protocol,
        source_ips: cli.common.source_ips.max(1),
        deflate: cli.common.deflate,
        pusher: std::sync::Arc::new(app),
    };
    ensure!(
        !(cli.common.child && cli.common.processes > 1),
        "a --processes child runs as one process"
    );
    let env = scenario::Env {
        target,
        pids: cli.common.pids.clone(),
        connect_concurrency: cli.common.connect_concurrency.max(1),
        drain: Duration::from_secs(5),
        prefix: cli.common.prefix.clone(),
        start_at: cli.common.start_at,
        coordinator: cli.common.child.then(coordinator::Coordinator::stdio),
    };
    let common = &cli.common;
    if let Scenario::Jitter(args) = &cli.scenario {
        ensure!(common.processes == 1, "jitter runs as one process");
        let report = jitter::jitter(env, args).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    if let Scenario::Backend(args) = &cli.scenario {
        return backend::serve_backend(args).await;
    }
    if let Scenario::Rpc(args) = &cli.scenario {
        ensure!(common.processes == 1, "rpc runs as one process");
        let report = backend::rpc(&env, args).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    if let Scenario::Hostile(args) = &cli.scenario {
        ensure!(common.processes == 1, "hostile runs as one process");
        let report = hostile::hostile(&env, args).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    if let Scenario::Storm(args) = &cli.scenario {
        ensure!(common.processes == 1, "storm runs as one process");
        let report = storm::storm(env, args).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    if let Scenario::Presence(args) = &cli.scenario {
        ensure!(common.processes == 1, "presence runs as one process");
        let report = presence::presence(&env, args).await?;
        if common.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        return Ok(());
    }
    if let Scenario::Idle(args) = &cli.scenario {
        ensure!(
            args.transport == Transport::Ws || common.processes == 1,
            "idle over HTTP streams runs as one process"
        );
    }
    let reports = if common.processes > 1 {
        match &cli.scenario {
            Scenario::Fanout(args) => vec![processes::fanout(common, args).await?],
            Scenario::Chat(args) => vec![processes::chat(common, args).await?],
            Scenario::Idle(args) => vec![processes::idle(common, args).await?],
            Scenario::Ramp(args) => {
                scenario::ramp(args, |step| async move {
                    processes::fanout(common, &step).await
                })
                .await?
            }
            Scenario::Presence(_)
            | Scenario::Jitter(_)
            | Scenario::Rpc(_)
            | Scenario::Backend(_)
            | Scenario::Hostile(_)
            | Scenario::Storm(_) => unreachable!("answered above"),
        }
    } else {
        let env = &env;
        match &cli.scenario {
            Scenario::Fanout(args) => vec![scenario::fanout(env, args).await?],
            Scenario::Chat(args) => vec![match args.transport {
                Transport::Ws => scenario::chat(env, args).await?,
                Transport::Stream => stream::chat(env, args).await?,
                Transport::Sse => anyhow::bail!("chat runs over ws or stream"),
            }],
            Scenario::Idle(args) if args.transport != Transport::Ws => {
                vec![idle_stream::idle(env, args).await?]
            }
            Scenario::Idle(args) => vec![scenario::idle(env, args).await?],
            Scenario::Ramp(args) => {
                scenario::ramp(
                    args,
                    |step| async move { scenario::fanout(env, &step).await },
                )
                .await?
            }
            Scenario::Presence(_)
            | Scenario::Jitter(_)
            | Scenario::Rpc(_)
            | Scenario::Backend(_)
            | Scenario::Hostile(_)
            | Scenario::Storm(_) => unreachable!("answered above"),
        }
    };
    if cli.common.child {
        // One line: the parent reads it to the end.
        println!("{}", serde_json::to_string(&reports)?);
    } else if cli.common.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            report.print();
        }
    }
    Ok(())
}
