//! Settlement end to end, against the real binary: a day of traffic between four DFSPs on
//! four partitions, the window closed, a settlement created and moved through every state,
//! an abort, a SIGKILL between and during settlement steps, the window statement, and bad
//! input. After each step every position, SETTLEMENT balance and hub account is compared
//! exactly (in cents) with a reference the test computes from the transfers it sent.
//!
//! The rules the reference follows (`engine::machine::settlement`): a net is what the
//! account paid minus what it received in the window (positive: net sender). At
//! PS_TRANSFERS_RESERVED a net receiver's position rises back by its net (and
//! HUB_MULTILATERAL_SETTLEMENT falls by it); at PS_TRANSFERS_COMMITTED a net sender's
//! position falls by its net (HUB_MULTILATERAL_SETTLEMENT rises by it) and every account's
//! liquidity cover moves by its net (the SETTLEMENT account's value, `-cover`, rises by it).
//! An abort before commit undoes the reserve.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DFSPS: [&str; 4] = ["dfspa", "dfspb", "dfspc", "dfspd"];
/// A DFSP that sends nothing: in no settlement.
const IDLE: &str = "dfspe";
const FUNDS_CENTS: i64 = 10_000_000;
const MODEL: &str = "DEFERREDNET";

struct World {
    dir: tempfile::TempDir,
    hub: Option<HubProcess>,
    dfsps: Dfsps,
    http: Http,
}

/// Positions, covers (cents) and hub accounts the test expects.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    position: BTreeMap<String, i64>,
    cover: BTreeMap<String, i64>,
    multilateral: i64,
    reconciliation: i64,
}

impl Reference {
    fn new() -> Reference {
        let mut names: Vec<&str> = DFSPS.to_vec();
        names.push(IDLE);
        Reference {
            position: names.iter().map(|n| (n.to_string(), 0)).collect(),
            cover: names.iter().map(|n| (n.to_string(), FUNDS_CENTS)).collect(),
            multilateral: 0,
            reconciliation: FUNDS_CENTS * names.len() as i64,
        }
    }

    fn transfer(&mut self, payer: &str, payee: &str, cents: i64) {
        *self.position.get_mut(payer).expect("payer") += cents;
        *self.position.get_mut(payee).expect("payee") -= cents;
    }

    fn reserve(&mut self, nets: &BTreeMap<String, i64>) {
        for (name, net) in nets {
            if *net < 0 {
                *self.position.get_mut(name).expect("dfsp") -= net;
                self.multilateral += net;
            }
        }
    }

    fn unreserve(&mut self, nets: &BTreeMap<String, i64>) {
        for (name, net) in nets {
            if *net < 0 {
                *self.position.get_mut(name).expect("dfsp") += net;
                self.multilateral -= net;
            }
        }
    }

    fn commit(&mut self, nets: &BTreeMap<String, i64>) {
        for (name, net) in nets {
            if *net > 0 {
                *self.position.get_mut(name).expect("dfsp") -= net;
                self.multilateral += net;
            }
            *self.cover.get_mut(name).expect("dfsp") -= net;
        }
    }
}

/// A JSON number in major units (two decimals) as cents, refusing anything inexact.
fn cents(v: &Value) -> i64 {
    let f = v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"));
    let c = (f * 100.0).round();
    assert!((f * 100.0 - c).abs() < 1e-6, "{v} is not whole cents");
    c as i64
}

