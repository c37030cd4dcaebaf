//! Golden bytes of every stored record kind (see `engine::codec`).
//!
//! The stored bodies are positional MessagePack: a struct is the array of its fields in
//! declaration order. Reordering, adding, removing or retyping a field of a stored type,
//! or renaming an enum variant, silently changes what is on disk, and records written by
//! an older build would be misread or refused. Each test here encodes a fixed sample of
//! one record kind, with every enum variant that can be stored, and compares it with the
//! bytes committed below; then decodes those bytes back into the sample. A red test here
//! means the format changed: either undo the change, or give the kind a new format
//! version (the module doc of `engine::codec` says how) and new golden bytes.
//!
//! The golden bytes are split into labelled segments only to make a difference easy to
//! find: the test compares the whole record. On a mismatch it names the segment where the
//! first difference is and prints the new bytes in the same layout.

use engine::codec::{self, CodecError, RecordKind, ENVELOPE_BYTES};
use engine::command::{
    Admin, Command, ErrorCode, Event, FinishedTransfer, Fulfil, Parties, PeerMessage, Prepare,
    Reject, TransferState,
};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::machine::account::{
    AccountEntry, Bank, BankMode, Decrease, FundsRecord, HomeRequest, OpenTransfer, Parked, Slice,
};
use engine::machine::settlement::{
    HubBalances, SettleStep, SettlementBook, StepRecord, WindowNets,
};
use engine::machine::{Inbound, Outgoing, ParticipantFlags, PartitionState};
use engine::settlement::{
    Pending, SettlementAccount, SettlementRecord, SettlementState, StateChange, WindowRecord,
    WindowState,
};
use engine::storage::archive::RunMeta;
use engine::storage::{SnapshotRecord, Storage, Store, WalRecord, WalRecordRef};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

// ----- golden bytes -------------------------------------------------------------------
//
// Reading them: `c1 01 01` is the envelope (magic, kind tag 1 = WAL batch, version 1);
// `93` an array of three (a struct's fields), `4d` 77, `dc 0012` an array of 18 inputs;
// `81 a7 "Prepare" ...` an enum variant, a one-entry map from its name to its fields;
// `c4 20 ...` 32 raw bytes (`bin`); `d9 24 ...` a 36-byte string; `c0` nil (`None`).

const WAL_BATCH: &[(&str, &str)] = &[
    ("framing", "c10101934d03dc0017"),
    ("Command::Prepare", "9281a75072657061726592cf0000018bcfe5680099d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039c420a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7cf0000018bcfe65260c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc4077b2270223a317dc0"),
    ("Command::Fulfil, with the archived record looked up", "9281a646756c66696c92cf0000018bcfe5680097d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796565667370c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8c3c4105d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5dc4027b7d9995d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039a9436f6d6d6974746564c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8c0c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc4105d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5dcf0000018bcfe56ddc29"),
    ("Command::Reject", "9281a652656a65637492cf0000018bcfe5680095d92430303030303030302d303030302d343030302d383030302d303030303030303030303032a87061796565667370cd13edc4105e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e90c0"),
    ("Command::Tick", "9281a45469636b91cf0000018bcfe56800c0"),
    ("Admin::CreateAccount", "9281a541646d696e93cf0000018bcfe568000181ad4372656174654163636f756e749192a8706179657266737093555344c0"),
    ("Admin::SetActive", "9281a541646d696e93cf0000018bcfe568000281a953657441637469766592a87061796572667370c2c0"),
    ("Admin::InitialPositionAndLimits", "9281a541646d696e93cf0000018bcfe568000381b8496e697469616c506f736974696f6e416e644c696d6974739392a870617965726673709355534400ce000f4240c0"),
    ("Admin::SetNdc", "9281a541646d696e93cf0000018bcfe568000481a65365744e64639292a8706179657266737093555344ce001e8480c0"),
    ("Admin::FundsIn", "9281a541646d696e93cf0000018bcfe568000581a746756e6473496e9392a8706179657266737093555344ce004c4b40d92430303030303030302d303030302d343030302d383030302d303030303030303030313031c0"),
    ("Admin::FundsOutReserve", "9281a541646d696e93cf0000018bcfe568000681af46756e64734f7574526573657276659392a8706179657266737093555344cd012cd92430303030303030302d303030302d343030302d383030302d303030303030303030313032c0"),
    ("Admin::FundsOutCommit", "9281a541646d696e93cf0000018bcfe568000781ae46756e64734f7574436f6d6d69749292a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d303030303030303030313032c0"),
    ("Admin::FundsOutAbort", "9281a541646d696e93cf0000018bcfe568000881ad46756e64734f757441626f72749292a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d303030303030303030313033c0"),
    ("Admin::CloseWindow", "9281a541646d696e93cf0000018bcfe568000981ab436c6f736557696e646f779104c0"),
    ("Admin::SetAccountActive", "9281a541646d696e93cf0000018bcfe568000d81b05365744163636f756e744163746976659292a8706179657266737093555344c2c0"),
    ("Admin::Settle, reserve", "9281a541646d696e93cf0000018bcfe568000a81a6536574746c659492a870617965726673709355534402a752657365727665d1fd44c0"),
    ("Admin::Settle, commit", "9281a541646d696e93cf0000018bcfe568000b81a6536574746c659492a870617965726673709355534402a6436f6d6d6974cd02bcc0"),
    ("Admin::Settle, abort", "9281a541646d696e93cf0000018bcfe568000c81a6536574746c659492a870617965726673709355534402a541626f727400c0"),
    ("PeerMessage::Borrow", "9281a45065657293030181a6426f72726f779492a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d303030303030303030303031cd3039cdc350c0"),
    ("PeerMessage::Grant", "9281a45065657293030281a54772616e749592a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d303030303030303030303031cdf389c304c0"),
    ("PeerMessage::Deny", "9281a45065657293030381a444656e799392a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d303030303030303030303032aa50617965724c696d6974c0"),
    ("PeerMessage::Return, answering a recall", "9281a45065657293030481a652657475726e9392a8706179657266737093555344cd032005c0"),
    ("PeerMessage::Return, idle", "9281a45065657293030581a652657475726e9392a87061796572667370935553445ac0c0"),
    ("PeerMessage::Recall", "9281a45065657293030681a6526563616c6c9292a870617965726673709355534406c0"),
];

