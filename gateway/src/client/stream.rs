//! The client's connections: plain TCP for `http://`, TLS over TCP for `https://`.
//!
//! One enum rather than a boxed trait object, so that a plain connection (the common
//! case, and the load generator's only one) costs nothing more than before. The TLS
//! session is boxed: it is large, and the enum is moved in and out of the pool.
//!
//! Liveness of an idle connection is checked differently for each. A plain connection
//! is probed with a non-blocking read (nothing to read: open; a FIN: closed). A TLS
//! connection must not be read outside the TLS session, so its socket is *peeked*: any
//! byte waiting there (a close_notify alert, or anything else the server sent unasked)
//! means it is not reused.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Opens a connection to `host:port` (`host` may be a bracketed IPv6 literal), with
    /// TLS when `tls` is given, checking the server's certificate for `host`.
    pub(super) async fn open(
        host: &str,
        port: u16,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> io::Result<Stream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match host.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await?,
            Err(_) => TcpStream::connect((host, port)).await?,
        };
        tcp.set_nodelay(true)?;
        let Some(connector) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let session = connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(session)))
    }

    /// Whether an idle pooled connection can still be written to (see the module docs).
    pub(super) fn still_open(&self) -> bool {
        match self {
            Stream::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(session) => {
                let (tcp, _) = session.get_ref();
                let mut probe = [0u8; 1];
                let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
                matches!(
                    rustix::net::recv(tcp, &mut probe[..], flags),
                    Err(rustix::io::Errno::AGAIN)
                )
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(session) => Pin::new(session.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(session) => Pin::new(session.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(session) => Pin::new(session.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(session) => Pin::new(session.as_mut()).poll_shutdown(cx),
        }
    }
}
