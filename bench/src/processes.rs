//! `--processes N`: one command drives N generator processes, for scenarios with more
//! connections than one process may hold (20,000 open files here, a hard limit).
//!
//! The parent holds no connections. It starts N copies of this executable (hidden `--child`),
//! each with its share of the scenario, one after the other: a child says `ready` on stdout
//! once its connections are open, and only then is the next one started, so a single
//! connection storm at a time reaches the server's accept queue (two at once overflow it and
//! handshakes wait for SYN retransmits). When the last child is ready, the parent writes
//! `start MS` (ms since the Unix epoch, [`START_MARGIN`] ahead) to every child's stdin: the
//! start is agreed on once everybody has connected, however long that took, never guessed in
//! advance. Each child measures its window from that instant, says `measured`, and waits with
//! its connections open until the parent has sampled the servers (`--pid`) and writes `stop`;
//! then it prints its JSON report (with its raw histograms) and exits. The parent merges the
//! reports into one. The words exchanged, and the child's side, are in `coordinator`.

use std::fmt::Display;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::Common;
use crate::conn;
use crate::coordinator::{MEASURED, READY, START, STOP};
use crate::report::{self, Latency, Report};
use crate::scenario::{ChatArgs, FanoutArgs, IdleArgs, Window};

/// How far ahead of "everybody is ready" the start is set. Connecting is already over by
/// then, so this only covers a line crossing a pipe to an idle process on a busy machine.
const START_MARGIN: Duration = Duration::from_millis(500);

/// Splits `total` into `parts` shares that differ by at most one (the first ones larger).
pub fn split(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|k| total / parts + usize::from(k < total % parts))
        .collect()
}

/// One child's part of the scenario.
#[derive(Debug)]
struct Share {
    /// The subcommand and its arguments.
    scenario: Vec<String>,
    /// Its `--prefix` (channel namespace).
    prefix: String,
    connections: usize,
}

fn words(items: &[&dyn Display]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// Fan-out over N processes: subscribers and publishers split, one channel for all of them
/// (same prefix), publisher ids numbered across processes, the rate shared by all publishers.
/// Every subscriber, whichever its process, expects every publication of every process.
fn fanout_shares(common: &Common, args: &FanoutArgs) -> Result<Vec<Share>> {
    let n = common.processes;
    ensure!(
        args.subscribers >= n,
        "--processes {n} needs at least {n} subscribers (got {})",
        args.subscribers
    );
    let subscribers = split(args.subscribers, n);
    let publishers = split(args.publishers, n);
    let mut first_publisher = 0u32;
    let mut shares = Vec::with_capacity(n);
    for (s, p) in subscribers.into_iter().zip(publishers) {
        shares.push(Share {
            scenario: words(&[
                &"fanout",
                &"--subscribers",
                &s,
                &"--publishers",
                &p,
                &"--rate",
                &args.rate,
                &"--duration",
                &args.duration,
                &"--padding",
                &args.padding,
                &"--first-publisher",
                &first_publisher,
                &"--all-publishers",
                &args.publishers,
            ]),
            prefix: common.prefix.clone(),
            connections: s + p,
        });
        first_publisher += u32::try_from(p).context("too many publishers")?;
    }
    Ok(shares)
}

/// Chat over N processes: whole rooms per process, each process with its own prefix so that
/// room i of one process is not room i of another. Each is told the whole chat's rooms: over
/// streams, all of them spread their command requests over the same source addresses.
fn chat_shares(common: &Common, args: &ChatArgs) -> Result<Vec<Share>> {
    let n = common.processes;
    ensure!(
        args.rooms >= n,
        "--processes {n} needs at least {n} rooms (got {})",
        args.rooms
    );
    let transport = args
        .transport
        .to_possible_value()
        .expect("every transport has a name");
    Ok(split(args.rooms, n)
        .into_iter()
        .enumerate()
        .map(|(k, rooms)| Share {
            scenario: words(&[
                &"chat",
                &"--rooms",
                &rooms,
                &"--members",
                &args.members,
                &"--rate",
                &args.rate,
                &"--duration",
                &args.duration,
                &"--padding",
                &args.padding,
                &"--transport",
                &transport.get_name(),
                &"--all-rooms",
                &args.all_rooms.unwrap_or(args.rooms),
            ]),
            prefix: format!("{}-{k}", common.prefix),
            connections: rooms * args.members.max(1),
        })
        .collect())
}

/// Idle over N processes: connections split, numbered across processes under one prefix, so
/// that they subscribe to the same --channels channels, as many per channel, as one process
/// would (the channel count is part of the server's memory).
fn idle_shares(common: &Common, args: &IdleArgs) -> Result<Vec<Share>> {
    let n = common.processes;
    ensure!(
        args.connections >= n,
        "--processes {n} needs at least {n} connections (got {})",
        args.connections
    );
    let mut first = 0;
    let mut shares = Vec::with_capacity(n);
    for connections in split(args.connections, n) {
        shares.push(Share {
            scenario: words(&[
                &"idle",
                &"--connections",
                &connections,
                &"--channels",
                &args.channels,
                &"--hold",
                &args.hold,
                &"--first-connection",
                &first,
            ]),
            prefix: common.prefix.clone(),
            connections,
        });
        first += connections;
    }
    Ok(shares)
}

pub async fn fanout(common: &Common, args: &FanoutArgs) -> Result<Report> {
    let mut report = run(common, fanout_shares(common, args)?, Measure::Window).await?;
    // A child knows only its own publications; all subscribers expect all of them.
    report.expected = report.sent * common.protocol.audience(args.subscribers, args.publishers);
    report.lost = report.expected.saturating_sub(report.delivered);
    Ok(report)
}

pub async fn chat(common: &Common, args: &ChatArgs) -> Result<Report> {
    // Rooms never span processes, so the children's expected deliveries simply add up.
    run(common, chat_shares(common, args)?, Measure::Window).await
}

pub async fn idle(common: &Common, args: &IdleArgs) -> Result<Report> {
    run(common, idle_shares(common, args)?, Measure::Memory).await
}

/// What the parent measures on the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// CPU over the common window, from the agreed start.
    Window,
    /// CPU from before the first connection (as one idle process does) and RSS added per
    /// connection, read once every process is connected and settled.
    Memory,
}

