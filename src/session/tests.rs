//! Sessions driven through an in-memory transport: no sockets, the real node, hub and outbox
//! (on the memory broker, which only the server names). Proves that the session core needs
//! nothing of WebSockets, and that a codec other than protocol v1 plugs into the same seam.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::ConnectionCaps;
use crate::frame::{Frame, Messages};
use crate::limits::Admission;
use crate::protocol::{Codec, Outcome, Push, Reply, ServerFrame, V1};

pub(crate) fn config() -> SessionConfig {
    SessionConfig {
        max_queue_size: 1 << 20,
        max_message_size: 64 << 10,
        max_subscriptions: 16,
        ping_interval: Duration::from_secs(25),
        pong_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        publish_rate: Rate::new(1000, 1000),
        command_rate: Rate::new(1000, 1000),
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: None,
        drain_window: Duration::ZERO,
        drain_started: Arc::default(),
    }
}

fn node() -> Node {
    crate::server::memory_node()
}

/// What the session did to its transport.
#[derive(Debug, PartialEq)]
enum Out {
    Frame(String),
    Close(CloseCode),
}

struct MemoryIncoming(mpsc::UnboundedReceiver<Inbound>);

impl Incoming for MemoryIncoming {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        self.0.recv().await.map(Ok)
    }
}

struct MemoryOutgoing<C = V1> {
    out: mpsc::UnboundedSender<Out>,
    /// A client that stopped reading: no write ever completes.
    stalled: bool,
    codec: C,
}

impl<C: Codec<Messages> + Send> Outgoing for MemoryOutgoing<C> {
    async fn feed(&mut self, item: Item) -> Result<usize, WriteError> {
        if self.stalled {
            std::future::pending::<()>().await;
        }
        let mut messages = Messages::default();
        self.codec.encode(item, &mut messages);
        let mut bytes = 0;
        for frame in messages {
            bytes += frame.len();
            let _ = self.out.send(Out::Frame(frame.as_str().to_owned()));
        }
        Ok(bytes)
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        Ok(())
    }

    async fn close(&mut self, code: CloseCode, _: &str, _: Duration) {
        let _ = self.out.send(Out::Close(code));
    }

    async fn finish(&mut self, _: Duration) {}
}

/// The client's end of an in-memory connection.
struct Client {
    to_server: mpsc::UnboundedSender<Inbound>,
    from_server: mpsc::UnboundedReceiver<Out>,
    next_id: u64,
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

impl Client {
    fn connect(node: &Node, config: SessionConfig, name: &str, stalled: bool) -> Self {
        Self::connect_with(node, config, name, stalled, V1)
    }

