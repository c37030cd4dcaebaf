//! Test certificates made at test time (no private key is kept in the repository) and a
//! TLS HTTP/1.1 client that can present one of them.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate authority that issues test certificates into a directory.
pub struct Ca {
    dir: PathBuf,
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA's certificate file (PEM).
    pub pem: PathBuf,
}

/// A certificate and key, as files and as rustls values.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn distinguished(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Test scheme");
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = distinguished(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).expect("write CA");
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
            pem,
        }
    }

    fn issue(&self, cn: &str, file: &str, server: bool) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = distinguished(cn);
        if server {
            params.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().expect("dns name")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let base = self.dir.join(format!("{}-{file}", self.name));
        let (cert_path, key_path) = (base.with_extension("crt"), base.with_extension("key"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Issued {
            cert: cert_path,
            key: key_path,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, file: &str) -> Issued {
        self.issue("localhost", file, true)
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(cn, &format!("client-{cn}"), false)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .map(|c| c.expect("certificate"))
        .collect()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key file")
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca) {
        roots.add(cert).expect("root");
    }
    roots
}

/// A rustls server configuration with `server`'s certificate, asking for a client
/// certificate that chains to `client_ca` when one is given.
pub fn server_config(server: &Issued, client_ca: Option<&Path>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)),
                provider(),
            )
            .build()
            .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&server.cert), key(&server.key))
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// An HTTPS client trusting `ca`, presenting `identity` when given. One connection per
/// request, so that a refused handshake is that request's error.
pub struct TlsHttp {
    connector: tokio_rustls::TlsConnector,
}

impl TlsHttp {
    pub fn new(ca: &Path, identity: Option<&Issued>) -> TlsHttp {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots(ca));
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(certs(&id.cert), key(&id.key))
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        TlsHttp {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Sends one request to `https://host:port/path`; `Err` when the connection, the
    /// handshake or the exchange fails.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Result<(u16, Value), String> {
        let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(if path.is_empty() { "/" } else { path })
                .header("host", authority);
            for (n, v) in headers {
                request = request.header(*n, v.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("exchange: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

/// One request a TLS callback receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub dfsp: String,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The subject CN of the certificate the hub presented, if any.
    pub client_cn: Option<String>,
}

/// A DFSP callback server over TLS (each DFSP under its own path prefix), answering 200.
pub struct TlsReceiver {
    pub addr: SocketAddr,
    pub got: Arc<std::sync::Mutex<Vec<Got>>>,
    /// TCP connections accepted (handshakes tried).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsReceiver {
    pub async fn start(config: rustls::ServerConfig) -> TlsReceiver {
        use hyper::body::Incoming;
        use hyper::service::service_fn;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got: Arc<std::sync::Mutex<Vec<Got>>> = Arc::default();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (log, count) = (got.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| gateway::tls::subject_common_name(c.as_ref()));
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, client_cn) = (log.clone(), client_cn.clone());
                        async move {
                            let method = req.method().to_string();
                            let full = req.uri().path().to_string();
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (dfsp, path) = match full.trim_start_matches('/').split_once('/') {
                                Some((d, rest)) => (d.to_string(), format!("/{rest}")),
                                None => (full.clone(), String::new()),
                            };
                            log.lock().expect("log").push(Got {
                                dfsp,
                                method,
                                path,
                                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                                client_cn,
                            });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsReceiver {
            addr,
            got,
            connections,
        }
    }

    /// Waits (up to 10 s) for a request matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(g) = self.got.lock().expect("log").iter().find(|g| pred(g)) {
                return g.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no callback: {what}; got {:#?}",
                self.got.lock().expect("log")
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
