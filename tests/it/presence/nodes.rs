//! Presence through real tidings processes on a real Redis.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings::protocol::Push;

use crate::support::redis::RedisServer;
use crate::support::{TestServer, WAIT, WsClient, http_request, within};

/// Client-level joins and leaves (the `chat` namespace has user-level ones).
const ROOM: &str = "room:presence=true,join-leave=client";
const KEY: &str = "api-key-for-the-tests";

async fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--namespace", ROOM, "--api-key", KEY];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

/// A client with its id, subscribed to `channel`.
async fn present(server: &TestServer, name: &str, channel: &str) -> (WsClient, String) {
    let mut client = server.client(&format!("?name={name}")).await;
    let id = client.connected().await.client;
    client.subscribe(channel).await;
    (client, id)
}

/// What a client saw, in order: `+id` a join, `-id` a leave, `#offset` a publication.
async fn next_seen(client: &mut WsClient) -> String {
    loop {
        // A hundred joins at once come batched past the channel's budget: who came and went
        // is what matters here.
        match client.next_change().await {
            Push::Join(change) => return format!("+{}", change.info.client),
            Push::Leave(change) => return format!("-{}", change.info.client),
            Push::Pub(publication) => return format!("#{}", publication.offset),
            Push::Connected(_) => continue,
            other => panic!("unexpected push {other:?}"),
        }
    }
}

async fn presence_ids(client: &mut WsClient, channel: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = client
            .ok(json!({"op": "presence", "channel": channel, "limit": 1000, "cursor": cursor}))
            .await;
        for member in page["clients"].as_array().expect("clients") {
            ids.push(member["client"].as_str().expect("client id").to_owned());
        }
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            return ids;
        }
    }
}

