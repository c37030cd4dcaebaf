//! Who may use the admin and operator API, and how a request must look to change
//! anything.
//!
//! The admin API records funds, sets limits and redirects a DFSP's callbacks: whoever
//! reaches it controls the hub's money. So, in this order, for every request:
//!
//! 1. **`Host` is checked** against a list (`--admin-allowed-host`). A web page a browser
//!    opens can make that browser send requests to `127.0.0.1` by a DNS name the page's
//!    author controls (DNS rebinding); such a request carries the page's host name, so it
//!    fails here. With no list, a loopback-bound admin listener allows `localhost`,
//!    `127.0.0.1` and `[::1]` (any port), and any other listener checks no host.
//! 2. **A credential** is required: a bearer token from `--admin-tokens` (a file of
//!    `NAME TOKEN` lines; the name is who made a change, for the audit), and/or a client
//!    certificate on an admin listener with `--admin-client-ca` (its subject CN is who).
//!    With both configured, both are needed. A missing or wrong credential is 401, the
//!    same answer for either, before anything else is looked at.
//! 3. **A change must be JSON**: every method but `GET`, `HEAD` and `OPTIONS` needs
//!    `Content-Type: application/json`, else 415. A browser sends a cross-site request
//!    without asking the server first only with a form's content types (or none), so this
//!    refuses cross-site request forgery even where no credential is configured.
//!
//! The health probes (`GET /health/live`, `GET /health/ready`) are exempt: they change
//! nothing and reveal nothing, and orchestrators call them by IP address, without a
//! credential.
//!
//! Tokens are kept as SHA-256 digests and compared in constant time; the tokens file
//! must be readable by its owner only (as `ssh` asks of a private key), or the hub does
//! not start. Every change (a mutating request that got past the checks) is logged with
//! who, what, when and its outcome on the `audit` tracing target. That log is not yet
//! durable: durable storage belongs to the engine's storage module, which has no
//! append-only audit record yet.

use crate::fspiop::ApiError;
use crate::tls::PeerCertificate;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Tokens in the tokens file at most.
pub const ADMIN_TOKENS_MAX: usize = 1_024;
/// A token has at least this many characters (a guessable token is no credential).
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;
/// A token has at most this many characters.
pub const ADMIN_TOKEN_CHARS_MAX: usize = 512;
/// A token's name (who, in the audit) has at most this many characters.
pub const ADMIN_TOKEN_NAME_CHARS_MAX: usize = 64;
/// Largest tokens file read.
pub const ADMIN_TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Allowed `Host` names configured at most.
pub const ADMIN_ALLOWED_HOSTS_MAX: usize = 256;

/// Why the admin credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {why}")]
    TokensFile { path: String, why: String },
    #[error("line {line}: {why}")]
    TokensLine { line: usize, why: String },
    #[error("{0}")]
    Config(String),
}

/// The admin bearer tokens, by name.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    entries: Vec<(String, [u8; 32])>,
}

impl AdminTokens {
    /// Reads a tokens file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<AdminTokens, AuthError> {
        let error = |why: String| AuthError::TokensFile {
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(error(format!(
                    "mode {mode:o} lets others read it; make it readable by its owner only \
                     (chmod 600)"
                )));
            }
        }
        if meta.len() > ADMIN_TOKENS_FILE_BYTES_MAX {
            return Err(error(format!(
                "larger than {ADMIN_TOKENS_FILE_BYTES_MAX} bytes"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        AdminTokens::parse(&text).map_err(|e| error(e.to_string()))
    }

    /// Parses `NAME TOKEN` lines; blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<AdminTokens, AuthError> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_error = |why: &str| AuthError::TokensLine {
                line: n + 1,
                why: why.to_string(),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(line_error("expected NAME TOKEN"));
            };
            let name_ok = name.len() <= ADMIN_TOKEN_NAME_CHARS_MAX
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !name_ok {
                return Err(line_error(
                    "a name is at most 64 of A-Z a-z 0-9 - _ . @ characters",
                ));
            }
            if !(ADMIN_TOKEN_CHARS_MIN..=ADMIN_TOKEN_CHARS_MAX).contains(&token.len())
                || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(line_error(&format!(
                    "a token is {ADMIN_TOKEN_CHARS_MIN} to {ADMIN_TOKEN_CHARS_MAX} \
                     printable characters"
                )));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if entries.iter().any(|(n, d)| n == name || *d == digest) {
                return Err(line_error("a name or token appears twice"));
            }
            if entries.len() == ADMIN_TOKENS_MAX {
                return Err(line_error(&format!("more than {ADMIN_TOKENS_MAX} tokens")));
            }
            entries.push((name.to_string(), digest));
        }
        if entries.is_empty() {
            return Err(AuthError::Config("the tokens file holds no token".into()));
        }
        Ok(AdminTokens { entries })
    }

    /// The name of the token presented, if it is one of ours. Every entry is compared,
    /// each in constant time, so the time taken says nothing about which bytes matched.
    pub fn holder(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, known) in &self.entries {
            let difference = known
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// The admin listener's checks (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct AdminGuard {
    pub tokens: Option<AdminTokens>,
    /// The listener requires client certificates (TLS with a client CA).
    pub client_certificates: bool,
    /// `Host` names allowed (lowercase, without port unless one is given); `None`:
    /// any host.
    pub allowed_hosts: Option<Vec<String>>,
}

