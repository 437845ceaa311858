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

/// A tab showing `/admin` of `addr` with the key as HTTP Basic credentials, on a phone's
/// screen of that size when given.
async fn open_admin(
    browser: &mut Browser,
    addr: std::net::SocketAddr,
    phone: Option<(u32, u32)>,
) -> Tab {
    let tab = browser.open_page("about:blank").await.unwrap();
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
    if let Some((width, height)) = phone {
        browser.screen(&tab, width, height, true).await.unwrap();
    }
    let url = json!({"url": format!("http://{addr}/admin")});
    browser.call(session, "Page.navigate", url).await.unwrap();
    tab
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
    let tab = open_admin(&mut browser, a.addr, None).await;

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

/// The admin page on a phone: nothing sticks out sideways; the busiest channels come with
/// their counts, a page at a time; a user is found on both nodes with their channels, and
/// disconnected from both after a confirmation.
#[tokio::test]
async fn on_a_phone_the_admin_page_pages_channels_finds_a_user_and_disconnects_them() {
    const SECRET: &str = "admin-test-secret-of-32-bytes-or-more";
    let token = |user: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": user}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = |name| {
        [
            "--redis-url",
            &url,
            "--api-key",
            KEY,
            "--token-hmac-secret",
            SECRET,
            "--node-name",
            name,
        ]
    };
    let a = TestServer::start(&args("web-1")).await;
    let b = TestServer::start(&args("web-2")).await;

    let mut alice_a = a.client(&format!("?token={}", token("alice"))).await;
    let mut alice_b = b.client(&format!("?token={}", token("alice"))).await;
    alice_a.subscribe("news").await;
    alice_a.subscribe("desk:alice").await;
    alice_b.subscribe("news").await;
    // 24 more channels on A, one subscriber each, and one with three: two pages of 20.
    let mut crowd = a.client(&format!("?token={}", token("crowd"))).await;
    for n in 0..24 {
        crowd.subscribe(&format!("quiet-{n:02}")).await;
    }
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let mut listener = a.client(&format!("?token={}", token("listener"))).await;
        listener.subscribe("busy").await;
        listeners.push(listener);
    }

    let mut browser = Browser::launch().await.unwrap();
    let tab = open_admin(&mut browser, a.addr, Some((390, 844))).await;

    // Both nodes by name; B's counts arrive with its announcement (every 5 s).
    let rows = "[...document.querySelectorAll('#channels tr[data-channel]')]
                  .map(tr => tr.dataset.channel + '=' + tr.cells[1].textContent)";
    let ready = format!(
        "document.querySelectorAll('#nodes tr[data-node]').length === 2
         && [...document.querySelectorAll('#nodes tr b')].map(b => b.textContent).sort().join() === 'web-1,web-2'
         && {rows}.slice(0, 2).join() === 'busy=3,news=2'"
    );
    if let Err(err) = browser.wait_for(&tab, &ready).await {
        let shown = browser.eval(&tab, "document.body.innerText").await;
        panic!("{err}: the page shows {shown:?}");
    }
    assert_eq!(
        browser
            .eval(&tab, "document.getElementById('node-name').textContent")
            .await
            .unwrap(),
        json!("web-1")
    );
    let fits = json!({"out": [], "scrolls": false});
    assert_eq!(browser.overflow(&tab).await.unwrap(), fits);
    let first_page = browser.eval(&tab, rows).await.unwrap();
    assert_eq!(first_page.as_array().unwrap().len(), 20, "{first_page}");
    browser
        .eval(
            &tab,
            "document.getElementById('channels-next').click(); true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            &tab,
            &format!("{rows}.length === 7 && {rows}[0] !== 'busy=3'"),
        )
        .await
        .unwrap();
    let second_page = browser.eval(&tab, rows).await.unwrap();
    let mut seen: Vec<String> = first_page
        .as_array()
        .unwrap()
        .iter()
        .chain(second_page.as_array().unwrap())
        .map(|row| row.as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 27, "every channel once: {seen:?}");
    assert_eq!(
        browser
            .eval(&tab, "document.getElementById('channels-next').disabled")
            .await
            .unwrap(),
        json!(true)
    );

    // Alice, on both nodes, with her channels.
    browser
        .eval(
            &tab,
            "document.getElementById('lookup-user').value = 'alice';
             document.querySelector('#lookup button').click(); true",
        )
        .await
        .unwrap();
    let found = "[...document.querySelectorAll('#lookup-result .node-block')].map(n =>
                   n.querySelector('h3 span').textContent + ':' +
                   [...n.querySelectorAll('.chips code')].map(c => c.textContent).join('+'))";
    browser
        .wait_for(
            &tab,
            &format!("{found}.join() === 'web-1:desk:alice+news,web-2:news'"),
        )
        .await
        .unwrap();
    assert_eq!(browser.overflow(&tab).await.unwrap(), fits);

    // Disconnect asks first; cancelling does nothing.
    browser
        .eval(&tab, "document.getElementById('disconnect').click(); true")
        .await
        .unwrap();
    browser
        .wait_for(&tab, "!document.getElementById('confirm').hidden")
        .await
        .unwrap();
    browser
        .eval(&tab, "document.getElementById('confirm-no').click(); true")
        .await
        .unwrap();
    alice_a.ok(json!({"op": "ping"})).await;
    browser
        .eval(
            &tab,
            "document.getElementById('disconnect').click();
             document.getElementById('confirm-yes').click(); true",
        )
        .await
        .unwrap();
    for alice in [&mut alice_a, &mut alice_b] {
        match alice.ended(crate::support::WAIT).await {
            crate::support::Ended::Closed(Some((4501, reason))) => {
                assert_eq!(reason, "disconnected by an operator")
            }
            other => panic!("expected 4501, got {other:?}"),
        }
    }
    browser
        .wait_for(
            &tab,
            "document.getElementById('lookup-summary')?.textContent
               === 'Disconnected. alice has no connection on any node that answered.'",
        )
        .await
        .unwrap();
    crowd.ok(json!({"op": "ping"})).await;
}