async fn run(common: &Common, shares: Vec<Share>, measure: Measure) -> Result<Report> {
    let exe = std::env::current_exe().context("finding tidings-bench's own executable")?;
    let pids = &common.pids;
    let rss_before = rss_kib(pids);
    let from_the_first_connection = Window::open(pids);
    let n = shares.len();
    let mut children = Vec::with_capacity(n);
    for (k, share) in shares.iter().enumerate() {
        let mut child = Child::spawn(&exe, k, &child_args(common, share))?;
        // The next storm only once this one is over.
        child.expect(READY).await?;
        if !common.json {
            eprintln!(
                "process {}/{n}: {} connections open",
                k + 1,
                share.connections
            );
        }
        children.push(child);
    }
    let rss_connected = rss_kib(pids);
    let at = start_time(common.start_at);
    for child in &mut children {
        child.say(&format!("{START}{at}")).await?;
    }
    let window = match measure {
        Measure::Memory => from_the_first_connection,
        Measure::Window => {
            let now = conn::now_ns() / 1_000_000;
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
            Window::open(pids)
        }
    };
    for child in &mut children {
        child.expect(MEASURED).await?;
    }
    let servers = report::sample(pids, &window.ticks, window.started.elapsed());
    for child in &mut children {
        child.say(STOP).await?;
    }
    let reports =
        futures_util::future::try_join_all(children.into_iter().map(Child::report)).await?;
    let mut merged = merge(reports)?;
    merged.servers = servers;
    if measure == Measure::Memory && !pids.is_empty() {
        let added: u64 = rss_connected
            .iter()
            .zip(&rss_before)
            .filter_map(|(after, before)| Some(after.as_ref()?.saturating_sub((*before)?)))
            .sum();
        merged.rss_kib_per_connection = Some(added as f64 / merged.connections.max(1) as f64);
    }
    Ok(merged)
}

fn rss_kib(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter()
        .map(|&pid| report::memory_kib(pid).map(|(rss, _)| rss))
        .collect()
}

/// The agreed start (ms since the Unix epoch): --start-at if it is still far enough ahead
/// (several commands sharing one window), else [`START_MARGIN`] from now.
fn start_time(requested: Option<u64>) -> u64 {
    let earliest = conn::now_ns() / 1_000_000 + START_MARGIN.as_millis() as u64;
    match requested {
        Some(at) if at >= earliest => at,
        Some(at) => {
            eprintln!(
                "warning: --start-at is {} ms too early for every process to have connected; \
                 starting at {earliest}",
                earliest - at
            );
            earliest
        }
        None => earliest,
    }
}

/// A child's command line: its share of the scenario and the options every child shares. Not
/// passed on: --pid (the parent samples the servers once, for the whole window), --start-at
/// (agreed on over stdin) and --processes (each child is one process).
fn child_args(common: &Common, share: &Share) -> Vec<String> {
    let mut args = share.scenario.clone();
    for url in &common.urls {
        args.extend(["--url".to_owned(), url.clone()]);
    }
    let protocol = common
        .protocol
        .to_possible_value()
        .expect("every protocol has a name");
    args.extend(words(&[
        &"--protocol",
        &protocol.get_name(),
        &"--source-ips",
        &common.source_ips,
        &"--connect-concurrency",
        &common.connect_concurrency,
        &"--prefix",
        &share.prefix,
        &"--pusher-app",
        &common.pusher_app,
        &"--json",
        &"--child",
    ]));
    args
}

