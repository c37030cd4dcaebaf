//! The FSPIOP transfers API: `POST /transfers`, `PUT /transfers/{ID}`,
//! `PUT /transfers/{ID}/error`, `GET /transfers/{ID}`.
//!
//! Each handler validates synchronously (400 / 406 with an FSPIOP error body), hands a
//! command to the engine, waits until the engine has made it durable, and answers: 202
//! for `POST` and `GET` (the result follows as a callback), 200 for the two `PUT`s (a
//! payee's callback to the hub, acknowledged as ml-api-adapter does). Results reach the
//! DFSPs as callbacks from the notifier.

use crate::engine_errors::from_engine;
use crate::fspiop::{
    self, check_extension_list, check_headers, check_ilp_packet, digest_field, fsp_field,
    money_field, only_fields, parse_datetime, parse_object, string_field, ApiError, Headers, Stash,
};
use crate::limits::{PREPARE_EXPIRATION_MS_MAX, RETRY_AFTER_S};
use crate::metrics::Route;
use crate::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::command::{Fulfil, Prepare, Reject};
use engine::runtime::now_ms;
use engine::EngineError;
use std::time::Instant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/transfers", web::post().to(post_transfer))
        .route("/transfers/{id}", web::put().to(put_transfer))
        .route("/transfers/{id}/error", web::put().to(put_transfer_error))
        .route("/transfers/{id}", web::get().to(get_transfer));
}

fn header_getter(req: &HttpRequest) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub fn error_response(error: &ApiError) -> HttpResponse {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    if error.status == 503 {
        response.insert_header(("Retry-After", RETRY_AFTER_S.to_string()));
    }
    response
        .content_type("application/json")
        .body(error.body().to_string())
}

/// The answer to a request the engine made durable: `POST /transfers` and `GET` answer
/// 202 (the result is a later callback); the payee's `PUT /transfers/{ID}` and
/// `PUT /transfers/{ID}/error` are themselves callbacks and answer 200, as ml-api-adapter
/// does.
fn success_status(route: Route) -> StatusCode {
    match route {
        Route::Prepare | Route::Get => StatusCode::ACCEPTED,
        Route::Fulfil | Route::Reject => StatusCode::OK,
    }
}

fn finish(
    state: &AppState,
    route: Route,
    started: Instant,
    result: Result<(), ApiError>,
) -> HttpResponse {
    let response = match result {
        Ok(()) => HttpResponse::build(success_status(route)).finish(),
        Err(error) => error_response(&error),
    };
    state.metrics.request(
        route,
        response.status().as_u16(),
        started.elapsed().as_micros() as u64,
    );
    response
}

fn stash(headers: &Headers, body: &[u8]) -> Vec<u8> {
    Stash {
        headers: headers.forwarded.clone(),
        body: String::from_utf8_lossy(body).into_owned(),
    }
    .encode()
}

async fn post_transfer(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let started = Instant::now();
    let result = prepare(&state, &req, &body).await;
    finish(&state, Route::Prepare, started, result)
}

async fn prepare(state: &AppState, req: &HttpRequest, body: &[u8]) -> Result<(), ApiError> {
    let now = now_ms();
    let prepare = prepare_command(&header_getter(req), body, now)?;
    state.hub.prepare(now, prepare).await.map_err(from_engine)
}

/// Validates a `POST /transfers` (its headers, by lower-case name, and its body) into the
/// engine's command, at time `now` (ms since the epoch). A pure function of its input.
pub fn prepare_command(
    get: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: i64,
) -> Result<Prepare, ApiError> {
    let headers = check_headers(get, true)?;
    let map = parse_object(body)?;
    only_fields(
        &map,
        &[
            "transferId",
            "payeeFsp",
            "payerFsp",
            "amount",
            "ilpPacket",
            "condition",
            "expiration",
            "extensionList",
        ],
    )?;
    let transfer_id = fspiop::transfer_id(string_field(&map, "transferId")?)?;
    let payer = fsp_field(&map, "payerFsp")?;
    let payee = fsp_field(&map, "payeeFsp")?;
    let (currency, amount) = money_field(&map, "amount")?;
    check_ilp_packet(string_field(&map, "ilpPacket")?)?;
    let condition = digest_field(&map, "condition")?;
    let expiration = string_field(&map, "expiration")?;
    let expiration_ms = parse_datetime(expiration).ok_or_else(|| {
        ApiError::validation("expiration must be an FSPIOP DateTime (YYYY-MM-DDTHH:MM:SS.fffZ)")
    })?;
    check_extension_list(&map)?;
    if expiration_ms <= now {
        return Err(ApiError::validation("expiration is in the past"));
    }
    // A far expiration would hold the payer's liquidity (and the open transfer) for that
    // long; the bound also keeps it inside the engine's retention (see limits.rs).
    if expiration_ms.saturating_sub(now) > PREPARE_EXPIRATION_MS_MAX {
        return Err(ApiError::validation(format!(
            "expiration is more than {} hours ahead",
            PREPARE_EXPIRATION_MS_MAX / 3_600_000
        )));
    }
    if headers.source != payer {
        return Err(ApiError::validation("FSPIOP-Source must be the payer"));
    }
    if payer == payee {
        return Err(ApiError::validation("payer and payee must differ"));
    }
    Ok(Prepare {
        transfer_id,
        payer,
        payee,
        currency,
        amount,
        condition,
        expiration_ms,
        body_hash: fspiop::body_hash(&map),
        payload: stash(&headers, body),
    })
}

