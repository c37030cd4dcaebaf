//! Amount parsing: FSPIOP amounts (`parse_amount`, `money_field`), admin amounts
//! (`parse_admin_amount`, `parse_admin_decimal`, `NumberTexts`), and `format_amount`.
//! The first byte picks a currency (scales 0, 2, 3, 4), the rest is the text.
#![no_main]

use engine::ids::Currency;
use engine::money::{
    currency_scale, format_amount, parse_admin_amount, parse_amount, AmountError, AMOUNT_MINOR_MAX,
};
use gateway::fspiop::{money_field, parse_admin_decimal, parse_object, NumberTexts};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const CURRENCIES: [&str; 6] = ["USD", "JPY", "KWD", "CLF", "XOF", "EUR"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let code = CURRENCIES[usize::from(pick) % CURRENCIES.len()];
    let currency = Currency::new(code).expect("a listed currency");
    let scale = currency_scale(currency);

    // Any 8 bytes as minor units: the shortest text of a valid amount parses back.
    if let Some(word) = rest.get(..8) {
        let minor = i64::from_le_bytes(word.try_into().expect("8 bytes"));
        let minor = minor.rem_euclid(AMOUNT_MINOR_MAX + 1);
        let text = format_amount(minor, currency);
        if minor == 0 {
            assert_eq!(parse_amount(&text, currency), Err(AmountError::Zero));
        } else {
            assert_eq!(parse_amount(&text, currency), Ok(minor), "{text}");
        }
        assert_eq!(parse_admin_amount(&text, currency), Ok(minor), "{text}");
        assert_eq!(parse_admin_decimal(&text, currency), Ok(minor), "{text}");
    }

    let Ok(text) = std::str::from_utf8(rest) else {
        // Not text: the JSON paths must still refuse it calmly.
        let _ = parse_object(rest);
        let _ = NumberTexts::scan(rest);
        return;
    };

    let fspiop = parse_amount(text, currency);
    if let Ok(minor) = fspiop {
        assert!((1..=AMOUNT_MINOR_MAX).contains(&minor));
        // The FSPIOP pattern has one text per value: formatting gives the text back.
        assert_eq!(format_amount(minor, currency), text);
        // An amount the FSPIOP API accepts is one the admin API reads the same.
        assert_eq!(parse_admin_amount(text, currency), Ok(minor));
        assert_eq!(parse_admin_decimal(text, currency), Ok(minor));
    }
    if let Err(AmountError::TooManyDecimals { scale: s }) = fspiop {
        assert_eq!(s, scale);
    }
    match parse_admin_decimal(text, currency) {
        Ok(minor) => {
            assert!((0..=AMOUNT_MINOR_MAX).contains(&minor), "{text}: {minor}");
            let canonical = format_amount(minor, currency);
            assert_eq!(parse_admin_decimal(&canonical, currency), Ok(minor));
            assert_eq!(parse_admin_amount(&canonical, currency), Ok(minor));
        }
        Err(why) => assert!(!why.is_empty()),
    }

    // The same text inside an FSPIOP money object.
    let mut map = Map::new();
    map.insert("amount".into(), json!({"amount": text, "currency": code}));
    let field = money_field(&map, "amount");
    assert_eq!(field.as_ref().ok().map(|(_, m)| *m), fspiop.ok());
    if let Ok((c, _)) = field {
        assert_eq!(c, currency);
    }
    if let Err(e) = &field {
        assert_eq!((e.status, e.code), (400, 3100));
    }

    // The text as a JSON body: money_field and the exact number scan never panic, and
    // the scan finds the literal text of every top-level number.
    let body = rest;
    if let Ok(map) = parse_object(body) {
        if let Ok((c, minor)) = money_field(&map, "amount") {
            let inner = map["amount"]["amount"].as_str().expect("checked string");
            assert_eq!(parse_amount(inner, c), Ok(minor));
        }
        let texts = NumberTexts::scan(body);
        for (key, value) in &map {
            if let Value::Number(number) = value {
                let literal = texts.get(&[key.as_str()]);
                let parsed: Option<Value> = literal.and_then(|t| serde_json::from_str(t).ok());
                assert_eq!(
                    parsed.as_ref().and_then(Value::as_f64),
                    number.as_f64(),
                    "{key}: {literal:?}"
                );
            }
        }
    } else {
        let _ = NumberTexts::scan(body);
    }
});
