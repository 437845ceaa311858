//! Hooks for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a build you ship): the
//! Pusher reader's translation, driven frame by frame without a socket, and the WebSocket
//! reader's decoding of the client's bytes, fed in any pieces.

use std::sync::Arc;

use crate::protocol::{ChannelName, Command};
use crate::pusher::codec::Asked;
use crate::pusher::sign::Secret;
use crate::pusher::{App, channel};
use crate::session::Inbound;
use crate::transport::frames::Decoder;
use crate::transport::pusher::Translator;

/// The socket id of every [`PusherWire`].
pub const SOCKET_ID: &str = "1.2";

/// What the Pusher reader made of one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Translated {
    /// The session is asked to subscribe to this Pusher channel.
    Subscribe(String),
    /// … to leave it.
    Unsubscribe(String),
    /// A client event, published on this Pusher channel.
    Publish(String),
    /// Any other command: ping, pong, sign-in.
    Other,
    /// Refused, with the message the client is sent.
    Refused(String),
}

/// One Pusher connection's reader, socket id [`SOCKET_ID`].
#[derive(Debug)]
pub struct PusherWire(Translator);

impl PusherWire {
    pub fn new(app_id: &str, key: &str, secret: &str) -> Self {
        let app = Arc::new(App {
            id: app_id.into(),
            key: key.into(),
            secret: Secret::new(secret),
        });
        Self(Translator::new(
            app,
            "0000000100000002".into(),
            Asked::default(),
        ))
    }

    pub fn translate(&mut self, text: &str) -> Translated {
        let name = |channel: &ChannelName| channel::external(channel).map(|(_, name)| name);
        match self.0.translate(text) {
            Inbound::Command(request) => match request.command {
                Command::Subscribe(s) => {
                    name(&s.channel).map_or(Translated::Other, Translated::Subscribe)
                }
                Command::Unsubscribe(u) => {
                    name(&u.channel).map_or(Translated::Other, Translated::Unsubscribe)
                }
                Command::Publish(p) => {
                    name(&p.channel).map_or(Translated::Other, Translated::Publish)
                }
                _ => Translated::Other,
            },
            Inbound::Invalid(invalid) => Translated::Refused(invalid.message),
            _ => Translated::Other,
        }
    }
}

/// What the WebSocket reader made of the client's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// A ping (its pong queued) or a pong.
    Alive,
    /// The client's close (its reply queued).
    Close,
    /// The connection is failed: the close code it is sent, and why.
    Refused(u16, String),
}

/// One WebSocket connection's reader, server side, without a socket: bytes in, events and the
/// control frames it answers with out.
#[derive(Debug)]
pub struct WsReader {
    decoder: Decoder,
    /// Every control frame the reader answered with: (opcode, payload).
    pub replies: Vec<(u8, Vec<u8>)>,
    ended: bool,
}

impl WsReader {
    /// `limit`: the largest message, inflated; `deflate`: permessage-deflate agreed.
    pub fn new(limit: usize, deflate: bool) -> Self {
        Self {
            decoder: Decoder::new(bytes::Bytes::new(), limit, deflate),
            replies: Vec::new(),
            ended: false,
        }
    }

    /// Takes the next bytes the client sent; returns the events they complete, stopping for
    /// good at a close or a refusal (as the connection does).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<WsEvent> {
        let mut events = Vec::new();
        if self.ended {
            return events;
        }
        self.decoder.feed(bytes);
        let replies = &mut self.replies;
        let mut reply = |opcode, payload: bytes::Bytes| replies.push((opcode, payload.to_vec()));
        loop {
            match self.decoder.parse(&mut reply) {
                Ok(None) => return events,
                Ok(Some(event)) => {
                    let event = match event {
                        crate::transport::frames::Event::Text(text) => WsEvent::Text(text),
                        crate::transport::frames::Event::Binary(b) => WsEvent::Binary(b.to_vec()),
                        crate::transport::frames::Event::Alive => WsEvent::Alive,
                        crate::transport::frames::Event::Close => WsEvent::Close,
                    };
                    let closed = event == WsEvent::Close;
                    events.push(event);
                    if closed {
                        self.ended = true;
                        return events;
                    }
                }
                Err(err) => {
                    let code = match err.closing() {
                        Some(crate::outbox::Closing::Send { code, .. }) => code.number(),
                        _ => 0,
                    };
                    let why = match std::error::Error::source(&err) {
                        Some(source) => format!("{err}: {source}"),
                        None => err.to_string(),
                    };
                    events.push(WsEvent::Refused(code, why));
                    self.ended = true;
                    return events;
                }
            }
        }
    }

    /// Bytes held that are not yet a whole frame, and of a message not yet whole.
    pub fn held(&self) -> (usize, usize) {
        self.decoder.held()
    }
}
