//! Hooks for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a build you ship): the
//! Pusher reader's translation, driven frame by frame without a socket.

use std::sync::Arc;

use crate::protocol::{ChannelName, Command};
use crate::pusher::codec::Asked;
use crate::pusher::sign::Secret;
use crate::pusher::{App, channel};
use crate::session::Inbound;
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
