//! RFC 6455 framing over the upgraded TCP socket, for the server's side of a WebSocket: the
//! client's frames read and checked, messages reassembled (and inflated, with
//! permessage-deflate), and the server's frames written as they are — a header built in place,
//! small frames copied together and large payloads shared, gathered into one `writev` per
//! batch.
//!
//! Done here rather than by a WebSocket library because of what an idle connection costs: a
//! library keeps a read buffer, a write buffer grown by the largest frame it ever sent, and a
//! lock to split the socket into halves; here an idle connection holds no buffer at all
//! (bytes are read into the stack and kept only while a frame is incomplete), and the halves
//! share the socket itself (tokio's `TcpStream` reads and writes through `&self`). What the
//! library did for correctness is kept and tested by the Autobahn TestSuite (`scripts/autobahn`):
//! masking, fragmentation with control frames between fragments, reserved bits and opcodes,
//! control frame limits, UTF-8 of text and close reasons, close codes, and the size limit.

use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use super::deflate;
use crate::session::ReadError;

const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// What is read from the socket at once into the stack, before it is kept.
const READ_CHUNK: usize = 4096;

mod out;

pub(crate) use out::Sender;
use out::Shared;
#[cfg(test)]
use out::{Out, Piece, head};

/// Splits an upgraded socket into its reading and writing halves. `early` is what the client
/// sent after its handshake, already read; `limit` is the largest message, inflated.
pub(crate) fn split(tcp: TcpStream, early: Bytes, limit: usize, deflate: bool) -> (Frames, Sender) {
    let shared = Shared::new(tcp);
    let reader = Frames {
        shared: shared.clone(),
        decoder: Decoder::new(early, limit, deflate),
        phase: Phase::Open,
    };
    (reader, Sender::new(shared))
}

/// What a client's frames amount to.
#[derive(Debug)]
pub(crate) enum Event {
    Text(String),
    Binary(Bytes),
    /// A ping (answered already) or a pong.
    Alive,
    /// The client's close (answered already, or being answered by the writer's next flush).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The client's close was read and its reply queued; the next read reports it.
    CloseRead,
    Done,
}

/// A data message between its first frame and its last.
#[derive(Debug)]
struct Partial {
    opcode: u8,
    compressed: bool,
    payload: BytesMut,
}

/// The reading half.
#[derive(Debug)]
pub(crate) struct Frames {
    shared: Arc<Shared>,
    decoder: Decoder,
    phase: Phase,
}

/// The client's bytes made into frames and messages, apart from the socket (so that the fuzz
/// target can drive it with any bytes): what it answers — pongs and the close reply — it hands
/// to its caller to queue.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Bytes read and not yet part of a whole frame; empty (no capacity) between frames.
    buf: BytesMut,
    /// Bytes the frame being read still lacks, once its header is known.
    want: usize,
    limit: usize,
    deflate: bool,
    message: Option<Box<Partial>>,
}

fn protocol(why: &'static str) -> ReadError {
    ReadError::Protocol(why.into())
}

/// Close codes a peer may send (RFC 6455 §7.4, as tungstenite judges them).
fn allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// A frame's header: (FIN, RSV bits, opcode, mask, payload length, header length), or `None`
/// while incomplete.
struct Header {
    fin: bool,
    rsv1: bool,
    other_rsv: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    length: u64,
    size: usize,
}

fn parse_header(buf: &[u8]) -> Result<Option<Header>, ReadError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let (length, mut size) = match second & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let length = u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default());
            if length >> 63 != 0 {
                return Err(protocol("frame length with its top bit set"));
            }
            (length, 10)
        }
        126 | 127 => return Ok(None),
        short => (u64::from(short), 2),
    };
    let mask = if second & 0x80 != 0 {
        let Some(key) = buf.get(size..size + 4) else {
            return Ok(None);
        };
        size += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin: first & FIN != 0,
        rsv1: first & RSV1 != 0,
        other_rsv: first & 0x30 != 0,
        opcode: first & 0x0F,
        mask,
        length,
        size,
    }))
}

