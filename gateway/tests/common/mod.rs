//! Test harness: the real `gateway` binary on ephemeral ports, and fake DFSPs (one HTTP
//! server; each DFSP under its own path prefix) that record every callback.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CT: &str = "application/vnd.interoperability.transfers+json;version=1.1";

/// One callback a fake DFSP received.
#[derive(Debug, Clone)]
pub struct Received {
    pub dfsp: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Fake DFSPs: record callbacks, answer 200.
pub struct Dfsps {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
}

impl Dfsps {
    pub async fn start() -> Dfsps {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let full = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let (dfsp, path) = match full.trim_start_matches('/').split_once('/') {
                                Some((d, rest)) => (d.to_string(), format!("/{rest}")),
                                None => (full.clone(), String::new()),
                            };
                            log.lock().expect("log").push(Received {
                                dfsp,
                                method,
                                path,
                                headers,
                                body,
                            });
                            Ok::<_, std::convert::Infallible>(Response::new(
                                Full::new(Bytes::new()),
                            ))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Dfsps { addr, log }
    }

    /// Waits (up to 10 s) for a callback matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|r| pred(r))
                .cloned()
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no callback: {what}; got {:#?}",
                self.log.lock().expect("log")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Distinct request paths among the callbacks matching `pred` (callbacks are at least
    /// once: a retried callback may arrive twice).
    pub fn distinct(
        &self,
        pred: impl Fn(&Received) -> bool,
        key: impl Fn(&Received) -> String,
    ) -> usize {
        let log = self.log.lock().expect("log");
        log.iter()
            .filter(|r| pred(r))
            .map(key)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    pub fn count(&self, pred: impl Fn(&Received) -> bool) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| pred(r))
            .count()
    }
}

/// The real hub binary.
pub struct HubProcess {
    pub child: Child,
    pub fspiop: String,
    pub admin: String,
}

impl HubProcess {
    pub fn start(data_dir: &Path) -> HubProcess {
        HubProcess::start_with(data_dir, &[])
    }

    /// The hub with more command-line arguments (TLS, trust, credentials).
    pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr]) -> HubProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--fspiop-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--partitions",
                "4",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gateway");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next_url = || {
            let line = lines.next().expect("a line").expect("utf-8");
            line.rsplit(' ').next().expect("url").to_string()
        };
        let fspiop = next_url();
        let admin = next_url();
        HubProcess {
            child,
            fspiop,
            admin,
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }
}

