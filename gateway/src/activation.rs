//! `PUT /participants/{name}/accounts/{id}` with `{"isActive": false|true}`: one currency
//! account switched off or on, as central-ledger does it. `id` is the POSITION or the
//! SETTLEMENT account id of the currency; either switches the currency's account. The
//! engine then refuses the account's transfers the way it refuses an inactive
//! participant's: the prepare is accepted (202) and the refusal (3100) comes by callback,
//! as Mojaloop's active/inactive collections expect.

use crate::admin::{account_of, active_flag, participant, registry_error, respond, Answer};
use crate::engine_errors::from_engine;
use crate::fspiop::{parse_object, ApiError};
use crate::AppState;
use actix_web::{web, HttpResponse};
use engine::command::Admin;
use engine::runtime::now_ms;

pub async fn put_account(
    state: web::Data<AppState>,
    path: web::Path<(String, u64)>,
    body: web::Bytes,
) -> HttpResponse {
    let (name, id) = path.into_inner();
    respond(switch(&state, &name, id, &body).await)
}

async fn switch(state: &AppState, name: &str, id: u64, body: &[u8]) -> Answer {
    let _one_at_a_time = state.admin_lock.lock().await;
    let mut p = participant(state, name)?;
    let map = parse_object(body)?;
    let active = active_flag(&map)?;
    let Some((currency, _settlement)) = p.account(id) else {
        return Err(ApiError::new(
            404,
            3200,
            format!("participant {name} has no account {id}"),
        ));
    };
    let account = account_of(&p, &currency)?;
    state
        .hub
        .admin(now_ms(), Admin::SetAccountActive { account, active })
        .await
        .map_err(from_engine)?;
    if active {
        p.inactive_currencies.remove(&currency);
    } else {
        p.inactive_currencies.insert(currency);
    }
    state
        .registry
        .put(&state.hub, p)
        .await
        .map_err(registry_error)?;
    Ok(HttpResponse::Ok().finish())
}
