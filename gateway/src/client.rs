//! A lean HTTP/1.1 client: pooled keep-alive connections, one exchange at a time per
//! connection, done entirely in the caller's task.
//!
//! The notifier sends every callback through it, and the load generator uses it to play
//! its DFSPs. It replaced hyper's pooled client, which runs each connection as a task of
//! its own and passes every request and response through channels to it: measured on
//! this project's 2-core machine, a loopback exchange cost about 19 µs of CPU (client and
//! server together) through hyper's client and about 11 µs written straight onto the
//! socket, and the hub spends its CPU on exactly these exchanges (BENCHMARKS.md).
//!
//! What it does, and what it leaves out on purpose:
//! * `http://`, and `https://` for a client made [`Client::with_tls`] (rustls; the
//!   configuration says which CAs to trust and whether to present a certificate; see
//!   `stream.rs` for how TLS connections are kept). Host names are resolved when a new
//!   connection is opened; IP literals never touch the resolver. Connections are pooled
//!   per scheme and authority.
//! * The request is written with one `write` (head and body in one buffer) and always
//!   carries `Content-Length`; no `Expect: 100-continue`, no pipelining.
//! * The response is framed by `Content-Length`, `Transfer-Encoding: chunked`, or the end
//!   of the connection (then the connection is not reused); `1xx` interim responses are
//!   skipped; `HEAD`, `204` and `304` have no body. Head and body are bounded
//!   ([`ClientLimits`]); only the status and the body are returned.
//! * A connection goes back to the pool only after a complete response on HTTP/1.1
//!   without `Connection: close`. An idle connection is dropped after
//!   [`ClientLimits::idle_timeout`] (kept below the usual 5 s server keep-alive, so the
//!   client, not the server, closes it) and checked for a close by its peer before reuse.
//! * A failed exchange is never retried here: the caller decides (the notifier's own
//!   retries, the load generator's accounting), knowing from [`ClientError::was_sent`]
//!   whether the server may have seen the request.

use bytes::Bytes;
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

mod stream;
#[cfg(test)]
mod tls_tests;
use stream::Stream;

/// Response headers parsed at most (more is a bad response).
const RESPONSE_HEADERS_MAX: usize = 64;
/// Longest chunk-size line of a chunked body, extensions included.
const CHUNK_LINE_BYTES_MAX: usize = 1_024;
/// Read buffer a new connection starts with; it grows up to the head and body bounds.
const READ_BUFFER_BYTES: usize = 8 * 1_024;

/// Bounds of one client. Every field is a limit; none is optional.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Whole exchange (connect, write, read) gives up after this long.
    pub exchange_timeout: Duration,
    /// Opening a connection gives up after this long (inside `exchange_timeout`).
    pub connect_timeout: Duration,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle connections kept per host (`host:port`); more are closed.
    pub idle_per_host_max: usize,
    /// Idle connections kept over all hosts; more are closed.
    pub idle_total_max: usize,
    /// Largest response head (status line and headers).
    pub response_head_bytes_max: usize,
    /// Largest response body.
    pub response_body_bytes_max: usize,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request was not sent: the URL, a header or the method cannot be written.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No connection could be opened: the server never saw the request.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    /// The exchange did not finish in time: the server may have acted on the request.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The connection failed after the request was (maybe partly) written.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server answered something that is not a bounded HTTP/1.x response.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

impl ClientError {
    /// Whether the server may have seen the request (so acting on it again may repeat it).
    pub fn was_sent(&self) -> bool {
        !matches!(self, ClientError::Invalid(_) | ClientError::Connect { .. })
    }
}

/// A response: its status and its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// One request. Header names and values must not contain CR or LF; `Host` and
/// `Content-Length` are written by the client.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// A cheap handle (an `Arc`) on one pool of connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ClientLimits,
    idle: Mutex<Pool>,
    /// For `https://` URLs; without it they are refused as invalid.
    tls: Option<tokio_rustls::TlsConnector>,
}

