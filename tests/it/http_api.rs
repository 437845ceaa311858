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
        ("/api/connections", json!({"user": "u"})),
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
        "/api/connections",
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

    // The busiest first (ties by name), paged by a cursor that holds the count.
    let busiest = json!({"order": "subscribers", "limit": 2});
    let first = ok(&a, "/api/channels", busiest).await;
    assert_eq!(
        first,
        json!({"channels": [{"channel": "room:1", "subscribers": 3},
                            {"channel": "lobby", "subscribers": 1}],
               "next_cursor": "1/lobby"})
    );
    let rest = json!({"order": "subscribers", "limit": 2, "cursor": "1/lobby"});
    let second = ok(&a, "/api/channels", rest).await;
    assert_eq!(
        second,
        json!({"channels": [{"channel": "room:2", "subscribers": 1}], "next_cursor": null})
    );
    for (body, wanted) in [
        (json!({"order": "subscribers", "cursor": "lobby"}), "cursor"),
        (json!({"order": "loudest"}), "loudest"),
    ] {
        let (status, error) = post(&a, "/api/channels", body).await;
        assert_eq!(status, 400, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(wanted), "{message}");
    }
}

/// A user's connections are found on every node, each with its transport and channels, and
/// the nodes by the names their operators gave them.
#[tokio::test]
async fn a_user_is_looked_up_on_every_node_with_their_channels() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = |name: &'static str| {
        vec![
            "--redis-url".to_owned(),
            url.clone(),
            "--api-key".into(),
            KEY.into(),
            "--token-hmac-secret".into(),
            SECRET.into(),
            "--node-name".into(),
            name.into(),
        ]
    };
    let (args_a, args_b) = (args("web-1"), args("web-2"));
    let a = TestServer::start(&args_a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let b = TestServer::start(&args_b.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut on_a = a.client(&format!("?token={}", token("u1"))).await;
    let mut on_b = b.client(&format!("?token={}", token("u1"))).await;
    let mut other = a.client(&format!("?token={}", token("u2"))).await;
    for client in [&mut on_a, &mut on_b, &mut other] {
        client.connected().await;
    }
    on_a.subscribe("news").await;
    on_a.subscribe("alerts").await;
    on_b.subscribe("news").await;
    other.subscribe("secret").await;

    // Node A learns of node B once B has announced itself (every 5 s).
    let found = within(WAIT * 2, "both nodes answer", async {
        loop {
            let found = ok(&a, "/api/connections", json!({"user": "u1"})).await;
            if found["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.len() == 2)
            {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(found["unanswered"], json!([]), "{found}");
    let nodes = found["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["name"], "web-1", "{found}");
    assert_eq!(nodes[1]["name"], "web-2", "{found}");
    assert_ne!(nodes[0]["node"], nodes[1]["node"], "{found}");
    for (node, channels) in [
        (&nodes[0], json!(["alerts", "news"])),
        (&nodes[1], json!(["news"])),
    ] {
        assert_eq!(node["total"], 1, "{found}");
        let connection = &node["connections"][0];
        assert_eq!(connection["transport"], "websocket", "{found}");
        assert_eq!(connection["channels"], channels, "{found}");
        assert_eq!(
            connection["subscriptions"],
            channels.as_array().unwrap().len()
        );
        assert!(connection["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let nobody = ok(&b, "/api/connections", json!({"user": "nobody"})).await;
    assert_eq!(nobody["nodes"], json!([]), "{nobody}");

    // The admin page's stats name every node too.
    let (status, text) = http_request(a.addr, "GET", "/admin/stats", AUTH, "").await;
    assert_eq!(status, 200, "{text}");
    let stats: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["node_name"], "web-1");
    let mut names: Vec<&str> = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["web-1", "web-2"]);

    ok(&b, "/api/disconnect", json!({"user": "u1"})).await;
    for client in [&mut on_a, &mut on_b] {
        assert!(matches!(
            client.ended(WAIT).await,
            Ended::Closed(Some((4501, _)))
        ));
    }
    // A closed connection leaves the registry as its session ends, just after the close.
    within(WAIT, "u1 gone from both nodes", async {
        while ok(&a, "/api/connections", json!({"user": "u1"})).await["nodes"] != json!([]) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    other.ok(json!({"op": "ping"})).await;
}

/// The admin page calls the API with the HTTP Basic credentials the browser remembers; a page
/// of another origin cannot make the browser do the same.
#[tokio::test]
async fn basic_credentials_reach_the_api_from_this_servers_pages_only() {
    use base64::Engine;
    let server = TestServer::start(&["--api-key", KEY]).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{KEY}"))
    );
    let own = format!("http://{}", server.addr);
    let body = json!({}).to_string();
    for (headers, status) in [
        (vec![], 200),
        (vec![("Origin", own.as_str())], 200),
        (
            vec![("Sec-Fetch-Site", "same-origin"), ("Origin", own.as_str())],
            200,
        ),
        (vec![("Origin", "http://evil.example")], 401),
        (
            vec![
                ("Sec-Fetch-Site", "cross-site"),
                ("Origin", "http://evil.example"),
            ],
            401,
        ),
        (vec![("Sec-Fetch-Site", "same-site")], 401),
    ] {
        let mut all = headers.clone();
        all.push(("Authorization", basic.as_str()));
        let (got, _, text) =
            crate::support::http_exchange(server.addr, "POST", "/api/channels", &all, &body).await;
        assert_eq!(got, status, "{headers:?}: {text}");
        if status == 401 {
            assert!(text.contains("this server's own pages"), "{text}");
        }
    }
    // The API key itself works from anywhere: it is not something a browser remembers.
    let apikey = format!("apikey {KEY}");
    let headers = [
        ("Origin", "http://evil.example"),
        ("Authorization", apikey.as_str()),
    ];
    let (got, _, text) =
        crate::support::http_exchange(server.addr, "POST", "/api/channels", &headers, &body).await;
    assert_eq!(got, 200, "{text}");
}