const SNAPSHOT: &[(&str, &str)] = &[
    ("framing", "c102019650"),
    ("state (opaque bytes)", "c40f706172746974696f6e207374617465"),
    ("framing", "91"),
    ("Outgoing", "93020c81a6426f72726f779492a8706179657266737093555344d92430303030303030302d303030302d343030302d383030302d30303030303030303030303463cd03e8"),
    ("framing", "92"),
    ("FinishedTransfer, committed", "9995d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039a9436f6d6d6974746564c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8c0c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc4105d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5dcf0000018bcfe56ddc29"),
    ("FinishedTransfer, aborted", "9995d92430303030303030302d303030302d343030302d383030302d303030303030303030303032a87061796572667370a8706179656566737093555344cd02bca741626f72746564c0c081a55061796565cd13edc4103d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3dc0cf0000018bcfe56fd02a"),
    ("framing", "dc0011"),
    ("Event::Reserved", "920181a852657365727665649395d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039cf0000018bcfe65260c4077b2270223a317d"),
    ("Event::PrepareRefused", "920281ae50726570617265526566757365649395d92430303030303030302d303030302d343030302d383030302d303030303030303030303034a87061796572667370a870617965656673709355534463ae50617965724c697175696469747990"),
    ("Event::Committed", "920381a9436f6d6d69747465649595d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8c3c4027b7d"),
    ("Event::Aborted", "920481a741626f727465649495d92430303030303030302d303030302d343030302d383030302d303030303030303030303032a87061796572667370a8706179656566737093555344cd02bc81a55061796565cd13edc290"),
    ("Event::StateResent, committed", "920581ab5374617465526573656e749595d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039a87061796572667370a9436f6d6d6974746564c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8"),
    ("Event::StateResent, received", "920681ab5374617465526573656e749595d92430303030303030302d303030302d343030302d383030302d303030303030303030303033a87061796572667370a87061796565667370935553440aa87061796572667370a85265636569766564c0c0"),
    ("Event::StateResent, reserved", "920781ab5374617465526573656e749595d92430303030303030302d303030302d343030302d383030302d303030303030303030303033a87061796572667370a87061796565667370935553440aa87061796572667370a85265736572766564c0c0"),
    ("Event::StateResent, aborted", "920881ab5374617465526573656e749595d92430303030303030302d303030302d343030302d383030302d303030303030303030303033a87061796572667370a87061796565667370935553440aa87061796572667370a741626f72746564c0c0"),
    ("Event::AdminDone, done", "920981a941646d696e446f6e659305c0a0"),
    ("Event::AdminDone, refused", "920a81a941646d696e446f6e659306aa56616c69646174696f6ed920616d6f756e74206d7573742062652067726561746572207468616e207a65726f"),
    ("ErrorCode::Internal", "920b81ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370a8496e7465726e616c"),
    ("ErrorCode::ServiceUnavailable", "920c81ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370b253657276696365556e617661696c61626c65"),
    ("ErrorCode::GenericClient", "920d81ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370ad47656e65726963436c69656e74"),
    ("ErrorCode::ModifiedRequest", "920e81ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370af4d6f64696669656452657175657374"),
    ("ErrorCode::TransferNotFound", "920f81ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370b05472616e736665724e6f74466f756e64"),
    ("ErrorCode::TransferExpired", "921081ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370af5472616e7366657245787069726564"),
    ("ErrorCode::PayerLimit", "921181ae526571756573745265667573656493d92430303030303030302d303030302d343030302d383030302d303030303030303030303039a87061796565667370aa50617965724c696d6974"),
    ("framing", "12"),
];

/// Format 2: the settlement book appended.
const PARTITION_STATE: &[(&str, &str)] = &[
    ("framing", "c103029b020001509292a8706179656566737091c292a8706179657266737091c393"),
    ("account payeefsp USD", "9292a87061796565667370935553449298c41000000000000000000000000000000000c410000000000000000000000000000003e8c41000000000000000000000000000000000c2009000c410000000000000000000000000000000009ac41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c2ab4469737472696275746564009080"),
    ("account payerfsp EUR", "9292a87061796572667370934555529298c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c3009000c410000000000000000000000000000000009ac41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c2ab43656e7472616c69736564009080"),
    ("account payerfsp USD", "9292a87061796572667370935553449298c41000000000000000000000000000009317c410fffffffffffffffffffffffffffffc18c41000000000000000000000000000003039c205919299d92430303030303030302d303030302d343030302d383030302d303030303030303030303034a87061796572667370a870617965656673709355534463c420a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8cf0000018bcfe67970c4103e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3ec4077b2270223a317dc3cf0000018bcfe56800c410000000000000000000000000000030399ac410000000000000000000000000000dbba0c410000000000000000000000000001e8480c410000000000000000000000000004c4b40c4100000000000000000000000000000012cc410ffffffffffffffffffffffffffffffd8c381a9526563616c6c696e6792069100069581a6426f72726f779500d92430303030303030302d303030302d343030302d383030302d30303030303030303030303463cd03e80581a84465637265617365920b81a65365744e646391ce0016e36081a84465637265617365920c81b8496e697469616c506f736974696f6e416e644c696d697473920ace000f424081a84465637265617365920d81af46756e64734f75745265736572766592ccc8d92430303030303030302d303030302d343030302d383030302d30303030303030303031303481a84465637265617365920e81ad536574746c65526573657276659203d1fd4484d92430303030303030302d303030302d343030302d383030302d30303030303030303031303181a2496e91ce004c4b40d92430303030303030302d303030302d343030302d383030302d30303030303030303031303281ab4f7574526573657276656491cd012cd92430303030303030302d303030302d343030302d383030302d30303030303030303031303381ac4f7574436f6d6d69747465649114d92430303030303030302d303030302d343030302d383030302d30303030303030303031303581aa4f757441626f72746564910a"),
    ("framing", "92"),
    ("open transfer 00000000-0000-4000-8000-000000000001", "92d92430303030303030302d303030302d343030302d383030302d3030303030303030303030319595d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039c420a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7cf0000018bcfe65260c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc3"),
    ("open transfer 00000000-0000-4000-8000-000000000004", "92d92430303030303030302d303030302d343030302d383030302d3030303030303030303030349595d92430303030303030302d303030302d343030302d383030302d303030303030303030303034a87061796572667370a870617965656673709355534463c420a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8cf0000018bcfe67970c4103e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3ec2"),
    ("framing", "9192009206920809910c950382029380008003938292a8706179656566737093555344c410fffffffffffffffffffffffffffffc1892a8706179657266737093555344c410000000000000000000000000000003e8018193555344c410000000000000000000000000000003e88292a8706179656566737093555344c410000000000000000000000000000007d092a8706179657266737093555344c410fffffffffffffffffffffffffffff830819355534493c410000000000000000000000000000002bcc410ffffffffffffffffffffffffffffffcec410ffffffffffffffffffffffffffb3b4c084920192a870617965656673709355534481a9436f6d6d697474656491d1f830920192a870617965726673709355534481a9436f6d6d697474656491cd07d0920292a870617965726673709355534481a741626f727465649132920392a870617965656673709355534481a8526573657276656491d1fd449192a8706179656566737093555344"),
];

