//! The chat page in real headless Chromium, driven over the DevTools protocol: two tabs talk.

use serde_json::json;

use crate::support::TestServer;
use crate::support::browser::Browser;

#[tokio::test]
async fn two_tabs_chat_in_one_room_and_markup_stays_text() {
    let server = TestServer::start(&[]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let page = format!("http://{}/", server.addr);
    let alice = browser.open(&page).await.unwrap();
    let bob = browser.open(&page).await.unwrap();
    browser.join(&alice, "alice", "garden").await.unwrap();
    browser.join(&bob, "bob", "garden").await.unwrap();

    browser.say(&alice, "hello from alice").await.unwrap();
    browser
        .wait_for_message(&bob, "alice", "hello from alice")
        .await
        .unwrap();
    browser
        .wait_for_message(&alice, "alice", "hello from alice")
        .await
        .unwrap();

    let markup = "<img src=x onerror=\"document.title='owned'\">";
    browser.say(&bob, markup).await.unwrap();
    browser
        .wait_for_message(&alice, "bob", markup)
        .await
        .unwrap();
    let images = browser
        .eval(&alice, "document.querySelectorAll('#messages img').length")
        .await
        .unwrap();
    assert_eq!(
        images,
        json!(0),
        "a message is shown as text, never as markup"
    );

    // Alice's connection drops while Bob talks: after reconnecting, her page recovers what she
    // missed from history.
    browser
        .eval(
            &alice,
            "window.tidings.options.minDelayMs = 2000; window.tidings.ws.close(); true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            &alice,
            "document.getElementById('status').textContent === 'reconnecting…'",
        )
        .await
        .unwrap();
    browser.say(&bob, "while alice was away").await.unwrap();
    browser
        .wait_for_message(&bob, "bob", "while alice was away")
        .await
        .unwrap();
    browser
        .wait_for_message(&alice, "bob", "while alice was away")
        .await
        .unwrap();
    let texts =
        "[...document.querySelectorAll('#messages li.message .text')].map(e => e.textContent)";
    assert_eq!(
        browser.eval(&alice, texts).await.unwrap(),
        json!(["hello from alice", markup, "while alice was away"]),
        "each message once, in order"
    );

    // A newcomer sees the room's recent messages first.
    let late = browser.open(&page).await.unwrap();
    browser.join(&late, "late", "garden").await.unwrap();
    browser
        .wait_for_message(&late, "bob", "while alice was away")
        .await
        .unwrap();
    assert_eq!(
        browser.eval(&late, texts).await.unwrap(),
        browser.eval(&alice, texts).await.unwrap()
    );

    // A third tab in another room hears nothing from the garden.
    let carol = browser.open(&page).await.unwrap();
    browser.join(&carol, "carol", "attic").await.unwrap();
    browser.say(&alice, "garden only").await.unwrap();
    browser
        .wait_for_message(&bob, "alice", "garden only")
        .await
        .unwrap();
    browser.say(&carol, "attic only").await.unwrap();
    browser
        .wait_for_message(&carol, "carol", "attic only")
        .await
        .unwrap();
    let carol_messages = browser
        .eval(
            &carol,
            "[...document.querySelectorAll('#messages li.message .text')].map(e => e.textContent)",
        )
        .await
        .unwrap();
    assert_eq!(carol_messages, json!(["attic only"]));
}

#[tokio::test]
async fn the_page_reconnects_by_itself_after_the_server_restarts() {
    // The page's client retries with back-off; a server on the same port comes back.
    let mut server = TestServer::start(&[]).await;
    let addr = server.addr;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let page = format!("http://{addr}/");
    let tab = browser.open(&page).await.unwrap();
    browser.join(&tab, "dora", "lobby").await.unwrap();

    server.kill().await;
    browser
        .wait_for(
            &tab,
            "document.getElementById('status').textContent === 'reconnecting…'",
        )
        .await
        .unwrap();
    let _again = TestServer::start(&["--listen", &addr.to_string()]).await;
    browser
        .wait_for(
            &tab,
            "document.getElementById('status').textContent === 'connected as dora'",
        )
        .await
        .unwrap();
    // The restarted in-memory server lost the history: the page says so.
    browser
        .wait_for(
            &tab,
            "[...document.querySelectorAll('#messages li.system')].some(li =>
                li.textContent.startsWith('some messages sent while you were away could not be shown'))",
        )
        .await
        .unwrap();
    browser.say(&tab, "back again").await.unwrap();
    browser
        .wait_for_message(&tab, "dora", "back again")
        .await
        .unwrap();
}

