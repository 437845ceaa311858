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
use crate::support::{Ended, TestServer, WAIT, WsClient, serve_app, within};

/// The connect proxy's decisions, by the session cookie the client brought.
async fn connect(headers: HeaderMap, Json(call): Json<Value>) -> Json<Value> {
    assert_eq!(call["transport"], "websocket");
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Json(match cookie {
        "session=ann" => json!({"result": {
            "user": "ann-from-cookie", "info": {"plan": "pro"}, "channels": ["news"],
        }}),
        "session=banned" => json!({"disconnect": {"code": 4403, "reason": "banned"}}),
        "session=slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json!({"result": {"user": "late"}})
        }
        _ => json!({"error": {"code": 1401, "message": "log in first"}}),
    })
}

/// A real HTTP backend on a loopback port: each `rpc` method answers its own way.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new().route("/connect", post(connect)).route(
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
    let addr = serve_app(app).await;
    (addr, calls)
}

async fn client_with_headers(server: &TestServer, name: &str) -> WsClient {
    client_with_cookie(server, name, "session=abc123").await
}

/// A client whose handshake carries `cookie` (and a header nobody named).
async fn client_with_cookie(server: &TestServer, name: &str, cookie: &str) -> WsClient {
    let mut request = server
        .url(&format!("/ws?name={name}"))
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", cookie.parse().unwrap());
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
    // An anonymous connection has no user the backend could trust, only its chosen name.
    assert_eq!(
        (&call["user"], &call["name"]),
        (&Value::Null, &json!("ann"))
    );
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
    let logs = server.logs().text();
    assert!(!logs.contains("abc123"), "a forwarded cookie was logged");
    // Four failures, one line: a failing backend must not flood the log.
    assert_eq!(
        logs.matches("call to the backend failed").count(),
        1,
        "{logs}"
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
    // The client hears the documented text; the HTTP client's error and the URL stay in the log.
    match client.request(rpc("echo", Value::Null)).await {
        Outcome::Error(err) => assert_eq!(
            (err.code, err.message.as_str()),
            (502, "the app's backend could not be reached; retry later")
        ),
        Outcome::Ok(body) => panic!("an unreachable backend answered {body}"),
    }
    let m = scrape(server.addr).await;
    assert_eq!(
        m["tidings_proxy_errors_total{error=\"unreachable\",kind=\"rpc\"}"],
        1.0
    );
}

/// Cookie-authenticated connections: the backend names the user and the server-side
/// subscriptions, refuses with its close code or its error, and a slow backend closes only
/// the connection it was deciding (4006).
#[tokio::test]
async fn the_connect_proxy_lets_cookie_clients_in_as_the_user_the_backend_names() {
    let (addr, _) = backend().await;
    let url = format!("http://{addr}/connect");
    let server = TestServer::start(&[
        "--proxy-connect",
        &url,
        "--proxy-header",
        "Cookie",
        "--proxy-timeout",
        "500ms",
        "--handshake-timeout",
        "1s",
    ])
    .await;
    let mut ann = client_with_cookie(&server, "x", "session=ann").await;
    let connected = ann.connected().await;
    assert_eq!(
        (connected.user.as_str(), connected.authenticated),
        ("ann-from-cookie", true)
    );
    match ann.next_push().await {
        tidings::protocol::Push::Subscribed(pushed) => assert_eq!(pushed.channel, "news"),
        other => panic!("expected the server-side subscription, got {other:?}"),
    }

    // A slow backend: that connection closes with 4006; others get in meanwhile.
    let slow = tokio::spawn({
        let url = server.url("/ws");
        async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("cookie", "session=slow".parse().unwrap());
            let mut client = WsClient::connect_request(request, None).await.unwrap();
            client.ended(WAIT).await
        }
    });
    let mut again = client_with_cookie(&server, "y", "session=ann").await;
    assert_eq!(again.connected().await.user, "ann-from-cookie");
    match within(WAIT, "slow connect", slow).await.unwrap() {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4006),
        other => panic!("expected 4006, got {other:?}"),
    }
    let mut publisher = again;
    publisher.publish("news", json!("extra")).await;
    assert_eq!(ann.next_pub().await.data, json!("extra"));

    let mut banned = client_with_cookie(&server, "z", "session=banned").await;
    match banned.ended(WAIT).await {
        Ended::Closed(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (4403, "banned"))
        }
        other => panic!("expected 4403, got {other:?}"),
    }
    // An error answer is told; without a token in time the connection is then refused
    // (no anonymous fallback by default with a connect proxy).
    let mut stranger = client_with_cookie(&server, "w", "session=nobody").await;
    match stranger.try_recv(WAIT).await {
        Ok(tidings::protocol::ServerFrame::Push(tidings::protocol::Push::Error(err))) => {
            assert_eq!((err.code, err.message.as_str()), (1401, "log in first"));
        }
        other => panic!("expected the backend's error, got {other:?}"),
    }
    match stranger.ended(WAIT).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 1008),
        other => panic!("expected 1008, got {other:?}"),
    }
    let m = scrape(server.addr).await;
    assert_eq!(
        m["tidings_proxy_errors_total{error=\"timeout\",kind=\"connect\"}"],
        1.0
    );
}

