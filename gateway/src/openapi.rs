//! `GET /openapi.json`: the two surfaces as implemented: FSPIOP transfers on the FSPIOP
//! listener, admin and operator on the admin listener. Schemas carry the same patterns
//! and bounds the handlers enforce, so a client generated from this document sends what
//! the hub accepts.

use crate::fspiop::{
    media_type, ERROR_DESCRIPTION_CHARS_MAX, EXTENSIONS_MAX, EXTENSION_KEY_CHARS_MAX,
    EXTENSION_VALUE_CHARS_MAX,
};
use crate::limits::ILP_PACKET_CHARS_MAX;
use serde_json::{json, Map, Value};

/// FSPIOP `Amount`.
const AMOUNT_PATTERN: &str = r"^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$";
/// Admin amounts as central-ledger takes them: trailing zeros allowed (`"4000.00"`);
/// decimals beyond the currency's, an exponent or a sign are 3100.
const ADMIN_AMOUNT_PATTERN: &str = r"^(0|[1-9][0-9]*)([.][0-9]+)?$";
/// FSPIOP `DateTime`, simplified (the hub also checks that the date exists).
const DATETIME_PATTERN: &str = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{2}:\d{2})$";
/// A UUID (any version, either case) or a ULID.
const CORRELATION_ID_PATTERN: &str = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25})$";

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn header_param(name: &str, required: bool, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": required,
           "schema": {"type": "string"}, "description": description})
}

fn path_param(name: &str, description: &str, pattern: Option<&str>) -> Value {
    let mut s = json!({"type": "string"});
    if let Some(p) = pattern {
        s["pattern"] = json!(p);
    }
    json!({"name": name, "in": "path", "required": true, "schema": s, "description": description})
}

fn fspiop_headers(with_body: bool) -> Vec<Value> {
    let mut out = vec![
        header_param(
            "Accept",
            !with_body,
            "Required on GET; checked when present. version=1, 1.0 or 1.1.",
        ),
        header_param("Date", true, "RFC 7231 date"),
        header_param("FSPIOP-Source", true, "Sender's FSP id"),
        header_param("FSPIOP-Destination", false, "Receiver's FSP id"),
        header_param(
            "FSPIOP-Signature",
            false,
            "Passed on to the receiver unchanged",
        ),
    ];
    if with_body {
        out.insert(
            0,
            header_param(
                "Content-Type",
                true,
                &format!("{} (or version=1.0)", media_type("1.1")),
            ),
        );
    }
    out
}

fn responses(answers: &[(&str, &str)]) -> Value {
    let mut map = Map::new();
    for (code, description) in answers {
        let mut r = json!({"description": description});
        if code.starts_with('4') || code.starts_with('5') {
            r["content"] =
                json!({"application/json": {"schema": schema("ErrorInformationResponse")}});
        }
        map.insert((*code).to_string(), r);
    }
    Value::Object(map)
}

/// The error answers every FSPIOP operation shares (its success answer comes first).
const FSPIOP_ERRORS: [(&str, &str); 3] = [
    (
        "400",
        "3100 validation, 3101 malformed syntax, 3102 missing element",
    ),
    (
        "406",
        "3001 unsupported version; extensionList lists {major: minor} supported",
    ),
    (
        "503",
        "2003 overloaded or stopping; Retry-After says when to retry",
    ),
];

/// `POST` and `GET` answer 202 (the result follows as a callback).
const ACCEPTED: (&str, &str) = ("202", "Accepted; the result follows as a callback");
/// The payee's `PUT`s are callbacks themselves: 200, as ml-api-adapter answers them.
const RECEIVED: (&str, &str) = ("200", "OK; made durable, the outcome follows as callbacks");

fn fspiop_op(
    summary: &str,
    body: Option<&str>,
    path_params: Vec<Value>,
    ok: (&str, &str),
) -> Value {
    let mut params = path_params;
    params.extend(fspiop_headers(body.is_some()));
    let mut answers = vec![ok];
    answers.extend(FSPIOP_ERRORS);
    let mut op = json!({"tags": ["FSPIOP transfers"], "summary": summary,
                        "parameters": params, "responses": responses(&answers)});
    if let Some(name) = body {
        op["requestBody"] = json!({"required": true, "content": {
            media_type("1.1"): {"schema": schema(name)}}});
    }
    op
}

