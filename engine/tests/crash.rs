//! Crash test: SIGKILL a real engine process at random points under load, restart it on
//! the same data directory each time, and audit the state of record against everything
//! the process released before the kill (`engine/src/bin/engine-crash-worker.rs` says
//! what exactly is checked): every released result still holds and no transfer has two
//! final states; none is left RESERVED or waiting past its expiration; at quiescence the
//! headroom identity `headroom == limit - position - reserved` holds for every account;
//! the Net Debit Caps the worker changed under load, and its funds-ins, are as last
//! acknowledged; money is conserved. The last audit waits until every transfer is due, so
//! every prepare the engine accepted must have ended in exactly one final state (a lost
//! grant or a stuck recall round shows up as a prepare that never gets an answer), and it
//! probes every account with one more prepare.
//!
//! The test counts the final states in the worker's output and asserts that refusals for
//! both limits (4001 liquidity cover, 4200 Net Debit Cap), expiries (3303) and limit
//! changes actually happened, so that those paths are exercised; the exact numbers depend
//! on timing and are only printed.
//!
//! `CRASH_KILLS=<n>` sets the number of kills (default 20).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_engine-crash-worker");
/// Bound on the whole test, whatever happens.
const TEST_DEADLINE: Duration = Duration::from_secs(600);

/// Kills the worker if the test fails half-way, so no orphan keeps running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kills() -> usize {
    std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn sigkill_under_load_loses_no_released_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let released_path = dir.path().join("released.txt");
    let mut released = std::fs::File::create(&released_path).expect("released file");
    let started = Instant::now();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut total_lines = 0usize;
    for kill in 0..kills() {
        assert!(
            started.elapsed() < TEST_DEADLINE,
            "crash test ran out of time"
        );
        let mut child = KillOnDrop(
            Command::new(WORKER)
                .args([
                    "run",
                    data.to_str().expect("utf-8 path"),
                    &(kill as u64 + 1).to_string(),
                    released_path.to_str().expect("utf-8 path"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start worker"),
        );
        // Read released results on a thread so the kill can land at any moment. A line
        // without its newline was cut by the kill: it is not a released result.
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
                let Some(whole) = line.strip_suffix('\n') else {
                    break;
                };
                if tx.send(whole.to_string()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        // Wait for the load to be running, then a random 50..550 ms more.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("worker produced results");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 500));
        // A worker that stopped by itself failed (its stderr is above).
        let exited = child.0.try_wait().expect("poll worker");
        assert!(
            exited.is_none(),
            "worker stopped before its kill: {exited:?}"
        );
        // SIGKILL: nothing gets to flush or clean up.
        child.0.kill().expect("kill worker");
        let status = child.0.wait().expect("reap worker");
        assert!(!status.success(), "worker must have been killed");
        reader.join().expect("reader thread");
        let mut lines = vec![first];
        lines.extend(rx.try_iter());
        total_lines += lines.len();
        for line in &lines {
            writeln!(released, "{line}").expect("record line");
        }
        released.flush().expect("flush");

        // Restart on the same directory: sled must reopen and every released result hold.
        // The last audit waits for every transfer to fall due and checks they all ended.
        let mut args = vec![
            "audit",
            data.to_str().expect("utf-8 path"),
            released_path.to_str().expect("utf-8 path"),
        ];
        if kill + 1 == kills() {
            args.push("final");
        }
        let audit = Command::new(WORKER)
            .args(&args)
            .output()
            .expect("run audit");
        assert!(
            audit.status.success(),
            "after kill {kill}: {}\n{}",
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        );
        if kill + 1 == kills() {
            eprint!("{}", String::from_utf8_lossy(&audit.stdout));
        }
    }
    assert!(
        total_lines > kills() * 10,
        "too little load between kills: {total_lines} results"
    );
    let text = std::fs::read_to_string(&released_path).expect("read released results");
    let counts = Counts::of(&text);
    eprintln!(
        "crash test: {} kills in {:.0} s, {total_lines} lines; {counts:?}",
        kills(),
        started.elapsed().as_secs_f64()
    );
    assert!(counts.prepared > 0, "no prepare was accepted: {counts:?}");
    assert!(counts.committed > 0, "nothing committed: {counts:?}");
    assert!(counts.rejected > 0, "no payee reject: {counts:?}");
    assert!(
        counts.expired > 0,
        "no reserved transfer expired (3303): {counts:?}"
    );
    assert!(
        counts.refused_liquidity > 0,
        "no refusal for liquidity cover (4001): {counts:?}"
    );
    assert!(
        counts.refused_ndc > 0,
        "no refusal for the Net Debit Cap (4200): {counts:?}"
    );
    assert!(
        counts.ndc_changes > 0,
        "no NDC change acknowledged: {counts:?}"
    );
    assert!(counts.funds_ins > 0, "no funds-in acknowledged: {counts:?}");
}

/// Final states in the worker's output, one per transfer (a final event published again
/// after a restart counts once), and acknowledged limit changes.
#[derive(Debug, Default)]
struct Counts {
    prepared: usize,
    committed: usize,
    rejected: usize,
    expired: usize,
    refused_liquidity: usize,
    refused_ndc: usize,
    refused_expired_waiting: usize,
    refused_other: usize,
    ndc_changes: usize,
    funds_ins: usize,
}

impl Counts {
    fn of(text: &str) -> Counts {
        let mut prepared = std::collections::HashSet::new();
        let mut finals: HashMap<&str, (&str, &str)> = HashMap::new();
        let mut ops: HashMap<&str, &str> = HashMap::new();
        let mut counts = Counts::default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["P", id, ..] => {
                    prepared.insert(id);
                }
                ["C", id, _] => {
                    finals.insert(id, ("C", ""));
                }
                [kind @ ("A" | "F"), id, _, code] => {
                    finals.insert(id, (kind, code));
                }
                ["T", op, _, kind, _] => {
                    ops.insert(op, kind);
                }
                ["K", op] => match ops.get(op) {
                    Some(&"ndc") => counts.ndc_changes += 1,
                    Some(&"in") => counts.funds_ins += 1,
                    _ => {}
                },
                _ => {}
            }
        }
        counts.prepared = prepared.len();
        for (kind, code) in finals.values() {
            let count = match (*kind, *code) {
                ("C", _) => &mut counts.committed,
                ("A", "3303") => &mut counts.expired,
                ("A", _) => &mut counts.rejected,
                ("F", "4001") => &mut counts.refused_liquidity,
                ("F", "4200") => &mut counts.refused_ndc,
                ("F", "3303") => &mut counts.refused_expired_waiting,
                _ => &mut counts.refused_other,
            };
            *count += 1;
        }
        counts
    }
}
