//! The session's one seam to the app's backend (`--proxy-*`). Every answer becomes a session
//! action in one place, [`Session::answered`]: the app's close closes the connection with the
//! app's code; the app's error and the backend's failure go back to the call, which tells the
//! client as its kind says — a request's error reply (502 with a documented text, never the
//! HTTP client's error chain), or close 4006 for a connection the backend could not decide.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use super::Refusal;
use super::Session;
use super::dispatch::Asker;
use super::heartbeat::{NEVER, millis};
use crate::auth::{Identity, millis_until};
use crate::backend::{Answer, BackendError, Caller, RefreshResult};
use crate::outbox::Closing;
use crate::protocol::{ChannelName, CloseCode, ErrorBody, ErrorCode, Item};

/// A backend answer, with the app's close already carried out.
pub(super) enum Settled<T> {
    /// Go ahead, with the call's result.
    Go(T),
    /// The app refused, with its own code (400–1999) and message.
    Refused(ErrorBody),
    /// The backend failed (logged and counted by the backend client).
    Failed(BackendError),
    /// The app closed the connection.
    Closed,
}

impl Session<'_> {
    /// The one mapping from the backend's answer to what the session does with it.
    pub(super) fn answered<T>(&self, answer: Result<Answer<T>, BackendError>) -> Settled<T> {
        match answer {
            Ok(Answer::Result(result)) => Settled::Go(result),
            Ok(Answer::Error { code, message }) => Settled::Refused(ErrorBody { code, message }),
            Ok(Answer::Disconnect { code, reason }) => {
                self.outbox.close(Closing::because(code, reason));
                Settled::Closed
            }
            Err(err) => Settled::Failed(err),
        }
    }

    /// Closes a connection the backend could not decide (`connect`, `refresh`): 4006.
    fn backend_failed(&self) {
        let code = CloseCode::BackendUnavailable;
        self.outbox.close(Closing::because(code, code.reason()));
    }

    /// Who the session is, for a call to the backend.
    pub(super) fn caller<'a>(&'a self, identity: &'a Identity) -> Caller<'a> {
        let (user, name) = if identity.authenticated {
            (Some(&*identity.user), None)
        } else {
            (None, Some(&*identity.user))
        };
        Caller {
            client: &self.client,
            transport: self.transport,
            user,
            name,
            forwarded: &self.forwarded,
        }
    }

    /// The result of the backend's answer to a client's request; or, having told the client
    /// (the app's error, the app's close, or 502 when the backend failed), `None`.
    pub(super) fn decided<T>(
        &self,
        asker: Asker,
        channel: Option<&ChannelName>,
        answer: Result<Answer<T>, BackendError>,
    ) -> Option<T> {
        match self.answered(answer) {
            Settled::Go(result) => return Some(result),
            Settled::Refused(error) => self.tell_error(asker, channel, error),
            Settled::Failed(err) => {
                let refusal = Refusal::new(ErrorCode::BadBackend, err.client_message());
                self.refuse_to(asker, channel, &refusal)
            }
            Settled::Closed => {}
        }
        None
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
        let answer = backend.connect(&caller, name).await;
        let admitted = match self.answered(answer) {
            Settled::Go(admitted) => admitted,
            Settled::Refused(error) => {
                self.outbox.push(Item::error(None, error));
                return self.greet(None, name);
            }
            Settled::Failed(_) => return self.backend_failed(),
            Settled::Closed => return,
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
        let answer = backend.refresh(&self.caller(&identity)).await;
        match self.answered(answer) {
            Settled::Go(RefreshResult { expire_at }) => {
                let left = millis_until_unix(expire_at);
                let at = self.clocks.now().saturating_add(left);
                self.clocks.set(&self.clocks.expires, at);
                // An expiry too close to refresh before it comes is not offered again: asking
                // at once, over and over, would hammer the backend.
                if left <= millis(backend.timeout()) + REFRESH_MARGIN_MS {
                    self.refreshed_for = at;
                }
            }
            Settled::Refused(ErrorBody { code, message }) => {
                tracing::debug!(client = %self.client, code, message, "the backend did not extend a connection");
            }
            Settled::Failed(_) => self.backend_failed(),
            Settled::Closed => {}
        }
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
