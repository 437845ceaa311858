//! Bug-reproducing tests, one per defect, named `issue_<N>_…` after the issue that found it.

use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::redis::RedisServer;
use crate::support::{Ended, TestServer, WAIT, WsClient, http_request, within};

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
        "metrics-listen" => ("\"9100\"", Some("9100")),
        "log" => ("\"a=b=c\"", Some("a=b=c")),
        "log-format" => ("\"xml\"", Some("xml")),
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
