//! Redis trouble: what nodes, publishers and subscribers see while Redis is down and after it
//! returns, with and without its data.

use std::time::Duration;

use serde_json::json;
use tidings::protocol::Outcome;
use tokio::sync::mpsc;

use crate::support::redis::RedisServer;
use crate::support::{Ended, TestServer, WAIT, WsClient, resilient_subscriber, within};

async fn node(redis: &RedisServer) -> TestServer {
    TestServer::start(&["--redis-url", &redis.url(), "--history-size", "1000"]).await
}

/// Waits until `/readyz` answers `status` (200 or 503); returns its body.
pub(crate) async fn readiness(server: &TestServer, status: u16) -> String {
    within(WAIT * 2, "readiness", async {
        loop {
            let (got, _, body) = server.get("/readyz").await;
            if got == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Publishes, retrying refusals (Redis may still be coming back); returns the offset.
async fn publish_retrying(client: &mut WsClient, channel: &str, n: u64) -> u64 {
    within(WAIT * 2, "publish accepted", async {
        loop {
            match client
                .request(json!({"op": "publish", "channel": channel, "data": n}))
                .await
            {
                Outcome::Ok(body) => return body["offset"].as_u64().unwrap(),
                Outcome::Error(err) => {
                    assert_eq!(err.code, 503, "only 'unavailable' is expected: {err:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn while_redis_is_down_publishes_are_refused_and_after_it_returns_nothing_acknowledged_is_lost()
 {
    const BEFORE: u64 = 50;
    const AFTER: u64 = 50;
    let mut redis = RedisServer::start_persistent().await;
    let nodes = [node(&redis).await, node(&redis).await];
    assert_eq!(readiness(&nodes[0], 200).await, r#"{"status":"ready"}"#);
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/ws")).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel(8);
    let subscribers: Vec<_> = (0..4)
        .map(|i| {
            let mut urls = urls.clone();
            urls.rotate_left(i % 2);
            tokio::spawn(resilient_subscriber(
                urls,
                "outage".into(),
                BEFORE + AFTER,
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..4 {
        within(WAIT, "subscribers ready", ready_rx.recv()).await;
    }
    let mut publisher = nodes[1].client("").await;
    for n in 1..=BEFORE {
        assert_eq!(publisher.publish("outage", json!(n)).await, n);
    }

    redis.kill().await;
    for node in &nodes {
        let body = readiness(node, 503).await;
        assert!(body.contains("not ready"), "{body}");
    }
    match publisher
        .request(json!({"op": "publish", "channel": "outage", "data": "lost?"}))
        .await
    {
        Outcome::Error(err) => assert_eq!(err.code, 503, "{err:?}"),
        Outcome::Ok(body) => panic!("a publish was acknowledged while Redis was down: {body}"),
    }
    // Connections stay open while the broker is away.
    assert_eq!(publisher.ok(json!({"op": "ping"})).await, json!({}));

    redis.restart().await;
    for node in &nodes {
        readiness(node, 200).await;
    }
    for n in BEFORE + 1..=BEFORE + AFTER {
        assert_eq!(publish_retrying(&mut publisher, "outage", n).await, n);
    }
    for subscriber in subscribers {
        let tally = within(WAIT * 4, "subscriber", subscriber).await.unwrap();
        let (lost, duplicated) = tally.lost_and_duplicated(BEFORE + AFTER);
        println!("Redis outage with data kept: lost = {lost}, duplicated = {duplicated}");
        assert_eq!((lost, duplicated, tally.unrecovered), (0, 0, 0));
    }
    // Every node counted its pub/sub reconnect.
    for node in &nodes {
        let (_, _, metrics) = node.get("/metrics").await;
        let reconnects: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("tidings_broker_reconnects_total "))
            .expect("the reconnect counter is exposed")
            .parse()
            .unwrap();
        assert!(reconnects >= 1.0, "{metrics}");
    }
}

#[tokio::test]
async fn when_redis_returns_without_its_data_clients_are_told_they_cannot_recover() {
    let mut redis = RedisServer::start().await;
    let server = node(&redis).await;
    let mut reader = server.client("").await;
    let sub = reader.subscribe("fragile").await;
    let mut publisher = server.client("").await;
    for n in 1..=5 {
        publisher.publish("fragile", json!(n)).await;
    }
    let mut last = 0;
    while last < 5 {
        last = reader.next_pub().await.offset;
    }

    redis.kill().await;
    readiness(&server, 503).await;
    redis.restart().await;
    // The node reconnects and finds the channel in a new epoch: its subscribers are closed to
    // recover, and recovery says plainly that the history is gone.
    match reader.ended(WAIT * 2).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4002),
        other => panic!("expected close 4002, got {other:?}"),
    }
    let mut back = server.client("").await;
    let again = within(WAIT * 2, "resubscribe", async {
        loop {
            match back
                .request(json!({"op": "subscribe", "channel": "fragile",
                                "since": {"offset": last, "epoch": sub["epoch"]}}))
                .await
            {
                Outcome::Ok(body) => return body,
                Outcome::Error(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(again["recovered"], false);
    assert!(
        again["reason"]
            .as_str()
            .unwrap()
            .contains("history was lost"),
        "{again}"
    );
    assert_ne!(again["epoch"], sub["epoch"]);
    assert_eq!(
        publish_retrying(&mut publisher, "fragile", 6).await,
        1,
        "a new epoch starts at 1"
    );
    assert_eq!(back.next_pub().await.offset, 1);
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed (scripts/check installs it)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_node_that_missed_a_publication_closes_its_subscribers_to_recover_it() {
    let redis = RedisServer::start().await;
    let server = node(&redis).await;
    let mut reader = server.client("").await;
    let sub = reader.subscribe("gap").await;
    let mut publisher = server.client("?name=pub").await;
    assert_eq!(publisher.publish("gap", json!("one")).await, 1);
    assert_eq!(reader.next_pub().await.offset, 1);

    // Offset 2 reaches Redis's history but never this node's pub/sub connection, as if the
    // message had been lost on the way.
    assert_eq!(
        redis_cli(&redis, &["HINCRBY", "tidings:{gap}:meta", "o", "1"]),
        "2"
    );
    let missed = r#"2:{"data":"two","info":{"client":"x","user":"ghost"}}"#;
    redis_cli(&redis, &["LPUSH", "tidings:{gap}:history", missed]);
    assert_eq!(publisher.publish("gap", json!("three")).await, 3);

    // Offset 3 arrives after 1: the node does not skip the gap, it closes to recover.
    match reader.ended(WAIT).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4002),
        other => panic!("expected close 4002, got {other:?}"),
    }
    let mut back = server.client("").await;
    let sub = back
        .ok(json!({"op": "subscribe", "channel": "gap",
                   "since": {"offset": 1, "epoch": sub["epoch"]}}))
        .await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["publications"][0]["offset"], 2);
    assert_eq!(sub["publications"][0]["data"], "two");
    assert_eq!(sub["publications"][1]["offset"], 3);

    // Redis memory stays bounded: both keys of the channel carry an expiry.
    for key in ["tidings:{gap}:meta", "tidings:{gap}:history"] {
        let ttl: i64 = redis_cli(&redis, &["TTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}
