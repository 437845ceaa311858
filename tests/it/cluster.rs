//! Tidings on a local three-master Redis Cluster: sharded pub/sub, hash-tagged keys.

use serde_json::json;

use crate::support::TestServer;
use crate::support::redis::{RedisCluster, command, subscriber_counts};

#[tokio::test]
async fn nodes_on_a_redis_cluster_deliver_and_recover_across_every_shard() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let a = TestServer::start(&["--redis-url", &url]).await;
    let b = TestServer::start(&["--redis-url", &url]).await;
    let channels: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();

    let mut reader = a.client("?name=reader").await;
    let mut epochs = Vec::new();
    for channel in &channels {
        epochs.push(reader.subscribe(channel).await["epoch"].clone());
    }
    let mut writer = b.client("?name=writer").await;
    for (i, channel) in channels.iter().enumerate() {
        assert_eq!(writer.publish(channel, json!({"i": i})).await, 1);
        let got = reader.next_pub().await;
        assert_eq!((got.channel.as_str(), got.offset), (channel.as_str(), 1));
        assert_eq!(got.data, json!({"i": i}));
    }

    // Each channel's shard holds exactly one sharded subscription (node a's), and classic
    // pub/sub carries nothing: every publication goes to one shard, not the whole cluster.
    let mut masters_used = std::collections::HashSet::new();
    for channel in &channels {
        let mut subscriptions = 0;
        for &port in &cluster.ports {
            let name = format!("tidings:{{{channel}}}");
            let sharded = command(port, &format!("PUBSUB SHARDNUMSUB {name}"))
                .await
                .unwrap();
            match subscriber_counts(&sharded).as_slice() {
                [(got, 1)] if *got == name => {
                    subscriptions += 1;
                    masters_used.insert(port);
                }
                [(got, 0)] if *got == name => {}
                other => panic!("SHARDNUMSUB {name} on {port}: {other:?} from {sharded:?}"),
            }
            let classic = command(port, &format!("PUBSUB NUMSUB {name}"))
                .await
                .unwrap();
            assert_eq!(
                subscriber_counts(&classic),
                [(name.clone(), 0)],
                "{classic:?}"
            );
        }
        assert_eq!(subscriptions, 1, "{channel}");
    }
    assert_eq!(
        masters_used.len(),
        3,
        "12 channels spread over all three shards"
    );

    // Recovery through the cluster, on the other node.
    drop(reader);
    for channel in &channels {
        writer.publish(channel, json!("missed")).await;
    }
    let mut back = b.client("?name=reader").await;
    for (channel, epoch) in channels.iter().zip(&epochs) {
        let sub = back
            .ok(json!({"op": "subscribe", "channel": channel,
                       "since": {"offset": 1, "epoch": epoch}}))
            .await;
        assert_eq!(sub["recovered"], true, "{channel}: {sub}");
        assert_eq!(sub["publications"][0]["offset"], 2);
        assert_eq!(sub["publications"][0]["data"], "missed");
    }
}
