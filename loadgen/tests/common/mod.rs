//! A small fake hub for loadgen's tests: central-ledger-shaped admin API and the FSPIOP
//! transfers flow (prepare → forward → fulfil/reject → final callback, timeouts), with
//! switches to misbehave (wrong positions, refusing everything).
#![allow(dead_code)]

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use loadgen::fspiop::{self, json_amount, parse_amount};
use loadgen::http::{empty, read_body, respond, serve, Body, HttpClient, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct FakeHubConfig {
    /// A hub bug to catch: each commit where this DFSP is the payee moves its position by
    /// this much more than the amount (internal units).
    pub payee_commit_skew: Option<(String, i64)>,
    /// Refuse every prepare with this error code, whatever the limits say.
    pub refuse_all_with: Option<String>,
    /// Reserved transfers time out after this long (3303 to payer and payee).
    pub timeout: Option<Duration>,
}

#[derive(Default, Clone)]
struct Account {
    position: i64,
    reserved: i64,
    ndc: i64,
    /// Settlement balance: negative after funds in (central-ledger's convention).
    settlement: i64,
}

#[derive(Default)]
struct Participant {
    accounts: HashMap<String, Account>,
    endpoints: HashMap<String, String>,
}

#[derive(Clone, PartialEq)]
enum TState {
    Reserved,
    Final,
}

#[derive(Clone)]
struct Transfer {
    payer: String,
    payee: String,
    currency: String,
    amount: i64,
    condition: String,
    state: TState,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    participants: HashMap<String, Participant>,
    transfers: HashMap<String, Transfer>,
    next_account_id: u64,
    account_ids: HashMap<u64, (String, String, &'static str)>,
}

pub struct FakeHub {
    pub fspiop: String,
    pub admin: String,
    servers: Vec<Server>,
    state: Arc<Mutex<State>>,
    ticker: tokio::task::JoinHandle<()>,
}

struct Hub {
    cfg: FakeHubConfig,
    state: Arc<Mutex<State>>,
    client: HttpClient,
}

fn h<'a>(hm: &'a HeaderMap, k: &str) -> Option<&'a str> {
    hm.get(k).and_then(|v| v.to_str().ok())
}

fn json_resp(status: StatusCode, v: Value) -> Response<Body> {
    respond(status, Some("application/json"), Bytes::from(v.to_string()))
}

impl FakeHub {
    pub async fn start(cfg: FakeHubConfig) -> FakeHub {
        let state = Arc::new(Mutex::new(State::default()));
        let hub = Arc::new(Hub {
            cfg,
            state: state.clone(),
            client: HttpClient::new(),
        });
        let a = hub.clone();
        let admin = serve(0, 1024, move |req| {
            let a = a.clone();
            async move { a.admin(req).await }
        })
        .await
        .expect("admin server");
        let f = hub.clone();
        let fsp = serve(0, 4096, move |req| {
            let f = f.clone();
            async move { f.fspiop(req).await }
        })
        .await
        .expect("fspiop server");
        let t = hub.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                t.expire();
            }
        });
        FakeHub {
            fspiop: format!("http://{}", fsp.addr),
            admin: format!("http://{}", admin.addr),
            servers: vec![admin, fsp],
            state,
            ticker,
        }
    }

    pub async fn stop(self) {
        self.ticker.abort();
        for s in self.servers {
            s.stop().await;
        }
    }

    /// Current (position, reserved) of an account.
    pub fn account(&self, name: &str, cur: &str) -> Option<(i64, i64)> {
        let st = self.state.lock().expect("fake hub state");
        st.participants
            .get(name)
            .and_then(|p| p.accounts.get(cur))
            .map(|a| (a.position, a.reserved))
    }
}

