//! `PUT /transfers/{ID}` and `PUT /transfers/{ID}/error`: the first head line is the path,
//! then headers and body → `fulfil_command` / `reject_command`. See fuzz/README.md.
#![no_main]

mod common;

use common::{check_refusal, split, NOW_MS};
use engine::ids::{FspId, TransferId};
use gateway::fspiop::{body_hash, encode_digest, parse_datetime, parse_object, Stash};
use gateway::transfers::{fulfil_command, reject_command, PutCommand};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = split(data, true);
    let get = |name: &str| request.get(name);
    let path = request.first_line.trim();
    let path = path.strip_prefix("/transfers/").unwrap_or(path);
    let source = get("fspiop-source").and_then(|s| FspId::new(&s));
    if let Some(id) = path.strip_suffix("/error") {
        let result = reject_command(&get, id, request.body);
        assert_eq!(result, reject_command(&get, id, request.body));
        match result {
            Err(e) => check_refusal(&e),
            Ok(reject) => {
                assert_eq!(Some(reject.transfer_id), TransferId::parse(id));
                assert_eq!(Some(reject.source), source);
                assert!((1000..=9999).contains(&reject.error_code));
                let map = parse_object(request.body).expect("accepted body is an object");
                assert_eq!(reject.body_hash, body_hash(&map));
                let stash = Stash::decode(&reject.payload).expect("payload is a stash");
                assert_eq!(stash.body.as_bytes(), request.body);
            }
        }
        return;
    }
    let id = path;
    let result = fulfil_command(&get, id, request.body, NOW_MS);
    assert_eq!(result, fulfil_command(&get, id, request.body, NOW_MS));
    let command = match result {
        Ok(command) => command,
        Err(e) => return check_refusal(&e),
    };
    let map = parse_object(request.body).expect("accepted body is an object");
    let state = map["transferState"].as_str();
    match command {
        PutCommand::Fulfil(fulfil) => {
            assert_eq!(Some(fulfil.transfer_id), TransferId::parse(id));
            assert_eq!(Some(fulfil.source), source);
            assert!(matches!(state, Some("COMMITTED" | "RESERVED")));
            assert_eq!(fulfil.notify_payee, state == Some("RESERVED"));
            let completed = match map.get("completedTimestamp") {
                None => NOW_MS,
                Some(v) => v
                    .as_str()
                    .and_then(parse_datetime)
                    .expect("checked timestamp"),
            };
            assert_eq!(fulfil.completed_ms, completed);
            // The digest text decodes to 32 bytes that encode back to the canonical text
            // (the same text up to the last character's padding bits).
            let text = map["fulfilment"].as_str().expect("fulfilment text");
            let canonical = encode_digest(&fulfil.fulfilment);
            assert_eq!(text.len(), 43);
            assert_eq!(text[..42], canonical[..42]);
            assert_eq!(fulfil.body_hash, body_hash(&map));
            let stash = Stash::decode(&fulfil.payload).expect("payload is a stash");
            assert_eq!(stash.body.as_bytes(), request.body);
        }
        PutCommand::Reject(reject) => {
            assert_eq!(state, Some("ABORTED"));
            assert_eq!(Some(reject.transfer_id), TransferId::parse(id));
            assert_eq!(reject.error_code, 5000);
            assert!(reject.payload.is_empty());
        }
    }
});
