//! `GET /sse` and `GET /stream` as the HTTP wire carries them, byte for byte: served on their
//! own socket when they open a connection, by hyper after other requests on it, and refused
//! with a status when their head is bad.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::metrics::await_metric;
use crate::support::{TestServer, WAIT, within};

/// A raw HTTP/1 connection, read a line at a time, and the body's bytes not yet taken.
struct Raw(BufReader<TcpStream>, Vec<u8>);

impl Raw {
    async fn open(server: &TestServer) -> Self {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        Self(BufReader::new(tcp), Vec::new())
    }

    async fn send(&mut self, text: &str) {
        self.0.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        within(WAIT, "a line", self.0.read_line(&mut line))
            .await
            .unwrap();
        line
    }

    /// The status and the lowercased head, up to its blank line.
    async fn head(&mut self) -> (u16, String) {
        let status = self.line().await;
        let status = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut head = String::new();
        loop {
            let line = self.line().await;
            if line == "\r\n" {
                return (status, head.to_ascii_lowercase());
            }
            head.push_str(&line);
        }
    }

    /// The next NDJSON line of a chunked body: sizes checked against what follows them, a
    /// line possibly split across chunks and a chunk possibly holding several.
    async fn chunked_json(&mut self) -> Value {
        loop {
            if let Some(end) = self.1.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.1.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let size = self.line().await;
            let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
            assert!(size > 0, "the stream ended");
            let mut chunk = vec![0; size + 2];
            within(WAIT, "a chunk", self.0.read_exact(&mut chunk))
                .await
                .unwrap();
            assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
            self.1.extend_from_slice(&chunk[..size]);
        }
    }

    /// Everything left, until the server closes.
    async fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        within(WAIT, "the end", self.0.read_to_end(&mut rest))
            .await
            .unwrap();
        rest
    }
}

fn get(path: &str, version: &str) -> String {
    format!("GET {path} HTTP/{version}\r\nHost: tidings.test\r\n\r\n")
}

#[tokio::test]
async fn a_stream_opening_its_connection_and_one_after_other_requests_carry_the_same_events() {
    let server = TestServer::start(&[]).await;
    let mut publisher = server.client("?name=pub").await;

    // Its connection's first request: served on the socket, chunked, closed when done.
    let mut own = Raw::open(&server).await;
    own.send(&get("/stream?name=own&channel=news", "1.1")).await;
    let (status, head) = own.head().await;
    assert_eq!(status, 200, "{head}");
    for header in ["transfer-encoding: chunked", "connection: close", "date: "] {
        assert!(head.contains(header), "{header} missing from {head}");
    }
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    assert_eq!(own.chunked_json().await["connected"]["user"], "own");
    assert_eq!(own.chunked_json().await["subscribed"]["channel"], "news");

    // After another request on a kept-alive connection: hyper serves it, the same way.
    let mut kept = Raw::open(&server).await;
    kept.send(&get("/healthz", "1.1")).await;
    let (status, head) = kept.head().await;
    assert_eq!(status, 200);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    kept.0.read_exact(&mut body).await.unwrap();
    kept.send(&get("/stream?name=kept&channel=news", "1.1"))
        .await;
    let (status, head) = kept.head().await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(kept.chunked_json().await["connected"]["user"], "kept");
    assert_eq!(kept.chunked_json().await["subscribed"]["channel"], "news");

    for n in 1..=3 {
        publisher.publish("news", json!({"n": n})).await;
    }
    for stream in [&mut own, &mut kept] {
        for n in 1..=3 {
            let line = stream.chunked_json().await;
            assert_eq!(line["pub"]["offset"], n, "{line}");
            assert_eq!(line["pub"]["data"]["n"], n);
        }
    }
}

#[tokio::test]
async fn an_http_1_0_event_stream_is_ended_by_the_connection_not_by_chunks() {
    let server = TestServer::start(&[]).await;
    let mut old = Raw::open(&server).await;
    old.send(&get("/sse?name=old&channel=news", "1.0")).await;
    let (status, head) = old.head().await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert_eq!(old.line().await, "retry: 1000\n");
    assert_eq!(old.line().await, "\n");
    assert_eq!(old.line().await, "event: connected\n");
}

#[tokio::test]
async fn a_bad_stream_head_is_answered_with_its_status_and_the_connection_closed() {
    let server = TestServer::start(&[]).await;
    let mut malformed = Raw::open(&server).await;
    malformed
        .send("GET /sse?channel=a HTTP/1.1\r\nno colon here\r\n\r\n")
        .await;
    assert_eq!(malformed.head().await.0, 400);
    assert!(malformed.rest().await.is_empty());

    let mut crowded = Raw::open(&server).await;
    let many: String = (0..150).map(|n| format!("x-{n}: y\r\n")).collect();
    crowded
        .send(&format!("GET /stream HTTP/1.1\r\n{many}\r\n"))
        .await;
    assert_eq!(crowded.head().await.0, 431);
    assert!(crowded.rest().await.is_empty());

    // Refusals of the route itself come with its JSON error, sized.
    let mut forged = Raw::open(&server).await;
    forged.send(&get("/sse?token=forged", "1.1")).await;
    let (status, head) = forged.head().await;
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("content-length: "), "{head}");
    let body: Value = serde_json::from_slice(&forged.rest().await).unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Once the server counts `want` open client connections.
async fn connections_become(server: &TestServer, want: f64) {
    await_metric(server.addr, "tidings_connections", want).await;
}

#[tokio::test]
async fn a_stream_ends_when_its_client_leaves_or_sends_instead_of_reading() {
    let server = TestServer::start(&[]).await;
    let mut leaving = Raw::open(&server).await;
    leaving.send(&get("/stream?name=leaving", "1.1")).await;
    assert_eq!(leaving.head().await.0, 200);
    connections_become(&server, 1.0).await;
    drop(leaving);
    connections_become(&server, 0.0).await;

    // A stream has nothing to read from its client: one that keeps sending is cut off, not
    // buffered.
    let mut talker = Raw::open(&server).await;
    talker.send(&get("/stream?name=talker", "1.1")).await;
    assert_eq!(talker.head().await.0, 200);
    connections_become(&server, 1.0).await;
    let junk = "x".repeat(64 * 1024);
    // The server may close before all of it is written; that is the point.
    let _ = talker.0.get_mut().write_all(junk.as_bytes()).await;
    connections_become(&server, 0.0).await;
    // Ended (closed with unread data in its buffer, the kernel may reset rather than end it).
    let mut rest = Vec::new();
    let _ = within(WAIT, "the close", talker.0.read_to_end(&mut rest)).await;
}