async fn put_transfer(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let started = Instant::now();
    let result = fulfil(&state, &req, &path, &body).await;
    finish(&state, Route::Fulfil, started, result)
}

async fn fulfil(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let now = now_ms();
    match fulfil_command(&header_getter(req), id, body, now)? {
        PutCommand::Fulfil(command) => state.hub.fulfil(now, command).await.map_err(from_engine),
        PutCommand::Reject(command) => state.hub.reject(now, command).await.map_err(from_engine),
    }
}

/// What a payee's `PUT /transfers/{ID}` asks the engine for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCommand {
    /// `COMMITTED` or `RESERVED`: the fulfilment.
    Fulfil(Fulfil),
    /// `ABORTED` (a v1.0 payee's abort): a reject without a code.
    Reject(Reject),
}

/// Validates a `PUT /transfers/{ID}` (headers by lower-case name, the path's `id`, the
/// body) into the engine's command, at time `now` (ms since the epoch; the completion
/// time when the body has none). A pure function of its input.
pub fn fulfil_command(
    get: &dyn Fn(&str) -> Option<String>,
    id: &str,
    body: &[u8],
    now: i64,
) -> Result<PutCommand, ApiError> {
    let headers = check_headers(get, true)?;
    let transfer_id = fspiop::transfer_id(id)?;
    let map = parse_object(body)?;
    only_fields(
        &map,
        &[
            "fulfilment",
            "completedTimestamp",
            "transferState",
            "extensionList",
        ],
    )?;
    let transfer_state = string_field(&map, "transferState")?;
    let completed_ms = match map.get("completedTimestamp") {
        None => now,
        Some(_) => parse_datetime(string_field(&map, "completedTimestamp")?).ok_or_else(|| {
            ApiError::validation(
                "completedTimestamp must be an FSPIOP DateTime (YYYY-MM-DDTHH:MM:SS.fffZ)",
            )
        })?,
    };
    check_extension_list(&map)?;
    match transfer_state {
        "COMMITTED" | "RESERVED" => {
            let fulfilment = digest_field(&map, "fulfilment")?;
            let command = Fulfil {
                transfer_id,
                source: headers.source,
                fulfilment,
                completed_ms,
                notify_payee: transfer_state == "RESERVED",
                body_hash: fspiop::body_hash(&map),
                payload: stash(&headers, body),
            };
            Ok(PutCommand::Fulfil(command))
        }
        // A v1.0 payee may abort with PUT and state ABORTED: a reject without a code.
        "ABORTED" => {
            let command = Reject {
                transfer_id,
                source: headers.source,
                error_code: 5000,
                body_hash: fspiop::body_hash(&map),
                payload: Vec::new(),
            };
            Ok(PutCommand::Reject(command))
        }
        other => Err(ApiError::validation(format!(
            "transferState {other} is not allowed here"
        ))),
    }
}

async fn put_transfer_error(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let started = Instant::now();
    let result = reject(&state, &req, &path, &body).await;
    finish(&state, Route::Reject, started, result)
}

async fn reject(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let command = reject_command(&header_getter(req), id, body)?;
    state
        .hub
        .reject(now_ms(), command)
        .await
        .map_err(from_engine)
}

/// Validates a `PUT /transfers/{ID}/error` into the engine's command. A pure function of
/// its input.
pub fn reject_command(
    get: &dyn Fn(&str) -> Option<String>,
    id: &str,
    body: &[u8],
) -> Result<Reject, ApiError> {
    let headers = check_headers(get, true)?;
    let transfer_id = fspiop::transfer_id(id)?;
    let map = parse_object(body)?;
    only_fields(&map, &["errorInformation"])?;
    let error_code = fspiop::error_information(&map)?;
    Ok(Reject {
        transfer_id,
        source: headers.source,
        error_code,
        body_hash: fspiop::body_hash(&map),
        payload: stash(&headers, body),
    })
}

async fn get_transfer(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let started = Instant::now();
    let result = query(&state, &req, &path).await;
    finish(&state, Route::Get, started, result)
}

/// Answers 202, then calls back the requester with the state or an error (3208 unknown,
/// 3000 when the requester is neither payer nor payee).
async fn query(state: &AppState, req: &HttpRequest, id: &str) -> Result<(), ApiError> {
    let headers = check_headers(&header_getter(req), false)?;
    let transfer_id = fspiop::transfer_id(id)?;
    let callback = match state.hub.get_transfer(transfer_id, headers.source).await {
        Ok(view) => state.notifier.state_to(
            headers.source,
            transfer_id.as_str(),
            view.state,
            view.fulfilment,
            view.completed_ms,
            "PUT",
        ),
        Err(EngineError::Refused { code, .. }) => {
            state
                .notifier
                .error_to(headers.source, transfer_id.as_str(), code)
        }
        Err(e) => return Err(from_engine(e)),
    };
    state.notifier.dispatch(callback).await;
    Ok(())
}
