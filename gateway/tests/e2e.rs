//! End to end: the real hub binary on ephemeral ports, two fake DFSPs recording callbacks.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The tests run one at a time: each starts a whole hub, and the timing assertions
/// (expiry within 1 s) should not depend on how many hubs share the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAYER: &str = "payerfsp";
const PAYEE: &str = "payeefsp";

struct World {
    _dir: tempfile::TempDir,
    hub: HubProcess,
    dfsps: Dfsps,
    http: Http,
}

async fn world(payer_ndc: &str, payer_funds: &str) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = HubProcess::start(dir.path());
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, payer_ndc, payer_funds).await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    World {
        _dir: dir,
        hub,
        dfsps,
        http,
    }
}

impl World {
    async fn prepare(&self, body: &Value, source: &str) -> (u16, Value) {
        let url = format!("{}/transfers", self.hub.fspiop);
        self.http
            .send(
                "POST",
                &url,
                &fspiop_headers(source, PAYEE),
                &body.to_string(),
            )
            .await
    }

    async fn fulfil(&self, n: u64, body: &Value) -> (u16, Value) {
        let url = format!("{}/transfers/{}", self.hub.fspiop, tid(n));
        let mut headers = fspiop_headers(PAYEE, PAYER);
        headers.retain(|(n, _)| *n != "accept");
        self.http
            .send("PUT", &url, &headers, &body.to_string())
            .await
    }

    async fn reject(&self, n: u64, code: &str) -> (u16, Value) {
        let url = format!("{}/transfers/{}/error", self.hub.fspiop, tid(n));
        let body =
            json!({"errorInformation": {"errorCode": code, "errorDescription": "Payee rejected"}});
        self.http
            .send(
                "PUT",
                &url,
                &fspiop_headers(PAYEE, PAYER),
                &body.to_string(),
            )
            .await
    }

    async fn get(&self, n: u64, source: &str) -> u16 {
        let url = format!("{}/transfers/{}", self.hub.fspiop, tid(n));
        let mut headers = fspiop_headers(source, PAYER);
        headers.retain(|(n, _)| *n != "content-type");
        self.http.send("GET", &url, &headers, "").await.0
    }

    async fn callback(&self, dfsp: &str, method: &str, path: &str) -> Received {
        let (d, m, p) = (dfsp.to_string(), method.to_string(), path.to_string());
        self.dfsps
            .wait_for(&format!("{method} {path} to {dfsp}"), move |r| {
                r.dfsp == d && r.method == m && r.path == p
            })
            .await
    }

    async fn positions(&self) -> ((f64, f64), (f64, f64)) {
        (
            position(&self.http, &self.hub.admin, PAYER).await,
            position(&self.http, &self.hub.admin, PAYEE).await,
        )
    }
}

/// `text` (43 base64url characters, 32 bytes) with a padding bit of its last character
/// set: the same bytes to a decoder that ignores padding bits, as Node's does.
fn with_padding_bits(text: &str) -> String {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (head, last) = text.split_at(42);
    let index = ALPHABET.find(last).expect("a base64url character");
    assert_eq!(index & 0b11, 0, "canonical: the two padding bits are zero");
    format!("{head}{}", &ALPHABET[index | 1..=index | 1])
}