impl Http {
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, Value) {
        let mut builder = Request::builder().method(method).uri(url);
        for (n, v) in headers {
            builder = builder.header(*n, v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let (status, bytes) = self.exchange(request).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends a request; the status and the whole body.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> (u16, Bytes) {
        let response = self.client.request(request).await.expect("hub answers");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, bytes)
    }

    /// GET with the body as text (metrics).
    pub async fn text(&self, url: &str) -> (u16, String) {
        let request = Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (status, bytes) = self.exchange(request).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn admin(&self, method: &str, url: &str, body: Value) -> (u16, Value) {
        self.send(
            method,
            url,
            &[("content-type", "application/json".into())],
            &body.to_string(),
        )
        .await
    }
}

pub fn fspiop_headers(source: &str, destination: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", CT.to_string()),
        ("accept", CT.to_string()),
        (
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ),
        ("fspiop-source", source.to_string()),
        ("fspiop-destination", destination.to_string()),
    ]
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// (fulfilment, condition) for a transfer number.
pub fn secret(n: u64) -> (String, String) {
    let preimage: [u8; 32] = Sha256::digest(n.to_be_bytes()).into();
    let condition: [u8; 32] = Sha256::digest(preimage).into();
    (b64(&preimage), b64(&condition))
}

pub fn tid(n: u64) -> String {
    format!("3c9b2a10-0000-4000-8000-{n:012x}")
}

pub fn expiration_in(ms: i64) -> String {
    gateway::fspiop::format_timestamp(engine::runtime::now_ms() + ms)
}

pub fn prepare_body(n: u64, payer: &str, payee: &str, amount: &str, expires_ms: i64) -> Value {
    json!({
        "transferId": tid(n), "payerFsp": payer, "payeeFsp": payee,
        "amount": {"amount": amount, "currency": "USD"},
        "ilpPacket": "AYIBgQAAAAAAAASwNGxldmVsb25lLmRmc3AxLm1lci45T2RTOF81MDdqUUZERmZlakgyOVc4bXFmNEpLMHlGTFGCAUBQU0svMS4wCk5vbmNlOiB1SXlweUYzY3pYSXBFdzVVc05TYWh3CkVuY3J5cHRpb246IG5vbmUKUGF5bWVudC1JZDogMTMyMzZhM2ItOGZhOC00MTYzLTg0NDctNGMzZWQzZGE5OGE3CgpDb250ZW50LUxlbmd0aDogMTM1CkNvbnRlbnQtVHlwZTogYXBwbGljYXRpb24vanNvbgpTZW5kZXItSWRlbnRpZmllcjogOTI4MDYzOTEKCiJ7XCJmZWVcIjowLFwidHJhbnNmZXJDb2RlXCI6XCJpbnZvaWNlXCIsXCJkZWJpdE5hbWVcIjpcImFsaWNlIGNvb3BlclwiLFwiY3JlZGl0TmFtZVwiOlwibWVyIGNoYW50XCIsXCJkZWJpdElkZW50aWZpZXJcIjpcIjkyODA2MzkxXCJ9IgA",
        "condition": secret(n).1,
        "expiration": expiration_in(expires_ms),
    })
}

pub fn fulfil_body(n: u64, state: &str) -> Value {
    json!({"fulfilment": secret(n).0, "completedTimestamp": expiration_in(0), "transferState": state})
}

static FUNDS_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The SETTLEMENT account in a `GET /participants/{name}/accounts` answer.
pub fn settlement_of(accounts: &Value) -> Value {
    accounts
        .as_array()
        .and_then(|a| a.iter().find(|x| x["ledgerAccountType"] == "SETTLEMENT"))
        .cloned()
        .expect("settlement account")
}

/// The participant's USD SETTLEMENT account as the admin API lists it.
pub async fn settlement_account(http: &Http, admin: &str, name: &str) -> Value {
    let (_, accounts) = http
        .admin(
            "GET",
            &format!("{admin}/participants/{name}/accounts"),
            Value::Null,
        )
        .await;
    settlement_of(&accounts)
}

/// Provisions a DFSP in USD with its endpoints on the fake DFSP server.
pub async fn provision(
    http: &Http,
    admin: &str,
    dfsps: &Dfsps,
    name: &str,
    ndc: &str,
    funds: &str,
) {
    let base = format!("http://{}/{name}", dfsps.addr);
    provision_at(http, admin, &base, name, ndc, funds).await;
}

/// Provisions a DFSP in USD with its endpoints under `base` (`scheme://host:port/prefix`).
pub async fn provision_at(
    http: &Http,
    admin: &str,
    base: &str,
    name: &str,
    ndc: &str,
    funds: &str,
) {
    let (st, _) = http
        .admin(
            "POST",
            &format!("{admin}/participants"),
            json!({"name": name, "currency": "USD"}),
        )
        .await;
    assert_eq!(st, 201, "create {name}");
    let (st, _) = http
        .admin(
            "POST",
            &format!("{admin}/participants/{name}/initialPositionAndLimits"),
            json!({"currency": "USD", "limit": {"type": "NET_DEBIT_CAP", "value": ndc}, "initialPosition": 0}),
        )
        .await;
    assert_eq!(st, 201, "limits {name}");
    let settlement = settlement_account(http, admin, name).await["id"].to_string();
    let (st, _) = http
        .admin(
            "POST",
            &format!("{admin}/participants/{name}/accounts/{settlement}"),
            json!({"transferId": format!("9f000000-0000-4000-8000-{:012x}", FUNDS_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                   "externalReference": "test", "action": "recordFundsIn", "reason": "test",
                   "amount": {"amount": funds, "currency": "USD"}}),
        )
        .await;
    assert_eq!(st, 202, "funds in {name}");
    for (kind, value) in [
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_POST",
            format!("{base}/transfers"),
        ),
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_PUT",
            format!("{base}/transfers/{{{{transferId}}}}"),
        ),
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_ERROR",
            format!("{base}/transfers/{{{{transferId}}}}/error"),
        ),
    ] {
        let (st, _) = http
            .admin(
                "POST",
                &format!("{admin}/participants/{name}/endpoints"),
                json!({"type": kind, "value": value}),
            )
            .await;
        assert_eq!(st, 201, "endpoint {kind}");
    }
}

/// (position, reserved) of a DFSP in USD, from the admin API, in dollars.
pub async fn position(http: &Http, admin: &str, name: &str) -> (f64, f64) {
    let (st, v) = http
        .admin(
            "GET",
            &format!("{admin}/participants/{name}/positions?currency=USD"),
            Value::Null,
        )
        .await;
    assert_eq!(st, 200, "positions of {name}: {v}");
    (
        v["value"].as_f64().expect("value"),
        v["reservedValue"].as_f64().expect("reserved"),
    )
}
