//! `idle --transport stream|sse`: N idle HTTP streams (`GET /stream`, NDJSON, or `GET /sse`,
//! Server-Sent Events), each subscribed to one of the channels by its query, held open while
//! the server's memory is read: RSS per idle stream, as `idle` reports it for WebSockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::{Semaphore, watch};

use crate::conn::Transport;
use crate::report::{self, Tally};
use crate::scenario::{self, Env, IdleArgs, Window};
use crate::stream::{Clients, http_base};

/// Bytes of a stream's start read before its `subscribed` push must have come.
const START_LIMIT: usize = 64 * 1024;

/// Opens one stream and reads until its channel is subscribed.
async fn open(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    channel: &str,
) -> Result<(reqwest::Response, Duration)> {
    let started = Instant::now();
    let mut response = client
        .get(url)
        .query(&[("name", name), ("channel", channel)])
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let took = started.elapsed();
    ensure!(
        response.status().is_success(),
        "GET {url} answered {}",
        response.status()
    );
    let mut seen = Vec::new();
    // Both formats carry the push as JSON: `"type":"subscribed"` naming the channel.
    let wanted = format!(r#""channel":"{channel}""#);
    while !(contains(&seen, b"subscribed") && contains(&seen, wanted.as_bytes())) {
        let chunk = response
            .chunk()
            .await?
            .with_context(|| format!("the stream ended before {channel} was subscribed"))?;
        seen.extend_from_slice(&chunk);
        if seen.len() > START_LIMIT {
            bail!("no subscribed push for {channel} in the stream's first {START_LIMIT} bytes");
        }
    }
    Ok((response, took))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads (and drops) what the server sends, heartbeats included, until told to stop.
async fn hold(mut response: reqwest::Response, mut stop: watch::Receiver<bool>) -> Tally {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            chunk = response.chunk() => match chunk {
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    Tally::new(0)
}

pub async fn idle(env: &Env, args: &IdleArgs) -> Result<report::Report> {
    let path = match args.transport {
        Transport::Stream => "/stream",
        Transport::Sse => "/sse",
        Transport::Ws => unreachable!("WebSockets are scenario::idle's"),
    };
    let bases = env
        .target
        .urls
        .iter()
        .map(|url| http_base(url))
        .collect::<Result<Vec<_>>>()?;
    let clients = Arc::new(Clients::new(&bases, env.target.source_ips).await?);
    let before: Vec<u64> = env
        .pids
        .iter()
        .filter_map(|&pid| report::memory_kib(pid).map(|(rss, _)| rss))
        .collect();
    let window = Window::open(&env.pids);
    let channels = args.channels.max(1);
    let limit = Arc::new(Semaphore::new(env.connect_concurrency));
    let opening: Vec<_> = (0..args.connections)
        .map(|i| {
            let (clients, limit) = (clients.clone(), limit.clone());
            let url = format!("{}{path}", bases[i % bases.len()]);
            let channel = format!(
                "{}:idle:{}",
                env.prefix,
                (args.first_connection + i) % channels
            );
            tokio::spawn(async move {
                let _permit = limit.acquire().await?;
                open(clients.of(i), &url, &format!("idle-{i}"), &channel).await
            })
        })
        .collect();
    let mut connect = report::histogram();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = Vec::with_capacity(args.connections);
    for opened in opening {
        let (response, took) = opened.await??;
        let _ = connect.record((took.as_micros() as u64).max(1));
        holders.push(tokio::spawn(hold(response, stop_rx.clone())));
    }
    // Let allocations settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    let mut report = scenario::finish(
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
    report.scenario = format!("idle over {path}");
    report.rss_kib_per_connection =
        (!env.pids.is_empty()).then(|| added as f64 / args.connections.max(1) as f64);
    Ok(report)
}
