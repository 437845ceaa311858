//! The only helpers folder: a real server process, a real WebSocket client, bounded waits.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings::protocol::{Connected, Outcome, Publication, Push, Reply, ServerFrame};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod broker;
pub mod browser;
pub mod proxy;
pub mod redis;
pub mod redis_ha;
pub mod streams;
pub mod webhook;

/// The bound every single await in these tests gets unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// A running `tidings` process on an ephemeral port; killed when dropped.
pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    logs: Logs,
}

/// What a server has written to stderr so far (also echoed to the test's own output).
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    pub fn text(&self) -> String {
        self.0.lock().expect("logs lock").clone()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for(&self, needle: &str, limit: Duration) {
        within(limit, &format!("log line with {needle:?}"), async {
            while !self.text().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl TestServer {
    /// Starts `tidings --listen 127.0.0.1:0 ARGS…` and waits for its `listening on` line.
    pub async fn start(args: &[&str]) -> Self {
        Self::try_start(args).await.expect("server starts")
    }

    pub async fn try_start(args: &[&str]) -> Result<Self> {
        let level = std::env::var("TEST_TIDINGS_LOG").unwrap_or("warn".into());
        Self::launch(args, &[("TIDINGS_LOG", Some(&level))]).await
    }

    /// Starts the server with environment changes: `(NAME, Some(value))` sets a variable,
    /// `(NAME, None)` removes it.
    pub async fn launch(args: &[&str], env: &[(&str, Option<&str>)]) -> Result<Self> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        // The test runner's own settings (TIDINGS_PYTHON, …) must not leak into the server
        // under test, which would warn about every TIDINGS_* it does not know.
        command.env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TIDINGS_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning tidings")?;
        let logs = Logs::default();
        let stderr = child.stderr.take().context("stderr")?;
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let mut text = sink.0.lock().expect("logs lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = within(WAIT, "listening line", async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok::<_, anyhow::Error>(addr.parse()?);
                }
            }
            bail!("tidings exited before listening")
        })
        .await?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, addr, logs })
    }

    /// Everything the server has logged so far.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Runs `tidings ARGS…` expecting it to refuse to start; returns what it printed to
    /// stderr (and fails if it started listening or exited successfully).
    pub async fn refused(args: &[&str]) -> String {
        let output = within(
            WAIT,
            "tidings to refuse its settings",
            Command::new(env!("CARGO_BIN_EXE_tidings"))
                .args(["--listen", "127.0.0.1:0"])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("running tidings");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "tidings started with {args:?}");
        assert!(
            !stdout.contains("listening on"),
            "it listened first: {stdout}"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Resident memory of the server process, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The server's peak resident set (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// One `… kB` line of the server's /proc status.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} line"))
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the system's `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// SIGKILL, and wait until the process is gone (its port is free again).
    pub async fn kill(&mut self) {
        within(WAIT, "kill", self.child.kill()).await.expect("kill");
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        within(limit, "server exit", self.child.wait())
            .await
            .expect("wait for child")
    }

    /// A client connected to `/ws` with the given query string (e.g. `?name=alice`).
    pub async fn client(&self, query: &str) -> WsClient {
        WsClient::connect(&self.url(&format!("/ws{query}")))
            .await
            .expect("client connects")
    }

    /// A plain HTTP GET; returns (status, headers, body).
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        http_get(self.addr, path).await.expect("HTTP GET")
    }
}

/// Serves `app` (a backend, a webhook receiver) on a loopback port for the rest of the test.
pub async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, String)> {
    within(WAIT, "HTTP GET", async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no header end in {response:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("no status"))?
            .parse()?;
        Ok((status, head.to_owned(), body.to_owned()))
    })
    .await
}

/// Sends one HTTP/1.1 request with a body and optional `Authorization`; returns the status
/// and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth: Vec<(&str, &str)> = authorization
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    let (status, _, body) = http_exchange(addr, method, path, &auth, body).await;
    (status, body)
}