    fn connect_with<C: Codec<Messages> + Send + 'static>(
        node: &Node,
        config: SessionConfig,
        name: &str,
        stalled: bool,
        codec: C,
    ) -> Self {
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (out, from_server) = mpsc::unbounded_channel();
        let admission = Admission::new(ConnectionCaps {
            total: 0,
            per_user: 0,
            per_ip: 0,
        });
        let ticket = admission
            .admit(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("no caps");
        let start = Box::new(Start {
            node: node.clone(),
            config: Arc::new(config),
            gate: Arc::new(Gate {
                verifier: None,
                allow_anonymous: true,
                backend: no_backend(),
            }),
            handshake: Handshake {
                client: crate::session::client_id(),
                transport: "websocket",
                name: Some(name.into()),
                token: None,
                ticket,
                forwarded: Box::default(),
            },
            shutdown: CancellationToken::new(),
        });
        let outgoing = MemoryOutgoing {
            out,
            stalled,
            codec,
        };
        tokio::spawn(run(MemoryIncoming(incoming), outgoing, start));
        Self {
            to_server,
            from_server,
            next_id: 1,
        }
    }

    fn send(&self, frame: Value) {
        self.to_server
            .send(Inbound::Text(frame.to_string()))
            .expect("session alive");
    }

    /// The next text the session wrote, whatever its codec.
    async fn text(&mut self) -> String {
        match self.next().await {
            Out::Frame(text) => text,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Out {
        within("a frame", self.from_server.recv())
            .await
            .expect("session still writing")
    }

    async fn frame(&mut self) -> ServerFrame {
        match self.next().await {
            Out::Frame(text) => ServerFrame::parse(&text).expect("a server frame"),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends `command` with an id and returns the `ok` body, skipping pushes.
    async fn ok(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(command);
        loop {
            match self.frame().await {
                ServerFrame::Reply(Reply {
                    id: got,
                    outcome: Outcome::Ok(body),
                }) if got == id => return body,
                ServerFrame::Reply(reply) => panic!("unexpected reply {reply:?}"),
                ServerFrame::Push(_) => continue,
            }
        }
    }

    async fn next_pub(&mut self) -> crate::protocol::Publication<Value> {
        loop {
            match self.frame().await {
                ServerFrame::Push(Push::Pub(publication)) => return publication,
                ServerFrame::Push(Push::Ping {}) => self.send(json!({"op": "pong"})),
                _ => continue,
            }
        }
    }

    /// Reads until the session closes; the close code.
    async fn closed(&mut self) -> CloseCode {
        loop {
            if let Out::Close(code) = self.next().await {
                return code;
            }
        }
    }
}

#[tokio::test]
async fn a_publication_reaches_a_subscriber_stamped_with_its_publisher() {
    let node = node();
    let mut alice = Client::connect(&node, config(), "alice", false);
    let mut bob = Client::connect(&node, config(), "bob", false);
    let subscribed = alice
        .ok(json!({"op": "subscribe", "channel": "room"}))
        .await;
    assert_eq!(subscribed["offset"], 0);
    let published = bob
        .ok(json!({"op": "publish", "channel": "room", "data": {"text": "hi"}}))
        .await;
    assert_eq!(published["offset"], 1);
    let publication = alice.next_pub().await;
    assert_eq!(publication.offset, 1);
    assert_eq!(publication.data, json!({"text": "hi"}));
    assert_eq!(&*publication.info.user, "bob");
}

#[tokio::test]
async fn a_subscription_from_a_position_recovers_what_was_missed() {
    let node = node();
    let mut publisher = Client::connect(&node, config(), "pub", false);
    let first = publisher
        .ok(json!({"op": "subscribe", "channel": "room"}))
        .await;
    for n in 1..=3 {
        publisher
            .ok(json!({"op": "publish", "channel": "room", "data": n}))
            .await;
    }
    let mut late = Client::connect(&node, config(), "late", false);
    let since = json!({"offset": 1, "epoch": first["epoch"]});
    let body = late
        .ok(json!({"op": "subscribe", "channel": "room", "since": since}))
        .await;
    assert_eq!(body["recovered"], true);
    let offsets: Vec<u64> = body["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, [2, 3]);

    let other_epoch = json!({"offset": 1, "epoch": "another"});
    let body = Client::connect(&node, config(), "lost", false)
        .ok(json!({"op": "subscribe", "channel": "room", "since": other_epoch}))
        .await;
    assert_eq!(body["recovered"], false);
    assert!(body["reason"].as_str().expect("a reason").contains("epoch"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer_and_others_go_on() {
    let node = node();
    let small = SessionConfig {
        max_queue_size: 4096,
        ..config()
    };
    let mut stalled = Client::connect(&node, small, "stalled", true);
    stalled.send(json!({"op": "subscribe", "channel": "room"}));
    let mut reader = Client::connect(&node, config(), "reader", false);
    reader
        .ok(json!({"op": "subscribe", "channel": "room"}))
        .await;
    let mut publisher = Client::connect(&node, config(), "pub", false);
    let data = "x".repeat(500);
    for _ in 0..20 {
        publisher
            .ok(json!({"op": "publish", "channel": "room", "data": data}))
            .await;
    }
    assert_eq!(stalled.closed().await, CloseCode::SlowConsumer);
    for offset in 1..=20 {
        assert_eq!(reader.next_pub().await.offset, offset);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_after_a_ping_is_closed_and_one_that_answers_stays() {
    let node = node();
    let mut silent = Client::connect(&node, config(), "silent", false);
    let mut lively = Client::connect(&node, config(), "lively", false);
    let started = tokio::time::Instant::now();
    let silent_one = async {
        // It reads its frames but never sends a thing.
        assert!(matches!(
            silent.frame().await,
            ServerFrame::Push(Push::Connected(_))
        ));
        assert_eq!(silent.frame().await, ServerFrame::Push(Push::Ping {}));
        assert_eq!(silent.closed().await, CloseCode::NoPong);
        started.elapsed()
    };
    let lively_one = async {
        let mut pings = 0;
        while pings < 4 {
            if lively.frame().await == ServerFrame::Push(Push::Ping {}) {
                lively.send(json!({"op": "pong"}));
                pings += 1;
            }
        }
        lively.ok(json!({"op": "ping"})).await;
        started.elapsed()
    };
    let (silent_for, lively_for) = tokio::join!(silent_one, lively_one);
    assert!(
        silent_for >= Duration::from_secs(35) && silent_for < Duration::from_secs(36),
        "closed {silent_for:?} after connecting: interval + pong timeout"
    );
    assert!(lively_for >= Duration::from_secs(100), "{lively_for:?}");
}

#[tokio::test]
async fn without_anonymous_access_no_command_runs_before_connect() {
    let node = node();
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (out, mut from_server) = mpsc::unbounded_channel();
    let admission = Admission::new(ConnectionCaps {
        total: 0,
        per_user: 0,
        per_ip: 0,
    });
    let start = Box::new(Start {
        node: node.clone(),
        config: Arc::new(config()),
        gate: Arc::new(Gate {
            verifier: None,
            allow_anonymous: false,
            backend: no_backend(),
        }),
        handshake: Handshake {
            client: crate::session::client_id(),
            transport: "websocket",
            name: Some("sneaky".into()),
            token: None,
            ticket: admission.admit(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
            forwarded: Box::default(),
        },
        shutdown: CancellationToken::new(),
    });
    tokio::spawn(run(
        MemoryIncoming(incoming),
        MemoryOutgoing {
            out,
            stalled: false,
            codec: V1,
        },
        start,
    ));
    let subscribe = json!({"id": 1, "op": "subscribe", "channel": "room"});
    to_server
        .send(Inbound::Text(subscribe.to_string()))
        .unwrap();
    assert_eq!(
        within("the close", from_server.recv()).await,
        Some(Out::Close(CloseCode::PolicyViolation))
    );
    let channels = node.channels().await.unwrap();
    assert!(channels.is_empty(), "nothing was subscribed: {channels:?}");
}

/// A wire of its own: one line of plain words per item, to prove that the session core decides
/// and a codec only formats. Publications come from the typed item, not from its v1 bytes.
struct Words;

impl Codec<Messages> for Words {
    fn encode(&mut self, item: Item, out: &mut Messages) {
        let text = match item {
            Item::Connected(greeting) => format!("hello {}", greeting.connected.user),
            Item::Subscribed(s) => format!("listening to {} from {}", s.channel, s.position.offset),
            Item::Publication(published) => {
                let p = &published.publication;
                format!(
                    "{} said {} in {} (#{})",
                    p.info.user, p.data, p.channel, p.offset
                )
            }
            Item::Reply { id, .. } => format!("done {id}"),
            Item::Error(refused) => format!("refused: {}", refused.error.message),
            _ => return,
        };
        out.push(Frame::from(text));
    }
}

#[tokio::test]
async fn another_codec_speaks_its_own_words_through_the_same_session_core() {
    let node = node();
    let mut listener = Client::connect_with(&node, config(), "ann", false, Words);
    assert_eq!(listener.text().await, "hello ann");
    listener.send(json!({"id": 1, "op": "subscribe", "channel": "room"}));
    assert_eq!(listener.text().await, "listening to room from 0");
    // Permissions are the session core's: a codec never sees what it may not say.
    listener.send(json!({"id": 2, "op": "subscribe", "channel": "room"}));
    assert_eq!(listener.text().await, "refused: already subscribed to room");
    let mut talker = Client::connect(&node, config(), "bo", false);
    talker
        .ok(json!({"op": "publish", "channel": "room", "data": {"t": 1}}))
        .await;
    assert_eq!(listener.text().await, r#"bo said {"t":1} in room (#1)"#);
}

/// A backend handle with no endpoint configured.
fn no_backend() -> Arc<crate::backend::Backend> {
    let settings = crate::config::ProxySettings::default();
    Arc::new(crate::backend::Backend::new(&settings).expect("no backend"))
}
