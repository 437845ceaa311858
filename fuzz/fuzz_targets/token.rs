//! The token parser meets whatever a client puts in `?token=`, a Bearer header, `connect` or
//! `refresh`: verification must refuse garbage without panicking, and must never accept a
//! token the fuzzer made up (it does not know the secret).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tidings::auth::Verifier;
use tidings::config::{Namespaces, TokenSettings, parse_namespace};
use tidings::protocol::Secret;

const SECRET: &str = "fuzzing-secret-that-is-32-bytes-long!";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::load(&TokenSettings {
            hmac_secret: Some(Secret::new(SECRET)),
            leeway: Duration::from_secs(5),
            ..Default::default()
        })
        .expect("valid settings")
        .expect("a key is configured")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = verifier().connection(text) {
        panic!("accepted a forged token for {:?}: {text:?}", claims.user);
    }
    // Namespace rules come from operators, but a typo must be an error, not a crash.
    let _ = parse_namespace(text, Namespaces::default().get(None));
});