fn error_code(r: &Received) -> &str {
    r.body["errorInformation"]["errorCode"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_path_patch_duplicates_reject_and_invalid_fulfilment() {
    let _serial = SERIAL.lock().await;
    let w = world("1000", "1000").await;
    assert_eq!(w.positions().await, ((0.0, 0.0), (0.0, 0.0)));

    // Golden path: prepare → forwarded to the payee with the payer's headers → fulfil →
    // payer gets the fulfil; positions move.
    let body = prepare_body(1, PAYER, PAYEE, "100.5", 60_000);
    assert_eq!(w.prepare(&body, PAYER).await.0, 202);
    let forwarded = w.callback(PAYEE, "POST", "/transfers").await;
    assert_eq!(forwarded.body, body);
    assert_eq!(forwarded.header("fspiop-source"), Some(PAYER));
    assert_eq!(forwarded.header("fspiop-destination"), Some(PAYEE));
    assert!(
        forwarded.header("accept").is_some(),
        "the forwarded prepare keeps Accept"
    );
    assert_eq!(w.positions().await, ((0.0, 100.5), (0.0, 0.0)));
    let first_fulfil = fulfil_body(1, "COMMITTED");
    assert_eq!(w.fulfil(1, &first_fulfil).await.0, 200);
    let done = w
        .callback(PAYER, "PUT", &format!("/transfers/{}", tid(1)))
        .await;
    assert_eq!(done.body["transferState"], "COMMITTED");
    assert_eq!(done.header("fspiop-source"), Some(PAYEE));
    assert!(done.header("accept").is_none(), "callbacks carry no Accept");
    assert_eq!(w.positions().await, ((100.5, 0.0), (-100.5, 0.0)));

    // PATCH: the payee fulfils with RESERVED and is told COMMITTED.
    assert_eq!(
        w.prepare(&prepare_body(2, PAYER, PAYEE, "1", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("forward 2", |r| r.body["transferId"] == tid(2))
        .await;
    assert_eq!(w.fulfil(2, &fulfil_body(2, "RESERVED")).await.0, 200);
    let patch = w
        .callback(PAYEE, "PATCH", &format!("/transfers/{}", tid(2)))
        .await;
    assert_eq!(patch.body["transferState"], "COMMITTED");
    assert_eq!(patch.header("fspiop-source"), Some("Hub"));

    // Duplicate prepare, same body: current state re-sent; modified body: 3106.
    assert_eq!(w.prepare(&body, PAYER).await.0, 202);
    let resent = w
        .dfsps
        .wait_for("state re-sent", |r| {
            r.dfsp == PAYER
                && r.method == "PUT"
                && r.header("fspiop-source") == Some("Hub")
                && r.path == format!("/transfers/{}", tid(1))
        })
        .await;
    assert_eq!(resent.body["transferState"], "COMMITTED");
    let mut modified = body.clone();
    modified["amount"]["amount"] = json!("7");
    assert_eq!(w.prepare(&modified, PAYER).await.0, 202);
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(1)))
        .await;
    assert_eq!(error_code(&error), "3106");
    // Duplicate fulfil, same body: COMMITTED re-sent to the payee; modified: 3106.
    assert_eq!(w.fulfil(1, &first_fulfil).await.0, 200);
    let resent = w
        .callback(PAYEE, "PUT", &format!("/transfers/{}", tid(1)))
        .await;
    assert_eq!(resent.body["transferState"], "COMMITTED");
    assert_eq!(resent.body["fulfilment"], first_fulfil["fulfilment"]);
    let mut other = first_fulfil.clone();
    other["completedTimestamp"] = json!(expiration_in(-5_000));
    assert_eq!(w.fulfil(1, &other).await.0, 200);
    let error = w
        .callback(PAYEE, "PUT", &format!("/transfers/{}/error", tid(1)))
        .await;
    assert_eq!(error_code(&error), "3106");
    assert_eq!(
        w.positions().await,
        ((101.5, 0.0), (-101.5, 0.0)),
        "duplicates moved nothing"
    );

    // Payee reject: its error code reaches the payer; the reservation is released.
    assert_eq!(
        w.prepare(&prepare_body(3, PAYER, PAYEE, "50", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("forward 3", |r| r.body["transferId"] == tid(3))
        .await;
    assert_eq!(w.reject(3, "5101").await.0, 200);
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(3)))
        .await;
    assert_eq!(error_code(&error), "5101");
    assert_eq!(w.positions().await.0, (101.5, 0.0));

    // Invalid fulfilment: 3100, transfer aborted, reservation released.
    assert_eq!(
        w.prepare(&prepare_body(4, PAYER, PAYEE, "20", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("forward 4", |r| r.body["transferId"] == tid(4))
        .await;
    let mut wrong = fulfil_body(4, "COMMITTED");
    wrong["fulfilment"] = json!(secret(999).0);
    assert_eq!(w.fulfil(4, &wrong).await.0, 200);
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(4)))
        .await;
    assert_eq!(error_code(&error), "3100");
    assert_eq!(w.positions().await.0, (101.5, 0.0));

    // A fulfilment that matches the FSPIOP pattern ^[A-Za-z0-9-_]{43}$ but whose last
    // character has non-zero padding bits (Mojaloop's invalid-fulfilment collection sends
    // one) is taken as the bytes it encodes: here a wrong preimage, so 200, the transfer
    // aborted, 3100 to the payer and the payee, the reservation released.
    assert_eq!(
        w.prepare(&prepare_body(5, PAYER, PAYEE, "20", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("forward 5", |r| r.body["transferId"] == tid(5))
        .await;
    let mut wrong = fulfil_body(5, "COMMITTED");
    wrong["fulfilment"] = json!(with_padding_bits(&secret(998).0));
    assert_eq!(w.fulfil(5, &wrong).await.0, 200);
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(5)))
        .await;
    assert_eq!(error_code(&error), "3100");
    let error = w
        .callback(PAYEE, "PUT", &format!("/transfers/{}/error", tid(5)))
        .await;
    assert_eq!(error_code(&error), "3100");
    assert_eq!(w.positions().await.0, (101.5, 0.0));

    // GET: known (state to the requester), unknown (3208), third party (3000).
    assert_eq!(w.get(1, PAYEE).await, 202);
    let state = w
        .dfsps
        .wait_for("GET answer", |r| {
            r.dfsp == PAYEE
                && r.method == "PUT"
                && r.path == format!("/transfers/{}", tid(1))
                && r.header("fspiop-source") == Some("Hub")
        })
        .await;
    assert_eq!(state.body["transferState"], "COMMITTED");
    assert_eq!(w.get(777, PAYER).await, 202);
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(777)))
        .await;
    assert_eq!(error_code(&error), "3208");
    provision(&w.http, &w.hub.admin, &w.dfsps, "otherfsp", "10", "10").await;
    assert_eq!(w.get(1, "otherfsp").await, 202);
    let error = w
        .callback("otherfsp", "PUT", &format!("/transfers/{}/error", tid(1)))
        .await;
    assert_eq!(error_code(&error), "3000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_limits_and_bad_input() {
    let _serial = SERIAL.lock().await;
    // NDC 300 binds below the 500 of liquidity.
    let w = world("300", "500").await;

    // Timeout: 3303 to payer and payee, within a second of the expiration.
    let body = prepare_body(10, PAYER, PAYEE, "5", 1_500);
    let expiration_ms =
        gateway::fspiop::parse_timestamp(body["expiration"].as_str().expect("expiration"))
            .expect("timestamp");
    assert_eq!(w.prepare(&body, PAYER).await.0, 202);
    w.dfsps
        .wait_for("forward 10", |r| r.body["transferId"] == tid(10))
        .await;
    let to_payer = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(10)))
        .await;
    let late_ms = engine::runtime::now_ms() - expiration_ms;
    let to_payee = w
        .callback(PAYEE, "PUT", &format!("/transfers/{}/error", tid(10)))
        .await;
    assert_eq!(
        (error_code(&to_payer), error_code(&to_payee)),
        ("3303", "3303")
    );
    assert!(
        (0..1_000).contains(&late_ms),
        "expiry enforced within 1 s of expiration ({late_ms} ms)"
    );
    assert_eq!(w.positions().await.0, (0.0, 0.0));

    // An expiration further ahead than PREPARE_EXPIRATION_MS_MAX would lock liquidity for
    // good (year 9999 was accepted): refused with 3100, nothing reserved.
    let max_ms = gateway::limits::PREPARE_EXPIRATION_MS_MAX;
    for (n, expiration) in [
        (20, "9999-12-31T23:59:59.999Z".to_string()),
        (21, expiration_in(max_ms + 60_000)),
    ] {
        let mut far = prepare_body(n, PAYER, PAYEE, "5", 60_000);
        far["expiration"] = json!(expiration);
        let (st, v) = w.prepare(&far, PAYER).await;
        assert_eq!(st, 400, "{expiration}: {v}");
        assert_eq!(v["errorInformation"]["errorCode"], "3100", "{v}");
        let description = v["errorInformation"]["errorDescription"]
            .as_str()
            .unwrap_or("");
        assert!(description.contains("expiration"), "{description}");
    }
    // Just within the bound is accepted.
    let near = prepare_body(22, PAYER, PAYEE, "5", max_ms - 60_000);
    assert_eq!(w.prepare(&near, PAYER).await.0, 202);
    w.dfsps
        .wait_for("forward 22", |r| r.body["transferId"] == tid(22))
        .await;
    assert_eq!(w.reject(22, "5101").await.0, 200);
    w.callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(22)))
        .await;
    assert_eq!(w.positions().await.0, (0.0, 0.0));

    // 4200: the NDC (300) binds; 4001: after lowering cover below the NDC.
    assert_eq!(
        w.prepare(&prepare_body(11, PAYER, PAYEE, "301", 60_000), PAYER)
            .await
            .0,
        202
    );
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(11)))
        .await;
    assert_eq!(error_code(&error), "4200");
    let (st, _) = w
        .http
        .admin(
            "PUT",
            &format!("{}/participants/{PAYER}/limits", w.hub.admin),
            json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 1000}}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        w.prepare(&prepare_body(12, PAYER, PAYEE, "501", 60_000), PAYER)
            .await
            .0,
        202
    );
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(12)))
        .await;
    assert_eq!(error_code(&error), "4001");

    // Synchronous refusals, each with an FSPIOP error code; never a 5xx.
    let url = format!("{}/transfers", w.hub.fspiop);
    let good = prepare_body(13, PAYER, PAYEE, "1", 60_000);
    let (st, v) = w.prepare(&good, PAYEE).await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3100")),
        "FSPIOP-Source != payer"
    );
    let mut headers = fspiop_headers(PAYER, PAYEE);
    headers[0].1 = "application/vnd.interoperability.transfers+json;version=2.0".into();
    let (st, v) = w.http.send("POST", &url, &headers, &good.to_string()).await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (406, Some("3001")),
        "unsupported version"
    );
    let mut headers = fspiop_headers(PAYER, PAYEE);
    headers[0].1 = "application/vnd.interoperability.transfers+json;version=1.0".into();
    headers[1].1 = headers[0].1.clone();
    assert_eq!(
        w.http
            .send(
                "POST",
                &url,
                &headers,
                &prepare_body(14, PAYER, PAYEE, "1", 60_000).to_string()
            )
            .await
            .0,
        202,
        "1.0 accepted"
    );
    let (st, v) = w
        .http
        .send("POST", &url, &fspiop_headers(PAYER, PAYEE), "{not json")
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3101")),
        "malformed JSON"
    );
    for amount in ["5.0", "-1", "1.12345", "1.123"] {
        let (st, v) = w
            .prepare(&prepare_body(15, PAYER, PAYEE, amount, 60_000), PAYER)
            .await;
        assert_eq!(
            (st, v["errorInformation"]["errorCode"].as_str()),
            (400, Some("3100")),
            "amount {amount}"
        );
    }
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("condition");
    let (st, v) = w.prepare(&missing, PAYER).await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3102"))
    );
    let (st, v) = w
        .prepare(&prepare_body(16, PAYER, PAYEE, "1", -1_000), PAYER)
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3100")),
        "expired"
    );
    for junk in ["", "[]", "null", "{\"transferId\": 5}", &"x".repeat(70_000)] {
        let (st, _) = w
            .http
            .send("POST", &url, &fspiop_headers(PAYER, PAYEE), junk)
            .await;
        assert!((400..500).contains(&st), "junk {junk:.20} gave {st}");
    }

    // Inactive participant: the prepare is refused with 3100.
    let (st, _) = w
        .http
        .admin(
            "PUT",
            &format!("{}/participants/{PAYER}", w.hub.admin),
            json!({"isActive": false}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        w.prepare(&prepare_body(17, PAYER, PAYEE, "1", 60_000), PAYER)
            .await
            .0,
        202
    );
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(17)))
        .await;
    assert_eq!(error_code(&error), "3100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_prepares_with_headroom_for_fifty() {
    let _serial = SERIAL.lock().await;
    // Headroom 500 USD, 200 prepares of 10 USD: exactly 50 can be reserved.
    let w = world("500", "1000").await;
    let bodies: Vec<Value> = (100..300)
        .map(|n| prepare_body(n, PAYER, PAYEE, "10", 60_000))
        .collect();
    let sends = bodies.iter().map(|b| w.prepare(b, PAYER));
    let answers = futures::future::join_all(sends).await;
    assert!(answers.iter().all(|(st, _)| *st == 202));
    // Every prepare gets exactly one outcome (counted by transfer: callbacks are at least
    // once, so a retried one may arrive twice).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let forwarded = w.dfsps.distinct(
            |r| r.dfsp == PAYEE && r.method == "POST",
            |r| r.body["transferId"].to_string(),
        );
        let refused = w.dfsps.distinct(
            |r| r.dfsp == PAYER && r.path.ends_with("/error"),
            |r| r.path.clone(),
        );
        let refused_4200 = w.dfsps.distinct(
            |r| r.dfsp == PAYER && error_code(r) == "4200",
            |r| r.path.clone(),
        );
        let (_, reserved) = position(&w.http, &w.hub.admin, PAYER).await;
        assert!(reserved <= 500.0, "reserved {reserved} beyond the limit");
        assert!(
            forwarded <= 50,
            "{forwarded} prepares forwarded: more than the headroom"
        );
        if forwarded == 50 && refused == 150 {
            assert_eq!(refused_4200, 150, "every refusal is 4200");
            assert_eq!(reserved, 500.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outcomes: {forwarded} forwarded, {refused} refused ({refused_4200} with 4200), reserved {reserved}: {:?}",
            w.dfsps.log.lock().expect("log").iter().filter(|r| r.dfsp == PAYER).map(|r| error_code(r).to_string()).collect::<std::collections::BTreeSet<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_results_survive_sigkill_and_sigterm_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    let hub = HubProcess::start(dir.path());
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "1000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    let mut headers = fspiop_headers(PAYEE, PAYER);
    headers.retain(|(n, _)| *n != "accept");
    for n in 1..=5u64 {
        let body = prepare_body(n, PAYER, PAYEE, "10", 60_000);
        assert_eq!(
            http.send(
                "POST",
                &format!("{}/transfers", hub.fspiop),
                &fspiop_headers(PAYER, PAYEE),
                &body.to_string()
            )
            .await
            .0,
            202
        );
        dfsps
            .wait_for("forward", |r| r.body["transferId"] == tid(n))
            .await;
        if n <= 3 {
            let url = format!("{}/transfers/{}", hub.fspiop, tid(n));
            assert_eq!(
                http.send(
                    "PUT",
                    &url,
                    &headers,
                    &fulfil_body(n, "COMMITTED").to_string()
                )
                .await
                .0,
                200
            );
            dfsps
                .wait_for("commit", |r| {
                    r.dfsp == PAYER && r.path == format!("/transfers/{}", tid(n))
                })
                .await;
        }
    }
    let before = (
        position(&http, &hub.admin, PAYER).await,
        position(&http, &hub.admin, PAYEE).await,
    );
    assert_eq!(before, ((30.0, 20.0), (-30.0, 0.0)));
    let (st, _) = http
        .admin(
            "POST",
            &format!("{}/participants/Hub/accounts", hub.admin),
            json!({"type": "HUB_RECONCILIATION", "currency": "USD"}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, _) = http
        .admin(
            "PUT",
            &format!("{}/participants/{PAYER}/limits", hub.admin),
            json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 1000, "alarmPercentage": 55}}),
        )
        .await;
    assert_eq!(st, 200);
    hub.kill(); // SIGKILL
    let hub = HubProcess::start(dir.path());
    let after = (
        position(&http, &hub.admin, PAYER).await,
        position(&http, &hub.admin, PAYEE).await,
    );
    assert_eq!(after, before, "every acknowledged position is as it was");
    let (_, hub_participant) = http
        .admin(
            "GET",
            &format!("{}/participants/Hub", hub.admin),
            Value::Null,
        )
        .await;
    assert_eq!(
        hub_participant["accounts"][0]["ledgerAccountType"],
        "HUB_RECONCILIATION"
    );
    let (_, limits) = http
        .admin(
            "GET",
            &format!("{}/participants/{PAYER}/limits", hub.admin),
            Value::Null,
        )
        .await;
    assert_eq!(limits[0]["limit"]["alarmPercentage"], 55.0);
    // And the reserved ones can still be fulfilled; endpoints and participants survived.
    let url = format!("{}/transfers/{}", hub.fspiop, tid(4));
    assert_eq!(
        http.send(
            "PUT",
            &url,
            &headers,
            &fulfil_body(4, "COMMITTED").to_string()
        )
        .await
        .0,
        200
    );
    dfsps
        .wait_for("commit after restart", |r| {
            r.dfsp == PAYER
                && r.path == format!("/transfers/{}", tid(4))
                && r.body["transferState"] == "COMMITTED"
        })
        .await;
    assert!(hub.terminate(), "SIGTERM drains, flushes and exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_endpoint_never_gives_a_5xx() {
    let _serial = SERIAL.lock().await;
    let w = world("100", "100").await;
    let id = tid(1);
    let junk_bodies = [
        String::new(),
        "{".into(),
        "[]".into(),
        "null".into(),
        "\"text\"".into(),
        "{\"name\": 7, \"currency\": [1]}".into(),
        "{\"transferId\": \"../../etc\", \"amount\": {\"amount\": \"1e9\", \"currency\": \"usd\"}}".into(),
        json!({"fulfilment": "!!", "transferState": "COMMITTED"}).to_string(),
        json!({"errorInformation": {"errorCode": "12", "errorDescription": 5}}).to_string(),
        json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": -5}}).to_string(),
        json!({"action": "recordFundsIn", "amount": {"amount": "1.234", "currency": "USD"}, "transferId": "x"}).to_string(),
        "\u{0}\u{1}\u{2}".into(),
        "x".repeat(100_000),
    ];
    let fspiop = &w.hub.fspiop;
    let admin = &w.hub.admin;
    let targets: Vec<(&str, String)> = vec![
        ("POST", format!("{fspiop}/transfers")),
        ("PUT", format!("{fspiop}/transfers/{id}")),
        ("PUT", format!("{fspiop}/transfers/{id}/error")),
        ("PUT", format!("{fspiop}/transfers/not-an-id")),
        ("GET", format!("{fspiop}/transfers/not-an-id")),
        ("PATCH", format!("{fspiop}/transfers/{id}")),
        ("POST", format!("{admin}/participants")),
        ("PUT", format!("{admin}/participants/{PAYER}")),
        ("PUT", format!("{admin}/participants/nobody")),
        (
            "POST",
            format!("{admin}/participants/{PAYER}/initialPositionAndLimits"),
        ),
        ("PUT", format!("{admin}/participants/{PAYER}/limits")),
        (
            "POST",
            format!("{admin}/participants/{PAYER}/accounts/1002"),
        ),
        (
            "POST",
            format!("{admin}/participants/{PAYER}/accounts/99999999"),
        ),
        ("POST", format!("{admin}/participants/{PAYER}/accounts/abc")),
        (
            "PUT",
            format!("{admin}/participants/{PAYER}/accounts/1002/transfers/{id}"),
        ),
        ("POST", format!("{admin}/participants/{PAYER}/endpoints")),
        ("GET", format!("{admin}/participants/nobody/positions")),
        ("POST", format!("{admin}/participants/Hub/accounts")),
        ("POST", format!("{admin}/participants/{PAYER}/accounts")),
        ("POST", format!("{admin}/settlementModels")),
        ("GET", format!("{admin}/participants/limits?type=x")),
        (
            "GET",
            format!("{admin}/participants/{PAYER}/positions?currency=XXX"),
        ),
    ];
    let header_sets = [
        fspiop_headers(PAYER, PAYEE),
        vec![("content-type", "text/plain".to_string())],
        vec![
            ("content-type", CT.to_string()),
            ("date", "yesterday".into()),
            ("fspiop-source", "has space".into()),
        ],
    ];
    for (method, url) in &targets {
        for headers in &header_sets {
            for body in &junk_bodies {
                let (status, answer) = w.http.send(method, url, headers, body).await;
                assert!(
                    status < 500,
                    "{method} {url} with {:.30}: {status} {answer}",
                    body
                );
                if status >= 400 {
                    let code = answer["errorInformation"]["errorCode"]
                        .as_str()
                        .unwrap_or("");
                    assert_eq!(code.len(), 4, "{method} {url}: every refusal carries an FSPIOP code, got {status} {answer}");
                }
            }
        }
    }
    // The hub still works afterwards, and nothing moved.
    assert_eq!(w.positions().await, ((0.0, 0.0), (0.0, 0.0)));
    let (st, _) = w
        .http
        .send("GET", &format!("{admin}/health/ready"), &[], "")
        .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dfsp_that_hangs_does_not_stall_the_others() {
    let _serial = SERIAL.lock().await;
    let w = world("100000", "100000").await;
    // "hangfsp" accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    let mut held = Vec::new();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            held.push(stream);
        }
    });
    provision(&w.http, &w.hub.admin, &w.dfsps, "hangfsp", "1000", "1000").await;
    let (st, _) = w
        .http
        .admin(
            "POST",
            &format!("{}/participants/hangfsp/endpoints", w.hub.admin),
            json!({"type": "FSPIOP_CALLBACK_URL_TRANSFER_POST", "value": format!("http://{hang_addr}/transfers")}),
        )
        .await;
    assert_eq!(st, 201);
    // More prepares whose forward goes to the hanging DFSP than the notifier has callback
    // slots in all (CALLBACKS_IN_FLIGHT_MAX)...
    let url = format!("{}/transfers", w.hub.fspiop);
    let headers = fspiop_headers(PAYER, "hangfsp");
    let total = gateway::limits::CALLBACKS_IN_FLIGHT_MAX as u64 + 100;
    for chunk in (10_000..10_000 + total).collect::<Vec<u64>>().chunks(300) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|n| prepare_body(*n, PAYER, "hangfsp", "1", 60_000).to_string())
            .collect();
        let sends = bodies
            .iter()
            .map(|b| w.http.send("POST", &url, &headers, b));
        assert!(futures::future::join_all(sends)
            .await
            .iter()
            .all(|(st, _)| *st == 202));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... and then a transfer between healthy DFSPs still completes promptly.
    let started = std::time::Instant::now();
    assert_eq!(
        w.prepare(&prepare_body(2_000, PAYER, PAYEE, "1", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("healthy forward", |r| r.body["transferId"] == tid(2_000))
        .await;
    assert_eq!(
        w.fulfil(2_000, &fulfil_body(2_000, "COMMITTED")).await.0,
        200
    );
    w.callback(PAYER, "PUT", &format!("/transfers/{}", tid(2_000)))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "healthy DFSPs waited {:?}",
        started.elapsed()
    );
    // The hanging DFSP held at most its share; the rest of its callbacks were given up
    // at once (over its share, or once it was marked down after its first attempts timed
    // out: then one probe per cool-off goes out), and /metrics says so.
    let (st, text) = w.http.text(&format!("{}/metrics", w.hub.admin)).await;
    assert_eq!(st, 200);
    let series = |reason: &str| -> u64 {
        let prefix = format!("hub_callbacks_shed_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no shed series for {reason}"))
    };
    let shed = series("dfsp_share_full") + series("dfsp_down");
    let admitted = total - shed;
    let probes_max = 8;
    assert!(
        admitted <= gateway::limits::CALLBACKS_PER_DFSP_MAX as u64 + probes_max,
        "{admitted} of {total} callbacks to the hanging DFSP were attempted"
    );
    accept.abort();
}

