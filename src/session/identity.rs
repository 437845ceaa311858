//! Who a session is: the [`Gate`] every connection passes (a token, or an anonymous name where
//! allowed), the `connect` and `refresh` commands, and the `connected` announcement. A session
//! runs no other command until it has an [`Identity`].

use std::sync::Arc;

use super::heartbeat::{NEVER, millis};
use super::{Refusal, Session};
use crate::auth::{AuthError, ConnectionClaims, Identity, Verifier, millis_until};
use crate::outbox::Closing;
use crate::protocol::{
    self, CloseCode, Connect, Connected, ErrorCode, Greeting, Item, Refreshed, SignIn,
};

/// How connections prove who they are.
#[derive(Debug)]
pub(crate) struct Gate {
    /// `None`: no token key is configured, and tokens are refused.
    pub verifier: Option<Verifier>,
    pub allow_anonymous: bool,
    /// The app's backend, for the commands it decides.
    pub backend: Arc<crate::backend::Backend>,
}

impl Gate {
    /// Whether a connection token would be accepted now: for transports that answer before
    /// a session starts.
    pub(crate) fn check_token(&self, token: &str) -> Result<(), AuthError> {
        self.verify(token).map(drop)
    }

    fn verify(&self, token: &str) -> Result<ConnectionClaims, AuthError> {
        self.verifier
            .as_ref()
            .ok_or(AuthError::NoKeys)?
            .connection(token)
    }
}

/// Longest accepted user name, in characters.
const MAX_NAME_CHARS: usize = 32;

/// A user name is 1–32 characters of letters, digits, spaces and `_ - .`, trimmed.
fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '_' || c == '-' || c == '.');
    ok.then(|| name.to_owned())
}

fn generated_name() -> String {
    let mut rng = fastrand::Rng::new();
    let suffix: String = (0..6).map(|_| rng.lowercase()).collect();
    format!("guest-{suffix}")
}

