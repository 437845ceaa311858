//! The frames a Pusher client sends (protocol 7), read into typed values; and the error each
//! bad one earns.
//!
//! Every frame is a JSON object `{"event": NAME, "data": …, "channel"?: …}`. `data` is an
//! object for Pusher's own events and anything for client events (`client-*`), whose data is
//! passed on as the JSON it was.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A frame from a Pusher client.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// `client-*` on `channel`, with its data as sent (JSON text).
    ClientEvent {
        event: String,
        channel: String,
        data: String,
    },
}

/// Why a frame was not understood: told to the client as `pusher:error` with Pusher's code
/// for a bad message (`code` 4200s are for the server's own conditions, so none here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a JSON object with an \"event\": {0}")]
    NotAnEvent(String),
    #[error("{event}: \"data\" must be an object with {fields}")]
    BadData { event: String, fields: &'static str },
    #[error("unsupported event {0:?}")]
    Unsupported(String),
    #[error("client event {0:?} needs a \"channel\"")]
    NoChannel(String),
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// Longest event name, as Pusher limits it.
pub const MAX_EVENT_NAME: usize = 200;

/// Reads one text frame.
pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|err| {
        // serde's message may quote the input: cut it short, on a character boundary.
        FrameError::NotAnEvent(err.to_string().chars().take(120).collect())
    })?;
    let event = raw.event.as_ref();
    // pusher-js sends objects; some clients send the object as a JSON string.
    let data = {
        let text = raw.data.as_deref().map_or("null", RawValue::get);
        serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned())
    };
    let bad = |fields| FrameError::BadData {
        event: event.to_owned(),
        fields,
    };
    match event {
        "pusher:ping" => Ok(ClientFrame::Ping),
        "pusher:pong" => Ok(ClientFrame::Pong),
        "pusher:subscribe" => {
            let fields = "\"channel\" and perhaps \"auth\", \"channel_data\"";
            let data: SubscribeData = serde_json::from_str(&data).map_err(|_| bad(fields))?;
            Ok(ClientFrame::Subscribe {
                channel: data.channel,
                auth: data.auth,
                channel_data: data.channel_data,
            })
        }
        "pusher:unsubscribe" => {
            let data: UnsubscribeData =
                serde_json::from_str(&data).map_err(|_| bad("\"channel\""))?;
            Ok(ClientFrame::Unsubscribe {
                channel: data.channel,
            })
        }
        "pusher:signin" => {
            let fields = "\"auth\" and \"user_data\"";
            let data: SigninData = serde_json::from_str(&data).map_err(|_| bad(fields))?;
            Ok(ClientFrame::Signin {
                auth: data.auth,
                user_data: data.user_data,
            })
        }
        client if client.starts_with("client-") && client.len() <= MAX_EVENT_NAME => {
            let channel = raw
                .channel
                .ok_or_else(|| FrameError::NoChannel(client.to_owned()))?;
            // As sent: Pusher's clients send a string or an object, and receivers get it back.
            let data = raw.data.as_deref().map_or("null", RawValue::get).to_owned();
            Ok(ClientFrame::ClientEvent {
                event: client.to_owned(),
                channel,
                data,
            })
        }
        other => {
            let mut name: String = other.chars().take(32).collect();
            if name.len() < other.len() {
                name.push('…');
            }
            Err(FrameError::Unsupported(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_js_frames_read_as_their_commands() {
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(decode(r#"{"event":"pusher:pong"}"#), Ok(ClientFrame::Pong));
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#),
            Ok(ClientFrame::Subscribe {
                channel: "private-a".into(),
                auth: Some("k:s".into()),
                channel_data: None,
            })
        );
        // Some clients send data as a JSON string.
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"news\"}"}"#),
            Ok(ClientFrame::Unsubscribe {
                channel: "news".into()
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#
            ),
            Ok(ClientFrame::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"1"}"#.into(),
            })
        );
        let Ok(ClientFrame::ClientEvent {
            event,
            channel,
            data,
        }) = decode(r#"{"event":"client-typing","channel":"private-a","data":{"who":"ann"}}"#)
        else {
            panic!("not a client event");
        };
        assert_eq!(
            (event.as_str(), channel.as_str()),
            ("client-typing", "private-a")
        );
        assert_eq!(data, r#"{"who":"ann"}"#);
    }

    #[test]
    fn a_bad_frame_is_an_error_that_says_what_is_wrong() {
        for (text, wanted) in [
            ("", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"data":{}}"#, "not a JSON object"),
            (r#"{"event":"pusher:subscribe"}"#, "\"channel\""),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
                "\"channel\"",
            ),
            (
                r#"{"event":"pusher:signin","data":{"auth":"x"}}"#,
                "\"user_data\"",
            ),
            (
                r#"{"event":"reboot","data":{}}"#,
                "unsupported event \"reboot\"",
            ),
            (r#"{"event":"client-x","data":{}}"#, "needs a \"channel\""),
        ] {
            let err = decode(text).expect_err(text).to_string();
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(err.len() < 200, "{text}: {err}");
        }
        // Found by the fuzzer: a long name of characters that escape to ten bytes each.
        let odd = format!(r#"{{"event":"{}"}}"#, "\\u007f".repeat(300));
        assert!(decode(&odd).unwrap_err().to_string().len() < 512);
        let long = format!(r#"{{"event":"client-{}","channel":"c"}}"#, "x".repeat(300));
        assert!(matches!(decode(&long), Err(FrameError::Unsupported(_))));
    }
}
