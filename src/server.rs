//! Wiring and lifecycle: builds the broker, hub, node and router, serves them, and shuts down
//! in order. The only module that names concrete brokers.
//!
//! Shutdown: stop accepting, tell every session to close with 1001, wait for their close
//! handshakes (bounded by `--shutdown-timeout`), then return so the process exits 0.

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::hub::Hub;
use crate::node::Node;

/// Why the server stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the broker")]
    Broker(#[source] BrokerError),
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Serves `listener` until `shutdown` resolves, then closes every connection and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let hub = Arc::new(Hub::new());
    let broker: Arc<dyn Broker> = match &config.redis {
        None => Arc::new(MemoryBroker::new(hub.clone(), config.retention)),
        Some(options) => Arc::new(
            RedisBroker::connect(options.clone(), hub.clone(), config.retention)
                .await
                .map_err(ServerError::Broker)?,
        ),
    };
    let node = Node::new(hub, broker.clone(), config.retention.history_size);

    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let state = AppState {
        node,
        session: Arc::new(config.session.clone()),
        max_message_size: config.max_message_size,
        shutdown: stopping.clone(),
        connections: connections.clone(),
    };
    let app = api::router(state, config.enable_echo);

    // Small frames must leave at once: without TCP_NODELAY they wait for Nagle's algorithm
    // and the peer's delayed ACK (~40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set");
        }
    });
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections");
            stopping.cancel();
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(ServerError::Serve)?;

    connections.close();
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "connections still open at the shutdown deadline; dropping them"
        );
    }
    broker.close().await;
    tracing::info!("stopped");
    Ok(())
}
