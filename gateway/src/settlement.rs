//! The settlement API on the admin listener, shaped like Mojaloop's central-settlement:
//! settlement windows (list, one, close), settlements (create, list, one, move their
//! accounts through the states, abort), the hub's own accounts, and a per-window
//! statement for reconciliation (JSON or CSV).
//!
//! The book and the money live in the engine (`engine::settlement`, `Hub::close_window`
//! and friends); this module only turns HTTP and JSON into those calls and back.
//!
//! Identifiers are central-ledger's: a participant is its numeric `seq`, an account its
//! numeric POSITION account id (`Participant::account_id(i, false)`), which the engine
//! knows as (FspId, Currency).
//!
//! Signs. A settlement account's `netSettlementAmount.amount` is positive for a net
//! sender (its position rose in the window: it pays at the settlement bank) and negative
//! for a net receiver, as central-settlement reports `settlementParticipantCurrency
//! .netAmount` (it books SETTLEMENT_NET_SENDER for a positive netAmount). The window's
//! `participants` and the statement use the same sign.
//!
//! Additions to central-settlement's shapes: a closed window carries `participants`,
//! `[{id, name, accounts:[{id, currency, netSettlementAmount:{amount, currency}}]}]`, the
//! net of each account in the window (summed over partitions), and `transferCount`, the
//! transfers committed in it. An open window has neither (the engine keeps its nets per
//! partition until the close), so a `participantId` filter never matches an open window.

use crate::engine_errors::from_engine;
use crate::fspiop::{format_timestamp, only_fields, parse_object, parse_timestamp, ApiError};
use crate::registry::Participant;
use crate::transfers::error_response;
use crate::AppState;
use actix_web::{guard, web, HttpResponse};
use engine::ids::{AccountKey, Currency, FspId};
use engine::machine::settlement::WindowNets;
use engine::money::format_amount;
use engine::runtime::now_ms;
use engine::settlement::{
    AccountUpdate, SettlementRecord, SettlementState, WindowRecord, WindowState,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Registered before `admin::routes`: the hub's `GET /participants/{hub}/accounts` must
/// be taken here, not by the DFSP accounts route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/settlementWindows", web::get().to(list_windows))
        .route("/settlementWindows/{id}", web::get().to(get_window))
        .route("/settlementWindows/{id}", web::post().to(post_window))
        .route(
            "/settlementWindows/{id}/statement",
            web::get().to(get_statement),
        )
        .route("/settlements", web::post().to(post_settlement))
        .route("/settlements", web::get().to(list_settlements))
        .route("/settlements/{id}", web::get().to(get_settlement))
        .route("/settlements/{id}", web::put().to(put_settlement))
        .route(
            "/participants/{name}/accounts",
            web::get()
                .guard(guard::fn_guard(is_hub_accounts_path))
                .to(get_hub_accounts),
        );
}

type Answer = Result<HttpResponse, ApiError>;

fn respond(answer: Answer) -> HttpResponse {
    answer.unwrap_or_else(|e| error_response(&e))
}

fn is_hub_accounts_path(ctx: &guard::GuardContext<'_>) -> bool {
    ctx.app_data::<web::Data<AppState>>().is_some_and(|state| {
        ctx.head().uri.path() == format!("/participants/{}/accounts", state.hub_name)
    })
}

// ---- shapes ----------------------------------------------------------------------------

/// A money value as central-settlement shows it: a JSON number in major units, from the
/// engine's minor units (never through a float).
fn money(minor: i128, currency: Currency) -> Value {
    let minor = i64::try_from(minor).unwrap_or(if minor < 0 { i64::MIN } else { i64::MAX });
    serde_json::from_str(&format_amount(minor, currency)).unwrap_or(Value::Null)
}

fn amount_text(minor: i128, currency: Currency) -> String {
    let minor = i64::try_from(minor).unwrap_or(if minor < 0 { i64::MIN } else { i64::MAX });
    format_amount(minor, currency)
}

/// The participant owning an engine account and its POSITION account id.
fn owner(state: &AppState, account: &AccountKey) -> Option<(Participant, u64)> {
    let p = state.registry.get(account.fsp.as_str())?;
    let index = p
        .currencies
        .iter()
        .position(|c| c == account.currency.as_str())?;
    let id = p.account_id(index, false);
    Some((p, id))
}

