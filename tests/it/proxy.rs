use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use tidings::protocol::Outcome;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::metrics::scrape;
use crate::support::{Ended, TestServer, WAIT, WsClient, within};

/// A real HTTP backend on a loopback port: each `rpc` method answers its own way.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new().route(
        "/rpc",
        post(move |headers: HeaderMap, Json(call): Json<Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let http_cookie = headers
                    .get("cookie")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let reply = match call["method"].as_str().unwrap_or_default() {
                    "echo" => json!({"result": {"data": {
                        "call": call, "http_cookie": http_cookie,
                        "http_other": headers.get("x-other").is_some(),
                    }}}),
                    "refuse" => json!({"error": {"code": 1403, "message": "not for you"}}),
                    "kick" => json!({"disconnect": {"code": 4403, "reason": "go away"}}),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        json!({"result": {"data": "too late"}})
                    }
                    "garbage" => json!({"result": {"no data": true}}),
                    "bad-code" => json!({"error": {"code": 99, "message": "reserved"}}),
                    _ => json!({"whatever": 1}),
                };
                Json(reply)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

async fn client_with_headers(server: &TestServer, name: &str) -> WsClient {
    let mut request = server
        .url(&format!("/ws?name={name}"))
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", "session=abc123".parse().unwrap());
    headers.insert("x-other", "must-not-travel".parse().unwrap());
    WsClient::connect_request(request, None).await.unwrap()
}

fn rpc(method: &str, data: Value) -> Value {
    json!({"op": "rpc", "method": method, "data": data})
}

#[tokio::test]
async fn rpc_goes_to_the_backend_with_only_the_named_headers_and_its_answers_reach_the_client() {
    let (addr, _) = backend().await;
    let url = format!("http://{addr}/rpc");
    let server = TestServer::start(&[
        "--proxy-rpc",
        &url,
        "--proxy-header",
        "Cookie",
        "--proxy-timeout",
        "500ms",
    ])
    .await;
    let mut ann = client_with_headers(&server, "ann").await;

    let answer = ann.ok(rpc("echo", json!({"n": 1}))).await;
    let call = &answer["data"]["call"];
    assert_eq!(call["method"], "echo");
    assert_eq!(call["data"], json!({"n": 1}));
    assert_eq!(call["user"], "ann");
    assert_eq!(call["transport"], "websocket");
    assert!(
        call["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{call}"
    );
    assert_eq!(call["headers"], json!({"cookie": "session=abc123"}));
    assert_eq!(answer["data"]["http_cookie"], "session=abc123");
    assert_eq!(
        answer["data"]["http_other"], false,
        "an unnamed header travelled"
    );

    // The app's error reaches the client as is; the connection stays open.
    match ann.request(rpc("refuse", Value::Null)).await {
        Outcome::Error(err) => assert_eq!((err.code, err.message.as_str()), (1403, "not for you")),
        Outcome::Ok(body) => panic!("refused call answered {body}"),
    }
    // Answers the backend should not give are its failure: 502, logged and counted.
    for method in ["garbage", "bad-code", "unknown"] {
        assert_eq!(
            ann.error_code(rpc(method, Value::Null)).await,
            502,
            "{method}"
        );
    }
    assert_eq!(ann.ok(json!({"op": "ping"})).await, json!({}));

    // A slow backend times out for its caller only; another client is answered meanwhile.
    let mut bob = server.client("?name=bob").await;
    let slow = tokio::spawn(async move {
        let code = ann.error_code(rpc("slow", Value::Null)).await;
        (code, ann)
    });
    assert_eq!(
        bob.ok(rpc("echo", json!(2))).await["data"]["call"]["data"],
        2
    );
    let (code, mut ann) = within(WAIT, "the slow call", slow).await.unwrap();
    assert_eq!(code, 502);
    let m = scrape(server.addr).await;
    assert_eq!(
        m["tidings_proxy_errors_total{error=\"timeout\",kind=\"rpc\"}"],
        1.0
    );
    assert_eq!(
        m["tidings_proxy_errors_total{error=\"garbage\",kind=\"rpc\"}"],
        3.0
    );
    assert!(
        m["tidings_proxy_duration_seconds{kind=\"rpc\"}"] >= 7.0,
        "{m:?}"
    );

    // `disconnect` closes the connection with the backend's code.
    ann.send_json(&json!({"id": 99, "op": "rpc", "method": "kick"}))
        .await;
    match ann.ended(WAIT).await {
        Ended::Closed(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (4403, "go away"))
        }
        other => panic!("expected close 4403, got {other:?}"),
    }
    assert!(
        !server.logs().text().contains("abc123"),
        "a forwarded cookie was logged"
    );
}

#[tokio::test]
async fn rpc_without_a_backend_is_not_enabled_and_an_unreachable_backend_is_a_502() {
    let plain = TestServer::start(&[]).await;
    let mut client = plain.client("?name=cy").await;
    assert_eq!(client.error_code(rpc("echo", Value::Null)).await, 113);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/rpc", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::start(&["--proxy-rpc", &url]).await;
    let mut client = server.client("?name=dee").await;
    assert_eq!(client.error_code(rpc("echo", Value::Null)).await, 502);
    let m = scrape(server.addr).await;
    assert_eq!(
        m["tidings_proxy_errors_total{error=\"unreachable\",kind=\"rpc\"}"],
        1.0
    );
}