impl Hub {
    async fn admin(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = read_body(req.into_body()).await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut st = self.state.lock().expect("fake hub state");
        match (method, segs.as_slice()) {
            (Method::POST, ["participants"]) => {
                let (Some(name), Some(cur)) = (v["name"].as_str(), v["currency"].as_str()) else {
                    return json_resp(
                        StatusCode::BAD_REQUEST,
                        json!({"errorInformation": {"errorCode": "3101", "errorDescription": "name and currency"}}),
                    );
                };
                let exists = st
                    .participants
                    .get(name)
                    .is_some_and(|p| p.accounts.contains_key(cur));
                if exists {
                    return json_resp(
                        StatusCode::BAD_REQUEST,
                        json!({"errorInformation": {"errorCode": "3003", "errorDescription": "already registered"}}),
                    );
                }
                st.participants
                    .entry(name.to_string())
                    .or_default()
                    .accounts
                    .insert(cur.to_string(), Account::default());
                for kind in ["POSITION", "SETTLEMENT"] {
                    st.next_account_id += 1;
                    let id = st.next_account_id;
                    st.account_ids
                        .insert(id, (name.to_string(), cur.to_string(), kind));
                }
                json_resp(StatusCode::CREATED, json!({"name": name}))
            }
            (Method::POST, ["participants", name, "initialPositionAndLimits"]) => {
                let cur = v["currency"].as_str().unwrap_or("").to_string();
                let Some(acc) = st
                    .participants
                    .get_mut(*name)
                    .and_then(|p| p.accounts.get_mut(&cur))
                else {
                    return json_resp(StatusCode::NOT_FOUND, json!({}));
                };
                acc.ndc = json_amount(&v["limit"]["value"]).unwrap_or(0);
                acc.position = json_amount(&v["initialPosition"]).unwrap_or(0);
                empty(StatusCode::CREATED)
            }
            (Method::GET, ["participants", name, "accounts"]) => {
                let name = name.to_string();
                let mut out = Vec::new();
                for (id, (n, cur, kind)) in &st.account_ids {
                    if *n != name {
                        continue;
                    }
                    let acc = &st.participants[n].accounts[cur];
                    let value = if *kind == "SETTLEMENT" {
                        acc.settlement
                    } else {
                        acc.position
                    };
                    out.push(json!({"id": id, "ledgerAccountType": kind, "currency": cur,
                        "isActive": 1, "value": fspiop::format_amount(value), "reservedValue": 0}));
                }
                json_resp(StatusCode::OK, Value::Array(out))
            }
            (Method::POST, ["participants", name, "accounts", id]) => {
                let Some((n, cur, kind)) = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|i| st.account_ids.get(&i).cloned())
                else {
                    return json_resp(StatusCode::NOT_FOUND, json!({}));
                };
                if n != *name || kind != "SETTLEMENT" || v["action"] != "recordFundsIn" {
                    return json_resp(StatusCode::BAD_REQUEST, json!({}));
                }
                let amt = v["amount"]["amount"]
                    .as_str()
                    .and_then(parse_amount)
                    .unwrap_or(0);
                if let Some(acc) = st
                    .participants
                    .get_mut(&n)
                    .and_then(|p| p.accounts.get_mut(&cur))
                {
                    acc.settlement -= amt;
                }
                empty(StatusCode::ACCEPTED)
            }
            (Method::POST, ["participants", name, "endpoints"]) => {
                let (Some(t), Some(val)) = (v["type"].as_str(), v["value"].as_str()) else {
                    return json_resp(StatusCode::BAD_REQUEST, json!({}));
                };
                match st.participants.get_mut(*name) {
                    Some(p) => {
                        p.endpoints.insert(t.to_string(), val.to_string());
                        empty(StatusCode::CREATED)
                    }
                    None => json_resp(StatusCode::NOT_FOUND, json!({})),
                }
            }
            (Method::GET, ["participants", name, "positions"]) => {
                let Some(p) = st.participants.get(*name) else {
                    return json_resp(StatusCode::NOT_FOUND, json!({}));
                };
                let items: Vec<Value> = p
                    .accounts
                    .iter()
                    .map(|(cur, a)| json!({"currency": cur, "value": fspiop::format_amount(a.position), "changedDate": "2020-01-01T00:00:00.000Z"}))
                    .collect();
                json_resp(StatusCode::OK, Value::Array(items))
            }
            (Method::GET, ["participants", name, "limits"]) => {
                let Some(p) = st.participants.get(*name) else {
                    return json_resp(StatusCode::NOT_FOUND, json!({}));
                };
                let items: Vec<Value> = p
                    .accounts
                    .iter()
                    .map(|(cur, a)| json!({"currency": cur, "limit": {"type": "NET_DEBIT_CAP", "value": fspiop::format_amount(a.ndc), "alarmPercentage": 10}}))
                    .collect();
                json_resp(StatusCode::OK, Value::Array(items))
            }
            _ => empty(StatusCode::NOT_FOUND),
        }
    }

    fn endpoint(&self, st: &State, dfsp: &str, kind: &str, id: &str) -> Option<String> {
        st.participants
            .get(dfsp)
            .and_then(|p| p.endpoints.get(kind))
            .map(|t| t.replace("{{transferId}}", id))
    }

    fn send(
        &self,
        url: Option<String>,
        method: Method,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) {
        let Some(url) = url else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            let hs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let _ = client.send(method, &url, &hs, body).await;
        });
    }

    fn hub_error(&self, st: &State, to: &str, id: &str, code: &str) {
        let body = json!({"errorInformation": {"errorCode": code, "errorDescription": "fake hub"}});
        let headers = vec![
            (
                "content-type".to_string(),
                fspiop::CONTENT_TYPE_TRANSFERS.to_string(),
            ),
            (
                "date".to_string(),
                fspiop::http_date(std::time::SystemTime::now()),
            ),
            ("fspiop-source".to_string(), "Hub".to_string()),
            ("fspiop-destination".to_string(), to.to_string()),
        ];
        self.send(
            self.endpoint(st, to, "FSPIOP_CALLBACK_URL_TRANSFER_ERROR", id),
            Method::PUT,
            headers,
            Bytes::from(body.to_string()),
        );
    }

    fn copy_headers(hm: &HeaderMap, names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .filter_map(|n| h(hm, n).map(|v| (n.to_string(), v.to_string())))
            .collect()
    }

    async fn fspiop(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let headers = req.headers().clone();
        let body = read_body(req.into_body()).await.unwrap_or_default();
        if !h(&headers, "content-type").is_some_and(fspiop::is_transfers_content_type) {
            return json_resp(
                StatusCode::NOT_ACCEPTABLE,
                json!({"errorInformation": {"errorCode": "3001", "errorDescription": "bad content type"}}),
            );
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut st = self.state.lock().expect("fake hub state");
        match (method, segs.as_slice()) {
            (Method::POST, ["transfers"]) => {
                let Ok(p) = serde_json::from_value::<fspiop::PrepareBody>(v) else {
                    return json_resp(
                        StatusCode::BAD_REQUEST,
                        json!({"errorInformation": {"errorCode": "3101", "errorDescription": "schema"}}),
                    );
                };
                if h(&headers, "fspiop-source") != Some(p.payer_fsp.as_str()) {
                    return json_resp(
                        StatusCode::BAD_REQUEST,
                        json!({"errorInformation": {"errorCode": "3100", "errorDescription": "source"}}),
                    );
                }
                let amount = parse_amount(&p.amount.amount).unwrap_or(0);
                let id = p.transfer_id.clone();
                let verdict = match &self.cfg.refuse_all_with {
                    Some(code) => Err(code.clone()),
                    None => {
                        let acc = st
                            .participants
                            .get_mut(&p.payer_fsp)
                            .and_then(|x| x.accounts.get_mut(&p.amount.currency));
                        match acc {
                            None => Err("3100".to_string()),
                            Some(a) => {
                                let used = a.position + a.reserved;
                                if -a.settlement - used < amount {
                                    Err("4001".to_string())
                                } else if a.ndc - used < amount {
                                    Err("4200".to_string())
                                } else {
                                    a.reserved += amount;
                                    Ok(())
                                }
                            }
                        }
                    }
                };
                match verdict {
                    Err(code) => self.hub_error(&st, &p.payer_fsp, &id, &code),
                    Ok(()) => {
                        st.transfers.insert(
                            id.clone(),
                            Transfer {
                                payer: p.payer_fsp.clone(),
                                payee: p.payee_fsp.clone(),
                                currency: p.amount.currency.clone(),
                                amount,
                                condition: p.condition.clone(),
                                state: TState::Reserved,
                                deadline: Instant::now()
                                    + self.cfg.timeout.unwrap_or(Duration::from_secs(3600)),
                            },
                        );
                        let fwd = Self::copy_headers(
                            &headers,
                            &[
                                "content-type",
                                "accept",
                                "date",
                                "fspiop-source",
                                "fspiop-destination",
                                "fspiop-uri",
                                "fspiop-http-method",
                            ],
                        );
                        self.send(
                            self.endpoint(
                                &st,
                                &p.payee_fsp,
                                "FSPIOP_CALLBACK_URL_TRANSFER_POST",
                                &id,
                            ),
                            Method::POST,
                            fwd,
                            body,
                        );
                    }
                }
                empty(StatusCode::ACCEPTED)
            }
            (Method::PUT, ["transfers", id]) => {
                let id = id.to_string();
                let Some(t) = st.transfers.get(&id).cloned() else {
                    return empty(StatusCode::OK);
                };
                if t.state != TState::Reserved {
                    return empty(StatusCode::OK);
                }
                let ok = v["transferState"] == "COMMITTED"
                    && v["fulfilment"]
                        .as_str()
                        .is_some_and(|f| fspiop::fulfilment_matches(f, &t.condition));
                if let Some(x) = st.transfers.get_mut(&id) {
                    x.state = TState::Final;
                }
                if ok {
                    if let Some(a) = st
                        .participants
                        .get_mut(&t.payer)
                        .and_then(|p| p.accounts.get_mut(&t.currency))
                    {
                        a.reserved -= t.amount;
                        a.position += t.amount;
                    }
                    let skew = match &self.cfg.payee_commit_skew {
                        Some((who, d)) if *who == t.payee => *d,
                        _ => 0,
                    };
                    if let Some(a) = st
                        .participants
                        .get_mut(&t.payee)
                        .and_then(|p| p.accounts.get_mut(&t.currency))
                    {
                        a.position -= t.amount + skew;
                    }
                    let fwd = Self::copy_headers(
                        &headers,
                        &[
                            "content-type",
                            "date",
                            "fspiop-source",
                            "fspiop-destination",
                        ],
                    );
                    self.send(
                        self.endpoint(&st, &t.payer, "FSPIOP_CALLBACK_URL_TRANSFER_PUT", &id),
                        Method::PUT,
                        fwd,
                        body,
                    );
                } else {
                    if let Some(a) = st
                        .participants
                        .get_mut(&t.payer)
                        .and_then(|p| p.accounts.get_mut(&t.currency))
                    {
                        a.reserved -= t.amount;
                    }
                    self.hub_error(&st, &t.payer, &id, "3100");
                }
                empty(StatusCode::OK)
            }
            (Method::PUT, ["transfers", id, "error"]) => {
                let id = id.to_string();
                let Some(t) = st.transfers.get(&id).cloned() else {
                    return empty(StatusCode::OK);
                };
                if t.state == TState::Reserved {
                    if let Some(x) = st.transfers.get_mut(&id) {
                        x.state = TState::Final;
                    }
                    if let Some(a) = st
                        .participants
                        .get_mut(&t.payer)
                        .and_then(|p| p.accounts.get_mut(&t.currency))
                    {
                        a.reserved -= t.amount;
                    }
                    let fwd = Self::copy_headers(
                        &headers,
                        &[
                            "content-type",
                            "date",
                            "fspiop-source",
                            "fspiop-destination",
                        ],
                    );
                    self.send(
                        self.endpoint(&st, &t.payer, "FSPIOP_CALLBACK_URL_TRANSFER_ERROR", &id),
                        Method::PUT,
                        fwd,
                        body,
                    );
                }
                empty(StatusCode::OK)
            }
            _ => empty(StatusCode::NOT_FOUND),
        }
    }

    fn expire(&self) {
        let mut st = self.state.lock().expect("fake hub state");
        let now = Instant::now();
        let due: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, t)| t.state == TState::Reserved && t.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(t) = st.transfers.get_mut(&id) else {
                continue;
            };
            t.state = TState::Final;
            let t = t.clone();
            if let Some(a) = st
                .participants
                .get_mut(&t.payer)
                .and_then(|p| p.accounts.get_mut(&t.currency))
            {
                a.reserved -= t.amount;
            }
            self.hub_error(&st, &t.payer, &id, "3303");
            self.hub_error(&st, &t.payee, &id, "3303");
        }
    }
}