/// A window's state as central-settlement names it; a close decided and not yet
/// acknowledged by every partition is PROCESSING.
fn window_state(w: &WindowRecord) -> &'static str {
    if w.closing {
        "PROCESSING"
    } else {
        w.state.as_str()
    }
}

fn currencies_of(nets: &WindowNets) -> BTreeSet<Currency> {
    nets.nets.keys().map(|a| a.currency).collect()
}

fn window_json(state: &AppState, w: &WindowRecord) -> Value {
    let created = format_timestamp(w.created_ms);
    let changed = format_timestamp(w.changed_ms);
    // One content entry per currency of the window; its id is window id × 1000 + the
    // currency's place (from 1) among the window's currencies in code order.
    let content: Vec<Value> = currencies_of(&w.nets)
        .into_iter()
        .enumerate()
        .map(|(i, currency)| {
            json!({
                "id": w.id * 1_000 + i as u64 + 1,
                "state": window_state(w),
                "ledgerAccountType": "POSITION",
                "currencyId": currency.as_str(),
                "createdDate": created,
                "changedDate": changed,
                "settlementId": w.settlement,
            })
        })
        .collect();
    let mut out = json!({
        "id": w.id,
        "reason": if w.reason.is_empty() { Value::Null } else { json!(w.reason) },
        "state": window_state(w),
        "createdDate": created,
        "changedDate": changed,
        "content": content,
    });
    if w.state != WindowState::Open {
        out["participants"] = participants_json(
            state,
            w.nets.nets.iter().map(|(account, net)| (*account, *net)),
            |_, _| Map::new(),
        );
        out["transferCount"] = json!(w.nets.transfers);
    }
    out
}

/// `[{id, name, accounts:[{id, currency, netSettlementAmount, ...extra}]}]` by
/// participant id; `extra` adds fields to each account.
fn participants_json(
    state: &AppState,
    nets: impl Iterator<Item = (AccountKey, i128)>,
    extra: impl Fn(&AccountKey, i128) -> Map<String, Value>,
) -> Value {
    let mut by_participant: BTreeMap<u64, (String, Vec<Value>)> = BTreeMap::new();
    for (account, net) in nets {
        let (seq, name, id) = match owner(state, &account) {
            Some((p, id)) => (p.seq, p.name, json!(id)),
            None => (0, account.fsp.as_str().to_string(), Value::Null),
        };
        let mut entry = json!({
            "id": id,
            "currency": account.currency.as_str(),
            "netSettlementAmount": {"amount": money(net, account.currency), "currency": account.currency.as_str()},
        });
        for (k, v) in extra(&account, net) {
            entry[k] = v;
        }
        by_participant
            .entry(seq)
            .or_insert_with(|| (name, Vec::new()))
            .1
            .push(entry);
    }
    Value::Array(
        by_participant
            .into_iter()
            .map(|(seq, (name, accounts))| {
                json!({"id": if seq == 0 { Value::Null } else { json!(seq) }, "name": name, "accounts": accounts})
            })
            .collect(),
    )
}

fn settlement_json(state: &AppState, s: &SettlementRecord, windows: &[WindowRecord]) -> Value {
    let windows: Vec<Value> = s
        .windows
        .iter()
        .map(|id| match windows.iter().find(|w| w.id == *id) {
            Some(w) => window_json(state, w),
            None => json!({"id": id}),
        })
        .collect();
    let participants = participants_json(
        state,
        s.accounts.iter().map(|(k, a)| (*k, i128::from(a.net))),
        |account, _| {
            let a = &s.accounts[account];
            let mut m = Map::new();
            m.insert("state".into(), json!(a.state.as_str()));
            m.insert("reason".into(), json!(a.reason));
            if let Some(reference) = &a.external_reference {
                m.insert("externalReference".into(), json!(reference));
            }
            m
        },
    );
    json!({
        "id": s.id,
        "state": s.state.as_str(),
        "reason": s.reason,
        "settlementModel": s.model,
        "createdDate": format_timestamp(s.created_ms),
        "changedDate": format_timestamp(s.changed_ms),
        "settlementWindows": windows,
        "participants": participants,
    })
}

// ---- input -----------------------------------------------------------------------------

fn id_of(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::validation(format!("{what} must be a positive integer")))
}

fn query_id(query: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query.get(name).map(|t| id_of(t, name)).transpose()
}

