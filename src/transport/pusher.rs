//! A Pusher client's WebSocket (`/app/KEY`): the same socket as `/ws`, read through Pusher's
//! frames ([`crate::pusher::frames`]) into the session's typed commands, and written with the
//! Pusher codec. The session core does the rest, as for any native client.

use std::sync::Arc;

use crate::protocol::{Command, ErrorCode, Request, Subscribe, Unsubscribe};
use crate::pusher::channel::{self, Access};
use crate::pusher::codec::{Asked, Question};
use crate::pusher::frames::{self, ClientFrame};
use crate::session::{Inbound, Incoming, Invalid, ReadError};
use crate::transport::ws::Reader;

/// The reading half of a Pusher socket.
#[derive(Debug)]
pub(crate) struct PusherReader {
    inner: Reader,
    app: Arc<str>,
    asked: Asked,
    /// Ids of the commands handed to the session (the wire has none).
    next_id: u64,
}

impl PusherReader {
    pub(crate) fn new(inner: Reader, app: Arc<str>, asked: Asked) -> Self {
        Self {
            inner,
            app,
            asked,
            next_id: 0,
        }
    }

    fn ask(&mut self, question: Question) -> u64 {
        self.next_id += 1;
        self.asked.note(self.next_id, question);
        self.next_id
    }

    fn refuse(&mut self, question: Question, code: ErrorCode, message: String) -> Inbound {
        let id = Some(self.ask(question));
        Inbound::Invalid(Box::new(Invalid { id, code, message }))
    }

    /// One text frame as the session's input.
    fn translate(&mut self, text: &str) -> Inbound {
        let frame = match frames::decode(text) {
            Ok(frame) => frame,
            Err(err) => {
                let code = ErrorCode::InvalidCommand;
                return self.refuse(Question::Quiet, code, err.to_string());
            }
        };
        match frame {
            ClientFrame::Ping => {
                let id = self.ask(Question::Ping);
                Inbound::Command(Request {
                    id: Some(id),
                    command: Command::Ping,
                })
            }
            ClientFrame::Pong => Inbound::Command(Request {
                id: None,
                command: Command::Pong,
            }),
            ClientFrame::Subscribe { channel: name, .. } => {
                let question = Question::Subscribe(name.clone());
                let kind = match channel::kind(&name) {
                    Ok(kind) => kind,
                    Err(err) => {
                        return self.refuse(question, ErrorCode::InvalidChannel, err.to_string());
                    }
                };
                if kind.access != Access::Public || kind.cache {
                    let message = format!("{name}: only public channels are served so far");
                    return self.refuse(question, ErrorCode::PermissionDenied, message);
                }
                let Some(internal) = channel::internal(&self.app, &name, kind) else {
                    let message = format!("{name}: too long once escaped");
                    return self.refuse(question, ErrorCode::InvalidChannel, message);
                };
                let id = self.ask(question);
                Inbound::Command(Request {
                    id: Some(id),
                    command: Command::Subscribe(Subscribe {
                        channel: internal,
                        since: None,
                        token: None,
                    }),
                })
            }
            ClientFrame::Unsubscribe { channel: name } => {
                let internal = channel::kind(&name)
                    .ok()
                    .and_then(|kind| channel::internal(&self.app, &name, kind));
                let Some(internal) = internal else {
                    let message = format!("{name}: not a channel");
                    return self.refuse(Question::Quiet, ErrorCode::InvalidChannel, message);
                };
                let id = self.ask(Question::Quiet);
                Inbound::Command(Request {
                    id: Some(id),
                    command: Command::Unsubscribe(Unsubscribe { channel: internal }),
                })
            }
            ClientFrame::Signin { .. } | ClientFrame::ClientEvent { .. } => {
                let message = "sign-in and client events are not served yet".to_owned();
                self.refuse(Question::Quiet, ErrorCode::PermissionDenied, message)
            }
        }
    }
}

impl Incoming for PusherReader {
    async fn next(&mut self) -> Option<Result<Inbound, ReadError>> {
        let inbound = self.inner.next().await?;
        Some(inbound.map(|inbound| match inbound {
            Inbound::Text(text) => self.translate(&text),
            other => other,
        }))
    }
}
