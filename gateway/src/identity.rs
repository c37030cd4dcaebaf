//! Who a DFSP is: the authenticated participant behind an FSPIOP request, and the rule
//! that its `FSPIOP-Source` must name that participant.
//!
//! Without this, `FSPIOP-Source` is only a claim: any host that reaches the FSPIOP port
//! could prepare a transfer as any bank, fulfil another bank's transfer, or ask for its
//! state. The identity comes from one of two places:
//!
//! * **A client certificate** on the hub's own TLS listener (`--client-ca`): the handshake
//!   has already checked that it chains to the scheme's CA, and the participant is the
//!   certificate's subject common name (CN). Mapping by CN, rather than by a fingerprint
//!   registered per participant, means the scheme's CA is the one authority on names:
//!   onboarding or renewing a DFSP's certificate needs no admin call on the hub, which is
//!   how Mojaloop schemes issue DFSP certificates (the DFSP id as CN). The cost is that the
//!   CA must never issue a CN it did not check: the client CA should be the scheme's own,
//!   not a public one.
//! * **A TLS-terminating proxy** in front of the hub (`--trusted-proxy`), which passes the
//!   client certificate's details in Envoy's `x-forwarded-client-cert` (XFCC) header. The
//!   header is believed only on connections from the configured proxy addresses, and only
//!   with exactly one element: a proxy configured to append (rather than to set) would let
//!   a client put its own element first. Configure Envoy with
//!   `forward_client_cert_details: SANITIZE_SET` and `set_current_client_cert_details:
//!   {subject: true}`.
//!
//! With neither, the hub trusts `FSPIOP-Source` as sent, and says so at start-up.
//!
//! A request whose `FSPIOP-Source` is not its authenticated participant is refused before
//! any handler runs (403, FSPIOP error 3000): no command reaches the engine, no callback
//! is sent, and the refusal is the same whether the transfer it names exists or not, so
//! an impostor learns nothing about other DFSPs' transfers.

use crate::fspiop::ApiError;
use crate::tls::PeerCertificate;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use std::net::IpAddr;
use std::sync::Arc;

/// The header a TLS-terminating proxy sets (Envoy's name for it).
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";
/// Longest XFCC header value parsed; a longer one identifies nobody.
pub const XFCC_BYTES_MAX: usize = 16 * 1024;
/// Trusted proxy addresses or networks configured at most.
pub const TRUSTED_PROXIES_MAX: usize = 256;

/// An address or network (`10.1.2.3`, `10.1.0.0/16`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: bad prefix length"))?,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may show up as an IPv4-mapped IPv6 address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How the FSPIOP listener authenticates DFSPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DfspTrust {
    /// The listener requires client certificates (TLS with a client CA).
    pub client_certificates: bool,
    /// Peers whose `x-forwarded-client-cert` is believed.
    pub trusted_proxies: Vec<Network>,
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nobody is authenticated on this listener: `FSPIOP-Source` is taken as sent.
    Unchecked,
    /// The participant the request's certificate names.
    Participant(String),
}

impl DfspTrust {
    /// Whether the listener authenticates anyone at all.
    pub fn authenticates(&self) -> bool {
        self.client_certificates || !self.trusted_proxies.is_empty()
    }

    /// The identity behind one request, from its peer address, its connection's client
    /// certificate and its XFCC headers; `Err` says why it has none where one is required.
    pub fn identify<'a>(
        &self,
        peer: Option<IpAddr>,
        certificate: Option<&PeerCertificate>,
        mut xfcc: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Identity, &'static str> {
        let from_proxy = peer.is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(ip)));
        if from_proxy {
            let value = xfcc
                .next()
                .ok_or("no x-forwarded-client-cert from the proxy")?;
            if xfcc.next().is_some() {
                return Err("more than one x-forwarded-client-cert header");
            }
            let text = std::str::from_utf8(value)
                .ok()
                .filter(|t| t.len() <= XFCC_BYTES_MAX)
                .ok_or("unreadable x-forwarded-client-cert")?;
            return xfcc_common_name(text).map(Identity::Participant);
        }
        if self.client_certificates {
            // The handshake refuses a client without a certificate, so `None` here would
            // be a connection the hook did not see; it identifies nobody either way.
            return certificate
                .and_then(|c| c.common_name.clone())
                .map(Identity::Participant)
                .ok_or("the client certificate has no single subject CN");
        }
        if !self.trusted_proxies.is_empty() {
            return Err("requests must come through the trusted proxy");
        }
        Ok(Identity::Unchecked)
    }
}