/// The JavaScript client's `rpc`, in headless Chromium: the backend's data comes back, its
/// error rejects with the app's code and message.
#[tokio::test]
async fn the_js_client_calls_the_backend_with_rpc() {
    let (addr, _) = backend().await;
    let url = format!("http://{addr}/rpc");
    let server = TestServer::start(&["--proxy-rpc", &url]).await;
    let mut browser = crate::support::browser::Browser::launch().await.unwrap();
    let tab = browser
        .open(&format!("http://{}/", server.addr))
        .await
        .unwrap();
    let script = format!(
        "(async () => {{
            const {{ Tidings }} = await import('/tidings.js');
            const client = new Tidings({ws}, {{ name: 'js' }});
            await new Promise((resolve) => {{
                const check = setInterval(() => {{
                    if (client.isConnected) {{ clearInterval(check); resolve(); }}
                }}, 20);
            }});
            const answer = await client.rpc('echo', {{ n: 7 }});
            let refused = null;
            try {{ await client.rpc('refuse'); }} catch (e) {{ refused = [e.code, e.message]; }}
            client.close();
            return {{ user: answer.call.name, data: answer.call.data, refused }};
        }})()",
        ws = json!(server.url("/ws")),
    );
    let got = browser.eval(&tab, &script).await.unwrap();
    assert_eq!(
        got,
        json!({"user": "js", "data": {"n": 7}, "refused": [1403, "not for you"]})
    );
}