/// Format 1 (before settlement), kept to show it still decodes.
const PARTITION_STATE_V1: &[(&str, &str)] = &[
    ("framing", "c1030199010001509292a8706179656566737091c292a8706179657266737091c393"),
    ("account payeefsp USD", "9292a87061796565667370935553449298c41000000000000000000000000000000000c410000000000000000000000000000003e8c41000000000000000000000000000000000c2009000c410000000000000000000000000000000009ac41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c2ab4469737472696275746564009080"),
    ("account payerfsp EUR", "9292a87061796572667370934555529298c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c3009000c410000000000000000000000000000000009ac41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c41000000000000000000000000000000000c2ab43656e7472616c69736564009080"),
    ("account payerfsp USD", "9292a87061796572667370935553449298c41000000000000000000000000000009317c410fffffffffffffffffffffffffffffc18c41000000000000000000000000000003039c205919299d92430303030303030302d303030302d343030302d383030302d303030303030303030303034a87061796572667370a870617965656673709355534463c420a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8cf0000018bcfe67970c4103e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3ec4077b2270223a317dc3cf0000018bcfe56800c410000000000000000000000000000030399ac410000000000000000000000000000dbba0c410000000000000000000000000001e8480c410000000000000000000000000004c4b40c4100000000000000000000000000000012cc410ffffffffffffffffffffffffffffffd8c381a9526563616c6c696e6792069100069481a6426f72726f779500d92430303030303030302d303030302d343030302d383030302d30303030303030303030303463cd03e80581a84465637265617365920b81a65365744e646391ce0016e36081a84465637265617365920c81b8496e697469616c506f736974696f6e416e644c696d697473920ace000f424081a84465637265617365920d81af46756e64734f75745265736572766592ccc8d92430303030303030302d303030302d343030302d383030302d30303030303030303031303484d92430303030303030302d303030302d343030302d383030302d30303030303030303031303181a2496e91ce004c4b40d92430303030303030302d303030302d343030302d383030302d30303030303030303031303281ab4f7574526573657276656491cd012cd92430303030303030302d303030302d343030302d383030302d30303030303030303031303381ac4f7574436f6d6d69747465649114d92430303030303030302d303030302d343030302d383030302d30303030303030303031303581aa4f757441626f72746564910a"),
    ("framing", "92"),
    ("open transfer 00000000-0000-4000-8000-000000000001", "92d92430303030303030302d303030302d343030302d383030302d3030303030303030303030319595d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039c420a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7cf0000018bcfe65260c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc3"),
    ("open transfer 00000000-0000-4000-8000-000000000004", "92d92430303030303030302d303030302d343030302d383030302d3030303030303030303030349595d92430303030303030302d303030302d343030302d383030302d303030303030303030303034a87061796572667370a870617965656673709355534463c420a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8cf0000018bcfe67970c4103e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3ec2"),
    ("framing", "9192009206920809910c"),
];

const ARCHIVE_COMMITTED: &[(&str, &str)] = &[
    ("framing", "c1040199"),
    ("Parties", "95d92430303030303030302d303030302d343030302d383030302d303030303030303030303031a87061796572667370a8706179656566737093555344cd3039"),
    ("framing", "a9436f6d6d6974746564c420f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1cf0000018bcfe56be8c0c4103c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3cc4105d5d5d5d5d5d5d5d5d5d5d5d5d5d5d5dcf0000018bcfe56ddc29"),
];

const ARCHIVE_ABORTED: &[(&str, &str)] = &[
    ("framing", "c1040199"),
    ("Parties", "95d92430303030303030302d303030302d343030302d383030302d303030303030303030303032a87061796572667370a8706179656566737093555344cd02bc"),
    ("framing", "a741626f72746564c0c081a55061796565cd13edc4103d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3dc0cf0000018bcfe56fd02a"),
];

const SETTLEMENT_WINDOW: &[(&str, &str)] = &[
    ("framing", "c106019804b150656e64696e67536574746c656d656e74aa656e64206f6620646179cf0000018bcfe56800cf0000018bcff323a0c2938292a8706179656566737093555344c410ffffffffffffffffffffffffffffcfc792a8706179657266737093555344c41000000000000000000000000000003039028193555344c41000000000000000000000000000004e2002"),
];

const SETTLEMENT: &[(&str, &str)] = &[
    ("framing", "c107019a02ab44454645525245444e4554a56461696c79b150656e64696e67536574746c656d656e749203048392a870617965656673709355534494d1cfc7b350735472616e73666572735265636f72646564a473746570a57265662d3192a87061796572667370934555529400b150656e64696e67536574746c656d656e74a473746570a57265662d3192a870617965726673709355534494cd3039b350735472616e73666572735265736572766564a473746570a57265662d31cf0000018bcfe56800cf0000018bcfe6eea093919292a8706179656566737093555344b350735472616e73666572735265736572766564a772657365727665c09793b150656e64696e67536574746c656d656e74a86368616e67652030cf0000018bcfe5680093b350735472616e73666572735265636f72646564a86368616e67652031cf0000018bcfe5680193b350735472616e73666572735265736572766564a86368616e67652032cf0000018bcfe5680293b450735472616e7366657273436f6d6d6974746564a86368616e67652033cf0000018bcfe5680393a8536574746c696e67a86368616e67652034cf0000018bcfe5680493a7536574746c6564a86368616e67652035cf0000018bcfe5680593a741626f72746564a86368616e67652036cf0000018bcfe56806"),
];

