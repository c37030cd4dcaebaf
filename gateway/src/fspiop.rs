//! FSPIOP v1.1 at the edge: media types and version negotiation, headers, error bodies,
//! timestamps, and the validation of transfer bodies into engine commands.
//!
//! Everything here is a pure function of the request; handlers in `transfers.rs` call it
//! and turn an `ApiError` into a 4xx with an FSPIOP `errorInformation` body. Bad input
//! never panics and never yields a 5xx.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use engine::ids::{Currency, FspId, TransferId};
use engine::money::{parse_amount, AmountError};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The resource name in FSPIOP media types.
pub const RESOURCE: &str = "transfers";
/// Versions this hub speaks.
pub const VERSIONS: [&str; 2] = ["1.1", "1.0"];

/// An FSPIOP error answered synchronously: HTTP status, FSPIOP code, description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {description}")]
pub struct ApiError {
    pub status: u16,
    pub code: u16,
    pub description: String,
}

impl ApiError {
    pub fn new(status: u16, code: u16, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            description: description.into(),
        }
    }

    /// 400 with 3100 "Generic validation error".
    pub fn validation(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(400, 3100, format!("Generic validation error - {detail}"))
    }

    /// 400 with 3101 "Malformed syntax".
    pub fn malformed(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(400, 3101, format!("Malformed syntax - {detail}"))
    }

    /// 400 with 3102 "Missing mandatory element".
    pub fn missing(what: &str) -> ApiError {
        ApiError::new(400, 3102, format!("Missing mandatory element - {what}"))
    }

    /// 406 with 3001 "Unacceptable version requested".
    pub fn version(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            406,
            3001,
            format!("Unacceptable version requested - {detail}"),
        )
    }

    pub fn body(&self) -> Value {
        error_body(self.code, &self.description)
    }
}

/// An FSPIOP `ErrorInformationObject`.
pub fn error_body(code: u16, description: &str) -> Value {
    json!({"errorInformation": {"errorCode": format!("{code:04}"), "errorDescription": description}})
}

/// The versioned media type, e.g. `application/vnd.interoperability.transfers+json;version=1.1`.
pub fn media_type(version: &str) -> String {
    format!("application/vnd.interoperability.{RESOURCE}+json;version={version}")
}

/// Parses `application/vnd.interoperability.transfers+json;version=X` (whitespace and
/// parameter case tolerated) and returns the version if this hub speaks it.
fn version_of(value: &str) -> Result<Option<String>, ApiError> {
    let mut parts = value.split(';').map(str::trim);
    let base = parts.next().unwrap_or("").to_ascii_lowercase();
    if base != format!("application/vnd.interoperability.{RESOURCE}+json") {
        return Ok(None);
    }
    let mut version = None;
    for param in parts {
        if let Some((key, val)) = param.split_once('=') {
            if key.trim().eq_ignore_ascii_case("version") {
                version = Some(val.trim().trim_matches('"').to_string());
            }
        }
    }
    match version {
        None => Ok(Some("1.1".to_string())),
        Some(v) if VERSIONS.contains(&v.as_str()) => Ok(Some(v)),
        Some(v) => Err(ApiError::version(format!(
            "version {v} is not supported; use 1.0 or 1.1"
        ))),
    }
}

/// Headers of an incoming FSPIOP request, as the handlers need them.
#[derive(Debug, Clone)]
pub struct Headers {
    pub source: FspId,
    pub destination: Option<FspId>,
    /// Every header worth passing on, lower-case names.
    pub forwarded: Vec<(String, String)>,
}

