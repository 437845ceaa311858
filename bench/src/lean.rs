//! The lean receive path of the fan-out's subscribers: frames read straight off the socket
//! into one buffer and taken where they lie.
//!
//! The generator shares this machine with the server, so every microsecond it spends per
//! delivery is a microsecond the server does not get; past ~800,000 deliveries/s it needed
//! more than a core through tokio-tungstenite (a `Message` and a UTF-8 check per frame, a
//! 4 KiB read buffer, a wake-up per frame) and serde_json (a full parse per delivery). Here a
//! read takes up to [`BUFFER`] bytes, every whole frame in them is handled before the next
//! read, and a delivery is recognised by the payload the generator itself built
//! ([`conn::parse_fast`]); anything else goes through the full parse.
//!
//! Used for connections that agreed no compression (the inflating path stays with
//! tungstenite). The handshake and subscription are tungstenite's; this takes the socket over
//! once the subscription is confirmed, before the first publication, when nothing is buffered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;

use crate::conn::{self, Protocol, Received, Ws};
use crate::report::Tally;

/// Bytes one read may take: a few hundred deliveries when the server batches. A socket starts
/// with [`FIRST_BUFFER`] (the idle scenario holds tens of thousands) and grows to this when
/// its reads fill it.
const BUFFER: usize = 32 << 10;
const FIRST_BUFFER: usize = 2 << 10;

/// The largest message taken (as the tungstenite path's limit).
const MAX_MESSAGE: usize = 64 << 20;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A subscriber's socket, taken over from tungstenite.
pub struct Lean {
    io: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// A fragmented message's first frames (opcode, payload so far).
    partial: Option<(u8, Vec<u8>)>,
    bytes_read: u64,
}

/// One message or control frame.
pub struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

impl Lean {
    /// Whether [`Lean::take`] can have `ws`: a plain socket that inflates nothing.
    pub fn can_take(ws: &Ws) -> bool {
        !ws.get_ref().is_inflating() && matches!(ws.get_ref().get_ref(), MaybeTlsStream::Plain(_))
    }

    /// Takes `ws` over; [`Lean::can_take`] must have said yes.
    pub fn take(ws: Ws) -> Self {
        let inflating = ws.into_inner();
        let bytes_read = inflating.bytes_read();
        let MaybeTlsStream::Plain(io) = inflating.into_inner() else {
            panic!("Lean::take of a TLS socket")
        };
        Self::new(io, bytes_read)
    }

    fn new(io: TcpStream, bytes_read: u64) -> Self {
        Self {
            io,
            buf: vec![0; FIRST_BUFFER],
            start: 0,
            end: 0,
            partial: None,
            bytes_read,
        }
    }

    /// Reads what the socket has (cancel-safe); 0 at end of stream.
    pub async fn fill(&mut self) -> Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            // One frame larger than the buffer: room for the rest of it.
            let grown = (self.buf.len() * 2).min(MAX_MESSAGE + 14);
            if grown == self.buf.len() {
                bail!("a frame over {MAX_MESSAGE} bytes");
            }
            self.buf.resize(grown, 0);
        }
        let read = self.io.read(&mut self.buf[self.end..]).await?;
        self.end += read;
        if self.end == self.buf.len() && self.buf.len() < BUFFER {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        self.bytes_read += read as u64;
        Ok(read)
    }

    /// The next whole message or control frame in the buffer, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        loop {
            let Some((fin, opcode, range)) = self.header()? else {
                return Ok(None);
            };
            if opcode >= CLOSE || (fin && opcode != CONTINUATION && self.partial.is_none()) {
                return Ok(Some(Frame {
                    opcode,
                    payload: &self.buf[range],
                }));
            }
            // Fragments: gathered until the final one.
            match (&mut self.partial, opcode) {
                (None, TEXT | BINARY) => self.partial = Some((opcode, self.buf[range].to_vec())),
                (Some((_, gathered)), CONTINUATION) => {
                    if gathered.len() + range.len() > MAX_MESSAGE {
                        bail!("a message over {MAX_MESSAGE} bytes");
                    }
                    gathered.extend_from_slice(&self.buf[range]);
                }
                _ => bail!("unexpected frame opcode {opcode:#x}"),
            }
            if fin {
                let (opcode, payload) = self.partial.take().expect("gathered above");
                // Kept until the next call, which is when the slice is done with.
                self.partial = Some((opcode | 0x80, payload));
                let (_, payload) = self.partial.as_ref().expect("just set");
                return Ok(Some(Frame { opcode, payload }));
            }
        }
    }

    /// Parses the header of the frame at `start` and consumes the frame: its FIN bit, opcode
    /// and payload range (unmasked in place). None if the frame is not all there yet.
    fn header(&mut self) -> Result<Option<(bool, u8, std::ops::Range<usize>)>> {
        // A message handed out whole last time is done with now.
        if self.partial.as_ref().is_some_and(|(op, _)| op & 0x80 != 0) {
            self.partial = None;
        }
        let bytes = &self.buf[self.start..self.end];
        if bytes.len() < 2 {
            return Ok(None);
        }
        if bytes[0] & 0x70 != 0 {
            bail!("reserved bits set without an extension agreed");
        }
        let (fin, opcode, masked) = (bytes[0] & 0x80 != 0, bytes[0] & 0x0F, bytes[1] & 0x80 != 0);
        let (len, mut at) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as u64, 4),
            127 if bytes.len() >= 10 => {
                let mut len = [0; 8];
                len.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            126 | 127 => return Ok(None),
            len => (u64::from(len), 2),
        };
        if len > MAX_MESSAGE as u64 {
            bail!("a frame of {len} bytes");
        }
        let mask = if masked {
            let Some(key) = bytes.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        let total = at + len as usize;
        if bytes.len() < total {
            return Ok(None);
        }
        let range = self.start + at..self.start + total;
        if let Some(key) = mask {
            for (i, byte) in self.buf[range.clone()].iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        self.start += total;
        Ok(Some((fin, opcode & 0x0F, range)))
    }

    /// Sends one frame, masked as a client must.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let key = fastrand::u32(..).to_be_bytes();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.io.write_all(&frame).await?;
        Ok(())
    }
}

