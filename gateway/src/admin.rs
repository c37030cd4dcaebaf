//! The admin API, shaped like central-ledger's so that existing provisioning scripts work,
//! plus the operator and health endpoints.
//!
//! A DFSP needs only: `POST /participants` (one per currency), initial position and
//! limits, funds in on its SETTLEMENT account, and its callback endpoints.
//!
//! Amounts (limit values, initial positions, funds) are taken as central-ledger takes
//! them: JSON numbers or decimal strings, trailing zeros allowed (`50000.0`, `"4000.00"`).
//! A JSON number is converted from its text in the body (`fspiop::NumberTexts`), never
//! through a float, so `4000.000000000000000001` is refused, not read as 4000.

use crate::engine_errors::{api_error, from_engine};
use crate::fspiop::{
    format_timestamp, only_fields, parse_admin_decimal, parse_object, string_field, ApiError,
    NumberTexts,
};
use crate::limits::SETTLEMENT_MODEL_NAME_CHARS_MAX;
use crate::registry::{Participant, RegistryError, HUB_ACCOUNT_TYPES};
use crate::transfers::error_response;
use crate::AppState;
use actix_web::{web, HttpResponse};
use engine::command::Admin;
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::money::format_amount;
use engine::runtime::now_ms;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Fixed paths first: actix matches routes in the order they are registered, and
    // `/participants/limits` must not be taken for a participant called "limits".
    cfg.route("/participants", web::post().to(create_participant))
        .route("/participants", web::get().to(list_participants))
        .route("/participants/limits", web::get().to(all_limits))
        .route("/settlementModels", web::post().to(create_settlement_model))
        .route("/settlementModels", web::get().to(list_settlement_models))
        .route("/participants/{name}", web::get().to(get_participant))
        .route("/participants/{name}", web::put().to(set_active))
        .route(
            "/participants/{name}/initialPositionAndLimits",
            web::post().to(initial_position_and_limits),
        )
        .route("/participants/{name}/limits", web::get().to(get_limits))
        .route("/participants/{name}/limits", web::put().to(put_limits))
        .route("/participants/{name}/accounts", web::get().to(get_accounts))
        .route(
            "/participants/{name}/accounts",
            web::post().to(create_hub_account),
        )
        .route(
            "/participants/{name}/accounts/{id}",
            web::post().to(funds_action),
        )
        .route(
            "/participants/{name}/accounts/{id}",
            web::put().to(crate::activation::put_account),
        )
        .route(
            "/participants/{name}/accounts/{id}/transfers/{transfer_id}",
            web::put().to(funds_out_finish),
        )
        .route(
            "/participants/{name}/endpoints",
            web::post().to(add_endpoint),
        )
        .route(
            "/participants/{name}/endpoints",
            web::get().to(get_endpoints),
        )
        .route(
            "/participants/{name}/positions",
            web::get().to(get_positions),
        )
        .route(
            "/participants/{name}/ledger",
            web::get().to(crate::ledger::get),
        )
        .route("/partitions", web::get().to(partitions))
        .route("/alarms", web::get().to(crate::alarm::list))
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

pub(crate) type Answer = Result<HttpResponse, ApiError>;

pub(crate) fn respond(answer: Answer) -> HttpResponse {
    answer.unwrap_or_else(|e| error_response(&e))
}

pub(crate) fn not_found(name: &str) -> ApiError {
    ApiError::new(
        404,
        3200,
        format!("Generic ID not found - participant {name}"),
    )
}

/// A registry write that failed: the engine's error as the engine mapping says, a
/// registry over its bound as 503 (nothing was recorded; an operator must make room).
pub(crate) fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Storage(e) => api_error(&e),
        RegistryError::Full(what) => {
            ApiError::new(503, 2003, format!("Service currently unavailable - {what}"))
        }
    }
}

pub(crate) fn participant(state: &AppState, name: &str) -> Result<Participant, ApiError> {
    state.registry.get(name).ok_or_else(|| not_found(name))
}

fn currency_of(text: &str) -> Result<Currency, ApiError> {
    Currency::new(text).ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))
}