pub(crate) fn query_time(
    query: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<i64>, ApiError> {
    query
        .get(name)
        .map(|t| {
            parse_timestamp(t).ok_or_else(|| {
                ApiError::validation(format!("{name} must be an ISO 8601 date-time"))
            })
        })
        .transpose()
}

fn only_params(query: &BTreeMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(ApiError::validation(format!(
            "unknown query parameter {extra}"
        ))),
        None => Ok(()),
    }
}

fn participant_by_id(state: &AppState, id: u64) -> Option<Participant> {
    state.registry.all().into_iter().find(|p| p.seq == id)
}

fn reason_field(map: &Map<String, Value>) -> Result<String, ApiError> {
    match map.get("reason") {
        None => Err(ApiError::missing("reason")),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 512 => Ok(s.clone()),
        Some(_) => Err(ApiError::validation(
            "reason must be a string of 1 to 512 characters",
        )),
    }
}

// ---- windows ---------------------------------------------------------------------------

async fn windows_now(state: &AppState) -> Result<Vec<WindowRecord>, ApiError> {
    state
        .hub
        .settlement_windows(now_ms())
        .await
        .map_err(from_engine)
}

async fn list_windows(
    state: web::Data<AppState>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(windows(&state, &query).await)
}

/// central-settlement's filters: `state`, `fromDateTime` / `toDateTime` (on the created
/// date), `participantId` (windows holding transfers of it), `currency`; at least one, and
/// no match is a 400 (3100), as central-settlement answers.
async fn windows(state: &AppState, query: &BTreeMap<String, String>) -> Answer {
    const FILTERS: [&str; 5] = [
        "state",
        "fromDateTime",
        "toDateTime",
        "participantId",
        "currency",
    ];
    only_params(query, &FILTERS)?;
    if query.is_empty() {
        return Err(ApiError::validation(
            "Use at least one parameter: participantId, state, fromDateTime, toDateTime, currency",
        ));
    }
    let wanted_state = match query.get("state") {
        Some(text) => Some(
            WindowState::parse(text)
                .map(WindowState::as_str)
                .or((text == "PROCESSING").then_some("PROCESSING"))
                .ok_or_else(|| ApiError::validation(format!("unknown window state {text}")))?,
        ),
        None => None,
    };
    let from = query_time(query, "fromDateTime")?;
    let to = query_time(query, "toDateTime")?;
    let participant = match query_id(query, "participantId")? {
        Some(id) => Some(
            participant_by_id(state, id)
                .ok_or_else(|| ApiError::validation(format!("participant {id} does not exist")))?,
        ),
        None => None,
    };
    let currency = query
        .get("currency")
        .map(|c| {
            Currency::new(c)
                .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))
        })
        .transpose()?;
    let out: Vec<Value> = windows_now(state)
        .await?
        .iter()
        .filter(|w| wanted_state.is_none_or(|s| window_state(w) == s))
        .filter(|w| from.is_none_or(|t| w.created_ms >= t))
        .filter(|w| to.is_none_or(|t| w.created_ms <= t))
        .filter(|w| {
            participant
                .as_ref()
                .is_none_or(|p| w.nets.nets.keys().any(|a| a.fsp.as_str() == p.name))
        })
        .filter(|w| currency.is_none_or(|c| w.nets.nets.keys().any(|a| a.currency == c)))
        .map(|w| window_json(state, w))
        .collect();
    if out.is_empty() {
        return Err(ApiError::validation(
            "no settlement window matches the filters",
        ));
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn get_window(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    respond(window(&state, &path).await)
}

async fn window(state: &AppState, id: &str) -> Answer {
    let id = id_of(id, "settlement window id")?;
    let w = state
        .hub
        .settlement_window(now_ms(), id)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Ok().json(window_json(state, &w)))
}

async fn post_window(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(close(&state, &path, &body).await)
}

/// `POST /settlementWindows/{id} {"state":"CLOSED","reason"}`: closes the open window on
/// every partition and opens the next; answers the new open window, as central-settlement
/// does.
async fn close(state: &AppState, id: &str, body: &[u8]) -> Answer {
    let id = id_of(id, "settlement window id")?;
    let map = parse_object(body)?;
    only_fields(&map, &["state", "reason"])?;
    match map.get("state") {
        Some(Value::String(s)) if s == "CLOSED" => {}
        None => return Err(ApiError::missing("state")),
        Some(_) => return Err(ApiError::validation("state must be CLOSED")),
    }
    let reason = reason_field(&map)?;
    let now = now_ms();
    state
        .hub
        .close_window(now, id, &reason)
        .await
        .map_err(from_engine)?;
    let next = windows_now(state)
        .await?
        .into_iter()
        .find(|w| w.state == WindowState::Open)
        .ok_or_else(|| {
            ApiError::new(503, 2003, "Service currently unavailable - no open window")
        })?;
    Ok(HttpResponse::Ok().json(window_json(state, &next)))
}

