//! The WebSocket reader (our own RFC 6455 framing, server side) meets whatever bytes a client
//! can send, in whatever pieces the socket delivers them: never a panic; no message over the
//! limit, inflated or not; nothing held past one frame's worth; only pongs and close replies
//! of at most 125 bytes answered; a refusal closes with 1002, 1007 or 1009 and a short
//! reason; and the same bytes make the same events however they are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::fuzzing::{WsEvent, WsReader};

const LIMIT: usize = 1024;
/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, bytes)) = data.split_first() else {
        return;
    };
    let deflate = knobs & 1 != 0;
    let piece = 1 + usize::from(knobs >> 1);

    let mut cut = WsReader::new(LIMIT, deflate);
    let mut events = Vec::new();
    for chunk in bytes.chunks(piece) {
        events.extend(cut.feed(chunk));
        if matches!(events.last(), Some(WsEvent::Close | WsEvent::Refused(..))) {
            break;
        }
        let (buffered, partial) = cut.held();
        assert!(buffered <= LIMIT + MAX_HEADER, "holds {buffered} bytes of one frame");
        assert!(partial <= LIMIT, "holds {partial} bytes of one message");
    }

    for event in &events {
        match event {
            WsEvent::Text(text) => assert!(text.len() <= LIMIT),
            WsEvent::Binary(bytes) => assert!(bytes.len() <= LIMIT),
            WsEvent::Refused(code, why) => {
                assert!(matches!(code, 1002 | 1007 | 1009), "closed with {code}");
                assert!(why.len() < 256, "{why}");
            }
            WsEvent::Alive | WsEvent::Close => {}
        }
    }
    for (opcode, payload) in &cut.replies {
        assert!(matches!(opcode, 0x8 | 0xA), "answered with opcode {opcode}");
        assert!(payload.len() <= 125);
        if *opcode == 0x8 && !payload.is_empty() {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            assert!(matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999));
            assert!(std::str::from_utf8(&payload[2..]).is_ok());
        }
    }

    let mut whole = WsReader::new(LIMIT, deflate);
    assert_eq!(whole.feed(bytes), events, "the same bytes, cut differently");
});
