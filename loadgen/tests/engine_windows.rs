//! `loadgen engine --close-window-every S --settle`: the in-process benchmark closes and
//! settles windows while load runs, and reports each close.

use std::process::Command;

#[test]
fn windows_close_and_settle_during_an_engine_run() {
    let dir = tempfile::tempdir().expect("dir");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "engine",
            "--seconds",
            "3",
            "--warmup-seconds",
            "1",
            "--partitions",
            "2",
            "--dfsps",
            "6",
            "--concurrency",
            "16",
            "--rate",
            "300",
            "--close-window-every",
            "1",
            "--settle",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("loadgen runs");
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    let closes = report["closes"].as_array().expect("closes listed");
    assert_eq!(closes.len(), 3, "one close per second of a 3 s run: {text}");
    let windows: Vec<u64> = closes
        .iter()
        .map(|c| c["window"].as_u64().expect("window id"))
        .collect();
    assert_eq!(windows, vec![1, 2, 3], "windows close in order");
    // The first window also holds the warm-up's transfers.
    let held: u64 = closes
        .iter()
        .map(|c| c["transfers"].as_u64().expect("count"))
        .sum();
    let measured = report["transfers"].as_u64().expect("transfers");
    assert!(
        measured > 0 && held >= measured * 2 / 3,
        "{held} held, {measured} measured"
    );
    for close in closes {
        assert!(close["settle_ms"].as_f64().is_some(), "settled: {close}");
        assert!(close["settled_accounts"].as_u64().expect("accounts") >= 2);
    }
    assert_eq!(report["false_rejections"], 0);
    assert_eq!(report["other_errors"], 0);
    assert!(report["ops_during_close"].as_u64().expect("count") > 0);
}
