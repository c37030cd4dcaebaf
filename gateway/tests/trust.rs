//! End to end, the hub's trust: DFSPs authenticated by client certificates or by a
//! trusted proxy's forwarded identity, `FSPIOP-Source` bound to that identity, and
//! impostors refused without moving money or learning anything. The real hub binary,
//! certificates made at test time.

mod common;
mod pki;

use common::*;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::time::Duration;

/// One hub at a time, as in e2e.rs: each starts a whole hub on the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAYER: &str = "payerfsp";
const PAYEE: &str = "payeefsp";

fn transfer_url(base: &str, n: u64) -> String {
    format!("{base}/transfers/{}", tid(n))
}

fn fulfil_headers() -> Vec<(&'static str, String)> {
    let mut headers = fspiop_headers(PAYEE, PAYER);
    headers.retain(|(n, _)| *n != "accept");
    headers
}

fn get_headers(source: &str) -> Vec<(&'static str, String)> {
    let mut headers = fspiop_headers(source, PAYER);
    headers.retain(|(n, _)| *n != "content-type");
    headers
}

fn refused_3000(result: &Result<(u16, Value), String>, what: &str) {
    let (status, body) = result.as_ref().expect(what);
    assert_eq!(*status, 403, "{what}: {body}");
    assert_eq!(
        body["errorInformation"]["errorCode"], "3000",
        "{what}: {body}"
    );
}

