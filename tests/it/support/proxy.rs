//! A TCP proxy in front of redis-server that can be told to eat pub/sub: while wedged, every
//! connection through it still carries commands and their replies (PING included) but loses
//! every pub/sub message Redis sends — the failure a connection check cannot see.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; stops accepting when dropped.
pub struct PubsubEater {
    pub port: u16,
    wedged: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl PubsubEater {
    /// Listens on a free loopback port and forwards to redis-server on `redis_port`.
    pub async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let wedged = Arc::new(AtomicBool::new(false));
        let flag = wedged.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, flag.clone()));
            }
        });
        Self {
            port,
            wedged,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on pub/sub messages are dropped, on every connection, old and new.
    pub fn wedge(&self) {
        self.wedged.store(true, Ordering::SeqCst);
    }

    pub fn unwedge(&self) {
        self.wedged.store(false, Ordering::SeqCst);
    }
}

impl Drop for PubsubEater {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, server: TcpStream, wedged: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async { tokio::io::copy(&mut client_read, &mut server_write).await };
    let downstream = async {
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            pending.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut at = 0;
            while let Some(end) = frame_end(&pending, at) {
                let frame = &pending[at..end];
                if !(wedged.load(Ordering::SeqCst) && is_pubsub_message(frame)) {
                    out.extend_from_slice(frame);
                }
                at = end;
            }
            pending.drain(..at);
            client_write.write_all(&out).await?;
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// A pushed `message`, `smessage` or `pmessage` (RESP2 array or RESP3 push).
fn is_pubsub_message(frame: &[u8]) -> bool {
    let Some(first_line) = frame.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let rest = &frame[first_line + 2..];
    matches!(frame.first(), Some(b'*' | b'>'))
        && [
            &b"$7\r\nmessage\r\n"[..],
            b"$8\r\nsmessage\r\n",
            b"$8\r\npmessage\r\n",
        ]
        .iter()
        .any(|kind| rest.starts_with(kind))
}

/// Where the RESP frame starting at `at` ends, if it is complete.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let line_end = at + 1 + buf[at + 1..].windows(2).position(|w| w == b"\r\n")?;
    let next = line_end + 2;
    let number = || -> Option<i64> {
        std::str::from_utf8(&buf[at + 1..line_end])
            .ok()?
            .parse()
            .ok()
    };
    match kind {
        b'$' | b'=' | b'!' => {
            let len = number()?;
            if len < 0 {
                return Some(next);
            }
            let end = next + usize::try_from(len).ok()? + 2;
            (end <= buf.len()).then_some(end)
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let count = number()?;
            let elements = if matches!(kind, b'%' | b'|') {
                2 * count
            } else {
                count
            };
            let mut end = next;
            for _ in 0..elements.max(0) {
                end = frame_end(buf, end)?;
            }
            Some(end)
        }
        _ => Some(next),
    }
}
