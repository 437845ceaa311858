//! HTTP streams: `/sse` read by a Python client and by Chromium's own `EventSource`, resumed on
//! the other node; `/stream` read as plain HTTP and resumed with `since`; the two-way fallback
//! (commands as requests) behind a balancer that is never sticky.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::support::browser::Browser;
use crate::support::redis::RedisServer;
use crate::support::streams::{Balancer, StreamClient, WebSockets};
use crate::support::{TestServer, WAIT, WsClient, http_request, within};

/// The Python SSE client of `tests/clients/sse_client.py`, reading one stream.
struct PythonSse {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The last event id seen.
    last_id: Option<String>,
}

impl PythonSse {
    async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sse_client.py");
        let mut command = Command::new("python3");
        command.arg(script).arg(url);
        if let Some(id) = last_event_id {
            command.arg(id);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = Self {
            _child: child,
            lines,
            last_id: None,
        };
        let status = client.line().await;
        assert_eq!(status["status"], 200, "{status}");
        client
    }

    async fn line(&mut self) -> Value {
        let line = within(
            WAIT,
            "a line from the Python SSE client",
            self.lines.next_line(),
        )
        .await
        .unwrap()
        .expect("the Python client ended");
        serde_json::from_str(&line).unwrap()
    }

    /// The next event (skipping keep-alive comments).
    async fn event(&mut self) -> (String, Value) {
        loop {
            let line = self.line().await;
            if let Some(event) = line["event"].as_str() {
                if let Some(id) = line["id"].as_str() {
                    self.last_id = Some(id.to_owned());
                }
                return (event.to_owned(), line["data"].clone());
            }
        }
    }

    /// The next event named `name`, skipping others.
    async fn next(&mut self, name: &str) -> Value {
        loop {
            let (event, data) = self.event().await;
            if event == name {
                return data;
            }
        }
    }
}

/// `(channel, data)` of `pub` events until `count` have come, failing on any other event
/// that says something went wrong.
async fn pubs(client: &mut PythonSse, count: usize) -> Vec<(String, u64, Value)> {
    let mut got = Vec::new();
    while got.len() < count {
        let (event, data) = client.event().await;
        match event.as_str() {
            "pub" => got.push((
                data["channel"].as_str().unwrap().to_owned(),
                data["offset"].as_u64().unwrap(),
                data["data"].clone(),
            )),
            "error" | "unrecovered" | "close" => panic!("unexpected {event}: {data}"),
            _ => {}
        }
    }
    got
}

fn offsets(got: &[(String, u64, Value)], channel: &str) -> Vec<u64> {
    got.iter()
        .filter(|(c, ..)| c == channel)
        .map(|(_, offset, _)| *offset)
        .collect()
}

