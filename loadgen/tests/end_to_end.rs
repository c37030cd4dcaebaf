//! The whole HTTP mode against a fake hub: provisioning, load, drain, audit, JSON and the
//! HTML report; an injected position mismatch and false rejections are caught.

mod common;

use clap::Parser;
use common::{FakeHub, FakeHubConfig};
use loadgen::config::{resolve, HttpArgs};
use loadgen::run::{run_against, RunOutcome, EXIT_AUDIT_FAILED};
use std::time::Duration;

/// Later flags override the defaults below.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Wrap {
    #[command(flatten)]
    a: HttpArgs,
}

fn args(extra: &[&str]) -> HttpArgs {
    let base = [
        "loadgen",
        "--dfsps",
        "4",
        "--warmup-seconds",
        "0",
        "--drain-seconds",
        "10",
        "--no-progress",
        "--seed",
        "7",
        "--amount",
        "uniform:1..50",
    ];
    Wrap::try_parse_from(base.iter().chain(extra.iter()).copied())
        .expect("test step")
        .a
}

async fn run(hub: &FakeHub, a: HttpArgs) -> RunOutcome {
    let r = resolve(&a).expect("test step");
    run_against(&a, r, hub.fspiop.clone(), hub.admin.clone())
        .await
        .expect("test step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_commits_audits_and_reports() {
    let hub = FakeHub::start(FakeHubConfig::default()).await;
    let dir = tempfile::tempdir().expect("test step");
    let json_path = dir.path().join("out.json");
    let report_dir = dir.path().join("report");
    let a = args(&[
        "--seconds",
        "2",
        "--rate",
        "150",
        "--currencies",
        "USD,EUR",
        "--payers",
        "zipf:1.1",
        "--hot-payer-pct",
        "30",
        "--json",
        json_path.to_str().expect("test step"),
        "--report",
        report_dir.to_str().expect("test step"),
    ]);
    let out = run(&hub, a).await;
    let s = &out.summary;
    assert_eq!(out.exit_code, 0, "{}", loadgen::report::table(s));
    // 2 s at 150/s.
    assert!((250..=320).contains(&s.counts.sent), "{}", s.counts.sent);
    assert_eq!(s.counts.committed, s.counts.sent);
    assert_eq!(s.counts.unfinished, 0);
    assert_eq!(s.false_rejections, 0);
    assert_eq!(s.position_mismatches, 0);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    let audit = s.audit.as_ref().expect("test step");
    assert_eq!(audit.accounts_checked, 8);
    assert!(s.transfers_per_sec > 100.0, "{}", s.transfers_per_sec);
    assert!(s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms && s.max_ms >= s.p999_ms);
    for phase in [
        "prepare_accepted",
        "prepare_to_payee",
        "fulfil_to_final",
        "end_to_end",
    ] {
        assert!(s.phases[phase].count > 0, "{phase}");
    }

    // JSON: the documented fields.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("test step")).expect("test step");
    for key in [
        "transfers_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "errors",
        "false_rejections",
        "position_mismatches",
        "config",
    ] {
        assert!(v.get(key).is_some(), "json lacks {key}");
    }
    assert_eq!(v["config"]["args"]["hot_payer_pct"], 30);

    // The report: the page exists, names its charts, and each chart is a valid PNG.
    let html = std::fs::read_to_string(report_dir.join("report.html")).expect("test step");
    for chart in [
        loadgen::report::CHART_LATENCY_OVER_TIME,
        loadgen::report::CHART_THROUGHPUT,
        loadgen::report::CHART_DISTRIBUTION,
    ] {
        assert!(html.contains(chart), "report.html does not name {chart}");
        assert!(html.contains("data:image/png;base64,"));
        let bytes = std::fs::read(report_dir.join(chart)).expect("test step");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{chart}: PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR", "{chart}: IHDR first");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("PNG header decodes");
        let info = reader.info();
        assert_eq!(
            (info.width, info.height),
            (loadgen::charts::WIDTH, loadgen::charts::HEIGHT)
        );
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).expect("PNG image data decodes");
        // Something was drawn: not a blank white canvas.
        assert!(buf.iter().any(|b| *b < 200), "{chart} is blank");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_position_mismatch_fails_the_audit() {
    let hub = FakeHub::start(FakeHubConfig {
        payee_commit_skew: Some(("dfsp3".to_string(), 1)),
        ..FakeHubConfig::default()
    })
    .await;
    let out = run(
        &hub,
        args(&["--rate", "max", "--concurrency", "8", "--seconds", "1"]),
    )
    .await;
    let s = &out.summary;
    assert!(s.counts.committed > 0);
    assert_eq!(out.exit_code, EXIT_AUDIT_FAILED);
    assert!(s.position_mismatches >= 1);
    let audit = s.audit.as_ref().expect("test step");
    assert!(
        audit.mismatches.iter().any(|m| m.dfsp == "dfsp3"),
        "{audit:?}"
    );
    assert!(
        audit.mismatches.iter().all(|m| m.dfsp == "dfsp3"),
        "{audit:?}"
    );
    assert!(loadgen::report::table(s).contains("POSITION AUDIT FAILED"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_rejections_are_counted_and_true_ones_are_not() {
    // A hub that refuses everything with 4200 although every payer has ample room.
    let hub = FakeHub::start(FakeHubConfig {
        refuse_all_with: Some("4200".into()),
        ..FakeHubConfig::default()
    })
    .await;
    let out = run(&hub, args(&["--rate", "100", "--seconds", "1"])).await;
    let s = &out.summary;
    assert_eq!(s.counts.committed, 0);
    assert!(s.false_rejections > 0);
    assert_eq!(s.false_rejections, s.errors["4200"]);
    hub.stop().await;

    // A correct hub with tight limits: real 4001/4200 refusals, none false.
    let hub = FakeHub::start(FakeHubConfig::default()).await;
    let out = run(
        &hub,
        args(&[
            "--rate",
            "max",
            "--concurrency",
            "16",
            "--seconds",
            "1",
            "--ndc",
            "300",
            "--funds-in",
            "200",
            "--hot-payer-pct",
            "80",
        ]),
    )
    .await;
    let s = &out.summary;
    let limit_refusals = s.error_classes["4001"] + s.error_classes["4200"];
    assert!(limit_refusals > 0, "{}", loadgen::report::table(s));
    assert_eq!(s.false_rejections, 0, "{}", loadgen::report::table(s));
    assert_eq!(s.position_mismatches, 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_and_timeouts_are_counted_and_positions_still_audit() {
    let hub = FakeHub::start(FakeHubConfig {
        timeout: Some(Duration::from_millis(300)),
        ..FakeHubConfig::default()
    })
    .await;
    let out = run(
        &hub,
        args(&[
            "--rate",
            "100",
            "--seconds",
            "1",
            "--reject-pct",
            "20",
            "--no-answer-pct",
            "20",
            "--expiration-ms",
            "300",
        ]),
    )
    .await;
    let s = &out.summary;
    assert_eq!(out.exit_code, 0, "{}", loadgen::report::table(s));
    assert!(
        s.errors.get("5104").copied().unwrap_or(0) > 0,
        "{:?}",
        s.errors
    );
    assert!(s.error_classes["3303"] > 0, "{:?}", s.errors);
    assert_eq!(
        s.counts.committed + s.errors.values().sum::<u64>(),
        s.counts.sent
    );
    assert_eq!(s.counts.unfinished, 0);
    assert!(s.counts.payee_notices > 0, "payees hear of their timeouts");
    assert_eq!(s.position_mismatches, 0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_steps_up_and_reports_the_knee() {
    let hub = FakeHub::start(FakeHubConfig::default()).await;
    let ramp = |bound: &'static str| {
        args(&[
            "--seconds",
            "2",
            "--ramp",
            "--ramp-start",
            "50",
            "--ramp-step",
            "50",
            "--ramp-step-seconds",
            "1",
            "--ramp-p99-ms",
            bound,
        ])
    };
    // A generous bound: both steps pass, the knee is the last one.
    let out = run(&hub, ramp("2000")).await;
    let r = out.summary.ramp.clone().expect("ramp result");
    assert_eq!(r.steps.len(), 2, "{r:?}");
    assert!(r.steps.iter().all(|s| s.passed), "{r:?}");
    assert_eq!(r.steps[1].target_rate, 100.0);
    assert_eq!(r.knee_rate, Some(100.0));
    assert!(r.steps[1].achieved_rate >= 90.0, "{r:?}");
    assert_eq!(out.exit_code, 0);
    // An impossible bound: the first step breaks it, no knee.
    let out = run(&hub, ramp("0.001")).await;
    let r = out.summary.ramp.clone().expect("ramp result");
    assert_eq!(r.steps.len(), 1, "{r:?}");
    assert!(!r.steps[0].passed);
    assert_eq!(r.knee_rate, None);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_hub_cannot_hold_the_open_loop_past_its_window() {
    // Payees never answer and the hub never times out: every slot stays busy.
    let hub = FakeHub::start(FakeHubConfig::default()).await;
    let started = std::time::Instant::now();
    let out = run(
        &hub,
        args(&[
            "--rate",
            "200",
            "--max-in-flight",
            "10",
            "--seconds",
            "1",
            "--drain-seconds",
            "1",
            "--no-answer-pct",
            "100",
        ]),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let c = &out.summary.counts;
    assert_eq!(c.sent, 10);
    assert_eq!(c.unfinished, 10);
    assert!(
        (180..=200).contains(&c.unsent_backlog),
        "{}",
        c.unsent_backlog
    );
    assert_eq!(c.committed, 0);
    assert_eq!(out.exit_code, loadgen::run::EXIT_NOTHING_COMMITTED);
    // Unfinished transfers may or may not commit later: the audit allows for exactly them.
    assert_eq!(out.summary.position_mismatches, 0);
    hub.stop().await;
}
