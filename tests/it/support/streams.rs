//! HTTP streams from the test's side: a balancer that is never sticky (each request goes to
//! the next node in turn, over a connection of its own) and can block WebSockets, and a client
//! of `/stream` that sends its commands as requests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::extract::{Request, State, WebSocketUpgrade};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{WAIT, serve_app, within};

/// What the balancer does with a WebSocket upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebSockets {
    /// Refused with 403, as a proxy that forbids them.
    Refuse,
    /// Accepted (101), then nothing ever arrives: the middlebox that kills them silently.
    Silent,
}

pub struct Balancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    websockets: WebSockets,
    client: reqwest::Client,
    /// Which backend served each request: (method path, index).
    served: Mutex<Vec<(String, usize)>>,
    /// `true` while cut: open responses end abruptly and new requests wait.
    cut: watch::Sender<bool>,
}

impl Balancer {
    pub async fn start(backends: &[SocketAddr], websockets: WebSockets) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            backends: backends.to_vec(),
            next: AtomicUsize::new(0),
            websockets,
            client,
            served: Mutex::default(),
            cut: watch::channel(false).0,
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let addr = serve_app(app).await;
        Self { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The backends that served requests starting with `prefix` (`"GET /sse"`), in order.
    pub fn log(&self) -> Vec<(String, usize)> {
        self.shared.served.lock().unwrap().clone()
    }

    pub fn served(&self, prefix: &str) -> Vec<usize> {
        let served = self.shared.served.lock().unwrap();
        served
            .iter()
            .filter(|(what, _)| what.starts_with(prefix))
            .map(|(_, index)| *index)
            .collect()
    }

    /// Drops every open response and holds new requests until [`Balancer::resume`].
    pub fn cut(&self) {
        self.shared.cut.send_replace(true);
    }

    pub fn resume(&self) {
        self.shared.cut.send_replace(false);
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        return match shared.websockets {
            WebSockets::Refuse => (StatusCode::FORBIDDEN, "no WebSockets here").into_response(),
            WebSockets::Silent => {
                let (mut parts, _) = request.into_parts();
                let Ok(ws) =
                    <WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(
                        &mut parts,
                        &(),
                    )
                    .await
                else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                ws.on_upgrade(|socket| async move {
                    // Holds the socket and never says a word.
                    let _socket = socket;
                    std::future::pending::<()>().await;
                })
            }
        };
    }
    let mut cut = shared.cut.subscribe();
    let _ = cut.wait_for(|cut| !cut).await.map(drop);
    let index = shared.next.fetch_add(1, Ordering::SeqCst) % shared.backends.len();
    let backend = shared.backends[index];
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    shared
        .served
        .lock()
        .unwrap()
        .push((format!("{} {path}", parts.method), index));
    let body = axum::body::to_bytes(body, 1 << 22)
        .await
        .unwrap_or_default();
    let mut outgoing = shared
        .client
        .request(parts.method.clone(), format!("http://{backend}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::CONNECTION && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(mut answer) = outgoing.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        let hop = [
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::CONTENT_LENGTH,
        ];
        if !hop.contains(name) {
            response = response.header(name, value);
        }
    }
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = async { cut.wait_for(|cut| *cut).await.map(drop) } => {
                    let _ = chunks.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
                next = answer.chunk() => next,
            };
            match next {
                Ok(Some(chunk)) => {
                    if chunks.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    let _ = chunks.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    response.body(Body::from_stream(stream)).unwrap()
}

/// A client of `/stream`: reads its lines, and sends commands as requests (each on a
/// connection of its own, so a balancer may route each elsewhere).
#[derive(Debug)]
pub struct StreamClient {
    response: reqwest::Response,
    buffer: Vec<u8>,
    lines: VecDeque<Value>,
    pub session: String,
    base: String,
    next_id: u64,
    client: reqwest::Client,
}

impl StreamClient {
    /// Opens `base` + `/stream?query` and waits for the response's head.
    pub async fn open(base: &str, query: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let response = within(WAIT, "stream response", async {
            client.get(format!("{base}/stream?{query}")).send().await
        })
        .await?;
        if !response.status().is_success() {
            bail!("stream refused: {}", response.status());
        }
        let session = response
            .headers()
            .get(HeaderName::from_static("tidings-session"))
            .context("no session header")?
            .to_str()?
            .to_owned();
        Ok(Self {
            response,
            buffer: Vec::new(),
            lines: VecDeque::new(),
            session,
            base: base.to_owned(),
            next_id: 1,
            client,
        })
    }

    /// The next line of the stream; `None` when it ended.
    pub async fn next(&mut self) -> Option<Value> {
        within(WAIT, "a stream line", async {
            loop {
                if let Some(line) = self.lines.pop_front() {
                    return Some(line);
                }
                let chunk = self.response.chunk().await.ok()??;
                self.buffer.extend_from_slice(&chunk);
                while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    let value = serde_json::from_slice(&line).expect("each line is JSON");
                    self.lines.push_back(value);
                }
            }
        })
        .await
    }

    /// The next line that has `key`, skipping others (pings, presence).
    pub async fn next_with(&mut self, key: &str) -> Value {
        loop {
            let line = self.next().await.expect("stream ended");
            if line.get(key).is_some() {
                return line;
            }
        }
    }

    /// POSTs commands; returns the HTTP status.
    pub async fn send(&self, commands: &[Value]) -> u16 {
        let body = json!({"session": self.session, "commands": commands});
        let sent = self
            .client
            .post(format!("{}/stream", self.base))
            .body(body.to_string())
            .send();
        within(WAIT, "command request", sent)
            .await
            .expect("command request")
            .status()
            .as_u16()
    }

    /// Sends one command with an id and waits for its reply on the stream, keeping the
    /// pushes that come first for later.
    pub async fn request(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        assert_eq!(self.send(&[command]).await, 202);
        let mut skipped = VecDeque::new();
        let reply = loop {
            let line = self.next().await.expect("stream ended before the reply");
            if line["id"] == json!(id) {
                break line;
            }
            skipped.push_back(line);
        };
        skipped.extend(self.lines.drain(..));
        self.lines = skipped;
        reply
    }

    pub async fn ok(&mut self, command: Value) -> Value {
        let reply = self.request(command.clone()).await;
        assert!(reply.get("ok").is_some(), "{command} failed: {reply}");
        reply["ok"].clone()
    }
}
