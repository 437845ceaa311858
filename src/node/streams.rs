//! Stream sessions (`/sse`, `/stream`) that take their commands as HTTP requests. Without
//! sticky sessions a command may reach any node: it travels through the broker to the node
//! that holds the session — named in the session's id — and to no other. A session is named by
//! `NODE.SECRET`, the node that holds it and 128 unguessable bits: the only proof a command
//! request carries that it speaks for that connection. An id whose node is not alive is
//! refused where it arrives, without a word to the broker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::control::Control;
use super::{Node, NodeError};

/// Commands a stream session may have waiting. A client sends its commands one request at a
/// time, each answered once the broker took it; only a client racing requests in parallel
/// can fill this, and it is then closed as a flood.
const BACKLOG: usize = 256;

/// The stream sessions on this node, by id.
#[derive(Debug, Default)]
pub(super) struct Streams(Mutex<HashMap<Arc<str>, Entry>>);

/// One session's waiting commands, shared by the node (which queues) and the session (which
/// takes). A queue that is empty holds nothing: an idle stream pays for the lock, the flag and
/// the wake-up, where a channel would keep a block of slots.
#[derive(Debug, Default)]
struct Mailbox {
    commands: Mutex<VecDeque<String>>,
    /// More came than [`BACKLOG`]; the session closes.
    flooded: AtomicBool,
    /// Wakes the session: a permit is kept if it is not waiting.
    arrived: Notify,
}

impl Mailbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Entry = Arc<Mailbox>;

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands commands to the session if it lives here; other nodes ignore them.
    pub(super) fn deliver(&self, session: &str, commands: Vec<String>) {
        let sessions = self.lock();
        let Some(entry) = sessions.get(session) else {
            return;
        };
        let mut queue = entry.queue();
        if queue.len() + commands.len() > BACKLOG {
            entry.flooded.store(true, Ordering::Release);
        } else {
            queue.extend(commands);
        }
        drop(queue);
        entry.arrived.notify_one();
    }
}

/// What a stream session receives.
#[derive(Debug)]
pub enum StreamInput {
    /// One command's JSON text.
    Command(String),
    /// More commands came than the session could queue: close it.
    Flooded,
}

/// One stream session's registration and its queue of commands; dropping it unregisters.
#[derive(Debug)]
pub struct StreamInbox {
    id: Arc<str>,
    mailbox: Arc<Mailbox>,
    streams: Weak<Streams>,
}

impl StreamInbox {
    /// The session's id: what its command requests name.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The next command, in the order the broker delivered them.
    pub async fn recv(&mut self) -> Option<StreamInput> {
        loop {
            if self.mailbox.flooded.load(Ordering::Acquire) {
                return Some(StreamInput::Flooded);
            }
            if let Some(command) = self.next_command() {
                return Some(StreamInput::Command(command));
            }
            self.mailbox.arrived.notified().await;
        }
    }
}

impl StreamInbox {
    fn next_command(&self) -> Option<String> {
        let mut queue = self.mailbox.queue();
        let command = queue.pop_front();
        // A burst's room is given back once it is read.
        if command.is_some() && queue.is_empty() {
            *queue = VecDeque::new();
        }
        command
    }
}

impl Drop for StreamInbox {
    fn drop(&mut self) {
        if let Some(streams) = self.streams.upgrade() {
            streams.lock().remove(&self.id);
        }
    }
}

/// `node.` and 128 random bits from the operating system, as hex: an id nobody can guess,
/// that says where its session lives.
fn session_id(node: &str) -> Arc<str> {
    let mut bytes = [0u8; 16];
    if let Err(err) = getrandom::fill(&mut bytes) {
        // No OS randomness is a broken host; fail loudly rather than hand out guessable ids.
        panic!("the operating system's random number generator failed: {err}");
    }
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}.{secret}").into()
}

/// The node a well-formed session id names: `NODE.SECRET`, NODE up to 64 ASCII letters and
/// digits, SECRET 32 hex digits.
pub fn session_node(session: &str) -> Option<&str> {
    let (node, secret) = session.split_once('.')?;
    let node_ok =
        !node.is_empty() && node.len() <= 64 && node.bytes().all(|b| b.is_ascii_alphanumeric());
    let secret_ok = secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (node_ok && secret_ok).then_some(node)
}

/// The nodes known to be alive, as last asked of the broker.
#[derive(Debug, Default)]
pub(super) struct LiveNodes {
    ids: HashSet<String>,
    /// When the broker was last asked; a miss asks again at most once per [`LOOKUP_EVERY`].
    asked: Option<Instant>,
}

/// How often an unknown node makes the node ask the broker again, at most: a flood of made-up
/// ids costs the broker one query a second.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// Why commands could not be handed to a stream session.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The id is not one a live node could have handed out.
    #[error("no stream session has this id")]
    Unknown,
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl Node {
    /// Registers a stream session on this node.
    pub fn open_stream(&self) -> StreamInbox {
        let mailbox = Arc::new(Mailbox::default());
        let id = session_id(&self.0.broker.node_id());
        self.0
            .local
            .streams
            .lock()
            .insert(id.clone(), mailbox.clone());
        StreamInbox {
            id,
            mailbox,
            streams: Arc::downgrade(&self.0.local.streams),
        }
    }

    /// Sends commands to a stream session on the node that holds it. Done once the broker has
    /// them: a client that waits for this before its next request keeps its commands in order,
    /// whichever nodes the requests reach (they all go through the broker, to that node).
    pub async fn send_to_stream(
        &self,
        session: &str,
        commands: Vec<String>,
    ) -> Result<(), StreamError> {
        let node = session_node(session).ok_or(StreamError::Unknown)?;
        if !self.is_alive(node).await {
            return Err(StreamError::Unknown);
        }
        let session = session.to_owned();
        let message = Control::Commands { session, commands }.encode()?;
        self.0
            .broker
            .control_to(node, &message)
            .await
            .map_err(|err| StreamError::Node(err.into()))
    }

    /// Whether `node` is alive, as far as the broker said lately (asking again, at most once
    /// per [`LOOKUP_EVERY`], when it is not known).
    async fn is_alive(&self, node: &str) -> bool {
        let ask = {
            let mut live = self.live_nodes();
            if node == self.0.broker.node_id() || live.ids.contains(node) {
                return true;
            }
            let ask = live.asked.is_none_or(|at| at.elapsed() >= LOOKUP_EVERY);
            if ask {
                live.asked = Some(Instant::now());
            }
            ask
        };
        if !ask {
            return false;
        }
        match self.0.broker.live_nodes().await {
            Ok(ids) => {
                let mut live = self.live_nodes();
                live.ids = ids.into_iter().collect();
                live.ids.contains(node)
            }
            Err(err) => {
                tracing::debug!(%err, "listing the live nodes failed");
                false
            }
        }
    }

    fn live_nodes(&self) -> std::sync::MutexGuard<'_, LiveNodes> {
        self.0
            .live_nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
