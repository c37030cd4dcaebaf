//! NDC threshold alarms against the real binary: a crossing of `alarmPercentage` is told
//! once (metric, `GET /alarms`, a POST to the participant's breach endpoint), staying
//! above tells nothing more, and a new crossing after falling back is told again.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PAYER: &str = "alarmpayer";
const PAYEE: &str = "alarmpayee";

async fn transfer(
    http: &Http,
    hub: &HubProcess,
    dfsps: &Dfsps,
    n: u64,
    payer: &str,
    payee: &str,
    amount: &str,
) {
    let (st, _) = http
        .send(
            "POST",
            &format!("{}/transfers", hub.fspiop),
            &fspiop_headers(payer, payee),
            &prepare_body(n, payer, payee, amount, 60_000).to_string(),
        )
        .await;
    assert_eq!(st, 202, "prepare {n}");
    dfsps
        .wait_for("prepare forwarded", |r| {
            r.dfsp == payee && r.method == "POST" && r.body["transferId"] == tid(n)
        })
        .await;
    let mut headers = fspiop_headers(payee, payer);
    headers.retain(|(name, _)| *name != "accept");
    let (st, _) = http
        .send(
            "PUT",
            &format!("{}/transfers/{}", hub.fspiop, tid(n)),
            &headers,
            &fulfil_body(n, "COMMITTED").to_string(),
        )
        .await;
    assert_eq!(st, 200, "fulfil {n}");
    dfsps
        .wait_for("commit told to the payer", |r| {
            r.dfsp == payer && r.method == "PUT" && r.path == format!("/transfers/{}", tid(n))
        })
        .await;
}

async fn alarms(http: &Http, hub: &HubProcess) -> Vec<Value> {
    let (st, body) = http
        .admin("GET", &format!("{}/alarms", hub.admin), Value::Null)
        .await;
    assert_eq!(st, 200);
    body.as_array().cloned().expect("a list")
}

async fn breaches_metric(http: &Http, hub: &HubProcess) -> f64 {
    let (_, text) = http.text(&format!("{}/metrics", hub.admin)).await;
    text.lines()
        .find_map(|l| l.strip_prefix("hub_ndc_threshold_breaches_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the breach counter is exposed")
}

/// Waits up to 5 s (the watcher checks every second) for `count` alarms.
async fn wait_alarms(http: &Http, hub: &HubProcess, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = alarms(http, hub).await;
        if list.len() >= count || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_of_the_alarm_percentage_is_told_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = HubProcess::start(dir.path());
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "5000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "5000").await;
    let (st, _) = http
        .admin(
            "PUT",
            &format!("{}/participants/{PAYER}/limits", hub.admin),
            json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 1000, "alarmPercentage": 50}}),
        )
        .await;
    assert_eq!(st, 200, "alarm percentage set");
    let (st, _) = http
        .admin(
            "POST",
            &format!("{}/participants/{PAYER}/endpoints", hub.admin),
            json!({"type": "NET_DEBIT_CAP_THRESHOLD_BREACH_EMAIL",
                   "value": format!("http://{}/{PAYER}/ndc-alarm", dfsps.addr)}),
        )
        .await;
    assert_eq!(st, 201, "breach endpoint");
    // An email address is taken for the email types too.
    let (st, _) = http
        .admin(
            "POST",
            &format!("{}/participants/{PAYEE}/endpoints", hub.admin),
            json!({"type": "NET_DEBIT_CAP_ADJUSTMENT_EMAIL", "value": "ops@payee.example"}),
        )
        .await;
    assert_eq!(st, 201, "email endpoint");

    transfer(&http, &hub, &dfsps, 1, PAYER, PAYEE, "400").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(alarms(&http, &hub).await.is_empty(), "40 % is below 50 %");

    transfer(&http, &hub, &dfsps, 2, PAYER, PAYEE, "200").await;
    let list = wait_alarms(&http, &hub, 1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["participant"], PAYER);
    assert_eq!(list[0]["position"], "600");
    assert_eq!(list[0]["netDebitCap"], "1000");
    let posted = dfsps
        .wait_for("alarm posted", |r| {
            r.dfsp == PAYER && r.path == "/ndc-alarm"
        })
        .await;
    assert_eq!(posted.method, "POST");
    assert_eq!(posted.body["type"], "NET_DEBIT_CAP_THRESHOLD_BREACH");
    assert_eq!(posted.body["currency"], "USD");

    // Still above: nothing more.
    transfer(&http, &hub, &dfsps, 3, PAYER, PAYEE, "100").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        alarms(&http, &hub).await.len(),
        1,
        "staying above alarms once"
    );
    // Back below (the payee pays back), then above again: a second crossing.
    transfer(&http, &hub, &dfsps, 4, PAYEE, PAYER, "700").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(alarms(&http, &hub).await.len(), 1);
    transfer(&http, &hub, &dfsps, 5, PAYER, PAYEE, "550").await;
    let list = wait_alarms(&http, &hub, 2).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(breaches_metric(&http, &hub).await, 2.0);
    assert_eq!(
        dfsps.count(|r| r.dfsp == PAYER && r.path == "/ndc-alarm"),
        2,
        "one POST per crossing"
    );
}
