//! The live progress line on a terminal.

use crate::ctx::Ctx;
use crate::limits::PROGRESS_INTERVAL;
use crate::state::get;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// Prints `rate, p99, errors, in flight, elapsed/total` to stderr once a second while the
/// load runs, if stderr is a terminal. Stops when `stop` changes.
pub fn spawn(
    ctx: Arc<Ctx>,
    total_secs: u64,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        let mut last_committed = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let c = &ctx.stats.counters;
            let committed = get(&c.committed);
            let rate = committed - last_committed;
            last_committed = committed;
            let errors = get(&c.completed) - committed;
            let now = ctx.clock.now_us();
            let start = ctx.stats.measure_start_us.load(Ordering::Relaxed);
            let (phase, elapsed) = if now < start {
                ("warm-up", 0)
            } else {
                ("load", (now - start) / 1_000_000)
            };
            let p99 = elapsed
                .checked_sub(1)
                .and_then(|s| ctx.stats.second(s as usize))
                .map_or(0.0, |(_, _, p)| p as f64 / 1000.0);
            let line = format!(
                "[{phase} {elapsed:>4}/{total_secs}s] {rate:>7} committed/s  p99 {p99:>8.2} ms  errors {errors}  in flight {}",
                ctx.table.len()
            );
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        }
        let _ = writeln!(std::io::stderr());
    }))
}
