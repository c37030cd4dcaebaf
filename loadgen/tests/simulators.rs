//! The DFSP simulators, driven by a fake hub: a forwarded prepare goes in, and the fulfil
//! (or reject) that comes out must be valid FSPIOP with the right headers.

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use loadgen::ctx::{Ctx, SimConfig};
use loadgen::fspiop::{self, ErrorBody, FulfilBody, PrepareBody};
use loadgen::http::{empty, read_body, serve, HttpClient, Server};
use loadgen::sim::Simulators;
use loadgen::state::{get, transfer_key, InFlight, Outcome};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

struct Captured {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A fake hub FSPIOP endpoint that records what the simulators send it.
async fn capture_hub() -> (Server, mpsc::Receiver<Captured>) {
    let (tx, rx) = mpsc::channel(64);
    let server = serve(0, 64, move |req| {
        let tx = tx.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let headers = req.headers().clone();
            let body = read_body(req.into_body()).await.unwrap_or_default();
            let _ = tx
                .send(Captured {
                    method,
                    path,
                    headers,
                    body,
                })
                .await;
            empty(StatusCode::OK)
        }
    })
    .await
    .expect("test step");
    (server, rx)
}

fn ctx_with(hub: &Server, sim: SimConfig) -> Arc<Ctx> {
    Arc::new(Ctx::new(
        vec!["payerfsp".into(), "payeefsp".into()],
        vec!["USD".into()],
        format!("http://{}", hub.addr),
        sim,
        [42u8; 32],
    ))
}

fn prepare_for(ctx: &Ctx, id: &str) -> PrepareBody {
    let f = fspiop::fulfilment_for(&ctx.secret, id);
    PrepareBody {
        transfer_id: id.into(),
        payee_fsp: "payeefsp".into(),
        payer_fsp: "payerfsp".into(),
        amount: fspiop::Money {
            currency: "USD".into(),
            amount: "12.5".into(),
        },
        ilp_packet: fspiop::ilp_packet(id, "12.5", "USD"),
        condition: fspiop::condition_of(&f),
        expiration: fspiop::iso8601_millis(SystemTime::now() + Duration::from_secs(30)),
    }
}

/// Forwards a prepare to the payee simulator the way a hub does (the payer's headers).
async fn forward(sims: &Simulators, p: &PrepareBody, accept: bool, source: &str) -> StatusCode {
    let date = fspiop::http_date(SystemTime::now());
    let mut headers = vec![
        ("content-type", fspiop::CONTENT_TYPE_TRANSFERS),
        ("date", date.as_str()),
        ("fspiop-source", source),
        ("fspiop-destination", "payeefsp"),
    ];
    if accept {
        headers.push(("accept", fspiop::ACCEPT_TRANSFERS));
    }
    let url = format!("{}/payeefsp/transfers", sims.base_for(1));
    HttpClient::new()
        .send(
            Method::POST,
            &url,
            &headers,
            Bytes::from(serde_json::to_vec(p).expect("test step")),
        )
        .await
        .expect("test step")
        .status
}

async fn next(rx: &mut mpsc::Receiver<Captured>) -> Captured {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the simulator answered the hub")
        .expect("capture channel open")
}

