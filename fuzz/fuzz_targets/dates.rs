//! Date parsing: `parse_datetime` (the strict FSPIOP `DateTime`), `parse_timestamp` (the
//! lenient RFC 3339 reader) and their inverse `format_timestamp`.
#![no_main]

use gateway::fspiop::{format_timestamp, parse_datetime, parse_timestamp};
use libfuzzer_sys::fuzz_target;

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the instants whose formatted
/// year has four digits, the range where formatting and parsing are inverses.
const FOUR_DIGIT_YEARS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;
/// 1000-01-01T00:00:00.000Z: the FSPIOP pattern's year does not start with 0.
const FSPIOP_FIRST_MS: i64 = -30_610_224_000_000;

fn round_trips(ms: i64) {
    let text = format_timestamp(ms);
    assert_eq!(text.len(), 24, "{text}");
    assert_eq!(parse_timestamp(&text), Some(ms), "{text}");
    let strict = parse_datetime(&text);
    if ms >= FSPIOP_FIRST_MS {
        assert_eq!(strict, Some(ms), "{text}");
    } else {
        assert_eq!(strict, None, "{text}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Any 8 bytes as an instant: formatting round-trips inside the four-digit years.
    if let Some(word) = data.get(..8) {
        let ms = i64::from_le_bytes(word.try_into().expect("8 bytes"));
        let _ = format_timestamp(ms);
        let span = FOUR_DIGIT_YEARS.end() - FOUR_DIGIT_YEARS.start() + 1;
        round_trips(FOUR_DIGIT_YEARS.start() + ms.rem_euclid(span));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lenient = parse_timestamp(text);
    let strict = parse_datetime(text);
    if let Some(ms) = strict {
        // The strict form is a subset of the lenient one, read the same.
        assert_eq!(lenient, Some(ms), "{text}");
        assert!(ms >= FSPIOP_FIRST_MS - 24 * 3_600_000, "{text}");
        // In UTC it is already the canonical text.
        if text.ends_with('Z') {
            assert_eq!(format_timestamp(ms), text);
        }
    }
    if let Some(ms) = lenient {
        if FOUR_DIGIT_YEARS.contains(&ms) {
            round_trips(ms);
            // The canonical text of the instant parses to it again, whatever form the
            // input had (offset, fewer or more fraction digits, a leap second).
            let canonical = format_timestamp(ms);
            assert_eq!(parse_timestamp(&canonical), Some(ms));
        }
    }
});