#[derive(Default)]
struct Pool {
    by_host: HashMap<String, Vec<Idle>>,
    total: usize,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// An open connection and its read buffer (kept with it, so reuse does not allocate).
/// The response reader is generic over the stream so that it can be fed from memory.
struct Conn<S = Stream> {
    stream: S,
    buf: Vec<u8>,
}

/// The parts of an `http://` or `https://` URL the client needs.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    /// The URL up to the end of the authority (`https://host:port`): the pool key, so a
    /// plain and a TLS connection to one authority are never mixed up.
    origin: &'a str,
    tls: bool,
    /// `host[:port]` as written, for the `Host` header and as the pool key.
    authority: &'a str,
    host: &'a str,
    port: u16,
    /// Path and query, at least `/`.
    path: &'a str,
}

impl Client {
    /// A client for `http://` URLs only.
    pub fn new(limits: ClientLimits) -> Client {
        Client::build(limits, None)
    }

    /// A client for `http://` and `https://` URLs, `https://` with this configuration.
    pub fn with_tls(limits: ClientLimits, tls: Arc<rustls::ClientConfig>) -> Client {
        Client::build(limits, Some(tokio_rustls::TlsConnector::from(tls)))
    }

    fn build(limits: ClientLimits, tls: Option<tokio_rustls::TlsConnector>) -> Client {
        assert!(limits.response_head_bytes_max >= 64, "head bound too small");
        assert!(limits.connect_timeout <= limits.exchange_timeout);
        Client {
            inner: Arc::new(Inner {
                limits,
                idle: Mutex::new(Pool::default()),
                tls,
            }),
        }
    }

    /// Idle connections in the pool now (all hosts).
    pub fn idle_connections(&self) -> usize {
        self.pool().total
    }

    /// Sends one request and reads its whole response, within the exchange timeout.
    pub async fn send(&self, request: Request<'_>) -> Result<Response, ClientError> {
        let target = parse_url(request.url)?;
        let tls = match (target.tls, &self.inner.tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls),
            (true, None) => {
                return Err(ClientError::Invalid(format!(
                    "https:// needs a client made with TLS: {:?}",
                    request.url
                )))
            }
        };
        let mut head = Vec::with_capacity(256 + request.body.len());
        write_head(&mut head, &request, &target)?;
        head.extend_from_slice(request.body);
        let limits = &self.inner.limits;
        let deadline = tokio::time::Instant::now() + limits.exchange_timeout;

        let conn = match self.checkout(target.origin) {
            Some(conn) => conn,
            None => {
                let connect_by = deadline.min(tokio::time::Instant::now() + limits.connect_timeout);
                match tokio::time::timeout_at(connect_by, connect(&target, tls)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(source)) => {
                        return Err(ClientError::Connect {
                            authority: target.authority.to_string(),
                            source,
                        })
                    }
                    Err(_) => {
                        return Err(ClientError::Connect {
                            authority: target.authority.to_string(),
                            source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                        })
                    }
                }
            }
        };
        let head_only = request.method.eq_ignore_ascii_case("HEAD");
        let exchange = exchange(conn, &head, head_only, limits);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok((response, reusable))) => {
                if let Some(conn) = reusable {
                    self.checkin(target.origin, conn);
                }
                Ok(response)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout(limits.exchange_timeout)),
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool holds no invariant a panic elsewhere could break half-way.
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `origin` that is still open.
    fn checkout(&self, origin: &str) -> Option<Conn> {
        let idle_timeout = self.inner.limits.idle_timeout;
        loop {
            let idle = {
                let mut pool = self.pool();
                let list = pool.by_host.get_mut(origin)?;
                let idle = list.pop()?;
                pool.total -= 1;
                idle
            };
            if idle.since.elapsed() < idle_timeout && idle.conn.stream.still_open() {
                return Some(idle.conn);
            }
            // Stale or closed by the peer: drop it (closing the socket) and look again.
        }
    }

    fn checkin(&self, origin: &str, conn: Conn) {
        let limits = &self.inner.limits;
        let now = Instant::now();
        let mut pool = self.pool();
        if pool.total >= limits.idle_total_max {
            return;
        }
        let list = match pool.by_host.get_mut(origin) {
            Some(list) => list,
            None => pool.by_host.entry(origin.to_string()).or_default(),
        };
        // Connections idle too long are at the front (the list is a stack): take them out
        // now and close them after the lock is released.
        let stale_count = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= limits.idle_timeout)
            .count();
        let stale: Vec<Idle> = list.drain(..stale_count).collect();
        let kept = if list.len() < limits.idle_per_host_max {
            list.push(Idle { conn, since: now });
            1
        } else {
            0
        };
        pool.total = pool.total + kept - stale.len();
        drop(pool);
        drop(stale);
    }
}