// ---- statement -------------------------------------------------------------------------

async fn get_statement(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(statement(&state, &path, &query).await)
}

/// One line per participant account of a closed window: its net in the window (positive:
/// net sender), and the settlement holding the window with the account's state in it;
/// then per currency the sum of the nets (zero), what was sent and received, and the
/// window's transfer count (the engine counts transfers per window, not per account).
async fn statement(state: &AppState, id: &str, query: &BTreeMap<String, String>) -> Answer {
    only_params(query, &["format"])?;
    let csv = match query.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::validation(format!("unknown format {other}"))),
    };
    let id = id_of(id, "settlement window id")?;
    let now = now_ms();
    let w = state
        .hub
        .settlement_window(now, id)
        .await
        .map_err(from_engine)?;
    if w.state == WindowState::Open {
        return Err(ApiError::validation(format!(
            "settlement window {id} is open; its statement exists once it is closed"
        )));
    }
    let settlement = match w.settlement {
        Some(sid) => Some(state.hub.settlement(now, sid).await.map_err(from_engine)?),
        None => None,
    };
    struct Line {
        participant_id: Option<u64>,
        name: String,
        account_id: Option<u64>,
        currency: Currency,
        net: i128,
        state: Option<&'static str>,
    }
    let mut lines: Vec<Line> = w
        .nets
        .nets
        .iter()
        .map(|(account, net)| {
            let who = owner(state, account);
            Line {
                participant_id: who.as_ref().map(|(p, _)| p.seq),
                name: account.fsp.as_str().to_string(),
                account_id: who.map(|(_, id)| id),
                currency: account.currency,
                net: *net,
                state: settlement
                    .as_ref()
                    .and_then(|s| s.accounts.get(account))
                    .map(|a| a.state.as_str()),
            }
        })
        .collect();
    lines.sort_by(|a, b| {
        (a.currency.as_str(), a.participant_id, &a.name).cmp(&(
            b.currency.as_str(),
            b.participant_id,
            &b.name,
        ))
    });
    let mut totals: BTreeMap<Currency, (i128, i128, i128)> = BTreeMap::new();
    for line in &lines {
        let t = totals.entry(line.currency).or_default();
        t.0 += line.net;
        if line.net > 0 {
            t.1 += line.net;
        } else {
            t.2 -= line.net;
        }
    }
    let settlement_id = settlement.as_ref().map(|s| s.id);
    let settlement_state = settlement.as_ref().map(|s| s.state.as_str());
    if csv {
        let mut out = String::from(
            "line,settlementWindowId,participantId,participant,accountId,currency,net,transferCount,settlementId,settlementState,accountState\n",
        );
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        for line in &lines {
            out.push_str(&format!(
                "ACCOUNT,{id},{},{},{},{},{},,{},{},{}\n",
                opt(line.participant_id),
                csv_field(&line.name),
                opt(line.account_id),
                line.currency.as_str(),
                amount_text(line.net, line.currency),
                opt(settlement_id),
                settlement_state.unwrap_or(""),
                line.state.unwrap_or(""),
            ));
        }
        for (currency, (sum, _, _)) in &totals {
            out.push_str(&format!(
                "TOTAL,{id},,,,{},{},{},{},{},\n",
                currency.as_str(),
                amount_text(*sum, *currency),
                w.nets.transfers,
                opt(settlement_id),
                settlement_state.unwrap_or(""),
            ));
        }
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(out));
    }
    let accounts: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "participantId": l.participant_id, "participant": l.name,
                "accountId": l.account_id, "currency": l.currency.as_str(),
                "net": money(l.net, l.currency), "accountState": l.state,
            })
        })
        .collect();
    let totals: Vec<Value> = totals
        .iter()
        .map(|(c, (sum, sent, received))| {
            json!({
                "currency": c.as_str(), "netSum": money(*sum, *c),
                "netSenders": money(*sent, *c), "netReceivers": money(*received, *c),
                "transferAmount": money(w.nets.amounts.get(c).copied().unwrap_or(0), *c),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "settlementWindowId": id,
        "state": window_state(&w),
        "createdDate": format_timestamp(w.created_ms),
        "changedDate": format_timestamp(w.changed_ms),
        "transferCount": w.nets.transfers,
        "settlementId": settlement_id,
        "settlementState": settlement_state,
        "accounts": accounts,
        "totals": totals,
    })))
}

