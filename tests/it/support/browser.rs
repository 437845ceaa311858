//! Headless Chromium driven over the DevTools protocol: tabs, script evaluation, waits that
//! the page checks itself, and the chat page's own moves (join, say, the member list).

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

use super::{WAIT, within};

/// A headless Chromium and one DevTools connection to it; killed on drop.
pub struct Browser {
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
pub struct Tab {
    pub session: String,
    pub target: String,
}

impl Browser {
    pub async fn launch() -> Result<Self> {
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
    pub async fn call(
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

    /// A new tab showing `url`, whatever the page (no wait for the chat page's script).
    pub async fn open_page(&mut self, url: &str) -> Result<Tab> {
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
        Ok(tab)
    }

    /// A new tab showing the chat page at `url`, once its script has wired the form.
    pub async fn open(&mut self, url: &str) -> Result<Tab> {
        let tab = self.open_page(url).await?;
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
    pub async fn eval(&mut self, tab: &Tab, expression: &str) -> Result<Value> {
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
    pub async fn wait_for(&mut self, tab: &Tab, condition: &str) -> Result<()> {
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

    pub async fn join(&mut self, tab: &Tab, name: &str, room: &str) -> Result<()> {
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

    /// Gives the tab a screen of `width`×`height` CSS pixels; `mobile` as a phone has it
    /// (meta viewport honoured, touch).
    pub async fn screen(&mut self, tab: &Tab, width: u32, height: u32, mobile: bool) -> Result<()> {
        let metrics = json!({"width": width, "height": height, "screenWidth": width,
                             "screenHeight": height, "deviceScaleFactor": if mobile { 3 } else { 1 },
                             "mobile": mobile});
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            metrics,
        )
        .await?;
        self.wait_for(tab, &format!("window.screen.width === {width}"))
            .await
    }

    /// The visible elements that stick out of the window sideways (by id, class or tag), and
    /// whether the page scrolls sideways at all: empty and false on a page that fits.
    pub async fn overflow(&mut self, tab: &Tab) -> Result<Value> {
        self.eval(
            tab,
            "(() => {
                const width = document.documentElement.clientWidth;
                const out = [...document.querySelectorAll('body *')].filter((e) => {
                    const style = getComputedStyle(e), box = e.getBoundingClientRect();
                    if (style.visibility === 'hidden' || box.width === 0 || box.height === 0) return false;
                    return box.right > width + 1 || box.left < -1;
                }).map((e) => e.id ? '#' + e.id : e.className ? e.tagName + '.' + e.className : e.tagName);
                return {out, scrolls: document.documentElement.scrollWidth > width};
            })()",
        )
        .await
    }

    /// Closes the tab, as a user closing it would.
    pub async fn close(&mut self, tab: Tab) -> Result<()> {
        self.call(None, "Target.closeTarget", json!({"targetId": tab.target}))
            .await
            .map(|_| ())
    }

    /// Waits until the member list shows exactly `users`.
    pub async fn wait_for_members(&mut self, tab: &Tab, users: &[&str]) -> Result<()> {
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

    pub async fn say(&mut self, tab: &Tab, text: &str) -> Result<()> {
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

    pub async fn wait_for_message(&mut self, tab: &Tab, user: &str, text: &str) -> Result<()> {
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
