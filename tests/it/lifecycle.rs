use std::time::Duration;

use serde_json::json;
use tidings::protocol::{Push, ServerFrame};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::{Ended, TestServer, WAIT, WsClient, server_closed, within};

/// A client with a tiny receive buffer, so that not reading fills the server's side quickly;
/// returns it with its local address (to watch the server close it).
async fn small_window_client(server: &TestServer) -> (WsClient, std::net::SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url("/ws"), MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    (WsClient::from_socket(ws), local)
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_while_fifty_others_receive_everything() {
    const READERS: usize = 50;
    const ROOM_MESSAGES: u64 = 100;
    const FLOOD_PER_ROOM_MESSAGE: usize = 4;
    let server = TestServer::start(&["--max-queue-size", "256KiB"]).await;

    // The stalled client: a tiny receive buffer, subscribed to the room and to a flood channel,
    // then never read again.
    let (mut stalled, local) = small_window_client(&server).await;
    stalled.subscribe("room").await;
    stalled.subscribe("flood").await;

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut reader = server.client("").await;
        reader.subscribe("room").await;
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            while offsets.len() < ROOM_MESSAGES as usize {
                offsets.push(reader.next_pub().await.offset);
            }
            offsets
        }));
    }
    let rss_before = server.rss_kib();

    // 400 × 60 KB to the stalled client: far beyond its queue and the kernel's buffers.
    let mut publisher = server.client("").await;
    let chunk = "x".repeat(60_000);
    for n in 0..ROOM_MESSAGES {
        publisher.publish("room", json!(n)).await;
        for _ in 0..FLOOD_PER_ROOM_MESSAGE {
            publisher.publish("flood", json!(chunk)).await;
        }
    }
    for reader in readers {
        let offsets = within(WAIT * 3, "reader", reader).await.unwrap();
        assert_eq!(offsets, (1..=ROOM_MESSAGES).collect::<Vec<_>>());
    }
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    server_closed(server.addr, local, WAIT).await;
    // Reading now drains what the kernel buffered, then the connection ends.
    let mut flood_seen = 0;
    let ended = within(WAIT * 3, "stalled client end", async {
        loop {
            match stalled.try_recv(WAIT).await {
                Ok(ServerFrame::Push(Push::Pub(p))) if p.channel.as_str() == "flood" => {
                    flood_seen += 1
                }
                Ok(_) => {}
                Err(ended) => return ended,
            }
        }
    })
    .await;
    match ended {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4000),
        Ended::Dropped => {}
        other => panic!("stalled client ended with {other:?}"),
    }
    assert!(
        flood_seen < (ROOM_MESSAGES as usize) * FLOOD_PER_ROOM_MESSAGE,
        "the stalled client was cut off, not fed everything ({flood_seen})"
    );
}

async fn shutdown_closes_every_client_with_1001(signal: &str) {
    let mut server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut client = server.client(&format!("?name=c{n}")).await;
        client.subscribe("room").await;
        clients.push(client);
    }
    server.signal(signal);
    for client in &mut clients {
        match client.ended(WAIT).await {
            Ended::Closed(Some((code, _))) => assert_eq!(code, 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    shutdown_closes_every_client_with_1001("TERM").await;
}

#[tokio::test]
async fn sigint_closes_every_client_with_1001_and_exits_0() {
    shutdown_closes_every_client_with_1001("INT").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_even_when_its_queue_never_fills() {
    // A queue far larger than what is sent: only the write timeout (the pong timeout) can
    // notice that the socket stopped draining.
    let server = TestServer::start(&[
        "--max-queue-size",
        "256MiB",
        "--ping-interval",
        "500ms",
        "--pong-timeout",
        "1s",
    ])
    .await;
    let (mut stalled, local) = small_window_client(&server).await;
    stalled.subscribe("flood").await;

    let mut publisher = server.client("").await;
    let chunk = "y".repeat(60_000);
    for _ in 0..150 {
        publisher.publish("flood", json!(chunk)).await;
    }
    // Nothing more is published; without reading, watch the server give up on the socket.
    server_closed(server.addr, local, WAIT).await;
    match stalled.ended(WAIT * 2).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4000),
        Ended::Dropped => {}
        other => panic!("stalled client ended with {other:?}"),
    }
}

#[tokio::test]
async fn sigterm_spreads_the_closes_over_the_drain_window() {
    let mut server = TestServer::start(&["--drain-window", "2s"]).await;
    let mut clients = Vec::new();
    for n in 0..12 {
        let mut client = server.client(&format!("?name=d{n}")).await;
        client.subscribe("room").await;
        clients.push(client);
    }
    let signalled = std::time::Instant::now();
    server.signal("TERM");
    let closes = futures_util::future::join_all(clients.iter_mut().map(|client| async move {
        match client.ended(WAIT).await {
            Ended::Closed(Some((code, _))) => assert_eq!(code, 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
        signalled.elapsed()
    }))
    .await;
    let status = server.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status:?}");
    let first = closes.iter().min().unwrap();
    let last = closes.iter().max().unwrap();
    assert!(
        *last - *first >= Duration::from_millis(1000),
        "closes not spread over the 2 s window: {closes:?}"
    );
    assert!(
        *last < Duration::from_secs(4),
        "drain overran its window: {closes:?}"
    );
}

#[tokio::test]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let mut server =
        TestServer::launch(&["--drain-window", "60s"], &[("TIDINGS_LOG", Some("info"))])
            .await
            .unwrap();
    let mut client = server.client("?name=late").await;
    client.subscribe("room").await;
    server.signal("TERM");
    server.logs().wait_for("shutting down", WAIT).await;
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status:?}");
    // Its turn in the 60 s window had not come: the process ended under it.
    let ended = client.ended(WAIT).await;
    assert!(
        !matches!(ended, Ended::Closed(Some((1001, _)))),
        "closed in turn, not at once: {ended:?}"
    );
}