/// A CSV text field: quoted when it holds a comma, a quote or a line break, and led by
/// `'` when it starts like a spreadsheet formula (`=`, `+`, `-`, `@`), so that opening the
/// statement in a spreadsheet never evaluates a participant's name.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

// ---- settlements -----------------------------------------------------------------------

async fn settlement_with_windows(
    state: &AppState,
    s: &SettlementRecord,
) -> Result<Value, ApiError> {
    let windows = windows_now(state).await?;
    Ok(settlement_json(state, s, &windows))
}

async fn post_settlement(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    respond(create(&state, &body).await)
}

/// `POST /settlements {settlementModel, reason, settlementWindows:[{id}]}`.
async fn create(state: &AppState, body: &[u8]) -> Answer {
    let map = parse_object(body)?;
    only_fields(&map, &["settlementModel", "reason", "settlementWindows"])?;
    let model = match map.get("settlementModel") {
        None => return Err(ApiError::missing("settlementModel")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::validation("settlementModel must be a string")),
    };
    let known = state
        .registry
        .settlement_models()
        .iter()
        .any(|m| m.get("name").and_then(Value::as_str) == Some(model.as_str()));
    if !known {
        return Err(ApiError::validation(format!(
            "settlement model {model} is not registered (POST /settlementModels)"
        )));
    }
    let reason = reason_field(&map)?;
    let list = match map.get("settlementWindows") {
        None => return Err(ApiError::missing("settlementWindows")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::validation("settlementWindows must be an array")),
    };
    let mut ids = Vec::with_capacity(list.len());
    for item in list {
        let Value::Object(entry) = item else {
            return Err(ApiError::validation(
                "settlementWindows items must be {\"id\": <window id>}",
            ));
        };
        only_fields(entry, &["id"])?;
        let id = entry
            .get("id")
            .and_then(Value::as_u64)
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::validation("settlementWindows[].id must be a positive integer")
            })?;
        ids.push(id);
    }
    let record = state
        .hub
        .create_settlement(now_ms(), &model, &reason, &ids)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Ok().json(settlement_with_windows(state, &record).await?))
}

async fn get_settlement(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    respond(one(&state, &path).await)
}

async fn one(state: &AppState, id: &str) -> Answer {
    let id = id_of(id, "settlement id")?;
    let record = state
        .hub
        .settlement(now_ms(), id)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Ok().json(settlement_with_windows(state, &record).await?))
}

async fn list_settlements(
    state: web::Data<AppState>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(settlements(&state, &query).await)
}