/// Re-serialises a JSON body with its keys reversed and extra whitespace: the same
/// message to a DFSP, different bytes on the wire.
fn reshuffled(body: &Value) -> String {
    let map = body.as_object().expect("object");
    let parts: Vec<String> = map
        .iter()
        .rev()
        .map(|(k, v)| format!("\n  {} :  {}", json!(k), v))
        .collect();
    format!("{{{}\n}}", parts.join(" ,"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_admin_extras_and_operator_endpoints() {
    let _serial = SERIAL.lock().await;
    let w = world("1000", "1000").await;
    let fspiop = w.hub.fspiop.clone();
    let admin = w.hub.admin.clone();
    let url = format!("{fspiop}/transfers");

    // A resend of the same prepare with reordered keys and other whitespace is the same
    // request (canonical body hash): the state is re-sent, never 3106.
    let body = prepare_body(40, PAYER, PAYEE, "3", 60_000);
    assert_eq!(w.prepare(&body, PAYER).await.0, 202);
    w.callback(PAYEE, "POST", "/transfers").await;
    let (st, _) = w
        .http
        .send(
            "POST",
            &url,
            &fspiop_headers(PAYER, PAYEE),
            &reshuffled(&body),
        )
        .await;
    assert_eq!(st, 202);
    let resent = w
        .dfsps
        .wait_for("RESERVED re-sent", |r| {
            r.dfsp == PAYER && r.path == format!("/transfers/{}", tid(40))
        })
        .await;
    assert_eq!(resent.body["transferState"], "RESERVED");
    // The payee's fulfil without FSPIOP-Destination reaches the payer with it filled in.
    let fulfil_url = format!("{fspiop}/transfers/{}", tid(40));
    let mut headers = fspiop_headers(PAYEE, PAYER);
    headers.retain(|(n, _)| *n != "accept" && *n != "fspiop-destination");
    let (st, _) = w
        .http
        .send(
            "PUT",
            &fulfil_url,
            &headers,
            &fulfil_body(40, "COMMITTED").to_string(),
        )
        .await;
    assert_eq!(st, 200);
    let done = w
        .dfsps
        .wait_for("commit 40", |r| {
            r.dfsp == PAYER
                && r.path == format!("/transfers/{}", tid(40))
                && r.body["transferState"] == "COMMITTED"
        })
        .await;
    assert_eq!(done.header("fspiop-destination"), Some(PAYER));
    assert_eq!(done.header("fspiop-source"), Some(PAYEE));
    assert_eq!(
        done.header("fspiop-uri"),
        Some(format!("/transfers/{}", tid(40)).as_str())
    );
    assert_eq!(done.header("fspiop-http-method"), Some("PUT"));
    assert_eq!(
        w.dfsps
            .count(|r| r.dfsp == PAYER && r.path.ends_with("/error")),
        0,
        "no 3106 for a reshuffled resend"
    );

    // Version negotiation: 406 lists the supported versions; a foreign media type is
    // malformed (3101); Accept may name the major version only; GET needs Accept.
    let mut headers = fspiop_headers(PAYER, PAYEE);
    headers[1].1 = "application/vnd.interoperability.transfers+json;version=2.0".into();
    let (st, v) = w
        .http
        .send(
            "POST",
            &url,
            &headers,
            &prepare_body(41, PAYER, PAYEE, "1", 60_000).to_string(),
        )
        .await;
    assert_eq!(st, 406);
    assert_eq!(v["errorInformation"]["errorCode"], "3001");
    assert_eq!(
        v["errorInformation"]["extensionList"]["extension"],
        json!([{"key": "1", "value": "1"}, {"key": "1", "value": "0"}])
    );
    let mut headers = fspiop_headers(PAYER, PAYEE);
    headers[0].1 = "application/json".into();
    let (st, v) = w
        .http
        .send(
            "POST",
            &url,
            &headers,
            &prepare_body(41, PAYER, PAYEE, "1", 60_000).to_string(),
        )
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3101"))
    );
    let get_url = format!("{fspiop}/transfers/{}", tid(40));
    let mut headers = fspiop_headers(PAYER, PAYEE);
    headers.retain(|(n, _)| *n != "content-type" && *n != "accept");
    let (st, v) = w.http.send("GET", &get_url, &headers, "").await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3102"))
    );
    headers.push((
        "accept",
        "application/vnd.interoperability.transfers+json;version=1".into(),
    ));
    assert_eq!(w.http.send("GET", &get_url, &headers, "").await.0, 202);
    // An expiration without milliseconds is not an FSPIOP DateTime.
    let mut loose = prepare_body(42, PAYER, PAYEE, "1", 60_000);
    let text = loose["expiration"]
        .as_str()
        .expect("expiration")
        .to_string();
    loose["expiration"] = json!(format!("{}Z", &text[..19]));
    let (st, v) = w.prepare(&loose, PAYER).await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3100"))
    );

    // Admin extras central-ledger provisioning uses: hub accounts, settlement models,
    // limits of everyone with the alarm percentage as set.
    for kind in ["HUB_MULTILATERAL_SETTLEMENT", "HUB_RECONCILIATION"] {
        let (st, v) = w
            .http
            .admin(
                "POST",
                &format!("{admin}/participants/Hub/accounts"),
                json!({"type": kind, "currency": "USD"}),
            )
            .await;
        assert_eq!(st, 201, "{kind}: {v}");
    }
    let (st, v) = w
        .http
        .admin(
            "POST",
            &format!("{admin}/participants/Hub/accounts"),
            json!({"type": "HUB_RECONCILIATION", "currency": "USD"}),
        )
        .await;
    assert_eq!(
        (st, v["errorInformation"]["errorCode"].as_str()),
        (400, Some("3003"))
    );
    let (st, list) = w
        .http
        .admin("GET", &format!("{admin}/participants"), Value::Null)
        .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["Hub", PAYEE, PAYER]);
    assert_eq!(list[0]["accounts"].as_array().map(Vec::len), Some(2));
    let model = json!({"name": "DEFERREDNET", "settlementGranularity": "NET",
        "settlementInterchange": "MULTILATERAL", "settlementDelay": "DEFERRED", "currency": "USD",
        "requireLiquidityCheck": true, "ledgerAccountType": "POSITION",
        "settlementAccountType": "SETTLEMENT", "autoPositionReset": true});
    let (st, _) = w
        .http
        .admin("POST", &format!("{admin}/settlementModels"), model.clone())
        .await;
    assert_eq!(st, 201);
    let (_, models) = w
        .http
        .admin("GET", &format!("{admin}/settlementModels"), Value::Null)
        .await;
    assert_eq!(models, json!([model]));
    let (st, v) = w
        .http
        .admin(
            "PUT",
            &format!("{admin}/participants/{PAYER}/limits"),
            json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 900, "alarmPercentage": 80}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, limits) = w
        .http
        .admin("GET", &format!("{admin}/participants/limits"), Value::Null)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        limits,
        json!([
            {"name": PAYEE, "currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 1000, "alarmPercentage": 10.0}},
            {"name": PAYER, "currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": 900, "alarmPercentage": 80.0}},
        ])
    );

    // Two-phase funds out: a reservation takes liquidity cover away at once (a prepare
    // beyond what is left gets 4001); an abort gives it back.
    let (_, accounts) = w
        .http
        .admin(
            "GET",
            &format!("{admin}/participants/{PAYER}/accounts"),
            Value::Null,
        )
        .await;
    let settlement = settlement_of(&accounts)["id"].to_string();
    let funds_out = "9f100000-0000-4000-8000-000000000001";
    let (st, v) = w
        .http
        .admin(
            "POST",
            &format!("{admin}/participants/{PAYER}/accounts/{settlement}"),
            json!({"transferId": funds_out, "externalReference": "x", "action": "recordFundsOutPrepareReserve",
                   "reason": "x", "amount": {"amount": "950", "currency": "USD"}}),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    // Cover left: 1000 - 950 = 50, of which 3 is already the payer's position.
    assert_eq!(
        w.prepare(&prepare_body(43, PAYER, PAYEE, "48", 60_000), PAYER)
            .await
            .0,
        202
    );
    let error = w
        .callback(PAYER, "PUT", &format!("/transfers/{}/error", tid(43)))
        .await;
    assert_eq!(error_code(&error), "4001");
    let (st, v) = w
        .http
        .admin(
            "PUT",
            &format!("{admin}/participants/{PAYER}/accounts/{settlement}/transfers/{funds_out}"),
            json!({"action": "recordFundsOutAbort", "reason": "x"}),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        w.prepare(&prepare_body(44, PAYER, PAYEE, "48", 60_000), PAYER)
            .await
            .0,
        202
    );
    w.dfsps
        .wait_for("forward 44", |r| r.body["transferId"] == tid(44))
        .await;

    // Operator endpoints: partitions with a rate, metrics with histograms, the OpenAPI.
    tokio::time::sleep(Duration::from_millis(
        2 * gateway::limits::RATE_SAMPLE_INTERVAL_MS,
    ))
    .await;
    let (st, parts) = w
        .http
        .admin("GET", &format!("{admin}/partitions"), Value::Null)
        .await;
    assert_eq!(st, 200);
    let parts = parts.as_array().expect("partitions").clone();
    assert_eq!(parts.len(), 4);
    for p in &parts {
        for field in [
            "owner",
            "epoch",
            "committedBatch",
            "queueDepth",
            "opsPerSecond",
        ] {
            assert!(!p[field].is_null(), "{field} in {p}");
        }
    }
    let ops: f64 = parts
        .iter()
        .filter_map(|p| p["opsPerSecond"].as_f64())
        .sum();
    assert!(ops > 0.0, "the ticker alone applies commands: {ops}");
    let (st, text) = w.http.text(&format!("{admin}/metrics")).await;
    assert_eq!(st, 200);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"))
    };
    assert!(value("hub_request_duration_seconds_count{route=\"prepare\"}") >= 5.0);
    assert!(value("hub_requests_total{route=\"prepare\",result=\"client_error\"}") >= 3.0);
    assert!(value("hub_callbacks_total{outcome=\"delivered\"}") >= 5.0);
    assert!(value("hub_callback_delivery_seconds_count") >= 5.0);
    assert!(value("engine_group_commits_total") > 0.0);
    assert!(
        !text.contains(PAYER),
        "no participant names in metric labels"
    );
    let (st, doc) = w
        .http
        .send("GET", &format!("{admin}/openapi.json"), &[], "")
        .await;
    assert_eq!(st, 200);
    for path in [
        "/transfers",
        "/transfers/{ID}",
        "/transfers/{ID}/error",
        "/participants",
        "/participants/limits",
        "/participants/{name}/accounts",
        "/settlementModels",
        "/partitions",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi has {path}");
    }
}

