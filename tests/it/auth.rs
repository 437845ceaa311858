//! Tokens, channel rules and the origin check, against the real binary.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tidings::protocol::Outcome;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Ended, TestServer, WAIT, WsClient};

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
        None,
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).expect("signing a test token")
}

fn pem_key(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(fixture(name)).expect("fixture key");
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        other => panic!("no fixture for {other:?}"),
    }
}

/// An unsigned token (`alg: none`), the oldest trick against JWT libraries.
fn unsigned(claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = b64.encode(claims.to_string());
    format!("{header}.{payload}.")
}

async fn hmac_server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--token-hmac-secret", SECRET, "--token-leeway", "0s"];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

/// The close a connection with `?token=TOKEN` gets, or its `connected` push.
async fn handshake(server: &TestServer, token: &str) -> Result<Value, Ended> {
    let mut client = server.client(&format!("?token={token}")).await;
    match client.try_recv(WAIT).await {
        Ok(tidings::protocol::ServerFrame::Push(tidings::protocol::Push::Connected(c))) => {
            Ok(serde_json::to_value(c).unwrap())
        }
        Ok(other) => panic!("expected connected, got {other:?}"),
        Err(ended) => Err(ended),
    }
}

fn refused_with(result: Result<Value, Ended>, reason: &str) {
    match result {
        Err(Ended::Closed(Some((1008, got)))) => {
            assert!(
                got.contains(reason),
                "close reason {got:?} lacks {reason:?}"
            )
        }
        other => panic!("expected close 1008 ({reason}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_authenticates_and_bad_ones_close_with_1008() {
    let server = hmac_server(&[]).await;
    let connected = handshake(&server, &hs256(json!({"sub": "42", "exp": now() + 600})))
        .await
        .expect("valid token");
    assert_eq!(connected["user"], "42");
    assert_eq!(connected["authenticated"], true);
    let left = connected["expires_in_ms"]
        .as_u64()
        .expect("expiry announced");
    assert!((590_000..=600_000).contains(&left), "{left}");

    let good = hs256(json!({"sub": "42"}));
    let (head, _) = good.rsplit_once('.').unwrap();
    refused_with(
        handshake(&server, &format!("{head}.Zm9yZ2Vk")).await,
        "signature",
    );
    refused_with(
        handshake(&server, &hs256(json!({"sub": "42", "exp": now() - 5}))).await,
        "expired",
    );
    refused_with(
        handshake(&server, &hs256(json!({"sub": "42", "nbf": now() + 600}))).await,
        "not valid yet",
    );
    refused_with(
        handshake(&server, &unsigned(json!({"sub": "42"}))).await,
        "malformed",
    );
    let other_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more"),
        json!({"sub": "42"}),
        None,
    );
    refused_with(handshake(&server, &other_key).await, "signature");
    let rsa = sign(
        Algorithm::RS256,
        &pem_key("rsa-private.pem", Algorithm::RS256),
        json!({"sub": "42"}),
        None,
    );
    refused_with(handshake(&server, &rsa).await, "algorithm RS256");
    refused_with(
        handshake(&server, &hs256(json!({"name": "no sub"}))).await,
        "sub",
    );
    refused_with(handshake(&server, "garbage").await, "malformed");

    // Without a token, the connection must authenticate before anything else.
    let mut anonymous = server.client("").await;
    anonymous
        .send_json(&json!({"id": 1, "op": "subscribe", "channel": "x"}))
        .await;
    match anonymous.ended(WAIT).await {
        Ended::Closed(Some((1008, reason))) => assert!(reason.contains("authentication")),
        other => panic!("expected 1008, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_come_from_the_query_the_bearer_header_or_connect() {
    let server = hmac_server(&[]).await;
    let token = hs256(json!({"sub": "alice"}));

    let mut request = server.url("/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let mut by_header = WsClient::connect_request(request, None).await.unwrap();
    assert_eq!(by_header.connected().await.user, "alice");

    let mut by_connect = server.client("").await;
    let body = by_connect
        .ok(json!({"op": "connect", "token": token}))
        .await;
    assert_eq!(body["user"], "alice");
    assert_eq!(body["authenticated"], true);
    by_connect.subscribe("room").await;

    let mut bad_connect = server.client("").await;
    bad_connect
        .send_json(&json!({"id": 1, "op": "connect", "token": "x.y.z"}))
        .await;
    assert!(matches!(
        bad_connect.ended(WAIT).await,
        Ended::Closed(Some((1008, _)))
    ));
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_after_the_handshake_timeout() {
    let server = hmac_server(&["--handshake-timeout", "300ms"]).await;
    let started = std::time::Instant::now();
    let mut silent = server.client("").await;
    match silent.ended(WAIT).await {
        Ended::Closed(Some((1008, reason))) => assert!(reason.contains("in time"), "{reason}"),
        other => panic!("expected 1008, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn public_keys_and_jwks_verify_only_their_own_algorithm() {
    let server = TestServer::start(&[
        "--token-public-key",
        &fixture("rsa-public.pem"),
        "--token-public-key",
        &fixture("ec-public.pem"),
        "--token-jwks",
        &fixture("jwks.json"),
    ])
    .await;
    let rsa = sign(
        Algorithm::RS256,
        &pem_key("rsa-private.pem", Algorithm::RS256),
        json!({"sub": "r"}),
        None,
    );
    assert_eq!(handshake(&server, &rsa).await.unwrap()["user"], "r");
    let ec = sign(
        Algorithm::ES256,
        &pem_key("ec-private.pem", Algorithm::ES256),
        json!({"sub": "e"}),
        None,
    );
    assert_eq!(handshake(&server, &ec).await.unwrap()["user"], "e");
    let jwks = sign(
        Algorithm::RS256,
        &pem_key("rsa2-private.pem", Algorithm::RS256),
        json!({"sub": "j"}),
        Some("k2"),
    );
    assert_eq!(handshake(&server, &jwks).await.unwrap()["user"], "j");

    // HS256 "signed" with the RSA public key: the classic key-confusion forgery.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        json!({"sub": "r"}),
        None,
    );
    refused_with(handshake(&server, &confused).await, "algorithm HS256");
    refused_with(
        handshake(&server, &unsigned(json!({"sub": "r"}))).await,
        "malformed",
    );
    // Signed by a key the server holds only under another kid: it is tried against the
    // kid-less RSA key alone, and fails there.
    let stranger = sign(
        Algorithm::RS256,
        &pem_key("rsa2-private.pem", Algorithm::RS256),
        json!({"sub": "r"}),
        Some("unknown-kid"),
    );
    refused_with(handshake(&server, &stranger).await, "signature");
}

#[tokio::test]
async fn refresh_extends_a_session_and_an_unrefreshed_one_closes_with_4003() {
    let server = hmac_server(&[]).await;
    let short = || hs256(json!({"sub": "u", "exp": now() + 2}));
    let mut refreshed = server.client(&format!("?token={}", short())).await;
    refreshed.connected().await;
    let mut lapsing = server.client(&format!("?token={}", short())).await;
    lapsing.connected().await;

    let body = refreshed
        .ok(json!({"op": "refresh", "token": hs256(json!({"sub": "u", "exp": now() + 600}))}))
        .await;
    assert!(body["expires_in_ms"].as_u64().unwrap() > 500_000);
    let code = refreshed
        .error_code(json!({"op": "refresh", "token": hs256(json!({"sub": "someone else"}))}))
        .await;
    assert_eq!(code, 111, "a token for another user is refused");
    let code = refreshed
        .error_code(json!({"op": "refresh", "token": "junk"}))
        .await;
    assert_eq!(code, 111);

    match lapsing.ended(WAIT).await {
        Ended::Closed(Some((4003, _))) => {}
        other => panic!("expected 4003, got {other:?}"),
    }
    // The other connection's original expiry has passed too: it lives on.
    refreshed.ok(json!({"op": "ping"})).await;
}

#[tokio::test]
async fn channel_rules_personal_channels_and_subscription_tokens() {
    let server = hmac_server(&[
        "--allow-anonymous",
        "--namespace",
        "private:subscribe=authenticated",
        "--namespace",
        "vip:subscribe=token",
        "--namespace",
        "news:publish=false",
    ])
    .await;
    let mut anonymous = server.client("?name=42").await;
    anonymous.connected().await;
    let mut alice = server
        .client(&format!("?token={}", hs256(json!({"sub": "42"}))))
        .await;
    alice.connected().await;
    let mut bob = server
        .client(&format!("?token={}", hs256(json!({"sub": "7"}))))
        .await;
    bob.connected().await;

    let subscribe = |channel: &str| json!({"op": "subscribe", "channel": channel});
    assert_eq!(anonymous.error_code(subscribe("private:x")).await, 110);
    assert_eq!(
        anonymous
            .error_code(json!({"op": "history", "channel": "private:x"}))
            .await,
        110
    );
    alice.subscribe("private:x").await;

    alice.subscribe("user:42").await;
    assert_eq!(bob.error_code(subscribe("user:42")).await, 110);
    assert_eq!(
        anonymous.error_code(subscribe("user:42")).await,
        110,
        "an anonymous name is not an identity"
    );
    assert_eq!(
        alice
            .error_code(json!({"op": "publish", "channel": "user:42", "data": 1}))
            .await,
        110,
        "personal channels are written by the server"
    );

    assert_eq!(alice.error_code(subscribe("vip:room")).await, 110);
    let grant = |sub: &str, channel: &str| hs256(json!({"sub": sub, "channel": channel}));
    let with_token =
        |token: String| json!({"op": "subscribe", "channel": "vip:room", "token": token});
    assert_eq!(
        alice.error_code(with_token(grant("42", "vip:other"))).await,
        111
    );
    assert_eq!(
        alice.error_code(with_token(grant("7", "vip:room"))).await,
        111
    );
    alice.ok(with_token(grant("42", "vip:room"))).await;

    assert_eq!(
        alice
            .error_code(json!({"op": "publish", "channel": "news:today", "data": 1}))
            .await,
        110
    );
    anonymous.subscribe("news:today").await;
    alice
        .publish("chat", json!("open channels stay open"))
        .await;
}

#[tokio::test]
async fn anonymous_connections_are_off_once_a_key_is_configured_unless_allowed() {
    let closed = hmac_server(&[]).await;
    let mut named = closed.client("?name=zoe").await;
    named.send_json(&json!({"id": 1, "op": "ping"})).await;
    assert!(matches!(
        named.ended(WAIT).await,
        Ended::Closed(Some((1008, _)))
    ));

    let open = hmac_server(&["--allow-anonymous"]).await;
    let mut named = open.client("?name=zoe").await;
    let connected = named.connected().await;
    assert_eq!(connected.user, "zoe");
    match named
        .request(json!({"op": "refresh", "token": hs256(json!({"sub": "zoe"}))}))
        .await
    {
        Outcome::Error(err) => assert_eq!(err.code, 110),
        Outcome::Ok(body) => panic!("an anonymous connection refreshed: {body}"),
    }

    // Without any key, tokens cannot be checked, so they are refused rather than ignored.
    let keyless = TestServer::start(&[]).await;
    refused_with(handshake(&keyless, "a.b.c").await, "no token key");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_an_allowed_one_passes() {
    let server = TestServer::start(&["--allowed-origin", "https://app.example"]).await;
    let with_origin = |origin: &str| {
        let mut request = server.url("/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
        request
    };
    let refused = WsClient::connect_request(with_origin("https://evil.example"), None).await;
    let err = refused.err().expect("foreign origin refused").to_string();
    assert!(err.contains("403"), "{err}");

    let mut allowed = WsClient::connect_request(with_origin("https://app.example"), None)
        .await
        .expect("allowed origin");
    allowed.ok(json!({"op": "ping"})).await;
    let same_host = format!("http://{}", server.addr);
    let mut own = WsClient::connect_request(with_origin(&same_host), None)
        .await
        .expect("the server's own pages");
    own.ok(json!({"op": "ping"})).await;
    // Non-browser clients send no Origin at all.
    server.client("").await.ok(json!({"op": "ping"})).await;
}

#[tokio::test]
async fn bad_key_configuration_stops_the_server_with_a_clear_error() {
    let err = TestServer::refused(&["--token-hmac-secret", "short"]).await;
    assert!(err.contains("32 bytes"), "{err}");
    let err = TestServer::refused(&["--token-public-key", "/nonexistent.pem"]).await;
    assert!(err.contains("/nonexistent.pem"), "{err}");
    let err = TestServer::refused(&["--token-public-key", &fixture("jwks.json")]).await;
    assert!(err.contains("not a PEM"), "{err}");
    let err = TestServer::refused(&["--allow-anonymous=false"]).await;
    assert!(err.contains("nobody could connect"), "{err}");
    let err = TestServer::refused(&["--namespace", "vip:subscribe=everyone"]).await;
    assert!(err.contains("subscribe=everyone"), "{err}");
    // The rule's error is said once, after the flag that carried it.
    assert_eq!(err.matches("is not").count(), 1, "{err}");
    let err = TestServer::refused(&["--namespace", "news:receipts=30s"]).await;
    assert_eq!(
        err.matches("receipts are for personal channels").count(),
        1,
        "{err}"
    );
}