fn hv<'a>(c: &'a Captured, name: &str) -> Option<&'a str> {
    c.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn payee_fulfils_with_the_real_fulfilment_and_fspiop_headers() {
    let (hub, mut rx) = capture_hub().await;
    let ctx = ctx_with(&hub, SimConfig::default());
    let sims = Simulators::start(ctx.clone(), 1).await.expect("test step");
    let id = "0f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    let p = prepare_for(&ctx, id);
    assert_eq!(
        forward(&sims, &p, true, "payerfsp").await,
        StatusCode::ACCEPTED
    );

    let c = next(&mut rx).await;
    assert_eq!(c.method, Method::PUT);
    assert_eq!(c.path, format!("/transfers/{id}"));
    assert_eq!(hv(&c, "content-type"), Some(fspiop::CONTENT_TYPE_TRANSFERS));
    assert_eq!(hv(&c, "fspiop-source"), Some("payeefsp"));
    assert_eq!(hv(&c, "fspiop-destination"), Some("payerfsp"));
    assert_eq!(
        hv(&c, "fspiop-uri"),
        Some(format!("/transfers/{id}").as_str())
    );
    assert_eq!(hv(&c, "fspiop-http-method"), Some("PUT"));
    assert!(hv(&c, "accept").is_none(), "a callback carries no Accept");
    let date = hv(&c, "date").expect("Date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");

    let b: FulfilBody = serde_json::from_slice(&c.body).expect("test step");
    assert_eq!(b.transfer_state, "COMMITTED");
    let f = b.fulfilment.expect("fulfilment");
    assert_eq!(f.len(), 43);
    assert!(fspiop::is_binary32(&f));
    assert!(fspiop::fulfilment_matches(&f, &p.condition));
    let ts = b.completed_timestamp.expect("completedTimestamp");
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.');

    assert_eq!(get(&ctx.stats.counters.forwarded), 1);
    assert_eq!(get(&ctx.stats.counters.fulfils_sent), 1);
    assert_eq!(
        ctx.stats.violations.total(),
        0,
        "{:?}",
        ctx.stats.violations.snapshot()
    );
    sims.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn payee_rejects_and_stays_silent_as_configured() {
    let (hub, mut rx) = capture_hub().await;
    let ctx = ctx_with(
        &hub,
        SimConfig {
            reject_pct: 100.0,
            delay_min_ms: 30,
            delay_max_ms: 30,
            ..SimConfig::default()
        },
    );
    let sims = Simulators::start(ctx.clone(), 2).await.expect("test step");
    let id = "1f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    let sent = std::time::Instant::now();
    assert_eq!(
        forward(&sims, &prepare_for(&ctx, id), true, "payerfsp").await,
        StatusCode::ACCEPTED
    );
    let c = next(&mut rx).await;
    assert!(sent.elapsed() >= Duration::from_millis(30), "answer delay");
    assert_eq!(c.method, Method::PUT);
    assert_eq!(c.path, format!("/transfers/{id}/error"));
    assert_eq!(hv(&c, "fspiop-source"), Some("payeefsp"));
    assert_eq!(hv(&c, "fspiop-destination"), Some("payerfsp"));
    let e: ErrorBody = serde_json::from_slice(&c.body).expect("test step");
    assert_eq!(e.error_information.error_code, "5104");
    sims.stop().await;

    let ctx = ctx_with(
        &hub,
        SimConfig {
            no_answer_pct: 100.0,
            ..SimConfig::default()
        },
    );
    let sims = Simulators::start(ctx.clone(), 1).await.expect("test step");
    let id = "2f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    assert_eq!(
        forward(&sims, &prepare_for(&ctx, id), true, "payerfsp").await,
        StatusCode::ACCEPTED
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_err(),
        "a no-answer payee sends nothing"
    );
    assert_eq!(get(&ctx.stats.counters.no_answers), 1);
    sims.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn payee_flags_a_forwarded_prepare_with_wrong_headers() {
    let (hub, mut rx) = capture_hub().await;
    let ctx = ctx_with(&hub, SimConfig::default());
    let sims = Simulators::start(ctx.clone(), 1).await.expect("test step");
    let id = "3f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    // No Accept, and FSPIOP-Source is not the payer.
    forward(&sims, &prepare_for(&ctx, id), false, "someoneelse").await;
    let _ = next(&mut rx).await;
    let v = ctx.stats.violations.snapshot();
    assert_eq!(v.get("prepare.accept").map(|x| x.0), Some(1), "{v:?}");
    assert_eq!(
        v.get("prepare.fspiop_source").map(|x| x.0),
        Some(1),
        "{v:?}"
    );
    sims.stop().await;
    hub.stop().await;
}

fn in_flight(ctx: &Ctx, id: &str, amount: i64) -> u128 {
    let key = transfer_key(id).expect("test step");
    let f = fspiop::fulfilment_for(&ctx.secret, id);
    let (released_at_send, credits_at_send) = ctx.ledger.on_send(0, 0, amount);
    ctx.table.insert(
        key,
        InFlight {
            payer: 0,
            payee: 1,
            currency: 0,
            amount,
            condition: fspiop::condition_of(&f),
            sched_us: 0,
            sent_us: 0,
            forwarded_us: None,
            fulfil_sent_us: None,
            measured: true,
            released_at_send,
            credits_at_send,
            done: None,
            permit: None,
        },
    );
    key
}

/// Sends a final callback to the payer simulator the way a hub passes on the payee's fulfil.
async fn final_put(sims: &Simulators, id: &str, fulfilment: &str) -> StatusCode {
    let date = fspiop::http_date(SystemTime::now());
    let body = serde_json::json!({"transferState": "COMMITTED", "fulfilment": fulfilment,
        "completedTimestamp": fspiop::iso8601_millis(SystemTime::now())});
    HttpClient::new()
        .send(
            Method::PUT,
            &format!("{}/payerfsp/transfers/{id}", sims.base_for(0)),
            &[
                ("content-type", fspiop::CONTENT_TYPE_TRANSFERS),
                ("date", date.as_str()),
                ("fspiop-source", "payeefsp"),
                ("fspiop-destination", "payerfsp"),
            ],
            Bytes::from(body.to_string()),
        )
        .await
        .expect("test step")
        .status
}

#[tokio::test]
async fn payer_books_the_final_callback_and_checks_the_fulfilment() {
    let (hub, _rx) = capture_hub().await;
    let ctx = ctx_with(&hub, SimConfig::default());
    let sims = Simulators::start(ctx.clone(), 1).await.expect("test step");

    let id = "4f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    let key = in_flight(&ctx, id, 125_000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.table.with(key, |t| t.done = Some(tx));
    let good = fspiop::b64url(&fspiop::fulfilment_for(&ctx.secret, id));
    assert_eq!(final_put(&sims, id, &good).await, StatusCode::OK);
    assert_eq!(rx.await.expect("test step"), Outcome::Committed);
    assert_eq!(ctx.ledger.expected_position(0), 125_000);
    assert_eq!(ctx.ledger.expected_position(1), -125_000);
    assert_eq!(get(&ctx.stats.counters.invalid_fulfilments), 0);
    assert_eq!(ctx.stats.e2e.snapshot().len(), 1);

    // A COMMITTED callback whose fulfilment does not match the condition is flagged.
    let id = "5f2a2c4e-8a0b-4c2d-9e1f-3a4b5c6d7e8f";
    in_flight(&ctx, id, 10_000);
    let wrong = fspiop::b64url(&[9u8; 32]);
    assert_eq!(final_put(&sims, id, &wrong).await, StatusCode::OK);
    assert_eq!(get(&ctx.stats.counters.invalid_fulfilments), 1);
    assert!(ctx.table.is_empty());
    sims.stop().await;
    hub.stop().await;
}
