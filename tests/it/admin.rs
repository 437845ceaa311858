use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::browser::{Browser, Tab};
use crate::support::redis::RedisServer;
use crate::support::{TestServer, WAIT, within};

const KEY: &str = "admin-test-key-0123456789";

/// The whole response (head and body) to `GET path` with an optional Authorization value.
async fn get(server: &TestServer, path: &str, authorization: Option<&str>) -> String {
    within(WAIT, "admin request", async {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await
}

fn basic(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn the_admin_page_needs_the_api_key_and_is_off_without_one() {
    let off = TestServer::start(&[]).await;
    assert!(get(&off, "/admin", None).await.starts_with("HTTP/1.1 404"));

    let server = TestServer::start(&["--api-key", KEY]).await;
    let refused = get(&server, "/admin", None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused.to_lowercase().contains("www-authenticate: basic"),
        "{refused}"
    );
    for wrong in [basic("not-the-key-at-all-000"), format!("apikey {KEY}x")] {
        let response = get(&server, "/admin/stats", Some(&wrong)).await;
        assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    }
    let page = get(&server, "/admin", Some(&basic(KEY))).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    let stats = get(&server, "/admin/stats", Some(&format!("apikey {KEY}"))).await;
    let body: serde_json::Value = serde_json::from_str(stats.split_once("\r\n\r\n").unwrap().1)
        .unwrap_or_else(|err| panic!("{err}: {stats}"));
    assert_eq!(body["broker"], json!({"kind": "memory", "up": true}));
    assert_eq!(body["nodes"].as_array().unwrap().len(), 1);
}

/// Two nodes on Redis; the page of one, in headless Chromium, shows both nodes, the
/// connections of both, the broker up, and draws its chart — fetching nothing from elsewhere.
#[tokio::test]
async fn the_admin_page_shows_every_node_and_live_rates_in_a_real_browser() {
    let redis = RedisServer::start().await;
    let args = ["--redis-url", &redis.url(), "--api-key", KEY];
    let a = TestServer::start(&args).await;
    let b = TestServer::start(&args).await;
    let mut clients = Vec::new();
    for (server, name) in [(&a, "x"), (&a, "y"), (&a, "z"), (&b, "w")] {
        let mut client = server.client(&format!("?name={name}")).await;
        client.subscribe(&format!("room-{name}")).await;
        clients.push(client);
    }
    clients[0].publish("room-x", json!("hello")).await;

    let mut browser = Browser::launch().await.unwrap();
    let target = browser
        .call(None, "Target.createTarget", json!({"url": "about:blank"}))
        .await
        .unwrap();
    let attached = browser
        .call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await
        .unwrap();
    let tab = Tab {
        session: attached["sessionId"].as_str().unwrap().to_owned(),
        target: target["targetId"].as_str().unwrap().to_owned(),
    };
    let session = Some(tab.session.as_str());
    browser
        .call(session, "Network.enable", json!({}))
        .await
        .unwrap();
    let headers = json!({"headers": {"Authorization": basic(KEY)}});
    browser
        .call(session, "Network.setExtraHTTPHeaders", headers)
        .await
        .unwrap();
    browser
        .call(
            session,
            "Page.navigate",
            json!({"url": format!("http://{}/admin", a.addr)}),
        )
        .await
        .unwrap();

    // B announces its connections within one announcement period (5 s).
    let condition = "document.querySelectorAll('#nodes tr[data-node]').length === 2 \
                     && document.getElementById('total-connections').textContent === '4'";
    if let Err(err) = browser.wait_for(&tab, condition).await {
        let page = browser
            .eval(
                &tab,
                "document.body ? document.body.innerText : location.href",
            )
            .await;
        panic!("{err}: the page shows {page:?}");
    }
    let state = browser
        .eval(
            &tab,
            "({broker: document.getElementById('broker-state').textContent,
               channels: document.getElementById('total-channels').textContent,
               status: document.getElementById('status').textContent,
               lines: document.querySelectorAll('#chart path[data-series]').length,
               foreign: performance.getEntriesByType('resource')
                   .map(e => e.name).filter(n => !n.startsWith(location.origin))})",
        )
        .await
        .unwrap();
    assert_eq!(state["broker"], "up", "{state}");
    assert_eq!(state["channels"], "4", "{state}");
    assert_eq!(state["status"], "", "{state}");
    assert_eq!(state["lines"], 3, "{state}");
    assert_eq!(state["foreign"], json!([]), "{state}");
    // A rate sample arrives within one sampling interval (5 s) and the page keeps polling.
    browser
        .wait_for(&tab, "Number(document.body.dataset.updated) >= 3")
        .await
        .unwrap();
    let samples = browser
        .eval(
            &tab,
            "fetch('/admin/stats').then(r => r.json()).then(s => s.rates.samples.length)",
        )
        .await
        .unwrap();
    assert!(samples.as_u64().unwrap() >= 1, "{samples}");
}
