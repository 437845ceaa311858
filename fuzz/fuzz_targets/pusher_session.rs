//! The Pusher reader as a whole, frame after frame of one connection (the input split at
//! newlines): never a panic; refusals say why in a short message; a private or presence
//! subscription gets through only with the signature the app's secret makes for this socket
//! (the fuzzer cannot forge one, so an accepted subscription without it is a bypass); a client
//! event only on a signed channel the connection holds; at most 128 of those held at once.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tidings::fuzzing::{PusherWire, SOCKET_ID, Translated};
use tidings::pusher::frames::{self, ClientFrame};
use tidings::pusher::{channel, sign};

const KEY: &str = "key";
const SECRET: &str = "secret";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut wire = PusherWire::new("app", KEY, SECRET);
    let mut held = HashSet::new();
    for frame in text.split('\n') {
        match wire.translate(frame) {
            Translated::Refused(message) => assert!(message.len() < 1024, "{message}"),
            Translated::Subscribe(name) => {
                let kind = channel::kind(&name).expect("a subscribed name is valid");
                if !kind.is_signed() {
                    continue;
                }
                let Ok(ClientFrame::Subscribe {
                    auth, channel_data, ..
                }) = frames::decode(frame)
                else {
                    panic!("a subscription from something else: {frame}");
                };
                let data = channel_data.as_deref().filter(|_| name.starts_with("presence-"));
                let message = sign::channel_auth_message(SOCKET_ID, &name, data);
                let secret = sign::Secret::new(SECRET);
                let auth = auth.expect("a signed channel without auth");
                assert!(
                    sign::check_auth(KEY, &secret, &message, &auth),
                    "forged auth accepted: {frame}"
                );
                held.insert(name);
                assert!(held.len() <= 128);
            }
            Translated::Unsubscribe(name) => {
                held.remove(&name);
            }
            Translated::Publish(name) => {
                assert!(held.contains(&name), "client event on {name}, not held");
            }
            Translated::Other => {}
        }
    }
});