/// central-settlement's filters (at least one; no match is a 400 with 3100, as it
/// answers): `state`, `fromDateTime`/`toDateTime` (created date),
/// `fromSettlementWindowDateTime`/`toSettlementWindowDateTime` (a window's created date),
/// `settlementWindowId`, `currency`, `participantId`, `accountId` (POSITION account id).
/// A matching settlement is listed whole.
async fn settlements(state: &AppState, query: &BTreeMap<String, String>) -> Answer {
    const FILTERS: [&str; 9] = [
        "state",
        "fromDateTime",
        "toDateTime",
        "fromSettlementWindowDateTime",
        "toSettlementWindowDateTime",
        "settlementWindowId",
        "currency",
        "participantId",
        "accountId",
    ];
    only_params(query, &FILTERS)?;
    if query.is_empty() {
        return Err(ApiError::validation(format!(
            "Use at least one parameter: {}",
            FILTERS.join(", ")
        )));
    }
    let wanted_state = query
        .get("state")
        .map(|t| {
            SettlementState::parse(t)
                .ok_or_else(|| ApiError::validation(format!("unknown settlement state {t}")))
        })
        .transpose()?;
    let from = query_time(query, "fromDateTime")?;
    let to = query_time(query, "toDateTime")?;
    let window_from = query_time(query, "fromSettlementWindowDateTime")?;
    let window_to = query_time(query, "toSettlementWindowDateTime")?;
    let window_id = query_id(query, "settlementWindowId")?;
    let currency = query
        .get("currency")
        .map(|c| {
            Currency::new(c)
                .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))
        })
        .transpose()?;
    let participant = match query_id(query, "participantId")? {
        Some(id) => Some(
            participant_by_id(state, id)
                .ok_or_else(|| ApiError::validation(format!("participant {id} does not exist")))?,
        ),
        None => None,
    };
    let account_id = query_id(query, "accountId")?;
    let windows = windows_now(state).await?;
    let records = state.hub.settlements(now_ms()).await.map_err(from_engine)?;
    let out: Vec<Value> = records
        .iter()
        .filter(|s| wanted_state.is_none_or(|w| s.state == w))
        .filter(|s| from.is_none_or(|t| s.created_ms >= t))
        .filter(|s| to.is_none_or(|t| s.created_ms <= t))
        .filter(|s| window_id.is_none_or(|id| s.windows.contains(&id)))
        .filter(|s| {
            (window_from.is_none() && window_to.is_none())
                || s.windows.iter().any(|id| {
                    windows.iter().any(|w| {
                        w.id == *id
                            && window_from.is_none_or(|t| w.created_ms >= t)
                            && window_to.is_none_or(|t| w.created_ms <= t)
                    })
                })
        })
        .filter(|s| currency.is_none_or(|c| s.accounts.keys().any(|a| a.currency == c)))
        .filter(|s| {
            participant
                .as_ref()
                .is_none_or(|p| s.accounts.keys().any(|a| a.fsp.as_str() == p.name))
        })
        .filter(|s| {
            account_id.is_none_or(|id| {
                s.accounts
                    .keys()
                    .any(|a| owner(state, a).is_some_and(|(_, own)| own == id))
            })
        })
        .map(|s| settlement_json(state, s, &windows))
        .collect();
    if out.is_empty() {
        return Err(ApiError::validation("no settlement matches the filters"));
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn put_settlement(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(update(&state, &path, &body).await)
}

/// `PUT /settlements/{id}`: either `{"state":"ABORTED","reason"}` or
/// `{"participants":[{"id","accounts":[{"id","state","reason","externalReference"}]}]}`
/// (each account one state further; the engine checks the order and membership). The
/// engine records one reason per change: the first account's.
async fn update(state: &AppState, id: &str, body: &[u8]) -> Answer {
    let id = id_of(id, "settlement id")?;
    let map = parse_object(body)?;
    let now = now_ms();
    if map.contains_key("participants") {
        only_fields(&map, &["participants"])?;
        let updates = account_updates(state, &map)?;
        let reason = updates
            .first()
            .map(|u| u.reason.clone())
            .unwrap_or_default();
        let record = state
            .hub
            .update_settlement(now, id, &updates, &reason)
            .await
            .map_err(from_engine)?;
        return Ok(HttpResponse::Ok().json(settlement_with_windows(state, &record).await?));
    }
    only_fields(&map, &["state", "reason", "externalReference"])?;
    match map.get("state") {
        Some(Value::String(s)) if s == "ABORTED" => {}
        None => return Err(ApiError::missing("participants")),
        Some(_) => {
            return Err(ApiError::validation(
                "a settlement's state is set through its accounts (participants); only ABORTED is set for the whole settlement",
            ))
        }
    }
    let reason = reason_field(&map)?;
    let record = state
        .hub
        .abort_settlement(now, id, &reason)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Ok().json(settlement_with_windows(state, &record).await?))
}