#[tokio::test]
async fn a_python_sse_client_resumes_on_the_other_node_with_last_event_id() {
    let redis = RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let query = "/sse?name=py&channel=alpha&channel=beta";
    let mut sse = PythonSse::open(&a.url(query), None).await;
    let connected = sse.next("connected").await;
    assert_eq!(connected["user"], "py");
    let session = connected["session"].as_str().unwrap();
    let (_node, secret) = session.split_once('.').expect("NODE.SECRET");
    assert_eq!(secret.len(), 32, "128 random bits: {session}");
    for channel in ["alpha", "beta"] {
        assert_eq!(sse.next("subscribed").await["channel"], channel);
    }
    let mut publisher = a.client("?name=pub").await;
    for n in 1..=3 {
        publisher.publish("alpha", json!(n)).await;
        publisher.publish("beta", json!(n * 10)).await;
    }
    let live = pubs(&mut sse, 6).await;
    assert_eq!(offsets(&live, "alpha"), [1, 2, 3]);
    assert_eq!(offsets(&live, "beta"), [1, 2, 3]);
    let last_id = sse.last_id.clone().expect("pub events carry ids");
    drop(sse);

    // Publications continue on both channels while the client is away.
    for n in 4..=6 {
        publisher.publish("alpha", json!(n)).await;
        publisher.publish("beta", json!(n * 10)).await;
    }
    let mut sse = PythonSse::open(&b.url(query), Some(&last_id)).await;
    let missed = pubs(&mut sse, 6).await;
    assert_eq!(offsets(&missed, "alpha"), [4, 5, 6]);
    assert_eq!(offsets(&missed, "beta"), [4, 5, 6]);
    assert!(missed.contains(&("beta".into(), 6, json!(60))));
    // Live delivery goes on after the recovered ones, with nothing repeated before it.
    publisher.publish("alpha", json!(7)).await;
    assert_eq!(offsets(&pubs(&mut sse, 1).await, "alpha"), [7]);
    let last_id = sse.last_id.clone().unwrap();
    drop(sse);

    // With the history gone, the client is told for each channel rather than left short.
    redis.command("FLUSHALL").await;
    let mut sse = PythonSse::open(&a.url(query), Some(&last_id)).await;
    let mut unrecovered = Vec::new();
    while unrecovered.len() < 2 {
        let (event, data) = sse.event().await;
        assert_ne!(
            event, "pub",
            "nothing is replayed from a lost history: {data}"
        );
        if event == "unrecovered" {
            assert!(data["reason"].as_str().unwrap().contains("epoch"), "{data}");
            unrecovered.push(data["channel"].as_str().unwrap().to_owned());
        }
    }
    unrecovered.sort();
    assert_eq!(unrecovered, ["alpha", "beta"]);
}

