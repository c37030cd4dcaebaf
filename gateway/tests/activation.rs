//! Account activation against the real binary (issue 12 A7): a currency account switched
//! off has its prepares accepted and refused by callback with 3100, moving no money; on
//! again, it works; the accounts list shows the switch.

mod common;

use common::*;
use serde_json::{json, Value};

const PAYER: &str = "actpayer";
const PAYEE: &str = "actpayee";

async fn set_active(http: &Http, hub: &HubProcess, name: &str, id: &str, body: Value) -> u16 {
    http.admin(
        "PUT",
        &format!("{}/participants/{name}/accounts/{id}", hub.admin),
        body,
    )
    .await
    .0
}

async fn is_active(http: &Http, hub: &HubProcess, name: &str) -> Vec<i64> {
    let (_, accounts) = http
        .admin(
            "GET",
            &format!("{}/participants/{name}/accounts", hub.admin),
            Value::Null,
        )
        .await;
    accounts
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["isActive"].as_i64().expect("isActive"))
        .collect()
}

async fn prepare(http: &Http, hub: &HubProcess, n: u64, payer: &str, payee: &str) -> u16 {
    http.send(
        "POST",
        &format!("{}/transfers", hub.fspiop),
        &fspiop_headers(payer, payee),
        &prepare_body(n, payer, payee, "10", 60_000).to_string(),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_account_is_refused_by_callback_and_moves_no_money() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = HubProcess::start(dir.path());
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "1000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    let position_id = settlement_account(&http, &hub.admin, PAYER).await["id"]
        .as_u64()
        .expect("id")
        - 1;

    // Bad input changes nothing.
    assert_eq!(
        set_active(&http, &hub, PAYER, "999999", json!({"isActive": false})).await,
        404
    );
    assert_eq!(
        set_active(
            &http,
            &hub,
            PAYER,
            &position_id.to_string(),
            json!({"isActive": "no"})
        )
        .await,
        400
    );
    assert_eq!(is_active(&http, &hub, PAYER).await, vec![1, 1]);

    assert_eq!(
        set_active(
            &http,
            &hub,
            PAYER,
            &position_id.to_string(),
            json!({"isActive": false})
        )
        .await,
        200
    );
    assert_eq!(is_active(&http, &hub, PAYER).await, vec![0, 0]);
    // As payer and as payee: accepted, then refused by callback to the payer.
    for (n, payer, payee) in [(1, PAYER, PAYEE), (2, PAYEE, PAYER)] {
        assert_eq!(prepare(&http, &hub, n, payer, payee).await, 202);
        let refusal = dfsps
            .wait_for("refusal by callback", |r| {
                r.dfsp == payer && r.path == format!("/transfers/{}/error", tid(n))
            })
            .await;
        assert_eq!(refusal.body["errorInformation"]["errorCode"], "3100");
    }
    assert_eq!(position(&http, &hub.admin, PAYER).await, (0.0, 0.0));
    assert_eq!(position(&http, &hub.admin, PAYEE).await, (0.0, 0.0));
    assert_eq!(
        dfsps.count(|r| r.method == "POST" && r.path == "/transfers"),
        0,
        "no prepare was forwarded"
    );

    assert_eq!(
        set_active(
            &http,
            &hub,
            PAYER,
            &position_id.to_string(),
            json!({"isActive": true})
        )
        .await,
        200
    );
    assert_eq!(is_active(&http, &hub, PAYER).await, vec![1, 1]);
    assert_eq!(prepare(&http, &hub, 3, PAYER, PAYEE).await, 202);
    dfsps
        .wait_for("prepare forwarded", |r| {
            r.dfsp == PAYEE && r.method == "POST" && r.body["transferId"] == tid(3)
        })
        .await;
    assert_eq!(position(&http, &hub.admin, PAYER).await, (0.0, 10.0));
}