/// One report out of the children's: counts summed, histograms merged bucket by bucket, the
/// longest child window as the duration.
fn merge(reports: Vec<Report>) -> Result<Report> {
    let first = reports.first().context("no process reported")?;
    let mut latency = report::histogram();
    let mut connect = report::histogram();
    let mut merged = Report {
        scenario: first.scenario.clone(),
        processes: Some(reports.len()),
        protocol: first.protocol,
        urls: first.urls.clone(),
        connections: 0,
        connect_ms: None,
        sent: 0,
        expected: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        errors: 0,
        offered_per_sec: 0.0,
        delivered_per_sec: 0.0,
        latency: None,
        servers: Vec::new(),
        generator_cpu_percent: 0.0,
        rss_kib_per_connection: None,
        wire_bytes_per_delivery: None,
        seconds: 0.0,
        histograms: None,
    };
    for (k, child) in reports.iter().enumerate() {
        let histograms = child
            .histograms
            .as_ref()
            .with_context(|| format!("process {k}'s report has no histograms"))?;
        report::add_pairs(&mut latency, &histograms.latency_us)
            .with_context(|| format!("merging process {k}'s latencies"))?;
        report::add_pairs(&mut connect, &histograms.connect_us)
            .with_context(|| format!("merging process {k}'s connect times"))?;
        merged.connections += child.connections;
        merged.sent += child.sent;
        merged.expected += child.expected;
        merged.delivered += child.delivered;
        merged.duplicated += child.duplicated;
        merged.out_of_order += child.out_of_order;
        merged.errors += child.errors;
        // Each child offers its own subscribers' share (fan-out: the full rate × its
        // subscribers), so the shares add up to the whole.
        merged.offered_per_sec += child.offered_per_sec;
        merged.generator_cpu_percent += child.generator_cpu_percent;
        merged.seconds = merged.seconds.max(child.seconds);
    }
    merged.lost = merged.expected.saturating_sub(merged.delivered);
    merged.delivered_per_sec = merged.delivered as f64 / merged.seconds.max(1e-9);
    merged.latency = (!latency.is_empty()).then(|| Latency::of(&latency));
    merged.connect_ms = Some(Latency::of(&connect));
    Ok(merged)
}

