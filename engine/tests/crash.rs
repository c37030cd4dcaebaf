//! Crash test: SIGKILL a real engine process at random points under load, restart it on
//! the same data directory each time, and check that every result it released before
//! the kill is still the state of record (and money is conserved).
//!
//! `CRASH_KILLS=<n>` sets the number of kills (default 20).

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
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start worker"),
        );
        // Read released results on a thread so the kill can land at any moment.
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
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
        let audit = Command::new(WORKER)
            .args([
                "audit",
                data.to_str().expect("utf-8 path"),
                released_path.to_str().expect("utf-8 path"),
            ])
            .output()
            .expect("run audit");
        assert!(
            audit.status.success(),
            "after kill {kill}: {}\n{}",
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        );
    }
    assert!(
        total_lines > kills() * 10,
        "too little load between kills: {total_lines} results"
    );
}
