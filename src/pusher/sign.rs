//! Pusher's signatures, as its SDKs make them: HMAC-SHA256 with the app's secret, in lowercase
//! hex. Subscriptions to private and presence channels sign `socket_id:channel[:channel_data]`,
//! sign-ins `socket_id::user::user_data`, and HTTP API requests their method, path and sorted
//! query (with the body's MD5 among its parameters).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// How far an HTTP API request's `auth_timestamp` may be from now, either way.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// One app's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// `HMAC-SHA256(secret, message)` in lowercase hex.
    pub fn sign(&self, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex) is `message`'s, compared in constant time.
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        let Some(bytes) = unhex(signature) else {
            return false;
        };
        mac.verify_slice(&bytes).is_ok()
    }
}

/// The `auth` of a subscription to a private or presence channel: `KEY:SIGNATURE`, where the
/// signature covers `socket_id:channel`, and `:channel_data` for a presence channel.
pub fn channel_auth_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a `pusher:signin`'s `auth` signs.
pub fn signin_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Checks an `auth` value `KEY:SIGNATURE` against the app's key and secret.
pub fn check_auth(key: &str, secret: &Secret, message: &str, auth: &str) -> bool {
    match auth.split_once(':') {
        Some((given_key, signature)) => given_key == key && secret.verify(message, signature),
        None => false,
    }
}

/// The string an HTTP API request signs: `METHOD\nPATH\nQUERY`, the query's parameters
/// (without `auth_signature`) sorted by name, names lowercased, values as sent.
pub fn request_message(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = query
        .iter()
        .filter(|(name, _)| name != "auth_signature")
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_str()))
        .collect();
    params.sort();
    let joined: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{method}\n{path}\n{}", joined.join("&"))
}

/// The MD5 of a request body, in lowercase hex (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of Pusher's own documentation (channels/library_auth_reference).
    const KEY: &str = "278d425bdf160c739803";

    fn secret() -> Secret {
        Secret::new("7ad3773142a6692b25b8")
    }

    #[test]
    fn a_private_channel_is_signed_as_pushers_documentation_says() {
        let message = channel_auth_message("1234.1234", "private-foobar", None);
        let signature = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(secret().sign(&message), signature);
        assert!(check_auth(
            KEY,
            &secret(),
            &message,
            &format!("{KEY}:{signature}")
        ));
        // Another app's key with this app's signature: not this app's auth.
        assert!(!check_auth(
            KEY,
            &secret(),
            &message,
            &format!("another-key:{signature}")
        ));
        let other = channel_auth_message("1234.1235", "private-foobar", None);
        assert!(!check_auth(
            KEY,
            &secret(),
            &other,
            &format!("{KEY}:{signature}")
        ));
        for forged in [
            "",
            KEY,
            "278d425bdf160c739803:",
            "278d425bdf160c739803:zz",
            "x:y:z",
        ] {
            assert!(!check_auth(KEY, &secret(), &message, forged), "{forged:?}");
        }
    }

    #[test]
    fn a_presence_channel_signs_its_channel_data_too() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let message = channel_auth_message("1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            secret().sign(&message),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn an_http_request_is_signed_over_its_sorted_query_and_body_md5() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body);
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let query = [
            ("body_md5", md5.as_str()),
            ("auth_version", "1.0"),
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_signature", "ignored"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let message = request_message("POST", "/apps/3/events", &query);
        assert_eq!(
            message,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            secret().sign(&message),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn a_signin_signs_the_user_data() {
        assert_eq!(
            signin_message("1.2", r#"{"id":"7"}"#),
            r#"1.2::user::{"id":"7"}"#
        );
    }
}
