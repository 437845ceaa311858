//! The broker contract (see `tidings::broker`), run with the same bodies against the memory
//! broker, the Redis broker (on a redis-server of its own) and the Redis broker in cluster mode
//! (on a local three-master Redis Cluster of its own).

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tidings::broker::memory::MemoryBroker;
use tidings::broker::redis::{RedisBroker, RedisOptions};
use tidings::broker::{Broker, HistoryQuery, HistoryRetention, Idempotency, PublishOptions};
use tidings::protocol::{ChannelName, ClientInfo, IdempotencyKey};

use crate::support::broker::{Sink, retention};
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{WAIT, within};

pub async fn memory_broker() -> (Arc<dyn Broker>, Arc<Sink>, Option<RedisServer>) {
    let sink = Arc::new(Sink::default());
    let broker = Arc::new(MemoryBroker::new(sink.clone(), retention()));
    (broker, sink, None)
}

pub async fn redis_broker() -> (Arc<dyn Broker>, Arc<Sink>, Option<RedisServer>) {
    let redis = RedisServer::start().await;
    let sink = Arc::new(Sink::default());
    let options = RedisOptions {
        url: redis.url(),
        cluster: false,
        prefix: "contract".into(),
        ..RedisOptions::default()
    };
    let broker = RedisBroker::connect(options, sink.clone(), retention())
        .await
        .expect("connect to redis");
    (Arc::new(broker), sink, Some(redis))
}

pub async fn cluster_broker() -> (Arc<dyn Broker>, Arc<Sink>, Option<RedisCluster>) {
    let cluster = RedisCluster::start().await;
    let sink = Arc::new(Sink::default());
    let options = RedisOptions {
        url: cluster.url(),
        cluster: false,
        prefix: "contract".into(),
        ..RedisOptions::default()
    };
    let broker = RedisBroker::connect(options, sink.clone(), retention())
        .await
        .expect("connect to the redis cluster");
    (Arc::new(broker), sink, Some(cluster))
}

/// Runs one test body against every broker: memory, Redis, and Redis Cluster.
macro_rules! broker_test {
    ($name:ident, |$broker:ident, $sink:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                let ($broker, $sink, _redis) = memory_broker().await;
                let _ = &$sink;
                $body
            }

            #[tokio::test]
            async fn redis() {
                let ($broker, $sink, _redis) = redis_broker().await;
                let _ = &$sink;
                $body
            }

            #[tokio::test]
            async fn redis_cluster() {
                let ($broker, $sink, _cluster) = cluster_broker().await;
                let _ = &$sink;
                $body
            }
        }
    };
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn data(n: u64) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap())
}

fn info() -> ClientInfo {
    ClientInfo {
        client: "c1".into(),
        user: "alice".into(),
    }
}

broker_test!(
    offsets_count_from_one_without_gaps_in_one_epoch,
    |broker, sink| {
        let ch = channel("contract:offsets");
        assert_eq!(broker.position(&ch).await.unwrap().offset, 0);
        let mut epoch = None;
        for n in 1..=5 {
            let position = broker
                .publish(&ch, data(n), info(), &PublishOptions::default())
                .await
                .unwrap();
            assert_eq!(position.offset, n);
            let first = epoch.get_or_insert_with(|| position.epoch.clone());
            assert_eq!(position.epoch, *first, "a channel keeps its epoch");
        }
        assert_eq!(broker.position(&ch).await.unwrap().offset, 5);
        assert_eq!(
            broker
                .position(&channel("contract:other"))
                .await
                .unwrap()
                .offset,
            0,
            "channels are counted separately"
        );
    }
);

