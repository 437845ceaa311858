use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tidings::protocol::Outcome;
use tokio::sync::mpsc;

use crate::support::redis_ha::{SentinelSet, TestCa, TlsRedis};
use crate::support::{TestServer, WAIT, resilient_subscriber, within};

const PASSWORD: &str = "redis-password-not-for-logs-5c1e";
const API_KEY: &str = "api-key-not-for-any-log-8d2f4a";
const HMAC: &str = "hmac-secret-not-for-any-log-of-32-bytes-e7";

/// Two nodes on a Redis that speaks only TLS, checks client certificates and wants a
/// password: messages cross; run at the most verbose level, no secret reaches a log line.
#[tokio::test]
async fn nodes_reach_redis_over_tls_with_client_certificates_and_log_no_secret() {
    let ca = TestCa::generate("tls");
    let redis = TlsRedis::start(&ca, true, Some(PASSWORD)).await;
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let (ca_file, cert, key) = (
        ca.ca.display().to_string(),
        ca.client_cert.display().to_string(),
        ca.client_key.display().to_string(),
    );
    let args = [
        "--redis-url",
        &url,
        "--redis-tls-ca",
        &ca_file,
        "--redis-tls-cert",
        &cert,
        "--redis-tls-key",
        &key,
        "--api-key",
        API_KEY,
        "--token-hmac-secret",
        HMAC,
    ];
    let verbose = [("TIDINGS_LOG", Some("trace"))];
    let a = TestServer::launch(&args, &verbose).await.unwrap();
    let b = TestServer::launch(&args, &verbose).await.unwrap();
    assert_eq!(a.get("/readyz").await.0, 200);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ann"}),
        &jsonwebtoken::EncodingKey::from_secret(HMAC.as_bytes()),
    )
    .unwrap();
    let mut subscriber = a.client(&format!("?token={token}")).await;
    subscriber.subscribe("tls").await;
    let mut publisher = b.client(&format!("?token={token}")).await;
    assert_eq!(publisher.publish("tls", json!("over TLS")).await, 1);
    assert_eq!(subscriber.next_pub().await.data, json!("over TLS"));
    let (status, _) = crate::support::http_request(
        b.addr,
        "POST",
        "/api/publish",
        Some(&format!("apikey {API_KEY}")),
        &json!({"channel": "tls", "data": 2}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(subscriber.next_pub().await.data, json!(2));
    drop((subscriber, publisher));

    for server in [&a, &b] {
        let logs = server.logs().text();
        assert!(logs.lines().count() > 10, "trace logging is on: {logs}");
        for secret in [PASSWORD, API_KEY, HMAC, &token] {
            assert!(!logs.contains(secret), "a secret reached the log:\n{logs}");
        }
    }
}

/// The wrong authority, or no client certificate where Redis wants one: the node refuses to
/// start and says why.
#[tokio::test]
async fn a_tls_redis_that_cannot_be_trusted_or_wants_a_certificate_is_refused_at_start() {
    let ca = TestCa::generate("tls-trusted");
    let other = TestCa::generate("tls-other");
    let redis = TlsRedis::start(&ca, true, None).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let (other_ca, cert, key) = (
        other.ca.display().to_string(),
        ca.client_cert.display().to_string(),
        ca.client_key.display().to_string(),
    );
    let untrusted = TestServer::refused(&[
        "--redis-url",
        &url,
        "--redis-tls-ca",
        &other_ca,
        "--redis-tls-cert",
        &cert,
        "--redis-tls-key",
        &key,
    ])
    .await;
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );
    let right_ca = ca.ca.display().to_string();
    let anonymous = TestServer::refused(&["--redis-url", &url, "--redis-tls-ca", &right_ca]).await;
    assert!(anonymous.contains("Redis"), "{anonymous}");
}

/// Publishes `n` until acknowledged or refused; returns the offset when acknowledged.
async fn publish_once(client: &mut crate::support::WsClient, n: u64) -> Option<u64> {
    match client
        .request(json!({"op": "publish", "channel": "failover", "data": n}))
        .await
    {
        Outcome::Ok(body) => Some(body["offset"].as_u64().unwrap()),
        Outcome::Error(err) => {
            assert!(
                [503, 504].contains(&err.code),
                "only unavailable or indeterminate: {err:?}"
            );
            None
        }
    }
}

/// Two nodes on a Sentinel-watched primary and replica, publishes confirmed by the replica.
/// `SENTINEL FAILOVER` in the middle of a stream of publishes: each publish is acknowledged
/// or refused, and every acknowledged one reaches every subscriber with its data; afterwards
/// publishing and delivery resume on the new primary.
#[tokio::test]
async fn a_sentinel_failover_loses_no_acknowledged_publish_and_delivery_resumes() {
    const SUBSCRIBERS: usize = 3;
    const LAST: u64 = 150;
    let set = SentinelSet::start().await;
    let url = set.url();
    let args = [
        "--redis-url",
        &url,
        "--history-size",
        "1000",
        "--redis-replica-acks",
        "1",
    ];
    let a = TestServer::start(&args).await;
    let b = TestServer::start(&args).await;
    let urls = vec![a.url("/ws"), b.url("/ws")];
    let (ready_tx, mut ready_rx) = mpsc::channel(SUBSCRIBERS);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let mut urls = urls.clone();
            urls.rotate_left(i % 2);
            let subscriber = resilient_subscriber(urls, "failover".into(), LAST, ready_tx.clone());
            tokio::spawn(subscriber)
        })
        .collect();
    for _ in 0..SUBSCRIBERS {
        within(WAIT, "subscribers ready", ready_rx.recv()).await;
    }

    // Publish until the stream reaches offset LAST, failing over a third of the way.
    let mut publisher = b.client("?name=pub").await;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut refused = 0;
    let mut failover = None;
    let mut n = 0;
    let stream = async {
        loop {
            n += 1;
            match publish_once(&mut publisher, n).await {
                Some(offset) => {
                    acked.push((offset, n));
                    if offset >= LAST {
                        return;
                    }
                    if offset == LAST / 3 && failover.is_none() {
                        failover = Some(set.failover());
                    }
                }
                None => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(WAIT * 6, "publishing through the failover", stream).await;
    let failover = failover.expect("failed over");
    within(WAIT * 3, "failover", failover).await.unwrap();
    assert!(
        acked.len() as u64 >= LAST / 2,
        "publishing resumed: {acked:?}"
    );

    for subscriber in subscribers {
        let tally = within(WAIT * 3, "subscriber", subscriber).await.unwrap();
        // By the publisher's numbering: each at most once, in the order published (offsets
        // start again when a failover moves the channel to a new epoch).
        let seen: Vec<u64> = tally.data.iter().map(|n| n.as_u64().unwrap()).collect();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "duplicated or reordered: {tally:?}"
        );
        // A rewound history is told, never silent; once per failover at most.
        assert!(tally.unrecovered <= 1, "{tally:?}");
        let seen: HashSet<u64> = seen.into_iter().collect();
        for (offset, n) in &acked {
            assert!(
                seen.contains(n),
                "acknowledged publish {n} (offset {offset}) missing (refused: {refused}): {tally:?}"
            );
        }
    }
}
