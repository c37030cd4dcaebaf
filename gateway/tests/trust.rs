//! End to end, the hub's trust: DFSPs authenticated by client certificates or by a
//! trusted proxy's forwarded identity, `FSPIOP-Source` bound to that identity, and
//! impostors refused without moving money or learning anything. The real hub binary,
//! certificates made at test time.

mod common;
mod pki;

use common::*;
use serde_json::Value;
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
