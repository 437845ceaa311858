use std::collections::HashSet;

use serde_json::json;
use tidings::protocol::Push;

use crate::support::{TestServer, WAIT, WsClient, within};

#[tokio::test]
async fn two_clients_exchange_a_message_through_a_channel() {
    let server = TestServer::start(&[]).await;
    let mut alice = server.client("?name=alice").await;
    let mut bob = server.client("?name=bob").await;
    assert_eq!(alice.connected().await.user, "alice");
    assert_eq!(bob.connected().await.user, "bob");
    let sub = alice.subscribe("chat:lobby").await;
    assert_eq!(sub["channel"], "chat:lobby");
    assert_eq!(sub["offset"], 0);
    bob.subscribe("chat:lobby").await;

    let offset = bob.publish("chat:lobby", json!({"text": "hi alice"})).await;
    assert_eq!(offset, 1);
    let mut epochs = Vec::new();
    for client in [&mut alice, &mut bob] {
        let publication = client.next_pub().await;
        assert_eq!(publication.channel.as_str(), "chat:lobby");
        assert_eq!(publication.offset, 1);
        epochs.push(publication.epoch.clone());
        assert_eq!(publication.data, json!({"text": "hi alice"}));
        assert_eq!(&*publication.info.user, "bob");
    }
    assert_eq!(epochs[0], epochs[1], "one epoch for every subscriber");
    alice.publish("chat:lobby", json!("hello bob")).await;
    let publication = bob.next_pub().await;
    assert_eq!(publication.offset, 2);
    assert_eq!(publication.epoch, epochs[0], "a channel keeps its epoch");
    assert_eq!(publication.data, json!("hello bob"));
    assert_eq!(&*publication.info.user, "alice");
}

#[tokio::test]
async fn publication_info_is_stamped_by_the_server_not_the_client() {
    let server = TestServer::start(&[]).await;
    let mut mallory = server.client("?name=mallory").await;
    let mallory_id = mallory.connected().await.client;
    mallory.subscribe("news").await;
    mallory
        .ok(json!({"op": "publish", "channel": "news", "data": 1,
                   "info": {"client": "x", "user": "admin"}}))
        .await;
    let publication = mallory.next_pub().await;
    assert_eq!(&*publication.info.user, "mallory");
    assert_eq!(&*publication.info.client, mallory_id.as_str());
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start(&[]).await;
    let mut reader = server.client("").await;
    let mut writer = server.client("").await;
    reader.subscribe("room").await;
    reader.subscribe("probe").await;
    writer.publish("room", json!("before")).await;
    assert_eq!(reader.next_pub().await.data, json!("before"));

    assert_eq!(
        reader
            .ok(json!({"op": "unsubscribe", "channel": "room"}))
            .await,
        json!({})
    );
    writer.publish("room", json!("after")).await;
    // Publications of one publisher reach a subscriber in order, so once the probe arrives
    // anything published to "room" before it would already have arrived.
    writer.publish("probe", json!("probe")).await;
    let next = reader.next_pub().await;
    assert_eq!(
        (next.channel.as_str(), next.data),
        ("probe", json!("probe"))
    );
    // Unsubscribing again is harmless.
    reader
        .ok(json!({"op": "unsubscribe", "channel": "room"}))
        .await;
}

#[tokio::test]
async fn subscribe_reports_the_current_position_and_delivers_only_later_publications() {
    let server = TestServer::start(&[]).await;
    let mut publisher = server.client("").await;
    for n in 1..=3 {
        assert_eq!(publisher.publish("feed", json!(n)).await, n);
    }
    let mut late = server.client("").await;
    let sub = late.subscribe("feed").await;
    assert_eq!(sub["offset"], 3);
    publisher.publish("feed", json!(4)).await;
    let publication = late.next_pub().await;
    assert_eq!((publication.offset, publication.data), (4, json!(4)));
    assert_eq!(&*publication.epoch, sub["epoch"]);
}

#[tokio::test]
async fn eight_publishers_and_twenty_subscribers_see_every_offset_once_in_order() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 500;
    const SUBSCRIBERS: usize = 20;
    const TOTAL: u64 = (PUBLISHERS * EACH) as u64;
    let server = TestServer::start(&[]).await;

    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut client = server.client("").await;
        client.subscribe("load").await;
        subscribers.push(client);
    }
    let receivers: Vec<_> = subscribers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut offsets = Vec::with_capacity(TOTAL as usize);
                let mut seen = HashSet::new();
                while offsets.len() < TOTAL as usize {
                    let publication = client.next_pub().await;
                    let id = (
                        publication.data["publisher"].as_u64().unwrap(),
                        publication.data["n"].as_u64().unwrap(),
                    );
                    assert!(seen.insert(id), "payload {id:?} delivered twice");
                    offsets.push(publication.offset);
                }
                offsets
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let url = server.url("/ws");
            tokio::spawn(async move {
                let mut client = WsClient::connect(&url).await.unwrap();
                let mut acked = Vec::with_capacity(EACH);
                for n in 0..EACH {
                    acked.push(
                        client
                            .publish("load", json!({"publisher": p, "n": n}))
                            .await,
                    );
                }
                acked
            })
        })
        .collect();

    let mut acked = Vec::new();
    for publisher in publishers {
        let offsets = within(WAIT * 6, "publisher", publisher).await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one publisher's offsets increase"
        );
        acked.extend(offsets);
    }
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=TOTAL).collect::<Vec<_>>(),
        "offsets 1..=4000, no gaps"
    );

    for receiver in receivers {
        let offsets = within(WAIT * 6, "subscriber", receiver).await.unwrap();
        assert_eq!(offsets, (1..=TOTAL).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn names_come_from_the_query_or_connect_or_are_generated() {
    let server = TestServer::start(&["--ping-interval", "7s", "--pong-timeout", "3s"]).await;

    let mut by_query = server.client("?name=Zo%C3%AB").await;
    let connected = by_query.connected().await;
    assert_eq!(connected.user, "Zoë");
    assert_eq!(connected.version, 1);
    assert_eq!(connected.ping_interval_ms, 7000);
    assert_eq!(connected.pong_timeout_ms, 3000);
    assert_eq!(
        by_query
            .error_code(json!({"op": "connect", "name": "late"}))
            .await,
        106,
        "connect after the identity is set"
    );

    let mut by_connect = server.client("").await;
    let body = by_connect
        .ok(json!({"op": "connect", "name": "carol"}))
        .await;
    assert_eq!(body["user"], "carol");
    assert_eq!(body["authenticated"], false);
    assert!(body["client"].as_str().is_some_and(|c| !c.is_empty()));

    let mut invalid = server.client("?name=%3Cscript%3E").await;
    assert!(invalid.connected().await.user.starts_with("guest-"));

    // Without a name, the first command sets a generated identity and says so first.
    let mut silent = server.client("").await;
    silent.subscribe("x").await;
    match silent.next_push().await {
        Push::Connected(connected) => {
            assert!(connected.user.starts_with("guest-"));
            assert_ne!(connected.client, body["client"].as_str().unwrap());
        }
        other => panic!("expected connected, got {other:?}"),
    }
}
