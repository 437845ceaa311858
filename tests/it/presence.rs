//! Presence: the store contract (one body per store: memory, Redis, Redis Cluster), the crash
//! safety of the Redis store, and presence through real nodes.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tidings::broker::Broker;
use tidings::broker::memory::MemoryBroker;
use tidings::broker::redis::{RedisBroker, RedisOptions};
use tidings::presence::memory::MemoryPresence;
use tidings::presence::redis::RedisPresence;
use tidings::presence::{Change, PresenceEvent, PresenceStore};
use tidings::protocol::{ChannelName, Member};

use crate::support::broker::{Sink, retention};
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{WAIT, within};

mod nodes;

/// A store, the broker whose path its events take, and what they deliver to.
pub struct Setup {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub sink: Arc<Sink>,
    /// The Redis behind it, kept alive as long as the setup.
    _redis: Option<Box<dyn Any + Send>>,
}

async fn memory_store() -> Setup {
    let sink = Arc::new(Sink::default());
    Setup {
        broker: Arc::new(MemoryBroker::new(sink.clone(), retention())),
        presence: Arc::new(MemoryPresence::new(sink.clone())),
        sink,
        _redis: None,
    }
}

async fn redis_store_on(url: String, ttl: Duration) -> Setup {
    let sink = Arc::new(Sink::default());
    let options = RedisOptions {
        url,
        cluster: false,
        prefix: "contract".into(),
        ..RedisOptions::default()
    };
    let broker = RedisBroker::connect(options, sink.clone(), retention())
        .await
        .expect("connect to redis");
    let presence = Arc::new(RedisPresence::new(broker.shared(), ttl));
    Setup {
        broker: Arc::new(broker),
        presence,
        sink,
        _redis: None,
    }
}

async fn redis_store() -> Setup {
    let redis = RedisServer::start().await;
    let mut setup = redis_store_on(redis.url(), Duration::from_secs(20)).await;
    setup._redis = Some(Box::new(redis));
    setup
}

async fn cluster_store() -> Setup {
    let cluster = RedisCluster::start().await;
    let mut setup = redis_store_on(cluster.url(), Duration::from_secs(20)).await;
    setup._redis = Some(Box::new(cluster));
    setup
}

/// Runs one test body against every store: memory, Redis, and Redis Cluster.
macro_rules! presence_test {
    ($name:ident, |$setup:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                let $setup = memory_store().await;
                $body
            }

            #[tokio::test]
            async fn redis() {
                let $setup = redis_store().await;
                $body
            }

            #[tokio::test]
            async fn redis_cluster() {
                let $setup = cluster_store().await;
                $body
            }
        }
    };
}

pub fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

pub fn member(client: &str, user: &str) -> Member {
    Member {
        client: client.into(),
        user: user.into(),
        authenticated: true,
        info: Some(Arc::new(serde_json::json!({"name": user}))),
    }
}

impl Setup {
    /// Waits for `n` events of `channel` in all; returns them in order.
    async fn events(&self, channel: &str, n: usize) -> Vec<PresenceEvent> {
        let sink = &self.sink;
        within(WAIT, &format!("{n} presence events"), async {
            loop {
                let changed = sink.changed.notified();
                let events: Vec<PresenceEvent> = sink
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(ch, _)| ch == channel)
                    .map(|(_, message)| PresenceEvent::decode(message).expect("an event"))
                    .collect();
                if events.len() >= n {
                    return events;
                }
                changed.await;
            }
        })
        .await
    }

    /// Every member, page by page.
    async fn all_members(&self, channel: &ChannelName, limit: usize) -> Vec<Member> {
        let mut members = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .presence
                .page(channel, cursor.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.members.len() <= limit);
            members.extend(page.members);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return members,
            }
        }
    }
}

presence_test!(each_change_is_announced_once_with_its_user_edge, |setup| {
    let ch = channel("contract:room");
    setup.broker.subscribe(&ch).await.unwrap();
    let store = &setup.presence;
    store.add(&ch, &member("c1", "alice")).await.unwrap();
    store.add(&ch, &member("c1", "alice")).await.unwrap();
    store.add(&ch, &member("c2", "alice")).await.unwrap();
    store.add(&ch, &member("c3", "bob")).await.unwrap();
    store.remove(&ch, "c1").await.unwrap();
    store.remove(&ch, "c1").await.unwrap();
    store.remove(&ch, "nobody").await.unwrap();
    store.remove(&ch, "c2").await.unwrap();
    let events = setup.events("contract:room", 5).await;
    let seen: Vec<(Change, &str, bool, u64)> = events
        .iter()
        .map(|e| (e.change, &*e.member.client, e.user_edge, e.clients))
        .collect();
    assert_eq!(
        seen,
        [
            (Change::Join, "c1", true, 1),
            (Change::Join, "c2", false, 2),
            (Change::Join, "c3", true, 3),
            (Change::Leave, "c1", false, 2),
            (Change::Leave, "c2", true, 1),
        ]
    );
    assert_eq!(
        events[0].member,
        member("c1", "alice"),
        "the member as added"
    );
    let stats = store.stats(&ch).await.unwrap();
    assert_eq!((stats.clients, stats.users), (1, 1));
    // Nothing more arrives: a repeated add or remove announced nothing.
    store.add(&ch, &member("c4", "carol")).await.unwrap();
    let events = setup.events("contract:room", 6).await;
    assert_eq!(events.len(), 6);
    assert_eq!(&*events[5].member.client, "c4");
});

