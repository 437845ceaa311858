//! The writer half of a session: the only code that writes to the transport. It drains the
//! outbox in batches (one flush per batch), sends heartbeats, enforces the session's deadlines
//! (token expiry, idle, authentication) and performs the close.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::heartbeat::{Beat, Clocks, Heartbeat};
use super::{Outgoing, SessionConfig};
use crate::metrics::metrics;
use crate::outbox::{Closing, Outbox, SMALL_BATCH};
use crate::protocol::{CloseCode, Item};

/// Items whose room the writer's batch keeps between batches, at most (32 bytes each).
const MAX_KEPT_BATCH: usize = 4096;

/// Bytes fed to the transport before it is flushed within a batch. Transports copy small
/// frames into buffers of the connection's own (the WebSocket's gathered writes, the streams'
/// chunks); flushing by this much bounds what a client that stopped reading holds privately,
/// while the rest of its batch stays shared with every other subscriber.
const FLUSH_AT: usize = 256 * 1024;

/// How one batch's write ended.
enum Written {
    Done {
        items: usize,
    },
    Failed,
    TimedOut,
    /// Something decided to close while the write was blocked.
    Interrupted,
}

/// Drains the outbox to the transport, sends heartbeats, and closes; returns how it closed.
pub(super) async fn write_loop<O: Outgoing>(
    out: &mut O,
    outbox: &Outbox,
    clocks: &Clocks,
    config: &SessionConfig,
    shutdown: &CancellationToken,
) -> Closing {
    let mut batch = Vec::new();
    let mut heartbeat = Heartbeat::new(Instant::now(), config.ping_interval, config.pong_timeout);
    loop {
        let closing = outbox.drain(&mut batch);
        if matches!(closing, Some(Closing::ByPeer | Closing::Gone)) {
            // After the peer's close frame nothing but the transport's reply may be sent.
            batch.clear();
        }
        let with_ping = heartbeat.ping_due() && closing.is_none();
        if with_ping {
            clocks.alive.store(false, Ordering::Relaxed);
            batch.push(Item::Ping);
        }
        if !batch.is_empty() {
            let small = batch.len() <= SMALL_BATCH;
            let mut bytes = 0;
            // Boxed: the write's state is only alive while writing, and the loop's future is
            // held by every idle connection.
            let written = Box::pin(write_batch(
                out,
                &mut batch,
                &mut bytes,
                outbox,
                closing.is_some(),
                config,
                shutdown,
            ));
            match written.await {
                Written::Done { items } => {
                    // Once per batch: one shared counter per item would be contended under
                    // fan-out.
                    let metrics = metrics();
                    metrics.messages_out.inc_by(items as u64);
                    metrics.bytes_out.inc_by(bytes as u64);
                }
                Written::Failed => {
                    outbox.close(Closing::Gone);
                    return Closing::Gone;
                }
                Written::TimedOut if closing.is_some() => return Closing::Gone,
                Written::TimedOut => {
                    outbox.close(Closing::because(CloseCode::SlowConsumer, "write timed out"));
                    continue;
                }
                Written::Interrupted => continue,
            }
            if with_ping {
                heartbeat.ping_sent(Instant::now());
                if O::ONE_WAY {
                    clocks.alive.store(true, Ordering::Relaxed);
                }
            }
            // A batch's capacity is kept under load (allocating it again for every batch
            // costs more than it holds), within a bound, and given back after a small one.
            if small || batch.capacity() > MAX_KEPT_BATCH {
                batch = Vec::new();
            }
        }
        if let Some(closing) = closing {
            match &closing {
                Closing::Send { code, reason } => {
                    out.close(*code, reason, config.close_timeout).await
                }
                Closing::ByPeer => out.finish(config.close_timeout).await,
                Closing::Gone => {}
            }
            return closing;
        }
        wait(outbox, &mut heartbeat, clocks, config, shutdown).await;
    }
}

/// Writes one batch, bounded: a client that stopped reading blocks the write, and overflow,
/// shutdown or another close reason may interrupt it.
async fn write_batch<O: Outgoing>(
    out: &mut O,
    batch: &mut Vec<Item>,
    bytes: &mut usize,
    outbox: &Outbox,
    closing: bool,
    config: &SessionConfig,
    shutdown: &CancellationToken,
) -> Written {
    let limit = if closing {
        config.close_timeout
    } else {
        config.write_timeout
    };
    let items = batch.len();
    let write = async {
        let mut unflushed = 0;
        for item in batch.drain(..) {
            let fed = out.feed(item).await?;
            *bytes += fed;
            unflushed += fed;
            if unflushed >= FLUSH_AT {
                out.flush().await?;
                unflushed = 0;
            }
        }
        out.flush().await
    };
    let written = tokio::select! {
        result = tokio::time::timeout(limit, write) => match result {
            Ok(Ok(())) => Written::Done { items },
            Ok(Err(err)) => {
                tracing::debug!(%err, "write failed");
                Written::Failed
            }
            Err(_) => Written::TimedOut,
        },
        () = outbox.closed(), if !closing => Written::Interrupted,
        () = drain_turn(shutdown, config, outbox), if !closing => {
            outbox.close(Closing::with(CloseCode::GoingAway));
            Written::Interrupted
        }
    };
    batch.clear();
    written
}

