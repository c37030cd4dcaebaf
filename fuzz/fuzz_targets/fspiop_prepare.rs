//! `POST /transfers`: headers and body → `prepare_command` → an engine `Prepare` or an
//! FSPIOP refusal. See fuzz/README.md for what is asserted.
#![no_main]

mod common;

use common::{check_refusal, split, NOW_MS};
use engine::ids::FspId;
use engine::money::{format_amount, parse_amount, AMOUNT_MINOR_MAX};
use gateway::fspiop::{body_hash, encode_digest, parse_object, Stash};
use gateway::limits::PREPARE_EXPIRATION_MS_MAX;
use gateway::transfers::prepare_command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = split(data, false);
    let get = |name: &str| request.get(name);
    let result = prepare_command(&get, request.body, NOW_MS);
    assert_eq!(
        result,
        prepare_command(&get, request.body, NOW_MS),
        "validation is a pure function of the request"
    );
    let prepare = match result {
        Ok(prepare) => prepare,
        Err(e) => return check_refusal(&e),
    };
    // The command says what the request said, within the hub's bounds.
    assert!((1..=AMOUNT_MINOR_MAX).contains(&prepare.amount));
    assert_eq!(
        parse_amount(
            &format_amount(prepare.amount, prepare.currency),
            prepare.currency
        ),
        Ok(prepare.amount)
    );
    assert_ne!(prepare.payer, prepare.payee);
    let source = get("fspiop-source").and_then(|s| FspId::new(&s));
    assert_eq!(Some(prepare.payer), source, "the payer is FSPIOP-Source");
    assert!(prepare.expiration_ms > NOW_MS);
    assert!(prepare.expiration_ms - NOW_MS <= PREPARE_EXPIRATION_MS_MAX);
    let map = parse_object(request.body).expect("an accepted body is a JSON object");
    assert_eq!(
        map["transferId"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some(prepare.transfer_id.as_str())
    );
    assert_eq!(
        map["condition"].as_str().map(|c| c.len()),
        Some(encode_digest(&prepare.condition).len())
    );
    assert_eq!(prepare.body_hash, body_hash(&map));
    // The stash passes the request on unchanged.
    let stash = Stash::decode(&prepare.payload).expect("the payload is a stash");
    assert_eq!(stash.body.as_bytes(), request.body);
    assert!(stash.headers.iter().any(|(n, _)| n == "fspiop-source"));
    // The same JSON written canonically (sorted keys, no spaces) is the same request: an
    // accepted body has strings and objects only, no numbers to re-round.
    let canonical = serde_json::to_vec(&map).expect("a map serialises");
    let again = prepare_command(&get, &canonical, NOW_MS).expect("the canonical body is valid");
    assert_eq!(again.body_hash, prepare.body_hash);
    assert_eq!(
        (
            again.transfer_id,
            again.amount,
            again.currency,
            again.condition,
            again.expiration_ms
        ),
        (
            prepare.transfer_id,
            prepare.amount,
            prepare.currency,
            prepare.condition,
            prepare.expiration_ms
        )
    );
});