impl Session<'_> {
    /// The `connect` command: the first command only.
    pub(super) fn connect(&mut self, id: Option<u64>, connect: Connect) {
        if self.identity.is_some() {
            let message = "connect must be the first command of a connection";
            return self.reply_error(id, &Refusal::new(ErrorCode::AlreadyConnected, message));
        }
        match (connect.token, &connect.name) {
            (Some(token), _) => self.connect_with_token(id, token.expose()),
            (None, name) if self.gate.allow_anonymous => {
                self.establish_anonymous(id, name.as_deref())
            }
            (None, _) => self.refuse("authentication required: connect with a token"),
        }
    }

    /// The identity a command other than `connect` runs with: the one set, or where anonymous
    /// connections are allowed a generated one. `None` (and the connection closing) otherwise.
    pub(super) fn identity_for_command(&mut self) -> Option<Identity> {
        if self.identity.is_none() {
            if !self.gate.allow_anonymous {
                self.refuse(
                    "authentication required: the first command must be connect with a token",
                );
                return None;
            }
            self.establish_anonymous(None, None);
        }
        self.identity.clone()
    }

    /// Closes the connection with 1008 and `reason`.
    pub(super) fn refuse(&self, reason: &str) {
        tracing::debug!(client = %self.client, reason, "connection refused");
        self.outbox.close(Closing::because(
            CloseCode::PolicyViolation,
            reason.to_owned(),
        ));
    }

    /// Verifies a connection token and, if it holds, sets the identity it proves.
    pub(super) fn connect_with_token(&mut self, id: Option<u64>, token: &str) {
        let claims = match self.gate.verify(token) {
            Ok(claims) => claims,
            Err(err) => return self.refuse(&err.to_string()),
        };
        let expires_in_ms = claims.expires.map(millis_until);
        self.enter(id, claims.user.into(), claims.info, expires_in_ms);
    }

    /// Lets `user` in as authenticated, within the per-user cap (closing the connection
    /// otherwise): the expiry clock set, reachable by server commands, told with `connected`.
    pub(super) fn enter(
        &mut self,
        id: Option<u64>,
        user: Arc<str>,
        info: Option<Arc<serde_json::Value>>,
        expires_in_ms: Option<u64>,
    ) -> Option<Identity> {
        if let Err(refused) = self.ticket.admit_user(&user) {
            self.outbox
                .close(Closing::because(refused.close_code(), refused.to_string()));
            return None;
        }
        if let Some(left) = expires_in_ms {
            let at = self.clocks.now().saturating_add(left);
            self.clocks.set(&self.clocks.expires, at);
        }
        self.mailbox = Some(self.node.register_user(&user, &self.outbox, self.transport));
        let identity = Identity {
            user,
            authenticated: true,
            info,
        };
        self.establish(id, identity.clone(), expires_in_ms);
        Some(identity)
    }

    pub(super) fn establish_anonymous(&mut self, id: Option<u64>, name: Option<&str>) {
        let user: Arc<str> = name
            .and_then(valid_name)
            .unwrap_or_else(generated_name)
            .into();
        let identity = Identity {
            user,
            authenticated: false,
            info: None,
        };
        self.establish(id, identity, None);
    }

    /// Sets the connection's identity and tells the client: as the reply to `connect` when it
    /// has an id, as a `connected` push otherwise.
    fn establish(&mut self, id: Option<u64>, identity: Identity, expires_in_ms: Option<u64>) {
        self.clocks.set(&self.clocks.identify_by, NEVER);
        let connected = Connected {
            client: self.client.to_string(),
            user: identity.user.to_string(),
            version: protocol::PROTOCOL_VERSION,
            ping_interval_ms: millis(self.config.ping_interval),
            pong_timeout_ms: millis(self.config.pong_timeout),
            authenticated: identity.authenticated,
            expires_in_ms,
        };
        self.identity = Some(identity);
        self.outbox
            .push(Item::Connected(Box::new(Greeting { id, connected })));
    }

    /// Another wire's sign-in, verified by its decoder: the connection becomes that user,
    /// reachable by the server API's user commands and counted under the per-user cap. Once
    /// per connection, as Pusher allows.
    pub(super) fn sign_in(&mut self, id: Option<u64>, SignIn { user, info }: SignIn) {
        if self.mailbox.is_some() {
            let message = "this connection is signed in already";
            return self.reply_error(id, &Refusal::new(ErrorCode::AlreadyConnected, message));
        }
        if let Err(refused) = self.ticket.admit_user(&user) {
            self.outbox
                .close(Closing::because(refused.close_code(), refused.to_string()));
            return;
        }
        self.mailbox = Some(self.node.register_user(&user, &self.outbox, self.transport));
        self.identity = Some(Identity {
            user,
            authenticated: true,
            info,
        });
        self.reply_ok(id, &protocol::Empty {});
    }

    /// Replaces the token of an authenticated connection, moving its expiry.
    pub(super) fn refresh(&mut self, identity: &Identity, id: Option<u64>, token: &str) {
        if !identity.authenticated {
            let message = "refresh is for connections that connected with a token";
            return self.reply_error(id, &Refusal::new(ErrorCode::PermissionDenied, message));
        }
        let claims = match self.gate.verify(token) {
            Ok(claims) => claims,
            Err(err) => return self.reply_error(id, &Refusal::new(ErrorCode::InvalidToken, err)),
        };
        if *claims.user != *identity.user {
            let message = "token is for another user";
            return self.reply_error(id, &Refusal::new(ErrorCode::InvalidToken, message));
        }
        let expires_in_ms = claims.expires.map(millis_until);
        let at = expires_in_ms.map_or(NEVER, |left| self.clocks.now().saturating_add(left));
        self.clocks.set(&self.clocks.expires, at);
        self.reply_ok(id, &Refreshed { expires_in_ms });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(valid_name("  alice "), Some("alice".into()));
        assert_eq!(valid_name("Zoë Müller-2.0"), Some("Zoë Müller-2.0".into()));
        assert_eq!(valid_name(""), None);
        assert_eq!(valid_name("<script>"), None);
        assert_eq!(valid_name(&"a".repeat(33)), None);
        assert!(generated_name().starts_with("guest-"));
    }
}
