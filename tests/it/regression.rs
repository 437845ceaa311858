//! Bug-reproducing tests, one per defect, named `issue_<N>_…` after the issue that found it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::redis::RedisServer;
use crate::support::{Ended, TestServer, WAIT, WsClient, http_exchange, http_request, within};

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const KEY: &str = "api-key-for-the-tests";
const AUTH: Option<&str> = Some("apikey api-key-for-the-tests");

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signing a test token")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A server with a token key and the server API, logging at `level`.
async fn server(level: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--token-hmac-secret", SECRET, "--api-key", KEY];
    args.extend_from_slice(extra);
    TestServer::launch(&args, &[("TIDINGS_LOG", Some(level))])
        .await
        .expect("server starts")
}

/// `/api/channels`, as (channel, subscribers) pairs.
async fn channels(server: &TestServer) -> Vec<(String, u64)> {
    let (status, body) = http_request(server.addr, "POST", "/api/channels", AUTH, "{}").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| {
            let name = c["channel"].as_str().expect("name").to_owned();
            (name, c["subscribers"].as_u64().expect("count"))
        })
        .collect()
}

/// Waits until `/api/channels` lists exactly `expected`.
async fn channels_become(server: &TestServer, expected: &[(&str, u64)]) {
    let expected: Vec<(String, u64)> = expected
        .iter()
        .map(|(name, count)| ((*name).to_owned(), *count))
        .collect();
    within(WAIT, "the channel list to settle", async {
        while channels(server).await != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn connected_with(server: &TestServer, token: &str) -> (WsClient, Value) {
    let mut client = server.client(&format!("?token={token}")).await;
    let connected = serde_json::to_value(client.connected().await).expect("JSON");
    (client, connected)
}

#[tokio::test]
async fn issue_15_a_token_with_a_huge_exp_is_accepted_on_connect_and_refresh_without_a_panic() {
    let server = server("info", &[]).await;
    let huge = hs256(json!({"sub": "alice", "exp": u64::MAX}));

    let (mut by_query, connected) = connected_with(&server, &huge).await;
    let left = connected["expires_in_ms"].as_u64().expect("an expiry");
    assert!(
        left > 1 << 40 && left < 1 << 53,
        "clamped far ahead, and exact in JavaScript: {left}"
    );
    by_query.subscribe("room").await;

    let mut by_command = server.client("").await;
    let body = by_command.ok(json!({"op": "connect", "token": huge})).await;
    assert_eq!(body["user"], "alice");

    let short = hs256(json!({"sub": "alice", "exp": now() + 60}));
    let (mut refreshing, _) = connected_with(&server, &short).await;
    let body = refreshing.ok(json!({"op": "refresh", "token": huge})).await;
    assert!(body["expires_in_ms"].as_u64().expect("an expiry") > 1 << 40);
    refreshing.ok(json!({"op": "ping"})).await;
    by_query.ok(json!({"op": "ping"})).await;
    channels_become(&server, &[("room", 1)]).await;

    drop((by_query, by_command, refreshing));
    channels_become(&server, &[]).await;
    assert!(
        !server.logs().text().contains("panic"),
        "{}",
        server.logs().text()
    );
}

#[tokio::test]
async fn issue_15_a_panicking_session_releases_everything_and_spares_the_others() {
    let server = server("warn", &["--max-connections-per-user", "1"]).await;
    let victim = hs256(json!({"sub": "victim"}));
    let (mut doomed, connected) = connected_with(&server, &victim).await;
    let client_id = connected["client"].as_str().expect("client id").to_owned();
    doomed.subscribe("room").await;
    doomed.subscribe("only-the-doomed").await;
    let (mut bystander, _) = connected_with(&server, &hs256(json!({"sub": "bystander"}))).await;
    bystander.subscribe("room").await;
    channels_become(&server, &[("only-the-doomed", 1), ("room", 2)]).await;

    // Only a build with the fault-injection feature (the tests' own) knows this frame.
    doomed.send_text(r#"{"op":"fault-injection:panic"}"#).await;
    match doomed.ended(WAIT).await {
        Ended::Closed(Some((1011, _))) => {}
        other => panic!("expected close 1011, got {other:?}"),
    }
    channels_become(&server, &[("room", 1)]).await;
    let logs = server.logs().text();
    let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panic")).collect();
    assert_eq!(panics.len(), 1, "logged once: {logs}");
    assert!(panics[0].contains(&client_id), "names the client: {logs}");

    // The others did not notice, and the victim's place under the per-user cap is free.
    let (status, body) = http_request(
        server.addr,
        "POST",
        "/api/publish",
        AUTH,
        r#"{"channel":"room","data":"still here"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bystander.next_pub().await.data, json!("still here"));
    let (_again, connected) = connected_with(&server, &victim).await;
    assert_eq!(connected["user"], "victim");
}

#[tokio::test]
async fn issue_15_readyz_turns_503_while_redis_is_frozen_and_200_after() {
    let redis = RedisServer::start().await;
    let node = TestServer::start(&["--redis-url", &redis.url()]).await;
    assert_eq!(node.get("/readyz").await.0, 200);

    redis.freeze();
    let (_, _, body) = within(Duration::from_secs(5), "readyz says 503", async {
        loop {
            let response = node.get("/readyz").await;
            if response.0 == 503 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(body.contains("not ready"), "{body}");

    redis.thaw();
    within(WAIT, "readyz says 200 again", async {
        while node.get("/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn issue_15_an_api_request_whose_body_never_arrives_gets_408() {
    let server = server("warn", &["--body-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"chan",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut response = String::new();
    within(
        Duration::from_secs(5),
        "the 408",
        stream.read_to_string(&mut response),
    )
    .await
    .expect("read");
    let elapsed = started.elapsed();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""code":"body_timeout""#), "{response}");
    assert!(elapsed >= Duration::from_millis(900), "waited {elapsed:?}");
}

#[tokio::test]
async fn issue_15_trace_logs_never_show_a_token_or_the_api_key() {
    let server = server("trace", &["--namespace", "vault:subscribe=token"]).await;
    let in_query = hs256(json!({"sub": "spy", "exp": now() + 600}));
    let in_connect = hs256(json!({"sub": "spy", "exp": now() + 601}));
    let in_refresh = hs256(json!({"sub": "spy", "exp": now() + 602}));
    let in_subscribe = hs256(json!({"sub": "spy", "channel": "vault:gold"}));

    let (mut first, _) = connected_with(&server, &in_query).await;
    first
        .ok(json!({"op": "refresh", "token": in_refresh}))
        .await;
    first
        .ok(json!({"op": "subscribe", "channel": "vault:gold", "token": in_subscribe}))
        .await;
    let mut second = server.client("").await;
    second
        .ok(json!({"op": "connect", "token": in_connect}))
        .await;
    channels(&server).await;
    drop((first, second));
    server.logs().wait_for("connection closed", WAIT).await;

    let logs = server.logs().text();
    assert!(logs.contains(" TRACE "), "trace lines are logged at all");
    for secret in [&in_query, &in_connect, &in_refresh, &in_subscribe] {
        let signature = secret.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a token reached the log");
    }
    assert!(!logs.contains(KEY), "the API key reached the log");
    assert!(!logs.contains(SECRET), "the HMAC secret reached the log");
}

#[tokio::test]
async fn issue_15_fractional_time_claims_are_accepted() {
    let server = server("warn", &[]).await;
    let at = now() as f64;
    let token = hs256(json!({"sub": "u", "exp": at + 600.5, "nbf": at - 0.5, "iat": at - 0.25}));
    let (mut client, connected) = connected_with(&server, &token).await;
    let left = connected["expires_in_ms"].as_u64().expect("an expiry");
    assert!((590_000..=601_000).contains(&left), "{left}");
    let body = client
        .ok(json!({"op": "refresh", "token": hs256(json!({"sub": "u", "exp": at + 900.75}))}))
        .await;
    assert!(body["expires_in_ms"].as_u64().expect("an expiry") > 890_000);
    let soon = hs256(json!({"sub": "u", "nbf": at + 60.5}));
    let mut early = server.client(&format!("?token={soon}")).await;
    match early.try_recv(WAIT).await {
        Err(Ended::Closed(Some((1008, reason)))) => assert!(reason.contains("not valid yet")),
        other => panic!("expected 1008, got {other:?}"),
    }
}

#[tokio::test]
async fn issue_15_rust_log_sets_the_level_unless_a_flag_does() {
    let debug = TestServer::launch(&[], &[("RUST_LOG", Some("debug"))])
        .await
        .expect("server starts");
    debug.logs().wait_for("open-files limit", WAIT).await;

    let flagged = TestServer::launch(&["--log", "info"], &[("RUST_LOG", Some("debug"))])
        .await
        .expect("server starts");
    flagged.logs().wait_for("tidings started", WAIT).await;
    assert!(
        !flagged.logs().text().contains("open-files limit"),
        "--log wins over RUST_LOG"
    );
}

// --- issue 22: amplification (items 1–4) and trust (items 5–9, 12) ---

/// One anonymous connection that subscribes to and leaves `channel(n)` for n = 0, 1, 2…, at
/// just under the default command rate (2,000 commands a second), until `until`, counting the
/// channels it went through in `names`.
async fn churn(
    url: String,
    channel: impl Fn(u64) -> String,
    until: Instant,
    names: Arc<AtomicU64>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let (mut sink, mut stream) = socket.split();
    // Replies are read (and dropped) so that the churner is never a slow consumer.
    let reader = tokio::spawn(async move {
        let mut closed = None;
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(frame) = message {
                closed = frame.map(|f| u16::from(f.code));
            }
        }
        closed
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    while Instant::now() < until {
        tick.tick().await;
        // 9 names a tick: 18 commands per 10 ms.
        for _ in 0..9 {
            let channel = channel(n);
            for op in ["subscribe", "unsubscribe"] {
                let command = json!({"op": op, "channel": channel}).to_string();
                sink.feed(Message::text(command)).await.expect("send");
            }
            n += 1;
        }
        sink.flush().await.expect("flush");
        names.fetch_add(9, Ordering::Relaxed);
    }
    sink.close().await.ok();
    let closed = within(WAIT, "the churner's close", reader).await.unwrap();
    assert!(
        closed.is_none_or(|code| code == 1000),
        "the churner was closed with {closed:?}"
    );
}

/// Four churners for `seconds`, counting the channel names they go through in `names`.
fn churn_four(
    server: &TestServer,
    tag: &str,
    seconds: f64,
    names: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    (0..4)
        .map(|n| {
            let url = server.url(&format!("/ws?name=churner{n}"));
            let prefix = format!("{tag}{n}");
            let unique = move |i| format!("{prefix}-{i}");
            tokio::spawn(churn(url, unique, until, names.clone()))
        })
        .collect()
}

/// A node with webhooks to `receiver`, tokens and anonymous connections, on `redis` if given.
async fn webhook_node(
    receiver: &crate::support::webhook::Receiver,
    redis: Option<&RedisServer>,
) -> TestServer {
    let url = receiver.url();
    let redis_url = redis.map(RedisServer::url);
    let mut args = vec![
        "--webhook-url",
        &url,
        "--webhook-secret",
        crate::support::webhook::WEBHOOK_SECRET,
        "--allow-anonymous",
    ];
    if let Some(redis_url) = &redis_url {
        args.extend(["--redis-url", redis_url]);
    }
    server("info", &args).await
}

/// Redis's own figure for the memory it uses, in bytes.
async fn redis_memory(redis: &RedisServer) -> u64 {
    let info = redis.command("INFO memory").await;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory in INFO")
}

async fn churn_costs_little_and_leaves_no_position(redis: Option<RedisServer>) {
    let receiver = crate::support::webhook::Receiver::start().await;
    // The receiver is down: whatever is queued stays queued.
    receiver.down.store(true, Ordering::SeqCst);
    let server = webhook_node(&receiver, redis.as_ref()).await;

    // A client sees a channel nobody publishes to, and leaves.
    let mut quiet = server.client("?name=quiet").await;
    let seen = quiet.subscribe("quiet-room").await;
    drop(quiet);

    let rss = server.rss_kib();
    let redis_before = match &redis {
        Some(redis) => redis_memory(redis).await,
        None => 0,
    };
    let names = Arc::new(AtomicU64::new(0));
    for churner in churn_four(&server, "churn", 3.0, &names) {
        churner.await.unwrap();
    }
    let names = names.load(Ordering::Relaxed);
    assert!(
        names > 8_000,
        "the churners went through only {names} names"
    );
    let grown_kib = server.rss_kib().saturating_sub(rss);
    // Before the fix, each name kept a position and queued two events: about 15 MB here.
    assert!(
        grown_kib < 6 * 1024,
        "{names} names grew the node by {grown_kib} KiB"
    );
    let metrics = crate::metrics::scrape(server.addr).await;
    let budget = r#"tidings_webhook_events_dropped_total{reason="budget"}"#;
    assert!(metrics[budget] > 0.0, "{metrics:?}");
    assert!(
        metrics["tidings_webhook_queue_size"] <= 10_000.0,
        "{metrics:?}"
    );
    if let Some(redis) = &redis {
        let grown = redis_memory(redis).await.saturating_sub(redis_before);
        assert!(grown < 4 << 20, "{names} names grew Redis by {grown} bytes");
        let positions = redis
            .command("EVAL \"return #redis.call('KEYS', '*:meta')\" 0")
            .await;
        assert_eq!(
            positions.trim(),
            ":0",
            "positions kept for unpublished channels"
        );
    }

    // Back from the quiet channel: nothing was missed.
    let mut back = server.client("?name=quiet").await;
    let again = back
        .ok(json!({"op": "subscribe", "channel": "quiet-room",
                   "since": {"offset": 0, "epoch": seen["epoch"]}}))
        .await;
    assert_eq!(again["recovered"], true, "{again}");
    assert_eq!(again["publications"], json!([]));
}

#[tokio::test]
async fn issue_22_channel_churn_keeps_no_position_and_cannot_fill_the_webhook_queue() {
    churn_costs_little_and_leaves_no_position(None).await;
}

#[tokio::test]
async fn issue_22_channel_churn_keeps_no_position_and_cannot_fill_the_webhook_queue_in_redis() {
    churn_costs_little_and_leaves_no_position(Some(RedisServer::start().await)).await;
}

async fn user_online_comes_in_time_during_churn(redis: Option<RedisServer>) {
    let receiver = crate::support::webhook::Receiver::start().await;
    // A backend that takes 50 ms to take a batch: 2,000 events a second at most.
    receiver.latency_ms.store(50, Ordering::SeqCst);
    let server = webhook_node(&receiver, redis.as_ref()).await;
    let names = Arc::new(AtomicU64::new(0));
    let churners = churn_four(&server, "flood", 4.0, &names);
    // Two seconds into the flood (at the churners' rate), a real user comes.
    within(WAIT, "the flood to be under way", async {
        while names.load(Ordering::Relaxed) < 7_200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = Instant::now();
    let token = hs256(json!({"sub": "ursula"}));
    let mut ursula = server.client(&format!("?token={token}")).await;
    ursula.connected().await;
    receiver
        .wait_for("ursula's user_online", |event| {
            event["type"] == "user_online" && event["user"] == "ursula"
        })
        .await;
    let late = started.elapsed();
    for churner in churners {
        churner.await.unwrap();
    }
    assert!(late < Duration::from_secs(1), "user_online took {late:?}");
}

#[tokio::test]
async fn issue_22_a_user_online_reaches_the_receiver_within_a_second_during_churn() {
    user_online_comes_in_time_during_churn(None).await;
}

#[tokio::test]
async fn issue_22_a_user_online_reaches_the_receiver_within_a_second_during_churn_in_redis() {
    user_online_comes_in_time_during_churn(Some(RedisServer::start().await)).await;
}

/// A backend whose `rpc` answers are endless (`endless`: chunks forever) or huge (`huge`: a
/// declared 200 MB, streamed).
async fn flooding_backend() -> std::net::SocketAddr {
    use axum::body::{Body, Bytes};
    use axum::routing::post;
    let chunk = Bytes::from(vec![b' '; 64 << 10]);
    let app = axum::Router::new().route(
        "/rpc",
        post(move |axum::Json(call): axum::Json<Value>| {
            let chunk = chunk.clone();
            async move {
                let chunks = futures_util::stream::repeat_with(move || {
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                let mut response = axum::response::Response::builder().status(200);
                let body = if call["method"] == "huge" {
                    response = response.header("content-length", (200u64 << 20).to_string());
                    Body::from_stream(futures_util::StreamExt::take(chunks, 3200))
                } else {
                    Body::from_stream(chunks)
                };
                response.body(body).unwrap()
            }
        }),
    );
    crate::support::serve_app(app).await
}

#[tokio::test]
async fn issue_22_a_backend_answer_is_read_only_up_to_its_bound() {
    let backend = flooding_backend().await;
    let url = format!("http://{backend}/rpc");
    let server = server("info", &["--allow-anonymous", "--proxy-rpc", &url]).await;
    let mut client = server.client("?name=caller").await;
    client.connected().await;
    let before = server.rss_kib();
    for method in ["endless", "huge", "endless"] {
        let code = client
            .error_code(json!({"op": "rpc", "method": method}))
            .await;
        assert_eq!(code, 502, "{method}");
    }
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 20 << 10, "the answers grew the node by {grown} KiB");
    let failures = crate::metrics::scrape(server.addr).await;
    let garbage = r#"tidings_proxy_errors_total{error="garbage",kind="rpc"}"#;
    assert_eq!(failures[garbage], 3.0, "{failures:?}");
}

/// A backend (connect, rpc, webhook) that answers every call with a redirect to `target`.
async fn redirecting_backend(target: std::net::SocketAddr) -> std::net::SocketAddr {
    use axum::routing::post;
    let redirect = move |status: u16, path: &'static str| {
        post(move || async move {
            axum::response::Response::builder()
                .status(status)
                .header("location", format!("http://{target}{path}"))
                .body(axum::body::Body::empty())
                .unwrap()
        })
    };
    let app = axum::Router::new()
        .route("/connect", redirect(307, "/connect"))
        .route("/rpc", redirect(302, "/rpc"))
        .route("/hook", redirect(307, "/hook"));
    crate::support::serve_app(app).await
}

#[tokio::test]
async fn issue_22_redirects_from_the_backend_and_the_webhook_receiver_are_not_followed() {
    use axum::routing::any;
    use std::sync::atomic::AtomicUsize;
    // Whoever a redirect points to: it would make anyone `redirect-user`.
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let target = axum::Router::new().fallback(any(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"result": {"user": "redirect-user", "data": "from elsewhere"}}))
        }
    }));
    let target = crate::support::serve_app(target).await;
    let backend = redirecting_backend(target).await;
    let (connect, rpc, hook) = (
        format!("http://{backend}/connect"),
        format!("http://{backend}/rpc"),
        format!("http://{backend}/hook"),
    );
    let server = server(
        "info",
        &[
            "--proxy-connect",
            &connect,
            "--proxy-rpc",
            &rpc,
            "--proxy-header",
            "Cookie",
            "--webhook-url",
            &hook,
            "--webhook-secret",
            crate::support::webhook::WEBHOOK_SECRET,
        ],
    )
    .await;

    // A connection the backend would decide: a redirect decides nothing (4006).
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/ws"),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", "session=abc".parse().unwrap());
    let mut cookie = WsClient::connect_request(request, None).await.unwrap();
    match cookie.ended(WAIT).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4006),
        other => panic!("expected close 4006, got {other:?}"),
    }

    // A token user's rpc: 502; its user_online webhook: retried, never sent elsewhere.
    let token = hs256(json!({"sub": "ann"}));
    let mut ann = server.client(&format!("?token={token}")).await;
    assert_eq!(ann.connected().await.user, "ann");
    let code = ann.error_code(json!({"op": "rpc", "method": "m"})).await;
    assert_eq!(code, 502);
    crate::metrics::await_metric(server.addr, "tidings_webhook_retries_total", 1.0).await;
    assert_eq!(reached.load(Ordering::SeqCst), 0, "a redirect was followed");
    server
        .logs()
        .wait_for("a redirect, which is never followed", WAIT)
        .await;
}

#[tokio::test]
async fn issue_22_repeated_forwarded_headers_are_one_value_in_the_call_and_its_json() {
    use axum::http::HeaderMap;
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/rpc",
        post(
            move |headers: HeaderMap, axum::Json(call): axum::Json<Value>| {
                let record = record.clone();
                async move {
                    let http: Vec<String> = ["cookie", "x-tag"]
                        .iter()
                        .map(|name| {
                            let values: Vec<_> = headers
                                .get_all(*name)
                                .iter()
                                .map(|v| v.to_str().unwrap().to_owned())
                                .collect();
                            values.join("|")
                        })
                        .collect();
                    record.lock().unwrap().push((http, call["headers"].clone()));
                    axum::Json(json!({"result": {"data": null}}))
                }
            },
        ),
    );
    let backend = crate::support::serve_app(app).await;
    let url = format!("http://{backend}/rpc");
    let server = server(
        "info",
        &[
            "--allow-anonymous",
            "--proxy-rpc",
            &url,
            "--proxy-header",
            "Cookie,X-Tag",
        ],
    )
    .await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/ws?name=two-cookies"),
        )
        .unwrap();
    let headers = request.headers_mut();
    for (name, value) in [
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("x-tag", "one"),
        ("x-tag", "two"),
    ] {
        headers.append(name, value.parse().unwrap());
    }
    let mut client = WsClient::connect_request(request, None).await.unwrap();
    client.connected().await;
    client.ok(json!({"op": "rpc", "method": "m"})).await;
    let (http, json) = seen.lock().unwrap()[0].clone();
    assert_eq!(http, ["a=1; b=2", "one, two"], "one HTTP value each");
    assert_eq!(json, json!({"cookie": "a=1; b=2", "x-tag": "one, two"}));
}

/// Redis's count of the bytes it wrote: replies, and what pub/sub delivered to the nodes.
async fn redis_traffic(redis: &RedisServer) -> u64 {
    let info = redis.command("INFO stats").await;
    info.lines()
        .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .expect("traffic figures in INFO stats")
}

#[tokio::test]
async fn issue_22_made_up_stream_sessions_cannot_flood_the_nodes() {
    use crate::support::streams::StreamClient;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--allow-anonymous", "--redis-url", &url];
    let (a, b) = (server("info", &args).await, server("info", &args).await);
    let base = |server: &TestServer| format!("http://{}", server.addr);
    let mut real = StreamClient::open(&base(&a), "name=real").await.unwrap();
    real.next_with("connected").await;
    let session = real.session.clone();
    let (node, secret) = session.split_once('.').expect("NODE.SECRET");
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let off_by_one = format!("{node}.{}{last}", &secret[..secret.len() - 1]);
    let made_up = format!("{:016x}.{}", 0xdead_beef_u64, "ab".repeat(16));

    // Another address floods both nodes with both kinds of id, 50 commands of 1 KB a request.
    let bulk = json!({"op": "publish", "channel": "x", "data": "y".repeat(1000)});
    let commands: Vec<Value> = (0..50).map(|_| bulk.clone()).collect();
    let flooder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let before = redis_traffic(&redis).await;
    let until = Instant::now() + Duration::from_secs(3);
    let floods: Vec<_> = [&a, &b]
        .into_iter()
        .flat_map(|node| {
            [
                (base(node), made_up.clone()),
                (base(node), off_by_one.clone()),
            ]
        })
        .map(|(target, id)| {
            let (client, body) = (
                flooder.clone(),
                json!({"session": id, "commands": commands}),
            );
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                while Instant::now() < until {
                    let sent = client
                        .post(format!("{target}/stream"))
                        .body(body.to_string())
                        .send()
                        .await;
                    *statuses
                        .entry(sent.map_or(0, |r| r.status().as_u16()))
                        .or_default() += 1;
                }
                statuses
            })
        })
        .collect();

    // Meanwhile the real session's commands, sent to the other node, get through.
    let mut served = 0;
    while Instant::now() < until {
        let reply = real
            .ok(json!({"op": "publish", "channel": "real-room", "data": served}))
            .await;
        assert_eq!(reply["offset"], served + 1);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for flood in floods {
        for (status, count) in flood.await.unwrap() {
            *statuses.entry(status).or_default() += count;
        }
    }
    let traffic = redis_traffic(&redis).await - before;
    assert!(
        served >= 10,
        "the real session got {served} commands through"
    );
    assert!(statuses.get(&429).is_some_and(|&n| n > 0), "{statuses:?}");
    assert!(statuses.get(&404).is_some_and(|&n| n > 0), "{statuses:?}");
    assert!(
        traffic < 1 << 20,
        "the flood ({statuses:?}) moved {traffic} bytes through Redis"
    );
}

#[tokio::test]
async fn issue_22_join_leave_churn_costs_each_member_a_few_frames_a_second() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = server("info", &["--allow-anonymous"]).await;
    // 200 members of a chat room (join-leave=user). Each counts the presence frames between
    // `late`'s join and its leave, and says whether the join came on its own.
    let (batched, mass_join_flushed) = tokio::sync::oneshot::channel::<()>();
    let mut batched = Some(batched);
    let mut readers = Vec::new();
    for n in 0..200 {
        let mut member = server.client(&format!("?name=member{n}")).await;
        member.subscribe("chat:room").await;
        let mut socket = member.ws;
        let mut flushed = if n == 0 { batched.take() } else { None };
        readers.push(tokio::spawn(async move {
            let (mut join, mut frames) = (None, 0u64);
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let single = text.starts_with("{\"join\"") || text.starts_with("{\"leave\"");
                let batch = text.starts_with("{\"presence_batch\"");
                if batch {
                    flushed.take().map(|flushed| flushed.send(()));
                }
                if !single && !batch {
                    continue;
                }
                let late = text.contains("\"late\"");
                match join {
                    None if late => join = Some(single),
                    None => {}
                    Some(_) if late => return (join, frames + 1),
                    Some(_) => frames += 1,
                }
            }
            (join, frames)
        }));
    }
    // The members' own joins came batched past the room's budget; once that batch is out,
    // the budget is back and an ordinary join reaches the others one by one.
    within(WAIT, "the members' joins", mass_join_flushed)
        .await
        .unwrap();
    let mut late = server.client("?name=late").await;
    late.subscribe("chat:room").await;

    // One anonymous connection joins and leaves the room at the default command rate.
    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let url = server.url("/ws?name=churner");
    let rounds = Arc::new(AtomicU64::new(0));
    churn(url, |_| "chat:room".into(), until, rounds.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let changes = 2 * rounds.load(Ordering::Relaxed);
    // Everything the churn caused reaches the members before `late`'s leave does.
    late.ok(json!({"op": "unsubscribe", "channel": "chat:room"}))
        .await;
    let mut most = 0;
    for reader in readers {
        let (join, frames) = within(WAIT, "late's leave", reader).await.unwrap();
        assert_eq!(join, Some(true), "late's join came on its own");
        most = most.max(frames);
    }
    assert!(changes > 5_000, "the churner made only {changes} changes");
    let per_second = most as f64 / elapsed;
    assert!(
        per_second <= 20.0,
        "{changes} changes cost a member {most} frames in {elapsed:.1} s"
    );
}

/// The next join or leave `client` gets: (join?, user, authenticated).
async fn next_presence(client: &mut WsClient) -> (bool, String, bool) {
    use tidings::protocol::Push;
    loop {
        match client.next_push().await {
            Push::Join(change) => {
                return (
                    true,
                    change.info.user.to_string(),
                    change.info.authenticated,
                );
            }
            Push::Leave(change) => {
                return (
                    false,
                    change.info.user.to_string(),
                    change.info.authenticated,
                );
            }
            _ => {}
        }
    }
}

async fn merges_no_identities(redis: Option<RedisServer>) {
    let redis_url = redis.as_ref().map(RedisServer::url);
    let mut args = vec!["--allow-anonymous"];
    if let Some(url) = &redis_url {
        args.extend(["--redis-url", url]);
    }
    let server = server("info", &args).await;
    let (mut observer, _) = connected_with(&server, &hs256(json!({"sub": "olga"}))).await;
    observer.subscribe("chat:mixed").await;
    assert_eq!(
        next_presence(&mut observer).await,
        (true, "olga".into(), true)
    );
    let (mut alice, _) = connected_with(&server, &hs256(json!({"sub": "alice"}))).await;
    alice.subscribe("chat:mixed").await;
    assert_eq!(
        next_presence(&mut observer).await,
        (true, "alice".into(), true)
    );

    // Somebody without a token calls themselves alice: another person, with their own join.
    let mut namesake = server.client("?name=alice").await;
    namesake.subscribe("chat:mixed").await;
    assert_eq!(
        next_presence(&mut observer).await,
        (true, "alice".into(), false)
    );
    let stats = observer
        .ok(json!({"op": "presence_stats", "channel": "chat:mixed"}))
        .await;
    assert_eq!(stats, json!({"clients": 3, "users": 3}));

    // The real alice leaves: her leave is not hidden by the namesake who stays.
    alice
        .ok(json!({"op": "unsubscribe", "channel": "chat:mixed"}))
        .await;
    assert_eq!(
        next_presence(&mut observer).await,
        (false, "alice".into(), true)
    );
    drop(namesake);
    assert_eq!(
        next_presence(&mut observer).await,
        (false, "alice".into(), false)
    );
}

#[tokio::test]
async fn issue_22_an_anonymous_namesake_is_not_merged_with_the_authenticated_user() {
    merges_no_identities(None).await;
}

#[tokio::test]
async fn issue_22_an_anonymous_namesake_is_not_merged_with_the_authenticated_user_in_redis() {
    merges_no_identities(Some(RedisServer::start().await)).await;
}

/// Sends a raw HTTP/1.1 GET with `headers` and returns the status and the head of the answer
/// (streams never end, so only the head is read), and the connection, still open.
async fn get_head(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, TcpStream) {
    within(WAIT, "a response head", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, stream)
    })
    .await
}

/// The cookie the connect proxy saw on its next call.
async fn asked(seen: &std::sync::Mutex<Vec<Option<String>>>) -> Option<String> {
    within(WAIT, "the backend's connect call", async {
        loop {
            if let Some(cookie) = seen.lock().unwrap().pop() {
                return cookie;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A connect proxy that lets in whoever brings `session=ok`, recording the cookies it sees.
async fn cookie_backend(seen: Arc<std::sync::Mutex<Vec<Option<String>>>>) -> String {
    use axum::http::HeaderMap;
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/connect",
        post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let cookie = headers
                    .get("cookie")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let admitted = cookie.as_deref() == Some("session=ok");
                seen.lock().unwrap().push(cookie);
                axum::Json(if admitted {
                    json!({"result": {"user": "cookie-user"}})
                } else {
                    json!({"error": {"code": 1401, "message": "log in first"}})
                })
            }
        }),
    );
    format!("http://{}/connect", crate::support::serve_app(app).await)
}

#[tokio::test]
async fn issue_22_any_origin_reads_as_anyone_but_never_with_the_cookies() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connect = cookie_backend(seen.clone()).await;
    let server = server(
        "info",
        &[
            "--allowed-origin",
            "*",
            "--allowed-origin",
            "https://app.test",
            "--allow-anonymous",
            "--proxy-connect",
            &connect,
            "--proxy-header",
            "Cookie",
        ],
    )
    .await;
    let cookie = ("Cookie", "session=ok");

    // A listed origin reads with its cookies: the backend sees them and lets the user in.
    let (status, head, _listed) = get_head(
        server.addr,
        "/sse?channel=news",
        &[("Origin", "https://app.test"), cookie],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.test"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    assert_eq!(asked(&seen).await, Some("session=ok".into()));

    // Any other origin, let in by `*`: a literal `*`, no credentials, no cookie forwarded.
    let (status, head, _any) = get_head(
        server.addr,
        "/sse?channel=news",
        &[("Origin", "https://evil.test"), cookie],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("access-control-allow-credentials"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert_eq!(asked(&seen).await, None, "the cookie was forwarded");

    // The same for a WebSocket.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/ws"),
        )
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", "https://evil.test".parse().unwrap());
    headers.insert("cookie", "session=ok".parse().unwrap());
    let _socket = WsClient::connect_request(request, None).await.unwrap();
    assert_eq!(asked(&seen).await, None, "the cookie was forwarded");
}

#[tokio::test]
async fn issue_22_a_cross_site_or_navigation_request_cannot_open_a_stream_as_the_cookie_user() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connect = cookie_backend(seen.clone()).await;
    let server = server(
        "info",
        &["--proxy-connect", &connect, "--proxy-header", "Cookie"],
    )
    .await;
    let cookie = ("Cookie", "session=ok");
    for (site, mode) in [
        ("cross-site", "no-cors"),
        ("cross-site", "cors"),
        ("none", "navigate"),
        ("same-site", "no-cors"),
    ] {
        let fetch = [cookie, ("Sec-Fetch-Site", site), ("Sec-Fetch-Mode", mode)];
        for path in ["/sse?channel=news", "/stream?channel=news"] {
            let (status, head, _) = get_head(server.addr, path, &fetch).await;
            assert_eq!(status, 403, "{site} {mode} {path}: {head}");
        }
    }
    assert!(seen.lock().unwrap().is_empty(), "the backend was asked");
    // A page of the server itself, and a client outside any browser, open it.
    for headers in [
        vec![
            cookie,
            ("Sec-Fetch-Site", "same-origin"),
            ("Sec-Fetch-Mode", "cors"),
        ],
        vec![cookie],
    ] {
        let (status, head, _) = get_head(server.addr, "/sse?channel=news", &headers).await;
        assert_eq!(status, 200, "{headers:?}: {head}");
    }
}

// --- issue 22: operators (items 10, 11, 13, 14, 15) ---

#[tokio::test]
async fn issue_22_a_time_claim_that_is_not_a_number_makes_the_token_malformed() {
    let server = server("warn", &[]).await;
    let at = now();
    for claim in ["exp", "nbf", "iat"] {
        for value in [json!(null), json!("soon"), json!(true)] {
            let mut claims = json!({"sub": "mallory"});
            claims[claim] = value.clone();
            let token = hs256(claims);
            let mut by_query = server.client(&format!("?token={token}")).await;
            match by_query.try_recv(WAIT).await {
                Err(Ended::Closed(Some((1008, reason)))) => {
                    assert!(reason.contains("claims"), "{claim}: {value}: {reason}");
                }
                other => panic!("{claim}: {value}: expected 1008, got {other:?}"),
            }
            let mut by_command = server.client("").await;
            by_command
                .send_json(&json!({"id": 1, "op": "connect", "token": token}))
                .await;
            match by_command.ended(WAIT).await {
                Ended::Closed(Some((1008, _))) => {}
                other => panic!("{claim}: {value} by connect: expected 1008, got {other:?}"),
            }
        }
    }
    // Numbers, whole or fractional, still do.
    let token = hs256(json!({"sub": "u", "exp": at + 60, "nbf": at - 1, "iat": at as f64 - 0.5}));
    let (_, connected) = connected_with(&server, &token).await;
    assert_eq!(connected["user"], "u");
}

/// Runs `tidings ARGS…` to its end with exactly the `TIDINGS_*` variables given (none of the
/// test runner's); returns its exit code and stderr. One that starts listening instead fails
/// the test at the time limit.
async fn tidings_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, stdout, stderr) = tidings_output(args, env).await;
    assert!(
        !stdout.contains("listening on"),
        "{args:?} started: {stdout}"
    );
    (code, stderr)
}

/// `tidings ARGS…` run to its end as [`tidings_exit`] runs it: exit code, stdout, stderr.
async fn tidings_output(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    for (name, _) in std::env::vars_os() {
        let inherited = name.to_string_lossy();
        if inherited.starts_with("TIDINGS_") || inherited == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    let output = within(
        WAIT,
        &format!("tidings {args:?} with {env:?} to exit"),
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("running tidings");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TOML file of its own under the test binary's temporary directory.
fn toml_file(tag: &str, text: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "issue-22-{tag}-{}-{:x}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, text).expect("write the file");
    path.display().to_string()
}

/// For each setting, a mistake: its TOML value, and its text as a flag and a variable where the
/// mistake is one of value rather than of TOML type (`None`).
fn mistake_of(key: &str) -> (&'static str, Option<&'static str>) {
    match key {
        "listen" => ("\"8000\"", Some("8000")),
        "enable-echo" | "compression" | "redis-cluster" => ("\"yes\"", Some("maybe")),
        "max-message-size" => ("\"0\"", Some("0")),
        "max-queue-size" => ("1024", Some("1024")),
        "compression-min-size" => ("\"lots\"", Some("lots")),
        "redis-url" => ("\"127.0.0.1:6379\"", Some("127.0.0.1:6379")),
        "redis-replica-acks" | "history-size" => ("-1", Some("-1")),
        "max-connections" | "max-connections-per-user" | "max-connections-per-ip" => {
            ("-1", Some("-1"))
        }
        "redis-tls-ca" => ("\"/nonexistent/ca.pem\"", Some("/nonexistent/ca.pem")),
        "redis-tls-cert" => ("\"/nonexistent/c.pem\"", Some("/nonexistent/c.pem")),
        "redis-tls-key" => ("\"/nonexistent/k.pem\"", Some("/nonexistent/k.pem")),
        "shutdown-timeout" | "drain-window" | "token-leeway" | "webhook-offline-grace" => {
            ("\"200years\"", Some("200years"))
        }
        "token-hmac-secret" | "api-key" => ("\"short\"", Some("short")),
        "token-public-key" => ("[\"/nonexistent/key.pem\"]", Some("/nonexistent/key.pem")),
        "token-jwks" => ("\"/nonexistent/jwks.json\"", Some("/nonexistent/jwks.json")),
        "allow-anonymous" => ("false", Some("false")),
        "channel-rule" => ("\"subscribe=nobody\"", Some("subscribe=nobody")),
        "namespace" => (
            "{ room = { presence = \"maybe\" } }",
            Some("room:presence=maybe"),
        ),
        "max-subscriptions" | "publish-rate" | "publish-burst" | "command-rate"
        | "command-burst" => ("0", Some("0")),
        "ping-interval"
        | "pong-timeout"
        | "redis-canary-interval"
        | "history-ttl"
        | "position-ttl"
        | "handshake-timeout"
        | "body-timeout"
        | "proxy-timeout"
        | "idempotency-window" => ("\"0s\"", Some("0s")),
        "idle-timeout" => ("\"soon\"", Some("soon")),
        "presence-ttl" => ("\"500ms\"", Some("500ms")),
        "proxy-connect" => ("\"http://exa mple/\"", Some("http://exa mple/")),
        "proxy-rpc" => ("\"ftp://h/x\"", Some("ftp://h/x")),
        "proxy-subscribe" => ("\"http://[::1/x\"", Some("http://[::1/x")),
        "proxy-publish" => ("\"http://\"", Some("http://")),
        "proxy-refresh" => ("\"https://exa mple/\"", Some("https://exa mple/")),
        "proxy-header" => ("[\"Bad Header\"]", Some("Bad Header")),
        "webhook-url" => (
            "\"http://127.0.0.1:9/hook\"",
            Some("http://127.0.0.1:9/hook"),
        ),
        "webhook-secret" => ("\"short\"", Some("short")),
        "webhook-queue-events" => ("1", Some("1")),
        "webhook-queue-bytes" => ("\"1KiB\"", Some("1KiB")),
        "metrics-listen" => ("\"9100\"", Some("9100")),
        "log" => ("\"a=b=c\"", Some("a=b=c")),
        "log-format" => ("\"xml\"", Some("xml")),
        "node-name" => ("\"\"", Some("")),
        "pusher-app" => ("[\"1:key\"]", Some("1:key")),
        "pusher-webhook-url" => ("\"ftp://h/x\"", Some("ftp://h/x")),
        // Any text is a valid value: only the wrong TOML type is a mistake.
        "redis-prefix" | "token-audience" | "token-issuer" | "allowed-origin" => ("5", None),
        other => panic!("no mistake for the new setting `{other}`: add one here"),
    }
}

#[tokio::test]
async fn issue_22_every_setting_mistake_exits_2_from_config_check_and_start_naming_where() {
    let (code, reference, _) = tidings_output(&["config", "reference"], &[]).await;
    assert_eq!(code, 0);
    // | `key` | type | default | `--key` | `TIDINGS_KEY` | meaning |
    let settings: Vec<(String, String)> = reference
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            let env = cells.get(4)?.trim_matches('`');
            Some((key.to_owned(), env.to_owned()))
        })
        .collect();
    assert!(settings.len() > 50, "{reference}");
    let listen = ["--listen", "127.0.0.1:0"];
    for (key, env) in &settings {
        let (toml, text) = mistake_of(key);
        let file = toml_file("setting", &format!("{key} = {toml}\n"));
        let at_key = format!("{file}: key `{key}");
        let (code, stderr) = tidings_exit(&["config", "check", &file], &[]).await;
        assert_eq!(code, 2, "config check with {key} = {toml}: {stderr}");
        assert!(stderr.contains(&at_key), "{key} = {toml}: {stderr}");
        // A --listen flag would override the file's.
        let start: &[&str] = if key == "listen" {
            &["--config", &file]
        } else {
            &["--config", &file, "--listen", "127.0.0.1:0"]
        };
        let (code, stderr) = tidings_exit(start, &[]).await;
        assert_eq!(code, 2, "a start with {key} = {toml}: {stderr}");
        assert!(
            stderr.contains(&at_key),
            "a start with {key} = {toml}: {stderr}"
        );

        let Some(text) = text else { continue };
        let flag = format!("--{key}={text}");
        let args: Vec<&str> = if key == "listen" {
            vec![&flag]
        } else {
            vec![listen[0], listen[1], &flag]
        };
        let (code, stderr) = tidings_exit(&args, &[]).await;
        assert_eq!(code, 2, "{flag}: {stderr}");
        assert!(stderr.contains(&format!("--{key}")), "{flag}: {stderr}");

        let variable = [(env.as_str(), text)];
        let args: &[&str] = if key == "listen" { &[] } else { &listen };
        let (code, stderr) = tidings_exit(args, &variable).await;
        assert_eq!(code, 2, "{env}={text}: {stderr}");
        assert!(stderr.contains(env.as_str()), "{env}={text}: {stderr}");
        let empty = toml_file("empty", "");
        let (code, stderr) = tidings_exit(&["config", "check", &empty], &variable).await;
        assert_eq!(code, 2, "config check with {env}={text}: {stderr}");
        assert!(stderr.contains(env.as_str()), "{env}={text}: {stderr}");
    }
}

#[tokio::test]
async fn issue_22_a_malformed_redis_url_never_shows_its_password() {
    const PASSWORD: &str = "hunter2-not-for-any-message";
    for url in [
        format!(":{PASSWORD}@127.0.0.1:6379"),
        format!("http://:{PASSWORD}@127.0.0.1:6379"),
        format!("redis+sentinel://:{PASSWORD}@127.0.0.1:26379"),
    ] {
        let file = toml_file("redis-url", &format!("redis-url = {url:?}\n"));
        let by_flag = tidings_exit(&["--listen", "127.0.0.1:0", "--redis-url", &url], &[]).await;
        let by_env =
            tidings_exit(&["--listen", "127.0.0.1:0"], &[("TIDINGS_REDIS_URL", &url)]).await;
        let by_file = tidings_exit(&["--listen", "127.0.0.1:0", "--config", &file], &[]).await;
        let checked = tidings_exit(&["config", "check", &file], &[]).await;
        for (how, (code, stderr)) in [
            ("flag", by_flag),
            ("environment", by_env),
            ("file", by_file),
            ("config check", checked),
        ] {
            assert_eq!(code, 2, "{how}, {url}: {stderr}");
            assert!(
                !stderr.contains(PASSWORD),
                "{how} printed the password: {stderr}"
            );
            assert!(stderr.contains("***@127.0.0.1:"), "{how}: {stderr}");
        }
    }

    // Nor the logs and the readiness reason of a node whose Redis does not answer.
    let port = crate::support::redis::free_port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let node = TestServer::launch(&["--redis-url", &url], &[("TIDINGS_LOG", Some("debug"))])
        .await
        .expect("a node starts while its Redis is down");
    let shown = format!("redis://***@127.0.0.1:{port}");
    node.logs()
        .wait_for(&format!("cannot reach Redis at {shown}"), WAIT)
        .await;
    let (status, _, body) = node.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&shown), "{body}");
    assert!(!body.contains(PASSWORD), "{body}");
    assert!(
        !node.logs().text().contains(PASSWORD),
        "{}",
        node.logs().text()
    );
}

