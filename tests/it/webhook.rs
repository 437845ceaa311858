//! Webhooks: lifecycle events once per real transition across nodes, signed, retried in order
//! with their ids, kept in Redis across a node's death; delivery receipts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::metrics::await_metric;
use crate::support::browser::{Browser, Tab};
use crate::support::redis::RedisServer;
use crate::support::webhook::{Receiver, WEBHOOK_SECRET};
use crate::support::{TestServer, WAIT, WsClient, http_request, within};

const TOKEN_SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const API_KEY: &str = "api-key-for-the-tests";

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user}),
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn node(redis: Option<&RedisServer>, receiver: &Receiver, extra: &[&str]) -> TestServer {
    node_on(redis.map(RedisServer::url), receiver, extra).await
}

async fn node_on(redis_url: Option<String>, receiver: &Receiver, extra: &[&str]) -> TestServer {
    let url = receiver.url();
    let mut args = vec![
        "--webhook-url",
        &url,
        "--webhook-secret",
        WEBHOOK_SECRET,
        "--token-hmac-secret",
        TOKEN_SECRET,
        "--api-key",
        API_KEY,
    ];
    if let Some(redis_url) = &redis_url {
        args.extend(["--redis-url", redis_url]);
    }
    args.extend(extra);
    TestServer::start(&args).await
}

async fn user(server: &TestServer, name: &str) -> WsClient {
    let mut client = server.client(&format!("?token={}", token(name))).await;
    assert_eq!(client.connected().await.user, name);
    client
}

/// `type` with its subject, for comparing event lists.
fn summary(event: &Value) -> String {
    let subject = [&event["channel"], &event["user"]]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    format!("{} {subject}", event["type"].as_str().unwrap())
}

#[tokio::test]
async fn lifecycle_events_across_two_nodes_come_once_signed_and_in_order_through_failures() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.refuse.store(3, Ordering::SeqCst);
    let grace = ["--webhook-offline-grace", "1500ms"];
    let a = node(Some(&redis), &receiver, &grace).await;
    let b = node(Some(&redis), &receiver, &grace).await;

    // ann on both nodes at once, in the same presence channel: one online, one occupied,
    // one member_added.
    let mut ann_a = user(&a, "ann").await;
    let mut ann_b = user(&b, "ann").await;
    ann_a.subscribe("chat:room").await;
    ann_b.subscribe("chat:room").await;
    let mut bob = user(&b, "bob").await;
    bob.subscribe("chat:room").await;
    receiver
        .wait_for("bob's member_added", |e| {
            e["type"] == "member_added" && e["user"] == "bob"
        })
        .await;

    // bob reloads onto the other node within the grace: no event at all.
    drop(bob);
    let mut bob = user(&a, "bob").await;
    bob.subscribe("chat:room").await;
    // ann leaves one node, then the other: only the last one out counts.
    drop(ann_a);
    ann_b.ok(json!({"op": "ping"})).await;
    drop(ann_b);
    receiver
        .wait_for("ann offline", |e| {
            e["type"] == "user_offline" && e["user"] == "ann"
        })
        .await;
    drop(bob);
    receiver
        .wait_for("bob offline", |e| {
            e["type"] == "user_offline" && e["user"] == "bob"
        })
        .await;
    for server in [&a, &b] {
        await_metric(server.addr, "tidings_webhook_queue_size", 0.0).await;
    }

    let events = receiver.events();
    let mut got: Vec<String> = events.iter().map(summary).collect();
    got.sort();
    let mut expected = vec![
        "user_online ann",
        "user_online bob",
        "channel_occupied chat:room",
        "member_added chat:room ann",
        "member_added chat:room bob",
        "member_removed chat:room ann",
        "member_removed chat:room bob",
        "channel_vacated chat:room",
        "user_offline ann",
        "user_offline bob",
    ];
    expected.sort_unstable();
    assert_eq!(got, expected, "{events:#?}");
    let position = |s: &str| events.iter().position(|e| summary(e) == s).unwrap();
    assert!(position("channel_occupied chat:room") < position("member_added chat:room ann"));
    assert!(position("member_removed chat:room bob") < position("channel_vacated chat:room"));
    assert!(position("member_removed chat:room ann") < position("user_offline ann"));
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {times:?}"
    );

    // The refused attempts carried the very events (same ids) later accepted.
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 4, "{attempts:?}");
    assert_eq!(attempts[0], attempts[1]);
    assert_eq!(attempts[1], attempts[2]);
    assert_eq!(
        attempts[2], attempts[3],
        "the accepted batch is the refused one"
    );
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(&ids[..attempts[3].len()], attempts[3].as_slice());
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id came twice");
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);

    let m = crate::metrics::scrape(a.addr).await;
    let m2 = crate::metrics::scrape(b.addr).await;
    let sum = |key: &str| m.get(key).unwrap_or(&0.0) + m2.get(key).unwrap_or(&0.0);
    assert_eq!(sum("tidings_webhook_events_sent_total"), 10.0);
    assert_eq!(sum("tidings_webhook_retries_total"), 3.0);
    for server in [&a, &b] {
        assert!(!server.logs().text().contains(WEBHOOK_SECRET));
    }
}