pub(crate) fn account_of(p: &Participant, currency: &str) -> Result<AccountKey, ApiError> {
    if !p.currencies.iter().any(|c| c == currency) {
        return Err(ApiError::validation(format!(
            "{} has no {currency} account",
            p.name
        )));
    }
    let fsp = FspId::new(&p.name).ok_or_else(|| ApiError::validation("bad participant name"))?;
    Ok(AccountKey::new(fsp, currency_of(currency)?))
}

/// A money value as central-ledger shows it: a JSON number.
pub(crate) fn money_value(minor: i128, currency: Currency) -> Value {
    let minor = i64::try_from(minor).unwrap_or(if minor < 0 { i64::MIN } else { i64::MAX });
    serde_json::from_str(&format_amount(minor, currency)).unwrap_or(Value::Null)
}

/// An amount from JSON at `path` of the body: a number (read from its text in
/// `numbers`) or a decimal string, exact in minor units; see
/// [`parse_admin_decimal`](crate::fspiop::parse_admin_decimal).
fn amount_value(
    value: Option<&Value>,
    numbers: &NumberTexts,
    path: &[&str],
    currency: Currency,
) -> Result<i64, ApiError> {
    let what = path.join(".");
    let text = match value {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Number(_)) => numbers
            .get(path)
            .ok_or_else(|| ApiError::validation(format!("{what} must be a number")))?,
        None => return Err(ApiError::missing(&what)),
        Some(_) => {
            return Err(ApiError::validation(format!(
                "{what} must be a number or a decimal string"
            )))
        }
    };
    parse_admin_decimal(text, currency).map_err(|e| ApiError::validation(format!("{what}: {e}")))
}

fn participant_json(p: &Participant) -> Value {
    let mut accounts = Vec::new();
    for (i, currency) in p.currencies.iter().enumerate() {
        for (settlement, kind) in [(false, "POSITION"), (true, "SETTLEMENT")] {
            accounts.push(json!({
                "id": p.account_id(i, settlement),
                "ledgerAccountType": kind,
                "currency": currency,
                "isActive": if p.is_active { 1 } else { 0 },
            }));
        }
    }
    json!({
        "name": p.name,
        "id": format!("/participants/{}", p.name),
        "created": format_timestamp(p.created_ms),
        "isActive": if p.is_active { 1 } else { 0 },
        "links": {"self": format!("/participants/{}", p.name)},
        "accounts": accounts,
    })
}

async fn create_participant(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    respond(create(&state, &body).await)
}

async fn create(state: &AppState, body: &[u8]) -> Answer {
    let map = parse_object(body)?;
    only_fields(&map, &["name", "currency", "isProxy"])?;
    let name = string_field(&map, "name")?;
    let fsp = FspId::new(name)
        .ok_or_else(|| ApiError::validation("name must be 1 to 32 printable characters"))?;
    if name.eq_ignore_ascii_case(&state.hub_name) {
        return Err(ApiError::validation(format!(
            "{name} is the hub's own name; the hub's accounts are created with POST /participants/{name}/accounts"
        )));
    }
    let currency_text = string_field(&map, "currency")?;
    let currency = currency_of(currency_text)?;
    let _one_at_a_time = state.admin_lock.lock().await;
    let mut p = state.registry.get(name).unwrap_or_else(|| Participant {
        name: name.to_string(),
        seq: state.registry.len() as u64 + 1,
        created_ms: now_ms(),
        is_active: true,
        currencies: Vec::new(),
        endpoints: BTreeMap::new(),
        alarm_pct: BTreeMap::new(),
        inactive_currencies: Default::default(),
    });
    if p.currencies.iter().any(|c| c == currency_text) {
        return Err(ApiError::new(
            400,
            3003,
            "Add Party information error - participant currency has already been registered",
        ));
    }
    state
        .hub
        .admin(
            now_ms(),
            Admin::CreateAccount {
                account: AccountKey::new(fsp, currency),
            },
        )
        .await
        .map_err(from_engine)?;
    p.currencies.push(currency_text.to_string());
    state
        .registry
        .put(&state.hub, p.clone())
        .await
        .map_err(registry_error)?;
    Ok(HttpResponse::Created().json(participant_json(&p)))
}

async fn list_participants(state: web::Data<AppState>) -> HttpResponse {
    // central-ledger lists the hub participant too.
    let mut out = vec![hub_json(&state)];
    for p in state.registry.all() {
        out.push(participant_json(&p));
    }
    HttpResponse::Ok().json(out)
}

