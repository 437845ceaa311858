//! The words nodes say to each other through the broker: a server command for every connection
//! of one user, or commands for one stream session. The broker carries them as opaque bytes;
//! only the node encodes and reads them.

use serde::{Deserialize, Serialize};

use super::lookup::NodeConnections;
use super::{Node, NodeError};
use crate::protocol::{ChannelName, CloseCode};

/// One node-to-node message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Control {
    Disconnect {
        user: String,
        code: CloseCode,
        reason: String,
    },
    Subscribe {
        user: String,
        channel: ChannelName,
    },
    Unsubscribe {
        user: String,
        channel: ChannelName,
    },
    /// Protocol commands (JSON text) for the stream session `session`.
    Commands {
        session: String,
        commands: Vec<String>,
    },
    /// Which connections has `user` here? Answer `reply_to` alone, quoting `request`.
    Lookup {
        user: String,
        request: u64,
        reply_to: String,
    },
    /// One node's answer to a `Lookup`.
    Found {
        request: u64,
        found: NodeConnections,
    },
}

impl Control {
    pub(super) fn encode(&self) -> Result<Vec<u8>, NodeError> {
        serde_json::to_vec(self).map_err(|err| {
            crate::broker::BrokerError::Internal {
                context: "encoding a server command",
                source: Box::new(err),
            }
            .into()
        })
    }

    /// The message in `bytes`, or `None` (logged) when they are not one: a node of another
    /// version, or a stray publisher on the control channel.
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes)
            .inspect_err(|err| tracing::warn!(%err, "undecodable server command from the broker"))
            .ok()
    }
}

impl Node {
    /// Sends `control` to every node, this one included.
    pub(super) async fn control(&self, control: &Control) -> Result<(), NodeError> {
        let message = control.encode()?;
        Ok(self.0.broker.control(&message).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_as_it_was_written() {
        let sent = [
            Control::Disconnect {
                user: "ann".into(),
                code: CloseCode::Disconnected,
                reason: "bye".into(),
            },
            // An app's own code (Pusher's terminate_connections) crosses nodes too.
            Control::Disconnect {
                user: "pusher:1:ann".into(),
                code: CloseCode::app(4009).unwrap(),
                reason: "terminated".into(),
            },
            Control::Subscribe {
                user: "ann".into(),
                channel: ChannelName::parse("news").unwrap(),
            },
            Control::Commands {
                session: "n1.00".into(),
                commands: vec![r#"{"id":1}"#.into()],
            },
            Control::Lookup {
                user: "ann".into(),
                request: 7,
                reply_to: "n1".into(),
            },
            Control::Found {
                request: 7,
                found: NodeConnections {
                    node: "n2".into(),
                    name: "web-2".into(),
                    connections: Vec::new(),
                    total: 0,
                },
            },
        ];
        for control in sent {
            let bytes = control.encode().unwrap();
            assert_eq!(Control::decode(&bytes), Some(control));
        }
        assert_eq!(Control::decode(br#"{"op":"reboot"}"#), None);
    }
}
