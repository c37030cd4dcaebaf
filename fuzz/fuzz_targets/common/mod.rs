//! Shared by the FSPIOP targets: an input is a request written as text, a head of
//! `name: value` lines, a blank line, then the body bytes.
// Each target uses part of it.
#![allow(dead_code)]

use gateway::fspiop::{ApiError, ERROR_DESCRIPTION_CHARS_MAX};

/// A fixed "now" (2026-01-01T00:00:00.000Z), so that a corpus body's expiration stays in
/// the window from run to run.
pub const NOW_MS: i64 = 1_767_225_600_000;

/// A request as the handlers see it.
pub struct Request<'a> {
    /// The first head line when the target wants one (a path), else empty.
    pub first_line: String,
    /// Headers with lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// Splits the input at its first blank line. With `first_line`, the head's first line is
/// taken as it is (the path of a `PUT`), not as a header.
pub fn split(data: &[u8], first_line: bool) -> Request<'_> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let first = if first_line {
        lines.next().unwrap_or("").to_string()
    } else {
        String::new()
    };
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Request {
        first_line: first,
        headers,
        body,
    }
}

impl Request<'_> {
    /// A header by lower-case name, as actix-web hands it over: the first one, and only
    /// when its value is visible ASCII (`HeaderValue::to_str`).
    pub fn get(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
    }
}

/// What every refusal must be: a 4xx with an FSPIOP client-error code and a body whose
/// description the schema accepts.
pub fn check_refusal(e: &ApiError) {
    assert!(
        matches!((e.status, e.code), (400, 3100..=3199) | (406, 3001)),
        "a refusal must be 400/31xx or 406/3001: {e:?}"
    );
    let body = e.body();
    let description = body["errorInformation"]["errorDescription"]
        .as_str()
        .expect("errorDescription is a string");
    let chars = description.chars().count();
    assert!((1..=ERROR_DESCRIPTION_CHARS_MAX).contains(&chars), "{body}");
    assert_eq!(
        body["errorInformation"]["errorCode"].as_str(),
        Some(format!("{:04}", e.code).as_str())
    );
}
