//! The hub's admin API, as loadgen uses it: provisioning DFSPs, reading limits and
//! positions. Shapes follow central-ledger's admin API.

use crate::fspiop::{format_amount, json_amount};
use crate::http::HttpClient;
use crate::limits::ADMIN_CONCURRENCY;
use anyhow::{bail, Context};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A client of the hub's admin API.
#[derive(Clone)]
pub struct Admin {
    pub client: HttpClient,
    pub base: String,
}

/// What to create for each DFSP.
#[derive(Debug, Clone)]
pub struct Provision {
    pub currencies: Vec<String>,
    /// Net Debit Cap, funds in and initial position per account, internal units.
    pub ndc: i64,
    pub funds_in: i64,
    pub initial_position: i64,
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}

fn ensure_ok(what: &str, status: StatusCode, body: &Value) -> anyhow::Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        bail!("{what}: HTTP {status}: {}", excerpt(body))
    }
}

impl Admin {
    pub fn new(client: HttpClient, base: String) -> Self {
        Admin { client, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates one DFSP with all its accounts, limits, funds and callback endpoints.
    /// Idempotent enough to run against a hub that already has the DFSP.
    pub async fn provision_dfsp(
        &self,
        name: &str,
        p: &Provision,
        endpoints: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        for cur in &p.currencies {
            let (st, body) = self
                .client
                .send_json(
                    Method::POST,
                    &self.url("/participants"),
                    &json!({"name": name, "currency": cur}),
                )
                .await
                .with_context(|| format!("creating participant {name}"))?;
            if !st.is_success() {
                // Already there (a re-run)? Then carry on.
                let accounts = self.accounts(name).await.unwrap_or_default();
                if !accounts.iter().any(|a| a.currency == *cur) {
                    bail!(
                        "POST /participants {name} {cur}: HTTP {st}: {}",
                        excerpt(&body)
                    );
                }
            }
            let limits = json!({
                "currency": cur,
                "limit": {"type": "NET_DEBIT_CAP", "value": money_json(p.ndc)},
                "initialPosition": money_json(p.initial_position),
            });
            let (st, body) = self
                .client
                .send_json(
                    Method::POST,
                    &self.url(&format!("/participants/{name}/initialPositionAndLimits")),
                    &limits,
                )
                .await?;
            if !st.is_success() {
                // Limits already set: adjust the NDC instead.
                let adjust = json!({
                    "currency": cur,
                    "limit": {"type": "NET_DEBIT_CAP", "value": money_json(p.ndc), "alarmPercentage": 10},
                });
                let (st2, body2) = self
                    .client
                    .send_json(
                        Method::PUT,
                        &self.url(&format!("/participants/{name}/limits")),
                        &adjust,
                    )
                    .await?;
                if !st2.is_success() {
                    bail!(
                        "initialPositionAndLimits for {name} {cur}: HTTP {st}: {}; adjusting limits: HTTP {st2}: {}",
                        excerpt(&body),
                        excerpt(&body2)
                    );
                }
            }
            if p.funds_in > 0 {
                let accounts = self.accounts(name).await?;
                let settlement = accounts
                    .iter()
                    .find(|a| a.currency == *cur && a.kind == "SETTLEMENT")
                    .with_context(|| {
                        format!("{name} has no SETTLEMENT account in {cur} to fund")
                    })?;
                let body = json!({
                    "transferId": uuid::Uuid::new_v4().hyphenated().to_string(),
                    "externalReference": "loadgen provisioning",
                    "action": "recordFundsIn",
                    "reason": "loadgen provisioning",
                    "amount": {"amount": format_amount(p.funds_in), "currency": cur},
                });
                let (st, resp) = self
                    .client
                    .send_json(
                        Method::POST,
                        &self.url(&format!("/participants/{name}/accounts/{}", settlement.id)),
                        &body,
                    )
                    .await?;
                ensure_ok(&format!("recordFundsIn {name} {cur}"), st, &resp)?;
            }
        }
        for (kind, value) in endpoints {
            let (st, resp) = self
                .client
                .send_json(
                    Method::POST,
                    &self.url(&format!("/participants/{name}/endpoints")),
                    &json!({"type": kind, "value": value}),
                )
                .await?;
            ensure_ok(&format!("endpoint {kind} of {name}"), st, &resp)?;
        }
        Ok(())
    }

    /// The participant's accounts (`GET /participants/{name}/accounts`).
    pub async fn accounts(&self, name: &str) -> anyhow::Result<Vec<AccountInfo>> {
        let (st, v) = self
            .client
            .get_json(&self.url(&format!("/participants/{name}/accounts")))
            .await?;
        ensure_ok(&format!("GET accounts of {name}"), st, &v)?;
        Ok(parse_accounts(&v))
    }

    /// Positions by currency (`GET /participants/{name}/positions`), internal units.
    pub async fn positions(&self, name: &str) -> anyhow::Result<HashMap<String, i64>> {
        let (st, v) = self
            .client
            .get_json(&self.url(&format!("/participants/{name}/positions")))
            .await?;
        ensure_ok(&format!("GET positions of {name}"), st, &v)?;
        Ok(parse_positions(&v))
    }

    /// The account's NDC (`GET /participants/{name}/limits`), if the hub reports one.
    pub async fn ndc(&self, name: &str, currency: &str) -> Option<i64> {
        let (st, v) = self
            .client
            .get_json(&self.url(&format!(
                "/participants/{name}/limits?currency={currency}&type=NET_DEBIT_CAP"
            )))
            .await
            .ok()?;
        if !st.is_success() {
            return None;
        }
        let items = match &v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        items.iter().find_map(|it| {
            let cur_ok = it
                .get("currency")
                .and_then(Value::as_str)
                .is_none_or(|c| c == currency);
            let lim = it.get("limit")?;
            let type_ok = lim
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(|t| t == "NET_DEBIT_CAP");
            if cur_ok && type_ok {
                json_amount(lim.get("value")?)
            } else {
                None
            }
        })
    }
}

/// Sends whole amounts as JSON integers and others as decimal strings.
fn money_json(units: i64) -> Value {
    if units % 10_000 == 0 {
        json!(units / 10_000)
    } else {
        json!(format_amount(units))
    }
}

/// One account as the admin API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountInfo {
    pub id: String,
    pub kind: String,
    pub currency: String,
    pub value: Option<i64>,
}

pub fn parse_accounts(v: &Value) -> Vec<AccountInfo> {
    let Some(items) = v.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|a| {
            let id = match a.get("id")? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(AccountInfo {
                id,
                kind: a.get("ledgerAccountType")?.as_str()?.to_string(),
                currency: a.get("currency")?.as_str()?.to_string(),
                value: a.get("value").and_then(json_amount),
            })
        })
        .collect()
}

