//! The command decoder meets whatever a client can send in a text frame: it must answer every
//! input with a request or a decode error, never panic, and keep its error messages short
//! enough to send back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::protocol::decode_request;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the WebSocket layer closes with 1007 otherwise).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = decode_request(text) {
        // An echoed field is capped, so one message cannot grow with the input.
        assert!(err.message.len() <= 512 + text.len().min(256), "{}", err.message);
    }
});
