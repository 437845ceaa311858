//! `chat --transport stream`: the chat scenario over HTTP streams instead of WebSockets. Each
//! member holds a `GET /stream?name=…&channel=ROOM` session (NDJSON: one protocol v1 frame a
//! line) and publishes with `POST /stream` requests naming that session
//! (docs/protocol.md, "HTTP streams" and "Two-way fallback"). Deliveries are counted by the
//! same [`Tally`] as the WebSocket chat, from the same payloads.
//!
//! The server budgets command requests per client address (200 requests a second, bursts of
//! 400, and `--max-message-size` bytes a second): members are spread over enough 127.0.0.x
//! source addresses to stay at half of that, one HTTP/1.1 keep-alive client per address. A
//! member keeps one request in flight, which keeps its commands in order, and sends whatever
//! fell due meanwhile in the next one (at most [`MAX_COMMANDS`]). A request answered anything
//! but 202 (a 429 above all) is an error in the report; its publications still count as sent,
//! so they show as lost, as a refused WebSocket publish does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use tidings::protocol::Push;
use tokio::sync::watch;

use crate::conn::{self, Protocol};
use crate::report::{self, Report, Tally};
use crate::scenario::{self, ChatArgs, Env, Window};

/// Commands one `POST /stream` may carry (the server refuses more with 400).
pub const MAX_COMMANDS: usize = 100;

/// The server's budget per client address is 200 requests a second; the chat plans for half,
/// so that members' phases bunching up never reach it.
const REQUESTS_PER_ADDRESS: f64 = 100.0;

/// The byte budget per address is `--max-message-size` a second (64 KiB unless the server was
/// told otherwise); the chat plans for half of the default.
const BYTES_PER_ADDRESS: f64 = 32.0 * 1024.0;

/// What the server adds up per command besides the command itself (its envelope).
const COMMAND_ENVELOPE: usize = 8;

/// A session id's length as the budget counts it (`NODE.SECRET`: 16 + 1 + 32 hex digits),
/// rounded up.
const SESSION_BYTES: usize = 64;

/// How long a command request may take before it counts as failed.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Kept-alive connections unused this long are closed by the client, before the server's
/// header-read timeout (`--handshake-timeout`, 10 s by default; it runs on idle keep-alive
/// connections too) closes them under a request about to be sent.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The longest unfinished line kept: past it the stream is not NDJSON (or is hostile).
const MAX_LINE: usize = 1 << 20;

/// An NDJSON reader's buffer: bytes arrive in chunks cut anywhere, lines come out whole.
#[derive(Debug, Default)]
pub struct Lines {
    buffer: Vec<u8>,
    /// Where the lines not yet taken start.
    start: usize,
}

impl Lines {
    /// Appends a chunk; an error when the unfinished line grows past [`MAX_LINE`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(chunk);
        let unfinished = self
            .buffer
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(self.buffer.len(), |last| self.buffer.len() - last - 1);
        ensure!(
            unfinished <= MAX_LINE,
            "a stream line longer than {MAX_LINE} bytes"
        );
        Ok(())
    }

    /// The next whole line, without its line break; empty lines are skipped.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        loop {
            let rest = &self.buffer[self.start..];
            let end = rest.iter().position(|&b| b == b'\n')?;
            let from = self.start;
            self.start += end + 1;
            let mut line = &self.buffer[from..from + end];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            if !line.is_empty() {
                return Some(line);
            }
        }
    }
}