async fn get_participant(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    if path.as_str() == state.hub_name {
        return HttpResponse::Ok().json(hub_json(&state));
    }
    respond(match participant(&state, &path) {
        Ok(p) => Ok(HttpResponse::Ok().json(participant_json(&p))),
        Err(e) => Err(e),
    })
}

/// The hub as a participant: always present and active, with the hub accounts recorded
/// by provisioning (numbered from 1 in (currency, type) order).
fn hub_json(state: &AppState) -> Value {
    let accounts: Vec<Value> = state
        .registry
        .hub_accounts()
        .into_iter()
        .enumerate()
        .map(|(i, (currency, kind))| {
            json!({"id": i + 1, "ledgerAccountType": kind, "currency": currency, "isActive": 1})
        })
        .collect();
    json!({
        "name": state.hub_name,
        "id": format!("/participants/{}", state.hub_name),
        "created": format_timestamp(0),
        "isActive": 1,
        "links": {"self": format!("/participants/{}", state.hub_name)},
        "accounts": accounts,
    })
}

async fn create_hub_account(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(hub_account(&state, &path, &body).await)
}

/// `POST /participants/{hub}/accounts {currency, type}`: central-ledger's provisioning
/// creates `HUB_MULTILATERAL_SETTLEMENT` and `HUB_RECONCILIATION` per currency before
/// anything else. This hub keeps no money of its own, so the accounts are recorded (and
/// listed) but nothing depends on them; scripts that make them still run.
async fn hub_account(state: &AppState, name: &str, body: &[u8]) -> Answer {
    let map = parse_object(body)?;
    only_fields(&map, &["currency", "type"])?;
    let currency = currency_of(string_field(&map, "currency")?)?;
    let kind = string_field(&map, "type")?;
    if name != state.hub_name {
        participant(state, name)?;
        return Err(ApiError::validation(
            "a DFSP's POSITION and SETTLEMENT accounts come with POST /participants",
        ));
    }
    if !HUB_ACCOUNT_TYPES.contains(&kind) {
        return Err(ApiError::validation(format!(
            "hub account type must be one of {}",
            HUB_ACCOUNT_TYPES.join(", ")
        )));
    }
    let _one_at_a_time = state.admin_lock.lock().await;
    let created = state
        .registry
        .put_hub_account(&state.hub, currency.as_str(), kind)
        .await
        .map_err(registry_error)?;
    if !created {
        return Err(ApiError::new(
            400,
            3003,
            "Add Party information error - hub account has already been registered",
        ));
    }
    Ok(HttpResponse::Created().json(hub_json(state)))
}

async fn create_settlement_model(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    respond(settlement_model(&state, &body).await)
}

/// `POST /settlementModels`: recorded as given (after a shape check) so provisioning
/// scripts run; positions here are settled the same way whatever the model says.
async fn settlement_model(state: &AppState, body: &[u8]) -> Answer {
    let map = parse_object(body)?;
    only_fields(
        &map,
        &[
            "name",
            "settlementGranularity",
            "settlementInterchange",
            "settlementDelay",
            "currency",
            "requireLiquidityCheck",
            "ledgerAccountType",
            "settlementAccountType",
            "autoPositionReset",
        ],
    )?;
    let name = string_field(&map, "name")?;
    if name.is_empty()
        || name.len() > SETTLEMENT_MODEL_NAME_CHARS_MAX
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::validation(
            "settlement model name must be 1 to 64 printable characters",
        ));
    }
    for (field, allowed) in [
        ("settlementGranularity", &["GROSS", "NET"][..]),
        ("settlementInterchange", &["BILATERAL", "MULTILATERAL"][..]),
        ("settlementDelay", &["IMMEDIATE", "DEFERRED"][..]),
    ] {
        let value = string_field(&map, field)?;
        if !allowed.contains(&value) {
            return Err(ApiError::validation(format!(
                "{field} must be one of {}",
                allowed.join(", ")
            )));
        }
    }
    if let Some(currency) = map.get("currency") {
        if !currency.is_null() {
            currency_of(string_field(&map, "currency")?)?;
        }
    }
    let _one_at_a_time = state.admin_lock.lock().await;
    let created = state
        .registry
        .put_settlement_model(&state.hub, name, Value::Object(map.clone()))
        .await
        .map_err(registry_error)?;
    if !created {
        return Err(ApiError::new(
            400,
            3003,
            "Add Party information error - settlement model already exists",
        ));
    }
    Ok(HttpResponse::Created().finish())
}