const ARCHIVE_RUN_META: &[(&str, &str)] = &[(
    "framing",
    "c10501960901cd03e8cf0000018bcfe56800cf0000018bcff323a0920304",
)];

// ----- samples ------------------------------------------------------------------------

fn fsp(name: &str) -> FspId {
    FspId::new(name).expect("valid participant name")
}

fn currency(code: &str) -> Currency {
    Currency::new(code).expect("valid currency")
}

fn account(name: &str, code: &str) -> AccountKey {
    AccountKey::new(fsp(name), currency(code))
}

fn tid(n: u32) -> TransferId {
    TransferId::parse(&format!("00000000-0000-4000-8000-{n:012}")).expect("valid transfer id")
}

fn parties(n: u32, amount: i64) -> Parties {
    Parties {
        transfer_id: tid(n),
        payer: fsp("payerfsp"),
        payee: fsp("payeefsp"),
        currency: currency("USD"),
        amount,
    }
}

fn prepare(n: u32) -> Prepare {
    Prepare {
        transfer_id: tid(n),
        payer: fsp("payerfsp"),
        payee: fsp("payeefsp"),
        currency: currency("USD"),
        amount: 12_345,
        condition: [0xA7; 32],
        expiration_ms: 1_700_000_060_000,
        body_hash: [0x3C; 16],
        payload: b"{\"p\":1}".to_vec(),
    }
}

fn committed() -> FinishedTransfer {
    FinishedTransfer {
        parties: parties(1, 12_345),
        state: TransferState::Committed,
        fulfilment: Some([0xF1; 32]),
        completed_ms: Some(1_700_000_001_000),
        error_code: None,
        prepare_hash: [0x3C; 16],
        final_hash: Some([0x5D; 16]),
        finished_ms: 1_700_000_001_500,
        finished_batch: 41,
    }
}

fn aborted() -> FinishedTransfer {
    FinishedTransfer {
        parties: parties(2, 700),
        state: TransferState::Aborted,
        fulfilment: None,
        completed_ms: None,
        error_code: Some(ErrorCode::Payee(5101)),
        prepare_hash: [0x3D; 16],
        final_hash: None,
        finished_ms: 1_700_000_002_000,
        finished_batch: 42,
    }
}

/// Every `Command`, `Admin` and `PeerMessage` variant, one input each, with the archived
/// record the runtime looked up for one of them.
fn wal_inputs() -> Vec<(&'static str, Command, Option<FinishedTransfer>)> {
    let usd = account("payerfsp", "USD");
    let now_ms = 1_700_000_000_000;
    let admin = |request_id: u64, admin: Admin| Command::Admin {
        now_ms,
        request_id,
        admin,
    };
    let peer = |seq: u64, message: PeerMessage| Command::Peer {
        from: 3,
        seq,
        message,
    };
    vec![
        (
            "Command::Prepare",
            Command::Prepare {
                now_ms,
                prepare: prepare(1),
            },
            None,
        ),
        (
            "Command::Fulfil, with the archived record looked up",
            Command::Fulfil {
                now_ms,
                fulfil: Fulfil {
                    transfer_id: tid(1),
                    source: fsp("payeefsp"),
                    fulfilment: [0xF1; 32],
                    completed_ms: 1_700_000_001_000,
                    notify_payee: true,
                    body_hash: [0x5D; 16],
                    payload: b"{}".to_vec(),
                },
            },
            Some(committed()),
        ),
        (
            "Command::Reject",
            Command::Reject {
                now_ms,
                reject: Reject {
                    transfer_id: tid(2),
                    source: fsp("payeefsp"),
                    error_code: 5101,
                    body_hash: [0x5E; 16],
                    payload: Vec::new(),
                },
            },
            None,
        ),
        ("Command::Tick", Command::Tick { now_ms }, None),
        (
            "Admin::CreateAccount",
            admin(1, Admin::CreateAccount { account: usd }),
            None,
        ),
        (
            "Admin::SetActive",
            admin(
                2,
                Admin::SetActive {
                    fsp: fsp("payerfsp"),
                    active: false,
                },
            ),
            None,
        ),
        (
            "Admin::InitialPositionAndLimits",
            admin(
                3,
                Admin::InitialPositionAndLimits {
                    account: usd,
                    position: 0,
                    ndc: 1_000_000,
                },
            ),
            None,
        ),
        (
            "Admin::SetNdc",
            admin(
                4,
                Admin::SetNdc {
                    account: usd,
                    ndc: 2_000_000,
                },
            ),
            None,
        ),
        (
            "Admin::FundsIn",
            admin(
                5,
                Admin::FundsIn {
                    account: usd,
                    amount: 5_000_000,
                    funds_id: tid(101),
                },
            ),
            None,
        ),
        (
            "Admin::FundsOutReserve",
            admin(
                6,
                Admin::FundsOutReserve {
                    account: usd,
                    amount: 300,
                    funds_id: tid(102),
                },
            ),
            None,
        ),
        (
            "Admin::FundsOutCommit",
            admin(
                7,
                Admin::FundsOutCommit {
                    account: usd,
                    funds_id: tid(102),
                },
            ),
            None,
        ),
        (
            "Admin::FundsOutAbort",
            admin(
                8,
                Admin::FundsOutAbort {
                    account: usd,
                    funds_id: tid(103),
                },
            ),
            None,
        ),
        (
            "Admin::CloseWindow",
            admin(9, Admin::CloseWindow { window: 4 }),
            None,
        ),
        (
            "Admin::SetAccountActive",
            admin(
                13,
                Admin::SetAccountActive {
                    account: usd,
                    active: false,
                },
            ),
            None,
        ),
        (
            "Admin::Settle, reserve",
            admin(
                10,
                Admin::Settle {
                    account: usd,
                    settlement: 2,
                    step: SettleStep::Reserve,
                    net: -700,
                },
            ),
            None,
        ),
        (
            "Admin::Settle, commit",
            admin(
                11,
                Admin::Settle {
                    account: usd,
                    settlement: 2,
                    step: SettleStep::Commit,
                    net: 700,
                },
            ),
            None,
        ),
        (
            "Admin::Settle, abort",
            admin(
                12,
                Admin::Settle {
                    account: usd,
                    settlement: 2,
                    step: SettleStep::Abort,
                    net: 0,
                },
            ),
            None,
        ),
        (
            "PeerMessage::Borrow",
            peer(
                1,
                PeerMessage::Borrow {
                    account: usd,
                    transfer_id: tid(1),
                    amount: 12_345,
                    extra: 50_000,
                },
            ),
            None,
        ),
        (
            "PeerMessage::Grant",
            peer(
                2,
                PeerMessage::Grant {
                    account: usd,
                    transfer_id: tid(1),
                    amount: 62_345,
                    distributed: true,
                    round: 4,
                },
            ),
            None,
        ),
        (
            "PeerMessage::Deny",
            peer(
                3,
                PeerMessage::Deny {
                    account: usd,
                    transfer_id: tid(2),
                    code: ErrorCode::PayerLimit,
                },
            ),
            None,
        ),
        (
            "PeerMessage::Return, answering a recall",
            peer(
                4,
                PeerMessage::Return {
                    account: usd,
                    amount: 800,
                    round: Some(5),
                },
            ),
            None,
        ),
        (
            "PeerMessage::Return, idle",
            peer(
                5,
                PeerMessage::Return {
                    account: usd,
                    amount: 90,
                    round: None,
                },
            ),
            None,
        ),
        (
            "PeerMessage::Recall",
            peer(
                6,
                PeerMessage::Recall {
                    account: usd,
                    round: 6,
                },
            ),
            None,
        ),
    ]
}