fn account_updates(
    state: &AppState,
    map: &Map<String, Value>,
) -> Result<Vec<AccountUpdate>, ApiError> {
    let Some(Value::Array(participants)) = map.get("participants") else {
        return Err(ApiError::validation("participants must be an array"));
    };
    let mut updates: Vec<AccountUpdate> = Vec::new();
    for item in participants {
        let Value::Object(entry) = item else {
            return Err(ApiError::validation("participants items must be objects"));
        };
        only_fields(entry, &["id", "accounts"])?;
        let pid = entry
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| ApiError::validation("participants[].id must be a participant id"))?;
        let p = participant_by_id(state, pid)
            .ok_or_else(|| ApiError::validation(format!("participant {pid} does not exist")))?;
        let Some(Value::Array(accounts)) = entry.get("accounts") else {
            return Err(ApiError::validation(
                "participants[].accounts must be an array",
            ));
        };
        for account in accounts {
            let Value::Object(a) = account else {
                return Err(ApiError::validation("accounts items must be objects"));
            };
            only_fields(a, &["id", "state", "reason", "externalReference"])?;
            let aid = a
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| ApiError::validation("accounts[].id must be an account id"))?;
            let currency = match p.account(aid) {
                Some((currency, false)) => currency,
                _ => {
                    return Err(ApiError::validation(format!(
                        "account {aid} is not a POSITION account of participant {pid}"
                    )))
                }
            };
            let fsp =
                FspId::new(&p.name).ok_or_else(|| ApiError::validation("bad participant name"))?;
            let currency = Currency::new(&currency)
                .ok_or_else(|| ApiError::validation("bad account currency"))?;
            let state_text = match a.get("state") {
                Some(Value::String(s)) => s.as_str(),
                None => return Err(ApiError::missing("accounts[].state")),
                Some(_) => return Err(ApiError::validation("accounts[].state must be a string")),
            };
            let to = SettlementState::parse(state_text)
                .filter(|s| {
                    !matches!(
                        s,
                        SettlementState::Settling
                            | SettlementState::Aborted
                            | SettlementState::PendingSettlement
                    )
                })
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "accounts[].state {state_text} is not PS_TRANSFERS_RECORDED, PS_TRANSFERS_RESERVED, PS_TRANSFERS_COMMITTED or SETTLED"
                    ))
                })?;
            let reason = reason_field(a)?;
            let external_reference = match a.get("externalReference") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.chars().count() <= 256 => Some(s.clone()),
                Some(_) => {
                    return Err(ApiError::validation(
                        "externalReference must be a string of at most 256 characters",
                    ))
                }
            };
            let key = AccountKey::new(fsp, currency);
            if updates.iter().any(|u| u.account == key) {
                return Err(ApiError::validation(format!("account {aid} appears twice")));
            }
            updates.push(AccountUpdate {
                account: key,
                state: to,
                reason,
                external_reference,
            });
        }
    }
    if updates.is_empty() {
        return Err(ApiError::validation("participants name no account"));
    }
    Ok(updates)
}

// ---- the hub's accounts ----------------------------------------------------------------

async fn get_hub_accounts(state: web::Data<AppState>) -> HttpResponse {
    respond(hub_accounts(&state).await)
}

/// The hub accounts recorded with `POST /participants/{hub}/accounts` (ids as `hub_json`
/// numbers them: from 1 in (currency, type) order), with the engine's balances summed over
/// partitions. Signs as central-ledger shows the hub's balances:
///
/// * HUB_MULTILATERAL_SETTLEMENT is a position-type account: its value takes the
///   opposite of every settlement change of a DFSP position (it goes down by a net
///   receiver's net at PS_TRANSFERS_RESERVED and up by a net sender's at
///   PS_TRANSFERS_COMMITTED), so it is back to zero when a settlement is done;
/// * HUB_RECONCILIATION is the counterpart of funds in and out: central-ledger books a
///   funds in as a debit of the hub's reconciliation account (its value rises) against
///   the DFSP's SETTLEMENT account (whose value falls, as `GET
///   /participants/{name}/accounts` shows it), so its value here is the funds in minus the
///   funds out.
///
/// The engine's third hub figure, the opposite of settlement changes of liquidity covers,
/// sums to zero per currency once each commit step has reached every account, which a
/// settlement change does before it answers; it is not shown.
async fn hub_accounts(state: &AppState) -> Answer {
    let balances = state.hub.hub_accounts().await.map_err(from_engine)?;
    let changed = format_timestamp(now_ms());
    let mut out = Vec::new();
    for (i, (currency_text, kind)) in state.registry.hub_accounts().into_iter().enumerate() {
        let Some(currency) = Currency::new(&currency_text) else {
            continue;
        };
        let figures = balances.get(&currency);
        let value = match kind.as_str() {
            "HUB_MULTILATERAL_SETTLEMENT" => figures.map_or(0, |f| f.multilateral),
            "HUB_RECONCILIATION" => figures.map_or(0, |f| -f.reconciliation),
            _ => 0,
        };
        out.push(json!({
            "id": i + 1,
            "ledgerAccountType": kind,
            "currency": currency_text,
            "isActive": 1,
            "value": money(value, currency),
            "reservedValue": 0,
            "changedDate": changed,
        }));
    }
    Ok(HttpResponse::Ok().json(out))
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("dfsp1"), "dfsp1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("@x,y"), "\"'@x,y\"");
    }
}