/// Subscribe and publish decided by the backend in a `proxy-subscribe=true,proxy-publish=true`
/// namespace: refusals carry the app's code, published data is rewritten for every
/// subscriber, and channels of other namespaces never reach the backend.
#[tokio::test]
async fn the_backend_decides_subscribes_and_rewrites_publishes_in_its_namespaces() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = calls.clone();
    let app = Router::new().route(
        "/{kind}",
        post(
            move |axum::extract::Path(kind): axum::extract::Path<String>,
                  Json(call): Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(json!({"kind": kind, "call": call}));
                    let channel = call["channel"].as_str().unwrap_or_default();
                    let text = call["data"]["text"].as_str().unwrap_or_default();
                    Json(match (kind.as_str(), channel) {
                        ("subscribe", "room:secret") => {
                            json!({"error": {"code": 1403, "message": "members only"}})
                        }
                        ("subscribe", _) => json!({"result": {"info": {"role": "guest"}}}),
                        ("publish", "room:quiet") => {
                            json!({"error": {"code": 1409, "message": "read only"}})
                        }
                        ("publish", _) if text.contains("darn") => json!({"result": {"data": {
                            "text": text.replace("darn", "****"), "by": call["name"],
                        }}}),
                        _ => json!({"result": {}}),
                    })
                }
            },
        ),
    );
    let addr = serve_app(app).await;
    let server = TestServer::start(&[
        "--proxy-subscribe",
        &format!("http://{addr}/subscribe"),
        "--proxy-publish",
        &format!("http://{addr}/publish"),
        "--namespace",
        "room:proxy-subscribe=true,proxy-publish=true",
    ])
    .await;
    let mut ann = server.client("?name=ann").await;
    let mut bob = server.client("?name=bob").await;
    ann.subscribe("room:open").await;
    bob.subscribe("room:open").await;
    match ann
        .request(json!({"op": "subscribe", "channel": "room:secret"}))
        .await
    {
        Outcome::Error(err) => assert_eq!((err.code, err.message.as_str()), (1403, "members only")),
        Outcome::Ok(body) => panic!("refused subscribe answered {body}"),
    }

    ann.publish("room:open", json!({"text": "hello"})).await;
    assert_eq!(bob.next_pub().await.data, json!({"text": "hello"}));
    ann.publish("room:open", json!({"text": "oh darn"})).await;
    let rewritten = json!({"text": "oh ****", "by": "ann"});
    assert_eq!(bob.next_pub().await.data, rewritten);
    assert_eq!(ann.next_pub().await.data, json!({"text": "hello"}));
    assert_eq!(ann.next_pub().await.data, rewritten);
    let history = ann
        .ok(json!({"op": "history", "channel": "room:open"}))
        .await;
    assert_eq!(
        history["publications"][1]["data"], rewritten,
        "stored as rewritten"
    );
    let refused = json!({"op": "publish", "channel": "room:quiet", "data": {"text": "x"}});
    match ann.request(refused).await {
        Outcome::Error(err) => assert_eq!((err.code, err.message.as_str()), (1409, "read only")),
        Outcome::Ok(body) => panic!("refused publish answered {body}"),
    }

    // Outside the namespace the backend is not asked.
    let before = calls.lock().unwrap().len();
    ann.subscribe("lobby").await;
    ann.publish("lobby", json!({"text": "darn"})).await;
    assert_eq!(ann.next_pub().await.data, json!({"text": "darn"}));
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), before, "{calls:?}");
    let subscribe = &calls[0];
    assert_eq!(subscribe["kind"], "subscribe");
    assert_eq!(subscribe["call"]["channel"], "room:open");
    assert_eq!(subscribe["call"]["name"], "ann");
    assert_eq!(subscribe["call"]["user"], Value::Null, "anonymous: no user");
    let publish = calls.iter().find(|c| c["kind"] == "publish").unwrap();
    assert_eq!(publish["call"]["data"], json!({"text": "hello"}));
    assert_eq!(publish["call"]["transport"], "websocket");
}

/// A connection the backend let in until `expire_at` is extended by `--proxy-refresh` before
/// it expires; one the backend declines to extend closes with 4003 at its expiry.
#[tokio::test]
async fn the_refresh_proxy_extends_connections_and_a_declined_one_expires() {
    let refreshes = Arc::new(AtomicUsize::new(0));
    let counted = refreshes.clone();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let app = Router::new()
        .route(
            "/connect",
            post(move |Json(call): Json<Value>| async move {
                Json(json!({"result": {"user": call["name"], "expire_at": now() + 2}}))
            }),
        )
        .route(
            "/refresh",
            post(move |Json(call): Json<Value>| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Json(match call["user"].as_str() {
                        Some("keep") => json!({"result": {"expire_at": now() + 3600}}),
                        _ => json!({"error": {"code": 1401, "message": "session over"}}),
                    })
                }
            }),
        );
    let addr = serve_app(app).await;
    let server = TestServer::start(&[
        "--proxy-connect",
        &format!("http://{addr}/connect"),
        "--proxy-refresh",
        &format!("http://{addr}/refresh"),
        "--proxy-timeout",
        "300ms",
    ])
    .await;
    let mut keep = server.client("?name=keep").await;
    let mut drop = server.client("?name=drop").await;
    assert!(keep.connected().await.expires_in_ms.is_some());
    assert!(drop.connected().await.expires_in_ms.is_some());
    // The declined one expires at the time both were given …
    match drop.ended(WAIT).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 4003),
        other => panic!("expected 4003, got {other:?}"),
    }
    // … and the extended one outlives it.
    assert_eq!(keep.ok(json!({"op": "ping"})).await, json!({}));
    assert_eq!(refreshes.load(Ordering::SeqCst), 2, "one refresh call each");
}