#[tokio::test]
async fn events_pending_in_redis_are_delivered_after_their_node_dies() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.down.store(true, Ordering::SeqCst);
    let grace = ["--webhook-offline-grace", "1500ms"];
    let mut a = node(Some(&redis), &receiver, &grace).await;
    let mut ann = user(&a, "ann").await;
    ann.subscribe("chat:room").await;
    within(WAIT, "a refused attempt", async {
        while receiver.attempts.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    a.kill().await;
    drop(ann);

    receiver.down.store(false, Ordering::SeqCst);
    let _b = node(Some(&redis), &receiver, &grace).await;
    // The dead node's events come from the queue in Redis; its holdings are released by the
    // survivor once the dead node's liveness lapses.
    receiver
        .wait_for("ann offline", |e| {
            e["type"] == "user_offline" && e["user"] == "ann"
        })
        .await;
    let got: Vec<String> = receiver.events().iter().map(summary).collect();
    assert_eq!(
        got,
        [
            "user_online ann",
            "channel_occupied chat:room",
            "member_added chat:room ann",
            "member_removed chat:room ann",
            "channel_vacated chat:room",
            "user_offline ann",
        ]
    );
}

/// Redis restarted without its data forgets what every node holds: each node tells it again
/// (the backend sees the ins again, with new ids), so that the outs still come.
#[tokio::test]
async fn after_redis_loses_its_data_nodes_tell_it_again_and_outs_still_come() {
    let mut redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let a = node(
        Some(&redis),
        &receiver,
        &["--webhook-offline-grace", "1500ms"],
    )
    .await;
    let mut ann = user(&a, "ann").await;
    ann.subscribe("chat:room").await;
    let member_added = |e: &Value| e["type"] == "member_added" && e["user"] == "ann";
    receiver.wait_for("ann added", member_added).await;

    redis.restart().await;
    receiver
        .wait_for("ann added again", |_| {
            receiver.events().iter().filter(|e| member_added(e)).count() == 2
        })
        .await;
    drop(ann);
    receiver
        .wait_for("ann offline", |e| {
            e["type"] == "user_offline" && e["user"] == "ann"
        })
        .await;
    let got: Vec<String> = receiver.events().iter().map(summary).collect();
    let once = [
        "user_online ann",
        "channel_occupied chat:room",
        "member_added chat:room ann",
    ];
    let mut expected: Vec<&str> = once.iter().chain(once.iter()).copied().collect();
    expected.extend([
        "member_removed chat:room ann",
        "channel_vacated chat:room",
        "user_offline ann",
    ]);
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "{got:#?}");
}

/// On a Redis Cluster every lifecycle key shares one hash tag: the scripts run on one shard.
#[tokio::test]
async fn lifecycle_events_on_a_redis_cluster_come_once() {
    let cluster = crate::support::redis::RedisCluster::start().await;
    let receiver = Receiver::start().await;
    let grace = ["--webhook-offline-grace", "1s"];
    let a = node_on(Some(cluster.url()), &receiver, &grace).await;
    let b = node_on(Some(cluster.url()), &receiver, &grace).await;
    let mut ann = user(&a, "ann").await;
    let mut bob = user(&b, "bob").await;
    ann.subscribe("chat:room").await;
    bob.subscribe("chat:room").await;
    drop(ann);
    drop(bob);
    for name in ["ann", "bob"] {
        receiver
            .wait_for("offline", |e| {
                e["type"] == "user_offline" && e["user"] == name
            })
            .await;
    }
    receiver
        .wait_for("vacated", |e| e["type"] == "channel_vacated")
        .await;
    let mut got: Vec<String> = receiver.events().iter().map(summary).collect();
    got.sort();
    let mut expected = vec![
        "channel_occupied chat:room",
        "channel_vacated chat:room",
        "member_added chat:room ann",
        "member_added chat:room bob",
        "member_removed chat:room ann",
        "member_removed chat:room bob",
        "user_offline ann",
        "user_offline bob",
        "user_online ann",
        "user_online bob",
    ];
    expected.sort_unstable();
    assert_eq!(got, expected);
}