/// Opens a connection (a TLS one when `tls` is given: the handshake is part of the
/// connect timeout).
async fn connect(
    target: &Target<'_>,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> io::Result<Conn> {
    Ok(Conn {
        stream: Stream::open(target.host, target.port, tls).await?,
        buf: Vec::with_capacity(READ_BUFFER_BYTES),
    })
}

/// Writes the request and reads the response. Returns the connection when it may be
/// reused.
async fn exchange(
    mut conn: Conn,
    request: &[u8],
    head_only: bool,
    limits: &ClientLimits,
) -> Result<(Response, Option<Conn>), ClientError> {
    conn.stream.write_all(request).await?;
    // A TLS session may hold back the last record until flushed; a TCP flush is a no-op.
    conn.stream.flush().await?;
    conn.buf.clear();
    let (response, reusable) = read_response(&mut conn, head_only, limits).await?;
    Ok((response, reusable.then_some(conn)))
}

/// Reads one whole response from `stream`, as the client reads it off a connection
/// (interim responses skipped, framing, bounds): the response, and whether a connection
/// could be reused after it. For the fuzz target of the response parser.
#[doc(hidden)]
pub async fn read_response_from<S: AsyncRead + Unpin>(
    stream: S,
    head_only: bool,
    limits: &ClientLimits,
) -> Result<(Response, bool), ClientError> {
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(READ_BUFFER_BYTES),
    };
    read_response(&mut conn, head_only, limits).await
}

/// Reads the response to a request just written; `true` when the connection may be
/// reused after it.
async fn read_response<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    head_only: bool,
    limits: &ClientLimits,
) -> Result<(Response, bool), ClientError> {
    loop {
        let head = read_head(conn, head_only, limits).await?;
        conn.buf.drain(..head.len);
        let status = head.status;
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ClientError::BadResponse("unexpected protocol switch"));
            }
            continue;
        }
        let body = match head.framing {
            Framing::Length(n) => read_exact_body(conn, n, limits).await?,
            Framing::Chunked => read_chunked_body(conn, limits).await?,
            Framing::UntilClose => {
                read_until_close(conn, limits).await?;
                let body = Bytes::from(std::mem::take(&mut conn.buf));
                return Ok((Response { status, body }, false));
            }
        };
        // Bytes after the response were never asked for: do not reuse the connection.
        let reusable = head.keep_alive && conn.buf.is_empty();
        return Ok((Response { status, body }, reusable));
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head (status line, headers, blank line) at the buffer's start.
    len: usize,
    framing: Framing,
    /// HTTP/1.1 without `Connection: close` (or HTTP/1.0 with `keep-alive`).
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads more bytes into the connection's buffer, letting it hold at most `bytes_max`;
/// an end of stream is an error here.
async fn fill<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    bytes_max: usize,
) -> Result<(), ClientError> {
    let room = bytes_max.saturating_sub(conn.buf.len());
    if room == 0 {
        return Err(ClientError::BadResponse("response over its size bound"));
    }
    conn.buf.reserve(room.min(READ_BUFFER_BYTES));
    let n = (&mut conn.stream)
        .take(room as u64)
        .read_buf(&mut conn.buf)
        .await?;
    if n == 0 {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response was complete",
        )));
    }
    Ok(())
}

/// Reads until a whole response head is buffered and parses it.
async fn read_head<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    head_only: bool,
    limits: &ClientLimits,
) -> Result<Head, ClientError> {
    loop {
        if !conn.buf.is_empty() {
            if let Some(parsed) = parse_head(&conn.buf, head_only)? {
                return Ok(parsed);
            }
        }
        fill(conn, limits.response_head_bytes_max).await?;
    }
}

