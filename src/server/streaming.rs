//! `GET /sse` and `GET /stream` opened as a connection's first request, answered on the socket
//! itself rather than by hyper: the request head is parsed here, routed through the same
//! router as every other request, and the response written as HTTP/1.1 (chunked, or ended by
//! closing the connection for an HTTP/1.0 client), after which the connection closes.
//!
//! Why not hyper: an HTTP/1 connection there keeps an 8 KiB read buffer and an 8 KiB header
//! buffer for as long as it lives, which for a stream that sits idle for hours was four
//! fifths of what it cost. Here an idle stream holds the socket and its task, nothing else.
//! A stream opened on a connection that served other requests first still goes through
//! hyper: the same answer, at hyper's price.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request, Response, StatusCode, Version, header};
use bytes::Buf;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The paths served here, as a request line starts with them.
const STREAM_REQUESTS: [&[u8]; 2] = [b"GET /sse", b"GET /stream"];

/// The most a request head may take (hyper allows more, but a stream's head is a path, a
/// token and a few browser headers).
const MAX_HEAD: usize = 64 * 1024;

/// The most headers a request may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// What a stream's client may send once its request is in (a pipelined request has nothing
/// to wait for: the stream does not end). Past it, the connection is closed.
const MAX_IGNORED: usize = 16 * 1024;

/// Whether the connection opens with a stream request: its first bytes, peeked (left for
/// hyper otherwise). A request line cut short of the path goes to hyper, which serves it too.
pub(super) async fn opens_a_stream(tcp: &TcpStream) -> bool {
    let mut start = [0; 12];
    match tcp.peek(&mut start).await {
        Ok(read) => is_stream_request(&start[..read]),
        Err(_) => false,
    }
}

fn is_stream_request(start: &[u8]) -> bool {
    STREAM_REQUESTS.iter().any(|path| {
        start
            .strip_prefix(*path)
            .and_then(<[u8]>::first)
            .is_some_and(|next| matches!(next, b' ' | b'?'))
    })
}

/// Why a request head was not read.
#[derive(Debug)]
enum HeadError {
    Io(io::Error),
    TooLarge,
    Malformed(String),
}

/// Serves the connection's one request, then closes it.
pub(super) async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    closed: CancellationToken,
) {
    let head = tokio::select! {
        () = closed.cancelled() => return,
        head = tokio::time::timeout(header_timeout, read_head(&mut tcp)) => head,
    };
    let (response, version) = match head {
        Ok(Ok(mut request)) => {
            let version = request.version();
            request.extensions_mut().insert(ConnectInfo(peer));
            // Boxed, and gone once answered: the routing is not kept while the stream lasts.
            let Ok(response) = Box::pin(app.oneshot(request)).await;
            (response, version)
        }
        Ok(Err(HeadError::TooLarge)) => (
            refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Version::HTTP_11,
        ),
        Ok(Err(HeadError::Malformed(why))) => {
            tracing::debug!(%peer, why, "malformed request head");
            (refusal(StatusCode::BAD_REQUEST), Version::HTTP_11)
        }
        Ok(Err(HeadError::Io(err))) => return tracing::debug!(%peer, %err, "request not read"),
        Err(_) => return tracing::debug!(%peer, "request head not sent in time"),
    };
    if let Err(err) = respond(&mut tcp, response, version, &closed).await {
        tracing::debug!(%peer, %err, "stream response ended with an error");
    }
}

/// Hyper's answer to a head it cannot take: the status alone.
fn refusal(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

async fn read_head(tcp: &mut TcpStream) -> Result<Request<Body>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(1024);
        if tcp.read_buf(&mut buf).await.map_err(HeadError::Io)? == 0 {
            let gone = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its head");
            return Err(HeadError::Io(gone));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return request(&parsed),
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(err) => return Err(HeadError::Malformed(err.to_string())),
        }
    }
}

/// The parsed head as the router takes it. Any body is ignored: a stream request has none.
fn request(parsed: &httparse::Request<'_, '_>) -> Result<Request<Body>, HeadError> {
    let malformed = |err: axum::http::Error| HeadError::Malformed(err.to_string());
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .version(version);
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    builder.body(Body::empty()).map_err(malformed)
}

/// Headers this writer sets itself: how the body is delimited, and that the connection ends.
const FRAMING: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
];

/// Writes the response: its head, then its body as it comes, until it ends, the client goes
/// away or the server closes.
async fn respond(
    tcp: &mut TcpStream,
    response: Response<Body>,
    version: Version,
    closed: &CancellationToken,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    // An HTTP/1.0 client reads a body of unknown length up to the connection's end.
    let chunked = length.is_none() && version == Version::HTTP_11;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in parts.headers.iter().filter(|(n, _)| !FRAMING.contains(n)) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None if chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    head.extend_from_slice(format!("date: {date}\r\nconnection: close\r\n\r\n").as_bytes());
    drop(parts);
    write(tcp, &mut head.as_slice(), closed).await?;
    drop(head);
    let mut body = body.into_data_stream();
    let mut ignored = 0;
    loop {
        let data = tokio::select! {
            data = body.next() => data,
            () = peer_left(tcp, &mut ignored) => return Ok(()),
            () = closed.cancelled() => return Ok(()),
        };
        let Some(data) = data else { break };
        let data = data.map_err(io::Error::other)?;
        if data.is_empty() {
            continue;
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut chunk = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
            write(tcp, &mut chunk, closed).await?;
        } else {
            write(tcp, &mut data.clone(), closed).await?;
        }
    }
    if chunked {
        write(tcp, &mut &b"0\r\n\r\n"[..], closed).await?;
    }
    tcp.shutdown().await
}

/// Writes all of `buf` (in one `writev` when the socket takes it), unless the server closes.
async fn write(
    tcp: &mut TcpStream,
    buf: &mut impl Buf,
    closed: &CancellationToken,
) -> io::Result<()> {
    tokio::select! {
        written = tcp.write_all_buf(buf) => written,
        () = closed.cancelled() => Err(io::Error::other("the server closed")),
    }
}

/// Resolves when the client closes its end (or errs, or sends more than it may): reads and
/// drops what it sends meanwhile.
async fn peer_left(tcp: &TcpStream, ignored: &mut usize) {
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        // Not kept across the wait: an idle stream's task does not carry it.
        let mut sink = [0; 256];
        match tcp.try_read(&mut sink) {
            Ok(0) => return,
            Ok(read) => {
                *ignored += read;
                if *ignored > MAX_IGNORED {
                    return tracing::debug!("a stream's client sent too much; closing");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_requests_are_told_by_their_first_bytes() {
        assert!(is_stream_request(b"GET /sse HTTP"));
        assert!(is_stream_request(b"GET /sse?chan"));
        assert!(is_stream_request(b"GET /stream?"));
        assert!(!is_stream_request(b"GET /ssex HTT"));
        assert!(!is_stream_request(b"GET /streams"));
        assert!(!is_stream_request(b"POST /sse HTT"));
        assert!(!is_stream_request(b"GET /ss"));
        assert!(!is_stream_request(b"GET /ws HTTP/"));
        assert!(!is_stream_request(b""));
    }
}