/// Nothing about transfer `n` reached any DFSP.
fn no_callback_about(dfsps: &Dfsps, n: u64) {
    let id = tid(n);
    assert_eq!(
        dfsps.count(|r| r.path.contains(&id)),
        0,
        "callbacks about {id}: {:#?}",
        dfsps.log.lock().expect("log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_dfsp_and_impostors_move_no_money() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let scheme = pki::Ca::new(dir.path(), "scheme");
    let rogue = pki::Ca::new(dir.path(), "rogue");
    let server = scheme.server("hub");
    let data = dir.path().join("data");
    let hub = HubProcess::start_with(
        &data,
        &[
            OsStr::new("--tls-cert"),
            server.cert.as_os_str(),
            OsStr::new("--tls-key"),
            server.key.as_os_str(),
            OsStr::new("--client-ca"),
            scheme.pem.as_os_str(),
        ],
    );
    assert!(hub.fspiop.starts_with("https://"), "{}", hub.fspiop);
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "1000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    let payer = pki::TlsHttp::new(&scheme.pem, Some(&scheme.client(PAYER)));
    let payee = pki::TlsHttp::new(&scheme.pem, Some(&scheme.client(PAYEE)));
    let posts = format!("{}/transfers", hub.fspiop);

    // The golden path, each DFSP with its own certificate.
    let body = prepare_body(1, PAYER, PAYEE, "10", 60_000).to_string();
    let (st, v) = payer
        .send("POST", &posts, &fspiop_headers(PAYER, PAYEE), &body)
        .await
        .expect("payer prepares");
    assert_eq!(st, 202, "{v}");
    dfsps
        .wait_for("prepare forwarded", |r| {
            r.dfsp == PAYEE && r.method == "POST" && r.path == "/transfers"
        })
        .await;
    let fulfil = fulfil_body(1, "COMMITTED").to_string();
    let (st, v) = payee
        .send(
            "PUT",
            &transfer_url(&hub.fspiop, 1),
            &fulfil_headers(),
            &fulfil,
        )
        .await
        .expect("payee fulfils");
    assert_eq!(st, 200, "{v}");
    let path = format!("/transfers/{}", tid(1));
    let done = dfsps
        .wait_for("payer told", |r| {
            r.dfsp == PAYER && r.method == "PUT" && r.path == path
        })
        .await;
    assert_eq!(done.body["transferState"], "COMMITTED");
    let after_commit = (
        position(&http, &hub.admin, PAYER).await,
        position(&http, &hub.admin, PAYEE).await,
    );
    assert_eq!(after_commit, ((10.0, 0.0), (-10.0, 0.0)));

    // Impostors, each trying to move money as the payer (transfer 2) or to act on or
    // read transfer 1.
    let theft = prepare_body(2, PAYER, PAYEE, "500", 60_000).to_string();
    let headers = fspiop_headers(PAYER, PAYEE);
    let anonymous = pki::TlsHttp::new(&scheme.pem, None);
    assert!(
        anonymous
            .send("POST", &posts, &headers, &theft)
            .await
            .is_err(),
        "no certificate: the handshake is refused"
    );
    let forged = pki::TlsHttp::new(&scheme.pem, Some(&rogue.client(PAYER)));
    assert!(
        forged.send("POST", &posts, &headers, &theft).await.is_err(),
        "a certificate named payerfsp from another CA is refused"
    );
    refused_3000(
        &payee.send("POST", &posts, &headers, &theft).await,
        "the payee's certificate with FSPIOP-Source payerfsp",
    );
    let mallory = pki::TlsHttp::new(&scheme.pem, Some(&scheme.client("mallory")));
    refused_3000(
        &mallory.send("POST", &posts, &headers, &theft).await,
        "a scheme certificate of a non-participant with FSPIOP-Source payerfsp",
    );
    let mut doubled = headers.clone();
    doubled.insert(0, ("fspiop-source", PAYEE.to_string()));
    refused_3000(
        &payee.send("POST", &posts, &doubled, &theft).await,
        "two FSPIOP-Source headers",
    );
    // The payer's certificate may not fulfil as the payee, nor anyone read another's
    // transfer by naming its payer.
    let fulfil2 = fulfil_body(2, "COMMITTED").to_string();
    refused_3000(
        &payer
            .send(
                "PUT",
                &transfer_url(&hub.fspiop, 2),
                &fulfil_headers(),
                &fulfil2,
            )
            .await,
        "the payer's certificate fulfilling as the payee",
    );
    refused_3000(
        &mallory
            .send(
                "GET",
                &transfer_url(&hub.fspiop, 1),
                &get_headers(PAYER),
                "",
            )
            .await,
        "a GET of the payer's transfer with the payer's name",
    );
    refused_3000(
        &mallory
            .send(
                "GET",
                &transfer_url(&hub.fspiop, 9),
                &get_headers(PAYER),
                "",
            )
            .await,
        "a GET of an unknown transfer is refused the same way",
    );
    // Plain HTTP on the TLS port gets no FSPIOP answer at all.
    let plain = hub.fspiop.replacen("https://", "http://", 1);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(
            format!("{plain}/transfers/{}", tid(1))
                .parse()
                .expect("uri"),
        ),
    )
    .await
    .expect("answers in time");
    assert!(
        answer.as_ref().map_or(true, |r| r.status() != 202),
        "plain HTTP was served: {answer:?}"
    );

    // The payer's own GET works, and is answered to the payer only.
    let (st, _) = payer
        .send(
            "GET",
            &transfer_url(&hub.fspiop, 1),
            &get_headers(PAYER),
            "",
        )
        .await
        .expect("payer asks");
    assert_eq!(st, 202);
    dfsps
        .wait_for("GET answered to the payer", |r| {
            r.dfsp == PAYER
                && r.method == "PUT"
                && r.path == path
                && r.body["transferState"] == "COMMITTED"
        })
        .await;
    // Give a wrongly sent callback time to arrive, then check nothing moved or leaked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_callback_about(&dfsps, 2);
    no_callback_about(&dfsps, 9);
    let gets_answered = dfsps.count(|r| r.method == "PUT" && r.path == path);
    assert_eq!(gets_answered, 2, "the commit and the payer's own GET only");
    let now = (
        position(&http, &hub.admin, PAYER).await,
        position(&http, &hub.admin, PAYEE).await,
    );
    assert_eq!(now, after_commit, "no money moved");
    hub.kill();
}

/// An HTTP client whose connections come from `local` (any 127.0.0.0/8 address is this
/// machine's loopback), to play a proxy and a client that goes around it.
fn http_from(
    local: &str,
) -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(local.parse().expect("ip")));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