broker_test!(
    subscribed_channels_are_delivered_in_offset_order_with_their_data,
    |broker, sink| {
        let ch = channel("contract:deliver");
        broker.subscribe(&ch).await.unwrap();
        for n in 1..=20 {
            broker
                .publish(&ch, data(n), info(), &PublishOptions::default())
                .await
                .unwrap();
        }
        assert_eq!(
            sink.offsets("contract:deliver", 20).await,
            (1..=20).collect::<Vec<_>>()
        );
        let first = sink.publications.lock().unwrap()[0].clone();
        assert_eq!(first.data.get(), r#"{"n":1}"#);
        assert_eq!(first.info, info());
        assert_eq!(first.epoch, broker.position(&ch).await.unwrap().epoch);
    }
);

broker_test!(
    concurrent_publishers_get_distinct_offsets_delivered_in_order,
    |broker, sink| {
        let ch = channel("contract:concurrent");
        broker.subscribe(&ch).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let broker = broker.clone();
                let ch = ch.clone();
                tokio::spawn(async move {
                    let mut offsets = Vec::new();
                    for n in 0..25 {
                        offsets.push(
                            broker
                                .publish(&ch, data(t * 100 + n), info(), &PublishOptions::default())
                                .await
                                .unwrap()
                                .offset,
                        );
                    }
                    offsets
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        acked.sort_unstable();
        assert_eq!(acked, (1..=100).collect::<Vec<_>>());
        assert_eq!(
            sink.offsets("contract:concurrent", 100).await,
            (1..=100).collect::<Vec<_>>()
        );
    }
);

broker_test!(
    a_retry_with_the_same_idempotency_key_is_stored_once,
    |broker, _sink| {
        let ch = channel("contract:idempotent");
        let keyed = |key: &str| PublishOptions {
            history: None,
            idempotency: Some(Idempotency {
                key: IdempotencyKey::parse(key).unwrap(),
                window: Duration::from_secs(60),
            }),
        };
        let first = broker
            .publish(&ch, data(1), info(), &keyed("k"))
            .await
            .unwrap();
        let retry = broker
            .publish(&ch, data(1), info(), &keyed("k"))
            .await
            .unwrap();
        assert_eq!(retry, first, "the retry gets the first position");
        let other = broker
            .publish(&ch, data(2), info(), &keyed("other"))
            .await
            .unwrap();
        assert_eq!(other.offset, first.offset + 1);
        let query = HistoryQuery {
            since: None,
            limit: 100,
            ..Default::default()
        };
        let stored = broker.history(&ch, query).await.unwrap().publications;
        assert_eq!(stored.len(), 2, "stored once per key");
    }
);

broker_test!(
    a_publication_may_carry_its_channels_own_history_size,
    |broker, _sink| {
        let ch = channel("contract:own-history");
        let options = PublishOptions {
            history: Some(HistoryRetention {
                size: 3,
                ttl: Duration::from_secs(60),
            }),
            idempotency: None,
        };
        for n in 1..=8 {
            broker
                .publish(&ch, data(n), info(), &options)
                .await
                .unwrap();
        }
        let query = HistoryQuery {
            since: None,
            limit: 100,
            ..Default::default()
        };
        let kept: Vec<u64> = broker
            .history(&ch, query.clone())
            .await
            .unwrap()
            .publications
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(kept, [6, 7, 8], "the namespace's size, not the server's 10");
        let none = PublishOptions {
            history: Some(HistoryRetention {
                size: 0,
                ttl: Duration::from_secs(60),
            }),
            idempotency: None,
        };
        let quiet = channel("contract:no-history");
        let position = broker
            .publish(&quiet, data(1), info(), &none)
            .await
            .unwrap();
        assert_eq!(position.offset, 1, "offsets count even without history");
        let read = broker.history(&quiet, query).await.unwrap();
        assert!(read.publications.is_empty());
    }
);

broker_test!(
    history_is_bounded_and_read_from_a_position,
    |broker, sink| {
        let ch = channel("contract:history");
        for n in 1..=15 {
            broker
                .publish(&ch, data(n), info(), &PublishOptions::default())
                .await
                .unwrap();
        }
        let offsets = |h: &tidings::broker::History| -> Vec<u64> {
            h.publications.iter().map(|p| p.offset).collect()
        };
        let all = broker
            .history(
                &ch,
                HistoryQuery {
                    since: None,
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            offsets(&all),
            (6..=15).collect::<Vec<_>>(),
            "history size 10"
        );
        assert_eq!(all.position.offset, 15);
        assert_eq!(all.publications[0].data.get(), r#"{"n":6}"#);
        let latest = broker
            .history(
                &ch,
                HistoryQuery {
                    since: None,
                    limit: 3,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(offsets(&latest), [13, 14, 15]);
        let after = broker
            .history(
                &ch,
                HistoryQuery {
                    since: Some(11),
                    limit: 2,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(offsets(&after), [12, 13]);
        let none = broker
            .history(
                &ch,
                HistoryQuery {
                    since: Some(15),
                    limit: 5,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(none.publications.is_empty());
    }
);

broker_test!(
    an_unpublished_channel_is_vouched_for_and_continued_by_its_first_publication,
    |broker, sink| {
        let ch = channel("contract:fresh");
        broker.subscribe(&ch).await.unwrap();
        let seen = broker.position(&ch).await.unwrap();
        assert_eq!(seen.offset, 0);
        broker.unsubscribe(&ch).await.unwrap();
        let since = |epoch: &str| HistoryQuery {
            since: Some(0),
            limit: 10,
            unpublished: Some(epoch.into()),
        };
        let unchanged = broker.history(&ch, since(&seen.epoch)).await.unwrap();
        assert!(unchanged.vouched, "{seen:?} is vouched for");
        assert_eq!(unchanged.position.offset, 0);
        let published = broker
            .publish(&ch, data(1), info(), &PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(published.offset, 1);
        let after = broker.history(&ch, since(&seen.epoch)).await.unwrap();
        assert!(after.vouched);
        assert_eq!(after.position, published);
        assert_eq!(after.publications.len(), 1);
        for stranger in ["~0.0", "Xk3q9TzA", &*published.epoch, "~", ""] {
            let read = broker.history(&ch, since(stranger)).await.unwrap();
            assert!(
                !read.vouched,
                "{stranger:?} is not an unpublished epoch of this broker"
            );
        }
    }
);

broker_test!(
    unsubscribing_is_accepted_and_subscribing_again_resumes_delivery,
    |broker, sink| {
        let ch = channel("contract:resub");
        broker.subscribe(&ch).await.unwrap();
        broker
            .publish(&ch, data(1), info(), &PublishOptions::default())
            .await
            .unwrap();
        sink.offsets("contract:resub", 1).await;
        broker.unsubscribe(&ch).await.unwrap();
        broker.subscribe(&ch).await.unwrap();
        broker
            .publish(&ch, data(2), info(), &PublishOptions::default())
            .await
            .unwrap();
        let offsets = sink.offsets("contract:resub", 2).await;
        assert_eq!(offsets.last(), Some(&2));
    }
);

broker_test!(
    a_control_message_reaches_this_node_as_it_was_sent,
    |broker, sink| {
        let message = br#"{"op":"disconnect","user":"u"}"#;
        broker.control(message).await.unwrap();
        within(WAIT, "the control message", async {
            loop {
                let changed = sink.changed.notified();
                if sink.controls.lock().unwrap().iter().any(|m| m == message) {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
);

broker_test!(
    a_node_announces_its_channels_and_does_not_count_itself_among_the_others,
    |broker, sink| {
        let counts = [(channel("contract:announced"), 3)];
        broker.announce(&counts).await.unwrap();
        let others = broker.channels().await.unwrap();
        assert!(
            !others.contains_key(&counts[0].0),
            "its own counts are the node's to add: {others:?}"
        );
    }
);
