//! HTTP/1.1 on loopback: the client (the hub's own lean client, `gateway::client`) and
//! the simulators' server (hyper).

use crate::limits::{
    HTTP_BODY_MAX, HTTP_HEAD_MAX, HTTP_TIMEOUT, LISTEN_BACKLOG, POOL_IDLE_PER_HOST,
    POOL_IDLE_TIMEOUT, POOL_IDLE_TOTAL,
};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use gateway::client::{Client, ClientLimits};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub type Body = Full<Bytes>;

/// Checks that a base URL is plain HTTP to a loopback address and returns it without a
/// trailing slash. Load and callbacks never leave this machine.
pub fn loopback_base(url: &str) -> anyhow::Result<String> {
    let uri: Uri = url.parse().with_context(|| format!("not a URL: {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// is supported");
    }
    let host = uri.host().with_context(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the load generator only targets loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client,
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The request never left (no connection, bad request): the server did not see it.
    NotSent(String),
    /// Sent, but the exchange failed or timed out: the server may have acted on it.
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(m) => write!(f, "not sent: {m}"),
            SendError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for SendError {}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let inner = Client::new(ClientLimits {
            exchange_timeout: HTTP_TIMEOUT,
            connect_timeout: HTTP_TIMEOUT,
            idle_timeout: POOL_IDLE_TIMEOUT,
            idle_per_host_max: POOL_IDLE_PER_HOST,
            idle_total_max: POOL_IDLE_TOTAL,
            response_head_bytes_max: HTTP_HEAD_MAX,
            response_body_bytes_max: HTTP_BODY_MAX,
        });
        HttpClient { inner }
    }

    /// Sends one request and reads the whole (bounded) reply, within [`HTTP_TIMEOUT`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, SendError> {
        let request = gateway::client::Request {
            method: method.as_str(),
            url,
            headers,
            body: &body,
        };
        match self.inner.send(request).await {
            Ok(r) => Ok(Reply {
                status: StatusCode::from_u16(r.status)
                    .map_err(|_| SendError::Failed(format!("{url}: status {}", r.status)))?,
                body: r.body,
            }),
            Err(e) if e.was_sent() => Err(SendError::Failed(format!("{url}: {e}"))),
            Err(e) => Err(SendError::NotSent(format!("{url}: {e}"))),
        }
    }

    pub async fn get_json(&self, url: &str) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let r = self
            .send(
                Method::GET,
                url,
                &[("accept", "application/json")],
                Bytes::new(),
            )
            .await?;
        let v = if r.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
        };
        Ok((r.status, v))
    }

    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        let r = self
            .send(
                method,
                url,
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                bytes,
            )
            .await?;
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        Ok((r.status, v))
    }
}

/// Reads a request body, refusing more than [`HTTP_BODY_MAX`] bytes.
pub async fn read_body(body: Incoming) -> anyhow::Result<Bytes> {
    Ok(Limited::new(body, HTTP_BODY_MAX)
        .collect()
        .await
        .map_err(|e| anyhow!("reading body: {e}"))?
        .to_bytes())
}

/// A response with a status, optional JSON body and content type.
pub fn respond(status: StatusCode, content_type: Option<&str>, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        if let Ok(v) = HeaderValue::from_str(ct) {
            r.headers_mut()
                .insert(HeaderName::from_static("content-type"), v);
        }
    }
    r
}

pub fn empty(status: StatusCode) -> Response<Body> {
    respond(status, None, Bytes::new())
}

/// A running server: its address and the switch that stops its accept loop.
pub struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting; open connections end when their peers close them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A loopback listener with a deep accept queue ([`LISTEN_BACKLOG`]): when a stall makes
/// clients open many connections at once, a full queue drops their SYNs and each of those
/// requests then waits a whole SYN retransmit (1 s).
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds `127.0.0.1:port` (0 for an ephemeral port) and serves `handler`, with at most
/// `max_connections` connections at once (further ones are closed at accept).
pub async fn serve<F, Fut>(port: u16, max_connections: usize, handler: F) -> anyhow::Result<Server>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = listen(port).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(max_connections));
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stopped.changed() => break,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors or a reset during accept: back off briefly.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                drop(permit);
            });
        }
    });
    Ok(Server { addr, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert_eq!(
            loopback_base("http://127.0.0.1:3000/").unwrap(),
            "http://127.0.0.1:3000"
        );
        assert!(loopback_base("http://localhost:1").is_ok());
        assert!(loopback_base("http://[::1]:80").is_ok());
        assert!(loopback_base("http://10.0.0.1:80").is_err());
        assert!(loopback_base("https://127.0.0.1:80").is_err());
        assert!(loopback_base("http://example.org").is_err());
    }
}
