//! permessage-deflate (RFC 7692) beside the WebSocket library, which has none: the
//! negotiation, the inflating of what clients send (under the socket, so the library sees plain
//! frames and keeps its own checks), and the deflating of what the server sends once for every
//! subscriber.
//!
//! The server always asks for `server_no_context_takeover` and `client_no_context_takeover`:
//! every message is compressed on its own, so a connection keeps no compression state between
//! messages — an idle connection costs what it cost without compression — and one compressed
//! publication can go to every subscriber as it is.

use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// The tail every deflated message ends with, left off on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The largest window the server may compress with (`server_max_window_bits`). Only 15
    /// can take the shared frames, compressed with the full window; a connection that asked
    /// for less gets its messages uncompressed, which RFC 7692 allows message by message.
    pub server_window: u8,
}

impl Agreed {
    /// Whether this connection can take frames compressed for everyone.
    pub(crate) fn takes_shared(self) -> bool {
        self.server_window == 15
    }
}

/// Picks the first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` values; returns what was agreed and the response header's value.
pub(crate) fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<(Agreed, String)> {
    offers
        .flat_map(|value| value.split(','))
        .find_map(|offer| accept(offer.trim()))
}

/// One offer (`permessage-deflate; client_max_window_bits; server_max_window_bits=10`), if it
/// can be accepted.
fn accept(offer: &str) -> Option<(Agreed, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_window = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        // A parameter twice makes the offer invalid (§7).
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => server_window = Some(window_bits(bits)?),
            // Without a value: the client can take a limit; with one, a hint of its own window.
            // Either way the server inflates with the largest window, so it sets no limit.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None,
        }
    }
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_window {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    let agreed = Agreed {
        server_window: server_window.unwrap_or(15),
    };
    Some((agreed, response))
}

fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// The compression level: zlib-rs's level 1 is a fast path with fixed codes that barely
/// shrinks a chat message (453 → 413 bytes); level 2 already reaches what level 9 does on
/// such messages (321 bytes) at about 17 µs each.
fn level() -> Compression {
    Compression::new(2)
}

/// Inflaters kept between messages: one is in use only while a compressed message is being
/// read, so a few serve every connection of the node.
static INFLATERS: Mutex<Vec<Decompress>> = Mutex::new(Vec::new());
const KEPT_INFLATERS: usize = 16;

fn take_inflater() -> Decompress {
    INFLATERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_else(|| Decompress::new(false))
}

fn give_back(mut inflater: Decompress) {
    inflater.reset(false);
    let mut kept = INFLATERS.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.len() < KEPT_INFLATERS {
        kept.push(inflater);
    }
}

static DEFLATERS: Mutex<Vec<Compress>> = Mutex::new(Vec::new());

/// `text` as one permessage-deflate message (full window, no context kept), or `None` when
/// compressing would not make it smaller: what every subscriber that agreed can take.
pub(crate) fn deflate(text: &[u8]) -> Option<Bytes> {
    crate::metrics::metrics().http.compressions.inc();
    let mut deflater = DEFLATERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_else(|| Compress::new(level(), false));
    let out = deflate_with(&mut deflater, text);
    deflater.reset();
    {
        let mut kept = DEFLATERS.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_INFLATERS {
            kept.push(deflater);
        }
    }
    out.filter(|out| out.len() < text.len()).map(Bytes::from)
}

/// `payload` compressed for one connection whatever it gains, within the window it agreed to
/// (the echo route, where every message goes back compressed).
pub(crate) fn deflate_for(agreed: Agreed, payload: &[u8]) -> Option<Bytes> {
    // Raw deflate has no 8-bit window; with 9 bits zlib never reaches back further than 250
    // bytes, which a reader with an 8-bit window can follow.
    let bits = agreed.server_window.max(9);
    let mut deflater = Compress::new_with_window_bits(level(), false, bits);
    deflate_with(&mut deflater, payload).map(Bytes::from)
}

