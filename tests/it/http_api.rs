//! The server HTTP API for application backends, against the real binary (memory broker, and
//! two nodes on a real Redis for what must act on every node).

use std::time::Duration;

use serde_json::{Value, json};
use tidings::protocol::{Push, ServerFrame};

use crate::support::redis::RedisServer;
use crate::support::{Ended, TestServer, WAIT, WsClient, http_request, within};

const KEY: &str = "api-key-for-the-tests";
const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const AUTH: Option<&str> = Some("apikey api-key-for-the-tests");

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http_request(server.addr, "POST", path, AUTH, &body.to_string()).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body {text:?}"));
    (status, value)
}

async fn ok(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, value) = post(server, path, body.clone()).await;
    assert_eq!(status, 200, "{path} {body} → {value}");
    value
}

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn every_endpoint_checks_the_key_and_answers_errors_as_json() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let endpoints = [
        ("/api/publish", json!({"channel": "c", "data": 1})),
        ("/api/broadcast", json!({"channels": ["c"], "data": 1})),
        ("/api/history", json!({"channel": "c"})),
        ("/api/channels", json!({})),
        ("/api/subscribe", json!({"user": "u", "channel": "c"})),
        ("/api/unsubscribe", json!({"user": "u", "channel": "c"})),
        ("/api/disconnect", json!({"user": "u"})),
        ("/api/presence", json!({"channel": "chat:c"})),
        ("/api/presence_stats", json!({"channel": "chat:c"})),
    ];
    for (path, body) in endpoints {
        let body = body.to_string();
        for (auth, status, code) in [
            (None, 401, "unauthorized"),
            (Some("apikey wrong-key-of-some-length"), 401, "unauthorized"),
            (Some("Bearer api-key-for-the-tests"), 401, "unauthorized"),
        ] {
            let (got, text) = http_request(server.addr, "POST", path, auth, &body).await;
            assert_eq!(got, status, "{path} with {auth:?}: {text}");
            let error: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(error["error"]["code"], code, "{path}: {text}");
        }
        let (got, text) = http_request(server.addr, "POST", path, AUTH, "{not json").await;
        assert_eq!(got, 400, "{path}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["code"], "bad_request");
        let (got, text) = http_request(server.addr, "POST", path, AUTH, &body).await;
        assert_eq!(got, 200, "{path}: {text}");
    }
    let (status, body) = post(
        &server,
        "/api/publish",
        json!({"channel": "bad name", "data": 1}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = post(
        &server,
        "/api/publish",
        json!({"channel": "c", "data": 1, "idempotency_key": "has space"}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_a_key_the_api_is_off_but_documented() {
    let server = TestServer::start(&[]).await;
    let (status, text) = http_request(
        server.addr,
        "POST",
        "/api/publish",
        AUTH,
        r#"{"channel":"c","data":1}"#,
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("api_disabled"));
    let (status, _, body) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&body).expect("OpenAPI is JSON");
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/publish",
        "/api/broadcast",
        "/api/history",
        "/api/channels",
        "/api/subscribe",
        "/api/unsubscribe",
        "/api/disconnect",
        "/api/presence",
        "/api/presence_stats",
    ] {
        assert!(spec["paths"][path]["post"].is_object(), "{path} documented");
    }
    for hook in [
        "events",
        "proxyConnect",
        "proxySubscribe",
        "proxyPublish",
        "proxyRefresh",
    ] {
        assert!(
            spec["webhooks"][hook]["post"].is_object(),
            "{hook} documented"
        );
    }
}

#[tokio::test]
async fn publish_broadcast_and_history_reach_subscribers() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let mut client = server.client("").await;
    for channel in ["news", "a", "b"] {
        client.subscribe(channel).await;
    }
    let published = ok(
        &server,
        "/api/publish",
        json!({"channel": "news", "data": {"t": 1}}),
    )
    .await;
    assert_eq!(published["offset"], 1);
    let got = client.next_pub().await;
    assert_eq!((got.channel.as_str(), got.data), ("news", json!({"t": 1})));
    assert_eq!(&*got.info.user, "server");

    let result = ok(
        &server,
        "/api/broadcast",
        json!({"channels": ["a", "b"], "data": "both"}),
    )
    .await;
    assert_eq!(result["results"][0]["channel"], "a");
    assert_eq!(result["results"][1]["offset"], 1);
    let mut channels = vec![
        client.next_pub().await.channel,
        client.next_pub().await.channel,
    ];
    channels.sort();
    assert_eq!(channels, ["a", "b"]);

    let history = ok(
        &server,
        "/api/history",
        json!({"channel": "news", "limit": 10}),
    )
    .await;
    assert_eq!(history["publications"][0]["data"], json!({"t": 1}));
    assert_eq!(history["offset"], 1);
    let (status, body) = post(
        &server,
        "/api/history",
        json!({"channel": "news", "since": {"offset": 0, "epoch": "gone"}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("unrecoverable_position"))
    );
}

#[tokio::test]
async fn an_idempotent_publish_is_stored_once_under_20_concurrent_retries() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start(&["--redis-url", &url, "--api-key", KEY]).await;
    let b = TestServer::start(&["--redis-url", &url, "--api-key", KEY]).await;
    let mut watcher = b.client("").await;
    watcher.subscribe("orders").await;

    let body = json!({"channel": "orders", "data": {"order": 7}, "idempotency_key": "order-7"});
    let retries = (0..20).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = body.to_string();
        async move { http_request(node.addr, "POST", "/api/publish", AUTH, &body).await }
    });
    let answers = futures_util::future::join_all(retries).await;
    let offsets: Vec<Value> = answers
        .iter()
        .map(|(status, text)| {
            assert_eq!(*status, 200, "{text}");
            serde_json::from_str::<Value>(text).unwrap()["offset"].clone()
        })
        .collect();
    assert!(offsets.iter().all(|o| *o == json!(1)), "{offsets:?}");
    let history = ok(&a, "/api/history", json!({"channel": "orders"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
    assert_eq!(watcher.next_pub().await.offset, 1);

    // A client publish with a key is idempotent too; another key is a new publication.
    let mut client = a.client("").await;
    let publish = |key: &str| json!({"op": "publish", "channel": "orders", "data": "again", "idempotency_key": key});
    assert_eq!(client.ok(publish("k1")).await["offset"], 2);
    assert_eq!(client.ok(publish("k1")).await["offset"], 2);
    assert_eq!(client.ok(publish("k2")).await["offset"], 3);
    assert_eq!(watcher.next_pub().await.offset, 2);
    assert_eq!(watcher.next_pub().await.offset, 3);
}

async fn next_push(client: &mut WsClient) -> Push {
    match client.try_recv(WAIT).await {
        Ok(ServerFrame::Push(push)) => push,
        other => panic!("expected a push, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_unsubscribe_and_disconnect_act_on_every_node() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--api-key",
        KEY,
        "--token-hmac-secret",
        SECRET,
    ];
    let a = TestServer::start(&args).await;
    let b = TestServer::start(&args).await;
    let mut on_a = a.client(&format!("?token={}", token("u1"))).await;
    let mut on_b = b.client(&format!("?token={}", token("u1"))).await;
    let mut other = b.client(&format!("?token={}", token("u2"))).await;
    for client in [&mut on_a, &mut on_b, &mut other] {
        client.connected().await;
    }

    ok(
        &a,
        "/api/subscribe",
        json!({"user": "u1", "channel": "user:u1"}),
    )
    .await;
    for client in [&mut on_a, &mut on_b] {
        match next_push(client).await {
            Push::Subscribed(push) => assert_eq!(push.channel, "user:u1"),
            other => panic!("expected subscribed, got {other:?}"),
        }
    }
    ok(
        &b,
        "/api/publish",
        json!({"channel": "user:u1", "data": "for u1"}),
    )
    .await;
    assert_eq!(on_a.next_pub().await.data, json!("for u1"));
    assert_eq!(on_b.next_pub().await.data, json!("for u1"));

    ok(
        &b,
        "/api/unsubscribe",
        json!({"user": "u1", "channel": "user:u1"}),
    )
    .await;
    for client in [&mut on_a, &mut on_b] {
        match next_push(client).await {
            Push::Unsubscribed(push) => assert_eq!(push.channel, "user:u1"),
            other => panic!("expected unsubscribed, got {other:?}"),
        }
    }

    ok(
        &a,
        "/api/disconnect",
        json!({"user": "u1", "reason": "banned"}),
    )
    .await;
    for client in [&mut on_a, &mut on_b] {
        match client.ended(WAIT).await {
            Ended::Closed(Some((4501, reason))) => assert_eq!(reason, "banned"),
            other => panic!("expected 4501, got {other:?}"),
        }
    }
    // Another user on the same node is untouched.
    other.ok(json!({"op": "ping"})).await;
}

#[tokio::test]
async fn channels_are_listed_with_counts_from_every_node_and_paged() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start(&["--redis-url", &url, "--api-key", KEY]).await;
    let b = TestServer::start(&["--redis-url", &url, "--api-key", KEY]).await;
    let mut clients = Vec::new();
    for (node, channel) in [
        (&a, "room:1"),
        (&a, "room:1"),
        (&b, "room:1"),
        (&b, "room:2"),
        (&b, "lobby"),
    ] {
        let mut client = node.client("").await;
        client.subscribe(channel).await;
        clients.push(client);
    }
    // Other nodes' counts arrive with their next announcement (every 5 s).
    let listed = within(WAIT * 2, "node B's counts reach node A", async {
        loop {
            let page = ok(&a, "/api/channels", json!({"prefix": "room:"})).await;
            if page["channels"]
                == json!([
                    {"channel": "room:1", "subscribers": 3},
                    {"channel": "room:2", "subscribers": 1}
                ])
            {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(listed["next_cursor"], Value::Null);

    let first = ok(&a, "/api/channels", json!({"limit": 2})).await;
    assert_eq!(first["channels"][0]["channel"], "lobby");
    assert_eq!(first["next_cursor"], "room:1");
    let second = ok(&a, "/api/channels", json!({"limit": 2, "cursor": "room:1"})).await;
    assert_eq!(
        second["channels"],
        json!([{"channel": "room:2", "subscribers": 1}])
    );
    assert_eq!(second["next_cursor"], Value::Null);
}