async fn list_settlement_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.registry.settlement_models())
}

async fn set_active(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(activate(&state, &path, &body).await)
}

/// `{"isActive": true|false}` (or 1|0), nothing else.
pub(crate) fn active_flag(map: &Map<String, Value>) -> Result<bool, ApiError> {
    only_fields(map, &["isActive"])?;
    match map.get("isActive") {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
            Ok(n.as_u64() == Some(1))
        }
        Some(_) => Err(ApiError::validation("isActive must be a boolean")),
        None => Err(ApiError::missing("isActive")),
    }
}

async fn activate(state: &AppState, name: &str, body: &[u8]) -> Answer {
    let _one_at_a_time = state.admin_lock.lock().await;
    let mut p = participant(state, name)?;
    let map = parse_object(body)?;
    let active = active_flag(&map)?;
    let fsp = FspId::new(name).ok_or_else(|| not_found(name))?;
    state
        .hub
        .admin(now_ms(), Admin::SetActive { fsp, active })
        .await
        .map_err(from_engine)?;
    p.is_active = active;
    state
        .registry
        .put(&state.hub, p.clone())
        .await
        .map_err(registry_error)?;
    Ok(HttpResponse::Ok().json(participant_json(&p)))
}

/// `{currency, limit: {type: NET_DEBIT_CAP, value, alarmPercentage?}}` → (NDC in minor
/// units, alarm percentage if given).
fn limit_body(
    map: &Map<String, Value>,
    numbers: &NumberTexts,
    currency: Currency,
) -> Result<(i64, Option<f64>), ApiError> {
    let limit = match map.get("limit") {
        Some(Value::Object(limit)) => limit,
        Some(_) => return Err(ApiError::validation("limit must be an object")),
        None => return Err(ApiError::missing("limit")),
    };
    only_fields(limit, &["type", "value", "alarmPercentage"])?;
    if string_field(limit, "type")? != "NET_DEBIT_CAP" {
        return Err(ApiError::validation("limit type must be NET_DEBIT_CAP"));
    }
    let ndc = amount_value(limit.get("value"), numbers, &["limit", "value"], currency)?;
    let alarm = match limit.get("alarmPercentage") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(pct) if (0.0..=100.0).contains(&pct) => Some(pct),
            _ => return Err(ApiError::validation("alarmPercentage must be 0 to 100")),
        },
        Some(_) => return Err(ApiError::validation("alarmPercentage must be a number")),
    };
    Ok((ndc, alarm))
}

/// Records an alarm percentage with the participant (reported by the limits endpoints).
async fn store_alarm(
    state: &AppState,
    name: &str,
    currency: Currency,
    alarm: Option<f64>,
) -> Result<(), ApiError> {
    let Some(pct) = alarm else {
        return Ok(());
    };
    let _one_at_a_time = state.admin_lock.lock().await;
    let mut p = participant(state, name)?;
    p.alarm_pct.insert(currency.as_str().to_string(), pct);
    state
        .registry
        .put(&state.hub, p)
        .await
        .map_err(registry_error)
}

/// What central-ledger reports when no alarm percentage was given.
const ALARM_PCT_DEFAULT: f64 = 10.0;

fn alarm_of(p: &Participant, currency: Currency) -> f64 {
    p.alarm_pct
        .get(currency.as_str())
        .copied()
        .unwrap_or(ALARM_PCT_DEFAULT)
}

async fn initial_position_and_limits(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(initial(&state, &path, &body).await)
}

async fn initial(state: &AppState, name: &str, body: &[u8]) -> Answer {
    let p = participant(state, name)?;
    let map = parse_object(body)?;
    only_fields(&map, &["currency", "limit", "initialPosition"])?;
    let account = account_of(&p, string_field(&map, "currency")?)?;
    let numbers = NumberTexts::scan(body);
    let (ndc, alarm) = limit_body(&map, &numbers, account.currency)?;
    let position = match map.get("initialPosition") {
        None => 0,
        Some(v) => amount_value(Some(v), &numbers, &["initialPosition"], account.currency)?,
    };
    state
        .hub
        .admin(
            now_ms(),
            Admin::InitialPositionAndLimits {
                account,
                position,
                ndc,
            },
        )
        .await
        .map_err(from_engine)?;
    store_alarm(state, name, account.currency, alarm).await?;
    Ok(HttpResponse::Created().finish())
}