/// A child process, as the parent drives it.
struct Child {
    index: usize,
    process: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Child {
    fn spawn(exe: &Path, index: usize, args: &[String]) -> Result<Self> {
        let mut process = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // If the parent fails half-way, no child is left holding thousands of connections.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting process {index}: {} {}",
                    exe.display(),
                    args.join(" ")
                )
            })?;
        let stdin = process.stdin.take().context("the child's stdin")?;
        let stdout = process.stdout.take().context("the child's stdout")?;
        Ok(Self {
            index,
            process,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    async fn expect(&mut self, word: &str) -> Result<()> {
        let index = self.index;
        let line = self
            .stdout
            .next_line()
            .await
            .with_context(|| format!("reading process {index}'s output"))?;
        match line {
            Some(line) if line == word => Ok(()),
            Some(line) => bail!("process {index} said {line:?} where {word:?} was expected"),
            None => {
                let status = self.process.wait().await?;
                bail!("process {index} exited ({status}) before saying {word:?}")
            }
        }
    }

    async fn say(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin
            .flush()
            .await
            .with_context(|| format!("telling process {} {line:?}", self.index))
    }

    async fn report(self) -> Result<Report> {
        let Self {
            index,
            mut process,
            stdin,
            stdout,
        } = self;
        drop(stdin);
        let mut json = String::new();
        stdout
            .into_inner()
            .read_to_string(&mut json)
            .await
            .with_context(|| format!("reading process {index}'s report"))?;
        let status = process.wait().await?;
        ensure!(status.success(), "process {index} failed ({status})");
        let mut reports: Vec<Report> = serde_json::from_str(&json)
            .with_context(|| format!("process {index}'s report is not a JSON report: {json:?}"))?;
        ensure!(
            reports.len() == 1,
            "process {index} sent {} reports, not one",
            reports.len()
        );
        Ok(reports.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::conn::Transport;
    use crate::{Cli, Scenario};

    fn cli(args: &str) -> Cli {
        Cli::try_parse_from(args.split_whitespace()).expect("command line")
    }

    /// Each child's command line, parsed back as the child will parse it.
    fn children(parent: &str) -> Vec<Cli> {
        let parent = cli(parent);
        let shares = match &parent.scenario {
            Scenario::Fanout(args) => fanout_shares(&parent.common, args),
            Scenario::Chat(args) => chat_shares(&parent.common, args),
            Scenario::Idle(args) => idle_shares(&parent.common, args),
            Scenario::Ramp(_) => unreachable!("ramp steps run as fan-outs"),
            Scenario::Presence(_)
            | Scenario::Jitter(_)
            | Scenario::Rpc(_)
            | Scenario::Backend(_)
            | Scenario::Hostile(_)
            | Scenario::Storm(_) => unreachable!("one process only"),
        }
        .expect("shares");
        shares
            .iter()
            .map(|share| {
                let mut args = vec!["tidings-bench".to_owned()];
                args.extend(child_args(&parent.common, share));
                Cli::try_parse_from(args).expect("child command line")
            })
            .collect()
    }

    #[test]
    fn shares_differ_by_one_at_most_and_add_up() {
        assert_eq!(split(10, 3), [4, 3, 3]);
        assert_eq!(split(2, 3), [1, 1, 0]);
        assert_eq!(split(9_000, 2).iter().sum::<usize>(), 9_000);
    }

    #[test]
    fn fanout_children_share_one_channel_and_number_publishers_across_processes() {
        let children = children(
            "tidings-bench fanout -s 41 -p 5 -r 250.5 -d 1.5 --padding 9 --processes 3 \
             --url ws://a/ws --url ws://b/ws --protocol naive --pid 7 --source-ips 3 \
             --connect-concurrency 5 --prefix run",
        );
        let mut publishers = Vec::new();
        for child in &children {
            let Scenario::Fanout(args) = &child.scenario else {
                panic!("not a fan-out: {:?}", child.scenario);
            };
            assert_eq!((args.rate, args.duration, args.padding), (250.5, 1.5, 9));
            assert_eq!(args.all_publishers, Some(5));
            publishers.push((args.first_publisher, args.publishers, args.subscribers));
            let common = &child.common;
            assert_eq!(common.urls, ["ws://a/ws", "ws://b/ws"]);
            assert_eq!(common.protocol, conn::Protocol::Naive);
            assert_eq!((common.source_ips, common.connect_concurrency), (3, 5));
            assert_eq!(common.prefix, "run", "one channel for every subscriber");
            assert!(common.json && common.child);
            assert!(common.pids.is_empty() && common.start_at.is_none());
            assert_eq!(common.processes, 1);
        }
        assert_eq!(publishers, [(0, 2, 14), (2, 2, 14), (4, 1, 13)]);
    }

    #[test]
    fn chat_children_have_their_own_rooms_and_idle_children_the_same_channels() {
        let chat = children("tidings-bench chat -c 5 -m 4 --processes 2 --prefix x");
        let rooms: Vec<_> = chat
            .iter()
            .map(|child| match &child.scenario {
                Scenario::Chat(args) => (child.common.prefix.clone(), args.rooms, args.members),
                other => panic!("not chat: {other:?}"),
            })
            .collect();
        assert_eq!(rooms, [("x-0".into(), 3, 4), ("x-1".into(), 2, 4)]);
        for child in &chat {
            let Scenario::Chat(args) = &child.scenario else {
                unreachable!()
            };
            assert_eq!((args.transport, args.all_rooms), (Transport::Ws, Some(5)));
        }
        let stream = children("tidings-bench chat -c 5 --transport stream --processes 2");
        for child in &stream {
            let Scenario::Chat(args) = &child.scenario else {
                unreachable!()
            };
            assert_eq!(
                (args.transport, args.all_rooms),
                (Transport::Stream, Some(5))
            );
        }

        let idle = children("tidings-bench idle -n 7 --channels 3 --hold 0 --processes 2");
        let parts: Vec<_> = idle
            .iter()
            .map(|child| match &child.scenario {
                Scenario::Idle(args) => (
                    child.common.prefix.clone(),
                    args.first_connection,
                    args.connections,
                    args.channels,
                ),
                other => panic!("not idle: {other:?}"),
            })
            .collect();
        assert_eq!(
            parts,
            [("bench".into(), 0, 4, 3), ("bench".into(), 4, 3, 3)]
        );
    }

    #[test]
    fn too_many_processes_for_the_connections_is_an_error() {
        let parent = cli("tidings-bench fanout -s 1 --processes 2");
        let Scenario::Fanout(args) = &parent.scenario else {
            unreachable!()
        };
        assert!(fanout_shares(&parent.common, args).is_err());
    }
}
