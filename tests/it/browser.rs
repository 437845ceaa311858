//! The chat page in real headless Chromium, driven over the DevTools protocol: two tabs talk.

use serde_json::json;

use crate::support::TestServer;
use crate::support::browser::{Browser, Tab};

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
    browser
        .wait_for(
            &alice,
            "[...document.querySelectorAll('#messages li.system')]
                .some(li => li.textContent.endsWith('back — nothing missed'))",
        )
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
                li.textContent.endsWith('some messages could not be restored'))",
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
                .some(li => li.textContent.endsWith('ben joined'))",
        )
        .await
        .unwrap();
    browser.close(on_b).await.unwrap();
    browser.wait_for_members(&on_a, &["ann"]).await.unwrap();
    browser
        .wait_for(
            &on_a,
            "[...document.querySelectorAll('#messages li.system')]
                .some(li => li.textContent.endsWith('ben left'))",
        )
        .await
        .unwrap();
}

/// Sets the join form's fields and submits it.
async fn submit_join(browser: &mut Browser, tab: &Tab, name: &str, room: &str) {
    browser
        .eval(
            tab,
            &format!(
                "document.getElementById('name').value = {};
                 document.getElementById('room').value = {};
                 document.querySelector('#join button').click(); true",
                json!(name),
                json!(room)
            ),
        )
        .await
        .unwrap();
}