/// Cents as an FSPIOP amount (no trailing zeros).
fn amount_text(c: i64) -> String {
    let text = format!("{}.{:02}", c / 100, c % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The transfers of the day: (number, payer, payee, cents). Every DFSP pays and is paid;
/// the nets are uneven, so there are senders and receivers.
fn day() -> Vec<(u64, &'static str, &'static str, i64)> {
    let mut out = Vec::new();
    for k in 0..32u64 {
        let payer = DFSPS[(k % 4) as usize];
        let mut payee = DFSPS[((k * 3 + 1) % 4) as usize];
        if payee == payer {
            payee = DFSPS[((k + 2) % 4) as usize];
        }
        let c =
            100 + ((k * 7_919 + k * k * 31) % 40_000) as i64 + if k % 4 == 0 { 25_000 } else { 0 };
        out.push((k + 1, payer, payee, c));
    }
    out
}

fn nets_of(transfers: &[(u64, &str, &str, i64)]) -> BTreeMap<String, i64> {
    let mut nets: BTreeMap<String, i64> = BTreeMap::new();
    for (_, payer, payee, c) in transfers {
        *nets.entry(payer.to_string()).or_default() += c;
        *nets.entry(payee.to_string()).or_default() -= c;
    }
    nets
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = HubProcess::start(dir.path());
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    for kind in ["HUB_MULTILATERAL_SETTLEMENT", "HUB_RECONCILIATION"] {
        let (st, v) = http
            .admin(
                "POST",
                &format!("{}/participants/Hub/accounts", hub.admin),
                json!({"type": kind, "currency": "USD"}),
            )
            .await;
        assert_eq!(st, 201, "{kind}: {v}");
    }
    let model = json!({"name": MODEL, "settlementGranularity": "NET",
        "settlementInterchange": "MULTILATERAL", "settlementDelay": "DEFERRED", "currency": "USD",
        "requireLiquidityCheck": true, "ledgerAccountType": "POSITION",
        "settlementAccountType": "SETTLEMENT", "autoPositionReset": true});
    let (st, _) = http
        .admin("POST", &format!("{}/settlementModels", hub.admin), model)
        .await;
    assert_eq!(st, 201);
    for name in DFSPS.iter().chain([IDLE].iter()) {
        provision(&http, &hub.admin, &dfsps, name, "100000", "100000").await;
    }
    World {
        dir,
        hub: Some(hub),
        dfsps,
        http,
    }
}

impl World {
    fn admin(&self) -> String {
        self.hub.as_ref().expect("hub running").admin.clone()
    }

    fn fspiop(&self) -> String {
        self.hub.as_ref().expect("hub running").fspiop.clone()
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.http
            .admin(method, &format!("{}{path}", self.admin()), body)
            .await
    }

    async fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.http
            .send(
                method,
                &format!("{}{path}", self.admin()),
                &[("content-type", "application/json".into())],
                body,
            )
            .await
    }

    /// Prepare, wait for the payee to get it, fulfil, wait for the payer's COMMITTED.
    async fn transfer(&self, n: u64, payer: &str, payee: &str, c: i64) {
        let mut body = prepare_body(n, payer, payee, &amount_text(c), 60_000);
        body["payerFsp"] = json!(payer);
        body["payeeFsp"] = json!(payee);
        let (st, v) = self
            .http
            .send(
                "POST",
                &format!("{}/transfers", self.fspiop()),
                &fspiop_headers(payer, payee),
                &body.to_string(),
            )
            .await;
        assert_eq!(st, 202, "prepare {n}: {v}");
        let id = tid(n);
        let (to, want) = (payee.to_string(), id.clone());
        self.dfsps
            .wait_for(&format!("prepare {n} at {payee}"), move |r| {
                r.dfsp == to && r.method == "POST" && r.body["transferId"] == want.as_str()
            })
            .await;
        let mut headers = fspiop_headers(payee, payer);
        headers.retain(|(h, _)| *h != "accept");
        let (st, v) = self
            .http
            .send(
                "PUT",
                &format!("{}/transfers/{id}", self.fspiop()),
                &headers,
                &fulfil_body(n, "COMMITTED").to_string(),
            )
            .await;
        assert_eq!(st, 200, "fulfil {n}: {v}");
        let (to, path) = (payer.to_string(), format!("/transfers/{id}"));
        let done = self
            .dfsps
            .wait_for(&format!("commit {n} at {payer}"), move |r| {
                r.dfsp == to && r.method == "PUT" && r.path == path
            })
            .await;
        assert_eq!(done.body["transferState"], "COMMITTED", "transfer {n}");
    }

    /// Every DFSP's position and SETTLEMENT balance and the hub accounts, exactly.
    async fn check(&self, reference: &Reference, when: &str) {
        let admin = self.admin();
        for (name, want) in &reference.position {
            let (pos, reserved) = position(&self.http, &admin, name).await;
            assert_eq!(
                ((pos * 100.0).round() as i64, reserved),
                (*want, 0.0),
                "{when}: position of {name}"
            );
            let (st, accounts) = self
                .call(
                    "GET",
                    &format!("/participants/{name}/accounts"),
                    Value::Null,
                )
                .await;
            assert_eq!(st, 200);
            let list = accounts.as_array().expect("accounts");
            let of = |kind: &str| {
                list.iter()
                    .find(|a| a["ledgerAccountType"] == kind)
                    .map(|a| cents(&a["value"]))
                    .expect("account")
            };
            assert_eq!(of("POSITION"), *want, "{when}: POSITION of {name}");
            assert_eq!(
                of("SETTLEMENT"),
                -reference.cover[name],
                "{when}: SETTLEMENT of {name}"
            );
        }
        let (st, hub) = self
            .call("GET", "/participants/Hub/accounts", Value::Null)
            .await;
        assert_eq!(st, 200, "{when}: hub accounts {hub}");
        let list = hub.as_array().expect("hub accounts");
        assert_eq!(list.len(), 2, "{when}: {hub}");
        let of = |kind: &str| {
            list.iter()
                .find(|a| a["ledgerAccountType"] == kind && a["currency"] == "USD")
                .map(|a| cents(&a["value"]))
                .unwrap_or_else(|| panic!("{when}: no {kind} in {hub}"))
        };
        assert_eq!(
            of("HUB_MULTILATERAL_SETTLEMENT"),
            reference.multilateral,
            "{when}: HUB_MULTILATERAL_SETTLEMENT"
        );
        assert_eq!(
            of("HUB_RECONCILIATION"),
            reference.reconciliation,
            "{when}: HUB_RECONCILIATION"
        );
    }

    async fn run_day(&self, reference: &mut Reference) -> BTreeMap<String, i64> {
        let transfers = day();
        for (n, payer, payee, c) in &transfers {
            self.transfer(*n, payer, payee, *c).await;
            reference.transfer(payer, payee, *c);
        }
        nets_of(&transfers)
    }

    async fn close(&self, id: u64) -> Value {
        let (st, v) = self
            .call(
                "POST",
                &format!("/settlementWindows/{id}"),
                json!({"state": "CLOSED", "reason": "end of day"}),
            )
            .await;
        assert_eq!(st, 200, "close {id}: {v}");
        v
    }

    async fn create(&self, windows: &[u64]) -> Value {
        let list: Vec<Value> = windows.iter().map(|id| json!({"id": id})).collect();
        let (st, v) = self
            .call(
                "POST",
                "/settlements",
                json!({"settlementModel": MODEL, "reason": "daily", "settlementWindows": list}),
            )
            .await;
        assert_eq!(st, 200, "create settlement: {v}");
        v
    }

    /// The PUT body moving every account of the settlement `s` (as GET shows it) to `state`.
    fn all_accounts(s: &Value, state: &str) -> Value {
        let participants: Vec<Value> = s["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .map(|p| {
                let accounts: Vec<Value> = p["accounts"]
                    .as_array()
                    .expect("accounts")
                    .iter()
                    .map(|a| {
                        json!({"id": a["id"], "state": state, "reason": format!("to {state}"),
                                    "externalReference": "bank-ref-1"})
                    })
                    .collect();
                json!({"id": p["id"], "accounts": accounts})
            })
            .collect();
        json!({ "participants": participants })
    }

    async fn settlement(&self, id: u64) -> Value {
        let (st, v) = self
            .call("GET", &format!("/settlements/{id}"), Value::Null)
            .await;
        assert_eq!(st, 200, "settlement {id}: {v}");
        v
    }

    async fn put_all(&self, id: u64, state: &str) -> Value {
        let s = self.settlement(id).await;
        let (st, v) = self
            .call(
                "PUT",
                &format!("/settlements/{id}"),
                World::all_accounts(&s, state),
            )
            .await;
        assert_eq!(st, 200, "PUT {state}: {v}");
        v
    }

    async fn window_state(&self, id: u64) -> String {
        let (st, v) = self
            .call("GET", &format!("/settlementWindows/{id}"), Value::Null)
            .await;
        assert_eq!(st, 200, "window {id}: {v}");
        v["state"].as_str().expect("state").to_string()
    }

    fn restart(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.kill(); // SIGKILL
        }
        self.hub = Some(HubProcess::start(self.dir.path()));
    }
}

