//! FSPIOP v1.1 at the edge: media types and version negotiation, headers, error bodies,
//! timestamps, and the validation of transfer bodies into engine commands.
//!
//! Everything here is a pure function of the request; handlers in `transfers.rs` call it
//! and turn an `ApiError` into a 4xx with an FSPIOP `errorInformation` body. Bad input
//! never panics and never yields a 5xx.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use engine::ids::{Currency, FspId, TransferId};
use engine::money::{parse_amount, AmountError};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The resource name in FSPIOP media types.
pub const RESOURCE: &str = "transfers";
/// Versions this hub speaks, as `(major, minor)`; the first is the one it answers with.
pub const VERSIONS: [(u32, u32); 2] = [(1, 1), (1, 0)];

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

    /// The `errorInformation` body. A 3001 lists the versions this hub speaks in its
    /// `extensionList` as `{key: major, value: minor}`, as the FSPIOP spec asks, so a
    /// client can pick one and retry.
    pub fn body(&self) -> Value {
        let mut body = error_body(self.code, &self.description);
        if self.code == 3001 {
            let extension: Vec<Value> = VERSIONS
                .iter()
                .map(|(major, minor)| json!({"key": major.to_string(), "value": minor.to_string()}))
                .collect();
            body["errorInformation"]["extensionList"] = json!({ "extension": extension });
        }
        body
    }
}

/// An FSPIOP `ErrorInformationObject`. The description is cut to the schema's 128
/// characters (on a character boundary).
pub fn error_body(code: u16, description: &str) -> Value {
    let description: String = description
        .chars()
        .take(ERROR_DESCRIPTION_CHARS_MAX)
        .collect();
    json!({"errorInformation": {"errorCode": format!("{code:04}"), "errorDescription": description}})
}

/// `ErrorDescription` is 1..=128 characters in the FSPIOP schema.
pub const ERROR_DESCRIPTION_CHARS_MAX: usize = 128;

/// The versioned media type, e.g. `application/vnd.interoperability.transfers+json;version=1.1`.
pub fn media_type(version: &str) -> String {
    format!("application/vnd.interoperability.{RESOURCE}+json;version={version}")
}

/// What one media-type item of a `Content-Type` or `Accept` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaItem {
    /// Not `application/vnd.interoperability.transfers+json` at all.
    Foreign,
    /// Ours, with its `version` parameter as written (`None` when absent).
    Ours(Option<String>),
}

/// Splits `application/vnd.interoperability.transfers+json;version=X` (whitespace,
/// case and quoting of the parameter tolerated).
fn media_item(value: &str) -> MediaItem {
    let mut parts = value.split(';').map(str::trim);
    let base = parts.next().unwrap_or("");
    if !base.eq_ignore_ascii_case(&format!("application/vnd.interoperability.{RESOURCE}+json")) {
        return MediaItem::Foreign;
    }
    let version = parts
        .filter_map(|param| param.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("version"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string());
    MediaItem::Ours(version)
}

/// `major.minor` → the pair, if this hub speaks it.
fn supported_exact(version: &str) -> bool {
    let Some((major, minor)) = version.split_once('.') else {
        return false;
    };
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(major), Ok(minor)) => VERSIONS.contains(&(major, minor)),
        _ => false,
    }
}

/// An `Accept` version may name only the major version (`version=1`): any minor of it.
fn supported_accept(version: &str) -> bool {
    if version.contains('.') {
        return supported_exact(version);
    }
    version
        .parse::<u32>()
        .is_ok_and(|major| VERSIONS.iter().any(|(m, _)| *m == major))
}

/// `Content-Type` of a request with a body. Not our media type: 400 3101 (as Mojaloop's
/// API adapter answers); ours with a version this hub does not speak: 406 3001. A missing
/// `version` parameter is taken as the current version.
fn check_content_type(value: &str) -> Result<(), ApiError> {
    match media_item(value) {
        MediaItem::Foreign => Err(ApiError::malformed(format!(
            "invalid Content-Type header {value}"
        ))),
        MediaItem::Ours(None) => Ok(()),
        MediaItem::Ours(Some(v)) if supported_exact(&v) => Ok(()),
        MediaItem::Ours(Some(v)) => Err(ApiError::version(format!(
            "Content-Type version {v} is not supported"
        ))),
    }
}

