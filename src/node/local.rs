//! The broker's sink on this node: what the broker hands down — publications,
//! reconciliations, presence changes, node-to-node messages — goes to the concept that owns
//! it (the hub, [`Joins`], [`Users`], [`Streams`], [`Lookups`]) and nowhere else.

use std::sync::Arc;

use super::control::Control;
use super::lookup::Lookups;
use super::presence::Joins;
use super::streams::Streams;
use super::users::{UserCommand, Users};
use crate::broker::Deliver;
use crate::config::Namespaces;
use crate::hub::Hub;
use crate::protocol::{ChannelName, Publication, StreamPosition};

/// What this node holds of its own connections, and where the broker hands things down.
#[derive(Debug)]
pub struct Local {
    pub(super) hub: Arc<Hub>,
    pub(super) namespaces: Arc<Namespaces>,
    joins: Arc<Joins>,
    pub(super) users: Users,
    /// Stream sessions here, which take commands from any node.
    pub(super) streams: Arc<Streams>,
    /// User lookups this node waits on, and the answering of others'.
    pub(super) lookups: Lookups,
}

impl Local {
    pub fn new(namespaces: Arc<Namespaces>) -> Arc<Self> {
        let hub = Arc::new(Hub::new());
        Arc::new(Self {
            joins: Joins::new(hub.clone(), namespaces.clone()),
            hub,
            namespaces,
            users: Users::default(),
            streams: Arc::default(),
            lookups: Lookups::default(),
        })
    }
}

impl Deliver for Local {
    fn deliver(&self, publication: &Publication) {
        let compress_from = self
            .namespaces
            .compress_from(publication.channel.namespace());
        self.hub.broadcast(publication, compress_from);
    }

    fn reconcile(&self, channel: &ChannelName, position: &StreamPosition) {
        self.hub.reconcile(channel, position);
    }

    fn event(&self, channel: &ChannelName, message: &[u8]) {
        self.joins.changed(channel, message);
    }

    fn control(&self, message: &[u8]) {
        let Some(control) = Control::decode(message) else {
            return;
        };
        let (user, command) = match control {
            Control::Commands { session, commands } => {
                return self.streams.deliver(&session, commands);
            }
            Control::Disconnect { user, code, reason } => {
                (user, UserCommand::Disconnect { code, reason })
            }
            Control::Subscribe { user, channel } => (user, UserCommand::Subscribe(channel)),
            Control::Unsubscribe { user, channel } => (user, UserCommand::Unsubscribe(channel)),
            Control::Lookup {
                user,
                request,
                reply_to,
            } => return self.lookups.asked(&self.users, &user, request, reply_to),
            Control::Found { request, found } => return self.lookups.found(request, found),
        };
        self.users.send(&user, &command);
    }
}