async fn get_limits(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(limits(&state, &path, &query).await)
}

async fn limits(state: &AppState, name: &str, query: &BTreeMap<String, String>) -> Answer {
    let p = participant(state, name)?;
    let out: Vec<Value> = limit_list(state, &p, query)
        .await?
        .into_iter()
        .map(|(_, limit)| limit)
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

/// `{currency, limit}` of each account whose limits are set, filtered by `?currency=`
/// and `?type=` (only NET_DEBIT_CAP exists).
async fn limit_list(
    state: &AppState,
    p: &Participant,
    query: &BTreeMap<String, String>,
) -> Result<Vec<(Currency, Value)>, ApiError> {
    if query.get("type").is_some_and(|t| t != "NET_DEBIT_CAP") {
        return Ok(Vec::new());
    }
    Ok(account_views(state, p, query)
        .await?
        .into_iter()
        .filter(|(_, view)| view.limits_set)
        .map(|(currency, view)| {
            let limit = json!({
                "currency": currency.as_str(),
                "limit": {"type": "NET_DEBIT_CAP", "value": money_value(view.ndc, currency),
                          "alarmPercentage": alarm_of(p, currency)},
            });
            (currency, limit)
        })
        .collect())
}

async fn all_limits(
    state: web::Data<AppState>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(every_limit(&state, &query).await)
}

/// `GET /participants/limits`: `[{name, currency, limit}]` over all participants.
async fn every_limit(state: &AppState, query: &BTreeMap<String, String>) -> Answer {
    let mut out = Vec::new();
    for p in state.registry.all() {
        for (_, mut limit) in limit_list(state, &p, query).await? {
            limit["name"] = json!(p.name);
            out.push(limit);
        }
    }
    Ok(HttpResponse::Ok().json(out))
}

/// The engine's view of each of a participant's accounts, limited to `?currency=` if given.
async fn account_views(
    state: &AppState,
    p: &Participant,
    query: &BTreeMap<String, String>,
) -> Result<Vec<(Currency, engine::runtime::AccountView)>, ApiError> {
    let mut out = Vec::new();
    for currency in &p.currencies {
        if query.get("currency").is_some_and(|c| c != currency) {
            continue;
        }
        let account = account_of(p, currency)?;
        let view = state
            .hub
            .account(account)
            .await
            .map_err(from_engine)?
            .ok_or_else(|| {
                ApiError::new(
                    503,
                    2003,
                    "Service currently unavailable - account unavailable",
                )
            })?;
        out.push((account.currency, view));
    }
    Ok(out)
}

async fn put_limits(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(set_limits(&state, &path, &body).await)
}

async fn set_limits(state: &AppState, name: &str, body: &[u8]) -> Answer {
    let p = participant(state, name)?;
    let map = parse_object(body)?;
    only_fields(&map, &["currency", "limit"])?;
    let account = account_of(&p, string_field(&map, "currency")?)?;
    let (ndc, alarm) = limit_body(&map, &NumberTexts::scan(body), account.currency)?;
    state
        .hub
        .admin(now_ms(), Admin::SetNdc { account, ndc })
        .await
        .map_err(from_engine)?;
    store_alarm(state, name, account.currency, alarm).await?;
    Ok(HttpResponse::Ok().json(json!({
        "currency": account.currency.as_str(),
        "limit": {"type": "NET_DEBIT_CAP", "value": money_value(i128::from(ndc), account.currency),
                  "alarmPercentage": alarm.unwrap_or(ALARM_PCT_DEFAULT)},
    })))
}

async fn get_accounts(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    respond(accounts(&state, &path).await)
}

async fn accounts(state: &AppState, name: &str) -> Answer {
    let p = participant(state, name)?;
    let mut out = Vec::new();
    for (i, currency) in p.currencies.iter().enumerate() {
        let account = account_of(&p, currency)?;
        let view = state.hub.account(account).await.map_err(from_engine)?;
        let (position, reserved, cover) = view
            .map(|v| (v.position, v.reserved, v.liquidity_cover))
            .unwrap_or((0, 0, 0));
        let changed = format_timestamp(now_ms());
        out.push(json!({
            "id": p.account_id(i, false), "ledgerAccountType": "POSITION", "currency": currency,
            "isActive": if p.account_active(currency) { 1 } else { 0 },
            "value": money_value(position, account.currency),
            "reservedValue": money_value(reserved, account.currency), "changedDate": changed,
        }));
        // central-ledger's sign: deposited funds make the SETTLEMENT balance negative.
        out.push(json!({
            "id": p.account_id(i, true), "ledgerAccountType": "SETTLEMENT", "currency": currency,
            "isActive": if p.account_active(currency) { 1 } else { 0 },
            "value": money_value(-cover, account.currency),
            "reservedValue": 0, "changedDate": changed,
        }));
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn funds_action(
    state: web::Data<AppState>,
    path: web::Path<(String, u64)>,
    body: web::Bytes,
) -> HttpResponse {
    respond(funds(&state, &path.0, path.1, &body).await)
}

async fn funds(state: &AppState, name: &str, account_id: u64, body: &[u8]) -> Answer {
    let p = participant(state, name)?;
    let (currency, settlement) = p
        .account(account_id)
        .ok_or_else(|| ApiError::new(404, 3200, "Generic ID not found - account"))?;
    if !settlement {
        return Err(ApiError::validation("funds move on the SETTLEMENT account"));
    }
    let map = parse_object(body)?;
    only_fields(
        &map,
        &[
            "transferId",
            "externalReference",
            "action",
            "reason",
            "amount",
            "extensionList",
        ],
    )?;
    let funds_id = TransferId::parse(string_field(&map, "transferId")?)
        .ok_or_else(|| ApiError::validation("transferId must be a UUID or a ULID"))?;
    let account = account_of(&p, &currency)?;
    let Some(Value::Object(money)) = map.get("amount") else {
        return Err(ApiError::missing("amount"));
    };
    if string_field(money, "currency")? != currency {
        return Err(ApiError::validation(
            "amount currency does not match the account",
        ));
    }
    let amount = amount_value(
        money.get("amount"),
        &NumberTexts::scan(body),
        &["amount", "amount"],
        account.currency,
    )?;
    let admin = match string_field(&map, "action")? {
        "recordFundsIn" => Admin::FundsIn {
            account,
            amount,
            funds_id,
        },
        "recordFundsOutPrepareReserve" => Admin::FundsOutReserve {
            account,
            amount,
            funds_id,
        },
        other => return Err(ApiError::validation(format!("unknown action {other}"))),
    };
    state
        .hub
        .admin(now_ms(), admin)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Accepted().finish())
}

async fn funds_out_finish(
    state: web::Data<AppState>,
    path: web::Path<(String, u64, String)>,
    body: web::Bytes,
) -> HttpResponse {
    respond(funds_out(&state, &path.0, path.1, &path.2, &body).await)
}

async fn funds_out(
    state: &AppState,
    name: &str,
    account_id: u64,
    transfer: &str,
    body: &[u8],
) -> Answer {
    let p = participant(state, name)?;
    let (currency, settlement) = p
        .account(account_id)
        .ok_or_else(|| ApiError::new(404, 3200, "Generic ID not found - account"))?;
    if !settlement {
        return Err(ApiError::validation("funds move on the SETTLEMENT account"));
    }
    let account = account_of(&p, &currency)?;
    let funds_id = TransferId::parse(transfer)
        .ok_or_else(|| ApiError::validation("transferId must be a UUID or a ULID"))?;
    let map = parse_object(body)?;
    only_fields(
        &map,
        &["action", "reason", "externalReference", "extensionList"],
    )?;
    let admin = match string_field(&map, "action")? {
        "recordFundsOutCommit" => Admin::FundsOutCommit { account, funds_id },
        "recordFundsOutAbort" => Admin::FundsOutAbort { account, funds_id },
        other => return Err(ApiError::validation(format!("unknown action {other}"))),
    };
    state
        .hub
        .admin(now_ms(), admin)
        .await
        .map_err(from_engine)?;
    Ok(HttpResponse::Accepted().finish())
}

async fn add_endpoint(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    respond(endpoint(&state, &path, &body).await)
}

async fn endpoint(state: &AppState, name: &str, body: &[u8]) -> Answer {
    let _one_at_a_time = state.admin_lock.lock().await;
    let mut p = participant(state, name)?;
    let map = parse_object(body)?;
    only_fields(&map, &["type", "value"])?;
    let kind = string_field(&map, "type")?;
    let value = string_field(&map, "value")?;
    if kind.is_empty() || kind.len() > 64 || value.len() > 1_024 {
        return Err(ApiError::validation("endpoint type or value too long"));
    }
    let url = value.starts_with("http://") || value.starts_with("https://");
    // The email types (`NET_DEBIT_CAP_THRESHOLD_BREACH_EMAIL`, ...) take an address, as the
    // standard hub setup registers them; an http(s) URL there gets the alarm as a POST.
    let email = kind.ends_with("_EMAIL")
        && value.contains('@')
        && value.bytes().all(|b| b.is_ascii_graphic());
    if !url && !email {
        return Err(ApiError::validation(
            "endpoint value must be an http(s) URL (or an email address for the _EMAIL types)",
        ));
    }
    p.endpoints.insert(kind.to_string(), value.to_string());
    state
        .registry
        .put(&state.hub, p)
        .await
        .map_err(registry_error)?;
    Ok(HttpResponse::Created().finish())
}

async fn get_endpoints(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    respond(participant(&state, &path).map(|p| {
        let list: Vec<Value> = p
            .endpoints
            .iter()
            .map(|(k, v)| json!({"type": k, "value": v}))
            .collect();
        HttpResponse::Ok().json(list)
    }))
}

async fn get_positions(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
) -> HttpResponse {
    respond(positions(&state, &path, &query).await)
}

/// Positions summed over all slices; one object when `currency` is asked, else a list.
async fn positions(state: &AppState, name: &str, query: &BTreeMap<String, String>) -> Answer {
    let p = participant(state, name)?;
    let mut out: Vec<Value> = account_views(state, &p, query)
        .await?
        .into_iter()
        .map(|(currency, view)| {
            json!({
                "currency": currency.as_str(),
                "value": money_value(view.position, currency),
                "reservedValue": money_value(view.reserved, currency),
                "changedDate": format_timestamp(now_ms()),
            })
        })
        .collect();
    if query.contains_key("currency") {
        return match out.pop() {
            Some(one) => Ok(HttpResponse::Ok().json(one)),
            None => Err(ApiError::validation("no account in that currency")),
        };
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn partitions(state: web::Data<AppState>) -> HttpResponse {
    let rates = state
        .rates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let list: Vec<Value> = state
        .hub
        .partitions()
        .into_iter()
        .map(|p| {
            let ops = rates.get(p.partition as usize).copied().unwrap_or(0.0);
            json!({
                "partition": p.partition, "owner": p.owner, "epoch": p.epoch,
                "committedBatch": p.committed_batch, "queueDepth": p.queue_depth,
                "appliedCommands": p.applied_commands,
                "opsPerSecond": (ops * 10.0).round() / 10.0,
                "stopped": p.stopped,
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "OK"}))
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let stopped: Vec<u32> = state
        .hub
        .partitions()
        .iter()
        .filter(|p| p.stopped.is_some())
        .map(|p| p.partition)
        .collect();
    // A store that refused a write or sync refuses every later one: nothing more can
    // be made durable, so the hub is not ready even while its partitions are idle.
    let storage = state.hub.storage_failed();
    match (stopped.is_empty(), storage) {
        (true, None) => HttpResponse::Ok().json(json!({"status": "OK"})),
        (_, Some(reason)) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "DOWN",
            "stoppedPartitions": stopped,
            "storage": reason,
        })),
        (false, None) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "DOWN", "stoppedPartitions": stopped})),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let gauges = crate::metrics::NotifierGauges {
        callbacks_in_flight: state.notifier.in_flight(),
    };
    let mut body = state
        .metrics
        .render(&state.hub.metrics(), &state.hub.partitions(), gauges);
    state.notifier.render_metrics(&mut body);
    state.alarms.render_metrics(&mut body);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::document().to_string())
}
