//! The chat page in real headless Chromium, driven over the DevTools protocol: two tabs talk.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{TestServer, WAIT, within};

/// A headless Chromium and one DevTools connection to it; killed on drop.
pub(crate) struct Browser {
    _child: Child,
    devtools: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab, addressed by its DevTools session.
pub(crate) struct Tab {
    pub(crate) session: String,
    pub(crate) target: String,
}

impl Browser {
    pub(crate) async fn launch() -> Result<Self> {
        let binary = std::env::var("TIDINGS_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chromium-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&profile)?;
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (set TIDINGS_CHROMIUM)"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = within(WAIT * 3, "DevTools address", async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("chromium exited before DevTools was listening")
        })
        .await?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (devtools, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        Ok(Self {
            _child: child,
            devtools,
            next_id: 1,
            profile,
        })
    }

    /// Sends one DevTools command and returns its result, skipping events.
    pub(crate) async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.devtools
            .send(Message::text(command.to_string()))
            .await?;
        within(WAIT, method, async {
            while let Some(message) = self.devtools.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text)?;
                if reply["id"] == json!(id) {
                    if let Some(error) = reply.get("error") {
                        bail!("{method} failed: {error}");
                    }
                    return Ok(reply["result"].clone());
                }
            }
            bail!("DevTools connection closed")
        })
        .await
    }

    pub(crate) async fn open(&mut self, url: &str) -> Result<Tab> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .context("sessionId")?
                .to_owned(),
            target: target["targetId"].as_str().context("targetId")?.to_owned(),
        };
        self.call(Some(&tab.session), "Page.navigate", json!({"url": url}))
            .await?;
        // The navigation may replace the document under a first evaluation; try again until
        // the chat page's script has wired the form (before that, a click would submit it).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self
                .wait_for(&tab, "document.body?.dataset.ready === 'true'")
                .await
            {
                Ok(()) => return Ok(tab),
                Err(err) if tokio::time::Instant::now() > deadline => return Err(err),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Evaluates `expression` in the tab (awaiting a promise) and returns its JSON value.
    pub(crate) async fn eval(&mut self, tab: &Tab, expression: &str) -> Result<Value> {
        let result = self
            .call(
                Some(&tab.session),
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression} threw: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Resolves once `condition` holds in the page: the page re-checks it on every animation
    /// frame, bounded by the test's wait.
    pub(crate) async fn wait_for(&mut self, tab: &Tab, condition: &str) -> Result<()> {
        let script = format!(
            "new Promise((resolve, reject) => {{
                const deadline = performance.now() + {ms};
                const check = () => {{
                    let ok = false;
                    try {{ ok = !!({condition}); }} catch (e) {{}}
                    if (ok) resolve(true);
                    else if (performance.now() > deadline) reject(new Error('timed out: ' + {quoted}));
                    else setTimeout(check, 20);
                }};
                check();
            }})",
            ms = (WAIT - Duration::from_secs(1)).as_millis(),
            quoted = serde_json::to_string(condition)?,
        );
        self.eval(tab, &script).await.map(|_| ())
    }

    pub(crate) async fn join(&mut self, tab: &Tab, name: &str, room: &str) -> Result<()> {
        self.eval(
            tab,
            &format!(
                "document.getElementById('name').value = {name};
                 document.getElementById('room').value = {room};
                 document.querySelector('#join button').click(); true",
                name = json!(name),
                room = json!(room),
            ),
        )
        .await?;
        self.wait_for(
            tab,
            &format!(
                "document.getElementById('status').textContent === {}",
                json!(format!("connected as {name}"))
            ),
        )
        .await?;
        // Joined once the room's history is shown and its subscription exists.
        self.wait_for(
            tab,
            &format!(
                "window.tidings.subscriptions.has({})",
                json!(format!("chat:{room}"))
            ),
        )
        .await
    }

    /// Closes the tab, as a user closing it would.
    async fn close(&mut self, tab: Tab) -> Result<()> {
        self.call(None, "Target.closeTarget", json!({"targetId": tab.target}))
            .await
            .map(|_| ())
    }

    /// Waits until the member list shows exactly `users`.
    async fn wait_for_members(&mut self, tab: &Tab, users: &[&str]) -> Result<()> {
        self.wait_for(
            tab,
            &format!(
                "JSON.stringify([...document.querySelectorAll('#member-list li')]
                    .map(li => li.textContent)) === {}",
                json!(json!(users).to_string())
            ),
        )
        .await
    }

    pub(crate) async fn say(&mut self, tab: &Tab, text: &str) -> Result<()> {
        self.eval(
            tab,
            &format!(
                "document.getElementById('text').value = {};
                 document.querySelector('#composer button').click(); true",
                json!(text)
            ),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn wait_for_message(
        &mut self,
        tab: &Tab,
        user: &str,
        text: &str,
    ) -> Result<()> {
        self.wait_for(
            tab,
            &format!(
                "[...document.querySelectorAll('#messages li.message')].some(li =>
                    li.querySelector('.user').textContent === {} &&
                    li.querySelector('.text').textContent === {})",
                json!(user),
                json!(text)
            ),
        )
        .await
    }
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

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
