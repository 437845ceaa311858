//! The accept loop and what each accepted connection becomes: HTTP/1 served by hyper (and
//! WebSockets upgraded from it), or — for the long-lived streams `GET /sse` and `GET /stream`
//! opened on a connection of their own — a response written on the socket itself
//! ([`streaming`]), so that an idle stream does not keep hyper's two 8 KiB
//! connection buffers.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::streaming;

/// Accepts connections until `closed` is cancelled; returns the tracker of the HTTP
/// connections still open, which wind down once `closed` is cancelled.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: TcpTimeouts,
    closed: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = closed.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (app, closed) = (app.clone(), closed.clone());
                tracker.spawn(connection(
                    tcp,
                    peer,
                    app,
                    timeouts,
                    closed,
                    tracker.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors, most likely: give connections time to close rather
                // than spin on a listener that stays readable.
                tracing::warn!(%err, "accept failed; pausing for 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracker
}

/// What an accepted connection is, told by its first bytes; it is served in a task of its
/// own from `tracker`.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: TcpTimeouts,
    closed: CancellationToken,
    tracker: TaskTracker,
) {
    tune(&tcp, timeouts);
    // Nothing is read before the first bytes arrive, for hyper either: the header deadline
    // counts from them (so a silent connection has it twice, both bounded).
    let stream = tokio::select! {
        () = closed.cancelled() => return,
        stream = tokio::time::timeout(timeouts.header, streaming::opens_a_stream(&tcp)) => stream,
    };
    // Either way a task of its own, sized for what it serves: this one waits for the first
    // bytes only. (Holding hyper's connection inline here made every stream's task as large;
    // boxing it, or awaiting it here, left every WebSocket ~0.25 KiB more of RSS in the
    // allocator's holes.)
    match stream {
        Ok(true) => {
            tracker.spawn(streaming::serve(tcp, peer, app, timeouts.header, closed));
        }
        Ok(false) => {
            let connection = serve_connection(tcp, peer, app, timeouts);
            tracker.spawn(connection.with_graceful_shutdown(closed));
        }
        Err(_) => tracing::debug!(%peer, "nothing sent in time; connection closed"),
    }
}

fn tune(tcp: &TcpStream, timeouts: TcpTimeouts) {
    // Small frames must leave at once: without TCP_NODELAY they wait for Nagle's algorithm
    // and the peer's delayed ACK (~40 ms on Linux).
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%err, "TCP_NODELAY not set");
    }
    #[cfg(target_os = "linux")]
    if let Err(err) =
        socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeouts.unacknowledged))
    {
        tracing::debug!(%err, "TCP_USER_TIMEOUT not set");
    }
}

/// One HTTP connection, until it ends or turns into a WebSocket.
struct Connection<F> {
    serving: F,
    peer: SocketAddr,
}

/// The deadlines of one accepted connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct TcpTimeouts {
    /// To send a request's headers.
    pub(super) header: Duration,
    /// For data sent to be acknowledged by the peer's TCP before the connection is dropped:
    /// a peer that vanished without closing (a lost network, a dead host) is noticed by the
    /// next ping left unacknowledged. What a pong does for WebSockets, this does for HTTP
    /// streams, whose `EventSource` cannot answer.
    pub(super) unacknowledged: Duration,
}

fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: TcpTimeouts,
) -> Connection<impl Future<Output = Result<(), hyper::Error>> + GracefulConnection + Send> {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    Connection { serving, peer }
}

/// What a connection must do when the server stops: finish the request in flight, then close.
trait GracefulConnection {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<F> Connection<F>
where
    F: Future<Output = Result<(), hyper::Error>> + GracefulConnection + Send,
{
    async fn with_graceful_shutdown(self, stopping: CancellationToken) {
        let Connection { serving, peer } = self;
        let mut serving = std::pin::pin!(serving);
        let result = tokio::select! {
            result = serving.as_mut() => result,
            () = stopping.cancelled() => {
                serving.as_mut().graceful_shutdown();
                serving.await
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, %peer, "HTTP connection ended with an error");
        }
    }
}