/// Latencies the lean receivers of one process record together: one histogram stays in the
/// cache where a thousand (one per subscriber, 160 KiB each) did not, which made recording a
/// sixth of the generator's time.
pub type Latencies = Arc<Mutex<Histogram<u64>>>;

pub fn latencies() -> Latencies {
    Arc::new(Mutex::new(crate::report::histogram()))
}

/// Reads deliveries until told to stop, answering heartbeats: the fan-out's receiver on a
/// lean socket. All frames of one read are taken as received at the read's time. The
/// returned tally carries what `latencies` holds when it ends (and `latencies` is emptied),
/// so the tallies of all receivers add up to every latency recorded.
pub async fn receive(
    mut lean: Lean,
    protocol: Protocol,
    publishers: usize,
    delivered: Arc<AtomicU64>,
    latencies: Latencies,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::new(publishers);
    let mut micros = Vec::new();
    'reading: loop {
        let read = tokio::select! {
            _ = stop.changed() => break,
            read = lean.fill() => read,
        };
        if !matches!(read, Ok(1..)) {
            tally.errors += 1;
            break;
        }
        let now = conn::now_ns();
        let (mut heartbeat, mut ping) = (false, None);
        loop {
            let frame = match lean.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    tally.errors += 1;
                    break 'reading;
                }
            };
            match frame.opcode {
                TEXT => heartbeat |= take(protocol, frame.payload, now, &mut tally, &mut micros),
                PING => ping = Some(frame.payload.to_vec()),
                CLOSE => {
                    tally.errors += 1;
                    break 'reading;
                }
                _ => {}
            }
        }
        if !micros.is_empty() {
            delivered.fetch_add(micros.len() as u64, Ordering::Relaxed);
            let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
            for &latency in &micros {
                let _ = latencies.record(latency);
            }
            micros.clear();
        }
        if heartbeat
            && lean
                .send(TEXT, conn::pong(protocol).as_bytes())
                .await
                .is_err()
        {
            tally.errors += 1;
            break;
        }
        if let Some(ping) = ping
            && lean.send(PONG, &ping).await.is_err()
        {
            tally.errors += 1;
            break;
        }
    }
    let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
    let _ = tally.latency.add(&*latencies);
    latencies.reset();
    tally.wire_bytes = lean.bytes_read;
    tally
}

/// Counts one text message, its latency added to `micros` if it is a delivery; true for a
/// heartbeat to answer.
fn take(
    protocol: Protocol,
    text: &[u8],
    now: u64,
    tally: &mut Tally,
    micros: &mut Vec<u64>,
) -> bool {
    let received = match conn::parse_fast(protocol, text) {
        Some(received) => received,
        None => match std::str::from_utf8(text) {
            Ok(text) => conn::parse(protocol, text),
            Err(_) => Received::Error,
        },
    };
    match received {
        Received::Delivery { offset, delivery } => {
            if tally.count(delivery.p, delivery.s, offset) {
                micros.push((now.saturating_sub(delivery.t) / 1000).max(1));
            }
        }
        Received::Ping => return true,
        Received::Error => tally.errors += 1,
        Received::Other => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Frames as a server writes them, cut at every length: each read sees what arrived.
    #[tokio::test]
    async fn frames_are_read_whole_however_the_bytes_arrive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = "y".repeat(70_000);
        let mut wire = Vec::new();
        for (opcode, payload) in [(TEXT, "one"), (PING, "p"), (TEXT, big.as_str())] {
            wire.push(0x80 | opcode);
            match payload.len() {
                len @ 0..=125 => wire.push(len as u8),
                len @ 126..=0xFFFF => {
                    wire.push(126);
                    wire.extend_from_slice(&(len as u16).to_be_bytes());
                }
                len => {
                    wire.push(127);
                    wire.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            wire.extend_from_slice(payload.as_bytes());
        }
        // A fragmented message: "fra" + "gment".
        wire.extend_from_slice(&[TEXT, 3]);
        wire.extend_from_slice(b"fra");
        wire.extend_from_slice(&[0x80 | CONTINUATION, 5]);
        wire.extend_from_slice(b"gment");
        let sent = wire.clone();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for chunk in sent.chunks(7) {
                socket.write_all(chunk).await.unwrap();
                socket.flush().await.unwrap();
            }
        });
        let mut lean = Lean::new(TcpStream::connect(addr).await.unwrap(), 0);
        let mut seen = Vec::new();
        while seen.len() < 4 {
            assert!(lean.fill().await.unwrap() > 0, "ended after {seen:?}");
            while let Some(frame) = lean.next_frame().unwrap() {
                seen.push((frame.opcode, frame.payload.len(), frame.payload[0]));
            }
        }
        assert_eq!(
            seen,
            [
                (TEXT, 3, b'o'),
                (PING, 1, b'p'),
                (TEXT, 70_000, b'y'),
                (TEXT, 8, b'f')
            ]
        );
        assert_eq!(lean.bytes_read, wire.len() as u64);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn reserved_bits_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&[0xC1, 1, b'x']).await.unwrap();
        });
        let mut lean = Lean::new(TcpStream::connect(addr).await.unwrap(), 0);
        while lean.end < 3 {
            assert!(lean.fill().await.unwrap() > 0);
        }
        assert!(lean.next_frame().is_err());
        server.await.unwrap();
    }
}
