//! `GET /participants/{name}/ledger`: an account's position ledger (`engine::ledger`),
//! for auditors: every change of its position, reserved amount and liquidity cover in a
//! time range, with its cause and the values it left, and the sums of the changes.
//!
//! Query: `currency` (required when the participant has several), `fromDateTime` and
//! `toDateTime` (ISO 8601, both optional: from the beginning, up to now), `limit` (at most
//! `engine::limits::LEDGER_QUERY_ENTRIES_MAX`, the default). A cut answer names in
//! `nextFromDateTime` where the next page starts.

use crate::admin::{account_of, money_value, participant, respond, Answer};
use crate::engine_errors::from_engine;
use crate::fspiop::{format_timestamp, ApiError};
use crate::settlement::query_time;
use crate::AppState;
use actix_web::{web, HttpResponse};
use engine::ledger::{Cause, Totals};
use engine::limits::LEDGER_QUERY_ENTRIES_MAX;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(ledger(&state, &path, &query).await)
}

async fn ledger(state: &AppState, name: &str, query: &BTreeMap<String, String>) -> Answer {
    const ALLOWED: [&str; 4] = ["currency", "fromDateTime", "toDateTime", "limit"];
    if let Some(extra) = query.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(ApiError::validation(format!(
            "unknown query parameter {extra}"
        )));
    }
    let p = participant(state, name)?;
    let currency = match (query.get("currency"), p.currencies.as_slice()) {
        (Some(c), _) => c.clone(),
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(ApiError::validation(
                "currency is required: the participant has several accounts",
            ))
        }
    };
    let account = account_of(&p, &currency)?;
    let from_ms = query_time(query, "fromDateTime")?.unwrap_or(0);
    let to_ms = query_time(query, "toDateTime")?.unwrap_or(i64::MAX);
    if from_ms > to_ms {
        return Err(ApiError::validation(
            "fromDateTime must not be after toDateTime",
        ));
    }
    let limit = match query.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LEDGER_QUERY_ENTRIES_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "limit must be a whole number from 1 to {LEDGER_QUERY_ENTRIES_MAX}"
                ))
            })?,
        None => LEDGER_QUERY_ENTRIES_MAX,
    };
    let page = state
        .hub
        .ledger(account, from_ms, to_ms, limit)
        .await
        .map_err(from_engine)?;
    let c = account.currency;
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            let (cause_kind, cause_id) = match e.cause {
                Cause::Transfer(id) => ("transferId", id.as_str().to_string()),
                Cause::Funds(id) => ("fundsTransferId", id.as_str().to_string()),
                Cause::Settlement(id) => ("settlementId", id.to_string()),
                Cause::Admin(id) => ("adminRequestId", id.to_string()),
            };
            let mut entry = json!({
                "entryId": format!("{}-{}-{}", e.id.partition, e.id.batch_seq, e.id.index),
                "createdDate": format_timestamp(e.at_ms),
                "settlementWindowId": e.window,
                "entryType": e.kind.as_str(),
                "positionChange": money_value(i128::from(e.position_change), c),
                "reservedChange": money_value(i128::from(e.reserved_change), c),
                "liquidityCoverChange": money_value(i128::from(e.cover_change), c),
                "partition": e.id.partition,
                "partitionPositionAfter": money_value(e.position_after, c),
                "partitionReservedAfter": money_value(e.reserved_after, c),
            });
            entry[cause_kind] = json!(cause_id);
            if e.cover_change != 0 || e.cause_is_home() {
                entry["liquidityCoverAfter"] = money_value(e.cover_after, c);
            }
            entry
        })
        .collect();
    let totals = Totals::of(&page.entries);
    Ok(HttpResponse::Ok().json(json!({
        "participant": p.name,
        "currency": currency,
        "entries": entries,
        "totals": {
            "entries": totals.entries,
            "positionChange": money_value(totals.position, c),
            "reservedChange": money_value(totals.reserved, c),
            "liquidityCoverChange": money_value(totals.cover, c),
        },
        "nextFromDateTime": page.next_from_ms.map(format_timestamp),
    })))
}
