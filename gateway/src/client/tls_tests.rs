//! The client over TLS: a local TLS server with a certificate made at test time.

use super::{Client, ClientError, ClientLimits, Request};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for 127.0.0.1, as (DER certificate, DER key).
fn certificate() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    (cert.der().clone(), key)
}

fn trusting(cert: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS server answering every request with 200 and a 2-byte body, keeping the
/// connection open; counts the connections it accepted.
async fn server(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4_096];
                loop {
                    // Requests here have no body: a head ends each one.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tls.write_all(answer).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepts)
}

async fn get(client: &Client, url: &str) -> Result<super::Response, ClientError> {
    client
        .send(Request {
            method: "GET",
            url,
            headers: &[],
            body: b"",
        })
        .await
}

#[tokio::test]
async fn https_exchanges_reuse_their_connection() {
    let (cert, key) = certificate();
    let client = Client::with_tls(limits(), trusting(&cert));
    let (addr, accepts) = server(cert, key).await;
    let url = format!("https://{addr}/dfsp/transfers");
    for _ in 0..3 {
        let response = get(&client, &url).await.expect("answered");
        assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "one connection, reused");
    assert_eq!(client.idle_connections(), 1);
    // The same authority over plain HTTP is another pool entry: never the TLS connection.
    let plain = get(&client, &format!("http://{addr}/x")).await;
    assert!(plain.is_err(), "plain HTTP to a TLS server: {plain:?}");
    assert_eq!(accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_untrusted_server_or_a_client_without_tls_sends_nothing() {
    let (cert, key) = certificate();
    let (other, _) = certificate();
    let (addr, accepts) = server(cert, key).await;
    let url = format!("https://{addr}/dfsp/transfers");
    let error = get(&Client::with_tls(limits(), trusting(&other)), &url)
        .await
        .expect_err("certificate not trusted");
    assert!(
        matches!(error, ClientError::Connect { .. }) && !error.was_sent(),
        "{error}"
    );
    let error = get(&Client::new(limits()), &url)
        .await
        .expect_err("no TLS configuration");
    assert!(matches!(error, ClientError::Invalid(_)), "{error}");
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "only the untrusted attempt connected"
    );
}
