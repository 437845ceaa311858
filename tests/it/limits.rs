//! Limits that keep one client from hurting the others, against the real binary.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tidings::protocol::{Outcome, Push, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Ended, TestServer, WAIT, WsClient, within};

#[tokio::test]
async fn a_flooding_client_is_limited_then_closed_while_fifty_others_lose_nothing() {
    let server = TestServer::start(&["--publish-rate", "200", "--publish-burst", "200"]).await;
    let mut subscribers = Vec::new();
    for _ in 0..50 {
        let mut client = server.client("").await;
        client.subscribe("room").await;
        subscribers.push(client);
    }
    let mut flooder = server.client("").await;
    flooder.auto_pong = false;
    let frame = json!({"op": "publish", "channel": "room", "data": "spam"}).to_string();
    // Fire without reading: a client that ignores every refusal.
    let flood = async {
        for _ in 0..20_000 {
            if flooder.ws.feed(Message::text(frame.clone())).await.is_err() {
                break;
            }
        }
        let _ = flooder.ws.flush().await;
    };
    within(WAIT, "flood sent", flood).await;

    let mut refused = 0;
    let ended = within(WAIT, "flooder closed", async {
        loop {
            match flooder.try_recv(WAIT).await {
                Ok(ServerFrame::Push(Push::Error(err))) => {
                    assert_eq!(err.code, 112, "{err:?}");
                    refused += 1;
                }
                Ok(_) => {}
                Err(ended) => return ended,
            }
        }
    })
    .await;
    assert!(refused > 0, "the flooder was told before being closed");
    assert!(
        matches!(ended, Ended::Closed(Some((4004, _)))),
        "flooder ended with {ended:?}"
    );

    // A well-behaved publisher on the same node is unaffected; its last offset bounds what
    // every subscriber must have received.
    let mut publisher = server.client("").await;
    let mut last = 0;
    for i in 0..20 {
        last = publisher.publish("room", json!({"i": i})).await;
    }
    assert!(last > 20, "some of the flood went through before the limit");
    for (n, subscriber) in subscribers.iter_mut().enumerate() {
        for expected in 1..=last {
            let publication = subscriber.next_pub().await;
            assert_eq!(
                publication.offset, expected,
                "subscriber {n} skipped an offset"
            );
        }
    }
}

#[tokio::test]
async fn commands_over_the_rate_get_error_112_and_a_slower_client_is_not_closed() {
    // One token a second and a burst of five: eight commands sent at once find five tokens,
    // however long their round trips take.
    let server = TestServer::start(&["--command-rate", "1", "--command-burst", "5"]).await;
    let mut client = server.client("").await;
    for id in 1..=8 {
        client.send_json(&json!({"id": id, "op": "ping"})).await;
    }
    let mut codes = Vec::new();
    for id in 1..=8 {
        codes.push(match client.reply_to(id).await {
            Outcome::Ok(_) => 0,
            Outcome::Error(err) => err.code,
        });
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 112, 112, 112]);
    client.next_id = 9;
    // The bucket refills at one token a second: a client that waits gets through, and is not
    // closed for the refusals. (Time passing is the behaviour under test, not a
    // synchronisation.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.ok(json!({"op": "ping"})).await;
}

async fn connect_from(server: &TestServer, ip: &str, query: &str) -> WsClient {
    let request = server
        .url(&format!("/ws{query}"))
        .into_client_request()
        .unwrap();
    let from: IpAddr = ip.parse().unwrap();
    WsClient::connect_request(request, Some(from))
        .await
        .expect("handshake")
}

async fn refused_with(client: &mut WsClient, code: u16) -> String {
    match client.ended(WAIT).await {
        Ended::Closed(Some((got, reason))) if got == code => reason,
        other => panic!("expected close {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_caps_hold_per_address_and_in_total() {
    let server =
        TestServer::start(&["--max-connections", "4", "--max-connections-per-ip", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = connect_from(&server, "127.0.0.1", "").await;
        client.ok(json!({"op": "ping"})).await;
        held.push(client);
    }
    let mut third = connect_from(&server, "127.0.0.1", "").await;
    let reason = refused_with(&mut third, 1008).await;
    assert!(reason.contains("address"), "{reason}");
    for _ in 0..2 {
        let mut client = connect_from(&server, "127.0.0.2", "").await;
        client.ok(json!({"op": "ping"})).await;
        held.push(client);
    }
    let mut fifth = connect_from(&server, "127.0.0.3", "").await;
    refused_with(&mut fifth, 1013).await;

    // A closed connection gives its place back (the server notices the close asynchronously).
    let mut gone = held.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    assert!(matches!(gone.ended(WAIT).await, Ended::Closed(_)));
    within(WAIT, "a place freed", async {
        loop {
            let mut retry = connect_from(&server, "127.0.0.3", "").await;
            if let Outcome::Ok(_) = retry.request_or_end(json!({"op": "ping"})).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn one_user_may_hold_only_so_many_connections() {
    let secret = "test-secret-of-at-least-32-bytes!!";
    let server = TestServer::start(&[
        "--token-hmac-secret",
        secret,
        "--max-connections-per-user",
        "2",
    ])
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u1"}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let query = format!("?token={token}");
    let mut first = server.client(&query).await;
    first.connected().await;
    let mut second = server.client(&query).await;
    second.connected().await;
    let mut third = server.client(&query).await;
    let reason = refused_with(&mut third, 1008).await;
    assert!(reason.contains("user"), "{reason}");
}

#[tokio::test]
async fn a_connection_that_sends_no_request_headers_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start(&["--handshake-timeout", "300ms"]).await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut slow] {
        // The server closes without a word (no 408).
        let mut response = Vec::new();
        let read = within(
            WAIT,
            "server drops a silent connection",
            stream.read_to_end(&mut response),
        )
        .await;
        let waited = started.elapsed();
        // A reset instead of a FIN would say the same: nothing was answered.
        let _ = read;
        assert!(
            response.is_empty(),
            "answered {:?}",
            String::from_utf8_lossy(&response)
        );
        // Not before the timeout; and not much after it, though the exact moment is the
        // server's timer plus scheduling (a few ms here, more on a loaded 2-core machine):
        // a connection the timeout missed would be held until WAIT.
        assert!(
            (Duration::from_millis(300)..Duration::from_millis(1500)).contains(&waited),
            "dropped after {waited:?}"
        );
    }
    // A prompt client is unaffected.
    server.client("").await.ok(json!({"op": "ping"})).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_subscribed_one_is_not() {
    let server = TestServer::start(&["--idle-timeout", "1s"]).await;
    let mut subscribed = server.client("").await;
    subscribed.subscribe("news").await;
    let mut idle = server.client("").await;
    idle.ok(json!({"op": "ping"})).await;
    let reason = refused_with(&mut idle, 4500).await;
    assert!(reason.contains("idle"), "{reason}");
    subscribed.ok(json!({"op": "ping"})).await;
    // Unsubscribing from the last channel starts the idle clock.
    subscribed
        .ok(json!({"op": "unsubscribe", "channel": "news"}))
        .await;
    refused_with(&mut subscribed, 4500).await;
}