/// The HTTP base of a node from its WebSocket URL: `ws://HOST:PORT/ws` → `http://HOST:PORT`.
pub fn http_base(url: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("URL without scheme")?;
    let scheme = match scheme {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => bail!("{url}: scheme {other:?} is neither ws(s) nor http(s)"),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    Ok(format!("{scheme}://{authority}"))
}

/// The source addresses a chat of `publications_per_sec` (all members together, one request
/// each at worst) needs to stay within half of the server's per-address budget, when one
/// command is `command_bytes` long: at least `floor` (`--source-ips`).
pub fn addresses_needed(floor: u8, publications_per_sec: f64, command_bytes: usize) -> Result<u8> {
    let request_bytes = (command_bytes + COMMAND_ENVELOPE + SESSION_BYTES) as f64;
    let by_requests = publications_per_sec / REQUESTS_PER_ADDRESS;
    let by_bytes = publications_per_sec * request_bytes / BYTES_PER_ADDRESS;
    let needed = by_requests.max(by_bytes).ceil().max(1.0);
    ensure!(
        needed <= 255.0,
        "{publications_per_sec:.0} command requests/s need {needed:.0} source addresses to stay \
         within the server's per-address budget, and 127.0.0.x has 255: fewer members or a \
         lower rate"
    );
    Ok(floor.max(needed as u8))
}

/// One HTTP/1.1 keep-alive client per source address (unbound for targets off loopback).
#[derive(Debug)]
pub(crate) struct Clients {
    clients: Vec<reqwest::Client>,
}

impl Clients {
    pub(crate) async fn new(bases: &[String], addresses: u8) -> Result<Self> {
        let mut loopback = true;
        for base in bases {
            let authority = base.split_once("://").map_or(base.as_str(), |(_, a)| a);
            let addr: SocketAddr = tokio::net::lookup_host(authority)
                .await?
                .next()
                .with_context(|| format!("cannot resolve {authority}"))?;
            loopback &= addr.ip().is_loopback();
        }
        let bound = loopback && addresses > 1;
        let clients = (1..=if bound { addresses } else { 1 })
            .map(|last| {
                let builder = reqwest::Client::builder()
                    .no_proxy()
                    .http1_only()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(POOL_IDLE)
                    .connect_timeout(scenario::SET_UP_TIMEOUT);
                let builder = if bound {
                    builder.local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
                } else {
                    builder
                };
                builder.build().context("building an HTTP client")
            })
            .collect::<Result<_>>()?;
        Ok(Self { clients })
    }

    /// The client of member `index`: addresses taken round-robin, as WebSockets take them.
    pub(crate) fn of(&self, index: usize) -> &reqwest::Client {
        &self.clients[index % self.clients.len()]
    }
}

/// A member's open stream: subscribed to its room, the lines after that not yet read.
#[derive(Debug)]
struct Session {
    response: reqwest::Response,
    lines: Lines,
    /// The session id that command requests name (`Tidings-Session`).
    id: String,
}

/// Opens `GET /stream` for one member and reads up to its room's `subscribed` push. Returns
/// the stream and how long the response took to start (the HTTP handshake).
async fn open(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    room: &str,
) -> Result<(Session, Duration)> {
    let started = Instant::now();
    let mut response = client
        .get(format!("{base}/stream"))
        .query(&[("name", name), ("channel", room)])
        .send()
        .await
        .with_context(|| format!("GET {base}/stream"))?;
    let took = started.elapsed();
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("GET {base}/stream answered {status}: {body}");
    }
    let id = response
        .headers()
        .get("tidings-session")
        .and_then(|v| v.to_str().ok())
        .context("a stream without a Tidings-Session header")?
        .to_owned();
    let mut lines = Lines::default();
    loop {
        while let Some(line) = lines.next_line() {
            match serde_json::from_slice::<Push<IgnoredAny>>(line) {
                Ok(Push::Subscribed(subscribed)) if subscribed.channel == room => {
                    return Ok((
                        Session {
                            response,
                            lines,
                            id,
                        },
                        took,
                    ));
                }
                Ok(Push::Error(error)) => bail!("subscribing {room} failed: {error:?}"),
                Ok(_) => {}
                // `close`, `unrecovered`: not protocol v1 pushes of a WebSocket.
                Err(_) => bail!(
                    "while subscribing {room}, the stream said {}",
                    String::from_utf8_lossy(line)
                ),
            }
        }
        let chunk = response
            .chunk()
            .await
            .context("reading the stream")?
            .with_context(|| format!("the stream ended before {room} was subscribed"))?;
        lines.push(&chunk)?;
    }
}

