//! The `rpc` scenario: what a call through Tidings to the app's backend costs. C connections
//! each keep one `rpc` in flight for D seconds (closed loop: the next call leaves when the
//! answer to the last arrived); the report gives calls a second, their latency, failures, and
//! the CPU of Tidings, of the backend and of this generator. `backend` serves a minimal backend
//! (it echoes `data`) to point `--proxy-rpc` at.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::Json;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tidings::protocol::{self, Command, Outcome, Push, Reply, Request, Rpc, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Ws};
use crate::report::{self, Latency, ProcessSample};
use crate::scenario::Env;

#[derive(Clone, Debug, clap::Args)]
pub struct RpcArgs {
    /// Connections, each with one call in flight.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// Seconds of calls.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of `data` in each call (echoed back by the backend).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BackendArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: String,
}

/// What one `rpc` run measured.
#[derive(Debug, Serialize)]
pub struct RpcReport {
    pub scenario: &'static str,
    pub connections: usize,
    pub seconds: f64,
    pub calls: u64,
    pub calls_per_second: f64,
    pub errors: u64,
    pub latency_ms: Latency,
    /// The `--pid`s: Tidings and the backend.
    pub servers: Vec<ProcessSample>,
    /// This generator.
    pub generator: Option<ProcessSample>,
}

impl RpcReport {
    pub fn print(&self) {
        println!(
            "scenario      rpc, {} connections, {:.0} s",
            self.connections, self.seconds
        );
        println!(
            "calls         {} ({:.0}/s), {} failed",
            self.calls, self.calls_per_second, self.errors
        );
        let l = &self.latency_ms;
        println!(
            "latency       p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
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

/// A minimal backend: `rpc` answers `{"result":{"data":…}}` with the call's data.
pub async fn serve_backend(args: &BackendArgs) -> Result<()> {
    let app = axum::Router::new().route(
        "/rpc",
        post(|Json(call): Json<Value>| async move {
            Json(json!({"result": {"data": call.get("data").cloned().unwrap_or(Value::Null)}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("backend listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// One connection's calls until `until`: (calls, failures, latency histogram in µs).
async fn call_until(
    mut ws: Ws,
    until: Instant,
    data: String,
) -> Result<(u64, u64, hdrhistogram::Histogram<u64>)> {
    let mut latency = report::histogram();
    let (mut calls, mut errors) = (0, 0);
    let mut id = 0u64;
    while Instant::now() < until {
        id += 1;
        let request = Request {
            id: Some(id),
            command: Command::Rpc(Rpc {
                method: "echo".to_owned(),
                data: Some(&data),
            }),
        };
        let frame = protocol::encode(&request);
        let started = Instant::now();
        ws.send(Message::text(frame)).await?;
        loop {
            let Some(message) = ws.next().await else {
                bail!("connection closed");
            };
            let Message::Text(text) = message? else {
                continue;
            };
            match ServerFrame::parse(&text)? {
                ServerFrame::Reply(Reply { id: got, outcome }) if got == id => {
                    match outcome {
                        Outcome::Ok(_) => calls += 1,
                        Outcome::Error(_) => errors += 1,
                    }
                    break;
                }
                ServerFrame::Push(Push::Ping {}) => {
                    ws.send(Message::text(conn::pong(conn::Protocol::Tidings)))
                        .await?
                }
                _ => {}
            }
        }
        latency.record((started.elapsed().as_micros() as u64).max(1))?;
    }
    Ok((calls, errors, latency))
}

pub async fn rpc(env: &Env, args: &RpcArgs) -> Result<RpcReport> {
    let mut connections = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        connections.push(env.target.connect(index).await?.0);
    }
    let data = "x".repeat(args.payload);
    let mut pids = env.pids.clone();
    pids.push(std::process::id());
    let ticks: Vec<Option<u64>> = pids.iter().map(|&pid| report::cpu_ticks(pid)).collect();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|ws| tokio::spawn(call_until(ws, until, data.clone())))
        .collect();
    let (mut calls, mut errors, mut latency) = (0, 0, report::histogram());
    for task in tasks {
        let (c, e, l) = task.await??;
        calls += c;
        errors += e;
        latency.add(&l)?;
    }
    let window = started.elapsed();
    let mut sampled = report::sample(&pids, &ticks, window);
    let generator = sampled
        .iter()
        .position(|s| s.pid == std::process::id())
        .map(|i| sampled.remove(i));
    Ok(RpcReport {
        scenario: "rpc",
        connections: args.connections,
        seconds: window.as_secs_f64(),
        calls,
        calls_per_second: calls as f64 / window.as_secs_f64(),
        errors,
        latency_ms: Latency::of(&latency),
        servers: sampled,
        generator,
    })
}
