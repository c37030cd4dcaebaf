//! TLS material and rustls configurations: the FSPIOP and admin listeners (server side,
//! optionally asking for client certificates) and the notifier's `https://` callbacks
//! (client side, optionally presenting the hub's own certificate).
//!
//! Why rustls with the `ring` provider: rustls's default provider, aws-lc-rs, builds C
//! code that may need cmake, which neither CI nor every developer machine has; `ring`
//! needs only a C compiler. Every configuration here is built with that provider
//! explicitly, so no process-wide default provider has to be installed.
//!
//! Files are PEM: a certificate file holds the end-entity certificate first and then any
//! intermediates; a key file holds one PKCS#8, PKCS#1 or SEC1 private key; a CA file holds
//! one or more certificates. They are read once, at start-up: a bad file stops the hub
//! with the file's path in the error rather than failing the first handshake.
//!
//! The identity a client certificate carries is read here ([`PeerCertificate`]) once per
//! connection, when the handshake is done (actix-web's `on_connect`), and kept in the
//! connection's extensions for every request on it; `identity` and `auth` decide what
//! that identity may do.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Certificates read from one PEM file at most (a chain or a CA bundle).
pub const PEM_CERTIFICATES_MAX: usize = 1_024;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// A listener's certificate and key, and the CA its clients' certificates must chain to
/// (`None`: clients are not asked for a certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// How the notifier makes `https://` callbacks: the CA bundle DFSP servers' certificates
/// must chain to (`None`: the operating system's trust store), and the certificate and key
/// the hub presents when a DFSP asks for one (both or neither).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
        if certs.len() == PEM_CERTIFICATES_MAX {
            return Err(file_error(
                path,
                format!("more than {PEM_CERTIFICATES_MAX} certificates"),
            ));
        }
        certs.push(cert.map_err(|e| file_error(path, e))?);
    }
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The rustls configuration of a listener. With a client CA, a client that presents no
/// certificate, or one that does not chain to that CA, fails the handshake: it never
/// reaches the HTTP layer.
pub fn server_config(tls: &ServerTls) -> Result<rustls::ServerConfig, TlsError> {
    let certs = load_certificates(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
                .build()
                .map_err(|e| file_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&tls.cert, format!("certificate and key: {e}")))
}

/// The rustls configuration of the notifier's `https://` callbacks.
pub fn client_config(tls: &CallbackTls) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match &tls.ca {
        Some(ca) => load_roots(ca)?,
        None => Arc::new(system_roots()),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_key(key)?)
            .map_err(|e| file_error(cert, format!("certificate and key: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "the callback client certificate needs both a certificate and a key".into(),
            ))
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The operating system's trust store; certificates it cannot parse are skipped (and
/// logged), as a browser would.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's trusted certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no trusted certificate in the system store: https:// callbacks will fail \
             unless a CA is given for them"
        );
    }
    roots
}

/// What the hub knows of a connection's client certificate (its end-entity certificate,
/// already verified against the listener's client CA by the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name, when the subject has exactly one (two would make the
    /// identity ambiguous: then `None`, and the connection identifies nobody).
    pub common_name: Option<String>,
    /// SHA-256 of the DER certificate, lowercase hex (for logs).
    pub sha256: String,
}

impl PeerCertificate {
    pub fn from_der(der: &[u8]) -> PeerCertificate {
        PeerCertificate {
            common_name: subject_common_name(der),
            sha256: hex(&Sha256::digest(der)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The subject CN of a DER certificate, when there is exactly one and it is a string.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?;
    if names.next().is_some() {
        return None;
    }
    let name = first.as_str().ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// actix-web's `on_connect` hook: on a TLS connection whose client presented a
/// certificate, records its [`PeerCertificate`] in the connection's extensions (read by
/// requests through `HttpRequest::conn_data`).
pub fn record_peer_certificate(
    connection: &dyn std::any::Any,
    extensions: &mut actix_web::dev::Extensions,
) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = connection.downcast_ref::<Tls>() {
        let (_, session) = tls.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            extensions.insert(PeerCertificate::from_der(cert.as_ref()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (rcgen keeps one value per attribute type, so a subject with two CNs cannot be
    /// made here; the XFCC parser's tests cover that case.)
    fn certificate(cn: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for name in cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Scheme");
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_identity_is_the_single_subject_common_name() {
        let der = certificate(&["payerfsp"]);
        let peer = PeerCertificate::from_der(&der);
        assert_eq!(peer.common_name.as_deref(), Some("payerfsp"));
        assert_eq!(peer.sha256.len(), 64);
        assert_eq!(subject_common_name(&certificate(&[])), None);
        assert_eq!(subject_common_name(b"not a certificate"), None);
    }

    #[test]
    fn bad_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").expect("write");
        let error = load_certificates(&empty).expect_err("no certificate");
        assert!(error.to_string().contains("empty.pem"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = server_config(&ServerTls {
            cert: missing.clone(),
            key: missing,
            client_ca: None,
        })
        .expect_err("missing file");
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let half = client_config(&CallbackTls {
            ca: None,
            cert: Some(empty),
            key: None,
        })
        .expect_err("certificate without key");
        assert!(half.to_string().contains("both"), "{half}");
    }
}
