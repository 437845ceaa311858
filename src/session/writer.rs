//! The writer half of a session: the only code that writes to the socket. It drains the
//! outbox in batches (one flush per batch), sends heartbeats, enforces the session's
//! deadlines (token expiry, idle, authentication) and performs the close.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Clocks, PING, SessionConfig};
use crate::outbox::{Closing, Outbox};
use crate::protocol::CloseCode;
use crate::transport::Writer;

/// Drains the outbox to the socket, sends heartbeats, and closes; returns how it closed.
pub(super) async fn write_loop(
    writer: &mut Writer,
    outbox: &Outbox,
    alive: &AtomicBool,
    clocks: &Clocks,
    config: &SessionConfig,
    shutdown: &CancellationToken,
) -> Closing {
    enum Written {
        Done,
        Failed,
        TimedOut,
        /// Something decided to close while the write was blocked.
        Interrupted,
    }
    let mut batch = Vec::new();
    let mut ping_due = false;
    let mut awaiting_pong = false;
    let mut last_ping = Instant::now();
    let mut deadline = last_ping + config.ping_interval;
    loop {
        let closing = outbox.drain(&mut batch);
        if matches!(closing, Some(Closing::ByPeer | Closing::Gone)) {
            // After the peer's close frame nothing but the library's reply may be sent.
            batch.clear();
        }
        let with_ping = ping_due && closing.is_none();
        if with_ping {
            ping_due = false;
            alive.store(false, Ordering::Relaxed);
            batch.push(PING);
        }
        if !batch.is_empty() {
            // A client that stopped reading blocks the write: bound it, and let overflow,
            // shutdown or another close reason interrupt it.
            let limit = if closing.is_some() {
                config.close_timeout
            } else {
                config.write_timeout
            };
            let write = async {
                for frame in batch.drain(..) {
                    writer.feed(frame).await?;
                }
                writer.flush().await
            };
            let written = tokio::select! {
                result = tokio::time::timeout(limit, write) => match result {
                    Ok(Ok(())) => Written::Done,
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "write failed");
                        Written::Failed
                    }
                    Err(_) => Written::TimedOut,
                },
                () = outbox.closed(), if closing.is_none() => Written::Interrupted,
                () = shutdown.cancelled(), if closing.is_none() => {
                    outbox.close(Closing::Send {
                        code: CloseCode::GOING_AWAY,
                        reason: "server shutting down".into(),
                    });
                    Written::Interrupted
                }
            };
            batch.clear();
            match written {
                Written::Done => {}
                Written::Failed => {
                    outbox.close(Closing::Gone);
                    return Closing::Gone;
                }
                Written::TimedOut if closing.is_some() => return Closing::Gone,
                Written::TimedOut => {
                    outbox.close(Closing::Send {
                        code: CloseCode::SLOW_CONSUMER,
                        reason: "write timed out".into(),
                    });
                    continue;
                }
                Written::Interrupted => continue,
            }
            if with_ping {
                // The pong clock starts when the ping has left, not when it was queued.
                awaiting_pong = true;
                last_ping = Instant::now();
                deadline = last_ping + config.pong_timeout;
            }
            if batch.capacity() > 256 {
                batch = Vec::new();
            }
        }
        if let Some(closing) = closing {
            match &closing {
                Closing::Send { code, reason } => {
                    writer.close(*code, reason, config.close_timeout).await
                }
                Closing::ByPeer => writer.finish(config.close_timeout).await,
                Closing::Gone => {}
            }
            return closing;
        }
        // The reader moves the other deadlines; each of its replies wakes this loop, which
        // then sleeps until the earliest one.
        let wake = deadline.min(clocks.next_deadline(config));
        tokio::select! {
            () = outbox.ready() => {}
            () = tokio::time::sleep_until(wake), if !ping_due => {
                let now = Instant::now();
                if let Some(closing) = clocks.expired(now, config) {
                    outbox.close(closing);
                } else if now < deadline {
                    // Woken for a deadline the reader has since moved.
                } else if !awaiting_pong {
                    ping_due = true;
                } else if alive.load(Ordering::Relaxed) {
                    awaiting_pong = false;
                    deadline = (last_ping + config.ping_interval).max(Instant::now());
                } else {
                    outbox.close(Closing::Send { code: CloseCode::NO_PONG, reason: "no pong".into() });
                }
            }
            () = shutdown.cancelled() => outbox.close(Closing::Send {
                code: CloseCode::GOING_AWAY,
                reason: "server shutting down".into(),
            }),
        }
    }
}