/// The subject CN of the one element of an XFCC header value.
fn xfcc_common_name(value: &str) -> Result<String, &'static str> {
    let elements = split_unquoted(value, ',');
    if elements.len() != 1 {
        return Err("x-forwarded-client-cert must have exactly one element");
    }
    let mut subject = None;
    for pair in split_unquoted(&elements[0], ';') {
        let (key, value) = pair.split_once('=').ok_or("bad x-forwarded-client-cert")?;
        if key.trim().eq_ignore_ascii_case("subject") {
            if subject.is_some() {
                return Err("more than one Subject in x-forwarded-client-cert");
            }
            subject = Some(unquote(value.trim())?);
        }
    }
    let subject = subject.ok_or("no Subject in x-forwarded-client-cert")?;
    distinguished_name_cn(&subject)
}

/// Splits at `separator` outside double quotes (a backslash escapes the next character
/// inside them); the parts keep their quotes and escapes.
fn split_unquoted(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        let current = parts.last_mut().expect("parts is never empty");
        if escaped {
            escaped = false;
            current.push(c);
        } else if quoted && c == '\\' {
            escaped = true;
            current.push(c);
        } else if c == '"' {
            quoted = !quoted;
            current.push(c);
        } else if c == separator && !quoted {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    parts
}

/// A value as written in XFCC: bare, or in double quotes with backslash escapes.
fn unquote(value: &str) -> Result<String, &'static str> {
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.to_string());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or("unterminated quote in x-forwarded-client-cert")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(
                chars
                    .next()
                    .ok_or("bad escape in x-forwarded-client-cert")?,
            );
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The single CN of a distinguished name, in RFC 4514 form (`CN=payerfsp,O=Bank`, as
/// Envoy writes it, `\,` escaping a comma) or OpenSSL's older one (`/O=Bank/CN=payerfsp`).
fn distinguished_name_cn(dn: &str) -> Result<String, &'static str> {
    let attributes: Vec<String> = match dn.strip_prefix('/') {
        Some(rest) => rest.split('/').map(str::to_string).collect(),
        None => split_escaped(dn, ','),
    };
    let mut found = None;
    for attribute in attributes {
        // A multi-valued RDN (`CN=a+O=b`) is split too: each value is one attribute.
        for part in split_escaped(&attribute, '+') {
            let Some((kind, value)) = part.split_once('=') else {
                continue;
            };
            if kind.trim().eq_ignore_ascii_case("cn") {
                if found.is_some() {
                    return Err("more than one CN in the client certificate's subject");
                }
                found = Some(value.trim().to_string());
            }
        }
    }
    found
        .filter(|cn| !cn.is_empty())
        .ok_or("no CN in the client certificate's subject")
}

/// Splits at `separator` unless escaped with a backslash; escapes are removed.
fn split_escaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut().expect("parts is never empty");
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c == separator => parts.push(String::new()),
            c => current.push(c),
        }
    }
    parts
}

fn refusal(why: &str) -> actix_web::HttpResponse {
    crate::transfers::error_response(&ApiError::new(
        403,
        3000,
        format!("Generic client error - {why}"),
    ))
}