presence_test!(pages_return_every_member_once_in_client_order, |setup| {
    let ch = channel("contract:paged");
    let store = &setup.presence;
    let mut expected = Vec::new();
    for n in 0..250 {
        let client = format!("client-{n:04}");
        store
            .add(&ch, &member(&client, &format!("user-{}", n % 100)))
            .await
            .unwrap();
        expected.push(client);
    }
    let members = setup.all_members(&ch, 100).await;
    let clients: Vec<String> = members.iter().map(|m| m.client.to_string()).collect();
    assert_eq!(clients, expected, "each once, by client id");
    let stats = store.stats(&ch).await.unwrap();
    assert_eq!((stats.clients, stats.users), (250, 100));
    let empty = store
        .page(&channel("contract:empty"), None, 10)
        .await
        .unwrap();
    assert!(empty.members.is_empty() && empty.cursor.is_none());
    let stats = store.stats(&channel("contract:empty")).await.unwrap();
    assert_eq!((stats.clients, stats.users), (0, 0));
});

/// The Redis store across nodes: three stores (three nodes' worth) on one Redis share each
/// channel's presence; 10,000 members page back exactly once each, and the stats agree.
#[tokio::test]
async fn three_redis_nodes_share_presence_of_ten_thousand_members() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_secs(20);
    let nodes = [
        redis_store_on(redis.url(), ttl).await,
        redis_store_on(redis.url(), ttl).await,
        redis_store_on(redis.url(), ttl).await,
    ];
    let ch = channel("contract:big");
    for node in &nodes {
        node.broker.subscribe(&ch).await.unwrap();
    }
    let adds = (0..10_000).map(|n| {
        let store = nodes[n % 3].presence.clone();
        let ch = ch.clone();
        async move {
            let client = format!("{n:05}");
            store
                .add(&ch, &member(&client, &format!("u{}", n / 4)))
                .await
                .unwrap();
        }
    });
    within(
        WAIT * 3,
        "10,000 adds",
        futures_util::future::join_all(adds),
    )
    .await;
    for node in &nodes {
        let members = node.all_members(&ch, 1000).await;
        let unique: HashSet<&str> = members.iter().map(|m| &*m.client).collect();
        assert_eq!((members.len(), unique.len()), (10_000, 10_000));
        let stats = node.presence.stats(&ch).await.unwrap();
        assert_eq!((stats.clients, stats.users), (10_000, 2_500));
    }
    // Every node heard every join, once.
    for node in &nodes {
        let events = node.events("contract:big", 10_000).await;
        let joins: HashSet<&str> = events.iter().map(|e| &*e.member.client).collect();
        assert_eq!((events.len(), joins.len()), (10_000, 10_000));
    }
}

/// A node that stops refreshing (killed) loses its members within the TTL and a quarter; a
/// surviving node announces each one's leave exactly once.
#[tokio::test]
async fn a_dead_nodes_members_leave_once_each_within_the_ttl() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_secs(2);
    let survivor = redis_store_on(redis.url(), ttl).await;
    let doomed = redis_store_on(redis.url(), ttl).await;
    let ch = channel("contract:crash");
    survivor.broker.subscribe(&ch).await.unwrap();
    survivor
        .presence
        .add(&ch, &member("alive", "a"))
        .await
        .unwrap();
    for n in 0..100 {
        doomed
            .presence
            .add(&ch, &member(&format!("doomed-{n:03}"), "d"))
            .await
            .unwrap();
    }
    assert_eq!(survivor.presence.stats(&ch).await.unwrap().clients, 101);
    let died = std::time::Instant::now();
    drop(doomed); // its refresher stops, as a killed node's would
    let events = survivor.events("contract:crash", 1 + 100 + 100).await;
    let waited = died.elapsed();
    assert!(
        waited <= ttl + ttl / 4 + Duration::from_millis(500),
        "{waited:?}"
    );
    let leaves: Vec<&str> = events
        .iter()
        .filter(|e| e.change == Change::Leave)
        .map(|e| &*e.member.client)
        .collect();
    let unique: HashSet<&&str> = leaves.iter().collect();
    assert_eq!((leaves.len(), unique.len()), (100, 100));
    assert!(!leaves.contains(&"alive"));
    let stats = survivor.presence.stats(&ch).await.unwrap();
    assert_eq!((stats.clients, stats.users), (1, 1));
    // No second round of leaves later.
    tokio::time::sleep(ttl).await;
    assert_eq!(survivor.sink.events.lock().unwrap().len(), 201);
}
