//! The position ledger against the real binary: after transfers (committed and one left
//! reserved), each account's entries sum to its position and reserved amount, name their
//! transfers, and still do after a SIGKILL and restart; bad queries get a 400.

mod common;

use common::*;
use serde_json::Value;

const PAYER: &str = "ledgerpayer";
const PAYEE: &str = "ledgerpayee";

async fn prepare(http: &Http, hub: &HubProcess, dfsps: &Dfsps, n: u64) {
    let (st, _) = http
        .send(
            "POST",
            &format!("{}/transfers", hub.fspiop),
            &fspiop_headers(PAYER, PAYEE),
            &prepare_body(n, PAYER, PAYEE, "10", 60_000).to_string(),
        )
        .await;
    assert_eq!(st, 202, "prepare {n}");
    dfsps
        .wait_for("prepare forwarded", |r| {
            r.dfsp == PAYEE && r.method == "POST" && r.body["transferId"] == tid(n)
        })
        .await;
}

async fn fulfil(http: &Http, hub: &HubProcess, dfsps: &Dfsps, n: u64) {
    let mut headers = fspiop_headers(PAYEE, PAYER);
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
            r.dfsp == PAYER && r.method == "PUT" && r.path == format!("/transfers/{}", tid(n))
        })
        .await;
}

async fn ledger(http: &Http, hub: &HubProcess, name: &str, query: &str) -> (u16, Value) {
    http.admin(
        "GET",
        &format!("{}/participants/{name}/ledger{query}", hub.admin),
        Value::Null,
    )
    .await
}

/// The ledger's sums equal the account's position and reserved amount.
async fn assert_reconciles(http: &Http, hub: &HubProcess, name: &str) -> Value {
    let (st, body) = ledger(http, hub, name, "?currency=USD").await;
    assert_eq!(st, 200, "{body}");
    let (position, reserved) = position(http, &hub.admin, name).await;
    let totals = &body["totals"];
    assert_eq!(totals["positionChange"].as_f64(), Some(position), "{body}");
    assert_eq!(totals["reservedChange"].as_f64(), Some(reserved), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_sums_to_the_positions_and_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = HubProcess::start(dir.path());
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "1000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    for n in 1..=3 {
        prepare(&http, &hub, &dfsps, n).await;
        fulfil(&http, &hub, &dfsps, n).await;
    }
    prepare(&http, &hub, &dfsps, 4).await;
    assert_eq!(position(&http, &hub.admin, PAYER).await, (30.0, 10.0));

    let payer = assert_reconciles(&http, &hub, PAYER).await;
    let payee = assert_reconciles(&http, &hub, PAYEE).await;
    let kinds = |body: &Value, transfer: &str| -> Vec<String> {
        body["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["transferId"] == transfer)
            .map(|e| e["entryType"].as_str().expect("type").to_string())
            .collect()
    };
    assert_eq!(kinds(&payer, &tid(1)), ["RESERVE", "COMMIT"]);
    assert_eq!(kinds(&payer, &tid(4)), ["RESERVE"]);
    assert_eq!(kinds(&payee, &tid(2)), ["CREDIT"]);

    // Bad input is refused.
    assert_eq!(ledger(&http, &hub, PAYER, "?colour=red").await.0, 400);
    assert_eq!(
        ledger(&http, &hub, PAYER, "?fromDateTime=yesterday")
            .await
            .0,
        400
    );
    assert_eq!(ledger(&http, &hub, PAYER, "?limit=0").await.0, 400);
    assert_eq!(ledger(&http, &hub, "nobody", "").await.0, 404);

    // A SIGKILL right after: the restarted hub's ledger still reconciles, nothing lost
    // or doubled.
    let entries_before = payer["totals"]["entries"].clone();
    hub.kill();
    let hub = HubProcess::start(dir.path());
    let after = assert_reconciles(&http, &hub, PAYER).await;
    assert_eq!(after["totals"]["entries"], entries_before);
    assert_reconciles(&http, &hub, PAYEE).await;
}