/// Parses a response head at the start of `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<Head>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::BadResponse("too many headers"))
        }
        Err(_) => return Err(ClientError::BadResponse("not an HTTP/1.x response head")),
    };
    let status = response.code.unwrap_or(0);
    let http11 = response.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = !http11;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(ClientError::BadResponse("bad Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(ClientError::BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(&[]);
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if transfer_encoding {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); a body not ending
        // in chunked runs to the end of the connection.
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len: head_len,
        framing,
        keep_alive: !close,
    }))
}

async fn read_exact_body<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    length: usize,
    limits: &ClientLimits,
) -> Result<Bytes, ClientError> {
    if length > limits.response_body_bytes_max {
        return Err(ClientError::BadResponse("body over its size bound"));
    }
    while conn.buf.len() < length {
        fill(conn, length).await?;
    }
    let body = Bytes::copy_from_slice(&conn.buf[..length]);
    conn.buf.drain(..length);
    Ok(body)
}

async fn read_until_close<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    limits: &ClientLimits,
) -> Result<(), ClientError> {
    loop {
        match fill(conn, limits.response_body_bytes_max).await {
            Ok(()) => {}
            Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Decodes a chunked body (chunk extensions and trailers are read and ignored).
async fn read_chunked_body<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    limits: &ClientLimits,
) -> Result<Bytes, ClientError> {
    let body_max = limits.response_body_bytes_max;
    let mut body = Vec::new();
    loop {
        let line = read_line(conn).await?;
        let size_text = line
            .split(|b| *b == b';')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ClientError::BadResponse("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line that ends the body.
            while !read_line(conn).await?.is_empty() {}
            return Ok(Bytes::from(body));
        }
        // Checked: a chunk size of up to 2^64 - 1 is valid hex, and `body.len() + size`
        // (or `size + 2` below) would wrap.
        let within = body.len().checked_add(size).is_some_and(|n| n <= body_max);
        if !within {
            return Err(ClientError::BadResponse("body over its size bound"));
        }
        // Cannot overflow now: size <= body_max.
        while conn.buf.len() < size + 2 {
            fill(conn, body_max.saturating_add(CHUNK_LINE_BYTES_MAX)).await?;
        }
        if &conn.buf[size..size + 2] != b"\r\n" {
            return Err(ClientError::BadResponse("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&conn.buf[..size]);
        conn.buf.drain(..size + 2);
    }
}

/// Takes one CRLF-terminated line of at most `CHUNK_LINE_BYTES_MAX` bytes (without the
/// CRLF) off the buffer. The bound holds however the bytes arrive: a longer line is
/// refused whether it is already buffered whole or still arriving.
async fn read_line<S: AsyncRead + Unpin>(conn: &mut Conn<S>) -> Result<Vec<u8>, ClientError> {
    let too_long = || ClientError::BadResponse("chunk line too long");
    loop {
        if let Some(at) = conn.buf.windows(2).position(|w| w == b"\r\n") {
            if at > CHUNK_LINE_BYTES_MAX {
                return Err(too_long());
            }
            let line = conn.buf[..at].to_vec();
            conn.buf.drain(..at + 2);
            return Ok(line);
        }
        // No CRLF yet: the line is at least `len - 1` bytes (the last may be its CR).
        if conn.buf.len() > CHUNK_LINE_BYTES_MAX + 1 {
            return Err(too_long());
        }
        fill(conn, CHUNK_LINE_BYTES_MAX + 2).await?;
    }
}

fn parse_url(url: &str) -> Result<Target<'_>, ClientError> {
    let invalid = |why: &str| ClientError::Invalid(format!("{why}: {url:?}"));
    let scheme = |name: &str| {
        url.get(..name.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    let (tls, scheme_len, default_port) = if scheme("http://") {
        (false, 7, 80)
    } else if scheme("https://") {
        (true, 8, 443)
    } else {
        return Err(invalid("only http:// and https:// URLs are supported"));
    };
    let rest = &url[scheme_len..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let origin = &url[..scheme_len + end];
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid("no host, or user info in the URL"));
    }
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => {
            let port = authority[at + 1..]
                .parse::<u16>()
                .map_err(|_| invalid("bad port"))?;
            (&authority[..at], port)
        }
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let path = if path.is_empty() { "/" } else { path };
    if path.starts_with('?') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(invalid("bad path"));
    }
    Ok(Target {
        origin,
        tls,
        authority,
        host,
        port,
        path,
    })
}

fn write_head(
    out: &mut Vec<u8>,
    request: &Request<'_>,
    target: &Target<'_>,
) -> Result<(), ClientError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(request.method) {
        return Err(ClientError::Invalid(format!(
            "bad method {:?}",
            request.method
        )));
    }
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    // parse_url made the path at least "/" and refused one that starts with '?'.
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(target.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in request.headers {
        let reserved =
            name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length");
        if !token(name) || reserved {
            return Err(ClientError::Invalid(format!("bad header name {name:?}")));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ClientError::Invalid(format!("bad value of header {name}")));
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}\r\n\r\n", request.body.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::{TcpListener, TcpStream};

    fn limits() -> ClientLimits {
        ClientLimits {
            exchange_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            idle_per_host_max: 8,
            idle_total_max: 16,
            response_head_bytes_max: 1_024,
            response_body_bytes_max: 4_096,
        }
    }

    /// What the test server does after answering a request.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        KeepOpen,
        Close,
    }

    /// A server that answers the n-th request (over all connections) with `answers[n]`,
    /// and counts the connections it accepted and the requests it read.
    struct Script {
        addr: SocketAddr,
        accepts: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Some(buf);
                }
            }
            let mut chunk = [0u8; 4_096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn script(answers: Vec<&'static [u8]>, after: After) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepts.clone(), requests.clone());
        let next = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (answers, r, next) = (answers.clone(), r.clone(), next.clone());
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut stream).await {
                        r.lock().expect("lock").push(request);
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let Some(answer) = answers.get(n) else {
                            // Out of answers: hold the connection open, silent.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        };
                        if stream.write_all(answer).await.is_err() || after == After::Close {
                            return;
                        }
                    }
                });
            }
        });
        Script {
            addr,
            accepts,
            requests,
        }
    }

    async fn put(client: &Client, addr: SocketAddr) -> Result<Response, ClientError> {
        let url = format!("http://{addr}/dfsp1/transfers/abc");
        client
            .send(Request {
                method: "PUT",
                url: &url,
                headers: &[
                    ("content-type", "application/json"),
                    ("fspiop-source", "hub"),
                ],
                body: b"{\"a\":1}",
            })
            .await
    }

    #[test]
    fn urls_are_split_into_authority_host_port_and_path() {
        let t = parse_url("http://127.0.0.1:3000/dfsp/transfers?x=1").expect("url");
        assert_eq!(
            t,
            Target {
                origin: "http://127.0.0.1:3000",
                tls: false,
                authority: "127.0.0.1:3000",
                host: "127.0.0.1",
                port: 3000,
                path: "/dfsp/transfers?x=1"
            }
        );
        let t = parse_url("HTTP://dfsp.example").expect("url");
        assert_eq!((t.host, t.port, t.path), ("dfsp.example", 80, "/"));
        let t = parse_url("http://[::1]:8080/x").expect("url");
        assert_eq!((t.host, t.port), ("[::1]", 8080));
        let t = parse_url("http://[::1]/x").expect("url");
        assert_eq!((t.host, t.port), ("[::1]", 80));
        let t = parse_url("HTTPS://dfsp.example/x?y").expect("url");
        assert_eq!(
            (t.origin, t.tls, t.host, t.port, t.path),
            ("HTTPS://dfsp.example", true, "dfsp.example", 443, "/x?y")
        );
        let t = parse_url("https://[::1]:8443/x").expect("url");
        assert_eq!((t.origin, t.port), ("https://[::1]:8443", 8443));
        for bad in [
            "httpx://a/x",
            "https:/a",
            "ftp://a",
            "http://",
            "http://:80/x",
            "http://a:99999/x",
            "http://u@a/x",
            "http://a/x y",
            "http://a?q",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_head_carries_host_and_length_and_refuses_injected_lines() {
        let target = parse_url("http://h:1/p").expect("url");
        let mut out = Vec::new();
        let request = Request {
            method: "POST",
            url: "http://h:1/p",
            headers: &[("fspiop-source", "dfsp1")],
            body: b"12345",
        };
        write_head(&mut out, &request, &target).expect("head");
        assert_eq!(
            out,
            b"POST /p HTTP/1.1\r\nhost: h:1\r\nfspiop-source: dfsp1\r\ncontent-length: 5\r\n\r\n"
        );
        for headers in [
            &[("x-a", "1\r\nx-injected: 2")][..],
            &[("x a", "1")][..],
            &[("host", "other")][..],
            &[("content-length", "9")][..],
        ] {
            let r = Request { headers, ..request };
            let e = write_head(&mut Vec::new(), &r, &target).expect_err("accepted");
            assert!(!e.was_sent());
        }
        let r = Request {
            method: "GE T",
            ..request
        };
        assert!(write_head(&mut Vec::new(), &r, &target).is_err());
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_reused() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let s = script(vec![ok, ok, ok], After::KeepOpen).await;
        let client = Client::new(limits());
        for _ in 0..3 {
            let r = put(&client, s.addr).await.expect("exchange");
            assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(s.accepts.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle_connections(), 1);
        let requests = s.requests.lock().expect("lock");
        let first = String::from_utf8_lossy(&requests[0]).to_string();
        assert!(
            first.starts_with("PUT /dfsp1/transfers/abc HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(
            first.ends_with("content-length: 7\r\n\r\n{\"a\":1}"),
            "{first}"
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n";
        let s = script(vec![chunked, chunked], After::KeepOpen).await;
        let client = Client::new(limits());
        for _ in 0..2 {
            let r = put(&client, s.addr).await.expect("exchange");
            assert_eq!(&r.body[..], b"hello, world");
        }
        assert_eq!(s.accepts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let answer: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![answer], After::KeepOpen).await;
        let r = put(&Client::new(limits()), s.addr).await.expect("exchange");
        assert_eq!((r.status, r.body.len()), (202, 0));
    }

    #[tokio::test]
    async fn connection_close_and_http10_are_not_pooled() {
        let close: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let old: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![close, old, close], After::KeepOpen).await;
        let client = Client::new(limits());
        for _ in 0..3 {
            put(&client, s.addr).await.expect("exchange");
            assert_eq!(client.idle_connections(), 0);
        }
        assert_eq!(s.accepts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let s = script(vec![answer], After::Close).await;
        let client = Client::new(limits());
        let r = put(&client, s.addr).await.expect("exchange");
        assert_eq!(&r.body[..], b"all of it");
        assert_eq!(client.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        // The server answers as if it kept the connection, then closes it (a keep-alive
        // timeout). The next request must go on a new connection, not fail on the old.
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![ok, ok], After::Close).await;
        let client = Client::new(limits());
        put(&client, s.addr).await.expect("first");
        assert_eq!(client.idle_connections(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(&client, s.addr)
            .await
            .expect("second, on a new connection");
        assert_eq!(s.accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![ok, ok], After::KeepOpen).await;
        let client = Client::new(ClientLimits {
            idle_timeout: Duration::from_millis(50),
            ..limits()
        });
        put(&client, s.addr).await.expect("first");
        tokio::time::sleep(Duration::from_millis(120)).await;
        put(&client, s.addr).await.expect("second");
        assert_eq!(s.accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_checkin_closes_connections_idle_too_long() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![ok; 4], After::KeepOpen).await;
        let client = Client::new(ClientLimits {
            idle_timeout: Duration::from_millis(300),
            ..limits()
        });
        let (a, b) = tokio::join!(put(&client, s.addr), put(&client, s.addr));
        a.and(b).expect("two at once");
        assert_eq!(client.idle_connections(), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Reuses one connection; the other stays idle and grows old.
        put(&client, s.addr).await.expect("third");
        tokio::time::sleep(Duration::from_millis(200)).await;
        put(&client, s.addr).await.expect("fourth");
        assert_eq!(s.accepts.load(Ordering::SeqCst), 2);
        assert_eq!(
            client.idle_connections(),
            1,
            "the old idle connection is still kept"
        );
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_bound() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let s = script(vec![ok; 40], After::KeepOpen).await;
        let client = Client::new(limits());
        let all = (0..20).map(|_| put(&client, s.addr));
        for r in futures::future::join_all(all).await {
            r.expect("exchange");
        }
        assert_eq!(s.accepts.load(Ordering::SeqCst), 20);
        assert_eq!(client.idle_connections(), limits().idle_per_host_max);
    }

    #[tokio::test]
    async fn oversized_and_broken_responses_are_errors() {
        let big_head: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(2_000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let cases: [(&'static [u8], &str); 5] = [
            (big_head, "size bound"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
                "size bound",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                "closed before",
            ),
            (b"SMTP ready\r\n\r\n", "not an HTTP"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
        ];
        for (answer, why) in cases {
            let s = script(vec![answer], After::Close).await;
            let client = Client::new(limits());
            let e = put(&client, s.addr).await.expect_err("accepted");
            assert!(e.was_sent());
            assert!(e.to_string().contains(why), "{e} (wanted {why})");
            assert_eq!(client.idle_connections(), 0);
        }
    }

    #[tokio::test]
    async fn a_huge_chunk_size_is_a_bad_response_not_an_overflow() {
        // After a first chunk, a size of 2^64 - 1: `body.len() + size` overflowed.
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5\r\nhello\r\nffffffffffffffff\r\n";
        let s = script(vec![answer], After::KeepOpen).await;
        let client = Client::new(limits());
        let e = put(&client, s.addr).await.expect_err("accepted");
        assert!(matches!(e, ClientError::BadResponse(_)), "{e}");
        assert!(e.to_string().contains("size bound"), "{e}");
        assert!(e.was_sent());
        assert_eq!(client.idle_connections(), 0, "the connection is not reused");
    }

    #[tokio::test]
    async fn chunk_lines_over_their_bound_are_refused_however_they_arrive() {
        // Found by the `callback_response` fuzz target: a chunk-size line (or a trailer)
        // longer than CHUNK_LINE_BYTES_MAX was refused when it arrived in pieces, but
        // accepted when it was already in the buffer with the bytes after it.
        let limits = ClientLimits {
            response_head_bytes_max: 8_192,
            ..limits()
        };
        let response = |line: &str, trailer: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 {line}\r\nhello\r\n0\r\n{trailer}\r\n\r\n"
            )
            .into_bytes()
        };
        let size_line = |len: usize| format!("5;{}", "x".repeat(len - 2));
        let trailer = |len: usize| format!("t: {}", "y".repeat(len - 3));
        let at_bound = response(
            &size_line(CHUNK_LINE_BYTES_MAX),
            &trailer(CHUNK_LINE_BYTES_MAX),
        );
        let (r, _) = read_response_from(&at_bound[..], false, &limits)
            .await
            .expect("lines at the bound");
        assert_eq!(&r.body[..], b"hello");
        for over in [
            response(&size_line(CHUNK_LINE_BYTES_MAX + 1), "t: y"),
            response("5", &trailer(CHUNK_LINE_BYTES_MAX + 1)),
        ] {
            let e = read_response_from(&over[..], false, &limits)
                .await
                .expect_err("a line over the bound");
            assert!(e.to_string().contains("chunk line too long"), "{e}");
        }
    }

    #[tokio::test]
    async fn refused_and_silent_servers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = put(&Client::new(limits()), addr)
            .await
            .expect_err("nobody listens");
        assert!(
            matches!(e, ClientError::Connect { .. }) && !e.was_sent(),
            "{e}"
        );

        let s = script(vec![], After::KeepOpen).await;
        let client = Client::new(ClientLimits {
            exchange_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(200),
            ..limits()
        });
        let e = put(&client, s.addr).await.expect_err("no answer");
        assert!(matches!(e, ClientError::Timeout(_)) && e.was_sent(), "{e}");
        assert_eq!(s.requests.lock().expect("lock").len(), 1);
    }
}
