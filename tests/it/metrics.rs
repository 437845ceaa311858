use std::collections::HashMap;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, WAIT, http_get, http_request, within};

const KEY: &str = "apikey metrics-test-key-0123";

/// Every sample of `/metrics`, parsed as Prometheus would read it, keyed `name{label="v"}`
/// (labels sorted).
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, head, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                sample.metric.clone()
            } else {
                format!("{}{{{}}}", sample.metric, labels.join(","))
            };
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (key, value)
        })
        .collect()
}

/// Scrapes until `key` has `value` (the server counts as it handles, not as the client sends).
pub(crate) async fn await_metric(
    addr: std::net::SocketAddr,
    key: &str,
    value: f64,
) -> HashMap<String, f64> {
    within(WAIT * 3, &format!("{key} = {value}"), async {
        loop {
            let samples = scrape(addr).await;
            if samples.get(key) == Some(&value) {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_scripted_session_gives_exact_counts() {
    let server = TestServer::start(&[
        "--publish-rate",
        "1",
        "--publish-burst",
        "1",
        "--namespace",
        "news:publish=false",
        "--namespace",
        "lobby:presence=true",
        "--api-key",
        &KEY["apikey ".len()..],
    ])
    .await;
    let before = scrape(server.addr).await;
    assert_eq!(before["tidings_connections"], 0.0);

    let mut ann = server.client("?name=ann").await;
    let subscribed = ann.subscribe("room").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    ann.publish("room", json!({"n": 1})).await;
    ann.send_text("{not json").await;

    let mut bob = server.client("?name=bob").await;
    bob.publish("room", json!({"n": 2})).await;
    let refused = bob
        .error_code(json!({"op": "publish", "channel": "room", "data": 3}))
        .await;
    assert_eq!(refused, 112);

    let mut cy = server.client("?name=cy").await;
    let refused = cy
        .error_code(json!({"op": "publish", "channel": "news:today", "data": 1}))
        .await;
    assert_eq!(refused, 110);

    // A subscriber that stops reading while 400 × 60 KB are published to its channel.
    let mut dee = server.client("?name=dee").await;
    dee.subscribe("flood").await;
    let body = json!({"channel": "flood", "data": "x".repeat(60_000)}).to_string();
    for _ in 0..400 {
        let (status, text) =
            http_request(server.addr, "POST", "/api/publish", Some(KEY), &body).await;
        assert_eq!(status, 200, "{text}");
    }
    await_metric(server.addr, "tidings_slow_consumer_closes_total", 1.0).await;

    // A client back from offset 1 recovers offset 2.
    let mut eve = server.client("?name=eve").await;
    let recovered = eve
        .ok(json!({"op": "subscribe", "channel": "room", "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(recovered["recovered"], true);

    // Two present in one presence channel, one of them also subscribed to another.
    eve.subscribe("lobby:hall").await;
    cy.subscribe("lobby:hall").await;
    cy.subscribe("lobby:side").await;
    let m = scrape(server.addr).await;
    assert_eq!(m["tidings_presence_members{namespace=\"lobby\"}"], 3.0);
    assert_eq!(m["tidings_channels{namespace=\"lobby\"}"], 2.0);
    cy.ok(json!({"op": "unsubscribe", "channel": "lobby:side"}))
        .await;

    ann.ws.send(Message::Close(None)).await.unwrap();
    await_metric(
        server.addr,
        "tidings_connections_closed_total{code=\"peer\"}",
        1.0,
    )
    .await;
    // Left: eve in room and lobby:hall, cy in lobby:hall (dee's and ann's are gone).
    let m = await_metric(
        server.addr,
        "tidings_subscriptions{namespace=\"default\"}",
        1.0,
    )
    .await;

    let expect = [
        ("tidings_connections", 3.0),
        ("tidings_connections_opened_total", 5.0),
        ("tidings_connections_closed_total{code=\"4000\"}", 1.0),
        ("tidings_connections_closed_total{code=\"peer\"}", 1.0),
        ("tidings_slow_consumer_closes_total", 1.0),
        ("tidings_errors_total{code=\"100\"}", 1.0),
        ("tidings_errors_total{code=\"110\"}", 1.0),
        ("tidings_errors_total{code=\"112\"}", 1.0),
        ("tidings_rate_limited_total", 1.0),
        // ann 3 (subscribe, publish, bad JSON), bob 2, cy 4, dee 1, eve 2.
        ("tidings_messages_in_total", 12.0),
        ("tidings_subscriptions{namespace=\"lobby\"}", 2.0),
        ("tidings_channels{namespace=\"default\"}", 1.0),
        ("tidings_channels{namespace=\"lobby\"}", 1.0),
        ("tidings_presence_members{namespace=\"lobby\"}", 2.0),
        ("tidings_broker_up", 1.0),
        ("tidings_recoveries_total{outcome=\"recovered\"}", 1.0),
        ("tidings_publications_total{namespace=\"default\"}", 402.0),
        (
            "tidings_publish_duration_seconds{namespace=\"default\"}",
            402.0,
        ),
    ];
    for (key, value) in expect {
        assert_eq!(m.get(key), Some(&value), "{key}: {m:#?}");
    }
    assert!(m["tidings_bytes_in_total"] > 0.0);
    // At least each client's `connected` and ann's five frames reached their sockets.
    assert!(m["tidings_messages_out_total"] >= 10.0, "{m:#?}");
    assert!(m["tidings_bytes_out_total"] >= 60_000.0, "{m:#?}");
    // No channel or user ever becomes a label.
    let (_, _, text) = http_get(server.addr, "/metrics").await.unwrap();
    for needle in ["room", "flood", "ann", "news:today", "lobby:hall"] {
        let value = format!("\"{needle}\"");
        assert!(!text.contains(&value), "{needle} leaked into a label");
    }
    drop((bob, cy, dee, eve));
}

#[tokio::test]
async fn metrics_listen_moves_metrics_to_an_address_of_their_own() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let server = TestServer::start(&["--metrics-listen", &address]).await;
    let (status, _, _) = server.get("/metrics").await;
    assert_eq!(status, 404, "not on the public listener");
    let samples = scrape(address.parse().unwrap()).await;
    assert_eq!(samples["tidings_connections"], 0.0);
}

#[tokio::test]
async fn each_connection_logs_one_open_and_one_close_line() {
    let server = TestServer::launch(&[], &[("TIDINGS_LOG", Some("tidings=debug"))])
        .await
        .unwrap();
    let mut zoe = server.client("?name=zoe").await;
    zoe.connected().await;
    zoe.ws.send(Message::Close(None)).await.unwrap();
    server.logs().wait_for("connection closed", WAIT).await;
    let logs = server.logs().text();
    let opened: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("connection opened"))
        .collect();
    let closed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert_eq!((opened.len(), closed.len()), (1, 1), "{logs}");
    for line in [opened[0], closed[0]] {
        assert!(
            line.contains("client=") && line.contains("user=\"zoe\""),
            "{line}"
        );
        assert!(line.contains("remote=Some(127.0.0.1)"), "{line}");
    }
    assert!(closed[0].contains("code=\"peer\""), "{}", closed[0]);
}