/// (name → net in cents, name → account state) of a settlement's (or a closed window's,
/// without states) participants.
fn settlement_accounts(s: &Value) -> (BTreeMap<String, i64>, BTreeMap<String, String>) {
    let mut nets = BTreeMap::new();
    let mut states = BTreeMap::new();
    for p in s["participants"].as_array().expect("participants") {
        let name = p["name"].as_str().expect("name").to_string();
        let accounts = p["accounts"].as_array().expect("accounts");
        assert_eq!(accounts.len(), 1, "one USD account: {p}");
        let a = &accounts[0];
        assert_eq!(a["netSettlementAmount"]["currency"], "USD");
        nets.insert(name.clone(), cents(&a["netSettlementAmount"]["amount"]));
        if let Some(state) = a["state"].as_str() {
            states.insert(name, state.to_string());
        }
    }
    (nets, states)
}

/// A day of traffic, the window closed, a settlement through every state for all accounts;
/// positions, balances and hub accounts checked exactly after each step; the statement's
/// nets against the reference, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_settled_through_every_state() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut reference = Reference::new();
    w.check(&reference, "provisioned").await;
    let nets = w.run_day(&mut reference).await;
    assert!(nets.values().any(|n| *n > 0) && nets.values().any(|n| *n < 0));
    assert_eq!(nets.values().sum::<i64>(), 0);
    w.check(&reference, "after the day").await;

    // The open window, then closed: the next one opens and is the answer.
    let (st, open) = w
        .call("GET", "/settlementWindows?state=OPEN", Value::Null)
        .await;
    assert_eq!(st, 200, "{open}");
    assert_eq!(open.as_array().map(Vec::len), Some(1));
    assert_eq!(open[0]["id"], 1);
    assert_eq!(open[0]["content"], json!([]));
    let next = w.close(1).await;
    assert_eq!(
        (next["id"].as_u64(), next["state"].as_str()),
        (Some(2), Some("OPEN"))
    );
    let (st, closed) = w.call("GET", "/settlementWindows/1", Value::Null).await;
    assert_eq!(st, 200);
    assert_eq!(closed["state"], "CLOSED");
    assert_eq!(closed["reason"], "end of day");
    assert_eq!(closed["transferCount"], 32);
    assert_eq!(closed["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(closed["content"][0]["currencyId"], "USD");
    assert_eq!(closed["content"][0]["ledgerAccountType"], "POSITION");
    let (window_nets, _) = settlement_accounts(&closed);
    assert_eq!(window_nets, nets, "the window's nets");
    // Participant ids are the provisioning order, account ids central-ledger's.
    for (i, p) in closed["participants"]
        .as_array()
        .expect("list")
        .iter()
        .enumerate()
    {
        assert_eq!(p["name"], DFSPS[i]);
        assert_eq!(p["id"], i as u64 + 1);
        assert_eq!(p["accounts"][0]["id"], (i as u64 + 1) * 1_000 + 1);
    }
    // Filters: by participant (the idle one has no transfers), by date, by state.
    let (st, v) = w
        .call("GET", "/settlementWindows?participantId=1", Value::Null)
        .await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(v[0]["id"], 1);
    let (st, v) = w
        .call("GET", "/settlementWindows?participantId=5", Value::Null)
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3100"))
    );
    let (st, v) = w
        .call(
            "GET",
            "/settlementWindows?fromDateTime=2000-01-01T00:00:00.000Z&state=CLOSED",
            Value::Null,
        )
        .await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(1)));

    // The statement of the closed window: nets as the reference, summing to zero.
    check_statement(&w, &nets, None).await;

    let created = w.create(&[1]).await;
    assert_eq!(created["id"], 1);
    assert_eq!(created["state"], "PENDING_SETTLEMENT");
    assert_eq!(created["settlementWindows"][0]["id"], 1);
    assert_eq!(
        created["settlementWindows"][0]["state"],
        "PENDING_SETTLEMENT"
    );
    let (settled_nets, states) = settlement_accounts(&created);
    assert_eq!(
        settled_nets, nets,
        "the settlement's nets (positive: net sender)"
    );
    assert!(states.values().all(|s| s == "PENDING_SETTLEMENT"));
    assert_eq!(w.window_state(1).await, "PENDING_SETTLEMENT");
    w.check(&reference, "created").await;
    let (st, listed) = w
        .call("GET", "/settlements?settlementWindowId=1", Value::Null)
        .await;
    assert_eq!(st, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], 1);
    let (st, _) = w
        .call("GET", "/settlements?participantId=5", Value::Null)
        .await;
    assert_eq!(st, 400, "the idle DFSP is in no settlement");

    for state in [
        "PS_TRANSFERS_RECORDED",
        "PS_TRANSFERS_RESERVED",
        "PS_TRANSFERS_COMMITTED",
        "SETTLED",
    ] {
        let s = w.put_all(1, state).await;
        assert_eq!(s["state"], state);
        let (_, states) = settlement_accounts(&s);
        assert!(states.values().all(|a| a == state), "{s}");
        match state {
            "PS_TRANSFERS_RESERVED" => reference.reserve(&nets),
            "PS_TRANSFERS_COMMITTED" => reference.commit(&nets),
            _ => {}
        }
        w.check(&reference, state).await;
        let (st, listed) = w
            .call("GET", &format!("/settlements?state={state}"), Value::Null)
            .await;
        assert_eq!((st, listed[0]["id"].as_u64()), (200, Some(1)), "{listed}");
    }
    // Everything is back to where the day started, and the money moved.
    for name in DFSPS {
        assert_eq!(reference.position[name], 0);
        assert_eq!(reference.cover[name], FUNDS_CENTS - nets[name]);
    }
    assert_eq!(reference.multilateral, 0);
    assert_eq!(w.window_state(1).await, "SETTLED");
    let s = w.settlement(1).await;
    assert_eq!(
        s["participants"][0]["accounts"][0]["externalReference"],
        "bank-ref-1"
    );
    check_statement(&w, &nets, Some("SETTLED")).await;
    // A settled settlement cannot be aborted; nothing moves.
    let (st, v) = w
        .call(
            "PUT",
            "/settlements/1",
            json!({"state": "ABORTED", "reason": "late"}),
        )
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3100"))
    );
    w.check(&reference, "abort refused").await;
}

