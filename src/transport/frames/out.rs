//! The writing side of a socket: frames queued whole (a header built in place, the payload
//! shared) and gathered into one `writev` per batch, by either half.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::{CLOSE, FIN, RSV1};

/// Pieces handed to one `writev` (the kernel takes up to 1,024).
const MAX_IOV: usize = 256;

/// The socket both halves share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) tcp: TcpStream,
    out: Mutex<Out>,
}

/// Frames queued and not yet written whole: what a batch, a pong or a close reply left when
/// the socket would not take more.
#[derive(Debug, Default)]
pub(super) struct Out {
    pub(super) queue: VecDeque<Piece>,
    /// Bytes of the first piece already written.
    pub(super) written: usize,
}

/// A piece of a frame: its header, built in place, or its payload, shared.
#[derive(Debug)]
pub(super) enum Piece {
    Head { bytes: [u8; 10], len: u8 },
    Body(Bytes),
}

impl Piece {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Head { bytes, len } => &bytes[..usize::from(*len)],
            Piece::Body(bytes) => bytes,
        }
    }
}

/// A server frame's header (never masked): FIN, RSV1 when `compressed`, the opcode and the
/// length.
pub(super) fn head(opcode: u8, compressed: bool, length: usize) -> Piece {
    let mut bytes = [0u8; 10];
    bytes[0] = FIN | opcode | if compressed { RSV1 } else { 0 };
    let len = match length {
        0..=125 => {
            bytes[1] = length as u8;
            2
        }
        126..=0xFFFF => {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(length as u16).to_be_bytes());
            4
        }
        _ => {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(length as u64).to_be_bytes());
            10
        }
    };
    Piece::Head { bytes, len }
}

impl Shared {
    pub(super) fn new(tcp: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            out: Mutex::default(),
        })
    }

    pub(super) fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes until everything queued has left, waiting for the socket as needed. Either half
    /// may call it (tokio lets several tasks wait for one socket to be writable); whole frames
    /// are queued under the lock, so frames never interleave.
    pub(super) async fn flush(&self) -> io::Result<()> {
        loop {
            if self.out().write_some(&self.tcp)? {
                return Ok(());
            }
            self.tcp.writable().await?;
        }
    }
}

impl Out {
    pub(super) fn frame(&mut self, opcode: u8, compressed: bool, payload: Bytes) {
        self.queue
            .push_back(head(opcode, compressed, payload.len()));
        if !payload.is_empty() {
            self.queue.push_back(Piece::Body(payload));
        }
    }

    /// Takes the writer's staged frames, whole, behind what is queued; leaves `staged` with
    /// no capacity (an idle connection keeps none).
    fn append(&mut self, staged: &mut Vec<Piece>) {
        let staged = std::mem::take(staged);
        if self.queue.is_empty() {
            // The common case, everything before written: the allocation changes hands.
            self.queue = VecDeque::from(staged);
        } else {
            self.queue.extend(staged);
        }
    }

    /// Writes what the socket takes now; true once nothing is left.
    fn write_some(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            for (i, piece) in self.queue.iter().take(MAX_IOV).enumerate() {
                let bytes = piece.as_slice();
                slices[i] = IoSlice::new(if i == 0 {
                    &bytes[self.written..]
                } else {
                    bytes
                });
                count = i + 1;
            }
            match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    tracing::trace!(bytes = n, "WebSocket frames written");
                    self.advance(n)
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        // Nothing queued any more: an idle connection keeps no capacity.
        self.queue = VecDeque::new();
        Ok(true)
    }

    pub(super) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front() else {
                return;
            };
            let left = front.as_slice().len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.queue.pop_front();
        }
    }
}

/// The writing half: frames queued, then written in one go by [`Sender::flush`].
#[derive(Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
    /// The writer's frames since its last flush, kept without the lock: they join the shared
    /// queue together when it flushes, one lock per batch rather than one per frame.
    staged: Vec<Piece>,
    /// How many pieces the last flush took.
    last_batch: usize,
}

impl Sender {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            staged: Vec::new(),
            last_batch: 0,
        }
    }

    /// Queues a data frame (`TEXT` or `BINARY`), compressed or not; nothing is written yet.
    pub(crate) fn queue(&mut self, opcode: u8, compressed: bool, payload: Bytes) {
        if self.staged.capacity() == 0 {
            // Room for what the last batch needed: one allocation a batch under load, where
            // growing by doubling took six, and none kept while idle.
            self.staged.reserve(self.last_batch);
        }
        self.staged.push(head(opcode, compressed, payload.len()));
        if !payload.is_empty() {
            self.staged.push(Piece::Body(payload));
        }
    }

    /// Queues a close frame with `code` and `reason` (cut to fit by the caller).
    pub(crate) fn queue_close(&mut self, code: u16, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.queue(CLOSE, false, Bytes::from(payload));
    }

    /// Writes everything queued (by either half).
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.staged.is_empty() {
            self.last_batch = self.staged.len();
            self.shared.out().append(&mut self.staged);
        }
        self.shared.flush().await
    }
}