/// One message through `deflater`, flushed, without the tail; `None` if deflate failed.
fn deflate_with(deflater: &mut Compress, text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 2 + 64);
    loop {
        let consumed = deflater.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(text.len() / 4 + 64);
        }
        deflater
            .compress_vec(&text[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // Flushed once all input is in and the output did not fill up.
        if deflater.total_in() as usize == text.len() && out.len() < out.capacity() {
            break;
        }
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(out)
}

/// Where the reader stands in the client's byte stream.
#[derive(Debug)]
enum State {
    /// Before a frame header.
    Header,
    /// Inside a frame passed on as it is: this many payload bytes left.
    Forward(u64),
    /// Inside a compressed frame, whole before it is inflated.
    Compressed { header: FrameHeader, length: usize },
    /// Something the library must judge (a malformed header, a message past the limit): the
    /// rest goes to it untouched.
    Passthrough,
}

/// The peer's side of a socket with permessage-deflate agreed: what reaches the WebSocket
/// library above is what the peer meant, uncompressed, in frames of the same kinds. Writes
/// pass through. The server wraps clients' sockets in it; a client (the load generator) can
/// wrap its own, enabling it once the handshake has agreed.
#[derive(Debug)]
pub struct Inflating<S> {
    io: S,
    /// The largest message, inflated; past it the library is shown a frame over its limit and
    /// closes with 1009.
    limit: usize,
    /// The frame reader, once permessage-deflate is agreed; until then (and for ever on a
    /// connection that did not agree) every byte passes as it came, and nothing is held.
    reader: Option<Box<FrameReader>>,
    /// Bytes read from the socket: what crossed the wire.
    bytes_read: u64,
}

/// What an inflating socket keeps between reads.
#[derive(Debug)]
struct FrameReader {
    limit: usize,
    raw: BytesMut,
    ready: BytesMut,
    state: State,
    /// Inside a message whose first frame was compressed: its inflater and its size so far.
    message: Option<(Decompress, usize)>,
}

impl<S> Inflating<S> {
    /// Wraps `io`; `limit` is the largest message, inflated.
    pub fn new(io: S, limit: usize, enabled: bool) -> Self {
        let mut inflating = Self {
            io,
            limit,
            reader: None,
            bytes_read: 0,
        };
        if enabled {
            inflating.enable();
        }
        inflating
    }

    /// Starts inflating (after a handshake that agreed to permessage-deflate).
    pub fn enable(&mut self) {
        self.reader.get_or_insert_with(|| {
            Box::new(FrameReader {
                limit: self.limit,
                raw: BytesMut::new(),
                ready: BytesMut::new(),
                state: State::Header,
                message: None,
            })
        });
    }

    /// Bytes read from the socket so far, compressed as they came.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Whether frames are being inflated (permessage-deflate was agreed).
    pub fn is_inflating(&self) -> bool {
        self.reader.is_some()
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The socket back. Bytes held for inflating are dropped with the reader: meant for a
    /// connection that is not inflating.
    pub fn into_inner(self) -> S {
        self.io
    }
}

impl FrameReader {
    /// Moves what can be decided from `raw` to `ready`; false if it needs more bytes.
    fn process(&mut self) -> bool {
        match &mut self.state {
            State::Passthrough => {
                let all = self.raw.split();
                self.ready.unsplit(all);
                !self.ready.is_empty()
            }
            State::Forward(left) => {
                let n = (*left).min(self.raw.len() as u64) as usize;
                if n == 0 && *left > 0 {
                    return false;
                }
                *left -= n as u64;
                let bytes = self.raw.split_to(n);
                self.ready.unsplit(bytes);
                if *left == 0 {
                    self.state = State::Header;
                }
                true
            }
            State::Header => self.header(),
            State::Compressed { header, length } => {
                if self.raw.len() < *length {
                    self.raw.reserve(*length - self.raw.len());
                    return false;
                }
                let (header, length) = (header.clone(), *length);
                let payload = self.raw.split_to(length);
                self.inflate(&header, payload);
                true
            }
        }
    }

    fn header(&mut self) -> bool {
        let mut cursor = Cursor::new(&self.raw[..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return false,
            Err(_) => {
                self.state = State::Passthrough;
                return true;
            }
        };
        let header_len = cursor.position() as usize;
        let starts = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        let continues = header.opcode == OpCode::Data(Data::Continue);
        // RSV2 and RSV3 mean nothing here: such a frame goes up for the library to refuse.
        let other_bits = header.rsv2 || header.rsv3;
        let compressed = !other_bits
            && ((starts && header.rsv1 && self.message.is_none())
                || (continues && !header.rsv1 && self.message.is_some()));
        if compressed && starts {
            self.message = Some((take_inflater(), 0));
        }
        if !compressed {
            // Control frames, plain messages, and what the library must refuse (RSV1 on a
            // continuation or a control frame) go up as they came.
            let bytes = self.raw.split_to(header_len);
            self.ready.unsplit(bytes);
            self.state = State::Forward(length);
            return true;
        }
        self.raw.advance(header_len);
        match usize::try_from(length) {
            Ok(length) if length <= self.limit => {
                self.state = State::Compressed { header, length };
            }
            _ => self.too_big(),
        }
        true
    }

    /// Inflates one compressed frame and hands it up as a plain one.
    fn inflate(&mut self, header: &FrameHeader, mut payload: BytesMut) {
        if let Some(mask) = header.mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
        }
        let Some((inflater, size)) = self.message.as_mut() else {
            return self.too_big();
        };
        let room = self.limit - *size + 1;
        let mut out = Vec::new();
        let mut ok = inflate_into(inflater, &payload, &mut out, room);
        if ok && header.is_final {
            ok = inflate_into(inflater, &TAIL, &mut out, room);
        }
        *size += out.len();
        if *size > self.limit {
            return self.too_big();
        }
        if !ok {
            return self.refuse();
        }
        let plain = FrameHeader {
            is_final: header.is_final,
            rsv1: false,
            opcode: header.opcode,
            // A server's library wants clients' frames masked (a client's, servers' frames
            // unmasked); a zero key leaves the bytes as they are.
            mask: header.mask.map(|_| [0; 4]),
            ..FrameHeader::default()
        };
        let mut head = Vec::with_capacity(14);
        // Writing into a Vec cannot fail.
        let _ = plain.format(out.len() as u64, &mut head);
        self.ready.put_slice(&head);
        self.ready.put_slice(&out);
        if header.is_final
            && let Some((inflater, _)) = self.message.take()
        {
            give_back(inflater);
        }
        self.state = State::Header;
    }

    /// Not deflate data: the library is shown a frame with a reserved bit set, which it
    /// refuses as a protocol violation (1002).
    fn refuse(&mut self) {
        self.give_up(true, 0);
    }

    /// Past the limit: the library is shown a frame too large for it, which it refuses with
    /// 1009.
    fn too_big(&mut self) {
        self.give_up(false, self.limit as u64 + 1);
    }

    /// Hands the library one last frame header it will refuse, and stops reading frames.
    fn give_up(&mut self, rsv2: bool, length: u64) {
        let refused = FrameHeader {
            is_final: true,
            rsv2,
            opcode: OpCode::Data(Data::Binary),
            mask: Some([0; 4]),
            ..FrameHeader::default()
        };
        let mut head = Vec::new();
        let _ = refused.format(length, &mut head);
        self.ready.put_slice(&head);
        self.message = None;
        self.state = State::Passthrough;
        self.raw.clear();
    }
}

/// One whole compressed message, inflated with an inflater held only meanwhile: `TooBig` past
/// `limit`, a protocol error when it is not deflate data (RFC 7692 §7.2.2 has the receiver
/// fail the connection).
pub(crate) fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, crate::session::ReadError> {
    use crate::session::ReadError;
    let mut inflater = take_inflater();
    let room = limit.saturating_add(1);
    let mut out = Vec::new();
    let ok = inflate_into(&mut inflater, payload, &mut out, room)
        && inflate_into(&mut inflater, &TAIL, &mut out, room);
    give_back(inflater);
    if out.len() > limit {
        return Err(ReadError::TooBig);
    }
    if !ok {
        return Err(ReadError::Protocol(
            "a compressed message is not deflate data".into(),
        ));
    }
    Ok(out)
}

/// Inflates `input` onto `out`, stopping once `out` holds `room` bytes; false if the data is
/// not deflate or the room ran out.
fn inflate_into(inflater: &mut Decompress, input: &[u8], out: &mut Vec<u8>, room: usize) -> bool {
    let start = inflater.total_in();
    loop {
        if out.len() >= room {
            return false;
        }
        if out.capacity() - out.len() < 1024 {
            // Doubling, from a guess for short messages, never past the room.
            let grow = out.capacity().max(input.len() * 2).clamp(256, 16 * 1024);
            out.reserve_exact((room - out.len()).min(grow));
        }
        let before = (inflater.total_in(), inflater.total_out());
        let consumed = (before.0 - start) as usize;
        match inflater.decompress_vec(&input[consumed..], out, FlushDecompress::Sync) {
            // A final block: nothing more belongs to this message.
            Ok(Status::StreamEnd) => return out.len() < room,
            Ok(_) => {}
            Err(_) => return false,
        }
        let all_in = (inflater.total_in() - start) as usize == input.len();
        let moved = (inflater.total_in(), inflater.total_out()) != before;
        // All input taken, and output left room to spare (nothing pending) or nothing moved.
        if all_in && (out.len() < out.capacity() || !moved) {
            return out.len() < room;
        }
        if !moved {
            return false;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_deref_mut() else {
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            this.bytes_read += (buf.filled().len() - before) as u64;
            return read;
        };
        loop {
            if !reader.ready.is_empty() {
                let n = reader.ready.len().min(buf.remaining());
                buf.put_slice(&reader.ready.split_to(n));
                if reader.ready.is_empty() {
                    // Gives the capacity back: an idle connection holds no buffer.
                    reader.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            // Also with nothing buffered: an empty frame (a message's last fragment, often)
            // is complete with its header.
            if reader.process() {
                continue;
            }
            if reader.raw.capacity() - reader.raw.len() < 256 {
                reader.raw.reserve(256);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut reader.raw
            ))?;
            this.bytes_read += read as u64;
            if read == 0 {
                // End of stream: whatever is left goes up for the library to judge.
                let rest = reader.raw.split();
                reader.ready.unsplit(rest);
                if reader.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_or_declined_as_rfc_7692_says() {
        let (agreed, response) =
            negotiate(["permessage-deflate; client_max_window_bits"].into_iter()).unwrap();
        assert!(agreed.takes_shared());
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (agreed, response) = negotiate(
            ["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10"].into_iter(),
        )
        .unwrap();
        assert!(!agreed.takes_shared());
        assert!(response.ends_with("server_max_window_bits=10"));
        // Invalid offers are declined, and the next one taken.
        assert!(negotiate(["permessage-deflate; server_max_window_bits=16"].into_iter()).is_none());
        assert!(negotiate(["permessage-deflate; foo"].into_iter()).is_none());
        assert!(
            negotiate(
                ["permessage-deflate; server_no_context_takeover; server_no_context_takeover"]
                    .into_iter()
            )
            .is_none()
        );
        let (agreed, _) = negotiate(
            [
                "permessage-deflate; server_max_window_bits",
                "permessage-deflate",
            ]
            .into_iter(),
        )
        .unwrap();
        assert!(agreed.takes_shared());
    }

    #[test]
    fn deflated_text_inflates_back() {
        let text = br#"{"pub":{"channel":"chat:lobby","data":{"text":"hello hello hello hello"}}}"#;
        let deflated = deflate(text).unwrap();
        assert!(deflated.len() < text.len());
        let mut inflater = Decompress::new(false);
        let mut out = Vec::new();
        assert!(inflate_into(&mut inflater, &deflated, &mut out, 1 << 20));
        assert!(inflate_into(&mut inflater, &TAIL, &mut out, 1 << 20));
        assert_eq!(out, text);
        // A bomb stops at the room it was given.
        let zeros = deflate(&vec![b'0'; 1 << 20]).unwrap();
        let mut inflater = Decompress::new(false);
        let mut out = Vec::new();
        assert!(!inflate_into(
            &mut inflater,
            &zeros,
            &mut out,
            64 * 1024 + 1
        ));
        assert!(out.len() <= 64 * 1024 + 1 + 16 * 1024);
    }
}