/// The statement (JSON and CSV) of window 1 against the nets the test computed.
async fn check_statement(w: &World, nets: &BTreeMap<String, i64>, settled: Option<&str>) {
    let (st, v) = w
        .call("GET", "/settlementWindows/1/statement", Value::Null)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["transferCount"], 32);
    let lines: BTreeMap<String, i64> = v["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                a["participant"].as_str().expect("name").to_string(),
                cents(&a["net"]),
            )
        })
        .collect();
    assert_eq!(&lines, nets);
    assert_eq!(v["totals"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["totals"][0]["currency"], "USD");
    assert_eq!(cents(&v["totals"][0]["netSum"]), 0);
    let senders: i64 = nets.values().filter(|n| **n > 0).sum();
    assert_eq!(cents(&v["totals"][0]["netSenders"]), senders);
    assert_eq!(cents(&v["totals"][0]["netReceivers"]), senders);
    let sent: i64 = day().iter().map(|t| t.3).sum();
    assert_eq!(cents(&v["totals"][0]["transferAmount"]), sent);
    match settled {
        None => assert_eq!(v["settlementId"], Value::Null),
        Some(state) => {
            assert_eq!(v["settlementId"], 1);
            assert_eq!(v["settlementState"], state);
            assert!(v["accounts"]
                .as_array()
                .expect("accounts")
                .iter()
                .all(|a| a["accountState"] == state));
        }
    }

    let (st, csv) = w
        .http
        .text(&format!(
            "{}/settlementWindows/1/statement?format=csv",
            w.admin()
        ))
        .await;
    assert_eq!(st, 200, "{csv}");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][0], "line");
    assert_eq!(rows[0][6], "net");
    let mut csv_nets = BTreeMap::new();
    let mut total = None;
    for row in &rows[1..] {
        assert_eq!(row.len(), 11, "{row:?}");
        let c = cents(&serde_json::from_str::<Value>(row[6]).expect("a number"));
        match row[0] {
            "ACCOUNT" => {
                csv_nets.insert(row[3].to_string(), c);
                assert_eq!(row[8], if settled.is_some() { "1" } else { "" });
            }
            "TOTAL" => total = Some((row[5].to_string(), c, row[7].to_string())),
            other => panic!("line kind {other}"),
        }
    }
    assert_eq!(&csv_nets, nets);
    assert_eq!(total, Some(("USD".to_string(), 0, "32".to_string())));
}

