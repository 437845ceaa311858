//! Who a session is: the [`Gate`] every connection passes (a token, or an anonymous name where
//! allowed), the `connect` and `refresh` commands, and the `connected` announcement. A session
//! runs no other command until it has an [`Identity`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use super::heartbeat::{NEVER, millis};
use super::{Refusal, Session};
use crate::auth::{AuthError, ConnectionClaims, Identity, Verifier, millis_until};
use crate::backend::{Answer, Caller, RefreshResult};
use crate::outbox::Closing;
use crate::protocol::{
    self, CloseCode, Connect, Connected, ErrorBody, ErrorCode, Greeting, Item, Refreshed,
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
    fn enter(
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
        self.mailbox = Some(self.node.register_user(&user, self.outbox.id()));
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

    /// A connection without a token where the app's backend decides (`--proxy-connect`): it
    /// names the user (and the channels the server subscribes it to), refuses with an error
    /// (the client may still connect otherwise before the handshake timeout), or closes it.
    pub(super) async fn connect_via_backend(&mut self, name: Option<&str>) {
        let backend = self.gate.backend.clone();
        // The requested name travels as the call's own field.
        let caller = Caller {
            client: &self.client,
            transport: self.transport,
            user: None,
            name: None,
            forwarded: &self.forwarded,
        };
        let admitted = match backend.connect(&caller, name).await {
            Ok(Answer::Result(admitted)) => admitted,
            Ok(Answer::Error { code, message }) => {
                self.outbox
                    .push(Item::error(None, ErrorBody { code, message }));
                return self.greet(None, name);
            }
            Ok(Answer::Disconnect { code, reason }) => {
                let closing = Closing::because(CloseCode::App(code), reason);
                return self.outbox.close(closing);
            }
            Err(_) => {
                // Logged and counted by the backend client; the client hears the code.
                let code = CloseCode::BackendUnavailable;
                return self.outbox.close(Closing::because(code, code.reason()));
            }
        };
        let expires_in_ms = admitted.expire_at.map(millis_until_unix);
        let info = admitted.info.map(Arc::new);
        let Some(identity) = self.enter(None, admitted.user.into(), info, expires_in_ms) else {
            return;
        };
        for channel in admitted.channels {
            Box::pin(self.subscribe_for_server(&identity, channel)).await;
        }
    }

    /// When the backend is to be asked to extend the connection (`--proxy-refresh`): shortly
    /// before it expires, with time for the call to finish, and once per expiry.
    pub(super) fn refresh_due(&self) -> Option<tokio::time::Instant> {
        let backend = &self.gate.backend;
        let expires = self.clocks.expires.load(Ordering::Relaxed);
        if !backend.handles_refresh() || expires == NEVER || expires == self.refreshed_for {
            return None;
        }
        let lead = millis(backend.timeout()) + REFRESH_MARGIN_MS;
        Some(self.clocks.at(expires.saturating_sub(lead)))
    }

    /// Asks the backend to extend the connection: a new `expire_at` moves the expiry; an
    /// error leaves it to expire (4003); a failed call closes it with 4006 at once.
    pub(super) async fn refresh_via_backend(&mut self) {
        self.refreshed_for = self.clocks.expires.load(Ordering::Relaxed);
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let backend = self.gate.backend.clone();
        match backend.refresh(&self.caller(&identity)).await {
            Ok(Answer::Result(RefreshResult { expire_at })) => {
                let left = millis_until_unix(expire_at);
                let at = self.clocks.now().saturating_add(left);
                self.clocks.set(&self.clocks.expires, at);
                // An expiry too close to refresh before it comes is not offered again: asking
                // at once, over and over, would hammer the backend.
                if left <= millis(backend.timeout()) + REFRESH_MARGIN_MS {
                    self.refreshed_for = at;
                }
            }
            Ok(Answer::Error { code, message }) => {
                tracing::debug!(client = %self.client, code, message, "the backend did not extend a connection");
            }
            Ok(Answer::Disconnect { code, reason }) => {
                let closing = Closing::because(CloseCode::App(code), reason);
                self.outbox.close(closing);
            }
            Err(_) => {
                let code = CloseCode::BackendUnavailable;
                self.outbox.close(Closing::because(code, code.reason()));
            }
        }
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

/// How much sooner than `--proxy-timeout` before the expiry the backend is asked to refresh.
const REFRESH_MARGIN_MS: u64 = 1000;

/// Milliseconds from now until the Unix time `seconds` (0 if it has passed).
fn millis_until_unix(seconds: u64) -> u64 {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .map_or(u64::MAX, millis_until)
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