/// Admin amounts as central-ledger takes them: JSON numbers or decimal strings, with
/// trailing zeros (Mojaloop's own collections send `"value": "4000.00"`), converted
/// exactly from their text; anything else is a clear 3100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_amounts_as_central_ledger_takes_them() {
    let _serial = SERIAL.lock().await;
    let w = world("1000", "1000").await;
    let admin = w.hub.admin.clone();
    let json_headers = [("content-type", "application/json".to_string())];
    let send = |method: &'static str, url: String, body: String| {
        let http = &w.http;
        let headers = &json_headers;
        async move { http.send(method, &url, headers, &body).await }
    };
    let name = "amountfsp";
    let (st, v) = w
        .http
        .admin(
            "POST",
            &format!("{admin}/participants"),
            json!({"name": name, "currency": "USD"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // A JSON number with a trailing zero, an initial position as a string with two.
    let (st, v) = send(
        "POST",
        format!("{admin}/participants/{name}/initialPositionAndLimits"),
        r#"{"currency":"USD","limit":{"type":"NET_DEBIT_CAP","value":50000.0},"initialPosition":"0.00"}"#
            .to_string(),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let ndc = |v: &Value| v[0]["limit"]["value"].as_f64();
    let limits_url = format!("{admin}/participants/{name}/limits");
    let (_, v) = w.http.admin("GET", &limits_url, Value::Null).await;
    assert_eq!(ndc(&v), Some(50_000.0), "{v}");
    // The block-transfer collection's form: a decimal string with trailing zeros.
    let (st, v) = send(
        "PUT",
        limits_url.clone(),
        r#"{"currency":"USD","limit":{"type":"NET_DEBIT_CAP","value":"4000.00"}}"#.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = w.http.admin("GET", &limits_url, Value::Null).await;
    assert_eq!(ndc(&v), Some(4_000.0), "{v}");
    // A JSON number with cents, exactly.
    let (st, v) = send(
        "PUT",
        limits_url.clone(),
        r#"{"currency":"USD","limit":{"type":"NET_DEBIT_CAP","value":1234567890.12}}"#.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = w.http.admin("GET", &limits_url, Value::Null).await;
    assert_eq!(ndc(&v), Some(1_234_567_890.12), "{v}");

    // Funds in with "4000.00", and as the number 250.50.
    let settlement = settlement_account(&w.http, &admin, name).await["id"].to_string();
    let funds_url = format!("{admin}/participants/{name}/accounts/{settlement}");
    let funds = |n: u32, amount: &str| {
        format!(
            r#"{{"transferId":"9f200000-0000-4000-8000-{n:012x}","externalReference":"x","action":"recordFundsIn","reason":"x","amount":{{"amount":{amount},"currency":"USD"}}}}"#
        )
    };
    let (st, v) = send("POST", funds_url.clone(), funds(1, r#""4000.00""#)).await;
    assert_eq!(st, 202, "{v}");
    let (st, v) = send("POST", funds_url.clone(), funds(2, "250.50")).await;
    assert_eq!(st, 202, "{v}");
    let account = settlement_account(&w.http, &admin, name).await;
    assert_eq!(account["value"].as_f64(), Some(-4_250.5), "{account}");

    // Refused, each with 3100 and a description that says why.
    let limit = |value: &str| {
        format!(r#"{{"currency":"USD","limit":{{"type":"NET_DEBIT_CAP","value":{value}}}}}"#)
    };
    for (value, why) in [
        (r#""12.345""#, "decimals"),
        ("12.345", "decimals"),
        // A float would make this 4000: the text is what counts.
        ("4000.000000000000000001", "decimals"),
        ("-5", "negative"),
        (r#""-5.00""#, "negative"),
        (r#""abc""#, "not a decimal number"),
        (r#""""#, "not a decimal number"),
        (r#"" 5""#, "not a decimal number"),
        ("1e3", "exponent"),
        ("true", "must be a number or a decimal string"),
        ("null", "must be a number or a decimal string"),
        ("10000000000000000", "largest"),
    ] {
        let (st, v) = send("PUT", limits_url.clone(), limit(value)).await;
        assert_eq!(st, 400, "{value}: {v}");
        assert_eq!(v["errorInformation"]["errorCode"], "3100", "{value}: {v}");
        let description = v["errorInformation"]["errorDescription"]
            .as_str()
            .unwrap_or("");
        assert!(description.contains(why), "{value}: {description}");
    }
    let (st, v) = send("POST", funds_url.clone(), funds(3, r#""-1""#)).await;
    assert_eq!(st, 400, "{v}");
    // Nothing refused changed the limit.
    let (_, v) = w.http.admin("GET", &limits_url, Value::Null).await;
    assert_eq!(ndc(&v), Some(1_234_567_890.12), "{v}");
}