async fn api_publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let body = json!({"channel": channel, "data": data}).to_string();
    let auth = format!("apikey {API_KEY}");
    let (status, text) =
        http_request(server.addr, "POST", "/api/publish", Some(&auth), &body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Receipts on personal channels: a user who acknowledged on one of two tabs got it; a user
/// who never acknowledges, or has no connection, is reported once with the right offsets.
async fn receipts(redis: Option<&RedisServer>) {
    let receiver = Receiver::start().await;
    let server = node(redis, &receiver, &["--namespace", "user:receipts=1s"]).await;
    // The JavaScript client acknowledges by itself once its handler returned.
    let browser = match redis {
        Some(_) => None,
        None => Some(js_subscriber(&server, "dan").await),
    };
    let mut ann_1 = user(&server, "ann").await;
    let mut ann_2 = user(&server, "ann").await;
    let mut bob = user(&server, "bob").await;
    for (client, channel) in [
        (&mut ann_1, "user:ann"),
        (&mut ann_2, "user:ann"),
        (&mut bob, "user:bob"),
    ] {
        let reply = client.subscribe(channel).await;
        assert_eq!(reply["receipts"], true, "{reply}");
    }
    let published = api_publish(&server, "user:ann", json!("for ann")).await;
    assert_eq!(published["receipts"], true);
    let epoch = published["epoch"].clone();
    api_publish(&server, "user:bob", json!("one")).await;
    api_publish(&server, "user:bob", json!("two")).await;
    let carol = api_publish(&server, "user:carol", json!("for carol")).await;
    let not_tracked = api_publish(&server, "news", json!("for all")).await;
    assert_eq!(not_tracked["receipts"], false);
    if let Some((mut browser, tab)) = browser {
        api_publish(&server, "user:dan", json!("for dan")).await;
        let script = "new Promise((resolve) => {
            const check = setInterval(() => {
                if (window.got.length > 0) { clearInterval(check); resolve(window.got); }
            }, 20);
        })";
        assert_eq!(
            browser.eval(&tab, script).await.unwrap(),
            json!(["for dan"])
        );
    }

    let got = ann_1.next_pub().await;
    ann_1
        .ok(json!({"op": "ack", "channel": "user:ann", "offset": got.offset}))
        .await;
    assert_eq!(
        ann_2.next_pub().await.offset,
        got.offset,
        "the other tab never acks"
    );
    assert_eq!(bob.next_pub().await.data, json!("one"));
    assert_eq!(
        bob.error_code(json!({"op": "ack", "channel": "user:ann", "offset": 1}))
            .await,
        110,
        "an ack for a channel one is not subscribed to"
    );

    receiver
        .wait_for("carol's undelivered", |e| e["user"] == "carol")
        .await;
    receiver
        .wait_for("bob's undelivered", |e| e["user"] == "bob")
        .await;
    await_metric(server.addr, "tidings_webhook_queue_size", 0.0).await;
    let undelivered: HashMap<String, Value> = receiver
        .events()
        .into_iter()
        .filter(|e| e["type"] == "undelivered")
        .map(|e| (e["user"].as_str().unwrap().to_owned(), e))
        .collect();
    assert_eq!(undelivered.len(), 2, "{undelivered:#?}");
    assert_eq!(undelivered["bob"]["offsets"], json!([1, 2]));
    assert_eq!(undelivered["bob"]["channel"], "user:bob");
    assert_eq!(undelivered["carol"]["offsets"], json!([carol["offset"]]));
    assert_eq!(undelivered["carol"]["epoch"], carol["epoch"]);
    assert!(
        !undelivered.contains_key("ann"),
        "ann acknowledged (epoch {epoch})"
    );
    assert!(
        !undelivered.contains_key("dan"),
        "the JS client acknowledged"
    );
}

/// A Chromium tab whose JS client is subscribed to `user`'s personal channel, collecting what
/// it receives in `window.got`.
async fn js_subscriber(server: &TestServer, user: &str) -> (Browser, Tab) {
    let mut browser = Browser::launch().await.unwrap();
    let tab = browser
        .open(&format!("http://{}/", server.addr))
        .await
        .unwrap();
    let script = format!(
        "(async () => {{
            const {{ Tidings }} = await import('/tidings.js');
            window.got = [];
            const client = new Tidings({ws}, {{ token: {token} }});
            const subscribed = new Promise((resolve) => client.addEventListener('subscribed',
                (e) => {{ if (e.detail.channel === {channel}) resolve(e.detail.receipts); }}));
            client.subscribe({channel}, (pub) => {{ window.got.push(pub.data); }});
            return await subscribed;
        }})()",
        ws = json!(server.url("/ws")),
        token = json!(token(user)),
        channel = json!(format!("user:{user}")),
    );
    let receipts = browser.eval(&tab, &script).await.unwrap();
    assert_eq!(receipts, json!(true));
    (browser, tab)
}

#[tokio::test]
async fn receipts_report_what_no_connection_of_the_user_acknowledged() {
    receipts(None).await;
}

#[tokio::test]
async fn receipts_report_what_no_connection_of_the_user_acknowledged_with_redis() {
    let redis = RedisServer::start().await;
    receipts(Some(&redis)).await;
}