/// The chat page on a desktop and on a phone: a refused room or name is explained before
/// joining, your own messages are marked and timed, the member list is reachable, nothing
/// sticks out sideways, and rooms are switched and left without a reload.
#[tokio::test]
async fn the_chat_page_fits_a_desktop_and_a_phone_and_explains_what_it_refuses() {
    let server = TestServer::start(&[]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let page = format!("http://{}/", server.addr);
    for (width, height, phone) in [(1280, 800, false), (390, 844, true)] {
        let garden = format!("garden-{width}");
        let ann = browser.open(&page).await.unwrap();
        browser.screen(&ann, width, height, phone).await.unwrap();
        let fits = json!({"out": [], "scrolls": false});
        assert_eq!(
            browser.overflow(&ann).await.unwrap(),
            fits,
            "{width}px: join form"
        );

        // Refused before joining, and said why.
        let still_joining = "getComputedStyle(document.getElementById('join')).display !== 'none'
                             && window.tidings === undefined";
        submit_join(&mut browser, &ann, "ann", "my room").await;
        let said = "document.getElementById('join-error').textContent";
        browser
            .wait_for(&ann, &format!("{said}.includes('cannot contain spaces')"))
            .await
            .unwrap();
        assert_eq!(
            browser.eval(&ann, still_joining).await.unwrap(),
            json!(true)
        );
        submit_join(&mut browser, &ann, "ann 🙂", &garden).await;
        browser
            .wait_for(&ann, &format!("{said}.includes('cannot contain “🙂”')"))
            .await
            .unwrap();
        assert_eq!(
            browser.eval(&ann, still_joining).await.unwrap(),
            json!(true)
        );

        browser.join(&ann, "ann", &garden).await.unwrap();
        let bob = browser.open(&page).await.unwrap();
        browser.join(&bob, "bob", &garden).await.unwrap();
        browser.say(&ann, "hello from ann").await.unwrap();
        browser
            .wait_for_message(&bob, "ann", "hello from ann")
            .await
            .unwrap();
        browser
            .wait_for_message(&ann, "ann", "hello from ann")
            .await
            .unwrap();
        let marked = "[...document.querySelectorAll('#messages li.message')].map(li =>
                        [li.classList.contains('mine'), /^\\d\\d?[:.]\\d\\d/.test(li.querySelector('time')?.textContent ?? '')])";
        assert_eq!(
            browser.eval(&ann, marked).await.unwrap(),
            json!([[true, true]])
        );
        assert_eq!(
            browser.eval(&bob, marked).await.unwrap(),
            json!([[false, true]])
        );

        // The member list: beside the messages on a desktop, a drawer behind a button on a phone.
        let members =
            "(() => { const m = document.getElementById('members'), b = m.getBoundingClientRect();
                         return getComputedStyle(m).visibility === 'visible' && b.left >= 0
                             && b.right <= document.documentElement.clientWidth + 1; })()";
        let toggle =
            "getComputedStyle(document.getElementById('members-toggle')).display !== 'none'";
        assert_eq!(browser.eval(&ann, toggle).await.unwrap(), json!(phone));
        if phone {
            assert_eq!(browser.eval(&ann, members).await.unwrap(), json!(false));
            browser
                .eval(
                    &ann,
                    "document.getElementById('members-toggle').click(); true",
                )
                .await
                .unwrap();
        }
        browser.wait_for(&ann, members).await.unwrap();
        browser
            .wait_for_members(&ann, &["ann", "bob"])
            .await
            .unwrap();
        let me = "[...document.querySelectorAll('#member-list li.me')].map(li => li.textContent)";
        assert_eq!(browser.eval(&ann, me).await.unwrap(), json!(["ann"]));
        assert_eq!(
            browser.overflow(&ann).await.unwrap(),
            fits,
            "{width}px: chat"
        );

        // Another room, then back, then out — the same page all along.
        browser.eval(&ann, "window.samePage = true").await.unwrap();
        let attic = format!("attic-{width}");
        browser
            .eval(
                &ann,
                &format!(
                    "document.getElementById('switch-room').value = {};
                     document.querySelector('#switch button').click(); true",
                    json!(attic)
                ),
            )
            .await
            .unwrap();
        browser
            .wait_for(
                &ann,
                &format!(
                    "window.tidings.subscriptions.has({}) && !window.tidings.subscriptions.has({})
                     && document.getElementById('room-label').textContent === {}
                     && document.querySelectorAll('#messages li.message').length === 0",
                    json!(format!("chat:{attic}")),
                    json!(format!("chat:{garden}")),
                    json!(format!("# {attic}")),
                ),
            )
            .await
            .unwrap();
        browser.wait_for_members(&bob, &["bob"]).await.unwrap();
        if phone {
            browser
                .eval(
                    &ann,
                    "document.getElementById('members-toggle').click(); true",
                )
                .await
                .unwrap();
        }
        browser
            .eval(
                &ann,
                "[...document.querySelectorAll('#recent-rooms button')]
                    .find(b => b.textContent.startsWith('# garden')).click(); true",
            )
            .await
            .unwrap();
        browser
            .wait_for_message(&ann, "ann", "hello from ann")
            .await
            .unwrap();
        browser
            .eval(&ann, "document.getElementById('leave').click(); true")
            .await
            .unwrap();
        browser
            .wait_for(
                &ann,
                "window.tidings.state === 'closed' && window.samePage
                 && getComputedStyle(document.getElementById('join')).display !== 'none'",
            )
            .await
            .unwrap();
        browser.wait_for_members(&bob, &["bob"]).await.unwrap();
        assert_eq!(
            browser.overflow(&ann).await.unwrap(),
            fits,
            "{width}px: after leaving"
        );
        browser.close(ann).await.unwrap();
        browser.close(bob).await.unwrap();
    }
}

/// Without a name the server picks a guest name, and the page keeps it across reconnects.
#[tokio::test]
async fn a_guest_keeps_its_name_across_reconnects() {
    let server = TestServer::start(&[]).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let tab = browser
        .open(&format!("http://{}/", server.addr))
        .await
        .unwrap();
    submit_join(&mut browser, &tab, "", "porch").await;
    let status = "document.getElementById('status').textContent";
    browser
        .wait_for(&tab, &format!("{status}.startsWith('connected as guest-')"))
        .await
        .unwrap();
    let first = browser.eval(&tab, status).await.unwrap();
    // In the room first: the page lists members once its subscription is answered. Connected
    // is not enough — a drop before the first `subscribed` is an entry, not a return, and the
    // page rightly says nothing about what was missed.
    browser
        .wait_for(
            &tab,
            "document.querySelectorAll('#member-list li').length > 0",
        )
        .await
        .unwrap();
    browser
        .eval(&tab, "window.tidings.ws.close(); true")
        .await
        .unwrap();
    browser
        .wait_for(
            &tab,
            "[...document.querySelectorAll('#messages li.system')]
                .some(li => li.textContent.endsWith('back — nothing missed'))",
        )
        .await
        .unwrap();
    assert_eq!(browser.eval(&tab, status).await.unwrap(), first);
}