/// Checks content type / accept versions, `Date`, `FSPIOP-Source`, `FSPIOP-Destination`.
/// `get(name)` returns a header by lower-case name. `needs_body` is false for GET.
pub fn check_headers(
    get: &dyn Fn(&str) -> Option<String>,
    needs_body: bool,
) -> Result<Headers, ApiError> {
    if needs_body {
        let content_type =
            get("content-type").ok_or_else(|| ApiError::missing("Content-Type header"))?;
        if version_of(&content_type)?.is_none() {
            return Err(ApiError::version(format!(
                "unsupported Content-Type {content_type}"
            )));
        }
    }
    if let Some(accept) = get("accept") {
        // Several media types may be listed; one of ours must be acceptable.
        let mut supported = false;
        let mut last_error = None;
        for item in accept.split(',') {
            match version_of(item) {
                Ok(Some(_)) => supported = true,
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
        }
        if !supported {
            return Err(last_error
                .unwrap_or_else(|| ApiError::version(format!("unsupported Accept {accept}"))));
        }
    }
    let date = get("date").ok_or_else(|| ApiError::missing("Date header"))?;
    if httpdate::parse_http_date(&date).is_err() {
        return Err(ApiError::validation(format!(
            "Date header is not an HTTP date: {date}"
        )));
    }
    let source = get("fspiop-source").ok_or_else(|| ApiError::missing("FSPIOP-Source header"))?;
    let source = FspId::new(&source)
        .ok_or_else(|| ApiError::validation("FSPIOP-Source is not a valid FSP id"))?;
    let destination = match get("fspiop-destination") {
        None => None,
        Some(d) => Some(
            FspId::new(&d)
                .ok_or_else(|| ApiError::validation("FSPIOP-Destination is not a valid FSP id"))?,
        ),
    };
    let mut forwarded = Vec::new();
    for name in [
        "content-type",
        "accept",
        "date",
        "fspiop-source",
        "fspiop-destination",
        "fspiop-signature",
        "fspiop-encryption",
        "x-forwarded-for",
    ] {
        if let Some(value) = get(name) {
            forwarded.push((name.to_string(), value));
        }
    }
    Ok(Headers {
        source,
        destination,
        forwarded,
    })
}

/// SHA-256 of the request body, truncated to 128 bits: the duplicate-check hash.
pub fn body_hash(body: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` or with an offset `±HH:MM` into ms since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: String = fraction
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        let padded = format!("{digits:0<3}");
        millis = padded[..3].parse().ok()?;
        rest = &fraction[digits.len()..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) - offset_min * 60) * 1_000 + millis)
}

/// Formats ms since the epoch as `YYYY-MM-DDTHH:MM:SS.fffZ`.
pub fn format_timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3_600,
        (sod % 3_600) / 60,
        sod % 60
    )
}

/// Parses a JSON object body (3101 if it is not one).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::malformed("body must be a JSON object")),
        Err(e) => Err(ApiError::malformed(format!("invalid JSON: {e}"))),
    }
}

/// Refuses properties the schema does not define (`additionalProperties: false`).
pub fn only_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(ApiError::validation(format!("unexpected property {extra}"))),
        None => Ok(()),
    }
}

pub fn string_field<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match map.get(name) {
        None => Err(ApiError::missing(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::validation(format!("{name} must be a string"))),
    }
}

/// A base64url string (no padding) of exactly 32 bytes: a condition or a fulfilment.
pub fn digest_field(map: &Map<String, Value>, name: &str) -> Result<[u8; 32], ApiError> {
    let text = string_field(map, name)?;
    if text.len() != 43 {
        return Err(ApiError::validation(format!(
            "{name} must be 43 base64url characters"
        )));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ApiError::validation(format!("{name} is not base64url")))?;
    bytes
        .try_into()
        .map_err(|_| ApiError::validation(format!("{name} must encode 32 bytes")))
}

pub fn encode_digest(bytes: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn transfer_id(text: &str) -> Result<TransferId, ApiError> {
    TransferId::parse(text)
        .ok_or_else(|| ApiError::validation("transferId must be a UUID or a ULID"))
}

pub fn fsp_field(map: &Map<String, Value>, name: &str) -> Result<FspId, ApiError> {
    FspId::new(string_field(map, name)?)
        .ok_or_else(|| ApiError::validation(format!("{name} is not a valid FSP id")))
}

/// `{amount, currency}` → (currency, minor units), exactly as DESIGN §8 and money.rs say.
pub fn money_field(map: &Map<String, Value>, name: &str) -> Result<(Currency, i64), ApiError> {
    let Some(Value::Object(money)) = map.get(name) else {
        return Err(if map.contains_key(name) {
            ApiError::validation(format!("{name} must be an object"))
        } else {
            ApiError::missing(name)
        });
    };
    only_fields(money, &["amount", "currency"])?;
    let currency = Currency::new(string_field(money, "currency")?)
        .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))?;
    let amount = parse_amount(string_field(money, "amount")?, currency).map_err(|e| match e {
        AmountError::Syntax => {
            ApiError::validation("amount does not match the FSPIOP amount pattern")
        }
        AmountError::TooManyDecimals { scale } => ApiError::validation(format!(
            "amount has more than {scale} decimals for {currency}"
        )),
        AmountError::TooLarge => ApiError::validation("amount is too large"),
        AmountError::Zero => ApiError::validation("amount must be greater than zero"),
    })?;
    Ok((currency, amount))
}

/// What the gateway stashes in a command's payload: the request to pass on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Stash {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Stash {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Stash> {
        if bytes.is_empty() {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ms = parse_timestamp("2026-11-22T10:09:13.123Z").expect("parse");
        assert_eq!(format_timestamp(ms), "2026-11-22T10:09:13.123Z");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00.000+01:00"), Some(0));
        assert_eq!(
            parse_timestamp("2024-02-29T00:00:00.5Z"),
            Some(1_709_164_800_500)
        );
        assert_eq!(parse_timestamp("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(version_of(&media_type("1.1")), Ok(Some("1.1".into())));
        assert_eq!(version_of(&media_type("1.0")), Ok(Some("1.0".into())));
        assert!(version_of(&media_type("2.0")).is_err());
        assert_eq!(version_of("application/json"), Ok(None));
    }

    #[test]
    fn digests() {
        let mut map = Map::new();
        map.insert("condition".into(), Value::String(encode_digest(&[7; 32])));
        assert_eq!(digest_field(&map, "condition"), Ok([7; 32]));
        map.insert("condition".into(), Value::String("short".into()));
        assert_eq!(
            digest_field(&map, "condition").map_err(|e| e.code),
            Err(3100)
        );
    }
}
