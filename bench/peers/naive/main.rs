//! The "just forward bytes" baseline: a tokio-tungstenite server whose every connection puts
//! each text frame it reads on one tokio broadcast channel and writes every frame of that
//! channel to its socket. No protocol, no channels, no offsets, no acknowledgements.
//!
//! Tuned as the issue describes the fair baseline: 4 KiB read buffer, TCP_NODELAY, one write
//! per frame. A receiver that lags behind the broadcast channel's capacity loses messages
//! (they are counted as lost by the benchmark).
//!
//! Usage: `naive-broadcast [ADDR]` (default 127.0.0.1:9000); prints `listening on ADDR`.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<Message>(1 << 16);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            let (mut sink, mut source) = ws.split();
            let mut rx = tx.subscribe();
            let writer = tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(message) => {
                            if sink.send(message).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            while let Some(Ok(message)) = source.next().await {
                if message.is_text() {
                    let _ = tx.send(message);
                }
            }
            writer.abort();
        });
    }
}