/// `/tidings.js` imported by a page of another origin: it loads (CORS), connects where the
/// server allows that origin, and where it does not, says why and stops.
#[tokio::test]
async fn a_page_of_another_origin_imports_the_client_and_hears_a_refusal_plainly() {
    let refused = TestServer::start(&[]).await;
    // The page's origin is known only once its server listens: it serves whatever the test
    // writes into `page` afterwards.
    let page = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get({
            let page = page.clone();
            move || {
                let html = page.lock().unwrap().clone();
                async move { axum::response::Html(html) }
            }
        }),
    );
    let origin = crate::support::serve_app(app).await;
    let allowed = TestServer::start(&["--allowed-origin", &format!("http://{origin}")]).await;
    *page.lock().unwrap() = format!(
        r#"<!doctype html><body><script type="module">
        import {{ Tidings }} from "http://{allowed}/tidings.js";
        const client = new Tidings("ws://{allowed}/ws", {{ name: "visitor" }});
        const sub = client.subscribe("lobby");
        sub.on("publication", (pub) => {{ window.heard = pub.data; }});
        await sub.ready();
        await sub.publish("from another origin");
        window.connected = client.connectedInfo.user;
        const closed = [];
        const elsewhere = new Tidings("ws://{refused}/ws", {{ name: "visitor" }});
        elsewhere.on("closed", (detail) => closed.push(detail));
        let attempts = 0;
        elsewhere.on("state", ({{ state }}) => {{ if (state === "connecting") attempts += 1; }});
        window.refusal = () => ({{ closed, attempts, state: elsewhere.state }});
        </script></body>"#,
        allowed = allowed.addr,
        refused = refused.addr,
    );
    let mut browser = Browser::launch().await.expect("launch chromium");
    let tab = browser
        .open_page(&format!("http://{origin}/"))
        .await
        .unwrap();
    browser
        .wait_for(&tab, "window.heard === 'from another origin'")
        .await
        .unwrap();
    assert_eq!(
        browser.eval(&tab, "window.connected").await.unwrap(),
        json!("visitor")
    );
    browser
        .wait_for(&tab, "window.refusal().state === 'closed'")
        .await
        .unwrap();
    let refusal = browser.eval(&tab, "window.refusal()").await.unwrap();
    let reason = refusal["closed"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("origin"), "{refusal}");
    assert_eq!(refusal["closed"].as_array().unwrap().len(), 1, "{refusal}");
    assert!(
        refusal["attempts"].as_u64().unwrap() <= 2,
        "retried: {refusal}"
    );
}

/// pusher-js's own browser build (from npm: `scripts/check` installs clients/pusher-compat
/// before the Rust tests run).
fn pusher_js_bundle() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/pusher-compat/node_modules/pusher-js/dist/web/pusher.min.js"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{path}: {err}; run `npm ci` in clients/pusher-compat"))
}