/// An abort after PS_TRANSFERS_RESERVED puts every position back; the window can then be
/// settled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_after_reserve_restores_everything() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    let mut reference = Reference::new();
    let nets = w.run_day(&mut reference).await;
    let after_day = reference.clone();
    w.close(1).await;
    w.create(&[1]).await;
    w.put_all(1, "PS_TRANSFERS_RECORDED").await;
    w.put_all(1, "PS_TRANSFERS_RESERVED").await;
    reference.reserve(&nets);
    w.check(&reference, "reserved").await;
    assert_ne!(reference, after_day);
    let (st, s) = w
        .call(
            "PUT",
            "/settlements/1",
            json!({"state": "ABORTED", "reason": "bank closed"}),
        )
        .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["state"], "ABORTED");
    let (_, states) = settlement_accounts(&s);
    assert!(states.values().all(|a| a == "ABORTED"));
    reference.unreserve(&nets);
    assert_eq!(reference, after_day);
    w.check(&reference, "aborted").await;
    assert_eq!(w.window_state(1).await, "ABORTED");
    // An aborted settlement moves no further.
    let (st, _) = w
        .call(
            "PUT",
            "/settlements/1",
            World::all_accounts(&s, "PS_TRANSFERS_COMMITTED"),
        )
        .await;
    assert_eq!(st, 400);
    w.check(&reference, "after a refused PUT").await;
    // The aborted window settles again, to the end.
    let again = w.create(&[1]).await;
    assert_eq!(again["id"], 2);
    assert_eq!(settlement_accounts(&again).0, nets);
    for state in [
        "PS_TRANSFERS_RECORDED",
        "PS_TRANSFERS_RESERVED",
        "PS_TRANSFERS_COMMITTED",
        "SETTLED",
    ] {
        w.put_all(2, state).await;
        match state {
            "PS_TRANSFERS_RESERVED" => reference.reserve(&nets),
            "PS_TRANSFERS_COMMITTED" => reference.commit(&nets),
            _ => {}
        }
        w.check(&reference, state).await;
    }
    assert_eq!(w.window_state(1).await, "SETTLED");
    assert_eq!(w.settlement(1).await["state"], "ABORTED");
}

/// Writes a whole admin request to the hub, waits `delay_ms`, then SIGKILLs the hub (its
/// answer, if any came, unread) and restarts it on the same data.
async fn send_then_kill(w: &mut World, method: &str, path: &str, body: &str, delay_ms: u64) {
    use tokio::io::AsyncWriteExt;
    let addr = w.admin().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    w.restart();
    drop(stream);
}

/// SIGKILL with a PUT of every account to `state` in flight, `delay_ms` after its bytes
/// were written: after the restart the settlement is either still at `before` (the change
/// was not decided) or at `state` (decided, and finished by the restarted hub before it
/// answers anything), never between, and every figure is the reference's for what it
/// shows. Returns whether it moved.
async fn killed_in_flight(
    w: &mut World,
    reference: &mut Reference,
    nets: &BTreeMap<String, i64>,
    before: &str,
    state: &str,
    delay_ms: u64,
) -> bool {
    let s = w.settlement(1).await;
    assert_eq!(s["state"], before);
    let body = World::all_accounts(&s, state).to_string();
    send_then_kill(w, "PUT", "/settlements/1", &body, delay_ms).await;
    let s = w.settlement(1).await;
    let found = s["state"].as_str().expect("state").to_string();
    eprintln!("killed {delay_ms} ms into the PUT to {state}: found the settlement {found}");
    assert!(found == before || found == state, "{s}");
    let (_, states) = settlement_accounts(&s);
    assert!(
        states.values().all(|a| *a == found),
        "all or none moved: {s}"
    );
    let moved = found == state;
    if moved {
        apply(reference, nets, state);
    }
    w.check(
        reference,
        &format!("restarted mid-PUT to {state}, at {found}"),
    )
    .await;
    moved
}

