use std::time::Duration;

use serde_json::json;
use tidings::protocol::{Push, ServerFrame};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::redis::RedisServer;
use crate::support::{
    Ended, TestServer, WAIT, WsClient, resilient_subscriber, server_closed, within,
};

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
    // Every close is due strictly inside the 2 s window after the drain starts; the margin is
    // for the signal to be handled and the close frame to arrive (a few ms here, more on a
    // loaded 2-core machine), which no clock in the test can separate from the drain itself.
    assert!(
        *last < Duration::from_millis(2000 + 1000),
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

/// 200 subscribers on node A of two; A is sent SIGTERM while B keeps publishing. A answers
/// "not ready" while it drains, closes its clients with 1001 spread over the window and exits
/// 0; the clients move to B and recover everything, once each.
#[tokio::test]
async fn draining_a_node_moves_its_200_clients_to_the_other_node_without_loss() {
    const CLIENTS: usize = 200;
    const LAST: u64 = 100;
    let redis = RedisServer::start().await;
    let args = ["--redis-url", &redis.url(), "--history-size", "1000"];
    let mut a = TestServer::start(&[&args[..], &["--drain-window", "2s"]].concat()).await;
    let b = TestServer::start(&args).await;
    let urls = vec![a.url("/ws"), b.url("/ws")];
    let (ready_tx, mut ready_rx) = mpsc::channel(CLIENTS);
    let subscribers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let subscriber =
                resilient_subscriber(urls.clone(), "drain".into(), LAST, ready_tx.clone());
            tokio::spawn(subscriber)
        })
        .collect();
    for _ in 0..CLIENTS {
        within(WAIT, "subscribers ready", ready_rx.recv()).await;
    }
    let mut publisher = b.client("").await;
    for n in 1..=LAST / 2 {
        assert_eq!(publisher.publish("drain", json!(n)).await, n);
    }

    let signalled = std::time::Instant::now();
    a.signal("TERM");
    let body = within(WAIT, "not ready while draining", async {
        loop {
            let (status, _, body) = a.get("/readyz").await;
            if status == 503 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(body.contains("shutting down"), "{body}");
    // B keeps publishing through A's drain, and past it: every client is moved before the
    // last publication.
    for n in LAST / 2 + 1..=LAST {
        assert_eq!(publisher.publish("drain", json!(n)).await, n);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let status = a.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2 + 10),
        "past the deadline"
    );

    let mut closes = Vec::new();
    for subscriber in subscribers {
        let tally = within(WAIT * 2, "subscriber", subscriber).await.unwrap();
        assert_eq!(tally.lost_and_duplicated(LAST), (0, 0), "{tally:?}");
        assert_eq!(tally.unrecovered, 0, "{tally:?}");
        assert_eq!(tally.ends.len(), 1, "moved once: {tally:?}");
        let (code, at) = tally.ends[0];
        assert_eq!(code, Some(1001), "{tally:?}");
        closes.push(at.duration_since(signalled));
    }
    closes.sort();
    let (first, last) = (closes[0], closes[CLIENTS - 1]);
    assert!(
        last - first >= Duration::from_millis(1200),
        "closes not spread over the 2 s window: first {first:?}, last {last:?}"
    );
    // Spread evenly: about as many in each half of the window.
    let early = closes
        .iter()
        .filter(|c| **c < Duration::from_secs(1))
        .count();
    assert!(
        (50..=150).contains(&early),
        "{early} of {CLIENTS} closed in the first second"
    );
}