/// `Accept`: a comma-separated list; one item must be ours in a version this hub speaks.
/// No item of ours: 400 3101; ours only in other versions: 406 3001.
fn check_accept(value: &str) -> Result<(), ApiError> {
    let mut ours = false;
    for item in value.split(',') {
        match media_item(item) {
            MediaItem::Foreign => {}
            MediaItem::Ours(None) => return Ok(()),
            MediaItem::Ours(Some(v)) => {
                if supported_accept(&v) {
                    return Ok(());
                }
                ours = true;
            }
        }
    }
    if ours {
        Err(ApiError::version(format!(
            "no version in Accept {value} is supported"
        )))
    } else {
        Err(ApiError::malformed(format!(
            "invalid Accept header {value}"
        )))
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

/// The FSPIOP headers a message passed on to another DFSP keeps (lower-case names).
pub const PASSED_HEADERS: [&str; 8] = [
    "content-type",
    "accept",
    "date",
    "fspiop-source",
    "fspiop-destination",
    "fspiop-signature",
    "fspiop-encryption",
    "x-forwarded-for",
];

/// Checks `Content-Type` (requests with a body) and `Accept` (required on GET, checked
/// whenever present, as Mojaloop's API adapter does), `Date`, `FSPIOP-Source`,
/// `FSPIOP-Destination`. `get(name)` returns a header by lower-case name.
pub fn check_headers(
    get: &dyn Fn(&str) -> Option<String>,
    needs_body: bool,
) -> Result<Headers, ApiError> {
    if needs_body {
        let content_type =
            get("content-type").ok_or_else(|| ApiError::missing("Content-Type header"))?;
        check_content_type(&content_type)?;
    }
    match get("accept") {
        Some(accept) => check_accept(&accept)?,
        None if !needs_body => return Err(ApiError::missing("Accept header")),
        None => {}
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
    let forwarded = PASSED_HEADERS
        .iter()
        .filter_map(|name| get(name).map(|value| (name.to_string(), value)))
        .collect();
    Ok(Headers {
        source,
        destination,
        forwarded,
    })
}

/// The duplicate-check hash of a request body: SHA-256 of its **canonical** JSON (object
/// keys sorted, no insignificant whitespace), truncated to 128 bits. A DFSP that resends
/// the same message with its keys in another order or re-indented is sending the same
/// request, not a modified one (3106), so the hash must not see those differences.
pub fn body_hash(body: &Map<String, Value>) -> [u8; 16] {
    let mut canonical = Vec::with_capacity(512);
    write_canonical_object(body, &mut canonical);
    let digest = Sha256::digest(&canonical);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn write_canonical_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(&Value::String(key.clone()), out);
        out.push(b':');
        if let Some(value) = map.get(key) {
            write_canonical(value, out);
        }
    }
    out.push(b'}');
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_canonical_object(map, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Scalars: serde_json's compact form (strings escaped one fixed way). Writing
        // into a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// An FSPIOP `DateTime`, strictly as the v1.1 schema's pattern has it:
/// `YYYY-MM-DDTHH:MM:SS.fff` with exactly three fractional digits, then `Z` or `±hh:mm`,
/// and a real calendar date. Returns ms since the epoch.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let zone = match b.len() {
        24 if b[23] == b'Z' => &b[23..],
        29 if (b[23] == b'+' || b[23] == b'-') && b[26] == b':' => &b[23..],
        _ => return None,
    };
    let digits_at = |idx: &[usize]| idx.iter().all(|i| b[*i].is_ascii_digit());
    if b[10] != b'T'
        || b[19] != b'.'
        || b[0] == b'0'
        || !digits_at(&[0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22])
    {
        return None;
    }
    if zone.len() == 6 {
        let offset_ok = digits_at(&[24, 25, 27, 28]) && b[24] <= b'1' && b[27] <= b'5';
        if !offset_ok {
            return None;
        }
    }
    let num = |from: usize, to: usize| -> i64 {
        b[from..to]
            .iter()
            .fold(0, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    if num(11, 13) > 23 || num(14, 16) > 59 || num(17, 19) > 59 {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    parse_timestamp(text)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
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
    // Read as bytes: the offset may hold any characters, and slicing the text between
    // the bytes of one would panic.
    let two_digits = |d: &[u8]| -> Option<i64> {
        match d {
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                Some(i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            }
            _ => None,
        }
    };
    let offset_min = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = two_digits(&[*h1, *h2])?;
            let m = two_digits(&[*m1, *m2])?;
            let sign = if *sign == b'-' { -1 } else { 1 };
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
/// Decodes condition and fulfilment texts as FSPIOP defines them, by the pattern
/// `^[A-Za-z0-9-_]{43}$` alone: 43 characters of the URL-safe alphabet, no `=`. The last
/// character carries 4 bits of the 32 bytes and 2 padding bits; a text whose padding bits
/// are not zero still matches the pattern, and Mojaloop's switch (Node's decoder) takes
/// it as the bytes it encodes, so this decoder ignores them too. (The strict decoder
/// refused such a fulfilment as "not base64url" with a 400, where Mojaloop answers 200
/// and aborts the transfer if the bytes do not match the condition.)
const DIGEST_TEXT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

pub fn digest_field(map: &Map<String, Value>, name: &str) -> Result<[u8; 32], ApiError> {
    let text = string_field(map, name)?;
    if text.len() != 43 {
        return Err(ApiError::validation(format!(
            "{name} must be 43 base64url characters"
        )));
    }
    let bytes = DIGEST_TEXT
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

/// Optional `extensionList`: `{extension: [{key: 1..32 chars, value: 1..128 chars}]}` with
/// 1 to 16 items, nothing else.
pub fn check_extension_list(map: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(list) = map.get("extensionList") else {
        return Ok(());
    };
    let Value::Object(list) = list else {
        return Err(ApiError::validation("extensionList must be an object"));
    };
    only_fields(list, &["extension"])?;
    let Some(Value::Array(items)) = list.get("extension") else {
        return Err(ApiError::validation(
            "extensionList.extension must be an array",
        ));
    };
    if items.is_empty() || items.len() > EXTENSIONS_MAX {
        return Err(ApiError::validation(format!(
            "extensionList holds 1 to {EXTENSIONS_MAX} extensions"
        )));
    }
    for item in items {
        let Value::Object(item) = item else {
            return Err(ApiError::validation("an extension must be an object"));
        };
        only_fields(item, &["key", "value"])?;
        let key = string_field(item, "key")?;
        let value = string_field(item, "value")?;
        if !(1..=EXTENSION_KEY_CHARS_MAX).contains(&key.chars().count())
            || !(1..=EXTENSION_VALUE_CHARS_MAX).contains(&value.chars().count())
        {
            return Err(ApiError::validation(
                "extension key is 1 to 32 characters, value 1 to 128",
            ));
        }
    }
    Ok(())
}

/// Schema bounds of `ExtensionList`.
pub const EXTENSIONS_MAX: usize = 16;
pub const EXTENSION_KEY_CHARS_MAX: usize = 32;
pub const EXTENSION_VALUE_CHARS_MAX: usize = 128;

/// `IlpPacket`: `^[A-Za-z0-9-_]+[=]{0,2}$`, 1 to `ILP_PACKET_CHARS_MAX` characters.
pub fn check_ilp_packet(text: &str) -> Result<(), ApiError> {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    let ok = !body.is_empty()
        && padding <= 2
        && text.len() <= crate::limits::ILP_PACKET_CHARS_MAX
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            "ilpPacket must be base64url, 1 to 32768 characters",
        ))
    }
}

/// `ErrorInformation` of a payee's `PUT /transfers/{ID}/error`: `errorCode` matches
/// `^[1-9]\d{3}$`, `errorDescription` is 1 to 128 characters. Returns the code.
pub fn error_information(map: &Map<String, Value>) -> Result<u16, ApiError> {
    let info = match map.get("errorInformation") {
        Some(Value::Object(info)) => info,
        Some(_) => return Err(ApiError::validation("errorInformation must be an object")),
        None => return Err(ApiError::missing("errorInformation")),
    };
    only_fields(info, &["errorCode", "errorDescription", "extensionList"])?;
    let code = string_field(info, "errorCode")?;
    let error_code = match code.parse::<u16>() {
        Ok(n) if code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()) && n >= 1000 => n,
        _ => {
            return Err(ApiError::validation(
                "errorCode must be four digits, 1000 to 9999",
            ))
        }
    };
    let description = string_field(info, "errorDescription")?;
    if !(1..=ERROR_DESCRIPTION_CHARS_MAX).contains(&description.chars().count()) {
        return Err(ApiError::validation(
            "errorDescription must be 1 to 128 characters",
        ));
    }
    check_extension_list(info)?;
    Ok(error_code)
}

/// The literal text of every number in a JSON document, by its path (object keys; array
/// elements by their index).
///
/// `serde_json` (without its `arbitrary_precision` feature) keeps a number only as an
/// `f64` or an integer, and `4000.000000000000000001` as a float is `4000`. Admin amounts
/// arrive as JSON numbers (central-ledger takes `50000.0`), so to convert them exactly the
/// gateway reads their text from the body itself. The body has already been parsed by
/// `serde_json`, so the scan can trust its structure; it is one pass, no recursion, and
/// holds one entry per number (bounded by the body size). Only numbers at most
/// [`NUMBER_PATH_DEPTH_MAX`] levels deep are recorded (no admin field is nested that
/// deep), so that a number costs at most that many path segments: a body of numbers
/// nested a hundred levels deep would otherwise copy and compare a hundred-segment path
/// per number. A key given twice keeps its last number, as `serde_json` keeps the last
/// value.
#[derive(Debug, Default)]
pub struct NumberTexts {
    by_path: std::collections::BTreeMap<Vec<String>, String>,
}

/// The deepest path [`NumberTexts`] records a number at.
pub const NUMBER_PATH_DEPTH_MAX: usize = 8;

impl NumberTexts {
    pub fn scan(body: &[u8]) -> NumberTexts {
        enum Frame {
            /// The key whose value comes next (`None` while a key is expected).
            Object(Option<String>),
            Array(usize),
        }
        let mut texts = NumberTexts::default();
        let mut stack: Vec<Frame> = Vec::new();
        let path = |stack: &[Frame]| -> Vec<String> {
            stack
                .iter()
                .map(|frame| match frame {
                    Frame::Object(key) => key.clone().unwrap_or_default(),
                    Frame::Array(index) => index.to_string(),
                })
                .collect()
        };
        let mut at = 0;
        while at < body.len() {
            match body[at] {
                b'{' => stack.push(Frame::Object(None)),
                b'[' => stack.push(Frame::Array(0)),
                b'}' | b']' => {
                    stack.pop();
                }
                b',' => match stack.last_mut() {
                    Some(Frame::Object(key)) => *key = None,
                    Some(Frame::Array(index)) => *index += 1,
                    None => {}
                },
                b'"' => {
                    let start = at;
                    at += 1;
                    while at < body.len() && body[at] != b'"' {
                        // An escape: the next byte is part of the string, whatever it is.
                        at += if body[at] == b'\\' { 2 } else { 1 };
                    }
                    let token = body.get(start..=at).unwrap_or(&[]);
                    if let Some(Frame::Object(key @ None)) = stack.last_mut() {
                        *key = Some(serde_json::from_slice::<String>(token).unwrap_or_default());
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let start = at;
                    while at + 1 < body.len()
                        && matches!(body[at + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        at += 1;
                    }
                    if stack.len() <= NUMBER_PATH_DEPTH_MAX {
                        let text = String::from_utf8_lossy(&body[start..=at]).into_owned();
                        texts.by_path.insert(path(&stack), text);
                    }
                }
                _ => {}
            }
            at += 1;
        }
        texts
    }

    /// The text of the number at `path`, if a number is there.
    pub fn get(&self, path: &[&str]) -> Option<&str> {
        let key: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        self.by_path.get(&key).map(String::as_str)
    }
}

/// Parses an admin amount as central-ledger takes it: the text of a JSON number or a
/// decimal string, digits with an optional fraction, trailing zeros allowed (`50000.0`,
/// `"4000.00"`), converted to minor units exactly, with checked arithmetic. Refused, with
/// a description that says why: anything but `-?digits[.digits]` (no exponent, no
/// spaces, no leading zeros), more significant decimals than the currency has, a negative
/// value (limits, funds and initial positions are all at least zero, as before), more
/// than `AMOUNT_MINOR_MAX`.
pub fn parse_admin_decimal(text: &str, currency: Currency) -> Result<i64, String> {
    use engine::money::{currency_scale, AMOUNT_MINOR_MAX};
    if text.contains(['e', 'E']) {
        return Err(format!(
            "{text:?} uses an exponent; write the amount as plain decimals"
        ));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    let syntax_ok = !int_part.is_empty()
        && all_digits(int_part)
        && (int_part == "0" || !int_part.starts_with('0'))
        && all_digits(frac_part)
        // A '.' must be followed by digits.
        && (frac_part.is_empty() != digits.contains('.'));
    if !syntax_ok {
        return Err(format!("{text:?} is not a decimal number"));
    }
    let scale = currency_scale(currency);
    let frac = frac_part.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err(format!(
            "{text:?} has more decimals than {} has ({scale})",
            currency.as_str()
        ));
    }
    let too_large = || format!("{text:?} exceeds the largest amount the hub accepts");
    let mut minor: i64 = 0;
    let padding = std::iter::repeat_n(b'0', scale as usize - frac.len());
    for digit in int_part.bytes().chain(frac.bytes()).chain(padding) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(digit - b'0')))
            .filter(|m| *m <= AMOUNT_MINOR_MAX)
            .ok_or_else(too_large)?;
    }
    if negative {
        return Err(format!("{text:?} is negative; it must not be"));
    }
    Ok(minor)
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
    fn number_texts_are_found_by_path() {
        let body = br#"{"a": 1.50, "limit": {"type": "x", "value": 4000.000000000000000001},
            "list": [7, {"v": -2e3}], "s": "12", "esc\"aped": 3, "a": 2.0}"#;
        let texts = NumberTexts::scan(body);
        assert_eq!(texts.get(&["a"]), Some("2.0"), "the last of a repeated key");
        assert_eq!(
            texts.get(&["limit", "value"]),
            Some("4000.000000000000000001")
        );
        assert_eq!(texts.get(&["list", "0"]), Some("7"));
        assert_eq!(texts.get(&["list", "1", "v"]), Some("-2e3"));
        assert_eq!(texts.get(&["esc\"aped"]), Some("3"));
        assert_eq!(texts.get(&["s"]), None, "a string is not a number");
        assert_eq!(texts.get(&["limit", "type"]), None);
    }

    #[test]
    fn a_body_of_deeply_nested_numbers_is_scanned_in_linear_time() {
        // Found with the `amount` fuzz target, whose runs slowed to a few hundred inputs a
        // second on nested arrays: every number cloned and compared its whole path, so a
        // 64 KB admin body (the request bound) of numbers 120 arrays deep (serde_json
        // parses up to 128) took seconds of CPU to scan.
        let depth = 120;
        let count = (crate::limits::REQUEST_BODY_BYTES_MAX - 2 * depth - 40) / 2;
        let numbers = vec!["1"; count].join(",");
        let body = format!(
            "{{\"amount\": 7.50, \"deep\": {}{numbers}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(body.len() <= crate::limits::REQUEST_BODY_BYTES_MAX);
        assert!(parse_object(body.as_bytes()).is_ok(), "serde_json takes it");
        let started = std::time::Instant::now();
        let texts = NumberTexts::scan(body.as_bytes());
        let took = started.elapsed();
        assert_eq!(texts.get(&["amount"]), Some("7.50"));
        let at_bound = ["deep"]
            .into_iter()
            .chain(std::iter::repeat_n("0", NUMBER_PATH_DEPTH_MAX - 1))
            .collect::<Vec<_>>();
        let shallow = format!("{{\"deep\": {}2{}}}", "[".repeat(7), "]".repeat(7));
        assert_eq!(
            NumberTexts::scan(shallow.as_bytes()).get(&at_bound),
            Some("2")
        );
        assert!(
            took < std::time::Duration::from_millis(500),
            "scanning {} bytes took {took:?}",
            body.len()
        );
    }

    #[test]
    fn admin_decimals_are_exact_or_refused_with_a_reason() {
        let usd = Currency::new("USD").expect("USD");
        let jpy = Currency::new("JPY").expect("JPY");
        let ok = |text: &str, currency| parse_admin_decimal(text, currency);
        assert_eq!(ok("50000.0", usd), Ok(5_000_000));
        assert_eq!(ok("4000.00", usd), Ok(400_000));
        assert_eq!(ok("0", usd), Ok(0));
        assert_eq!(ok("0.10", usd), Ok(10));
        assert_eq!(ok("7.000", jpy), Ok(7));
        assert_eq!(ok("10000000000000", usd), Ok(1_000_000_000_000_000));
        for (text, currency, why) in [
            ("12.345", usd, "more decimals than USD has (2)"),
            ("7.5", jpy, "more decimals than JPY has (0)"),
            ("-1", usd, "negative"),
            ("-0.00", usd, "negative"),
            ("1e3", usd, "exponent"),
            ("abc", usd, "not a decimal number"),
            ("", usd, "not a decimal number"),
            (" 5", usd, "not a decimal number"),
            ("05", usd, "not a decimal number"),
            ("5.", usd, "not a decimal number"),
            (".5", usd, "not a decimal number"),
            ("+5", usd, "not a decimal number"),
            ("1.2.3", usd, "not a decimal number"),
            ("10000000000000.01", usd, "largest"),
            ("99999999999999999999999999", usd, "largest"),
        ] {
            let e = ok(text, currency).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        move |name: &str| {
            owned
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn good_headers(content_type: &str, accept: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("content-type", content_type.to_string()),
            ("date", "Tue, 15 Nov 1994 08:12:31 GMT".to_string()),
            ("fspiop-source", "dfsp1".to_string()),
            ("fspiop-destination", "dfsp2".to_string()),
        ];
        if let Some(accept) = accept {
            out.push(("accept", accept.to_string()));
        }
        out
    }

    fn check(pairs: &[(&'static str, String)], needs_body: bool) -> Result<Headers, ApiError> {
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check_headers(&headers(&borrowed), needs_body)
    }

    fn code_of(r: Result<Headers, ApiError>) -> Option<(u16, u16)> {
        r.err().map(|e| (e.status, e.code))
    }

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
    fn timestamps_with_a_multi_byte_offset_are_refused_not_a_panic() {
        // Found by the `dates` fuzz target: a six-byte "offset" whose fourth byte is
        // inside a multi-byte character was sliced as a string and panicked.
        for text in [
            "2024-01-01T00:00:00+\u{20ac}xx",
            "2024-01-01T00:00:00+0\u{e9}:0",
            "2024-01-01T00:00:00.5-\u{e9}\u{e9}0",
            "2024-01-01T00:00:00+01:\u{e9}",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text}");
        }
    }

    #[test]
    fn fspiop_datetimes_are_strict() {
        assert_eq!(
            parse_datetime("2016-05-24T08:38:08.699-04:00"),
            parse_timestamp("2016-05-24T12:38:08.699Z")
        );
        assert!(parse_datetime("2024-02-29T23:59:59.999Z").is_some());
        for bad in [
            "2016-05-24T08:38:08Z",          // no fraction
            "2016-05-24T08:38:08.69Z",       // two digits
            "2016-05-24T08:38:08.6990Z",     // four digits
            "2016-05-24 08:38:08.699Z",      // no T
            "2016-05-24t08:38:08.699Z",      // lower-case t
            "2023-02-29T00:00:00.000Z",      // not a leap year
            "2016-04-31T00:00:00.000Z",      // April has 30 days
            "2016-05-24T24:00:00.000Z",      // hour 24
            "2016-05-24T08:60:00.000Z",      // minute 60
            "2016-05-24T08:38:08.699+25:00", // offset hour
            "2016-05-24T08:38:08.699+01:60", // offset minute
            "0999-05-24T08:38:08.699Z",      // year starts with 0
            "2016-05-24T08:38:08.699",       // no zone
            "2016-05-24T08:38:08.699Zjunk",
            "２016-05-24T08:38:08.699Z", // multi-byte digit
            "",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_type_and_accept_negotiation() {
        let v11 = media_type("1.1");
        let v10 = media_type("1.0");
        assert!(check(&good_headers(&v11, Some(&v11)), true).is_ok());
        assert!(check(&good_headers(&v10, Some(&v10)), true).is_ok());
        // Accept may name only the major version, or list several types.
        let major_only = "application/vnd.interoperability.transfers+json;version=1";
        assert!(check(&good_headers(&v11, Some(major_only)), true).is_ok());
        let list = format!("application/json, {}", media_type("2.0")) + ", " + &v10;
        assert!(check(&good_headers(&v11, Some(&list)), true).is_ok());
        // Parameter spacing and case are tolerated.
        let spaced = "Application/VND.interoperability.transfers+json ; Version = \"1.1\"";
        assert!(check(&good_headers(spaced, None), true).is_ok());
        // Unsupported version: 406 / 3001, with the supported versions listed.
        let err = check(&good_headers(&media_type("2.0"), None), true).expect_err("2.0");
        assert_eq!((err.status, err.code), (406, 3001));
        let ext = &err.body()["errorInformation"]["extensionList"]["extension"];
        assert_eq!(ext[0], json!({"key": "1", "value": "1"}));
        assert_eq!(ext[1], json!({"key": "1", "value": "0"}));
        assert_eq!(
            code_of(check(&good_headers(&v11, Some(&media_type("2"))), true)),
            Some((406, 3001))
        );
        assert_eq!(
            code_of(check(&good_headers(&media_type("1.9"), None), true)),
            Some((406, 3001))
        );
        // Not our media type at all: 400 / 3101.
        assert_eq!(
            code_of(check(&good_headers("application/json", None), true)),
            Some((400, 3101))
        );
        assert_eq!(
            code_of(check(&good_headers(&v11, Some("text/html")), true)),
            Some((400, 3101))
        );
        // GET needs Accept; a body request needs Content-Type.
        let mut get = good_headers(&v11, None);
        get.retain(|(n, _)| *n != "content-type");
        assert_eq!(code_of(check(&get, false)), Some((400, 3102)));
        get.push(("accept", v11.clone()));
        assert!(check(&get, false).is_ok());
        let mut no_ct = good_headers(&v11, None);
        no_ct.retain(|(n, _)| *n != "content-type");
        assert_eq!(code_of(check(&no_ct, true)), Some((400, 3102)));
    }

    #[test]
    fn fspiop_headers_are_checked_and_kept() {
        let v11 = media_type("1.1");
        let mut h = good_headers(&v11, Some(&v11));
        h.push(("fspiop-signature", "sig".into()));
        h.push(("x-unrelated", "dropped".into()));
        let parsed = check(&h, true).expect("valid");
        assert_eq!(parsed.source.as_str(), "dfsp1");
        assert_eq!(
            parsed.destination.map(|d| d.to_string()),
            Some("dfsp2".into())
        );
        let names: Vec<&str> = parsed.forwarded.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"fspiop-signature") && names.contains(&"accept"));
        assert!(!names.contains(&"x-unrelated"));

        for (name, value, code) in [
            ("date", "yesterday", 3100),
            ("fspiop-source", "has space", 3100),
            ("fspiop-destination", "", 3100),
        ] {
            let mut h = good_headers(&v11, None);
            h.retain(|(n, _)| *n != name);
            h.push((name, value.to_string()));
            assert_eq!(code_of(check(&h, true)), Some((400, code)), "{name}");
        }
        for name in ["date", "fspiop-source"] {
            let mut h = good_headers(&v11, None);
            h.retain(|(n, _)| *n != name);
            assert_eq!(code_of(check(&h, true)), Some((400, 3102)), "{name}");
        }
    }

    #[test]
    fn body_hash_is_canonical() {
        let a = parse_object(br#"{"b": 1, "a": {"y": [1, {"q": "x", "p": null}], "x": "s"}}"#)
            .expect("a");
        let b = parse_object(br#"{"a":{"x":"s","y":[1,{"p":null,"q":"x"}]},"b":1}"#).expect("b");
        assert_eq!(
            body_hash(&a),
            body_hash(&b),
            "key order and spacing do not count"
        );
        let c = parse_object(br#"{"a":{"x":"s","y":[{"p":null,"q":"x"},1]},"b":1}"#).expect("c");
        assert_ne!(body_hash(&a), body_hash(&c), "array order does");
        let d = parse_object(br#"{"a":{"x":"t","y":[1,{"p":null,"q":"x"}]},"b":1}"#).expect("d");
        assert_ne!(body_hash(&a), body_hash(&d), "values do");
    }

    #[test]
    fn schema_helpers() {
        let ext = |v: Value| {
            let mut map = Map::new();
            map.insert("extensionList".into(), v);
            check_extension_list(&map).map_err(|e| e.code)
        };
        assert_eq!(
            ext(json!({"extension": [{"key": "k", "value": "v"}]})),
            Ok(())
        );
        assert_eq!(ext(json!({"extension": []})), Err(3100));
        assert_eq!(
            ext(json!({"extension": [{"key": "", "value": "v"}]})),
            Err(3100)
        );
        assert_eq!(ext(json!({"extension": [{"key": "k"}]})), Err(3102));
        assert_eq!(
            ext(json!({"extension": [{"key": "k", "value": "v", "x": 1}]})),
            Err(3100)
        );
        let many: Vec<Value> = (0..17)
            .map(|i| json!({"key": i.to_string(), "value": "v"}))
            .collect();
        assert_eq!(ext(json!({ "extension": many })), Err(3100));
        assert_eq!(ext(json!("text")), Err(3100));

        assert!(check_ilp_packet("AYIBgQAAAAAAAASw-_").is_ok());
        assert!(check_ilp_packet("AYIBgQ==").is_ok());
        for bad in ["", "==", "AY=IB", "AYIB===", "AY IB", "AY+B/"] {
            assert!(check_ilp_packet(bad).is_err(), "{bad}");
        }
        assert!(check_ilp_packet(&"A".repeat(crate::limits::ILP_PACKET_CHARS_MAX + 1)).is_err());

        let info = |v: Value| {
            let mut map = Map::new();
            map.insert("errorInformation".into(), v);
            error_information(&map).map_err(|e| e.code)
        };
        assert_eq!(
            info(json!({"errorCode": "5101", "errorDescription": "no"})),
            Ok(5101)
        );
        for bad in ["0101", "510", "51011", "+101", "5a01"] {
            assert_eq!(
                info(json!({"errorCode": bad, "errorDescription": "no"})),
                Err(3100),
                "{bad}"
            );
        }
        assert_eq!(
            info(json!({"errorCode": "5101", "errorDescription": ""})),
            Err(3100)
        );
        assert_eq!(info(json!({"errorCode": "5101"})), Err(3102));
        assert_eq!(
            error_information(&Map::new()).map_err(|e| e.code),
            Err(3102)
        );

        let long = error_body(3100, &"é".repeat(300));
        let text = long["errorInformation"]["errorDescription"]
            .as_str()
            .expect("text");
        assert_eq!(text.chars().count(), ERROR_DESCRIPTION_CHARS_MAX);
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
        // The published Mojaloop test pair: condition = base64url(SHA-256(fulfilment)).
        map.insert(
            "fulfilment".into(),
            Value::String("UNlJ98hZTY_dsw0cAqw4i_UN3v4utt7CZFB4yfLbVFA".into()),
        );
        let fulfilment = digest_field(&map, "fulfilment").expect("fulfilment");
        let condition: [u8; 32] = Sha256::digest(fulfilment).into();
        assert_eq!(
            encode_digest(&condition),
            "GRzLaTP7DJ9t4P-a_BA0WA9wzzlsugf00-Tn6kESAfM"
        );
    }

    #[test]
    fn amounts_at_the_edge() {
        let money = |amount: &str, currency: &str| {
            let mut map = Map::new();
            map.insert(
                "amount".into(),
                json!({"amount": amount, "currency": currency}),
            );
            money_field(&map, "amount").map_err(|e| e.code)
        };
        assert_eq!(money("100.5", "USD").map(|(_, m)| m), Ok(10_050));
        for bad in ["5.0", "-1", "1.12345", "1.123", "0", "01", "1e3", " 1", ""] {
            assert_eq!(money(bad, "USD"), Err(3100), "{bad}");
        }
        assert_eq!(money("1", "usd"), Err(3100));
        let mut map = Map::new();
        map.insert("amount".into(), json!({"amount": "1"}));
        assert_eq!(money_field(&map, "amount").map_err(|e| e.code), Err(3102));
        assert_eq!(
            money_field(&Map::new(), "amount").map_err(|e| e.code),
            Err(3102)
        );
    }

    #[test]
    fn digest_texts_are_read_by_the_fspiop_pattern_alone() {
        let field = |text: &str| {
            let mut map = Map::new();
            map.insert("fulfilment".into(), Value::String(text.into()));
            digest_field(&map, "fulfilment")
        };
        let bytes = [0xA5u8; 32];
        let canonical = encode_digest(&bytes);
        assert_eq!(field(&canonical).ok(), Some(bytes));
        // Padding bits set in the last character: the same bytes.
        let (head, last) = canonical.split_at(42);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.find(last).expect("alphabet");
        for low in 1..4 {
            let text = format!("{head}{}", &alphabet[(index | low)..=(index | low)]);
            assert_eq!(field(&text).ok(), Some(bytes), "{text}");
        }
        // Outside the pattern: refused.
        for bad in [
            format!("{head}="),
            format!("{}+{}", &canonical[..10], &canonical[11..]),
            canonical[..42].to_string(),
            format!("{canonical}A"),
        ] {
            assert!(field(&bad).is_err(), "{bad}");
        }
    }
}