fn apply(reference: &mut Reference, nets: &BTreeMap<String, i64>, state: &str) {
    match state {
        "PS_TRANSFERS_RESERVED" => reference.reserve(nets),
        "PS_TRANSFERS_COMMITTED" => reference.commit(nets),
        _ => {}
    }
}

/// SIGKILL with the window's close in flight, right after a PUT answered, and with a PUT
/// in flight (at each money step):
/// after a restart on the same data the settlement's state and every figure are the
/// reference's, a resent PUT changes nothing, and the settlement completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_and_during_settlement_steps() {
    let _serial = SERIAL.lock().await;
    let mut w = world().await;
    let mut reference = Reference::new();
    let nets = w.run_day(&mut reference).await;

    // Killed with the close in flight: window 1 is either still open (then closed again)
    // or closed with exactly the day's nets and window 2 open, never both open or none.
    let body = json!({"state": "CLOSED", "reason": "end of day"}).to_string();
    send_then_kill(&mut w, "POST", "/settlementWindows/1", &body, 2).await;
    let (st, open) = w
        .call("GET", "/settlementWindows?state=OPEN", Value::Null)
        .await;
    assert_eq!(
        (st, open.as_array().map(Vec::len)),
        (200, Some(1)),
        "{open}"
    );
    let found = w.window_state(1).await;
    eprintln!("killed with the close in flight: found window 1 {found}");
    match found.as_str() {
        "OPEN" => {
            assert_eq!(open[0]["id"], 1);
            w.close(1).await;
        }
        "CLOSED" => assert_eq!(open[0]["id"], 2),
        other => panic!("window 1 is {other}"),
    }
    let (_, closed) = w.call("GET", "/settlementWindows/1", Value::Null).await;
    assert_eq!(
        settlement_accounts(&closed).0,
        nets,
        "the day's nets after the crash"
    );
    assert_eq!(closed["transferCount"], 32);
    w.check(&reference, "restarted after the close").await;

    w.create(&[1]).await;
    w.put_all(1, "PS_TRANSFERS_RECORDED").await;

    // Killed with the RESERVED PUT in flight; then the PUT again, which moves only what
    // has not moved.
    let moved = killed_in_flight(
        &mut w,
        &mut reference,
        &nets,
        "PS_TRANSFERS_RECORDED",
        "PS_TRANSFERS_RESERVED",
        1,
    )
    .await;
    let s = w.put_all(1, "PS_TRANSFERS_RESERVED").await;
    assert_eq!(s["state"], "PS_TRANSFERS_RESERVED");
    if !moved {
        reference.reserve(&nets);
    }
    w.check(&reference, "RESERVED after the retry").await;

    // Killed after the PUT answered.
    w.restart();
    let s = w.settlement(1).await;
    assert_eq!(s["state"], "PS_TRANSFERS_RESERVED");
    assert_eq!(settlement_accounts(&s).0, nets);
    w.check(&reference, "restarted after RESERVED").await;
    assert_eq!(w.window_state(1).await, "PENDING_SETTLEMENT");
    let resent = w.put_all(1, "PS_TRANSFERS_RESERVED").await;
    assert_eq!(resent["state"], "PS_TRANSFERS_RESERVED");
    w.check(&reference, "RESERVED resent").await;

    // Killed with the COMMITTED PUT in flight, then the retry, then the same PUT again.
    let moved = killed_in_flight(
        &mut w,
        &mut reference,
        &nets,
        "PS_TRANSFERS_RESERVED",
        "PS_TRANSFERS_COMMITTED",
        2,
    )
    .await;
    let s = w.put_all(1, "PS_TRANSFERS_COMMITTED").await;
    assert_eq!(s["state"], "PS_TRANSFERS_COMMITTED");
    if !moved {
        reference.commit(&nets);
    }
    w.check(&reference, "COMMITTED after the retry").await;
    let s = w.put_all(1, "PS_TRANSFERS_COMMITTED").await;
    assert_eq!(s["state"], "PS_TRANSFERS_COMMITTED");
    w.check(&reference, "COMMITTED resent").await;

    w.restart();
    w.check(&reference, "restarted after COMMITTED").await;
    killed_in_flight(
        &mut w,
        &mut reference,
        &nets,
        "PS_TRANSFERS_COMMITTED",
        "SETTLED",
        0,
    )
    .await;
    let s = w.put_all(1, "SETTLED").await;
    assert_eq!(s["state"], "SETTLED");
    w.check(&reference, "SETTLED").await;
    w.restart();
    assert_eq!(w.settlement(1).await["state"], "SETTLED");
    assert_eq!(w.window_state(1).await, "SETTLED");
    assert_eq!(w.window_state(2).await, "OPEN");
    w.check(&reference, "restarted after SETTLED").await;
    for name in DFSPS {
        assert_eq!(reference.position[name], 0);
        assert_eq!(reference.cover[name], FUNDS_CENTS - nets[name]);
    }
}