async fn send_from(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Value) {
    use http_body_util::BodyExt;
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        request = request.header(*n, v.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("hub answers");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn with_xfcc(mut headers: Vec<(&'static str, String)>, cn: &str) -> Vec<(&'static str, String)> {
    headers.push((
        "x-forwarded-client-cert",
        format!("By=spiffe://hub;Hash=00ff;Subject=\"CN={cn},O=Test scheme\""),
    ));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_dfsp_and_no_one_else_may() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The "proxy" connects from 127.0.0.2; anyone from 127.0.0.1 goes around it.
    let hub = HubProcess::start_with(
        dir.path(),
        &[OsStr::new("--trusted-proxy"), OsStr::new("127.0.0.2/32")],
    );
    let dfsps = Dfsps::start().await;
    let http = Http::default();
    provision(&http, &hub.admin, &dfsps, PAYER, "1000", "1000").await;
    provision(&http, &hub.admin, &dfsps, PAYEE, "1000", "1000").await;
    let proxy = http_from("127.0.0.2");
    let around = http_from("127.0.0.1");
    let posts = format!("{}/transfers", hub.fspiop);
    let prepare = |n: u64| prepare_body(n, PAYER, PAYEE, "10", 60_000).to_string();

    let (st, v) = send_from(
        &proxy,
        "POST",
        &posts,
        &with_xfcc(fspiop_headers(PAYER, PAYEE), PAYER),
        &prepare(1),
    )
    .await;
    assert_eq!(st, 202, "the proxy's payer prepares: {v}");
    dfsps
        .wait_for("prepare forwarded", |r| {
            r.dfsp == PAYEE && r.method == "POST" && r.path == "/transfers"
        })
        .await;

    let refusals = [
        (
            send_from(
                &proxy,
                "POST",
                &posts,
                &fspiop_headers(PAYER, PAYEE),
                &prepare(2),
            )
            .await,
            "through the proxy without x-forwarded-client-cert",
        ),
        (
            send_from(
                &proxy,
                "POST",
                &posts,
                &with_xfcc(fspiop_headers(PAYER, PAYEE), PAYEE),
                &prepare(2),
            )
            .await,
            "the payee's forwarded identity with FSPIOP-Source payerfsp",
        ),
        (
            send_from(
                &around,
                "POST",
                &posts,
                &with_xfcc(fspiop_headers(PAYER, PAYEE), PAYER),
                &prepare(2),
            )
            .await,
            "around the proxy, with a forged x-forwarded-client-cert",
        ),
        (
            send_from(
                &around,
                "GET",
                &transfer_url(&hub.fspiop, 1),
                &get_headers(PAYER),
                "",
            )
            .await,
            "around the proxy, a GET of the payer's transfer",
        ),
    ];
    for (result, what) in refusals {
        refused_3000(&Ok(result), what);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    no_callback_about(&dfsps, 2);
    assert_eq!(
        position(&http, &hub.admin, PAYER).await,
        (0.0, 10.0),
        "only transfer 1 is reserved"
    );
    hub.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_the_hub_says_so_at_start_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--fspiop-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start gateway");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("DFSPs ARE NOT AUTHENTICATED") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no start-up warning; stderr was {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_check_the_dfsp_and_present_the_hubs_certificate() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let scheme = pki::Ca::new(dir.path(), "scheme");
    let rogue = pki::Ca::new(dir.path(), "rogue");
    // The DFSPs' callback server asks for the hub's certificate, from the scheme's CA.
    let receiver = pki::TlsReceiver::start(pki::server_config(
        &scheme.server("dfsps"),
        Some(&scheme.pem),
    ))
    .await;
    // A server whose certificate the hub must not trust.
    let impostor = pki::TlsReceiver::start(pki::server_config(&rogue.server("dfsps"), None)).await;
    let hub_identity = scheme.client("hub");
    let data = dir.path().join("data");
    let hub = HubProcess::start_with(
        &data,
        &[
            OsStr::new("--callback-ca"),
            scheme.pem.as_os_str(),
            OsStr::new("--callback-cert"),
            hub_identity.cert.as_os_str(),
            OsStr::new("--callback-key"),
            hub_identity.key.as_os_str(),
        ],
    );
    let http = Http::default();
    let at = |addr: std::net::SocketAddr, name: &str| format!("https://{addr}/{name}");
    provision_at(
        &http,
        &hub.admin,
        &at(receiver.addr, PAYER),
        PAYER,
        "1000",
        "1000",
    )
    .await;
    provision_at(
        &http,
        &hub.admin,
        &at(receiver.addr, PAYEE),
        PAYEE,
        "1000",
        "1000",
    )
    .await;
    provision_at(
        &http,
        &hub.admin,
        &at(impostor.addr, "roguefsp"),
        "roguefsp",
        "1000",
        "1000",
    )
    .await;
    let posts = format!("{}/transfers", hub.fspiop);

    let (st, v) = http
        .send(
            "POST",
            &posts,
            &fspiop_headers(PAYER, PAYEE),
            &prepare_body(1, PAYER, PAYEE, "10", 60_000).to_string(),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let forwarded = receiver
        .wait_for("prepare forwarded over TLS", |g| {
            g.dfsp == PAYEE && g.method == "POST" && g.path == "/transfers"
        })
        .await;
    assert_eq!(forwarded.body["transferId"], tid(1));
    assert_eq!(
        forwarded.client_cn.as_deref(),
        Some("hub"),
        "the hub's certificate"
    );
    let mut headers = fspiop_headers(PAYEE, PAYER);
    headers.retain(|(n, _)| *n != "accept");
    let (st, v) = http
        .send(
            "PUT",
            &transfer_url(&hub.fspiop, 1),
            &headers,
            &fulfil_body(1, "COMMITTED").to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let path = format!("/transfers/{}", tid(1));
    let done = receiver
        .wait_for("payer told over TLS", |g| {
            g.dfsp == PAYER && g.method == "PUT" && g.path == path
        })
        .await;
    assert_eq!(done.body["transferState"], "COMMITTED");

    // A payee whose callback server the hub cannot verify gets nothing: the handshake
    // fails, no request is written.
    let (st, v) = http
        .send(
            "POST",
            &posts,
            &fspiop_headers(PAYER, "roguefsp"),
            &prepare_body(2, PAYER, "roguefsp", "10", 60_000).to_string(),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while impostor
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub never tried the rogue server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        impostor.got.lock().expect("log").is_empty(),
        "a request reached a server with an untrusted certificate"
    );
    hub.kill();
}

const OPS_TOKEN: &str = "ops-0123456789abcdef0123456789abcdef";

/// A tokens file with one operator, readable by its owner only.
fn tokens_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("admin-tokens-{mode:o}"));
    std::fs::write(&path, format!("# name token\nops-alice {OPS_TOKEN}\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn json_headers(token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(token) = token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_token_json_and_its_own_host_name() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A tokens file others can read stops the hub before it listens.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--fspiop-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .arg("--admin-tokens")
        .arg(tokens_file(dir.path(), 0o644))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run gateway");
    assert!(
        !status.success(),
        "started with a world-readable tokens file"
    );

    let tokens = tokens_file(dir.path(), 0o600);
    let hub = HubProcess::start_with(
        &dir.path().join("data"),
        &[OsStr::new("--admin-tokens"), tokens.as_os_str()],
    );
    let http = Http::default();
    let admin = &hub.admin;
    let create = json!({"name": PAYER, "currency": "USD"}).to_string();
    let participants = format!("{admin}/participants");

    // No token, a wrong token, a token under another scheme: 401, nothing created.
    for (token, what) in [
        (None, "no token"),
        (
            Some("ops-0123456789abcdef0123456789abcdeX"),
            "a wrong token",
        ),
    ] {
        let (st, v) = http
            .send("POST", &participants, &json_headers(token), &create)
            .await;
        assert_eq!(st, 401, "{what}: {v}");
        let (st, _) = http
            .send("GET", &participants, &json_headers(token), "")
            .await;
        assert_eq!(st, 401, "{what}: reading is refused too");
    }
    let basic = vec![
        ("content-type", "application/json".to_string()),
        ("authorization", format!("Basic {OPS_TOKEN}")),
    ];
    assert_eq!(
        http.send("POST", &participants, &basic, &create).await.0,
        401
    );
    // The probes need no credential.
    let (st, _) = http.text(&format!("{admin}/health/live")).await;
    assert_eq!(st, 200);

    // A browser's cross-site form (or a body without a type) is not a change: 415.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let mut headers = json_headers(Some(OPS_TOKEN));
        headers[0].1 = content_type.to_string();
        headers.retain(|(_, v)| !v.is_empty());
        let (st, v) = http.send("POST", &participants, &headers, &create).await;
        assert_eq!(st, 415, "{content_type:?}: {v}");
    }
    // A Host that is not the hub's (DNS rebinding) is refused even with the token.
    let mut rebound = json_headers(Some(OPS_TOKEN));
    rebound.push(("host", "attacker.example:3001".to_string()));
    let (st, v) = http.send("POST", &participants, &rebound, &create).await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = http
        .send("GET", &participants, &json_headers(Some(OPS_TOKEN)), "")
        .await;
    assert_eq!(st, 200, "{v}");
    let names: Vec<&Value> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("Hub")],
        "no refused request created anything"
    );

    // The operator's token works.
    let (st, v) = http
        .send(
            "POST",
            &participants,
            &json_headers(Some(OPS_TOKEN)),
            &create,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // Recording funds without the token moves no money.
    let (_, accounts) = http
        .send(
            "GET",
            &format!("{participants}/{PAYER}/accounts"),
            &json_headers(Some(OPS_TOKEN)),
            "",
        )
        .await;
    let settlement = settlement_of(&accounts);
    let funds = json!({"transferId": "9f000000-0000-4000-8000-00000000aaaa",
        "externalReference": "impostor", "action": "recordFundsIn", "reason": "impostor",
        "amount": {"amount": "1000000", "currency": "USD"}})
    .to_string();
    let funds_url = format!("{participants}/{PAYER}/accounts/{}", settlement["id"]);
    let (st, v) = http
        .send("POST", &funds_url, &json_headers(None), &funds)
        .await;
    assert_eq!(st, 401, "{v}");
    let (_, after) = http
        .send(
            "GET",
            &format!("{participants}/{PAYER}/accounts"),
            &json_headers(Some(OPS_TOKEN)),
            "",
        )
        .await;
    let after = settlement_of(&after);
    assert_eq!(after["value"], settlement["value"], "no funds recorded");
    hub.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_may_authenticate_with_client_certificates() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let operators = pki::Ca::new(dir.path(), "operators");
    let rogue = pki::Ca::new(dir.path(), "rogue");
    let server = operators.server("admin");
    let hub = HubProcess::start_with(
        &dir.path().join("data"),
        &[
            OsStr::new("--admin-tls-cert"),
            server.cert.as_os_str(),
            OsStr::new("--admin-tls-key"),
            server.key.as_os_str(),
            OsStr::new("--admin-client-ca"),
            operators.pem.as_os_str(),
        ],
    );
    assert!(hub.admin.starts_with("https://"), "{}", hub.admin);
    let participants = format!("{}/participants", hub.admin);
    let create = json!({"name": PAYER, "currency": "USD"}).to_string();
    let operator = pki::TlsHttp::new(&operators.pem, Some(&operators.client("ops-alice")));
    let (st, v) = operator
        .send("POST", &participants, &json_headers(None), &create)
        .await
        .expect("operator answered");
    assert_eq!(st, 201, "{v}");
    for (client, what) in [
        (pki::TlsHttp::new(&operators.pem, None), "no certificate"),
        (
            pki::TlsHttp::new(&operators.pem, Some(&rogue.client("ops-alice"))),
            "another CA's certificate",
        ),
    ] {
        let answer = client
            .send("GET", &participants, &json_headers(None), "")
            .await;
        assert!(answer.is_err(), "{what}: {answer:?}");
    }
    let (st, v) = operator
        .send("GET", &participants, &json_headers(None), "")
        .await
        .expect("operator answered");
    assert_eq!(st, 200);
    let created = v
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["name"] == PAYER));
    assert!(created, "{v}");
    hub.kill();
}