/// A signed `POST /apps/1/events`, as Pusher's server SDKs sign it.
async fn pusher_trigger(server: &str, channel: &str, event: &str, data: &str) {
    use tidings::pusher::sign;
    let body = json!({ "name": event, "channels": [channel], "data": data }).to_string();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut query = vec![
        ("auth_key".to_owned(), "app-key".to_owned()),
        ("auth_timestamp".to_owned(), timestamp),
        ("auth_version".to_owned(), "1.0".to_owned()),
        ("body_md5".to_owned(), sign::body_md5(body.as_bytes())),
    ];
    let message = sign::request_message("POST", "/apps/1/events", &query);
    let signature = sign::Secret::new("app-secret").sign(&message);
    query.push(("auth_signature".to_owned(), signature));
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let url = format!("http://{server}/apps/1/events?{}", query.join("&"));
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn pusher_js_in_chromium_joins_presence_whispers_and_hears_a_trigger() {
    use tidings::pusher::sign;
    let server = TestServer::start(&["--pusher-app", "1:app-key:app-secret"]).await;
    // The app's page and its auth endpoint (as a backend signs with the app's secret).
    let (host, port) = (server.addr.ip(), server.addr.port());
    let page = format!(
        r#"<!doctype html><body><script src="/pusher.min.js"></script><script>
        const user = new URLSearchParams(location.search).get("user");
        const pusher = new Pusher("app-key", {{
          wsHost: "{host}", wsPort: {port}, forceTLS: false, enabledTransports: ["ws"],
          cluster: "mt1", disableStats: true,
          channelAuthorization: {{ endpoint: "/auth?user=" + user }},
        }});
        const room = pusher.subscribe("presence-room");
        window.heard = []; window.whispers = [];
        room.bind("pusher:subscription_succeeded", () => {{ window.ready = true; }});
        room.bind("news", (data) => window.heard.push(data));
        room.bind("client-wave", (data, meta) => window.whispers.push([data, meta.user_id]));
        window.count = () => room.members.count;
        window.wave = () => room.trigger("client-wave", {{ from: user }});
        </script></body>"#
    );
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/pusher.min.js",
            axum::routing::get(|| async {
                ([("content-type", "text/javascript")], pusher_js_bundle())
            }),
        )
        .route(
            "/auth",
            axum::routing::post(
                |axum::extract::Query(who): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >,
                 body: String| async move {
                    let form: std::collections::HashMap<String, String> =
                        form_urlencoded::parse(body.as_bytes())
                            .into_owned()
                            .collect();
                    let data = json!({ "user_id": who["user"] }).to_string();
                    let message = sign::channel_auth_message(
                        &form["socket_id"],
                        &form["channel_name"],
                        Some(&data),
                    );
                    let signature = sign::Secret::new("app-secret").sign(&message);
                    axum::Json(
                        json!({ "auth": format!("app-key:{signature}"), "channel_data": data }),
                    )
                },
            ),
        );
    let origin = crate::support::serve_app(app).await;
    let mut browser = Browser::launch().await.expect("launch chromium");
    let ann = browser
        .open_page(&format!("http://{origin}/?user=ann"))
        .await
        .unwrap();
    browser
        .wait_for(&ann, "window.ready === true")
        .await
        .unwrap();
    let bob = browser
        .open_page(&format!("http://{origin}/?user=bob"))
        .await
        .unwrap();
    browser
        .wait_for(&bob, "window.ready === true")
        .await
        .unwrap();
    assert_eq!(
        browser.eval(&bob, "window.count()").await.unwrap(),
        json!(2)
    );
    browser
        .wait_for(&ann, "window.count() === 2")
        .await
        .unwrap();

    browser.eval(&ann, "window.wave()").await.unwrap();
    browser
        .wait_for(&bob, "window.whispers.length === 1")
        .await
        .unwrap();
    assert_eq!(
        browser.eval(&bob, "window.whispers").await.unwrap(),
        json!([[{ "from": "ann" }, "ann"]])
    );
    pusher_trigger(
        &server.addr.to_string(),
        "presence-room",
        "news",
        "{\"n\":1}",
    )
    .await;
    for tab in [&ann, &bob] {
        browser
            .wait_for(tab, "window.heard.length === 1")
            .await
            .unwrap();
        assert_eq!(
            browser.eval(tab, "window.heard").await.unwrap(),
            json!([{ "n": 1 }])
        );
    }
    // The sender never hears its own whisper.
    assert_eq!(
        browser.eval(&ann, "window.whispers").await.unwrap(),
        json!([])
    );
    browser.close(bob).await.unwrap();
    browser
        .wait_for(&ann, "window.count() === 1")
        .await
        .unwrap();
}