/// One HTTP/1.1 request with `headers` (and a JSON `body`): the status, the head (lowercased)
/// and the body.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    within(WAIT, "HTTP request", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, head.to_ascii_lowercase(), body.to_owned())
    })
    .await
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol v1 client: numbered requests, pushes kept in arrival order, pings answered.
pub struct WsClient {
    pub ws: Socket,
    pub next_id: u64,
    pushes: VecDeque<Push>,
    /// Answer `{"ping":{}}` with `{"op":"pong"}` automatically.
    pub auto_pong: bool,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(Option<(u16, String)>),
    /// EOF or reset without a close frame.
    Dropped,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self> {
        let (ws, _) = within(
            WAIT,
            "WebSocket connect",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .with_context(|| format!("connecting to {url}"))?;
        Ok(Self::from_socket(ws))
    }

    /// Connects with a prepared handshake request (extra headers such as `Origin` or
    /// `Authorization`), optionally from another loopback address; the HTTP error on refusal.
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        from: Option<std::net::IpAddr>,
    ) -> Result<Self> {
        let authority = request
            .uri()
            .authority()
            .context("URL without host")?
            .as_str();
        let addr: SocketAddr = authority.parse().context("tests use IP:PORT URLs")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = within(WAIT, "TCP connect", socket.connect(addr)).await?;
        let (ws, _) = within(
            WAIT,
            "WebSocket handshake",
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)),
        )
        .await?;
        Ok(Self::from_socket(ws))
    }

    pub fn from_socket(ws: Socket) -> Self {
        Self {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
            auto_pong: true,
        }
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        within(WAIT, "send", self.ws.send(Message::text(text)))
            .await
            .expect("send text");
    }

    /// The next server frame (pings answered and skipped when `auto_pong`).
    pub async fn recv(&mut self) -> ServerFrame {
        self.try_recv(WAIT)
            .await
            .unwrap_or_else(|ended| panic!("connection ended while waiting: {ended:?}"))
    }

    /// The next server frame within `limit`, or how the connection ended.
    pub async fn try_recv(&mut self, limit: Duration) -> Result<ServerFrame, Ended> {
        loop {
            let message = within(limit, "server frame", self.ws.next()).await;
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map(|CloseFrame { code, reason }| {
                        (code.into(), reason.to_string())
                    })));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            };
            let frame = ServerFrame::parse(&text)
                .unwrap_or_else(|err| panic!("unparseable server frame {text}: {err}"));
            if self.auto_pong && frame == ServerFrame::Push(Push::Ping {}) {
                self.send_json(&json!({"op": "pong"})).await;
                continue;
            }
            return Ok(frame);
        }
    }

    /// Sends `command` with a fresh id and returns its reply; pushes that arrive first are kept.
    pub async fn request(&mut self, mut command: Value) -> Outcome {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send_json(&command).await;
        self.reply_to(id).await
    }

    /// Like [`Self::request`], but a connection that ends instead of replying is an error
    /// outcome (code 0) rather than a failure.
    pub async fn request_or_end(&mut self, mut command: Value) -> Outcome {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        if self
            .ws
            .send(Message::text(command.to_string()))
            .await
            .is_err()
        {
            return ended_outcome();
        }
        loop {
            match self.try_recv(WAIT).await {
                Ok(ServerFrame::Reply(Reply { id: got, outcome })) if got == id => return outcome,
                Ok(_) => continue,
                Err(_) => return ended_outcome(),
            }
        }
    }

    /// Waits for the reply to `id`, keeping pushes that arrive before it.
    pub async fn reply_to(&mut self, id: u64) -> Outcome {
        loop {
            match self.recv().await {
                ServerFrame::Reply(Reply { id: got, outcome }) if got == id => return outcome,
                ServerFrame::Reply(Reply { id: got, .. }) => {
                    panic!("reply to {got} while waiting for {id}")
                }
                ServerFrame::Push(push) => self.pushes.push_back(push),
            }
        }
    }

    pub async fn ok(&mut self, command: Value) -> Value {
        match self.request(command.clone()).await {
            Outcome::Ok(body) => body,
            Outcome::Error(err) => panic!("{command} failed: {err:?}"),
        }
    }

    /// The error code a command gets.
    pub async fn error_code(&mut self, command: Value) -> u16 {
        match self.request(command.clone()).await {
            Outcome::Error(err) => err.code,
            Outcome::Ok(body) => panic!("{command} succeeded with {body}"),
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok(json!({"op": "subscribe", "channel": channel}))
            .await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> u64 {
        let body = self
            .ok(json!({"op": "publish", "channel": channel, "data": data}))
            .await;
        body["offset"].as_u64().expect("offset")
    }

    /// The next push of any kind.
    pub async fn next_push(&mut self) -> Push {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        match self.recv().await {
            ServerFrame::Push(push) => push,
            reply => panic!("unexpected reply {reply:?}"),
        }
    }

    /// The next push, with a `presence_batch` taken apart into the joins and leaves it lists
    /// (its joins first): for tests about who came and went rather than how it was told.
    pub async fn next_change(&mut self) -> Push {
        match self.next_push().await {
            Push::PresenceBatch(batch) => {
                let channel = batch.channel;
                let joins = batch.joined.into_iter().map(|info| {
                    Push::Join(tidings::protocol::PresenceChange {
                        channel: channel.clone(),
                        info,
                    })
                });
                let leaves = batch.left.into_iter().map(|info| {
                    Push::Leave(tidings::protocol::PresenceChange {
                        channel: channel.clone(),
                        info,
                    })
                });
                let mut changes: VecDeque<Push> = joins.chain(leaves).collect();
                let first = changes.pop_front();
                changes.extend(self.pushes.drain(..));
                self.pushes = changes;
                match first {
                    Some(first) => first,
                    None => Box::pin(self.next_change()).await,
                }
            }
            push => push,
        }
    }

    /// The next publication, skipping `connected` and presence pushes (anything else is a
    /// failure).
    pub async fn next_pub(&mut self) -> Publication<Value> {
        loop {
            match self.next_push().await {
                Push::Pub(publication) => return publication,
                Push::Connected(_) | Push::Join(_) | Push::Leave(_) | Push::PresenceBatch(_) => {
                    continue;
                }
                other => panic!("expected a publication, got {other:?}"),
            }
        }
    }

    /// The `connected` push (the first frame once the identity is set).
    pub async fn connected(&mut self) -> Connected {
        match self.next_push().await {
            Push::Connected(connected) => connected,
            other => panic!("expected connected, got {other:?}"),
        }
    }

    /// Reads until the connection ends; returns how, failing if it does not end within `limit`.
    pub async fn ended(&mut self, limit: Duration) -> Ended {
        within(limit, "connection end", async {
            loop {
                match self.try_recv(limit).await {
                    Ok(_) => continue,
                    Err(ended) => return ended,
                }
            }
        })
        .await
    }
}

fn ended_outcome() -> Outcome {
    Outcome::Error(tidings::protocol::ErrorBody {
        code: 0,
        message: "connection ended".into(),
    })
}

/// TCP state of the socket `local → remote` in the kernel's table (01 = ESTABLISHED), or
/// `None` once it is gone. Lets a test see the server close a connection whose client is not
/// reading (and so cannot see a FIN or close frame yet).
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("tests use IPv4"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(fields[3], 16).ok())
            .flatten()
    })
}

