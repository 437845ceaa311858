//! The benchmark tool works end to end: against a real Tidings server and the naive peer it
//! opens connections (WebSockets, and HTTP streams for chat), publishes, receives, and reports
//! consistent counts as JSON, from one process or merged from several (`--processes`).
//! (Numbers are measured in docs/benchmarks.md, never asserted here.)

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server binary that prints `listening on ADDR` and returns it with that address.
fn start(binary: &PathBuf, args: &[&str]) -> Server {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server(child, addr)
}

/// `target/<profile>/tidings`, built by the same `cargo test --workspace` run.
fn tidings_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let binary = dir.join("tidings");
    assert!(
        binary.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace)",
        binary.display()
    );
    binary
}

fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run tidings-bench");
    assert!(
        output.status.success(),
        "tidings-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

#[test]
fn fanout_against_tidings_counts_every_delivery_and_reads_the_server_process() {
    let server = start(
        &tidings_binary(),
        &["--listen", "127.0.0.1:0", "--log", "warn"],
    );
    let pid = server.0.id().to_string();
    let url = format!("ws://{}/ws", server.1);
    let reports = bench(&[
        "fanout", "--url", &url, "--pid", &pid, "-s", "20", "-p", "2", "-r", "200", "-d", "1",
    ]);
    let report = &reports[0];
    assert_eq!(report["sent"], 200);
    assert_eq!(report["expected"], 4000);
    assert_eq!(report["delivered"], 4000);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert!(report["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(report["servers"][0]["rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn chat_and_idle_against_tidings_and_fanout_against_the_naive_peer() {
    let server = start(
        &tidings_binary(),
        &["--listen", "127.0.0.1:0", "--log", "warn"],
    );
    let pid = server.0.id().to_string();
    let url = format!("ws://{}/ws", server.1);
    let chat = &bench(&[
        "chat", "--url", &url, "-c", "5", "-m", "4", "-r", "5", "-d", "1",
    ])[0];
    assert_eq!(chat["connections"], 20);
    assert_eq!(chat["sent"], 100);
    assert_eq!(
        chat["delivered"], 400,
        "each message reaches its room's four members"
    );
    assert_eq!(chat["lost"], 0);

    let streams = &bench(&[
        "chat",
        "--url",
        &url,
        "-c",
        "5",
        "-m",
        "4",
        "-r",
        "5",
        "-d",
        "1",
        "--transport",
        "stream",
    ])[0];
    assert_eq!(streams["scenario"], "chat over /stream");
    assert_eq!(streams["connections"], 20);
    assert_eq!(streams["sent"], 100);
    assert_eq!(
        streams["delivered"], 400,
        "each message reaches its room's four streams"
    );
    assert_eq!(
        (&streams["lost"], &streams["errors"]),
        (&0.into(), &0.into())
    );

    let idle = &bench(&[
        "idle", "--url", &url, "--pid", &pid, "-n", "200", "--hold", "0",
    ])[0];
    assert_eq!(idle["connections"], 200);
    assert!(idle["rss_kib_per_connection"].as_f64().unwrap() > 0.0);

    let naive = start(
        &PathBuf::from(env!("CARGO_BIN_EXE_naive-broadcast")),
        &["127.0.0.1:0"],
    );
    let naive_url = format!("ws://{}/", naive.1);
    let fanout = &bench(&[
        "fanout",
        "--protocol",
        "naive",
        "--url",
        &naive_url,
        "-s",
        "10",
        "-p",
        "1",
        "-r",
        "100",
        "-d",
        "1",
    ])[0];
    assert_eq!(fanout["sent"], 100);
    assert_eq!(fanout["delivered"], 1000);
}

#[test]
fn several_processes_merge_into_one_report_with_consistent_counts() {
    let server = start(
        &tidings_binary(),
        &["--listen", "127.0.0.1:0", "--log", "warn"],
    );
    let pid = server.0.id().to_string();
    let url = format!("ws://{}/ws", server.1);

    // First, while the server has not yet freed memory that new connections could reuse.
    let idle = &bench(&[
        "idle",
        "--processes",
        "2",
        "--url",
        &url,
        "--pid",
        &pid,
        "-n",
        "200",
        "--channels",
        "10",
        "--hold",
        "0",
    ])[0];
    assert_eq!(idle["processes"], 2);
    assert_eq!(
        idle["connections"], 200,
        "the processes' connections add up"
    );
    assert!(idle["rss_kib_per_connection"].as_f64().unwrap() > 0.0);
    assert_eq!(idle["servers"].as_array().unwrap().len(), 1, "sampled once");

    // 2 processes × 20 subscribers on one channel and one publisher each: every subscriber
    // expects the publications of both processes, whose publisher ids must not collide.
    let fanout = &bench(&[
        "fanout",
        "--processes",
        "2",
        "--url",
        &url,
        "--pid",
        &pid,
        "-s",
        "40",
        "-p",
        "2",
        "-r",
        "300",
        "-d",
        "1",
    ])[0];
    assert_eq!(fanout["processes"], 2);
    assert_eq!(fanout["connections"], 42);
    assert_eq!(fanout["sent"], 300);
    assert_eq!(fanout["expected"], 40 * 300);
    assert_eq!(fanout["delivered"], 40 * 300);
    assert_eq!(fanout["lost"], 0);
    assert_eq!(fanout["duplicated"], 0);
    assert_eq!(fanout["out_of_order"], 0);
    assert_eq!(fanout["errors"], 0);
    assert!(fanout["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(fanout["connect_ms"]["max_ms"].as_f64().unwrap() > 0.0);
    assert!(fanout["servers"][0]["rss_kib"].as_u64().unwrap() > 0);
    assert!(
        fanout.get("histograms").is_none(),
        "raw histograms stay between the processes"
    );

    // Rooms of different processes must be different channels: a shared "room 0" would
    // deliver each of its messages to eight members, not four.
    let chat = &bench(&[
        "chat",
        "--processes",
        "2",
        "--url",
        &url,
        "-c",
        "5",
        "-m",
        "4",
        "-r",
        "5",
        "-d",
        "1",
    ])[0];
    assert_eq!(chat["connections"], 20);
    assert_eq!(chat["sent"], 100);
    assert_eq!(chat["expected"], 400);
    assert_eq!(chat["delivered"], 400);
    assert_eq!(chat["lost"], 0);
    assert_eq!(chat["duplicated"], 0);
}

#[test]
fn hostile_churn_and_backend_answers_run_against_tidings_and_report_the_node() {
    let rpc = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let rpc_addr = rpc.local_addr().expect("address").to_string();
    drop(rpc);
    let proxy = format!("http://{rpc_addr}/rpc");
    let server = start(
        &tidings_binary(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--proxy-rpc",
            &proxy,
        ],
    );
    let pid = server.0.id().to_string();
    let url = format!("ws://{}/ws", server.1);
    let churn = bench(&[
        "--url", &url, "--pid", &pid, "hostile", "churn", "-c", "2", "-d", "1",
    ]);
    assert!(churn["actions"].as_u64().unwrap() > 1_000, "{churn}");
    assert!(churn["rss_after_kib"].as_u64().unwrap() > 0, "{churn}");
    let answers = bench(&[
        "--url",
        &url,
        "--pid",
        &pid,
        "hostile",
        "backend-answers",
        "--calls",
        "1",
        "--listen",
        &rpc_addr,
    ]);
    assert_eq!(
        answers["errors"],
        serde_json::json!({"502": 2}),
        "{answers}"
    );
}

#[test]
fn pusher_fanout_by_triggers_and_client_events_and_chat_count_what_pusher_delivers() {
    let app = "bench:bench-key:bench-secret";
    let server = start(
        &tidings_binary(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--pusher-app",
            app,
        ],
    );
    // A URL without a path gets /app/KEY.
    let url = format!("ws://{}", server.1);
    let common = ["--url", &url, "--pusher-app", app];
    // Arguments as one line: `run("fanout -s 20")`.
    let run = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        bench(&[&args[..], &common].concat())
    };

    let triggered = &run("fanout --protocol pusher -s 20 -p 2 -r 100 -d 1")[0];
    assert_eq!(triggered["protocol"], "pusher");
    assert_eq!(triggered["sent"], 100, "every trigger accepted");
    assert_eq!(triggered["delivered"], 2000);
    assert_eq!(
        (&triggered["lost"], &triggered["errors"]),
        (&0.into(), &0.into())
    );

    // Client events: publishers subscribe to the private channel and hear each other, never
    // themselves: each event reaches 20 + 4 - 1 connections.
    let events = &run("fanout --protocol pusher-client -s 20 -p 4 -r 40 -d 1")[0];
    assert_eq!(events["sent"], 40);
    assert_eq!(events["expected"], 40 * 23);
    assert_eq!(events["delivered"], 40 * 23);
    assert_eq!(
        (&events["duplicated"], &events["errors"]),
        (&0.into(), &0.into())
    );

    // Pusher allows 10 client events a second per connection: asking for more is refused
    // before anything is sent.
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args("fanout --protocol pusher-client -s 2 -p 1 -r 50".split_whitespace())
        .args(common)
        .output()
        .expect("run tidings-bench");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 5"));

    let chat = &run("chat --protocol pusher-client -c 3 -m 4 -r 5 -d 1")[0];
    assert_eq!(chat["sent"], 60);
    assert_eq!(
        chat["delivered"],
        60 * 3,
        "each event reaches the room's three others"
    );
    assert_eq!((&chat["lost"], &chat["errors"]), (&0.into(), &0.into()));

    let merged = &run("fanout --protocol pusher -s 20 -p 2 -r 100 -d 1 --processes 2")[0];
    assert_eq!(merged["delivered"], 2000);
    assert_eq!(merged["lost"], 0);
}

/// A throwaway redis-server on a free port below the ephemeral range; killed on drop.
fn redis() -> (Server, String) {
    let port = (0..900)
        .map(|n| 29_000 + (std::process::id() as u16 % 900 + n) % 900)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (
        Server(child, String::new()),
        format!("redis://127.0.0.1:{port}"),
    )
}

#[test]
fn storm_kills_the_first_node_and_every_client_recovers_on_the_second() {
    let (_redis, redis_url) = redis();
    let node = || {
        let args = ["--listen", "127.0.0.1:0", "--log", "warn", "--redis-url"];
        start(
            &tidings_binary(),
            &[&args[..], &[redis_url.as_str()]].concat(),
        )
    };
    let (mut first, second) = (node(), node());
    let (url1, url2) = (
        format!("ws://{}/ws", first.1),
        format!("ws://{}/ws", second.1),
    );
    let (pid1, pid2) = (first.0.id().to_string(), second.0.id().to_string());
    let report = bench(&[
        "storm",
        "-n",
        "200",
        "--channels",
        "10",
        "--rate",
        "100",
        "--before",
        "0.5",
        "--after",
        "1",
        "--min-delay-ms",
        "50",
        "--kill",
        &pid1,
        "--url",
        &url1,
        "--url",
        &url2,
        "--pid",
        &pid1,
        "--pid",
        &pid2,
    ]);
    assert!(
        first.0.try_wait().expect("wait").is_some(),
        "the first node was killed"
    );
    assert_eq!(report["publications"], 150);
    // 15 publications per channel, 20 clients per channel.
    assert_eq!(report["expected"], 150 * 20);
    assert_eq!(report["delivered"], 150 * 20, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert_eq!(
        report["unrecovered"], 0,
        "history on Redis outlives the node"
    );
    assert_eq!(report["back"], 200, "every client came back");
    assert!(report["all_back_ms"].as_f64().is_some(), "{report}");
    assert_eq!(report["before_kill"].as_array().map(Vec::len), Some(2));
    let storm = report["storm"].as_array().expect("storm samples");
    assert_eq!(
        storm.len(),
        1,
        "only the survivor is sampled through the storm"
    );
    assert_eq!(storm[0]["pid"].to_string(), pid2);
}

#[test]
fn idle_http_streams_subscribe_each_and_report_memory_per_stream() {
    let server = start(
        &tidings_binary(),
        &["--listen", "127.0.0.1:0", "--log", "warn"],
    );
    let pid = server.0.id().to_string();
    let url = format!("ws://{}/ws", server.1);
    for (transport, path) in [("sse", "/sse"), ("stream", "/stream")] {
        let report = &bench(&[
            "idle",
            "--transport",
            transport,
            "-n",
            "30",
            "--channels",
            "3",
            "--hold",
            "0",
            "--url",
            &url,
            "--pid",
            &pid,
        ])[0];
        assert_eq!(report["scenario"], format!("idle over {path}"));
        assert_eq!(report["connections"], 30);
        assert_eq!(report["errors"], 0);
        assert!(
            report["rss_kib_per_connection"].as_f64().is_some(),
            "{report}"
        );
    }
    // Each stream was opened and read until its `subscribed` push, or the run would fail.
    // Over streams the scenario runs as one process.
    let output = Command::new(env!("CARGO_BIN_EXE_tidings-bench"))
        .args([
            "idle",
            "--transport",
            "sse",
            "-n",
            "2",
            "--processes",
            "2",
            "--url",
            &url,
        ])
        .output()
        .expect("run tidings-bench");
    assert!(!output.status.success(), "one process only over streams");
}