fn admin_op(summary: &str, body: Option<&str>, path_params: Vec<Value>, ok: &str) -> Value {
    let mut op = json!({"tags": ["admin"], "summary": summary, "parameters": path_params,
        "responses": responses(&[(ok, "Done"), ("400", "FSPIOP error (3100, 3101, 3102, 3003, 4001)"),
                                 ("404", "3200 unknown participant or account"),
                                 ("503", "2003 engine unavailable")])});
    if let Some(name) = body {
        op["requestBody"] = json!({"required": true,
            "content": {"application/json": {"schema": schema(name)}}});
    }
    op
}

fn operator_op(summary: &str, content_type: &str) -> Value {
    json!({"tags": ["operator"], "summary": summary,
           "responses": {"200": {"description": "OK", "content": {content_type: {}}}}})
}

fn schemas() -> Value {
    let fsp_id = json!({"type": "string", "minLength": 1, "maxLength": 32});
    let binary32 = json!({"type": "string", "pattern": "^[A-Za-z0-9-_]{43}$"});
    let datetime = json!({"type": "string", "pattern": DATETIME_PATTERN});
    let money = json!({"type": "object", "required": ["currency", "amount"], "additionalProperties": false,
        "properties": {"currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "amount": {"type": "string", "pattern": AMOUNT_PATTERN}}});
    let admin_amount = json!({"oneOf": [{"type": "number", "minimum": 0},
                                        {"type": "string", "pattern": ADMIN_AMOUNT_PATTERN}],
        "description": "A JSON number or a decimal string, converted exactly from its text; no exponent, at most the currency's decimals (trailing zeros aside)."});
    let limit = json!({"type": "object", "required": ["type", "value"], "additionalProperties": false,
        "properties": {"type": {"type": "string", "enum": ["NET_DEBIT_CAP"]}, "value": admin_amount,
                       "alarmPercentage": {"type": "number", "minimum": 0, "maximum": 100}}});
    json!({
        "ExtensionList": {"type": "object", "required": ["extension"], "additionalProperties": false,
            "properties": {"extension": {"type": "array", "minItems": 1, "maxItems": EXTENSIONS_MAX,
                "items": {"type": "object", "required": ["key", "value"], "additionalProperties": false,
                    "properties": {"key": {"type": "string", "minLength": 1, "maxLength": EXTENSION_KEY_CHARS_MAX},
                                   "value": {"type": "string", "minLength": 1, "maxLength": EXTENSION_VALUE_CHARS_MAX}}}}}},
        "Money": money,
        "TransfersPostRequest": {"type": "object", "additionalProperties": false,
            "required": ["transferId", "payeeFsp", "payerFsp", "amount", "ilpPacket", "condition", "expiration"],
            "properties": {
                "transferId": {"type": "string", "pattern": CORRELATION_ID_PATTERN},
                "payeeFsp": fsp_id, "payerFsp": fsp_id, "amount": schema("Money"),
                "ilpPacket": {"type": "string", "pattern": "^[A-Za-z0-9-_]+[=]{0,2}$", "minLength": 1, "maxLength": ILP_PACKET_CHARS_MAX},
                "condition": binary32,
                "expiration": {"type": "string", "pattern": DATETIME_PATTERN,
                    "description": format!("In the future, and at most {} hours ahead of the hub's clock (3100 otherwise).",
                        crate::limits::PREPARE_EXPIRATION_MS_MAX / 3_600_000)},
                "extensionList": schema("ExtensionList")}},
        "TransfersIDPutResponse": {"type": "object", "additionalProperties": false, "required": ["transferState"],
            "description": "From the payee: COMMITTED, or RESERVED to be told the outcome by PATCH (fulfilment required). From the hub: the state, with the fulfilment when COMMITTED.",
            "properties": {"fulfilment": binary32, "completedTimestamp": datetime,
                "transferState": {"type": "string", "enum": ["RECEIVED", "RESERVED", "COMMITTED", "ABORTED"]},
                "extensionList": schema("ExtensionList")}},
        "TransfersIDPatchResponse": {"type": "object", "required": ["completedTimestamp", "transferState"],
            "description": "Hub to payee after a fulfil with transferState RESERVED.",
            "properties": {"completedTimestamp": datetime,
                "transferState": {"type": "string", "enum": ["COMMITTED", "ABORTED"]},
                "extensionList": schema("ExtensionList")}},
        "ErrorInformationObject": {"type": "object", "required": ["errorInformation"], "additionalProperties": false,
            "properties": {"errorInformation": {"type": "object", "required": ["errorCode", "errorDescription"],
                "properties": {"errorCode": {"type": "string", "pattern": "^[1-9]\\d{3}$"},
                               "errorDescription": {"type": "string", "minLength": 1, "maxLength": ERROR_DESCRIPTION_CHARS_MAX},
                               "extensionList": schema("ExtensionList")}}}},
        "ErrorInformationResponse": schema("ErrorInformationObject"),
        "ParticipantCreate": {"type": "object", "required": ["name", "currency"], "additionalProperties": false,
            "properties": {"name": fsp_id, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "isProxy": {"type": "boolean"}}},
        "ParticipantActive": {"type": "object", "required": ["isActive"], "additionalProperties": false,
            "properties": {"isActive": {"oneOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]}}},
        "InitialPositionAndLimits": {"type": "object", "required": ["currency", "limit"], "additionalProperties": false,
            "properties": {"currency": {"type": "string"}, "limit": limit.clone(), "initialPosition": admin_amount}},
        "LimitUpdate": {"type": "object", "required": ["currency", "limit"], "additionalProperties": false,
            "properties": {"currency": {"type": "string"}, "limit": limit}},
        "HubAccount": {"type": "object", "required": ["currency", "type"], "additionalProperties": false,
            "properties": {"currency": {"type": "string"},
                           "type": {"type": "string", "enum": crate::registry::HUB_ACCOUNT_TYPES}}},
        "FundsAction": {"type": "object", "required": ["transferId", "action", "amount"], "additionalProperties": false,
            "properties": {"transferId": {"type": "string", "pattern": CORRELATION_ID_PATTERN},
                "externalReference": {"type": "string"}, "reason": {"type": "string"},
                "action": {"type": "string", "enum": ["recordFundsIn", "recordFundsOutPrepareReserve"]},
                "amount": {"type": "object", "required": ["amount", "currency"],
                           "properties": {"amount": admin_amount, "currency": {"type": "string"}}},
                "extensionList": schema("ExtensionList")}},
        "FundsOutFinish": {"type": "object", "required": ["action"], "additionalProperties": false,
            "properties": {"action": {"type": "string", "enum": ["recordFundsOutCommit", "recordFundsOutAbort"]},
                "reason": {"type": "string"}, "externalReference": {"type": "string"}, "extensionList": schema("ExtensionList")}},
        "Endpoint": {"type": "object", "required": ["type", "value"], "additionalProperties": false,
            "description": "type FSPIOP_CALLBACK_URL_TRANSFER_POST, _PUT or _ERROR (others are stored); value an http(s) URL template with {{transferId}}.",
            "properties": {"type": {"type": "string", "maxLength": 64}, "value": {"type": "string", "maxLength": 1024}}},
        "SettlementModel": {"type": "object", "required": ["name", "settlementGranularity", "settlementInterchange", "settlementDelay"],
            "properties": {"name": {"type": "string", "maxLength": crate::limits::SETTLEMENT_MODEL_NAME_CHARS_MAX},
                "settlementGranularity": {"type": "string", "enum": ["GROSS", "NET"]},
                "settlementInterchange": {"type": "string", "enum": ["BILATERAL", "MULTILATERAL"]},
                "settlementDelay": {"type": "string", "enum": ["IMMEDIATE", "DEFERRED"]},
                "currency": {"type": "string"}, "requireLiquidityCheck": {"type": "boolean"},
                "ledgerAccountType": {"type": "string"}, "settlementAccountType": {"type": "string"},
                "autoPositionReset": {"type": "boolean"}}}
    })
}

pub fn document() -> Value {
    let id = || {
        path_param(
            "ID",
            "transferId (UUID or ULID)",
            Some(CORRELATION_ID_PATTERN),
        )
    };
    let name = || path_param("name", "participant name", None);
    let account = || path_param("id", "SETTLEMENT account id", Some("^[0-9]+$"));
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "Position engine hub", "version": env!("CARGO_PKG_VERSION"),
                 "description": "FSPIOP v1.1 transfers (FSPIOP listener; results arrive as callbacks to the endpoints a participant registered) and the central-ledger-shaped admin and operator API (admin listener)."},
        "paths": {
            "/transfers": {"post": fspiop_op("Prepare a transfer; forwarded to the payee, or refused by PUT /transfers/{ID}/error to the payer", Some("TransfersPostRequest"), vec![], ACCEPTED)},
            "/transfers/{ID}": {
                "put": fspiop_op("Fulfil (payee): COMMITTED, or RESERVED to get a PATCH with the outcome", Some("TransfersIDPutResponse"), vec![id()], RECEIVED),
                "get": fspiop_op("Ask for a transfer's state; answered by PUT /transfers/{ID} (or /error: 3208 unknown, 3000 not a party)", None, vec![id()], ACCEPTED)
            },
            "/transfers/{ID}/error": {"put": fspiop_op("Reject (payee); the error is passed on to the payer", Some("ErrorInformationObject"), vec![id()], RECEIVED)},
            "/participants": {
                "post": admin_op("Create a participant with POSITION and SETTLEMENT accounts in a currency (repeat per currency)", Some("ParticipantCreate"), vec![], "201"),
                "get": admin_op("List participants (the hub first)", None, vec![], "200")},
            "/participants/limits": {"get": admin_op("NET_DEBIT_CAP of every participant (?currency=, ?type=)", None, vec![], "200")},
            "/participants/{name}": {
                "get": admin_op("One participant", None, vec![name()], "200"),
                "put": admin_op("Activate or deactivate", Some("ParticipantActive"), vec![name()], "200")},
            "/participants/{name}/initialPositionAndLimits": {"post": admin_op("Initial position and NET_DEBIT_CAP (once per currency)", Some("InitialPositionAndLimits"), vec![name()], "201")},
            "/participants/{name}/limits": {
                "get": admin_op("Limits (?currency=, ?type=)", None, vec![name()], "200"),
                "put": admin_op("Change the NET_DEBIT_CAP", Some("LimitUpdate"), vec![name()], "200")},
            "/participants/{name}/accounts": {
                "get": admin_op("POSITION (value, reservedValue) and SETTLEMENT (value = -liquidity cover) accounts; for the hub, its HUB_MULTILATERAL_SETTLEMENT and HUB_RECONCILIATION balances", None, vec![name()], "200"),
                "post": admin_op("Hub accounts (hub participant only)", Some("HubAccount"), vec![name()], "201")},
            "/participants/{name}/accounts/{id}": {"post": admin_op("recordFundsIn or recordFundsOutPrepareReserve", Some("FundsAction"), vec![name(), account()], "202")},
            "/participants/{name}/accounts/{id}/transfers/{transferId}": {"put": admin_op("recordFundsOutCommit or recordFundsOutAbort", Some("FundsOutFinish"),
                vec![name(), account(), path_param("transferId", "the funds-out transferId", Some(CORRELATION_ID_PATTERN))], "202")},
            "/participants/{name}/endpoints": {
                "post": admin_op("Register a callback endpoint", Some("Endpoint"), vec![name()], "201"),
                "get": admin_op("List endpoints", None, vec![name()], "200")},
            "/participants/{name}/positions": {"get": admin_op("Positions summed over all partitions (?currency= for one object)", None, vec![name()], "200")},
            "/settlementModels": {
                "post": admin_op("Record a settlement model", Some("SettlementModel"), vec![], "201"),
                "get": admin_op("List settlement models", None, vec![], "200")},
            "/partitions": {"get": operator_op("Partitions: owner, epoch, committed batch, queue depth, applied commands, ops/s", "application/json")},
            "/health/live": {"get": operator_op("Liveness", "application/json")},
            "/health/ready": {"get": {"tags": ["operator"], "summary": "Readiness: 503 while a partition is stopped",
                "responses": {"200": {"description": "Ready"}, "503": {"description": "A partition is stopped"}}}},
            "/metrics": {"get": operator_op("Prometheus metrics", "text/plain")},
            "/openapi.json": {"get": operator_op("This document", "application/json")}
        },
        "components": {"schemas": schemas()}
    });
    add_settlement(&mut doc);
    doc
}

/// The settlement routes (`crate::settlement`, admin listener), central-settlement's.
fn add_settlement(doc: &mut Value) {
    let window = || path_param("id", "settlement window id", Some("^[0-9]+$"));
    let settlement = || path_param("id", "settlement id", Some("^[0-9]+$"));
    let paths = [
        (
            "/settlementWindows",
            json!({"get": admin_op("Settlement windows by ?state=, ?fromDateTime=, ?toDateTime=, ?participantId=, ?currency= (at least one; no match is 400 3100)", None, vec![], "200")}),
        ),
        (
            "/settlementWindows/{id}",
            json!({
            "get": admin_op("One window; a closed one with each participant account's net (participants, positive: net sender) and transferCount", None, vec![window()], "200"),
            "post": admin_op("Close the open window; answers the next (open) window", Some("SettlementWindowClose"), vec![window()], "200")}),
        ),
        (
            "/settlementWindows/{id}/statement",
            json!({"get": admin_op("Statement of a closed window: each account's net, the settlement holding it, totals per currency (nets sum to zero); ?format=csv for text/csv", None, vec![window()], "200")}),
        ),
        (
            "/settlements",
            json!({
            "post": admin_op("Create a settlement of closed windows (settlementModel registered with /settlementModels)", Some("SettlementCreate"), vec![], "200"),
            "get": admin_op("Settlements by ?state=, ?settlementWindowId=, ?currency=, ?participantId=, ?accountId=, ?fromDateTime=, ?toDateTime=, ?fromSettlementWindowDateTime=, ?toSettlementWindowDateTime= (at least one)", None, vec![], "200")}),
        ),
        (
            "/settlements/{id}",
            json!({
            "get": admin_op("One settlement", None, vec![settlement()], "200"),
            "put": admin_op("Move accounts one state on (PS_TRANSFERS_RECORDED, PS_TRANSFERS_RESERVED, PS_TRANSFERS_COMMITTED, SETTLED), or {state: ABORTED, reason} before any commit", Some("SettlementUpdate"), vec![settlement()], "200")}),
        ),
    ];
    if let Some(map) = doc["paths"].as_object_mut() {
        for (path, item) in paths {
            map.insert(path.to_string(), item);
        }
    }
    let reason = json!({"type": "string", "minLength": 1, "maxLength": 512});
    let account_state = json!({"type": "string", "enum": ["PS_TRANSFERS_RECORDED", "PS_TRANSFERS_RESERVED", "PS_TRANSFERS_COMMITTED", "SETTLED"]});
    let schemas = [
        (
            "SettlementWindowClose",
            json!({"type": "object", "additionalProperties": false, "required": ["state", "reason"],
            "properties": {"state": {"type": "string", "enum": ["CLOSED"]}, "reason": reason}}),
        ),
        (
            "SettlementCreate",
            json!({"type": "object", "additionalProperties": false,
            "required": ["settlementModel", "reason", "settlementWindows"],
            "properties": {"settlementModel": {"type": "string"}, "reason": reason,
                "settlementWindows": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": false,
                    "required": ["id"], "properties": {"id": {"type": "integer", "minimum": 1}}}}}}),
        ),
        (
            "SettlementUpdate",
            json!({"oneOf": [
            {"type": "object", "additionalProperties": false, "required": ["participants"],
             "properties": {"participants": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                "required": ["id", "accounts"], "properties": {"id": {"type": "integer"},
                "accounts": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                    "required": ["id", "state", "reason"], "properties": {"id": {"type": "integer"}, "state": account_state,
                    "reason": reason, "externalReference": {"type": "string", "maxLength": 256}}}}}}}}},
            {"type": "object", "additionalProperties": false, "required": ["state", "reason"],
             "properties": {"state": {"type": "string", "enum": ["ABORTED"]}, "reason": reason, "externalReference": {"type": "string"}}}]}),
        ),
    ];
    if let Some(map) = doc["components"]["schemas"].as_object_mut() {
        for (name, schema) in schemas {
            map.insert(name.to_string(), schema);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document names a schema it defines.
    #[test]
    fn references_resolve() {
        fn walk(v: &Value, schemas: &Map<String, Value>, seen: &mut usize) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(schemas.contains_key(name), "dangling {r}");
                        *seen += 1;
                    }
                    map.values().for_each(|x| walk(x, schemas, seen));
                }
                Value::Array(items) => items.iter().for_each(|x| walk(x, schemas, seen)),
                _ => {}
            }
        }
        let doc = document();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .clone();
        let mut seen = 0;
        walk(&doc, &schemas, &mut seen);
        assert!(seen > 10);
    }

    /// The documented patterns are the ones the handlers enforce.
    #[test]
    fn patterns_agree_with_the_validators() {
        let doc = document();
        let post = &doc["components"]["schemas"]["TransfersPostRequest"]["properties"];
        let id = post["transferId"]["pattern"].as_str().expect("pattern");
        assert_eq!(id, CORRELATION_ID_PATTERN);
        // Spot checks of the same inputs against the validators.
        assert!(crate::fspiop::transfer_id("01ARZ3NDEKTSV4RRFFQ69G5FAV").is_ok());
        assert!(crate::fspiop::parse_datetime("2016-05-24T08:38:08.699-04:00").is_some());
        assert_eq!(
            doc["components"]["schemas"]["Money"]["properties"]["amount"]["pattern"],
            AMOUNT_PATTERN
        );
    }

    /// The payee's PUTs answer 200, POST and GET 202, as the handlers do.
    #[test]
    fn success_answers_match_the_handlers() {
        let doc = document();
        let ok = |path: &str, method: &str| -> Vec<String> {
            let responses = doc["paths"][path][method]["responses"]
                .as_object()
                .expect("responses");
            responses
                .keys()
                .filter(|k| k.starts_with('2'))
                .cloned()
                .collect()
        };
        assert_eq!(ok("/transfers", "post"), ["202"]);
        assert_eq!(ok("/transfers/{ID}", "get"), ["202"]);
        assert_eq!(ok("/transfers/{ID}", "put"), ["200"]);
        assert_eq!(ok("/transfers/{ID}/error", "put"), ["200"]);
    }

    /// Every settlement route the admin listener serves is in the document, with the
    /// success answer its handler gives.
    #[test]
    fn settlement_routes_are_listed() {
        let doc = document();
        for (path, method) in [
            ("/settlementWindows", "get"),
            ("/settlementWindows/{id}", "get"),
            ("/settlementWindows/{id}", "post"),
            ("/settlementWindows/{id}/statement", "get"),
            ("/settlements", "post"),
            ("/settlements", "get"),
            ("/settlements/{id}", "get"),
            ("/settlements/{id}", "put"),
        ] {
            assert!(
                doc["paths"][path][method]["responses"]["200"].is_object(),
                "{method} {path}"
            );
        }
        for name in [
            "SettlementWindowClose",
            "SettlementCreate",
            "SettlementUpdate",
        ] {
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
    }
}