impl Frames {
    /// The next message, ping, pong or close; `None` once the connection has ended.
    pub(crate) async fn next(&mut self) -> Option<Result<Event, ReadError>> {
        loop {
            match self.phase {
                Phase::Open => {}
                Phase::CloseRead => {
                    self.phase = Phase::Done;
                    return Some(Ok(Event::Close));
                }
                Phase::Done => return None,
            }
            let shared = &self.shared;
            match self
                .decoder
                .parse(&mut |opcode, payload| shared.out().frame(opcode, false, payload))
            {
                Ok(Some(Event::Close)) => {
                    self.phase = Phase::CloseRead;
                    // Best effort, and bounded by the writer's `finish`, which flushes too.
                    // Boxed, as the flush below: an idle connection waits in `readable`, and
                    // these rare waits would otherwise size its future (~280 bytes more).
                    let _ = Box::pin(tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        self.shared.flush(),
                    ))
                    .await;
                    continue;
                }
                Ok(Some(Event::Alive)) => {
                    // A pong may have been queued; a peer that does not read stalls only its own
                    // reading here, and the session's timeouts end it.
                    if let Err(err) = Box::pin(self.shared.flush()).await {
                        self.phase = Phase::Done;
                        return Some(Err(ReadError::Gone(Box::new(err))));
                    }
                    return Some(Ok(Event::Alive));
                }
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(err) => {
                    self.phase = Phase::Done;
                    return Some(Err(err));
                }
            }
            if let Err(err) = self.shared.tcp.readable().await {
                self.phase = Phase::Done;
                return Some(Err(ReadError::Gone(Box::new(err))));
            }
            match self.read_some() {
                Ok(0) => {
                    self.phase = Phase::Done;
                    return None;
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.phase = Phase::Done;
                    return Some(Err(ReadError::Gone(Box::new(err))));
                }
            }
        }
    }

    /// One read from the socket: into the stack (kept only what a frame needs), or straight
    /// into the buffer when a large frame is known to be coming.
    fn read_some(&mut self) -> io::Result<usize> {
        let decoder = &mut self.decoder;
        if decoder.want > READ_CHUNK {
            decoder.buf.reserve(decoder.want);
            return self.shared.tcp.try_read_buf(&mut decoder.buf);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.shared.tcp.try_read(&mut chunk)?;
        decoder.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

/// Where the decoder's answers go: a control frame's opcode and payload.
pub(crate) type Reply<'a> = dyn FnMut(u8, Bytes) + 'a;

impl Decoder {
    pub(crate) fn new(early: Bytes, limit: usize, deflate: bool) -> Self {
        Self {
            buf: BytesMut::from(&early[..]),
            want: 0,
            limit,
            deflate,
            message: None,
        }
    }

    /// Takes bytes read from the client (the fuzz target's way in; the socket reads straight
    /// into the buffer).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame, and of a message not yet whole.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn held(&self) -> (usize, usize) {
        let partial = self.message.as_ref().map_or(0, |m| m.payload.len());
        (self.buf.len(), partial)
    }

    /// Takes whole frames from the buffer until one makes an event.
    pub(crate) fn parse(&mut self, reply: &mut Reply<'_>) -> Result<Option<Event>, ReadError> {
        loop {
            let Some(header) = parse_header(&self.buf)? else {
                return Ok(None);
            };
            self.check(&header)?;
            // Checked against the limit (at most usize) by `check`.
            let length = header.length as usize;
            if self.buf.len() < header.size + length {
                self.want = header.size + length - self.buf.len();
                return Ok(None);
            }
            self.want = 0;
            // What a WebSocket library traced: the frame, never its payload.
            tracing::trace!(
                opcode = header.opcode,
                fin = header.fin,
                length,
                "WebSocket frame read"
            );
            self.buf.advance(header.size);
            let mut payload = self.buf.split_to(length);
            if self.buf.is_empty() {
                // Gives the capacity back: an idle connection holds no buffer.
                self.buf = BytesMut::new();
            }
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if let Some(event) = self.frame(&header, payload, reply)? {
                return Ok(Some(event));
            }
        }
    }

    /// What RFC 6455 (and RFC 7692 when agreed) refuses in a header alone.
    fn check(&self, header: &Header) -> Result<(), ReadError> {
        let control = header.opcode >= CLOSE;
        if header.other_rsv {
            return Err(protocol("reserved bits set"));
        }
        if header.rsv1 && !(self.deflate && matches!(header.opcode, TEXT | BINARY)) {
            return Err(protocol("RSV1 set where no compression applies"));
        }
        if !matches!(
            header.opcode,
            CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG
        ) {
            return Err(protocol("reserved opcode"));
        }
        if control && (!header.fin || header.length > 125) {
            return Err(protocol("control frame fragmented or over 125 bytes"));
        }
        if header.mask.is_none() {
            return Err(protocol("client frame not masked"));
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.payload.len() as u64);
        if !control && so_far + header.length > self.limit as u64 {
            return Err(ReadError::TooBig);
        }
        Ok(())
    }

    /// One whole frame; an event when it completes one.
    fn frame(
        &mut self,
        header: &Header,
        payload: BytesMut,
        reply: &mut Reply<'_>,
    ) -> Result<Option<Event>, ReadError> {
        match header.opcode {
            PING => {
                reply(PONG, payload.freeze());
                Ok(Some(Event::Alive))
            }
            PONG => Ok(Some(Event::Alive)),
            CLOSE => Self::close(payload, reply).map(Some),
            CONTINUATION => {
                let Some(message) = self.message.as_mut() else {
                    return Err(protocol("continuation without a message"));
                };
                message.payload.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                let Partial {
                    opcode,
                    compressed,
                    payload,
                } = *self.message.take().unwrap_or_else(|| unreachable!());
                self.message(opcode, compressed, payload).map(Some)
            }
            opcode => {
                if self.message.is_some() {
                    return Err(protocol("a new message before the last one ended"));
                }
                if header.fin {
                    return self.message(opcode, header.rsv1, payload).map(Some);
                }
                self.message = Some(Box::new(Partial {
                    opcode,
                    compressed: header.rsv1,
                    payload,
                }));
                Ok(None)
            }
        }
    }

    /// A whole message, inflated if compressed, text checked.
    fn message(
        &mut self,
        opcode: u8,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<Event, ReadError> {
        let payload = if compressed {
            deflate::inflate(&payload, self.limit)?
        } else if opcode == BINARY {
            return Ok(Event::Binary(payload.freeze()));
        } else {
            Vec::from(payload)
        };
        if opcode == BINARY {
            return Ok(Event::Binary(Bytes::from(payload)));
        }
        String::from_utf8(payload)
            .map(Event::Text)
            .map_err(|_| ReadError::InvalidUtf8)
    }

    /// The client's close: checked, and answered with its own code (RFC 6455 §5.5.1).
    fn close(payload: BytesMut, reply: &mut Reply<'_>) -> Result<Event, ReadError> {
        let answer = match payload.len() {
            0 => Bytes::new(),
            1 => return Err(protocol("close frame with a one-byte payload")),
            _ => {
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(ReadError::InvalidUtf8);
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if allowed(code) {
                    payload.freeze()
                } else {
                    let mut refused = 1002u16.to_be_bytes().to_vec();
                    refused.extend_from_slice(b"Protocol violation");
                    Bytes::from(refused)
                }
            }
        };
        reply(CLOSE, answer);
        Ok(Event::Close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_shortest_length_form() {
        for (length, expected) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xFF, 0xFF]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            assert_eq!(head(TEXT, false, length).as_slice(), &expected[..]);
        }
        assert_eq!(head(BINARY, true, 3).as_slice(), &[0xC2, 3]);
    }

    #[test]
    fn masks_are_undone_whatever_the_length() {
        for length in 0..13 {
            let plain: Vec<u8> = (0..length as u8).collect();
            let mask = [1, 2, 3, 4];
            let mut masked: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            unmask(&mut masked, mask);
            assert_eq!(masked, plain);
        }
    }

    #[test]
    fn advancing_past_partial_writes_keeps_the_rest() {
        let mut out = Out::default();
        out.frame(TEXT, false, Bytes::from_static(b"hello"));
        out.frame(TEXT, false, Bytes::from_static(b"world"));
        out.advance(3);
        assert_eq!(out.written, 1);
        assert_eq!(out.queue.len(), 3);
        out.advance(4);
        assert_eq!(out.queue.len(), 2);
        assert_eq!(out.queue[0].as_slice(), &[0x81, 5]);
        out.advance(7);
        assert!(out.queue.is_empty());
    }

    /// A server-side reader on one end of a loopback connection, the client's socket on the
    /// other.
    async fn pair(limit: usize) -> (Frames, Sender, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (frames, sender) = split(server, Bytes::new(), limit, false);
        (frames, sender, client)
    }

    /// A client frame (masked), `first` being its first byte.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[tokio::test]
    async fn fragments_around_a_ping_make_one_message_and_the_ping_its_pong() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut frames, _sender, mut client) = pair(1024).await;
        let mut wire = masked(TEXT, b"hel");
        wire.extend(masked(FIN | PING, b"p"));
        wire.extend(masked(FIN | CONTINUATION, b"lo"));
        client.write_all(&wire).await.unwrap();
        assert!(matches!(frames.next().await, Some(Ok(Event::Alive))));
        assert!(matches!(frames.next().await, Some(Ok(Event::Text(t))) if t == "hello"));
        let mut pong = [0u8; 3];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [FIN | PONG, 1, b'p']);
        assert!(
            frames.decoder.buf.capacity() == 0,
            "nothing kept between frames"
        );
    }

    #[tokio::test]
    async fn what_the_rfc_refuses_ends_reading_with_the_matching_error() {
        use tokio::io::AsyncWriteExt;
        type Expected = fn(&ReadError) -> bool;
        let cases: [(Vec<u8>, Expected); 6] = [
            // Not masked.
            (vec![FIN | TEXT, 1, b'x'], |e| {
                matches!(e, ReadError::Protocol(_))
            }),
            (masked(FIN | TEXT, &[0xC3, 0x28]), |e| {
                matches!(e, ReadError::InvalidUtf8)
            }),
            (masked(FIN | BINARY, &[0; 20]), |e| {
                matches!(e, ReadError::TooBig)
            }),
            (masked(PING, b""), |e| matches!(e, ReadError::Protocol(_))),
            (masked(FIN | 0x3, b""), |e| {
                matches!(e, ReadError::Protocol(_))
            }),
            (masked(FIN | CONTINUATION, b"x"), |e| {
                matches!(e, ReadError::Protocol(_))
            }),
        ];
        for (wire, expected) in cases {
            let (mut frames, _sender, mut client) = pair(16).await;
            client.write_all(&wire).await.unwrap();
            match frames.next().await {
                Some(Err(err)) => assert!(expected(&err), "{wire:?}: {err:?}"),
                other => panic!("{wire:?}: {other:?}"),
            }
            assert!(
                frames.next().await.is_none(),
                "nothing is read after an error"
            );
        }
    }

    #[tokio::test]
    async fn a_close_is_answered_with_its_code_or_with_1002_for_a_forbidden_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (code, answered) in [(1000u16, 1000u16), (4001, 4001), (1005, 1002), (999, 1002)] {
            let (mut frames, _sender, mut client) = pair(16).await;
            client
                .write_all(&masked(FIN | CLOSE, &code.to_be_bytes()))
                .await
                .unwrap();
            assert!(matches!(frames.next().await, Some(Ok(Event::Close))));
            assert!(frames.next().await.is_none());
            let mut head = [0u8; 4];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], FIN | CLOSE);
            assert_eq!(u16::from_be_bytes([head[2], head[3]]), answered, "{code}");
        }
    }

    #[test]
    fn incomplete_headers_wait_for_more_bytes() {
        assert!(parse_header(&[0x81]).unwrap().is_none());
        assert!(parse_header(&[0x81, 0xFE, 0]).unwrap().is_none());
        assert!(parse_header(&[0x81, 0x85, 1, 2, 3]).unwrap().is_none());
        let header = parse_header(&[0x81, 0x85, 1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!(
            (header.length, header.size, header.mask),
            (5, 6, Some([1, 2, 3, 4]))
        );
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse_header(&huge).is_err());
    }

    /// A client frame of any length, masked with `mask`.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let Piece::Head { bytes, len } = head(first & 0x0F, first & RSV1 != 0, payload.len())
        else {
            unreachable!()
        };
        let mut frame = bytes[..usize::from(len)].to_vec();
        frame[0] = first;
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// xorshift64: the same cases on every run, no dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn messages_come_back_whole_however_they_are_fragmented_masked_compressed_and_cut() {
        let limit = 70_000;
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for case in 0..300 {
            let deflate = case % 2 == 1;
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            let mut pings = 0;
            for _ in 0..1 + rng.below(6) {
                // Up to 65,536 bytes: a character is at most 4.
                let length = [0, 1, 125, 126, 127, 65_535, 65_536][rng.below(7)];
                let chars = if rng.below(2) == 0 {
                    rng.below(300)
                } else {
                    length / 4
                };
                let text: String = (0..chars)
                    .map(|i| ['a', 'é', '€', '\u{1F600}'][(i + case) % 4])
                    .collect();
                let packed = (deflate && rng.below(2) == 0)
                    .then(|| super::deflate::deflate(text.as_bytes()))
                    .flatten();
                let (body, rsv1) = match packed {
                    Some(packed) => (packed.to_vec(), RSV1),
                    None => (text.as_bytes().to_vec(), 0),
                };
                let mut pieces = 1 + rng.below(4);
                let mut at = 0;
                let mut opcode = TEXT | rsv1;
                while pieces > 0 {
                    pieces -= 1;
                    let end = if pieces == 0 {
                        body.len()
                    } else {
                        at + rng.below(body.len() - at + 1)
                    };
                    let fin = if pieces == 0 { FIN } else { 0 };
                    let mask = [rng.below(256) as u8, 7, rng.below(256) as u8, 0];
                    wire.extend(client_frame(fin | opcode, &body[at..end], mask));
                    opcode = CONTINUATION;
                    at = end;
                    if rng.below(3) == 0 {
                        pings += 1;
                        wire.extend(client_frame(FIN | PING, b"ping", mask));
                    }
                }
                sent.push(text);
            }
            wire.extend(client_frame(
                FIN | CLOSE,
                &1000u16.to_be_bytes(),
                [1, 2, 3, 4],
            ));

            let mut decoder = Decoder::new(Bytes::new(), limit, deflate);
            let mut replies = Vec::new();
            let mut texts = Vec::new();
            let mut alive = 0;
            let mut closed = false;
            let mut rest = &wire[..];
            while !rest.is_empty() && !closed {
                let (piece, after) = rest.split_at(1 + rng.below(rest.len().min(9_000)));
                rest = after;
                decoder.feed(piece);
                let mut reply = |opcode, payload: Bytes| replies.push((opcode, payload));
                while let Some(event) = decoder.parse(&mut reply).expect("a valid stream") {
                    match event {
                        Event::Text(text) => texts.push(text),
                        Event::Alive => alive += 1,
                        Event::Close => closed = true,
                        Event::Binary(_) => panic!("only text was sent"),
                    }
                    if closed {
                        break;
                    }
                }
            }
            assert_eq!(texts, sent, "case {case}");
            assert_eq!(alive, pings, "case {case}");
            assert!(closed, "case {case}");
            assert_eq!(decoder.held(), (0, 0), "nothing held after the close");
            assert_eq!(
                replies.len(),
                pings + 1,
                "a pong per ping, then the close's reply"
            );
            assert_eq!(
                replies.last().map(|(op, p)| (*op, p.to_vec())),
                Some((CLOSE, 1000u16.to_be_bytes().to_vec()))
            );
        }
    }

    #[test]
    fn a_compressed_message_that_inflates_past_the_limit_is_refused() {
        let bomb = super::deflate::deflate(&vec![b'a'; 100_000]).expect("compresses");
        assert!(bomb.len() < 1_000);
        let mut decoder = Decoder::new(Bytes::new(), 65_536, true);
        decoder.feed(&client_frame(FIN | RSV1 | TEXT, &bomb, [1, 2, 3, 4]));
        let outcome = decoder.parse(&mut |_, _| panic!("nothing to answer"));
        assert!(matches!(outcome, Err(ReadError::TooBig)), "{outcome:?}");
    }
}
