use serde_json::json;
use tokio::sync::mpsc;

use crate::faults::readiness;
use crate::metrics::{await_metric, scrape};
use crate::support::proxy::PubsubEater;
use crate::support::redis::RedisServer;
use crate::support::{TestServer, WAIT, resilient_subscriber, within};

const SUBSCRIBERS: usize = 3;
const EACH: u64 = 20;

async fn node(redis_url: &str) -> TestServer {
    let args = [
        "--redis-url",
        redis_url,
        "--history-size",
        "1000",
        "--redis-canary-interval",
        "200ms",
    ];
    TestServer::launch(&args, &[("TIDINGS_LOG", Some("info"))])
        .await
        .expect("node starts")
}

/// Node A reaches Redis through a proxy that, once wedged, eats every pub/sub message while
/// commands and PINGs still pass: only the canary can tell. A's subscribers must still get
/// every publication made on node B, once each, in order.
#[tokio::test]
async fn a_node_whose_pubsub_stops_delivering_turns_not_ready_recovers_and_loses_nothing() {
    let redis = RedisServer::start().await;
    let proxy = PubsubEater::start(redis.port).await;
    let a = node(&proxy.url()).await;
    let b = node(&redis.url()).await;
    readiness(&a, 200).await;
    // Each node hears the other's heartbeats.
    await_metric(b.addr, "tidings_broker_canary_peers", 1.0).await;
    await_metric(a.addr, "tidings_broker_canary_peers", 1.0).await;

    let last = 3 * EACH;
    let (ready_tx, mut ready_rx) = mpsc::channel(SUBSCRIBERS);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            tokio::spawn(resilient_subscriber(
                vec![a.url("/ws")],
                "canary".into(),
                last,
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..SUBSCRIBERS {
        within(WAIT, "subscribers ready", ready_rx.recv()).await;
    }
    let mut publisher = b.client("").await;
    for n in 1..=EACH {
        assert_eq!(publisher.publish("canary", json!(n)).await, n);
    }

    proxy.wedge();
    for n in EACH + 1..=2 * EACH {
        assert_eq!(publisher.publish("canary", json!(n)).await, n);
    }
    let body = readiness(&a, 503).await;
    assert!(
        body.contains("canary") && body.contains("not delivering"),
        "{body}"
    );
    assert_eq!(scrape(a.addr).await.get("tidings_broker_up"), Some(&0.0));
    // B's pub/sub is fine: it stays ready.
    assert_eq!(b.get("/readyz").await.0, 200);

    proxy.unwedge();
    readiness(&a, 200).await;
    assert_eq!(scrape(a.addr).await.get("tidings_broker_up"), Some(&1.0));
    for n in 2 * EACH + 1..=last {
        assert_eq!(publisher.publish("canary", json!(n)).await, n);
    }
    for subscriber in subscribers {
        let tally = within(WAIT * 3, "subscriber", subscriber).await.unwrap();
        assert_eq!(tally.lost_and_duplicated(last), (0, 0), "{tally:?}");
        assert!(
            tally.offsets.windows(2).all(|w| w[0] < w[1]),
            "out of order: {tally:?}"
        );
        assert_eq!(tally.unrecovered, 0, "{tally:?}");
    }

    // Logged once when it failed (however many reconnects it took), once when it healed.
    let logs = a.logs().text();
    assert_eq!(logs.matches("broker canary failed").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("broker canary healthy again").count(),
        1,
        "{logs}"
    );
    let samples = scrape(a.addr).await;
    assert!(samples["tidings_broker_canary_round_trip_seconds"] > 0.0);
    assert!(samples["tidings_broker_round_trip_seconds"] > 0.0);
}