/// `/readyz` until it answers `status`; its body.
async fn readyz_becomes(node: &TestServer, status: u16) -> String {
    within(WAIT, &format!("readyz answers {status}"), async {
        loop {
            let (got, _, body) = node.get("/readyz").await;
            if got == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Publishes through the server API; the status and the body.
async fn api_publish(node: &TestServer, data: Value) -> (u16, Value) {
    let body = json!({"channel": "outage", "data": data}).to_string();
    let (status, body) = http_request(node.addr, "POST", "/api/publish", AUTH, &body).await;
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

#[tokio::test]
async fn issue_22_a_node_started_while_redis_is_down_starts_and_is_ready_once_redis_answers() {
    let mut redis = RedisServer::start().await;
    redis.kill().await;
    let url = redis.url();
    let node = TestServer::launch(
        &["--redis-url", &url, "--api-key", KEY],
        &[("TIDINGS_LOG", Some("info"))],
    )
    .await
    .expect("a node starts while its Redis is down");

    let body = readyz_becomes(&node, 503).await;
    assert!(
        body.contains(&format!(
            "not connected to Redis at {url}: connection refused"
        )),
        "{body}"
    );
    let warning = format!("cannot reach Redis at {url}: connection refused");
    node.logs().wait_for(&warning, WAIT).await;
    assert!(
        !node.logs().text().contains("Os {"),
        "{}",
        node.logs().text()
    );

    // Nothing reached Redis: unavailable, not "may or may not have been stored".
    let (status, body) = api_publish(&node, json!(1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(!body.to_string().contains("may or may not"), "{body}");
    let mut client = node.client("?name=ann").await;
    match client
        .request(json!({"op": "publish", "channel": "outage", "data": 1}))
        .await
    {
        tidings::protocol::Outcome::Error(err) => {
            assert_eq!(err.code, 503);
            assert!(!err.message.contains("may or may not"), "{err:?}");
        }
        tidings::protocol::Outcome::Ok(body) => panic!("published without Redis: {body}"),
    }

    // The warning is repeated while Redis stays away.
    within(Duration::from_secs(15), "the warning repeated", async {
        while node.logs().text().matches("not ready, retrying").count() < 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    redis.restart().await;
    readyz_becomes(&node, 200).await;
    node.logs()
        .wait_for(&format!("connected to Redis at {url}"), WAIT)
        .await;
    let (status, body) = api_publish(&node, json!(2)).await;
    assert_eq!(status, 200, "{body}");
    client.subscribe("outage").await;
    assert_eq!(api_publish(&node, json!(3)).await.0, 200);
    assert_eq!(client.next_pub().await.data, json!(3));

    // Redis going away later: the same plain answer once the node knows it is gone (a
    // publish in the instant before may have been written, and is told so).
    redis.kill().await;
    within(WAIT, "the node notices the lost connection", async {
        while !readyz_becomes(&node, 503)
            .await
            .contains("not connected to Redis")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (status, body) = api_publish(&node, json!(4)).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains("may or may not"), "{body}");
}

#[tokio::test]
async fn issue_22_rediss_pointed_at_a_plaintext_redis_names_the_likely_cause() {
    let redis = RedisServer::start().await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let (code, stderr) = tidings_exit(&["--listen", "127.0.0.1:0", "--redis-url", &url], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(
        stderr.contains("the server answers plaintext Redis") && stderr.contains("use redis://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn issue_22_an_unknown_tidings_variable_is_warned_about_with_the_nearest_name() {
    let node = TestServer::launch(
        &[],
        &[
            ("TIDINGS_NAMESPACE", Some("room:presence=true")),
            ("TIDINGS_COLOUR", Some("blue")),
        ],
    )
    .await
    .expect("an unknown variable does not stop a start");
    node.logs()
        .wait_for(
            "environment variable TIDINGS_NAMESPACE is not a Tidings setting and is ignored; \
             did you mean TIDINGS_NAMESPACES?",
            WAIT,
        )
        .await;
    node.logs()
        .wait_for(
            "environment variable TIDINGS_COLOUR is not a Tidings setting",
            WAIT,
        )
        .await;
    let file = toml_file("empty", "");
    let (code, stdout, stderr) =
        tidings_output(&["config", "check", &file], &[("TIDINGS_NAMESPACE", "x")]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(
        stderr.contains("did you mean TIDINGS_NAMESPACES?"),
        "{stderr}"
    );
}

#[tokio::test]
async fn issue_22_unknown_paths_and_methods_answer_a_json_error() {
    let server = server("warn", &[]).await;
    for (method, path, status, code) in [
        ("POST", "/api/nope", 404, "not_found"),
        ("GET", "/api/publish", 405, "method_not_allowed"),
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ] {
        let (got, body) = http_request(server.addr, method, path, AUTH, "{}").await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let body: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}: {body:?}"));
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn issue_23_every_refusal_of_every_route_has_one_json_error_body() {
    let keyed = server("warn", &[]).await;
    let open = TestServer::launch(&["--allow-anonymous"], &[("TIDINGS_LOG", Some("warn"))])
        .await
        .expect("server starts");
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let evil = ("Origin", "https://evil.test");
    let foreign_ws: Vec<_> = upgrade.iter().copied().chain([evil]).collect();
    let session =
        json!({"session": format!("nobody.{}", "0".repeat(32)), "commands": [{"op": "ping"}]});
    let session = session.to_string();
    type Case<'a> = (
        &'a TestServer,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (&open, "GET", "/ws", vec![], "", 400, "not_a_websocket"),
        (&open, "POST", "/ws", vec![], "", 405, "method_not_allowed"),
        (
            &open,
            "GET",
            "/ws?name=a&name=b",
            upgrade.to_vec(),
            "",
            400,
            "bad_request",
        ),
        (&open, "GET", "/ws", foreign_ws, "", 403, "forbidden"),
        (
            &open,
            "GET",
            "/sse?channel=no%20spaces",
            vec![],
            "",
            400,
            "bad_request",
        ),
        (
            &open,
            "GET",
            "/sse?channel=news",
            vec![evil],
            "",
            403,
            "forbidden",
        ),
        (
            &open,
            "GET",
            "/stream?token=forged",
            vec![],
            "",
            401,
            "unauthorized",
        ),
        (&open, "POST", "/stream", vec![], "{", 400, "bad_request"),
        (&open, "POST", "/stream", vec![], &session, 404, "not_found"),
        (
            &open,
            "POST",
            "/sse",
            vec![evil],
            &session,
            403,
            "forbidden",
        ),
        (&open, "GET", "/admin", vec![], "", 404, "api_disabled"),
        (
            &keyed,
            "GET",
            "/admin/stats",
            vec![],
            "",
            401,
            "unauthorized",
        ),
        (
            &keyed,
            "POST",
            "/api/publish",
            vec![],
            "{}",
            401,
            "unauthorized",
        ),
        (&keyed, "GET", "/nowhere", vec![], "", 404, "not_found"),
    ];
    for (server, method, path, headers, body, status, code) in cases {
        let (got, head, body) = http_exchange(server.addr, method, path, &headers, body).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(
            head.contains("content-type: application/json"),
            "{method} {path}: {head}"
        );
        let body: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err}: {body:?}"));
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{method} {path}: {body}");
        if path == "/admin/stats" {
            assert!(head.contains("www-authenticate: basic"), "{head}");
        }
    }
}

/// The fenced blocks of `language` in a Markdown text.
fn fenced<'a>(markdown: &'a str, language: &str) -> Vec<&'a str> {
    let open = format!("```{language}\n");
    markdown
        .split(&open)
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect()
}

#[tokio::test]
async fn issue_22_the_docs_and_the_help_say_what_the_binary_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| std::fs::read_to_string(root.join(name)).expect(name);
    let (code, help, _) = tidings_output(&["--help"], &[]).await;
    assert_eq!(code, 0);

    // The README's synopsis names every flag of --help, and no other.
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .map(str::to_owned)
            .collect()
    };
    let readme = read("README.md");
    let synopsis = readme
        .split("## Running it")
        .nth(1)
        .and_then(|rest| fenced(rest, "").into_iter().next())
        .expect("the README's synopsis");
    // Option lines are indented by at most 6 (`  -h, --help`, `      --listen <ADDR>`); their
    // descriptions by more.
    let in_help: std::collections::BTreeSet<String> = help
        .lines()
        .filter(|line| {
            let indent = line.len() - line.trim_start().len();
            indent <= 6 && line.trim_start().starts_with('-')
        })
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("--")))
        .map(|flag| flag.trim_end_matches(',').to_owned())
        .collect();
    assert_eq!(flags(synopsis), in_help, "README synopsis vs --help");

    // The help lists every rule and every URL form.
    for word in [
        "proxy-subscribe=",
        "proxy-publish=",
        "receipts=",
        "compression=",
        "rediss://",
        "redis+sentinel://",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }

    // Every TOML shown in the docs is accepted by `config check`, and every table header
    // names a table the file has.
    for name in [
        "README.md",
        "docs/operations.md",
        "docs/backend.md",
        "docs/config.md",
    ] {
        let text = read(name);
        for block in fenced(&text, "toml") {
            let file = toml_file("docs", block);
            let (code, stderr) = tidings_exit(&["config", "check", &file], &[]).await;
            assert_eq!(code, 0, "{name}: {block}\n{stderr}");
        }
        for (at, _) in text.match_indices("`[") {
            let table: String = text[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if table.is_empty() {
                continue;
            }
            assert!(
                ["namespace", "channel-rule"].contains(&table.as_str()),
                "{name}: `[{table}…]` is no table of the configuration file"
            );
        }
    }
    let operations = read("docs/operations.md");
    assert!(!operations.contains("not supported yet"), "operations.md");

    // Every error code docs/api.md documents is one the OpenAPI file lists, and the other way
    // round; /api/history lists its 409.
    let api = read("docs/api.md");
    let documented: std::collections::BTreeSet<&str> = api
        .lines()
        .filter(|line| line.trim_start().starts_with("| 4") || line.trim_start().starts_with("| 5"))
        .filter_map(|line| line.split('`').nth(1))
        .collect();
    let openapi: Value = serde_json::from_str(&read("assets/openapi.json")).expect("JSON");
    let listed: std::collections::BTreeSet<&str> = openapi["components"]["schemas"]["Error"]
        ["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .expect("the codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(documented, listed, "docs/api.md vs assets/openapi.json");
    for code in [
        "not_enabled",
        "not_found",
        "method_not_allowed",
        "body_timeout",
    ] {
        assert!(documented.contains(code), "{code}");
    }
    assert!(
        openapi["paths"]["/api/history"]["post"]["responses"]["409"].is_object(),
        "/api/history's 409"
    );

    // `config example` sets no key: every line is a comment, as it says.
    let (code, example, _) = tidings_output(&["config", "example"], &[]).await;
    assert_eq!(code, 0);
    for line in example.lines() {
        assert!(
            line.is_empty() || line.starts_with('#'),
            "config example sets a key: {line}"
        );
    }
}

#[tokio::test]
async fn issue_22_no_reply_echoes_a_huge_epoch_back() {
    use crate::support::streams::StreamClient;
    let server = server("info", &["--allow-anonymous"]).await;
    let mut publisher = server.client("?name=pub").await;
    publisher.publish("news", json!("first")).await;
    let huge = "x".repeat(30_000);
    let since = json!({"offset": 1, "epoch": huge});

    // WebSocket: a subscribe's reply, and a history's error.
    let mut client = server.client("?name=reader").await;
    client.connected().await;
    for command in [
        json!({"id": 1, "op": "subscribe", "channel": "news", "since": since}),
        json!({"id": 2, "op": "history", "channel": "news", "since": since}),
    ] {
        client.send_json(&command).await;
        let reply =
            serde_json::to_string(&client.reply_to(command["id"].as_u64().unwrap()).await).unwrap();
        assert!(
            reply.len() < 1024,
            "{} bytes: {}",
            reply.len(),
            &reply[..200]
        );
        assert!(reply.contains('…'), "{reply}");
    }

    // The server API.
    let body = json!({"channel": "news", "since": since}).to_string();
    let (status, answer) = http_request(server.addr, "POST", "/api/history", AUTH, &body).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer.len() < 1024, "{} bytes", answer.len());

    // An HTTP stream resumed from it.
    let base = format!("http://{}", server.addr);
    let resume = json!({"news": since}).to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", "streamer")
        .append_pair("channel", "news")
        .append_pair("since", &resume)
        .finish();
    let mut stream = StreamClient::open(&base, &query).await.unwrap();
    let unrecovered = stream.next_with("unrecovered").await.to_string();
    assert!(unrecovered.len() < 1024, "{} bytes", unrecovered.len());
}
