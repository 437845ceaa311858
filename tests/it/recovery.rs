//! History and recovery from a position, with the memory broker and (where it says) Redis.

use serde_json::{Value, json};
use tidings::protocol::Push;

use crate::support::redis::RedisServer;
use crate::support::{Ended, TestServer, WAIT};

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .expect("publications array")
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn history_returns_the_latest_or_what_follows_a_position() {
    let server = TestServer::start(&["--history-size", "5"]).await;
    let mut client = server.client("?name=h").await;
    for n in 1..=8 {
        client.publish("log", json!({"n": n})).await;
    }
    let all = client.ok(json!({"op": "history", "channel": "log"})).await;
    assert_eq!(
        offsets(&all["publications"]),
        [4, 5, 6, 7, 8],
        "bounded by --history-size"
    );
    assert_eq!(all["offset"], 8);
    assert_eq!(all["publications"][0]["data"], json!({"n": 4}));
    assert_eq!(all["publications"][0]["info"]["user"], "h");
    let epoch = all["epoch"].as_str().unwrap().to_owned();

    let latest = client
        .ok(json!({"op": "history", "channel": "log", "limit": 2}))
        .await;
    assert_eq!(offsets(&latest["publications"]), [7, 8]);
    let after = client
        .ok(json!({"op": "history", "channel": "log", "limit": 2,
                   "since": {"offset": 4, "epoch": epoch}}))
        .await;
    assert_eq!(
        offsets(&after["publications"]),
        [5, 6],
        "paging forward from a position"
    );
    let none = client
        .ok(json!({"op": "history", "channel": "log", "since": {"offset": 8, "epoch": epoch}}))
        .await;
    assert_eq!(offsets(&none["publications"]), Vec::<u64>::new());

    for since in [
        json!({"offset": 1, "epoch": epoch}),
        json!({"offset": 6, "epoch": "not-the-epoch"}),
        json!({"offset": 99, "epoch": epoch}),
    ] {
        assert_eq!(
            client
                .error_code(json!({"op": "history", "channel": "log", "since": since}))
                .await,
            109,
            "{since}"
        );
    }
    assert_eq!(
        client
            .error_code(json!({"op": "history", "channel": "log", "since": {"offset": "x"}}))
            .await,
        103
    );
    assert_eq!(
        client
            .error_code(json!({"op": "history", "channel": "log", "limit": -1}))
            .await,
        103
    );
}

#[tokio::test]
async fn subscribe_since_a_position_recovers_then_continues_live_without_gap_or_duplicate() {
    let server = TestServer::start(&[]).await;
    let mut publisher = server.client("?name=p").await;
    let mut reader = server.client("?name=r").await;
    let sub = reader.subscribe("feed").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    publisher.publish("feed", json!(1)).await;
    assert_eq!(reader.next_pub().await.offset, 1);
    drop(reader);

    for n in 2..=6 {
        publisher.publish("feed", json!(n)).await;
    }
    let mut back = server.client("?name=r").await;
    let sub = back
        .ok(json!({"op": "subscribe", "channel": "feed",
                   "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(offsets(&sub["publications"]), [2, 3, 4, 5, 6]);
    assert_eq!(sub["publications"][4]["data"], 6);
    assert_eq!(sub["offset"], 6);
    publisher.publish("feed", json!(7)).await;
    assert_eq!(back.next_pub().await.offset, 7);
}

#[tokio::test]
async fn recovery_says_plainly_when_it_cannot() {
    let server = TestServer::start(&["--history-size", "3"]).await;
    let mut client = server.client("?name=c").await;
    let epoch = client.subscribe("news").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=10 {
        client.publish("news", json!(n)).await;
    }
    let mut other = server.client("?name=o").await;
    other.connected().await;
    for (since, why) in [
        (
            json!({"offset": 2, "epoch": epoch}),
            "no longer reaches back",
        ),
        (
            json!({"offset": 9, "epoch": "old-epoch"}),
            "history was lost",
        ),
    ] {
        let sub = other
            .ok(json!({"op": "subscribe", "channel": "news", "since": since}))
            .await;
        assert_eq!(sub["recovered"], false, "{since}");
        assert_eq!(offsets(&sub["publications"]), Vec::<u64>::new());
        assert!(sub["reason"].as_str().unwrap().contains(why), "{sub}");
        assert_eq!(sub["offset"], 10);
        other
            .ok(json!({"op": "unsubscribe", "channel": "news"}))
            .await;
    }
    // Without an id, a failed recovery is an error push and the subscription still goes live.
    other
        .send_json(&json!({"op": "subscribe", "channel": "news",
                           "since": {"offset": 0, "epoch": "gone"}}))
        .await;
    match other.next_push().await {
        Push::Error(err) => assert_eq!(err.code, 109),
        push => panic!("expected an error push, got {push:?}"),
    }
    client.publish("news", json!(11)).await;
    assert_eq!(other.next_pub().await.offset, 11);
}

#[tokio::test]
async fn a_subscriber_closed_as_slow_recovers_everything_from_history() {
    slow_subscriber_recovers(&[]).await;
}

#[tokio::test]
async fn a_subscriber_closed_as_slow_recovers_everything_from_redis_history() {
    let redis = RedisServer::start().await;
    slow_subscriber_recovers(&["--redis-url", &redis.url()]).await;
}

async fn slow_subscriber_recovers(extra: &[&str]) {
    const TOTAL: u64 = 300;
    let mut args = vec!["--max-queue-size", "128KiB", "--history-size", "1000"];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args).await;
    let mut slow = server.client("?name=slow").await;
    let epoch = slow.subscribe("burst").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut publisher = server.client("").await;
    // 9 MB in all: more than the kernel's socket buffers and the 128 KiB queue together.
    let padding = "z".repeat(30_000);
    for n in 1..=TOTAL {
        publisher
            .publish("burst", json!({"n": n, "pad": padding}))
            .await;
    }
    // The slow client reads only now: some publications, then the slow-consumer close.
    let mut seen = Vec::new();
    let ended = loop {
        match slow.try_recv(WAIT).await {
            Ok(tidings::protocol::ServerFrame::Push(Push::Pub(p))) => seen.push(p.offset),
            Ok(_) => {}
            Err(ended) => break ended,
        }
    };
    assert_eq!(ended, Ended::Closed(Some((4000, "slow consumer".into()))));
    assert!((seen.len() as u64) < TOTAL, "it was cut off");
    let last = seen.last().copied().unwrap_or(0);

    let mut back = server.client("?name=slow").await;
    let sub = back
        .ok(json!({"op": "subscribe", "channel": "burst",
                   "since": {"offset": last, "epoch": epoch}}))
        .await;
    assert_eq!(sub["recovered"], true);
    seen.extend(offsets(&sub["publications"]));
    let lost = (1..=TOTAL).filter(|o| !seen.contains(o)).count();
    let duplicated = seen.len() - seen.iter().collect::<std::collections::HashSet<_>>().len();
    println!("slow consumer recovery: lost = {lost}, duplicated = {duplicated}");
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
}