fn wal_record() -> WalRecord {
    WalRecord {
        batch_seq: 77,
        epoch: 3,
        inputs: wal_inputs()
            .into_iter()
            .map(|(_, command, prior)| (command, prior))
            .collect(),
    }
}

/// Every `Event` variant, and among them every `ErrorCode` and `TransferState` variant.
fn outbox() -> Vec<(&'static str, (u64, Event))> {
    let code = |seq: u64, code: ErrorCode| {
        (
            seq,
            Event::RequestRefused {
                transfer_id: tid(9),
                to: fsp("payeefsp"),
                code,
            },
        )
    };
    let resent = |seq: u64, state: TransferState| {
        (
            seq,
            Event::StateResent {
                parties: parties(3, 10),
                to: fsp("payerfsp"),
                state,
                fulfilment: None,
                completed_ms: None,
            },
        )
    };
    vec![
        (
            "Event::Reserved",
            (
                1,
                Event::Reserved {
                    parties: parties(1, 12_345),
                    expiration_ms: 1_700_000_060_000,
                    payload: b"{\"p\":1}".to_vec(),
                },
            ),
        ),
        (
            "Event::PrepareRefused",
            (
                2,
                Event::PrepareRefused {
                    parties: parties(4, 99),
                    code: ErrorCode::PayerLiquidity,
                    payload: Vec::new(),
                },
            ),
        ),
        (
            "Event::Committed",
            (
                3,
                Event::Committed {
                    parties: parties(1, 12_345),
                    fulfilment: [0xF1; 32],
                    completed_ms: 1_700_000_001_000,
                    notify_payee: true,
                    payload: b"{}".to_vec(),
                },
            ),
        ),
        (
            "Event::Aborted",
            (
                4,
                Event::Aborted {
                    parties: parties(2, 700),
                    code: ErrorCode::Payee(5101),
                    notify_payee: false,
                    payload: Vec::new(),
                },
            ),
        ),
        (
            "Event::StateResent, committed",
            (
                5,
                Event::StateResent {
                    parties: parties(1, 12_345),
                    to: fsp("payerfsp"),
                    state: TransferState::Committed,
                    fulfilment: Some([0xF1; 32]),
                    completed_ms: Some(1_700_000_001_000),
                },
            ),
        ),
        (
            "Event::StateResent, received",
            resent(6, TransferState::Received),
        ),
        (
            "Event::StateResent, reserved",
            resent(7, TransferState::Reserved),
        ),
        (
            "Event::StateResent, aborted",
            resent(8, TransferState::Aborted),
        ),
        (
            "Event::AdminDone, done",
            (
                9,
                Event::AdminDone {
                    request_id: 5,
                    code: None,
                    message: String::new(),
                },
            ),
        ),
        (
            "Event::AdminDone, refused",
            (
                10,
                Event::AdminDone {
                    request_id: 6,
                    code: Some(ErrorCode::Validation),
                    message: "amount must be greater than zero".to_string(),
                },
            ),
        ),
        ("ErrorCode::Internal", code(11, ErrorCode::Internal)),
        (
            "ErrorCode::ServiceUnavailable",
            code(12, ErrorCode::ServiceUnavailable),
        ),
        (
            "ErrorCode::GenericClient",
            code(13, ErrorCode::GenericClient),
        ),
        (
            "ErrorCode::ModifiedRequest",
            code(14, ErrorCode::ModifiedRequest),
        ),
        (
            "ErrorCode::TransferNotFound",
            code(15, ErrorCode::TransferNotFound),
        ),
        (
            "ErrorCode::TransferExpired",
            code(16, ErrorCode::TransferExpired),
        ),
        ("ErrorCode::PayerLimit", code(17, ErrorCode::PayerLimit)),
    ]
}

fn outgoing() -> Outgoing {
    Outgoing {
        to: 2,
        seq: 12,
        message: PeerMessage::Borrow {
            account: account("payerfsp", "USD"),
            transfer_id: tid(4),
            amount: 99,
            extra: 1_000,
        },
    }
}

fn snapshot_record() -> SnapshotRecord {
    SnapshotRecord {
        batch_seq: 80,
        // Opaque here: the partition state has its own record kind and test.
        state: b"partition state".to_vec(),
        unconfirmed: vec![outgoing()],
        unarchived: vec![committed(), aborted()],
        outbox: outbox().into_iter().map(|(_, entry)| entry).collect(),
        next_event_seq: 18,
    }
}

