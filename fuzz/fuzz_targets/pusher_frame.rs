//! The Pusher frame decoder and channel names meet whatever a Pusher client can send: every
//! text is a frame or an error (never a panic) with a short message, and every channel name a
//! frame can carry either is refused or maps to its own Tidings channel and back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::pusher::{channel, frames};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match frames::decode(text) {
        // A quoted name is cut to 32 characters, each at most 10 bytes escaped.
        Err(err) => assert!(err.to_string().len() < 512, "{err}"),
        Ok(frames::ClientFrame::Subscribe { channel: name, .. })
        | Ok(frames::ClientFrame::Unsubscribe { channel: name })
        | Ok(frames::ClientFrame::ClientEvent { channel: name, .. }) => {
            if let Ok(kind) = channel::kind(&name) {
                if let Some(internal) = channel::internal("app", &name, kind) {
                    assert_eq!(channel::external(&internal), Some(("app", name.clone())));
                }
            }
        }
        Ok(_) => {}
    }
});