/// What the bad requests may not change: windows, settlements, every figure.
async fn snapshot(w: &World) -> Value {
    let mut figures = Vec::new();
    for name in DFSPS.iter().chain([IDLE].iter()) {
        let (pos, reserved) = position(&w.http, &w.admin(), name).await;
        let (_, accounts) = w
            .call(
                "GET",
                &format!("/participants/{name}/accounts"),
                Value::Null,
            )
            .await;
        let values: Vec<Value> = accounts
            .as_array()
            .expect("accounts")
            .iter()
            .map(|a| a["value"].clone())
            .collect();
        figures.push(json!([name, pos, reserved, values]));
    }
    let (_, hub) = w
        .call("GET", "/participants/Hub/accounts", Value::Null)
        .await;
    let hub: Vec<Value> = hub
        .as_array()
        .expect("hub")
        .iter()
        .map(|a| a["value"].clone())
        .collect();
    let (_, windows) = w
        .call(
            "GET",
            "/settlementWindows?fromDateTime=2000-01-01T00:00:00.000Z",
            Value::Null,
        )
        .await;
    let (_, settlements) = w
        .call(
            "GET",
            "/settlements?fromDateTime=2000-01-01T00:00:00.000Z",
            Value::Null,
        )
        .await;
    json!({"figures": figures, "hub": hub, "windows": windows, "settlements": settlements})
}

