//! permessage-deflate on `/ws`: a client offering it (Python's `websockets`) gets the same
//! publications as one that does not; what it receives is really compressed (read off the wire
//! by a raw client), a namespace can opt out, and a decompression bomb closes with 1009.

use std::process::Stdio;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::{TestServer, WAIT, within};

/// A WebSocket client written by hand: it sees each frame's RSV1 bit and can send any frame.
struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawWs {
    /// Connects to `path`, offering `extensions` if given; returns the client and the
    /// extensions the server agreed to.
    async fn connect(
        server: &TestServer,
        path: &str,
        extensions: Option<&str>,
    ) -> (Self, Option<String>) {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let offer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let head = within(WAIT, "handshake response", async {
            loop {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed during the handshake");
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
                    buffer.drain(..end + 4);
                    return head;
                }
            }
        })
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let agreed = head.lines().find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("sec-websocket-extensions: ")
                .map(str::to_owned)
        });
        (Self { stream, buffer }, agreed)
    }

    /// Sends one masked frame, final.
    async fn send(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        self.send_frame(true, opcode, rsv1, payload).await;
    }

    /// Sends one masked frame.
    async fn send_frame(&mut self, fin: bool, opcode: u8, rsv1: bool, payload: &[u8]) {
        let fin = if fin { 0x80 } else { 0 };
        let mut frame = vec![fin | if rsv1 { 0x40 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame: (opcode, rsv1, payload).
    async fn recv(&mut self) -> (u8, bool, Vec<u8>) {
        within(WAIT, "a frame", async {
            loop {
                if self.buffer.len() >= 2 {
                    let (b0, b1) = (self.buffer[0], self.buffer[1]);
                    let (mut len, mut at) = ((b1 & 0x7f) as usize, 2);
                    if len == 126 && self.buffer.len() >= 4 {
                        len = u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize;
                        at = 4;
                    } else if len == 127 && self.buffer.len() >= 10 {
                        len = u64::from_be_bytes(self.buffer[2..10].try_into().unwrap()) as usize;
                        at = 10;
                    }
                    let complete = (b1 & 0x7f) < 126 || at > 2;
                    if complete && self.buffer.len() >= at + len {
                        let payload = self.buffer[at..at + len].to_vec();
                        self.buffer.drain(..at + len);
                        return (b0 & 0x0f, b0 & 0x40 != 0, payload);
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection ended");
                self.buffer.extend_from_slice(&chunk[..n]);
            }
        })
        .await
    }

    /// The next text message as JSON, inflated if it came compressed; and whether it did.
    async fn recv_json(&mut self) -> (Value, bool) {
        loop {
            let (opcode, rsv1, payload) = self.recv().await;
            if opcode != 1 {
                continue;
            }
            let text = if rsv1 { inflate(&payload) } else { payload };
            return (serde_json::from_slice(&text).unwrap(), rsv1);
        }
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    compress
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A close frame's payload: the code, then the reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason.as_bytes()].concat()
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decompress = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    decompress
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A chat message as apps send them: a few fields, a sentence or two.
fn chat_message(n: usize) -> Value {
    json!({
        "type": "message",
        "id": format!("msg-{n:06}"),
        "author": {"id": "u-1842", "name": "Ann Example", "avatar": "https://cdn.example.com/a/1842.png"},
        "text": format!("Message {n}: the deploy finished, the dashboards look good and the error rate is back to normal."),
        "sent_at": "2026-12-01T10:15:00Z",
        "reactions": [],
    })
}

#[tokio::test]
async fn a_client_offering_deflate_gets_the_same_publications_compressed() {
    let server = TestServer::start(&["--compression"]).await;
    let python = std::env::var("TIDINGS_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/deflate_client.py"
    );
    let mut child = Command::new(&python)
        .args([
            script,
            &server.url("/ws?name=py").replace("http", "ws"),
            "news",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("{python} runs (scripts/check makes the venv): {err}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = async || -> Value {
        let line = within(WAIT, "a line from the Python client", lines.next_line())
            .await
            .unwrap()
            .expect("the Python client ended");
        serde_json::from_str(&line).unwrap()
    };
    let agreed = line().await;
    assert!(
        agreed["extensions"]
            .as_str()
            .unwrap()
            .contains("permessage-deflate"),
        "{agreed}"
    );
    assert_eq!(line().await["id"], 1, "subscribed");
    let mut plain = server.client("?name=plain").await;
    plain.subscribe("news").await;
    let (mut raw, raw_agreed) = RawWs::connect(
        &server,
        "/ws?name=raw",
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert!(raw_agreed.unwrap().contains("server_no_context_takeover"));
    raw.recv_json().await;
    raw.send(1, false, br#"{"id":1,"op":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(raw.recv_json().await.0["id"], 1);

    let mut publisher = server.client("?name=pub").await;
    let sent: Vec<Value> = (0..20)
        .map(|n| {
            if n % 5 == 4 {
                json!(n)
            } else {
                chat_message(n)
            }
        })
        .collect();
    for data in &sent {
        publisher.publish("news", data.clone()).await;
    }
    for (n, data) in sent.iter().enumerate() {
        let from_python = line().await;
        let from_plain = plain.next_pub().await;
        let (from_raw, compressed) = raw.recv_json().await;
        assert_eq!(&from_python["pub"]["data"], data);
        assert_eq!(&from_plain.data, data);
        assert_eq!(&from_raw["pub"]["data"], data);
        assert_eq!(from_raw["pub"]["offset"], n + 1);
        // Small ones go plain (--compression-min-size), chat messages compressed.
        assert_eq!(compressed, data.is_object(), "publication {n}");
    }
    let metrics = server.get("/metrics").await.2;
    assert!(
        metrics.contains("\ntidings_compressions_total 16\n"),
        "one compression per compressible publication, for three subscribers"
    );
}

#[tokio::test]
async fn a_namespace_can_opt_out_of_compression() {
    let server =
        TestServer::start(&["--compression", "--namespace", "raw:compression=false"]).await;
    let (mut client, _) = RawWs::connect(&server, "/ws?name=raw", Some("permessage-deflate")).await;
    client.recv_json().await;
    for (id, channel) in [(1, "raw:feed"), (2, "news")] {
        let subscribe = json!({"id": id, "op": "subscribe", "channel": channel}).to_string();
        client.send(1, false, subscribe.as_bytes()).await;
        assert_eq!(client.recv_json().await.0["id"], id);
    }
    let mut publisher = server.client("?name=pub").await;
    publisher.publish("raw:feed", chat_message(1)).await;
    publisher.publish("news", chat_message(2)).await;
    let (first, compressed) = client.recv_json().await;
    assert_eq!(
        (first["pub"]["channel"].as_str(), compressed),
        (Some("raw:feed"), false)
    );
    let (second, compressed) = client.recv_json().await;
    assert_eq!(
        (second["pub"]["channel"].as_str(), compressed),
        (Some("news"), true)
    );
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009_and_nothing_else_suffers() {
    // No ping can come before the close frames read below.
    let server = TestServer::start(&[
        "--compression",
        "--max-message-size",
        "64KiB",
        "--ping-interval",
        "1h",
    ])
    .await;
    let mut bystander = server.client("?name=bystander").await;
    bystander.subscribe("news").await;
    let before = server.peak_rss_kib();
    let (mut attacker, agreed) =
        RawWs::connect(&server, "/ws?name=bomb", Some("permessage-deflate")).await;
    assert!(agreed.is_some());
    attacker.recv_json().await;
    // 1 MiB of one repeated command inflates from about a kilobyte.
    let mut bomb = br#"{"op":"publish","channel":"news","data":""#.to_vec();
    bomb.resize(1 << 20, b'a');
    let compressed = deflate(&bomb);
    assert!(compressed.len() < 4096, "{} bytes", compressed.len());
    attacker.send(1, true, &compressed).await;
    assert_eq!(
        attacker.recv().await,
        (8, false, close_payload(1009, "message too big")),
        "the answer is a close frame, uncompressed"
    );
    // A bomb at the edge of what fits in one 64 KiB frame: about 48 MiB once inflated, which
    // the server never holds (it stops inflating just past the limit).
    let (mut attacker, _) =
        RawWs::connect(&server, "/ws?name=bigger", Some("permessage-deflate")).await;
    attacker.recv_json().await;
    let compressed = deflate(&vec![b'a'; 48 << 20]);
    assert!(compressed.len() < 64 * 1024, "{} bytes", compressed.len());
    attacker.send(1, true, &compressed).await;
    assert_eq!(
        attacker.recv().await,
        (8, false, close_payload(1009, "message too big"))
    );
    // The peak, not the current size: inflated and freed would pass the latter. It cannot be
    // exact (allocator and page granularity): two connections with their buffers and inflaters,
    // and at most 64 KiB inflated each, measure 260–350 KiB here; 1 MiB leaves room for that
    // noise and is still a fiftieth of the bomb.
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 1024,
        "the server's peak grew by {grown} KiB for a 48 MiB bomb"
    );
    // Everyone else carries on.
    let mut publisher = server.client("?name=pub").await;
    publisher.publish("news", json!("still fine")).await;
    assert_eq!(bystander.next_pub().await.data, json!("still fine"));
}

#[tokio::test]
async fn a_compressed_message_ending_in_an_empty_fragment_is_answered_at_once() {
    let server = TestServer::start(&["--compression"]).await;
    let (mut client, _) =
        RawWs::connect(&server, "/ws?name=frag", Some("permessage-deflate")).await;
    client.recv_json().await;
    // As Python's websockets ends a fragmented message: the data, then an empty last frame.
    let command = deflate(br#"{"id":9,"op":"ping"}"#);
    client.send_frame(false, 1, true, &command).await;
    client.send_frame(true, 0, false, &[]).await;
    assert_eq!(client.recv_json().await.0, json!({"id": 9, "ok": {}}));
    // RSV2 on a compressed frame is a protocol error, as without compression.
    client.send_frame(true, 1, true, &command).await;
    let mut frame = vec![
        0x80 | 0x40 | 0x20 | 1,
        0x80 | command.len() as u8,
        0,
        0,
        0,
        0,
    ];
    frame.extend_from_slice(&command);
    client.stream.write_all(&frame).await.unwrap();
    let close = loop {
        let (opcode, _, payload) = client.recv().await;
        if opcode == 8 {
            break payload;
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
}