#[tokio::test]
async fn a_stream_is_read_as_plain_http_and_resumed_with_since() {
    let server = TestServer::start(&[]).await;
    let base = format!("http://{}", server.addr);
    let mut stream = StreamClient::open(&base, "name=curl&channel=news")
        .await
        .unwrap();
    assert_eq!(
        stream.next_with("connected").await["connected"]["user"],
        "curl"
    );
    let subscribed = stream.next_with("subscribed").await;
    let epoch = subscribed["subscribed"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut publisher = server.client("?name=pub").await;
    for n in 1..=3 {
        publisher.publish("news", json!({"n": n})).await;
    }
    for n in 1..=3 {
        let line = stream.next_with("pub").await;
        assert_eq!(line["pub"]["offset"], n);
        assert_eq!(line["pub"]["data"], json!({"n": n}));
    }
    drop(stream);
    for n in 4..=5 {
        publisher.publish("news", json!({"n": n})).await;
    }
    let since = json!({"news": {"offset": 3, "epoch": epoch}}).to_string();
    let query = format!("name=curl&channel=news&since={}", urlencode(&since));
    let mut stream = StreamClient::open(&base, &query).await.unwrap();
    for n in 4..=5 {
        assert_eq!(stream.next_with("pub").await["pub"]["offset"], n);
    }
    let subscribed = stream.next_with("subscribed").await;
    assert_eq!(subscribed["subscribed"]["offset"], 5);

    // What it cannot serve it says with a status before any stream starts.
    let refused = StreamClient::open(&base, "name=x&since=nope").await;
    assert!(refused.unwrap_err().to_string().contains("400"));
    let (status, body) = http_request(server.addr, "GET", "/sse?token=forged", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) =
        http_request(server.addr, "GET", "/stream?channel=bad%20name", None, "").await;
    assert_eq!(status, 400, "{body}");
    let bad_session = json!({"session": "00", "commands": [{"op": "ping"}]}).to_string();
    let (status, _) = http_request(server.addr, "POST", "/stream", None, &bad_session).await;
    assert_eq!(status, 400);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_two_way_fallback_works_behind_a_balancer_that_is_never_sticky() {
    let redis = RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let balancer = Balancer::start(&[a.addr, b.addr], WebSockets::Refuse).await;
    let base = format!("http://{}", balancer.addr);
    let mut stream = StreamClient::open(&base, "name=fallback").await.unwrap();
    stream.next_with("connected").await;
    let subscribed = stream
        .ok(json!({"op": "subscribe", "channel": "chat:room"}))
        .await;
    assert_eq!(subscribed["offset"], 0);

    // A WebSocket client straight on node b, in the same room.
    let mut ws = WsClient::connect(&b.url("/ws?name=socket")).await.unwrap();
    ws.connected().await;
    ws.subscribe("chat:room").await;
    ws.publish("chat:room", json!("from the socket")).await;
    let line = stream.next_with("pub").await;
    assert_eq!(line["pub"]["data"], "from the socket");
    let published = stream
        .ok(json!({"op": "publish", "channel": "chat:room", "data": "from the stream"}))
        .await;
    assert_eq!(published["offset"], 2);
    loop {
        let publication = ws.next_pub().await;
        if publication.offset == 2 {
            assert_eq!(publication.data, json!("from the stream"));
            break;
        }
    }
    let history = stream
        .ok(json!({"op": "history", "channel": "chat:room"}))
        .await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 2);
    let presence = stream
        .ok(json!({"op": "presence", "channel": "chat:room"}))
        .await;
    let mut users: Vec<&str> = presence["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["fallback", "socket"]);
    // Command requests went to both nodes, whichever held the stream.
    let posts = balancer.served("POST /stream");
    assert!(posts.contains(&0) && posts.contains(&1), "{posts:?}");

    // Recovery: away for two publications, back through the balancer (another node).
    drop(stream);
    ws.publish("chat:room", json!("missed 1")).await;
    ws.publish("chat:room", json!("missed 2")).await;
    let mut stream = StreamClient::open(&base, "name=fallback").await.unwrap();
    stream.next_with("connected").await;
    let epoch = history["epoch"].clone();
    let recovered = stream
        .ok(json!({"op": "subscribe", "channel": "chat:room", "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(recovered["recovered"], true);
    let data: Vec<&Value> = recovered["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, [&json!("missed 1"), &json!("missed 2")]);
    let streams = balancer.served("GET /stream");
    assert_ne!(
        streams[0], streams[1],
        "the two streams were on different nodes"
    );
}

#[tokio::test]
async fn chromiums_event_source_resumes_on_the_other_node() {
    let redis = RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let balancer = Balancer::start(&[a.addr, b.addr], WebSockets::Refuse).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let tab = browser.open(&balancer.url("/")).await.unwrap();
    browser
        .eval(
            &tab,
            "window.got = []; window.unrecovered = []; window.opens = 0;
             const es = new EventSource('/sse?name=browser&channel=alpha&channel=beta');
             window.es = es;
             es.onopen = () => window.opens++;
             es.addEventListener('pub', (e) => {
                 const p = JSON.parse(e.data);
                 window.got.push(p.channel + ':' + p.offset);
             });
             es.addEventListener('unrecovered', (e) => window.unrecovered.push(JSON.parse(e.data).channel));
             es.addEventListener('subscribed', () => window.subscribed = (window.subscribed || 0) + 1);
             true",
        )
        .await
        .unwrap();
    browser
        .wait_for(&tab, "window.subscribed === 2")
        .await
        .unwrap();
    let mut publisher = a.client("?name=pub").await;
    for _ in 1..=2 {
        publisher.publish("alpha", json!("a")).await;
        publisher.publish("beta", json!("b")).await;
    }
    browser
        .wait_for(&tab, "window.got.length === 4")
        .await
        .unwrap();
    balancer.cut();
    // The browser noticed and is reconnecting (held by the balancer): what follows is missed.
    browser
        .wait_for(&tab, "window.es.readyState === 0")
        .await
        .unwrap();
    for _ in 3..=5 {
        publisher.publish("alpha", json!("a")).await;
        publisher.publish("beta", json!("b")).await;
    }
    balancer.resume();
    browser.wait_for(&tab, "window.opens === 2").await.unwrap();
    publisher.publish("alpha", json!("live")).await;
    browser
        .wait_for(&tab, "window.got.length === 11")
        .await
        .unwrap();
    let got = browser.eval(&tab, "window.got").await.unwrap();
    let got: Vec<String> = serde_json::from_value(got).unwrap();
    for channel in ["alpha", "beta"] {
        let offsets: Vec<u64> = got
            .iter()
            .filter_map(|g| g.strip_prefix(&format!("{channel}:")))
            .map(|o| o.parse().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=if channel == "alpha" { 6 } else { 5 }).collect();
        assert_eq!(
            offsets, expected,
            "{channel}: every publication once, in order"
        );
    }
    let sse = balancer.served("GET /sse");
    assert_eq!(sse.len(), 2);
    assert_ne!(
        sse[0],
        sse[1],
        "the browser came back on the other node: {:?}",
        balancer.log()
    );

    // History gone: the browser's reconnect is told, channel by channel.
    balancer.cut();
    redis.command("FLUSHALL").await;
    balancer.resume();
    browser
        .wait_for(&tab, "window.unrecovered.length === 2")
        .await
        .unwrap();
    let got = browser.eval(&tab, "window.got.length").await.unwrap();
    assert_eq!(got, 11, "nothing replayed from a lost history");
}

#[tokio::test]
async fn a_stream_that_cannot_keep_up_is_closed_and_recovers_on_reconnect() {
    let server = TestServer::start(&["--max-queue-size", "256KiB", "--history-size", "1000"]).await;
    let base = format!("http://{}", server.addr);
    let mut slow = StreamClient::open(&base, "name=slow&channel=firehose")
        .await
        .unwrap();
    let subscribed = slow.next_with("subscribed").await;
    let epoch = subscribed["subscribed"]["epoch"].clone();
    let mut watcher = server.client("?name=watcher").await;
    watcher.subscribe("firehose").await;
    // The slow client reads nothing while 12 MiB are published: more than the sockets buffer.
    let mut publisher = server.client("?name=pub").await;
    let chunk = "x".repeat(32 * 1024);
    let total = 400;
    for offset in 1..=total {
        publisher.publish("firehose", json!(chunk)).await;
        // The others are not held back: the watcher has everything as it comes.
        assert_eq!(watcher.next_pub().await.offset, offset);
    }
    // The slow stream got what was buffered, then its end (the close line if it fitted).
    let mut read = 0;
    let mut closed_with = None;
    while let Some(line) = slow.next().await {
        if let Some(offset) = line["pub"]["offset"].as_u64() {
            assert_eq!(offset, read + 1, "in order, no gap, until the close");
            read = offset;
        }
        if let Some(close) = line.get("close") {
            closed_with = close["code"].as_u64();
        }
    }
    assert!(read < total, "the stream was cut short ({read} of {total})");
    assert!(matches!(closed_with, None | Some(4000)), "{closed_with:?}");
    let metrics = server.get("/metrics").await.2;
    assert!(
        metrics.contains("tidings_slow_consumer_closes_total 1"),
        "counted as a slow consumer"
    );
    // Back from where it stopped: the rest, exactly once.
    let since = json!({"firehose": {"offset": read, "epoch": epoch}}).to_string();
    let query = format!("name=slow&channel=firehose&since={}", urlencode(&since));
    let mut back = StreamClient::open(&base, &query).await.unwrap();
    for offset in read + 1..=total {
        assert_eq!(back.next_with("pub").await["pub"]["offset"], offset);
    }
    assert_eq!(
        back.next_with("subscribed").await["subscribed"]["offset"],
        total
    );
}

/// The chat page behind a balancer that stops WebSockets (`websockets`) falls back to the HTTP
/// stream by itself, shows it, and chats with a page on a WebSocket.
async fn chat_falls_back(websockets: WebSockets) {
    let redis = RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let balancer = Balancer::start(&[a.addr, b.addr], websockets).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let behind = browser.open(&balancer.url("/")).await.unwrap();
    let direct = browser.open(&format!("http://{}/", b.addr)).await.unwrap();
    browser.join(&behind, "fallen", "mixed").await.unwrap();
    browser.join(&direct, "socket", "mixed").await.unwrap();
    let transport = "document.getElementById('transport').dataset.transport";
    assert_eq!(browser.eval(&behind, transport).await.unwrap(), "stream");
    assert_eq!(
        browser
            .eval(&behind, "document.getElementById('transport').textContent")
            .await
            .unwrap(),
        "HTTP stream",
        "the page shows the fallback"
    );
    assert_eq!(browser.eval(&direct, transport).await.unwrap(), "websocket");
    browser.say(&behind, "over plain HTTP").await.unwrap();
    browser
        .wait_for_message(&direct, "fallen", "over plain HTTP")
        .await
        .unwrap();
    browser.say(&direct, "over a WebSocket").await.unwrap();
    browser
        .wait_for_message(&behind, "socket", "over a WebSocket")
        .await
        .unwrap();
    // Its commands went to both nodes: nothing was sticky.
    let posts = balancer.served("POST /stream");
    assert!(posts.contains(&0) && posts.contains(&1), "{posts:?}");
}

#[tokio::test]
async fn the_chat_page_falls_back_when_websockets_are_refused() {
    chat_falls_back(WebSockets::Refuse).await;
}

#[tokio::test]
async fn the_chat_page_falls_back_when_websockets_open_but_stay_silent() {
    chat_falls_back(WebSockets::Silent).await;
}

#[tokio::test]
async fn an_event_source_that_cannot_pong_is_kept_alive_by_keep_alive_comments() {
    let server = TestServer::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]).await;
    let mut sse = PythonSse::open(&server.url("/sse?name=quiet&channel=news"), None).await;
    sse.next("subscribed").await;
    // Several heartbeats pass; a WebSocket that never answered would be closed with 4001.
    loop {
        let line = sse.line().await;
        assert!(
            line.get("end").is_none() && line["event"] != "close",
            "{line}"
        );
        if line["comments"].as_u64() >= Some(4) {
            break;
        }
    }
    let mut publisher = server.client("?name=pub").await;
    publisher.publish("news", json!("still here")).await;
    assert_eq!(sse.next("pub").await["data"], "still here");
}

#[tokio::test]
async fn the_server_api_reaches_stream_clients_as_it_reaches_websockets() {
    const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
    const AUTH: Option<&str> = Some("apikey key-for-stream-tests");
    let server = TestServer::start(&[
        "--api-key",
        "key-for-stream-tests",
        "--token-hmac-secret",
        SECRET,
    ])
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "42"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut sse = PythonSse::open(&server.url(&format!("/sse?token={token}")), None).await;
    let connected = sse.next("connected").await;
    assert_eq!(
        (
            connected["user"].clone(),
            connected["authenticated"].clone()
        ),
        (json!("42"), json!(true))
    );
    let api = |path: &'static str, body: Value| {
        let addr = server.addr;
        async move { http_request(addr, "POST", path, AUTH, &body.to_string()).await }
    };
    let (status, body) = api("/api/subscribe", json!({"user": "42", "channel": "alerts"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sse.next("subscribed").await["channel"], "alerts");
    let (status, _) = api("/api/publish", json!({"channel": "alerts", "data": "ring"})).await;
    assert_eq!(status, 200);
    assert_eq!(sse.next("pub").await["data"], "ring");
    let (status, _) = api("/api/disconnect", json!({"user": "42"})).await;
    assert_eq!(status, 200);
    assert_eq!(sse.next("close").await["code"], 4501);
    assert!(
        sse.line().await.get("end").is_some(),
        "the stream ends after its close"
    );
}
