//! Several nodes sharing one Redis: delivery across nodes, recovery on another node, a node
//! killed with SIGKILL.

use serde_json::json;
use tokio::sync::mpsc;

use crate::support::redis::{RedisServer, subscriber_counts};
use crate::support::{TestServer, WAIT, WsClient, resilient_subscriber, within};

async fn nodes(redis: &RedisServer, n: usize, extra: &[&str]) -> Vec<TestServer> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut args = vec!["--redis-url", url.as_str()];
        args.extend_from_slice(extra);
        nodes.push(TestServer::start(&args).await);
    }
    nodes
}

#[tokio::test]
async fn clients_on_two_nodes_talk_through_redis() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let mut alice = nodes[0].client("?name=alice").await;
    let mut bob = nodes[1].client("?name=bob").await;
    alice.subscribe("chat:lobby").await;
    bob.subscribe("chat:lobby").await;
    assert_eq!(
        alice.publish("chat:lobby", json!({"text": "hi bob"})).await,
        1
    );
    let got = bob.next_pub().await;
    assert_eq!((got.offset, got.data), (1, json!({"text": "hi bob"})));
    assert_eq!(&*got.info.user, "alice");
    assert_eq!(
        bob.publish("chat:lobby", json!({"text": "hi alice"})).await,
        2
    );
    assert_eq!(alice.next_pub().await.offset, 1);
    assert_eq!(alice.next_pub().await.offset, 2);

    // One Redis subscription per node with local subscribers, and none for unused channels.
    let numsub = redis
        .command("PUBSUB NUMSUB tidings:{chat:lobby} tidings:{unused}")
        .await;
    assert_eq!(
        subscriber_counts(&numsub),
        [
            ("tidings:{chat:lobby}".to_owned(), 2),
            ("tidings:{unused}".to_owned(), 0)
        ],
        "{numsub:?}"
    );
    // Node 0 keeps its subscription while one of its subscribers remains…
    let mut carol = nodes[0].client("?name=carol").await;
    carol.subscribe("chat:lobby").await;
    carol
        .ok(json!({"op": "unsubscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(lobby_subscriptions(&redis).await, 2);
    // …and the last one out unsubscribes it in Redis before its reply: only node 1's (Bob's)
    // is left.
    alice
        .ok(json!({"op": "unsubscribe", "channel": "chat:lobby"}))
        .await;
    assert_eq!(lobby_subscriptions(&redis).await, 1);
    // A dropped connection leaves too, once node 1 notices it is gone.
    drop(bob);
    within(WAIT, "node 1 unsubscribes after Bob's drop", async {
        while lobby_subscriptions(&redis).await != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// How many nodes hold a Redis subscription to `chat:lobby`.
async fn lobby_subscriptions(redis: &RedisServer) -> u64 {
    let numsub = redis.command("PUBSUB NUMSUB tidings:{chat:lobby}").await;
    match subscriber_counts(&numsub).as_slice() {
        [(name, count)] if name == "tidings:{chat:lobby}" => *count,
        other => panic!("PUBSUB NUMSUB: {other:?} from {numsub:?}"),
    }
}

#[tokio::test]
async fn three_nodes_deliver_five_thousand_messages_to_thirty_subscribers_exactly_once_in_order() {
    const SUBSCRIBERS: usize = 30;
    const PUBLISHERS: usize = 10;
    const EACH: u64 = 500;
    const TOTAL: u64 = PUBLISHERS as u64 * EACH;
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 3, &["--history-size", "100"]).await;

    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut client = nodes[i % 3].client("").await;
        client.subscribe("load").await;
        subscribers.push(tokio::spawn(async move {
            let mut offsets = Vec::with_capacity(TOTAL as usize);
            while offsets.len() < TOTAL as usize {
                offsets.push(client.next_pub().await.offset);
            }
            offsets
        }));
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let url = nodes[p % 3].url("/ws");
            tokio::spawn(async move {
                let mut client = WsClient::connect(&url).await.unwrap();
                for n in 0..EACH {
                    client.publish("load", json!({"p": p, "n": n})).await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        within(WAIT * 6, "publisher", publisher).await.unwrap();
    }
    let (mut lost, mut duplicated, mut out_of_order) = (0, 0, 0);
    for subscriber in subscribers {
        let offsets = within(WAIT * 6, "subscriber", subscriber).await.unwrap();
        let unique: std::collections::HashSet<_> = offsets.iter().collect();
        duplicated += offsets.len() - unique.len();
        lost += (1..=TOTAL).filter(|o| !unique.contains(o)).count();
        out_of_order += offsets.windows(2).filter(|w| w[0] >= w[1]).count();
    }
    println!(
        "3 nodes, {SUBSCRIBERS} subscribers, {TOTAL} messages: lost = {lost}, duplicated = {duplicated}, out of order = {out_of_order}"
    );
    assert_eq!((lost, duplicated, out_of_order), (0, 0, 0));
}

#[tokio::test]
async fn a_client_reconnecting_to_another_node_recovers_what_it_missed() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 3, &[]).await;
    let mut reader = nodes[0].client("").await;
    let sub = reader.subscribe("feed").await;
    let mut publisher = nodes[1].client("").await;
    publisher.publish("feed", json!(1)).await;
    assert_eq!(reader.next_pub().await.offset, 1);
    drop(reader);
    for n in 2..=20 {
        publisher.publish("feed", json!(n)).await;
    }
    let mut back = nodes[2].client("").await;
    let sub = back
        .ok(json!({"op": "subscribe", "channel": "feed",
                   "since": {"offset": 1, "epoch": sub["epoch"]}}))
        .await;
    assert_eq!(sub["recovered"], true);
    let recovered: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, (2..=20).collect::<Vec<_>>());
    assert_eq!(sub["publications"][18]["data"], 20);
    publisher.publish("feed", json!(21)).await;
    assert_eq!(back.next_pub().await.offset, 21);
}

#[tokio::test]
async fn clients_of_a_node_killed_with_sigkill_recover_everything_on_the_others() {
    const TOTAL: u64 = 400;
    let redis = RedisServer::start().await;
    let mut nodes = nodes(&redis, 3, &["--history-size", "1000"]).await;
    // Subscribers start on node 0 and fail over to nodes 1 and 2.
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/ws")).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel(16);
    let subscribers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(resilient_subscriber(
                urls.clone(),
                "failover".into(),
                TOTAL,
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..6 {
        within(WAIT, "subscribers ready", ready_rx.recv()).await;
    }
    let mut publisher = nodes[2].client("").await;
    for n in 1..=TOTAL {
        publisher.publish("failover", json!(n)).await;
        if n == TOTAL / 2 {
            nodes[0].kill().await;
        }
    }
    let mut failed_over = 0;
    for subscriber in subscribers {
        let tally = within(WAIT * 6, "subscriber", subscriber).await.unwrap();
        let (lost, duplicated) = tally.lost_and_duplicated(TOTAL);
        println!(
            "after SIGKILL of a node: lost = {lost}, duplicated = {duplicated}, connections = {}",
            tally.connections
        );
        assert_eq!((lost, duplicated, tally.unrecovered), (0, 0, 0));
        assert_eq!(tally.offsets, (1..=TOTAL).collect::<Vec<_>>());
        failed_over += usize::from(tally.connections > 1);
    }
    assert!(failed_over > 0, "some subscribers were on the killed node");
}

/// A connection's publishes go to Redis without waiting for each other (one round trip each
/// would cap a publisher at a few thousand a second), yet they are stored, answered and
/// delivered in the order sent — and a command after them sees them done.
#[tokio::test]
async fn a_burst_of_publishes_is_stored_answered_and_delivered_in_the_order_sent() {
    use tidings::protocol::{Outcome, Reply, ServerFrame};
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let mut subscriber = nodes[1].client("").await;
    subscriber.subscribe("burst").await;
    let mut publisher = nodes[0].client("?name=publisher").await;
    publisher.connected().await;
    for n in 1..=300u64 {
        publisher
            .send_json(&json!({"id": n, "op": "publish", "channel": "burst", "data": n}))
            .await;
    }
    publisher
        .send_json(&json!({"id": 301, "op": "history", "channel": "burst", "limit": 1}))
        .await;
    for n in 1..=301u64 {
        match publisher.recv().await {
            ServerFrame::Reply(Reply {
                id,
                outcome: Outcome::Ok(body),
            }) => {
                assert_eq!(id, n, "replies in the order sent");
                if n <= 300 {
                    assert_eq!(body["offset"], n, "stored in the order sent");
                } else {
                    assert_eq!(
                        body["offset"], 300,
                        "the history sees every publish before it"
                    );
                }
            }
            other => panic!("expected reply {n}, got {other:?}"),
        }
    }
    for n in 1..=300u64 {
        let publication = subscriber.next_pub().await;
        assert_eq!((publication.offset, publication.data), (n, json!(n)));
    }
}
