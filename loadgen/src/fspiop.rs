//! The FSPIOP v1.1 transfers wire format as the simulators speak it: headers, bodies,
//! conditions and fulfilments, amounts and timestamps.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Content type of every transfers message.
pub const CONTENT_TYPE_TRANSFERS: &str =
    "application/vnd.interoperability.transfers+json;version=1.1";
/// Accept header of client requests (a callback carries none).
pub const ACCEPT_TRANSFERS: &str = "application/vnd.interoperability.transfers+json;version=1.1";
/// Media type without parameters.
pub const MEDIA_TYPE_TRANSFERS: &str = "application/vnd.interoperability.transfers+json";

pub const H_SOURCE: &str = "fspiop-source";
pub const H_DESTINATION: &str = "fspiop-destination";
pub const H_URI: &str = "fspiop-uri";
pub const H_METHOD: &str = "fspiop-http-method";

/// Money is kept internally as an integer count of 1/10,000 of the major unit (FSPIOP
/// amounts have at most 4 decimals), so every amount on the wire converts exactly.
pub const MONEY_SCALE: u32 = 4;
const MONEY_ONE: i64 = 10_i64.pow(MONEY_SCALE);

/// Payee error code used by the simulators to reject a transfer.
pub const PAYEE_REJECT_CODE: &str = "5104";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub amount: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrepareBody {
    pub transfer_id: String,
    pub payee_fsp: String,
    pub payer_fsp: String,
    pub amount: Money,
    pub ilp_packet: String,
    pub condition: String,
    pub expiration: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FulfilBody {
    pub transfer_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_timestamp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInformation {
    pub error_code: String,
    pub error_description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_information: ErrorInformation,
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` if it is not exactly that.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()
}

/// The payee's fulfilment (32 bytes) for a transfer: SHA-256 of the payee's secret and the
/// transfer id. A payee recomputes it from the id alone, as a real DFSP derives it from the
/// quote, so simulators need no shared table.
pub fn fulfilment_for(secret: &[u8; 32], transfer_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(transfer_id.as_bytes());
    h.finalize().into()
}

/// The condition of a fulfilment: base64url(SHA-256(fulfilment bytes)), 43 characters.
pub fn condition_of(fulfilment: &[u8]) -> String {
    b64url(&Sha256::digest(fulfilment))
}

/// Whether a base64url fulfilment of 32 bytes hashes to the base64url condition.
pub fn fulfilment_matches(fulfilment_b64: &str, condition_b64: &str) -> bool {
    if fulfilment_b64.len() != 43 || condition_b64.len() != 43 {
        return false;
    }
    match b64url_decode(fulfilment_b64) {
        Some(bytes) if bytes.len() == 32 => condition_of(&bytes) == condition_b64,
        _ => false,
    }
}

/// Whether `s` is a 43-character base64url string of 32 bytes (condition or fulfilment).
pub fn is_binary32(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && b64url_decode(s).is_some_and(|v| v.len() == 32)
}

/// Formats an internal amount (1/10,000 units) as an FSPIOP amount string: no trailing
/// zeros, no trailing dot, at most 4 decimals.
pub fn format_amount(units: i64) -> String {
    let neg = units < 0;
    let abs = units.unsigned_abs();
    let whole = abs / MONEY_ONE as u64;
    let frac = abs % MONEY_ONE as u64;
    let mut s = if neg {
        format!("-{whole}")
    } else {
        whole.to_string()
    };
    if frac != 0 {
        let digits = format!("{frac:0width$}", width = MONEY_SCALE as usize);
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s
}

/// Parses a decimal amount (optionally negative, at most 4 decimals) into internal units.
pub fn parse_amount(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, f),
        None => (body, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > MONEY_SCALE as usize || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let w: i64 = whole.parse().ok()?;
    let mut f: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += i64::from(b - b'0') * 10_i64.pow(MONEY_SCALE - 1 - i as u32);
    }
    let v = w.checked_mul(MONEY_ONE)?.checked_add(f)?;
    Some(if neg { -v } else { v })
}

/// Converts a JSON value (number or decimal string) into internal units.
pub fn json_amount(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => parse_amount(s),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.checked_mul(MONEY_ONE)
            } else {
                // Shortest round-trip text of the float, then exact decimal parsing.
                parse_amount(&n.to_string())
            }
        }
        _ => None,
    }
}

/// Whole major units to internal units.
pub fn major(units: i64) -> i64 {
    units.saturating_mul(MONEY_ONE)
}

/// Whether `s` matches the FSPIOP Amount pattern
/// `^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$`.
pub fn is_valid_amount(s: &str) -> bool {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let whole_ok = whole == "0"
        || (!whole.is_empty()
            && whole.len() <= 18
            && whole.bytes().all(|b| b.is_ascii_digit())
            && !whole.starts_with('0'));
    let frac_ok = match frac {
        None => true,
        Some(f) => {
            !f.is_empty()
                && f.len() <= 4
                && f.bytes().all(|b| b.is_ascii_digit())
                && !f.ends_with('0')
        }
    };
    whole_ok && frac_ok
}

/// RFC 7231 date for the `Date` header.
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// ISO 8601 UTC timestamp with exactly 3 fractional digits, as FSPIOP's DateTime wants.
pub fn iso8601_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let h = ms_of_day / 3_600_000;
    let mi = (ms_of_day / 60_000) % 60;
    let s = (ms_of_day / 1000) % 60;
    let milli = ms_of_day % 1000;
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A stand-in ILP packet: base64url of a short descriptor of the transfer (the hub treats
/// it as opaque; the pattern is `^[A-Za-z0-9-_]+[=]{0,2}$`).
pub fn ilp_packet(transfer_id: &str, amount: &str, currency: &str) -> String {
    b64url(format!("loadgen:{transfer_id}:{amount}:{currency}").as_bytes())
}

/// Whether a content type names the transfers resource at major version 1.
pub fn is_transfers_content_type(ct: &str) -> bool {
    let mut parts = ct.split(';').map(str::trim);
    let media_ok = parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case(MEDIA_TYPE_TRANSFERS));
    let version_ok = parts.any(|p| {
        p.strip_prefix("version=")
            .is_some_and(|v| v == "1" || v.starts_with("1."))
    });
    media_ok && version_ok
}

/// Whether `s` is a lower-case UUID as FSPIOP v1.1's CorrelationId requires.
pub fn is_correlation_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn mojaloop_test_vector() {
        let f = "UNlJ98hZTY_dsw0cAqw4i_UN3v4utt7CZFB4yfLbVFA";
        let c = "GRzLaTP7DJ9t4P-a_BA0WA9wzzlsugf00-Tn6kESAfM";
        assert!(fulfilment_matches(f, c));
        assert!(!fulfilment_matches(c, f));
        assert!(is_binary32(f) && is_binary32(c));
    }

    #[test]
    fn derived_fulfilment_is_43_chars_and_matches() {
        let secret = [7u8; 32];
        let f = fulfilment_for(&secret, "b51ec534-ee48-4575-b6a9-ead2955b8069");
        let fb = b64url(&f);
        assert_eq!(fb.len(), 43);
        let c = condition_of(&f);
        assert_eq!(c.len(), 43);
        assert!(fulfilment_matches(&fb, &c));
    }

    #[test]
    fn amounts_round_trip_and_match_the_pattern() {
        for (units, s) in [
            (0, "0"),
            (10_000, "1"),
            (12_300, "1.23"),
            (5_000, "0.5"),
            (1, "0.0001"),
            (1_234_567_890_000, "123456789"),
        ] {
            assert_eq!(format_amount(units), s);
            assert_eq!(parse_amount(s), Some(units));
            assert!(is_valid_amount(s), "{s}");
        }
        assert_eq!(parse_amount("-2.5"), Some(-25_000));
        for bad in ["5.0", "5.50", "01", ".5", "1.", "1.23456", "", "1e3"] {
            assert!(!is_valid_amount(bad), "{bad}");
        }
        assert_eq!(json_amount(&serde_json::json!(12.5)), Some(125_000));
        assert_eq!(json_amount(&serde_json::json!("-3")), Some(-30_000));
        assert_eq!(json_amount(&serde_json::json!(7)), Some(70_000));
    }

    #[test]
    fn iso_timestamp_has_three_decimals() {
        let t = UNIX_EPOCH + Duration::from_millis(1_464_093_488_699);
        assert_eq!(iso8601_millis(t), "2016-05-24T12:38:08.699Z");
        assert_eq!(iso8601_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000); // leap day 2000
        assert_eq!(iso8601_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn content_type_and_ids() {
        assert!(is_transfers_content_type(CONTENT_TYPE_TRANSFERS));
        assert!(is_transfers_content_type(
            "application/vnd.interoperability.transfers+json; version=1.0"
        ));
        assert!(!is_transfers_content_type("application/json"));
        assert!(!is_transfers_content_type(
            "application/vnd.interoperability.transfers+json;version=2.0"
        ));
        assert!(is_correlation_id("b51ec534-ee48-4575-b6a9-ead2955b8069"));
        assert!(!is_correlation_id("B51EC534-EE48-4575-B6A9-EAD2955B8069"));
    }
}
