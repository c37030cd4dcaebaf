//! Every bound the load generator keeps, in one place.
//!
//! Queues, tables, loops and bodies are all bounded; these are the numbers.

use std::time::Duration;

/// Highest latency the histograms record, in microseconds (120 s). Larger values saturate.
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// Significant figures of every latency histogram.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Shards of the in-flight transfer table.
pub const INFLIGHT_SHARDS: usize = 64;
/// Default cap on transfers in flight in open loop (`--rate N`); beyond it sends wait, and
/// the wait is measured (latency counts from the scheduled send time).
pub const OPEN_LOOP_IN_FLIGHT_DEFAULT: usize = 65_536;
/// Largest accepted `--max-in-flight` / `--concurrency`.
pub const IN_FLIGHT_MAX: usize = 1_000_000;

/// Closed loop (`--rate max`) without `--concurrency`: clients per CPU core. Sized by Little's
/// law so that 10,000 transfers/s are reachable on 2 cores with an end-to-end latency of up to
/// 50 ms (256 per core × 2 cores / 0.05 s = 10,240/s); more only adds queueing in the hub.
pub const DEFAULT_CONCURRENCY_PER_CORE: usize = 256;
/// Lower bound of the default closed-loop concurrency.
pub const DEFAULT_CONCURRENCY_MIN: usize = 256;
/// Upper bound of the default closed-loop concurrency.
pub const DEFAULT_CONCURRENCY_MAX: usize = 4_096;

/// Longest load phase (`--seconds`, warm-up and ramp included).
pub const SECONDS_MAX: u64 = 24 * 3600;
/// Longest wait for in-flight transfers after the load phase.
pub const DRAIN_SECONDS_MAX: u64 = 600;
/// Hard cap on transfers started in one run (every load loop is bounded in count too).
pub const TRANSFERS_MAX: u64 = 1_000_000_000;
/// Highest open-loop rate, transfers per second.
pub const RATE_MAX: f64 = 1_000_000.0;
/// Rows of the per-second time series (load + drain); later seconds are not charted.
pub const SERIES_SECONDS_MAX: usize = (SECONDS_MAX + DRAIN_SECONDS_MAX) as usize + 2;

/// Most DFSPs a run may create.
pub const DFSPS_MAX: u32 = 10_000;
/// Most currencies per run.
pub const CURRENCIES_MAX: usize = 16;
/// Admin calls in flight during provisioning and the audit.
pub const ADMIN_CONCURRENCY: usize = 8;

/// The audit reads positions this many times at most before declaring a mismatch (a hub
/// may publish positions a moment after its last callback), this far apart.
pub const AUDIT_ATTEMPTS: usize = 3;
pub const AUDIT_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Timeout of one HTTP request/response exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP body read from the network (FSPIOP bodies are small; admin lists can be larger).
pub const HTTP_BODY_MAX: usize = 4 * 1024 * 1024;
/// Largest HTTP response head (status line and headers) read from the network.
pub const HTTP_HEAD_MAX: usize = 16 * 1024;
/// Idle pooled connections kept per host by the HTTP client.
pub const POOL_IDLE_PER_HOST: usize = 4_096;
/// Idle pooled connections kept over all hosts by the HTTP client.
pub const POOL_IDLE_TOTAL: usize = 16_384;
/// How long the HTTP client keeps an idle pooled connection: below any hub's keep-alive
/// (actix-web's default is 5 s), so that the pool drops a connection before the hub
/// does. Reusing one the hub is closing fails the request ("connection closed before
/// message completed"); one run at 5,000 transfers/s lost 20 payee fulfils that way.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Accept queue of a simulator listener (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4_096;
/// Concurrent connections accepted by one simulator listener.
pub const SIM_CONNECTIONS_MAX: usize = 16_384;
/// Payee answers (fulfils or rejects) waiting for their delay or in flight, per run.
pub const SIM_PENDING_ANSWERS_MAX: usize = 262_144;
/// Longest payee answer delay.
pub const ANSWER_DELAY_MS_MAX: u64 = 60_000;
/// How many examples of each protocol violation are kept for the report.
pub const VIOLATION_SAMPLES: usize = 8;

/// Period of the live progress line.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