/// `{currency, value}` or an array of them → currency → position (internal units).
pub fn parse_positions(v: &Value) -> HashMap<String, i64> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .filter_map(|it| {
            let cur = it.get("currency")?.as_str()?.to_string();
            let val = json_amount(it.get("value")?)?;
            Some((cur, val))
        })
        .collect()
}

/// Provisions every DFSP, [`ADMIN_CONCURRENCY`] at a time. `endpoints(i)` gives DFSP i's
/// callback registrations.
pub async fn provision_all(
    admin: &Admin,
    names: &[String],
    p: &Provision,
    endpoints: impl Fn(u32) -> Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(ADMIN_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let permit = slots.clone().acquire_owned().await?;
        let admin = admin.clone();
        let name = name.clone();
        let p = p.clone();
        let eps = endpoints(i as u32);
        set.spawn(async move {
            let r = admin.provision_dfsp(&name, &p, &eps).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Positions of every DFSP, [`ADMIN_CONCURRENCY`] requests at a time; `None` where the
/// hub did not answer usefully.
pub async fn fetch_positions(admin: &Admin, names: &[String]) -> Vec<Option<HashMap<String, i64>>> {
    let slots = Arc::new(Semaphore::new(ADMIN_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let admin = admin.clone();
        let name = name.clone();
        set.spawn(async move {
            let r = admin.positions(&name).await.ok();
            drop(permit);
            (i, r)
        });
    }
    let mut out = vec![None; names.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, v)) = r {
            out[i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_accounts_parse_both_shapes() {
        let one = json!({"currency": "USD", "value": 12.5, "changedDate": "x"});
        assert_eq!(parse_positions(&one).get("USD"), Some(&125_000));
        let many = json!([{"currency": "USD", "value": "-3"}, {"currency": "EUR", "value": 0}]);
        let m = parse_positions(&many);
        assert_eq!(m.get("USD"), Some(&-30_000));
        assert_eq!(m.get("EUR"), Some(&0));
        let acc =
            json!([{"id": 7, "ledgerAccountType": "SETTLEMENT", "currency": "USD", "value": -100}]);
        assert_eq!(
            parse_accounts(&acc),
            vec![AccountInfo {
                id: "7".into(),
                kind: "SETTLEMENT".into(),
                currency: "USD".into(),
                value: Some(-1_000_000)
            }]
        );
        assert_eq!(money_json(1_000_000), json!(100));
        assert_eq!(money_json(15_000), json!("1.5"));
    }
}