/// The FSPIOP listener's middleware: refuses a request whose sender is not
/// authenticated where authentication is required, or whose `FSPIOP-Source` is not its
/// authenticated participant. A request without `FSPIOP-Source` goes on to its handler,
/// which refuses it as incomplete (3102).
pub async fn require_source(
    trust: Arc<DfspTrust>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let identity = {
        let http = req.request();
        let certificate = http.conn_data::<PeerCertificate>();
        let xfcc = http
            .headers()
            .get_all(FORWARDED_CLIENT_CERT)
            .map(|v| v.as_bytes());
        trust.identify(http.peer_addr().map(|a| a.ip()), certificate, xfcc)
    };
    let refused = match identity {
        Err(why) => Some(why.to_string()),
        Ok(Identity::Unchecked) => None,
        Ok(Identity::Participant(name)) => {
            let mut sources = req.headers().get_all("fspiop-source");
            match (sources.next(), sources.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => Some("more than one FSPIOP-Source header".to_string()),
                (Some(source), None) if source.as_bytes() == name.as_bytes() => None,
                (Some(_), None) => {
                    Some("FSPIOP-Source is not the authenticated participant".to_string())
                }
            }
        }
    };
    match refused {
        Some(why) => {
            tracing::debug!(peer = ?req.peer_addr(), why, "FSPIOP request refused");
            Ok(req.into_response(refusal(&why)).map_into_right_body())
        }
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    fn cert(cn: Option<&str>) -> PeerCertificate {
        PeerCertificate {
            common_name: cn.map(str::to_string),
            sha256: String::new(),
        }
    }

    fn none<'a>() -> std::iter::Empty<&'a [u8]> {
        std::iter::empty()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net: Network = "10.1.0.0/16".parse().expect("net");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("mapped")));
        let one: Network = "127.0.0.1".parse().expect("addr");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let all: Network = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        let v6: Network = "fd00::/8".parse().expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("bank".parse::<Network>().is_err());
    }

    #[test]
    fn without_certificates_or_proxies_the_source_is_unchecked() {
        let trust = DfspTrust::default();
        assert!(!trust.authenticates());
        assert_eq!(
            trust.identify(ip("10.0.0.1"), None, none()),
            Ok(Identity::Unchecked)
        );
    }

    #[test]
    fn a_client_certificate_names_its_participant() {
        let trust = DfspTrust {
            client_certificates: true,
            trusted_proxies: vec![],
        };
        let payer = cert(Some("payerfsp"));
        assert_eq!(
            trust.identify(ip("10.0.0.1"), Some(&payer), none()),
            Ok(Identity::Participant("payerfsp".into()))
        );
        assert!(trust.identify(ip("10.0.0.1"), None, none()).is_err());
        assert!(trust
            .identify(ip("10.0.0.1"), Some(&cert(None)), none())
            .is_err());
        // An XFCC header from a peer that is not a trusted proxy changes nothing.
        let forged: &[u8] = b"Subject=\"CN=payeefsp\"";
        assert_eq!(
            trust.identify(ip("10.0.0.1"), Some(&payer), std::iter::once(forged)),
            Ok(Identity::Participant("payerfsp".into()))
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_participant_in_one_xfcc_element() {
        let trust = DfspTrust {
            client_certificates: false,
            trusted_proxies: vec!["10.9.0.0/24".parse().expect("net")],
        };
        let xfcc: &[u8] = b"By=spiffe://hub;Hash=abc;Subject=\"CN=payerfsp,OU=Payments\\, Retail,O=Bank\";URI=spiffe://payer";
        assert_eq!(
            trust.identify(ip("10.9.0.7"), None, std::iter::once(xfcc)),
            Ok(Identity::Participant("payerfsp".into()))
        );
        let legacy: &[u8] = b"Hash=abc;Subject=\"/C=US/O=Bank/CN=payeefsp\"";
        assert_eq!(
            trust.identify(ip("10.9.0.7"), None, std::iter::once(legacy)),
            Ok(Identity::Participant("payeefsp".into()))
        );
        // The proxy must say who it is: no header, two headers, two elements, two CNs.
        assert!(trust.identify(ip("10.9.0.7"), None, none()).is_err());
        assert!(trust
            .identify(ip("10.9.0.7"), None, [xfcc, xfcc].into_iter())
            .is_err());
        let appended: &[u8] = b"Subject=\"CN=payeefsp\",Subject=\"CN=payerfsp\"";
        assert!(trust
            .identify(ip("10.9.0.7"), None, std::iter::once(appended))
            .is_err());
        let two_cns: &[u8] = b"Subject=\"CN=payeefsp,CN=payerfsp\"";
        assert!(trust
            .identify(ip("10.9.0.7"), None, std::iter::once(two_cns))
            .is_err());
        let no_subject: &[u8] = b"Hash=abc;URI=spiffe://payer";
        assert!(trust
            .identify(ip("10.9.0.7"), None, std::iter::once(no_subject))
            .is_err());
        // Anyone else, with or without the header, is nobody: the proxy is the only way in.
        assert!(trust
            .identify(ip("10.8.0.1"), None, std::iter::once(xfcc))
            .is_err());
    }

    #[test]
    fn xfcc_quotes_and_escapes() {
        assert_eq!(
            xfcc_common_name("Subject=\"CN=a\\\"b;c,O=x\""),
            Ok("a\"b;c".to_string())
        );
        assert!(xfcc_common_name("Subject=\"CN=a").is_err());
        assert_eq!(distinguished_name_cn("CN=bank+O=x"), Ok("bank".to_string()));
        assert!(distinguished_name_cn("O=x").is_err());
        assert!(distinguished_name_cn("CN=").is_err());
    }
}
