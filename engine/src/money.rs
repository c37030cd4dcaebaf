//! Money at the edge: FSPIOP decimal strings to exact integer minor units and back.
//!
//! Inside the engine an amount is an `i64` count of minor units of its currency; it is never
//! a float and never rounded. An amount with more decimals than its currency allows is
//! refused (`AmountError::TooManyDecimals`).

use crate::ids::Currency;

/// Largest amount accepted, in minor units: FSPIOP allows 18 integer digits plus up to 4
/// decimals, which does not fit in i64; the hub refuses anything above this bound instead.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000; // 10^15 minor units

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount does not match the FSPIOP amount pattern")]
    Syntax,
    #[error("amount has more decimals than the currency allows ({scale})")]
    TooManyDecimals { scale: u32 },
    #[error("amount exceeds the largest amount the hub accepts")]
    TooLarge,
    #[error("amount must be greater than zero")]
    Zero,
}

/// Number of minor-unit digits of a currency (ISO 4217). Unlisted codes use 2.
pub fn currency_scale(currency: Currency) -> u32 {
    match currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// Parses an FSPIOP `Amount` (`^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$`) into minor
/// units of `currency`. Zero is refused: a transfer must move something.
pub fn parse_amount(text: &str, currency: Currency) -> Result<i64, AmountError> {
    let scale = currency_scale(currency);
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let int_ok = int_part == "0"
        || (!int_part.is_empty()
            && int_part.len() <= 18
            && int_part.as_bytes()[0] != b'0'
            && int_part.bytes().all(|b| b.is_ascii_digit()));
    if !int_ok {
        return Err(AmountError::Syntax);
    }
    let frac = match frac_part {
        None => "",
        Some(f) => {
            let ok = !f.is_empty()
                && f.len() <= 4
                && f.bytes().all(|b| b.is_ascii_digit())
                && !f.ends_with('0');
            if !ok {
                return Err(AmountError::Syntax);
            }
            f
        }
    };
    if frac.len() as u32 > scale {
        return Err(AmountError::TooManyDecimals { scale });
    }
    let mut minor: i128 = 0;
    for b in int_part.bytes().chain(frac.bytes()) {
        minor = minor * 10 + i128::from(b - b'0');
    }
    for _ in frac.len() as u32..scale {
        minor *= 10;
    }
    if minor > i128::from(AMOUNT_MINOR_MAX) {
        return Err(AmountError::TooLarge);
    }
    if minor == 0 {
        return Err(AmountError::Zero);
    }
    Ok(minor as i64)
}

/// Parses a non-negative admin amount (limits, funds, initial position). Zero is allowed.
pub fn parse_admin_amount(text: &str, currency: Currency) -> Result<i64, AmountError> {
    match parse_amount(text, currency) {
        Err(AmountError::Zero) => Ok(0),
        other => other,
    }
}

/// Formats minor units as the shortest FSPIOP amount string (`1050` USD → `"10.5"`).
pub fn format_amount(minor: i64, currency: Currency) -> String {
    let scale = currency_scale(currency);
    let negative = minor < 0;
    let magnitude = minor.unsigned_abs();
    let divisor = 10u64.pow(scale);
    let int_part = magnitude / divisor;
    let frac_part = magnitude % divisor;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&int_part.to_string());
    if frac_part != 0 {
        let frac = format!("{:0width$}", frac_part, width = scale as usize);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::new(code).expect("currency")
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_amount("10", cur("USD")), Ok(1000));
        assert_eq!(parse_amount("10.5", cur("USD")), Ok(1050));
        assert_eq!(parse_amount("0.01", cur("USD")), Ok(1));
        assert_eq!(parse_amount("7", cur("JPY")), Ok(7));
        assert_eq!(parse_amount("1.234", cur("KWD")), Ok(1234));
    }

    #[test]
    fn refuses_bad_amounts() {
        assert_eq!(parse_amount("5.0", cur("USD")), Err(AmountError::Syntax));
        assert_eq!(parse_amount("-1", cur("USD")), Err(AmountError::Syntax));
        assert_eq!(parse_amount("01", cur("USD")), Err(AmountError::Syntax));
        assert_eq!(parse_amount("1.", cur("USD")), Err(AmountError::Syntax));
        assert_eq!(
            parse_amount("1.12345", cur("USD")),
            Err(AmountError::Syntax)
        );
        assert_eq!(
            parse_amount("1.123", cur("USD")),
            Err(AmountError::TooManyDecimals { scale: 2 })
        );
        assert_eq!(
            parse_amount("1.5", cur("JPY")),
            Err(AmountError::TooManyDecimals { scale: 0 })
        );
        assert_eq!(parse_amount("0", cur("USD")), Err(AmountError::Zero));
        assert_eq!(
            parse_amount("999999999999999999", cur("USD")),
            Err(AmountError::TooLarge)
        );
        assert_eq!(parse_amount("1e5", cur("USD")), Err(AmountError::Syntax));
    }

    #[test]
    fn formats_round_trip() {
        for (minor, text) in [
            (1050, "10.5"),
            (1000, "10"),
            (1, "0.01"),
            (0, "0"),
            (-250, "-2.5"),
        ] {
            assert_eq!(format_amount(minor, cur("USD")), text);
        }
        assert_eq!(format_amount(1234, cur("KWD")), "1.234");
    }
}