#[tokio::test]
async fn chat_pages_on_two_nodes_talk_through_redis() {
    let redis = crate::support::redis::RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let on_a = browser.open(&format!("http://{}/", a.addr)).await.unwrap();
    let on_b = browser.open(&format!("http://{}/", b.addr)).await.unwrap();
    browser.join(&on_a, "ann", "bridge").await.unwrap();
    browser.join(&on_b, "ben", "bridge").await.unwrap();
    browser.say(&on_a, "from node a").await.unwrap();
    browser
        .wait_for_message(&on_b, "ann", "from node a")
        .await
        .unwrap();
    browser.say(&on_b, "from node b").await.unwrap();
    browser
        .wait_for_message(&on_a, "ben", "from node b")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_js_client_fails_over_to_the_next_url_and_recovers_what_it_missed() {
    let redis = crate::support::redis::RedisServer::start().await;
    let mut a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    // The page comes from node b (it stays up); the client lists node a first.
    let tab = browser.open(&format!("http://{}/", b.addr)).await.unwrap();
    browser
        .eval(
            &tab,
            &format!(
                "(async () => {{
                    const {{ Tidings }} = await import('/tidings.js');
                    window.got = [];
                    window.client = new Tidings([{a}, {b}], {{ name: 'failover', minDelayMs: 100 }});
                    window.client.subscribe('feed', (pub) => window.got.push(pub.offset));
                    return true;
                }})()",
                a = json!(a.url("/ws")),
                b = json!(b.url("/ws")),
            ),
        )
        .await
        .unwrap();
    browser
        .wait_for(
            &tab,
            "window.client.isConnected && window.client.subscriptions.get('feed').epoch !== null",
        )
        .await
        .unwrap();
    let mut publisher = b.client("").await;
    for n in 1..=5 {
        publisher.publish("feed", json!(n)).await;
    }
    browser
        .wait_for(&tab, "window.got.length === 5")
        .await
        .unwrap();
    a.kill().await;
    for n in 6..=20 {
        publisher.publish("feed", json!(n)).await;
    }
    browser
        .wait_for(&tab, "window.got.length === 20")
        .await
        .unwrap();
    assert_eq!(
        browser.eval(&tab, "window.got").await.unwrap(),
        json!((1..=20).collect::<Vec<u64>>()),
        "every offset once, in order, across the failover"
    );
}

#[tokio::test]
async fn chat_pages_on_two_nodes_list_each_other_and_see_a_leave() {
    let redis = crate::support::redis::RedisServer::start().await;
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let on_a = browser.open(&format!("http://{}/", a.addr)).await.unwrap();
    let on_b = browser.open(&format!("http://{}/", b.addr)).await.unwrap();
    browser.join(&on_a, "ann", "members").await.unwrap();
    browser.join(&on_b, "ben", "members").await.unwrap();
    browser
        .wait_for_members(&on_a, &["ann", "ben"])
        .await
        .unwrap();
    browser
        .wait_for_members(&on_b, &["ann", "ben"])
        .await
        .unwrap();
    browser
        .wait_for(
            &on_a,
            "[...document.querySelectorAll('#messages li.system')]
                .some(li => li.textContent === 'ben joined')",
        )
        .await
        .unwrap();
    browser.close(on_b).await.unwrap();
    browser.wait_for_members(&on_a, &["ann"]).await.unwrap();
    browser
        .wait_for(
            &on_a,
            "[...document.querySelectorAll('#messages li.system')]
                .some(li => li.textContent === 'ben left')",
        )
        .await
        .unwrap();
}