async fn stats(client: &mut WsClient, channel: &str) -> (u64, u64) {
    let body = client
        .ok(json!({"op": "presence_stats", "channel": channel}))
        .await;
    (
        body["clients"].as_u64().unwrap(),
        body["users"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn members_on_three_nodes_see_each_others_joins_and_leaves() {
    let redis = RedisServer::start().await;
    let nodes = [
        node(&redis, &[]).await,
        node(&redis, &[]).await,
        node(&redis, &[]).await,
    ];
    let (mut a, a_id) = present(&nodes[0], "ann", "room:1").await;
    assert_eq!(next_seen(&mut a).await, format!("+{a_id}"), "its own join");
    let (mut b, b_id) = present(&nodes[1], "bob", "room:1").await;
    assert_eq!(next_seen(&mut a).await, format!("+{b_id}"));
    let (mut c, c_id) = present(&nodes[2], "cyd", "room:1").await;
    assert_eq!(next_seen(&mut a).await, format!("+{c_id}"));
    assert_eq!(next_seen(&mut b).await, format!("+{b_id}"));
    assert_eq!(next_seen(&mut b).await, format!("+{c_id}"));

    let mut expected = vec![a_id.clone(), b_id.clone(), c_id.clone()];
    expected.sort();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(presence_ids(client, "room:1").await, expected);
        assert_eq!(stats(client, "room:1").await, (3, 3));
    }
    let members = a.ok(json!({"op": "presence", "channel": "room:1"})).await;
    let bob = members["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["client"] == json!(b_id))
        .unwrap();
    assert_eq!(bob["user"], "bob");
    assert_eq!(bob["authenticated"], false);

    drop(c);
    assert_eq!(next_seen(&mut a).await, format!("-{c_id}"));
    assert_eq!(next_seen(&mut b).await, format!("-{c_id}"));
    b.ok(json!({"op": "unsubscribe", "channel": "room:1"}))
        .await;
    assert_eq!(next_seen(&mut a).await, format!("-{b_id}"));
    assert_eq!(stats(&mut a, "room:1").await, (1, 1));

    // The server API answers the same, from any node.
    let (status, body) = http_request(
        nodes[2].addr,
        "POST",
        "/api/presence_stats",
        Some(&format!("apikey {KEY}")),
        r#"{"channel":"room:1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"clients": 1, "users": 1})
    );
}

#[tokio::test]
async fn presence_follows_the_rules_and_the_namespace() {
    let redis = RedisServer::start().await;
    let server = node(&redis, &["--namespace", "quiet:subscribe=anyone"]).await;
    let mut client = server.client("").await;
    let code = client
        .error_code(json!({"op": "presence", "channel": "quiet:x"}))
        .await;
    assert_eq!(code, 113, "presence is off in that namespace");
    let code = client
        .error_code(json!({"op": "presence_stats", "channel": "user:someone"}))
        .await;
    assert_eq!(code, 110, "whoever may not subscribe may not look");
    let code = client
        .error_code(json!({"op": "presence", "channel": "room:1", "limit": 1001}))
        .await;
    assert_eq!(code, 103);
}

#[tokio::test]
async fn in_user_mode_a_users_first_tab_joins_and_the_last_one_leaves() {
    let redis = RedisServer::start().await;
    let (one, two) = (node(&redis, &[]).await, node(&redis, &[]).await);
    let (mut watcher, watcher_id) = present(&one, "watcher", "chat:room").await;
    let user_of = |push: Push| match push {
        Push::Join(change) => format!("+{}", change.info.user),
        Push::Leave(change) => format!("-{}", change.info.user),
        other => panic!("unexpected push {other:?}"),
    };
    let _ = watcher_id;
    assert_eq!(user_of(watcher.next_push().await), "+watcher");
    let (tab1, _) = present(&one, "alice", "chat:room").await;
    assert_eq!(user_of(watcher.next_push().await), "+alice");
    let (tab2, _) = present(&two, "alice", "chat:room").await;
    assert_eq!(stats(&mut watcher, "chat:room").await, (3, 2));
    drop(tab1);
    within(WAIT, "tab 1 gone", async {
        while stats(&mut watcher, "chat:room").await != (2, 2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(tab2);
    // No leave for the first tab; one for the last.
    assert_eq!(user_of(watcher.next_push().await), "-alice");
    assert_eq!(stats(&mut watcher, "chat:room").await, (1, 1));
}

#[tokio::test]
async fn joins_and_leaves_keep_their_place_among_publications_across_nodes() {
    let redis = RedisServer::start().await;
    let nodes = [
        node(&redis, &[]).await,
        node(&redis, &[]).await,
        node(&redis, &[]).await,
    ];
    let (mut watcher, watcher_id) = present(&nodes[0], "watcher", "room:order").await;
    let mut publisher = nodes[1].client("?name=publisher").await;
    let mut mover = nodes[2].client("?name=mover").await;
    let mover_id = mover.connected().await.client;
    publisher.publish("room:order", json!(1)).await;
    mover.subscribe("room:order").await;
    publisher.publish("room:order", json!(2)).await;
    mover
        .ok(json!({"op": "unsubscribe", "channel": "room:order"}))
        .await;
    publisher.publish("room:order", json!(3)).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next_seen(&mut watcher).await);
    }
    assert_eq!(
        seen,
        [
            format!("+{watcher_id}"),
            "#1".into(),
            format!("+{mover_id}"),
            "#2".into(),
            format!("-{mover_id}"),
            "#3".into(),
        ]
    );
}

#[tokio::test]
async fn a_killed_nodes_present_clients_vanish_and_leave_once_each() {
    let redis = RedisServer::start().await;
    let ttl = "4s";
    let survivor = node(&redis, &["--presence-ttl", ttl]).await;
    let mut doomed = node(&redis, &["--presence-ttl", ttl]).await;
    let (mut watcher, watcher_id) = present(&survivor, "watcher", "room:crash").await;
    assert_eq!(next_seen(&mut watcher).await, format!("+{watcher_id}"));
    let mut victims = Vec::new();
    let mut ids = HashSet::new();
    for n in 0..100 {
        let (client, id) = present(&doomed, &format!("v{n}"), "room:crash").await;
        victims.push(client);
        ids.insert(id);
    }
    for _ in 0..100 {
        let seen = next_seen(&mut watcher).await;
        assert!(ids.contains(&seen[1..]), "{seen}");
    }
    assert_eq!(stats(&mut watcher, "room:crash").await, (101, 101));

    doomed.kill().await;
    let killed = Instant::now();
    let mut left = HashSet::new();
    while left.len() < 100 {
        let seen = within(Duration::from_secs(10), "leaves", next_seen(&mut watcher)).await;
        assert!(seen.starts_with('-'), "{seen}");
        assert!(left.insert(seen[1..].to_owned()), "one leave each: {seen}");
    }
    let waited = killed.elapsed();
    // TTL (4 s) plus a quarter of it, with room for a loaded machine.
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(left, ids);
    assert_eq!(stats(&mut watcher, "room:crash").await, (1, 1));
    assert_eq!(presence_ids(&mut watcher, "room:crash").await, [watcher_id]);
    // And no second leave later: nothing at all arrives for a while.
    let late = tokio::time::timeout(Duration::from_secs(2), watcher.next_push()).await;
    if let Ok(push) = late {
        panic!("nothing more was due, got {push:?}");
    }
    drop(victims);
}

/// 10,000 connections on three nodes: paging from any node returns each exactly once, and the
/// stats agree with the pages.
#[tokio::test]
async fn ten_thousand_members_on_three_nodes_page_back_once_each() {
    use futures_util::StreamExt;
    let redis = RedisServer::start().await;
    let quiet = ["--namespace", "big:presence=true", "--ping-interval", "5m"];
    let nodes = [
        node(&redis, &quiet).await,
        node(&redis, &quiet).await,
        node(&redis, &quiet).await,
    ];
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/ws")).collect();
    let started = Instant::now();
    let clients: Vec<WsClient> = within(
        Duration::from_secs(120),
        "10,000 clients present",
        futures_util::stream::iter(0..10_000)
            .map(|n| {
                let url = format!("{}?name=u{}", urls[n % 3], n / 2);
                async move {
                    let mut client = WsClient::connect(&url).await.expect("connects");
                    client.subscribe("big:room").await;
                    client
                }
            })
            .buffer_unordered(256)
            .collect(),
    )
    .await;
    eprintln!("10,000 present in {:?}", started.elapsed());
    let mut reader = nodes[1].client("").await;
    let ids = presence_ids(&mut reader, "big:room").await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (10_000, 10_000));
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "pages go by client id");
    assert_eq!(stats(&mut reader, "big:room").await, (10_000, 5_000));
    drop(clients);
}

#[tokio::test]
async fn past_the_limit_joins_come_in_batches_or_not_at_all() {
    let server = TestServer::start(&[
        "--namespace",
        "big:presence=true,join-leave=client,join-leave-limit=2,join-leave-batch=200ms",
        "--namespace",
        "huge:presence=true,join-leave=client,join-leave-limit=1,join-leave-batch=0s",
    ])
    .await;
    let (mut watcher, watcher_id) = present(&server, "watcher", "big:room").await;
    assert_eq!(next_seen(&mut watcher).await, format!("+{watcher_id}"));
    let (_second, second_id) = present(&server, "second", "big:room").await;
    assert_eq!(next_seen(&mut watcher).await, format!("+{second_id}"));
    // Past two present connections, joins are netted into batches.
    let mut crowd = Vec::new();
    let mut expected = HashSet::new();
    for n in 0..5 {
        let (client, id) = present(&server, &format!("c{n}"), "big:room").await;
        crowd.push(client);
        expected.insert(id);
    }
    let mut batched = HashSet::new();
    while batched.len() < 5 {
        match watcher.next_push().await {
            Push::PresenceBatch(batch) => {
                assert_eq!(batch.channel.as_str(), "big:room");
                assert!(batch.left.is_empty() && batch.more == 0);
                for member in batch.joined {
                    assert!(batched.insert(member.client.to_string()));
                }
            }
            other => panic!("expected a batch, got {other:?}"),
        }
    }
    assert_eq!(batched, expected);

    // With a zero interval they are not pushed at all past the limit: the next thing the
    // watcher gets is the publication sent after the join.
    let (mut watcher, watcher_id) = present(&server, "watcher", "huge:room").await;
    assert_eq!(next_seen(&mut watcher).await, format!("+{watcher_id}"));
    let (mut other, _) = present(&server, "other", "huge:room").await;
    other.publish("huge:room", json!("after the join")).await;
    assert_eq!(next_seen(&mut watcher).await, "#1");
    assert_eq!(
        stats(&mut watcher, "huge:room").await,
        (2, 2),
        "stats still count"
    );
}

#[tokio::test]
async fn a_members_token_info_and_authentication_show_in_presence() {
    let secret = "test-secret-of-at-least-32-bytes!!";
    let server = TestServer::start(&["--token-hmac-secret", secret, "--namespace", ROOM]).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "42", "info": {"name": "Ada", "avatar": "/a.png"}}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut client = server.client(&format!("?token={token}")).await;
    client.connected().await;
    client.subscribe("room:vip").await;
    let page = client
        .ok(json!({"op": "presence", "channel": "room:vip"}))
        .await;
    let member = &page["clients"][0];
    assert_eq!(member["user"], "42");
    assert_eq!(member["authenticated"], true);
    assert_eq!(member["info"], json!({"name": "Ada", "avatar": "/a.png"}));
    match client.next_push().await {
        Push::Join(change) => {
            assert_eq!(
                change.info.info.as_deref(),
                Some(&json!({"name": "Ada", "avatar": "/a.png"}))
            )
        }
        other => panic!("expected the join, got {other:?}"),
    }
}

/// A node whose entries were swept while it was cut off from Redis (here: deleted by hand)
/// adds its members again at its next refresh.
#[tokio::test]
async fn a_node_whose_entries_vanished_adds_its_members_again() {
    let redis = RedisServer::start().await;
    let server = node(&redis, &["--presence-ttl", "2s"]).await;
    let (mut client, id) = present(&server, "stayer", "room:lost").await;
    assert_eq!(
        presence_ids(&mut client, "room:lost").await,
        std::slice::from_ref(&id)
    );
    let keys = redis.command("KEYS tidings:{room:lost}:p*").await;
    let names: Vec<&str> = keys
        .lines()
        .filter(|line| line.starts_with("tidings:"))
        .collect();
    assert!(names.len() >= 5, "the presence keys: {keys:?}");
    redis.command(&format!("DEL {}", names.join(" "))).await;
    assert_eq!(stats(&mut client, "room:lost").await, (0, 0));
    within(WAIT, "the member back in presence", async {
        while presence_ids(&mut client, "room:lost").await != [id.clone()] {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(stats(&mut client, "room:lost").await, (1, 1));
}