/// A refused admin request: its HTTP status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

/// The parts of a request the checks read.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub certificate: Option<&'a PeerCertificate>,
}

/// The host names a loopback admin listener allows by default.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// `Host` without its port (`[::1]:3001` → `[::1]`, `hub:3001` → `hub`).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split_once(':').map_or(host, |(name, _)| name)
    }
}

fn is_mutating(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

fn is_json(content_type: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl AdminGuard {
    /// Whether the listener asks for any credential.
    pub fn authenticates(&self) -> bool {
        self.tokens.is_some() || self.client_certificates
    }

    /// Who sent the request (`None`: no credential is configured, or an exempt probe),
    /// or why it is refused.
    pub fn check(&self, req: &AdminRequest<'_>) -> Result<Option<String>, Refusal> {
        if req.method == "GET" && matches!(req.path, "/health/live" | "/health/ready") {
            return Ok(None);
        }
        if let Some(allowed) = &self.allowed_hosts {
            let host = req
                .host
                .and_then(|h| std::str::from_utf8(h).ok())
                .map(|h| h.trim().to_ascii_lowercase())
                .ok_or(Refusal {
                    status: 403,
                    why: "no Host header",
                })?;
            let bare = without_port(&host);
            if !allowed.iter().any(|a| *a == host || *a == bare) {
                return Err(Refusal {
                    status: 403,
                    why: "Host is not one of this hub's admin names",
                });
            }
        }
        let unauthenticated = Refusal {
            status: 401,
            why: "a valid admin credential is required",
        };
        let mut who: Vec<String> = Vec::new();
        if let Some(tokens) = &self.tokens {
            let presented = req
                .authorization
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .ok_or(unauthenticated.clone())?;
            who.push(
                tokens
                    .holder(presented)
                    .ok_or(unauthenticated.clone())?
                    .to_string(),
            );
        }
        if self.client_certificates {
            let cn = req
                .certificate
                .and_then(|c| c.common_name.clone())
                .ok_or(unauthenticated)?;
            who.push(format!("cert:{cn}"));
        }
        if is_mutating(req.method) && !req.content_type.is_some_and(is_json) {
            return Err(Refusal {
                status: 415,
                why: "a change must be sent as Content-Type: application/json",
            });
        }
        Ok((!who.is_empty()).then(|| who.join("+")))
    }
}

fn refusal_response(refusal: &Refusal) -> actix_web::HttpResponse {
    let mut response = crate::transfers::error_response(&ApiError::new(
        refusal.status,
        3000,
        format!("Generic client error - {}", refusal.why),
    ));
    if refusal.status == 401 {
        response.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The admin listener's middleware: the checks, then an audit line for every change.
pub async fn guard_admin(
    guard: Arc<AdminGuard>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let checked = {
        let http = req.request();
        let header = |name| http.headers().get(name).map(|v| v.as_bytes());
        let certificate = http.conn_data::<PeerCertificate>();
        guard.check(&AdminRequest {
            method: http.method().as_str(),
            path: http.path(),
            host: header(actix_web::http::header::HOST),
            authorization: header(actix_web::http::header::AUTHORIZATION),
            content_type: header(actix_web::http::header::CONTENT_TYPE),
            certificate,
        })
    };
    let who = match checked {
        Ok(who) => who,
        Err(refusal) => {
            tracing::debug!(peer = ?req.peer_addr(), why = refusal.why, "admin request refused");
            return Ok(req
                .into_response(refusal_response(&refusal))
                .map_into_right_body());
        }
    };
    let change = is_mutating(req.method().as_str())
        .then(|| (req.method().to_string(), req.path().to_string()));
    let response = next.call(req).await?;
    if let Some((method, path)) = change {
        tracing::info!(
            target: "audit",
            who = who.as_deref().unwrap_or("anonymous"),
            method,
            path,
            status = response.status().as_u16(),
            at_ms = engine::runtime::now_ms(),
            "admin change"
        );
    }
    Ok(response.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn tokens() -> AdminTokens {
        AdminTokens::parse(&format!("# operators\n\nalice {TOKEN}\nbob {TOKEN}-bob\n"))
            .expect("tokens")
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn tokens_are_named_long_and_unique() {
        let t = tokens();
        assert_eq!(t.holder(TOKEN), Some("alice"));
        assert_eq!(t.holder(&format!("{TOKEN}-bob")), Some("bob"));
        assert_eq!(t.holder("0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(t.holder(""), None);
        for bad in [
            "alice short",
            &format!("alice {TOKEN} extra"),
            &format!("al/ice {TOKEN}"),
            &format!("alice {TOKEN}\nalice {TOKEN}-2"),
            &format!("alice {TOKEN}\nbob {TOKEN}"),
            "# nothing\n",
        ] {
            assert!(AdminTokens::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("alice {TOKEN}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = AdminTokens::load(&path).expect_err("mode 644");
        assert!(error.to_string().contains("644"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            AdminTokens::load(&path).expect("mode 600").holder(TOKEN),
            Some("alice")
        );
    }

    #[test]
    fn hosts_are_compared_without_their_port() {
        assert_eq!(without_port("hub:3001"), "hub");
        assert_eq!(without_port("hub"), "hub");
        assert_eq!(without_port("[::1]:3001"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        let guard = AdminGuard {
            allowed_hosts: Some(LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect()),
            ..AdminGuard::default()
        };
        let get = |host: &'static str| AdminRequest {
            method: "GET",
            path: "/participants",
            host: Some(host.as_bytes()),
            ..AdminRequest::default()
        };
        assert_eq!(guard.check(&get("127.0.0.1:3001")), Ok(None));
        assert_eq!(guard.check(&get("LOCALHOST")), Ok(None));
        assert_eq!(guard.check(&get("[::1]:3001")), Ok(None));
        assert_eq!(
            guard.check(&get("evil.example:3001")).map_err(|r| r.status),
            Err(403)
        );
        let no_host = AdminRequest {
            host: None,
            ..get("x")
        };
        assert_eq!(guard.check(&no_host).map_err(|r| r.status), Err(403));
        let probe = AdminRequest {
            path: "/health/ready",
            ..get("10.0.0.5:3001")
        };
        assert_eq!(guard.check(&probe), Ok(None), "probes are exempt");
    }

    #[test]
    fn credentials_then_json() {
        let guard = AdminGuard {
            tokens: Some(tokens()),
            ..AdminGuard::default()
        };
        let good = bearer(TOKEN);
        let post = AdminRequest {
            method: "POST",
            path: "/participants",
            authorization: Some(&good),
            content_type: Some(b"application/json; charset=utf-8"),
            ..AdminRequest::default()
        };
        assert_eq!(guard.check(&post), Ok(Some("alice".into())));
        let wrong = bearer("0123456789abcdef0123456789abcdeX");
        for authorization in [None, Some(&wrong[..]), Some(TOKEN.as_bytes())] {
            let refused = guard.check(&AdminRequest {
                authorization,
                ..post
            });
            assert_eq!(refused.map_err(|r| r.status), Err(401));
        }
        // Unauthenticated requests learn nothing more: 401 comes before 415.
        let form = AdminRequest {
            authorization: None,
            content_type: Some(b"application/x-www-form-urlencoded"),
            ..post
        };
        assert_eq!(guard.check(&form).map_err(|r| r.status), Err(401));
        for content_type in [
            None,
            Some(&b"text/plain"[..]),
            Some(b"application/x-www-form-urlencoded"),
            Some(b"multipart/form-data; boundary=x"),
            Some(b"application/jsonx"),
        ] {
            let refused = guard.check(&AdminRequest {
                content_type,
                ..post
            });
            assert_eq!(refused.map_err(|r| r.status), Err(415), "{content_type:?}");
        }
        let get = AdminRequest {
            method: "GET",
            content_type: None,
            ..post
        };
        assert_eq!(guard.check(&get), Ok(Some("alice".into())));
        // With no credential configured, a change still has to be JSON.
        let open = AdminGuard::default();
        assert_eq!(
            open.check(&AdminRequest {
                content_type: Some(b"text/plain"),
                ..post
            })
            .map_err(|r| r.status),
            Err(415)
        );
    }

    #[test]
    fn a_client_certificate_is_a_credential_and_both_are_needed_when_both_are_configured() {
        let operator = PeerCertificate {
            common_name: Some("ops-1".into()),
            sha256: String::new(),
        };
        let good = bearer(TOKEN);
        let get = AdminRequest {
            method: "GET",
            path: "/participants",
            certificate: Some(&operator),
            ..AdminRequest::default()
        };
        let certs = AdminGuard {
            client_certificates: true,
            ..AdminGuard::default()
        };
        assert_eq!(certs.check(&get), Ok(Some("cert:ops-1".into())));
        let nobody = AdminRequest {
            certificate: None,
            ..get
        };
        assert_eq!(certs.check(&nobody).map_err(|r| r.status), Err(401));
        let both = AdminGuard {
            tokens: Some(tokens()),
            client_certificates: true,
            ..AdminGuard::default()
        };
        assert_eq!(both.check(&get).map_err(|r| r.status), Err(401));
        let with_token = AdminRequest {
            authorization: Some(&good),
            ..get
        };
        assert_eq!(both.check(&with_token), Ok(Some("alice+cert:ops-1".into())));
    }
}
