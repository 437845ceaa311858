//! Stream sessions (`/sse`, `/stream`) that take their commands as HTTP requests. Without
//! sticky sessions a command may reach any node: it travels through the broker to every node,
//! and the one holding the session hands it on. A session is named by an unguessable id, the
//! only proof a command request carries that it speaks for that connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::local::Control;
use super::{Local, Node, NodeError};

/// Commands a stream session may have waiting. A client sends its commands one request at a
/// time, each answered once the broker took it; only a client racing requests in parallel
/// can fill this, and it is then closed as a flood.
const BACKLOG: usize = 256;

/// The stream sessions on this node, by id.
#[derive(Debug, Default)]
pub(super) struct Streams(Mutex<HashMap<Arc<str>, Entry>>);

#[derive(Debug)]
struct Entry {
    commands: mpsc::Sender<String>,
    flooded: CancellationToken,
}

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
        for command in commands {
            if entry.commands.try_send(command).is_err() {
                entry.flooded.cancel();
                return;
            }
        }
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
    commands: mpsc::Receiver<String>,
    flooded: CancellationToken,
    local: Weak<Local>,
}

impl StreamInbox {
    /// The session's id: what its command requests name.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The next command, in the order the broker delivered them.
    pub async fn recv(&mut self) -> Option<StreamInput> {
        tokio::select! {
            biased;
            () = self.flooded.cancelled() => Some(StreamInput::Flooded),
            command = self.commands.recv() => command.map(StreamInput::Command),
        }
    }
}

impl Drop for StreamInbox {
    fn drop(&mut self) {
        if let Some(local) = self.local.upgrade() {
            local.streams.lock().remove(&self.id);
        }
    }
}

/// 128 random bits from the operating system, as hex: an id nobody can guess.
fn session_id() -> Arc<str> {
    let mut bytes = [0u8; 16];
    if let Err(err) = getrandom::fill(&mut bytes) {
        // No OS randomness is a broken host; fail loudly rather than hand out guessable ids.
        panic!("the operating system's random number generator failed: {err}");
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

impl Node {
    /// Registers a stream session on this node.
    pub fn open_stream(&self) -> StreamInbox {
        let (sender, commands) = mpsc::channel(BACKLOG);
        let flooded = CancellationToken::new();
        let id = session_id();
        let entry = Entry {
            commands: sender,
            flooded: flooded.clone(),
        };
        self.0.local.streams.lock().insert(id.clone(), entry);
        StreamInbox {
            id,
            commands,
            flooded,
            local: Arc::downgrade(&self.0.local),
        }
    }

    /// Sends commands to a stream session wherever it lives. Done once the broker has them:
    /// a client that waits for this before its next request keeps its commands in order,
    /// whichever nodes the requests reach.
    pub async fn send_to_stream(
        &self,
        session: &str,
        commands: Vec<String>,
    ) -> Result<(), NodeError> {
        let session = session.to_owned();
        self.control(&Control::Commands { session, commands }).await
    }
}