/// A partition state with every variant of the account types (bank modes, queued home
/// requests, funds records), a reserved and a parked transfer, built field by field so
/// that it does not depend on the state machine's rules, only on its invariants.
/// The format 2 sample: the format 1 sample plus a settlement book with every step record
/// and a queued settlement reserve.
fn partition_state() -> PartitionState {
    let mut state = partition_state_v1();
    let usd = account("payerfsp", "USD");
    let payee = account("payeefsp", "USD");
    let bank = state
        .accounts
        .get_mut(&usd)
        .and_then(|entry| entry.bank.as_mut())
        .expect("the sample's USD account has a bank");
    bank.queue.push_back(HomeRequest::Decrease {
        request_id: 14,
        change: Decrease::SettleReserve {
            settlement: 3,
            net: -700,
        },
    });
    let mut open = WindowNets::default();
    open.nets.insert(usd, 1_000);
    open.nets.insert(payee, -1_000);
    open.transfers = 1;
    open.amounts.insert(usd.currency, 1_000);
    state.inactive_accounts.insert(account("payeefsp", "USD"));
    state.settlement = SettlementBook {
        open_window: 3,
        windows: BTreeMap::from([(2, WindowNets::default()), (3, open)]),
        dropped: BTreeMap::from([(usd, -2_000), (payee, 2_000)]),
        hub: BTreeMap::from([(
            usd.currency,
            HubBalances {
                multilateral: 700,
                settlement: -50,
                reconciliation: -5_000_000,
            },
        )]),
        steps: BTreeMap::from([
            ((1, usd), StepRecord::Committed { net: 2_000 }),
            ((1, payee), StepRecord::Committed { net: -2_000 }),
            ((2, usd), StepRecord::Aborted { net: 50 }),
            ((3, payee), StepRecord::Reserved { net: -700 }),
        ]),
    };
    state
        .check()
        .expect("the sample keeps the ledger invariants");
    state
}

/// The format 1 sample (before settlement).
fn partition_state_v1() -> PartitionState {
    let mut state = PartitionState::new(0, 1, Limits::default());
    let usd = account("payerfsp", "USD");
    let eur = account("payerfsp", "EUR");
    let payee = account("payeefsp", "USD");
    state
        .participants
        .insert(fsp("payerfsp"), ParticipantFlags { active: true });
    state
        .participants
        .insert(fsp("payeefsp"), ParticipantFlags { active: false });
    let reserved = OpenTransfer {
        parties: parties(1, 12_345),
        condition: [0xA7; 32],
        expiration_ms: 1_700_000_060_000,
        prepare_hash: [0x3C; 16],
        reserved: true,
    };
    let parked = OpenTransfer {
        parties: parties(4, 99),
        condition: [0xA8; 32],
        expiration_ms: 1_700_000_070_000,
        prepare_hash: [0x3E; 16],
        reserved: false,
    };
    let mut parked_prepare = prepare(4);
    parked_prepare.amount = 99;
    parked_prepare.condition = [0xA8; 32];
    parked_prepare.expiration_ms = 1_700_000_070_000;
    parked_prepare.body_hash = [0x3E; 16];
    let recalling = Bank {
        bank: 900_000,
        ndc: 2_000_000,
        liquidity: 5_000_000,
        funds_out_reserved: 300,
        base_position: -40,
        limits_set: true,
        mode: BankMode::Recalling {
            round: 6,
            waiting_for: BTreeSet::from([0]),
        },
        round: 6,
        queue: VecDeque::from([
            HomeRequest::Borrow {
                from: 0,
                transfer_id: tid(4),
                amount: 99,
                extra: 1_000,
                since_round: 5,
            },
            HomeRequest::Decrease {
                request_id: 11,
                change: Decrease::SetNdc { ndc: 1_500_000 },
            },
            HomeRequest::Decrease {
                request_id: 12,
                change: Decrease::InitialPositionAndLimits {
                    position: 10,
                    ndc: 1_000_000,
                },
            },
            HomeRequest::Decrease {
                request_id: 13,
                change: Decrease::FundsOutReserve {
                    amount: 200,
                    funds_id: tid(104),
                },
            },
        ]),
        funds: BTreeMap::from([
            (tid(101), FundsRecord::In { amount: 5_000_000 }),
            (tid(102), FundsRecord::OutReserved { amount: 300 }),
            (tid(103), FundsRecord::OutCommitted { amount: 20 }),
            (tid(105), FundsRecord::OutAborted { amount: 10 }),
        ]),
    };
    state.accounts.insert(
        usd,
        AccountEntry {
            slice: Slice {
                headroom: 37_655,
                position: -1_000,
                reserved: 12_345,
                centralised: false,
                round_seen: 5,
                parked: VecDeque::from([Parked {
                    prepare: parked_prepare,
                    borrow_sent: true,
                }]),
                last_used_ms: 1_700_000_000_000,
                recent_demand: 12_345,
            },
            bank: Some(recalling),
        },
    );
    state.accounts.insert(
        eur,
        AccountEntry {
            slice: Slice {
                centralised: true,
                ..Slice::default()
            },
            bank: Some(Bank {
                mode: BankMode::Centralised,
                ..Bank::new()
            }),
        },
    );
    state.accounts.insert(
        payee,
        AccountEntry {
            slice: Slice {
                position: 1_000,
                ..Slice::default()
            },
            bank: Some(Bank::new()),
        },
    );
    for open in [reserved, parked] {
        state
            .expiry
            .insert((open.expiration_ms, open.parties.transfer_id));
        state.transfers.insert(open.parties.transfer_id, open);
    }
    state.parked_count = 1;
    state.batch_seq = 80;
    state.inbound.insert(
        0,
        Inbound {
            watermark: 6,
            above: BTreeSet::from([8, 9]),
        },
    );
    state.outbound_seq = vec![12];
    state
        .check()
        .expect("the sample keeps the ledger invariants");
    state
}

fn run_meta() -> RunMeta {
    RunMeta {
        run: 9,
        level: 1,
        records: 1_000,
        oldest_ms: 1_700_000_000_000,
        newest_ms: 1_700_000_900_000,
        replaces: vec![3, 4],
    }
}

// ----- helpers ------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(
        text.len().is_multiple_of(2),
        "odd hex length in a golden constant"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit in a golden constant"))
        .collect()
}