/// Sleeps until there is something to write or a deadline passes, and acts on the deadline.
async fn wait(
    outbox: &Outbox,
    heartbeat: &mut Heartbeat,
    clocks: &Clocks,
    config: &SessionConfig,
    shutdown: &CancellationToken,
) {
    // The reader moves the other deadlines; each of its replies wakes this loop, which then
    // sleeps until the earliest one.
    let next = clocks.next_deadline(config);
    let wake = heartbeat.deadline().map_or(next, |beat| beat.min(next));
    tokio::select! {
        // Written at once: the batch is whatever queued while the last write was in flight
        // or this task waited for its turn, so it grows with the load by itself. (Yielding
        // once more first, to let a fan-out finish its round, batched no better with the
        // socket's own writer and cost ~30 ms of p99 at 1.2M deliveries/s.)
        () = outbox.ready() => {}
        () = tokio::time::sleep_until(wake), if heartbeat.deadline().is_some() => {
            let now = Instant::now();
            if let Some(closing) = clocks.expired(now, config) {
                outbox.close(closing);
                return;
            }
            match heartbeat.expire(now, clocks.alive.load(Ordering::Relaxed)) {
                Beat::Rest | Beat::Ping => {}
                Beat::Dead => outbox.close(Closing::with(CloseCode::NoPong)),
            }
        }
        () = drain_turn(shutdown, config, outbox) => {
            outbox.close(Closing::with(CloseCode::GoingAway))
        }
    }
}

/// Resolves when it is this connection's turn to close in a drain. The drain begins when
/// `shutdown` is cancelled, and connections close spread evenly over the drain window, each
/// at a fixed fraction of it drawn from its id: no state per connection, and a connection
/// that keeps writing meanwhile keeps its turn.
async fn drain_turn(shutdown: &CancellationToken, config: &SessionConfig, outbox: &Outbox) {
    shutdown.cancelled().await;
    let started = config
        .drain_started
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now);
    // Fibonacci hashing: consecutive ids land far apart in [0, 1).
    let spread = outbox.id().get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    let fraction = spread as f64 / (1u64 << 53) as f64;
    tokio::time::sleep_until(started + config.drain_window.mul_f64(fraction)).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::WriteError;

    /// A transport that counts what it was fed between flushes, as if each item were `size`
    /// bytes.
    struct Counting {
        size: usize,
        unflushed: usize,
        most_unflushed: usize,
        flushes: usize,
    }

    impl Outgoing for Counting {
        async fn feed(&mut self, _: Item) -> Result<usize, WriteError> {
            self.unflushed += self.size;
            self.most_unflushed = self.most_unflushed.max(self.unflushed);
            Ok(self.size)
        }

        async fn flush(&mut self) -> Result<(), WriteError> {
            self.unflushed = 0;
            self.flushes += 1;
            Ok(())
        }

        async fn close(&mut self, _: CloseCode, _: &str, _: Duration) {}

        async fn finish(&mut self, _: Duration) {}
    }

    #[tokio::test]
    async fn a_large_batch_is_flushed_in_bounded_pieces_and_a_small_one_once() {
        let config = crate::session::tests::config();
        let outbox = Outbox::new(1 << 20, "client".into());
        let shutdown = CancellationToken::new();
        for (items, size, flushes) in [(3, 1_000, 1), (100, 10_000, 4), (1, 1 << 20, 2)] {
            let mut out = Counting {
                size,
                unflushed: 0,
                most_unflushed: 0,
                flushes: 0,
            };
            let mut batch: Vec<Item> = (0..items).map(|_| Item::Ping).collect();
            let mut bytes = 0;
            let written = write_batch(
                &mut out, &mut batch, &mut bytes, &outbox, false, &config, &shutdown,
            )
            .await;
            assert!(matches!(written, Written::Done { items: n } if n == items));
            assert_eq!(bytes, items * size);
            assert_eq!(out.flushes, flushes, "{items} items of {size} bytes");
            assert!(
                out.most_unflushed < FLUSH_AT + size,
                "{}",
                out.most_unflushed
            );
        }
    }
}
