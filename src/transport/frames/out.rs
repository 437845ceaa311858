//! The writing side of a socket: frames queued whole (a header built in place; small frames
//! copied together, large payloads shared) and gathered into one `writev` per batch, by either
//! half.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::{CLOSE, FIN, RSV1};

/// Pieces handed to one `writev` (the kernel takes up to 1,024).
const MAX_IOV: usize = 256;

/// Frames whose payload is at most this long are copied whole, header and payload, into a
/// buffer of the batch's own, instead of queued as a header and the shared payload. Under
/// fan-out the kernel spent more on each small piece of a gathered write than on its bytes
/// (two pieces of a few hundred bytes per delivery); one copy here costs less than that, and
/// larger payloads stay shared, where the copy would cost more than the piece.
const COPY_MAX: usize = 1024;

/// The smallest and the largest copy buffer; a larger batch fills several.
const COPY_MIN: usize = 4096;
const COPY_CHUNK: usize = 64 * 1024;

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

/// A piece of a frame: its header, built in place, or its payload, shared; or small frames,
/// whole, copied one after another.
#[derive(Debug)]
pub(super) enum Piece {
    Head { bytes: [u8; 10], len: u8 },
    Body(Bytes),
    Copied(Vec<u8>),
}

impl Piece {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Head { bytes, len } => &bytes[..usize::from(*len)],
            Piece::Body(bytes) => bytes,
            Piece::Copied(bytes) => bytes,
        }
    }

    fn copied(&self) -> usize {
        match self {
            Piece::Copied(bytes) => bytes.len(),
            _ => 0,
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
    /// How many pieces the last flush took, and how many bytes it copied: the sizes a batch
    /// under load needs, reserved at once.
    last_batch: u32,
    last_copied: u32,
}

impl Sender {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            staged: Vec::new(),
            last_batch: 0,
            last_copied: 0,
        }
    }

    /// Queues a data frame (`TEXT` or `BINARY`), compressed or not; nothing is written yet.
    pub(crate) fn queue(&mut self, opcode: u8, compressed: bool, payload: Bytes) {
        if !self.try_copy(opcode, compressed, &payload) {
            self.push_shared(opcode, compressed, payload);
        }
    }

    /// Queues a data frame whose payload stays its owner's: copied, or shared when large.
    pub(crate) fn queue_shared(&mut self, opcode: u8, compressed: bool, payload: &Bytes) {
        if !self.try_copy(opcode, compressed, payload) {
            self.push_shared(opcode, compressed, payload.clone());
        }
    }

    /// Copies a small frame; false for a large one, left to be shared.
    fn try_copy(&mut self, opcode: u8, compressed: bool, payload: &[u8]) -> bool {
        if self.staged.capacity() == 0 {
            // Room for what the last batch needed: one allocation a batch under load, where
            // growing by doubling took six, and none kept while idle.
            self.staged.reserve(self.last_batch as usize);
        }
        if payload.len() > COPY_MAX {
            return false;
        }
        self.copy(head(opcode, compressed, payload.len()).as_slice(), payload);
        true
    }

    fn push_shared(&mut self, opcode: u8, compressed: bool, payload: Bytes) {
        self.staged.push(head(opcode, compressed, payload.len()));
        self.staged.push(Piece::Body(payload));
    }

    /// Copies a small frame behind the last one copied, in a new buffer if that one is full.
    fn copy(&mut self, head: &[u8], payload: &[u8]) {
        let need = head.len() + payload.len();
        let mut full = 0;
        match self.staged.last_mut() {
            Some(Piece::Copied(buffer)) if buffer.capacity() - buffer.len() >= need => {
                buffer.extend_from_slice(head);
                buffer.extend_from_slice(payload);
                return;
            }
            Some(Piece::Copied(buffer)) => full = buffer.capacity(),
            _ => {}
        }
        // Sized by what the last batch copied, or twice the buffer just filled: one
        // allocation for a batch like the last, few for one that grows.
        let size = (self.last_copied as usize)
            .max(full * 2)
            .clamp(COPY_MIN, COPY_CHUNK)
            .max(need);
        let mut buffer = Vec::with_capacity(size);
        buffer.extend_from_slice(head);
        buffer.extend_from_slice(payload);
        self.staged.push(Piece::Copied(buffer));
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
            self.last_batch = u32::try_from(self.staged.len()).unwrap_or(u32::MAX);
            let copied: usize = self.staged.iter().map(Piece::copied).sum();
            self.last_copied = u32::try_from(copied).unwrap_or(u32::MAX);
            self.shared.out().append(&mut self.staged);
        }
        self.shared.flush().await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::super::TEXT;
    use super::*;

    async fn sender() -> (Sender, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Sender::new(Shared::new(server)), client)
    }

    fn wire(payload: &[u8]) -> Vec<u8> {
        let mut frame = head(TEXT, false, payload.len()).as_slice().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    #[tokio::test]
    async fn small_frames_are_copied_together_and_large_payloads_stay_shared() {
        let (mut sender, mut client) = sender().await;
        let payloads: Vec<Bytes> = [5, 200, COPY_MAX, COPY_MAX + 1, 7]
            .iter()
            .map(|&len| Bytes::from(vec![b'a' + (len % 26) as u8; len]))
            .collect();
        // Taken or borrowed, the same.
        for (i, payload) in payloads.iter().enumerate() {
            match i % 2 {
                0 => sender.queue(TEXT, false, payload.clone()),
                _ => sender.queue_shared(TEXT, false, payload),
            }
        }
        let expected: Vec<u8> = payloads.iter().flat_map(|p| wire(p)).collect();
        match &sender.staged[..] {
            [
                Piece::Copied(first),
                Piece::Head { .. },
                Piece::Body(large),
                Piece::Copied(last),
            ] => {
                assert_eq!(first[..], expected[..first.len()]);
                assert_eq!(first.len(), 2 + 5 + 4 + 200 + 4 + COPY_MAX);
                assert_eq!(large.as_ptr(), payloads[3].as_ptr(), "not copied");
                assert_eq!(last[..], wire(&payloads[4])[..]);
            }
            staged => panic!("staged as {staged:?}"),
        }
        sender.flush().await.unwrap();
        assert!(sender.staged.is_empty() && sender.staged.capacity() == 0);
        let mut read = vec![0; expected.len()];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(read, expected);
    }

    #[tokio::test]
    async fn a_large_batch_fills_bounded_buffers_in_order_and_the_next_is_sized_by_it() {
        let (mut sender, mut client) = sender().await;
        let frames = 2_000;
        let mut expected = Vec::new();
        for i in 0..frames {
            let payload = Bytes::from(format!("{i:0>100}"));
            expected.extend(wire(&payload));
            sender.queue(TEXT, false, payload);
        }
        assert!(
            sender.staged.len() > 1,
            "one buffer for {} bytes",
            expected.len()
        );
        for piece in &sender.staged {
            let Piece::Copied(buffer) = piece else {
                panic!("a small frame not copied: {piece:?}")
            };
            assert!(buffer.capacity() <= COPY_CHUNK, "{}", buffer.capacity());
        }
        // Read while writing: the batch is larger than what loopback buffers hold.
        let reading = tokio::spawn(async move {
            let mut read = vec![0; expected.len()];
            client.read_exact(&mut read).await.unwrap();
            assert!(read == expected, "bytes out of order");
            client
        });
        sender.flush().await.unwrap();
        let _client = reading.await.unwrap();
        assert_eq!(sender.last_copied as usize, 2_000 * 102);
        sender.queue(TEXT, false, Bytes::from_static(b"next"));
        let [Piece::Copied(next)] = &sender.staged[..] else {
            panic!("staged as {:?}", sender.staged)
        };
        assert_eq!(next.capacity(), COPY_CHUNK, "sized by the last batch");
    }
}
