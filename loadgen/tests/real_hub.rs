//! The load generator against the real hub (`--embedded`: gateway, notifier and engine in
//! this process): DFSP simulators, rejects and timeouts, the audit of every position.

use clap::Parser;
use loadgen::config::HttpArgs;
use loadgen::run::run;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    a: HttpArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_hub_run_commits_rejects_times_out_and_audits_clean() {
    let args = Wrap::try_parse_from([
        "loadgen",
        "--embedded",
        "--dfsps",
        "6",
        "--seconds",
        "3",
        "--warmup-seconds",
        "0",
        "--rate",
        "200",
        "--reject-pct",
        "10",
        "--no-answer-pct",
        "5",
        "--expiration-ms",
        "1500",
        "--hot-payer-pct",
        "50",
        "--no-progress",
    ])
    .expect("arguments")
    .a;
    let outcome = run(args).await.expect("run");
    let s = &outcome.summary;
    assert_eq!(
        outcome.exit_code, 0,
        "audit and run must pass: {:?}",
        s.audit
    );
    assert_eq!(s.position_mismatches, 0);
    assert_eq!(s.false_rejections, 0);
    assert!(s.counts.committed > 300, "committed {}", s.counts.committed);
    assert!(
        s.counts.rejects_sent > 0 && s.counts.no_answers > 0,
        "{:?}",
        s.counts
    );
    // Every violation the simulators check (headers, bodies, fulfilments) is absent.
    assert!(
        s.violations.values().all(|v| v.count == 0),
        "{:?}",
        s.violations
    );
    // Timeouts reached the payer as 3303, rejects as the payee's 5104.
    assert!(
        s.errors.get("3303").copied().unwrap_or(0) > 0,
        "{:?}",
        s.errors
    );
    assert!(
        s.errors.get("5104").copied().unwrap_or(0) > 0,
        "{:?}",
        s.errors
    );
}