/// Whether a stream line is the server's last: `{"close":{"code":…,"reason":…}}`.
fn is_close(line: &[u8]) -> bool {
    line.starts_with(br#"{"close""#)
}

pub async fn chat(env: &Env, args: &ChatArgs) -> Result<Report> {
    ensure!(
        env.target.protocol == Protocol::Tidings,
        "--transport stream speaks Tidings protocol v1 only"
    );
    ensure!(
        !env.target.deflate,
        "--deflate is a WebSocket extension; streams are not compressed"
    );
    let members = args.members.max(1);
    let room = |i: usize| format!("{}:room:{}", env.prefix, i / members);
    let n = args.rooms * members;
    let count = (args.rate * args.duration).round() as u64;
    let padding = "x".repeat(args.padding);
    let bases: Vec<String> = env
        .target
        .urls
        .iter()
        .map(|url| http_base(url))
        .collect::<Result<_>>()?;
    // Under --processes every process spreads its members over the same addresses, so each
    // sizes them for the whole chat.
    let all_members = args.all_rooms.unwrap_or(args.rooms) * members;
    let largest = conn::publish_frame(
        Protocol::Tidings,
        &room(n.max(1) - 1),
        &conn::payload(conn::now_ns(), members as u32, count, &padding),
    );
    let addresses = addresses_needed(
        env.target.source_ips,
        all_members as f64 * args.rate,
        largest.len(),
    )?;
    if addresses > env.target.source_ips && env.coordinator.is_none() {
        eprintln!(
            "stream: members spread over 127.0.0.1–127.0.0.{addresses} (the server's \
             per-address budget for POST /stream; --source-ips {})",
            env.target.source_ips
        );
    }
    let clients = Clients::new(&bases, addresses).await?;
    let results: Vec<Result<(Session, Duration)>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (clients, base, room) = (&clients, &bases[i % bases.len()], room(i));
            async move {
                let name = format!("member-{i}");
                tokio::time::timeout(
                    scenario::SET_UP_TIMEOUT,
                    open(clients.of(i), base, &name, &room),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "member {i}: no stream or no subscribed push within {}s",
                        scenario::SET_UP_TIMEOUT.as_secs()
                    )
                })?
                .with_context(|| format!("member {i}"))
            }
        })
        .buffered(env.connect_concurrency)
        .collect()
        .await;
    let mut connect = report::histogram();
    let mut streams = Vec::with_capacity(n);
    for result in results {
        let (stream, took) = result.context("opening members' streams")?;
        let _ = connect.record((took.as_micros() as u64).max(1));
        streams.push(stream);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Allocated before the start, as the WebSocket chat does.
    let tallies: Vec<Tally> = (0..n).map(|_| Tally::new(members)).collect();
    let (start, _) = env.agree_start(Vec::new()).await?;
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(tallies)
        .enumerate()
        .map(|(i, (stream, tally))| {
            let publisher = Publisher {
                client: clients.of(i).clone(),
                url: format!("{}/stream", bases[i % bases.len()]),
                channel: room(i),
                index: i % members,
                start,
                phase: i as f64 / n as f64,
                rate: args.rate,
                count,
                padding: padding.clone(),
                sent_total: sent_total.clone(),
                limited: limited.clone(),
            };
            tokio::spawn(member(
                stream,
                tally,
                publisher,
                delivered.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    tokio::time::sleep_until(start).await;
    let window = Window::open(&env.pids);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    scenario::drain(&delivered, count * n as u64 * members as u64, env.drain).await;
    let sent = sent_total.load(Ordering::Relaxed);
    let mut report = scenario::finish(
        env,
        "chat over /stream",
        window,
        tasks,
        stop_tx,
        sent,
        sent * members as u64,
        args.rate * (n * members) as f64,
        connect,
        n,
    )
    .await?;
    report.urls = bases.iter().map(|base| format!("{base}/stream")).collect();
    let limited = limited.load(Ordering::Relaxed);
    if limited > 0 {
        eprintln!(
            "stream: {limited} command requests answered 429 (counted as errors): more \
             --source-ips, or a lower rate"
        );
    }
    Ok(report)
}

/// A member's sending half: its schedule and where its commands go.
#[derive(Debug)]
struct Publisher {
    client: reqwest::Client,
    url: String,
    channel: String,
    index: usize,
    start: tokio::time::Instant,
    phase: f64,
    rate: f64,
    count: u64,
    padding: String,
    sent_total: Arc<AtomicU64>,
    /// Requests answered 429, all members together.
    limited: Arc<AtomicU64>,
}

/// One member: its stream read and its publications sent side by side, until told to stop.
async fn member(
    stream: Session,
    tally: Tally,
    publisher: Publisher,
    delivered: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> Tally {
    let session = stream.id.clone();
    let (mut tally, errors) = tokio::join!(
        receive(stream, tally, &delivered, stop.clone()),
        publisher.run(&session, stop),
    );
    tally.errors += errors;
    tally
}

/// Reads the stream's lines until told to stop. Heartbeats need no answer on a stream (the
/// server takes its pings' TCP acknowledgement as proof of life).
async fn receive(
    mut stream: Session,
    mut tally: Tally,
    delivered: &AtomicU64,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    // Lines read while subscribing, if any came after the `subscribed` push, first.
    let mut closed = take_lines(&mut stream.lines, &mut tally, delivered);
    while !closed {
        let chunk = tokio::select! {
            _ = stop.changed() => break,
            chunk = stream.response.chunk() => chunk,
        };
        let Ok(Some(bytes)) = chunk else {
            tally.errors += 1;
            break;
        };
        tally.wire_bytes += bytes.len() as u64;
        if stream.lines.push(&bytes).is_err() {
            tally.errors += 1;
            break;
        }
        closed = take_lines(&mut stream.lines, &mut tally, delivered);
    }
    tally
}

/// Records the whole lines read so far; true if the server closed the stream (an error).
fn take_lines(lines: &mut Lines, tally: &mut Tally, delivered: &AtomicU64) -> bool {
    while let Some(line) = lines.next_line() {
        if is_close(line) {
            tally.errors += 1;
            return true;
        }
        match std::str::from_utf8(line) {
            Ok(text) => {
                scenario::take(Protocol::Tidings, text, tally, delivered);
            }
            Err(_) => tally.errors += 1,
        }
    }
    false
}

impl Publisher {
    /// Publishes `count` payloads at `rate` from `start` (shifted by the member's phase), one
    /// request in flight, everything that fell due meanwhile in the next. Returns the errors:
    /// requests that failed or were answered anything but 202.
    async fn run(self, session: &str, mut stop: watch::Receiver<bool>) -> u64 {
        let interval = Duration::from_secs_f64(1.0 / self.rate.max(1e-9));
        // As the WebSocket chat: each member its own phase, so the room's members do not all
        // publish in the same instant.
        let start = self.start + interval.mul_f64(self.phase);
        let due = |sent: u64| start + interval.mul_f64(sent as f64);
        let envelope = format!(
            r#"{{"session":{},"commands":["#,
            serde_json::to_string(session).unwrap_or_default()
        );
        let (mut sent, mut errors) = (0u64, 0u64);
        while sent < self.count {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(due(sent)) => {}
            }
            let now = tokio::time::Instant::now();
            let mut body = envelope.clone();
            let mut commands = 0u64;
            while sent < self.count && due(sent) <= now && commands < MAX_COMMANDS as u64 {
                if commands > 0 {
                    body.push(',');
                }
                let payload = conn::payload(conn::now_ns(), self.index as u32, sent, &self.padding);
                body.push_str(&conn::publish_frame(
                    Protocol::Tidings,
                    &self.channel,
                    &payload,
                ));
                sent += 1;
                commands += 1;
            }
            body.push_str("]}");
            self.sent_total.fetch_add(commands, Ordering::Relaxed);
            let request = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .timeout(POST_TIMEOUT)
                .body(body)
                .send();
            let answer = tokio::select! {
                _ = stop.changed() => break,
                answer = request => answer,
            };
            match answer {
                Ok(response) => {
                    let status = response.status();
                    // Read to the end, so that the connection goes back to the pool.
                    let _ = response.bytes().await;
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        self.limited.fetch_add(1, Ordering::Relaxed);
                    }
                    if status != reqwest::StatusCode::ACCEPTED {
                        errors += 1;
                    }
                }
                Err(_) => errors += 1,
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(lines: &mut Lines) -> Vec<String> {
        std::iter::from_fn(|| lines.next_line().map(|l| String::from_utf8_lossy(l).into()))
            .collect()
    }

    #[test]
    fn lines_cut_anywhere_come_out_whole_and_the_rest_waits() {
        let mut lines = Lines::default();
        lines.push(b"{\"a\":1}\n{\"b\"").unwrap();
        assert_eq!(all(&mut lines), [r#"{"a":1}"#]);
        lines.push(b":2}\n\n{\"c\":3}\r\n{\"d\"").unwrap();
        assert_eq!(all(&mut lines), [r#"{"b":2}"#, r#"{"c":3}"#]);
        assert_eq!(lines.next_line(), None);
        lines.push(b":4}\n").unwrap();
        assert_eq!(all(&mut lines), [r#"{"d":4}"#]);
        assert!(lines.buffer.len() <= 16, "taken lines are not kept");
    }

    #[test]
    fn a_line_that_never_ends_is_an_error() {
        let mut lines = Lines::default();
        let chunk = vec![b'x'; MAX_LINE / 2 + 1];
        lines.push(&chunk).unwrap();
        assert!(lines.push(&chunk).is_err());
        let mut lines = Lines::default();
        lines.push(&chunk).unwrap();
        lines.push(b"\n").unwrap();
        lines.push(&chunk).unwrap();
    }

    #[test]
    fn websocket_urls_become_http_bases() {
        assert_eq!(
            http_base("ws://127.0.0.1:8000/ws").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(http_base("wss://h/ws?x=1").unwrap(), "https://h");
        assert_eq!(http_base("http://h:1").unwrap(), "http://h:1");
        assert!(http_base("ftp://h").is_err());
        assert!(http_base("h:1").is_err());
    }

    #[test]
    fn members_get_enough_addresses_for_the_servers_budget() {
        // 500 rooms × 10 members at 1/s: 5,000 requests a second, 50 addresses at 100 each.
        assert_eq!(addresses_needed(8, 5_000.0, 150).unwrap(), 50);
        // Few publications: --source-ips stands.
        assert_eq!(addresses_needed(8, 100.0, 150).unwrap(), 8);
        // Large commands: bytes decide.
        assert_eq!(addresses_needed(1, 1_000.0, 4_096).unwrap(), 128);
        assert!(addresses_needed(8, 100_000.0, 150).is_err());
    }

    #[test]
    fn only_the_close_line_closes() {
        assert!(is_close(br#"{"close":{"code":4000,"reason":"slow"}}"#));
        assert!(!is_close(br#"{"pub":{"channel":"close"}}"#));
    }
}