/// Waits until the server's side of the connection from `client` is no longer established.
pub async fn server_closed(server: SocketAddr, client: SocketAddr, limit: Duration) {
    within(limit, "server closes the connection", async {
        while tcp_state(server, client) == Some(0x01) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// What a subscriber that reconnects and recovers by itself saw of one channel.
#[derive(Debug, Default)]
pub struct Tally {
    /// Offsets in the order they were handed over (recovered ones included).
    pub offsets: Vec<u64>,
    /// The data of each, in the same order.
    pub data: Vec<Value>,
    /// How often the server said `recovered: false`.
    pub unrecovered: usize,
    /// How many connections it took.
    pub connections: usize,
    /// How each connection but the last ended (close code, if any), and when.
    pub ends: Vec<(Option<u16>, std::time::Instant)>,
}

impl Tally {
    /// (lost, duplicated) against offsets 1..=last.
    pub fn lost_and_duplicated(&self, last: u64) -> (usize, usize) {
        let unique: std::collections::HashSet<u64> = self.offsets.iter().copied().collect();
        let lost = (1..=last).filter(|o| !unique.contains(o)).count();
        (lost, self.offsets.len() - unique.len())
    }
}

/// Subscribes to `channel` through `urls` (tried in turn), and after every lost connection
/// reconnects to the next one and resubscribes with `since`, like the JS client; stops once it
/// has offset `last`.
pub async fn resilient_subscriber(
    urls: Vec<String>,
    channel: String,
    last: u64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Tally {
    let mut tally = Tally::default();
    let mut position: Option<Value> = None;
    let mut attempt = 0usize;
    let mut announced = false;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let Ok(mut client) = WsClient::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.connections += 1;
        let mut subscribe = json!({"op": "subscribe", "channel": channel});
        if let Some(since) = &position {
            subscribe["since"] = since.clone();
        }
        let id = client.next_id;
        client.next_id += 1;
        subscribe["id"] = json!(id);
        client.send_json(&subscribe).await;
        let reply = loop {
            match client.try_recv(WAIT).await {
                Ok(ServerFrame::Reply(Reply { id: got, outcome })) if got == id => {
                    break Some(outcome);
                }
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        let body = match reply {
            Some(Outcome::Ok(body)) => body,
            // Refused (e.g. the broker is down) or dropped: try again elsewhere.
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if body["recovered"] == json!(false) {
            tally.unrecovered += 1;
        }
        for publication in body["publications"].as_array().into_iter().flatten() {
            tally
                .offsets
                .push(publication["offset"].as_u64().unwrap_or(0));
            tally.data.push(publication["data"].clone());
        }
        let mut current = json!({"offset": body["offset"], "epoch": body["epoch"]});
        if let Some(&latest) = tally.offsets.last() {
            current["offset"] = json!(latest.max(body["offset"].as_u64().unwrap_or(0)));
        }
        position = Some(current);
        if !announced {
            announced = true;
            let _ = ready.send(()).await;
        }
        if tally.offsets.last() == Some(&last) {
            return tally;
        }
        loop {
            match client.try_recv(WAIT).await {
                Ok(ServerFrame::Push(Push::Pub(publication))) => {
                    tally.offsets.push(publication.offset);
                    tally.data.push(publication.data.clone());
                    position =
                        Some(json!({"offset": publication.offset, "epoch": publication.epoch}));
                    if publication.offset == last {
                        return tally;
                    }
                }
                Ok(_) => continue,
                Err(ended) => {
                    let code = match ended {
                        Ended::Closed(close) => close.map(|(code, _)| code),
                        _ => None,
                    };
                    tally.ends.push((code, std::time::Instant::now()));
                    break;
                }
            }
        }
    }
}