fn golden_bytes(golden: &[(&str, &str)]) -> Vec<u8> {
    golden.iter().flat_map(|(_, text)| unhex(text)).collect()
}

/// The body bytes `value` has inside a record (the codec's encoding without an envelope).
fn body_of<T: Serialize>(value: &T) -> Vec<u8> {
    let bytes = codec::encode_record(RecordKind::WalBatch, value).expect("sample encodes");
    bytes[ENVELOPE_BYTES..].to_vec()
}

/// Cuts `actual` at the labelled parts (each part's bytes, found in order), labelling the
/// bytes between them as framing: the layout of the golden constants.
fn segments<L: AsRef<str>>(actual: &[u8], parts: &[(L, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    for (label, part) in parts {
        let found = (at..=actual.len().saturating_sub(part.len()))
            .find(|&i| actual[i..].starts_with(part))
            .unwrap_or_else(|| panic!("part {} not found in the encoding", label.as_ref()));
        if found > at {
            out.push(("framing".to_string(), actual[at..found].to_vec()));
        }
        out.push((label.as_ref().to_string(), part.clone()));
        at = found + part.len();
    }
    if at < actual.len() {
        out.push(("framing".to_string(), actual[at..].to_vec()));
    }
    out
}

/// Asserts that `actual` is the golden record; on a mismatch names the golden segment with
/// the first difference and prints `actual` cut like a golden constant.
fn assert_golden<L: AsRef<str>>(
    name: &str,
    actual: &[u8],
    golden: &[(&str, &str)],
    parts: &[(L, Vec<u8>)],
) {
    let expected = golden_bytes(golden);
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(&expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let mut end = 0;
    let mut segment = "(past the golden bytes)";
    for (label, text) in golden {
        end += text.len() / 2;
        if first < end {
            segment = label;
            break;
        }
    }
    let mut layout = String::new();
    for (label, bytes) in segments(actual, parts) {
        layout.push_str(&format!("    (\"{label}\", \"{}\"),\n", hex(&bytes)));
    }
    panic!(
        "{name}: the encoding differs from the golden bytes at byte {first}, in segment \
         {segment:?} ({} bytes now, {} golden). The stored format changed: undo the change \
         or add a format version. Now:\n{layout}",
        actual.len(),
        expected.len()
    );
}

// ----- tests --------------------------------------------------------------------------

#[test]
fn wal_batch_golden() {
    let record = wal_record();
    let actual = codec::encode_record(RecordKind::WalBatch, &record).expect("encodes");
    let parts: Vec<(&str, Vec<u8>)> = wal_inputs()
        .into_iter()
        .map(|(label, command, prior)| (label, body_of(&(command, prior))))
        .collect();
    assert_golden("WAL batch", &actual, WAL_BATCH, &parts);

    // The borrowed form the runtime writes is the same record.
    let borrowed = WalRecordRef {
        batch_seq: record.batch_seq,
        epoch: record.epoch,
        inputs: record.inputs.iter().map(|(c, p)| (c, p)).collect(),
    };
    assert_eq!(
        engine::storage::encode_batch(&borrowed).expect("encodes"),
        actual
    );

    let back: WalRecord =
        codec::decode_record(RecordKind::WalBatch, &golden_bytes(WAL_BATCH)).expect("decodes");
    assert_eq!(back.batch_seq, record.batch_seq);
    assert_eq!(back.epoch, record.epoch);
    assert_eq!(back.inputs, record.inputs);
}

#[test]
fn snapshot_golden() {
    let record = snapshot_record();
    let actual = codec::encode_record(RecordKind::Snapshot, &record).expect("encodes");
    let mut parts = vec![
        ("state (opaque bytes)", body_of(&record.state)),
        ("Outgoing", body_of(&outgoing())),
        ("FinishedTransfer, committed", body_of(&committed())),
        ("FinishedTransfer, aborted", body_of(&aborted())),
    ];
    for (label, entry) in outbox() {
        parts.push((label, body_of(&entry)));
    }
    assert_golden("snapshot", &actual, SNAPSHOT, &parts);

    let back: SnapshotRecord =
        codec::decode_record(RecordKind::Snapshot, &golden_bytes(SNAPSHOT)).expect("decodes");
    assert_eq!(back.batch_seq, record.batch_seq);
    assert_eq!(back.state, record.state);
    assert_eq!(back.unconfirmed, record.unconfirmed);
    assert_eq!(back.unarchived, record.unarchived);
    assert_eq!(back.outbox, record.outbox);
    assert_eq!(back.next_event_seq, record.next_event_seq);
}

#[test]
fn partition_state_golden() {
    let state = partition_state();
    let actual = state.snapshot_bytes();
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    for (key, entry) in &state.accounts {
        let label = format!("account {} {}", key.fsp, key.currency);
        parts.push((label, body_of(&(key, entry))));
    }
    let mut transfers: Vec<_> = state.transfers.iter().collect();
    transfers.sort_by_key(|(id, _)| **id);
    for (id, open) in transfers {
        parts.push((format!("open transfer {id}"), body_of(&(id, open))));
    }
    assert_golden("partition state", &actual, PARTITION_STATE, &parts);

    let back = PartitionState::from_snapshot(&golden_bytes(PARTITION_STATE), Limits::default())
        .expect("decodes");
    assert_eq!(back, state);
}

/// Format 1 partition states (before settlement) are still read: window 1 open, an empty
/// settlement book, everything else as it was.
#[test]
fn partition_state_format_1_still_decodes() {
    let back = PartitionState::from_snapshot(&golden_bytes(PARTITION_STATE_V1), Limits::default())
        .expect("format 1 decodes");
    assert_eq!(back, partition_state_v1());
    assert_eq!(back.settlement, SettlementBook::default());
    assert_eq!(back.settlement.open_window, 1);
}

#[test]
fn archive_records_golden() {
    for (name, record, golden) in [
        ("committed transfer", committed(), ARCHIVE_COMMITTED),
        ("aborted transfer", aborted(), ARCHIVE_ABORTED),
    ] {
        let actual = codec::encode_record(RecordKind::ArchiveRecord, &record).expect("encodes");
        let parts = [("Parties", body_of(&record.parties))];
        assert_golden(name, &actual, golden, &parts);
        let back: FinishedTransfer =
            codec::decode_record(RecordKind::ArchiveRecord, &golden_bytes(golden))
                .expect("decodes");
        assert_eq!(back, record);
    }
}

/// A closed window of the settlement book, with nets.
fn settlement_window() -> WindowRecord {
    let usd = account("payerfsp", "USD");
    let payee = account("payeefsp", "USD");
    let mut nets = WindowNets::default();
    nets.nets.insert(usd, 12_345);
    nets.nets.insert(payee, -12_345);
    nets.transfers = 2;
    nets.amounts.insert(usd.currency, 20_000);
    WindowRecord {
        id: 4,
        state: WindowState::PendingSettlement,
        reason: "end of day".into(),
        created_ms: 1_700_000_000_000,
        changed_ms: 1_700_000_900_000,
        closing: false,
        nets,
        settlement: Some(2),
    }
}

/// A settlement with every account state and a pending change.
fn settlement() -> SettlementRecord {
    let usd = account("payerfsp", "USD");
    let payee = account("payeefsp", "USD");
    let eur = account("payerfsp", "EUR");
    let states = [
        (usd, 12_345, SettlementState::PsTransfersReserved),
        (payee, -12_345, SettlementState::PsTransfersRecorded),
        (eur, 0, SettlementState::PendingSettlement),
    ];
    SettlementRecord {
        id: 2,
        model: "DEFERREDNET".into(),
        reason: "daily".into(),
        state: SettlementState::PendingSettlement,
        windows: vec![3, 4],
        accounts: states
            .into_iter()
            .map(|(account, net, state)| {
                (
                    account,
                    SettlementAccount {
                        net,
                        state,
                        reason: "step".into(),
                        external_reference: Some("ref-1".into()),
                    },
                )
            })
            .collect(),
        created_ms: 1_700_000_000_000,
        changed_ms: 1_700_000_100_000,
        pending: Some(Pending {
            accounts: vec![(payee, SettlementState::PsTransfersReserved)],
            reason: "reserve".into(),
            external_reference: None,
        }),
        history: SettlementState::ALL
            .into_iter()
            .enumerate()
            .map(|(i, state)| StateChange {
                state,
                reason: format!("change {i}"),
                at_ms: 1_700_000_000_000 + i as i64,
            })
            .collect(),
    }
}

#[test]
fn settlement_book_records_golden() {
    let window = settlement_window();
    let actual = codec::encode_record(RecordKind::SettlementWindow, &window).expect("encodes");
    assert_golden::<&str>("settlement window", &actual, SETTLEMENT_WINDOW, &[]);
    let back: WindowRecord = codec::decode_record(
        RecordKind::SettlementWindow,
        &golden_bytes(SETTLEMENT_WINDOW),
    )
    .expect("decodes");
    assert_eq!(back, window);
    let record = settlement();
    let actual = codec::encode_record(RecordKind::Settlement, &record).expect("encodes");
    assert_golden::<&str>("settlement", &actual, SETTLEMENT, &[]);
    let back: SettlementRecord =
        codec::decode_record(RecordKind::Settlement, &golden_bytes(SETTLEMENT)).expect("decodes");
    assert_eq!(back, record);
}

#[test]
fn archive_run_meta_golden() {
    let meta = run_meta();
    let actual = codec::encode_record(RecordKind::ArchiveRunMeta, &meta).expect("encodes");
    assert_golden::<&str>("archive run meta", &actual, ARCHIVE_RUN_META, &[]);
    let back: RunMeta =
        codec::decode_record(RecordKind::ArchiveRunMeta, &golden_bytes(ARCHIVE_RUN_META))
            .expect("decodes");
    assert_eq!(back, meta);
}

#[test]
fn a_future_version_is_refused_naming_kind_and_versions() {
    let mut future = golden_bytes(WAL_BATCH);
    future[2] = RecordKind::WalBatch.version() + 1;
    let err = codec::decode_record::<WalRecord>(RecordKind::WalBatch, &future)
        .expect_err("a future version is refused");
    assert!(
        matches!(
            err,
            CodecError::UnknownVersion {
                kind: RecordKind::WalBatch,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "WAL batch record has format version 2; this build reads version 1 only"
    );

    let mut future = golden_bytes(PARTITION_STATE);
    future[2] = 9;
    let err = PartitionState::from_snapshot(&future, Limits::default())
        .expect_err("a future partition state is refused");
    assert!(
        err.to_string().contains(
            "partition state record has format version 9; this build reads versions 1 to 2"
        ),
        "{err}"
    );
}

#[test]
fn a_foreign_kind_is_refused_naming_both_kinds() {
    let snapshot = golden_bytes(SNAPSHOT);
    let err = codec::decode_record::<WalRecord>(RecordKind::WalBatch, &snapshot)
        .expect_err("a snapshot is not a WAL batch");
    assert_eq!(
        err.to_string(),
        "expected a WAL batch record, found a snapshot record (kind tag 2)"
    );
    let mut unknown = snapshot;
    unknown[1] = 200;
    let err = codec::decode_record::<SnapshotRecord>(RecordKind::Snapshot, &unknown)
        .expect_err("an unknown kind is refused");
    assert_eq!(
        err.to_string(),
        "expected a snapshot record, found unknown record kind tag 200"
    );
    let err = codec::decode_record::<RunMeta>(RecordKind::ArchiveRunMeta, &[0xC1, 5])
        .expect_err("a truncated envelope is refused");
    assert_eq!(
        err.to_string(),
        "archive run meta record truncated: 2 bytes, shorter than its 3-byte envelope"
    );
}

/// The storage layer keeps naming the partition and the record when the codec refuses.
#[test]
fn the_store_refuses_a_future_wal_record_naming_partition_and_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), 2, 8 << 20).expect("store");
    let mut future = golden_bytes(WAL_BATCH);
    future[2] = RecordKind::WalBatch.version() + 1;
    store.append_encoded(1, 77, &future).expect("append");
    store.sync().expect("sync");
    let err = store
        .batches_after(1, 0)
        .expect_err("the record is refused");
    assert_eq!(
        err.to_string(),
        "partition 1: corrupt record wal/77: WAL batch record has format version 2; \
         this build reads version 1 only"
    );
}