/// Each bad request gets its status and code, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settlement_requests_change_nothing() {
    let _serial = SERIAL.lock().await;
    let w = world().await;
    for (n, payer, payee, c) in [(1, "dfspa", "dfspb", 1_000), (2, "dfspc", "dfspa", 250)] {
        w.transfer(n, payer, payee, c).await;
    }
    w.close(1).await;
    w.create(&[1]).await;
    let before = snapshot(&w).await;
    assert_eq!(before["windows"].as_array().map(Vec::len), Some(2));
    assert_eq!(before["settlements"].as_array().map(Vec::len), Some(1));
    let account = |seq: u64| seq * 1_000 + 1;
    let put = |participant: u64, account: u64, state: &str| {
        json!({"participants": [{"id": participant, "accounts": [
            {"id": account, "state": state, "reason": "r"}]}]})
    };
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("GET", "/settlementWindows/99", String::new(), 404, "3200"),
        ("GET", "/settlementWindows/x", String::new(), 400, "3100"),
        ("GET", "/settlementWindows", String::new(), 400, "3100"),
        ("GET", "/settlementWindows?colour=red", String::new(), 400, "3100"),
        ("GET", "/settlementWindows?state=NOPE", String::new(), 400, "3100"),
        ("GET", "/settlementWindows/2/statement", String::new(), 400, "3100"),
        ("GET", "/settlementWindows/1/statement?format=xml", String::new(), 400, "3100"),
        ("GET", "/settlements/99", String::new(), 404, "3200"),
        ("GET", "/settlements", String::new(), 400, "3100"),
        (
            "POST",
            "/settlementWindows/99",
            json!({"state": "CLOSED", "reason": "r"}).to_string(),
            404,
            "3200",
        ),
        // Closing a window that is not the open one.
        (
            "POST",
            "/settlementWindows/1",
            json!({"state": "CLOSED", "reason": "again"}).to_string(),
            400,
            "3100",
        ),
        (
            "POST",
            "/settlementWindows/2",
            json!({"state": "OPEN", "reason": "r"}).to_string(),
            400,
            "3100",
        ),
        (
            "POST",
            "/settlementWindows/2",
            json!({"state": "CLOSED", "reason": "r", "colour": "red"}).to_string(),
            400,
            "3100",
        ),
        ("POST", "/settlementWindows/2", "{\"state\":".to_string(), 400, "3101"),
        // A window still open.
        (
            "POST",
            "/settlements",
            json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": [{"id": 2}]})
                .to_string(),
            400,
            "3100",
        ),
        // A window already in a settlement.
        (
            "POST",
            "/settlements",
            json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": [{"id": 1}]})
                .to_string(),
            400,
            "3100",
        ),
        (
            "POST",
            "/settlements",
            json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": [{"id": 99}]})
                .to_string(),
            404,
            "3200",
        ),
        (
            "POST",
            "/settlements",
            json!({"settlementModel": "NOSUCHMODEL", "reason": "r", "settlementWindows": [{"id": 1}]})
                .to_string(),
            400,
            "3100",
        ),
        (
            "POST",
            "/settlements",
            json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": [{"id": 1}], "x": 1})
                .to_string(),
            400,
            "3100",
        ),
        (
            "POST",
            "/settlements",
            json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": []}).to_string(),
            400,
            "3100",
        ),
        ("POST", "/settlements", "not json".to_string(), 400, "3101"),
        (
            "PUT",
            "/settlements/99",
            put(1, account(1), "PS_TRANSFERS_RECORDED").to_string(),
            404,
            "3200",
        ),
        // Out of order: RESERVED before RECORDED.
        (
            "PUT",
            "/settlements/1",
            put(1, account(1), "PS_TRANSFERS_RESERVED").to_string(),
            400,
            "3100",
        ),
        // A participant that does not exist, and one not in the settlement.
        (
            "PUT",
            "/settlements/1",
            put(99, account(99), "PS_TRANSFERS_RECORDED").to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            put(5, account(5), "PS_TRANSFERS_RECORDED").to_string(),
            400,
            "3100",
        ),
        // dfspd had no transfer: not in the settlement either; with a good account
        // alongside, the whole PUT is refused.
        (
            "PUT",
            "/settlements/1",
            json!({"participants": [
                {"id": 1, "accounts": [{"id": account(1), "state": "PS_TRANSFERS_RECORDED", "reason": "r"}]},
                {"id": 4, "accounts": [{"id": account(4), "state": "PS_TRANSFERS_RECORDED", "reason": "r"}]}]})
            .to_string(),
            400,
            "3100",
        ),
        // An account of another participant, and a SETTLEMENT account.
        (
            "PUT",
            "/settlements/1",
            put(1, account(2), "PS_TRANSFERS_RECORDED").to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            put(1, account(1) + 1, "PS_TRANSFERS_RECORDED").to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            put(1, account(1), "SETTLING").to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            json!({"participants": [{"id": 1, "accounts": [
                {"id": account(1), "state": "PS_TRANSFERS_RECORDED", "reason": "r", "colour": 1}]}]})
            .to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            json!({"state": "SETTLED", "reason": "r"}).to_string(),
            400,
            "3100",
        ),
        (
            "PUT",
            "/settlements/1",
            json!({"state": "ABORTED"}).to_string(),
            400,
            "3102",
        ),
        ("PUT", "/settlements/1", "[1,".to_string(), 400, "3101"),
    ];
    for (method, path, body, status, code) in cases {
        let (st, v) = w.raw(method, path, &body).await;
        assert_eq!(
            (st, v["errorInformation"]["errorCode"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {v}"
        );
        assert_eq!(
            snapshot(&w).await,
            before,
            "{method} {path} {body} changed something"
        );
    }
    // A good request still works after all that.
    let s = w
        .call(
            "PUT",
            "/settlements/1",
            put(1, account(1), "PS_TRANSFERS_RECORDED"),
        )
        .await;
    assert_eq!(s.0, 200, "{}", s.1);
    let (_, states) = settlement_accounts(&s.1);
    assert_eq!(states["dfspa"], "PS_TRANSFERS_RECORDED");
    assert_eq!(states["dfspb"], "PENDING_SETTLEMENT");
    assert_eq!(s.1["state"], "PENDING_SETTLEMENT");
    // The served OpenAPI document lists the settlement routes.
    let (st, doc) = w.call("GET", "/openapi.json", Value::Null).await;
    assert_eq!(st, 200);
    for (path, method) in [
        ("/settlementWindows", "get"),
        ("/settlementWindows/{id}", "post"),
        ("/settlementWindows/{id}/statement", "get"),
        ("/settlements", "post"),
        ("/settlements/{id}", "put"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "openapi: {method} {path}"
        );
    }
}

/// The settlement routes sit behind the admin credential like every admin route: without
/// the token each is 401 and the window stays open; with it, the same close works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_routes_need_the_admin_credential() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "ops-0123456789abcdef0123456789abcdef";
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, format!("ops-alice {token}\n")).expect("write");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let hub = HubProcess::start_with(
        &dir.path().join("data"),
        &[std::ffi::OsStr::new("--admin-tokens"), tokens.as_os_str()],
    );
    let http = Http::default();
    let headers = |with: bool| {
        let mut h = vec![("content-type", "application/json".to_string())];
        if with {
            h.push(("authorization", format!("Bearer {token}")));
        }
        h
    };
    let close = json!({"state": "CLOSED", "reason": "r"}).to_string();
    let create = json!({"settlementModel": MODEL, "reason": "r", "settlementWindows": [{"id": 1}]})
        .to_string();
    let abort = json!({"state": "ABORTED", "reason": "r"}).to_string();
    for (method, path, body) in [
        ("GET", "/settlementWindows?state=OPEN", ""),
        ("GET", "/settlementWindows/1", ""),
        ("POST", "/settlementWindows/1", close.as_str()),
        ("GET", "/settlementWindows/1/statement", ""),
        ("POST", "/settlements", create.as_str()),
        ("GET", "/settlements?state=SETTLED", ""),
        ("GET", "/settlements/1", ""),
        ("PUT", "/settlements/1", abort.as_str()),
        ("GET", "/participants/Hub/accounts", ""),
    ] {
        let url = format!("{}{path}", hub.admin);
        let (st, v) = http.send(method, &url, &headers(false), body).await;
        assert_eq!(st, 401, "{method} {path} without a token: {v}");
    }
    let url = format!("{}/settlementWindows/1", hub.admin);
    let (st, v) = http.send("GET", &url, &headers(true), "").await;
    assert_eq!((st, v["state"].as_str()), (200, Some("OPEN")), "{v}");
    let (st, v) = http.send("POST", &url, &headers(true), &close).await;
    assert_eq!((st, v["id"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = http.send("GET", &url, &headers(true), "").await;
    assert_eq!((st, v["state"].as_str()), (200, Some("CLOSED")), "{v}");
}
