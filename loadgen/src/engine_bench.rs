//! `loadgen engine`: the in-process engine benchmark.
//!
//! Drives the engine runtime directly (no HTTP) with durable prepare + fulfil pairs over
//! many DFSPs and measures, per operation, the time from submit to the durable result
//! (the event the notifier would turn into a callback). A closed loop of `--concurrency`
//! clients each runs prepare → fulfil → next transfer.

use anyhow::{bail, Context};
use clap::Args;
use engine::command::{Admin, Command, Event, Fulfil, Prepare};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Hub, HubConfig};
use hdrhistogram::Histogram;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Shards of the waiter table (transfer id → the client waiting for its result).
const WAITER_SHARDS: usize = 64;
/// Highest latency the histograms record, in microseconds (60 s).
const LATENCY_US_MAX: u64 = 60_000_000;
/// Clients are bounded: one transfer in flight each.
const CONCURRENCY_MAX: usize = 65_536;

#[derive(Args, Debug, Clone, Serialize)]
pub struct EngineArgs {
    /// How long to drive load, in seconds (after a short warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Partitions of the engine.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Share of all transfers (percent) paid by one hot payer.
    #[arg(long, default_value_t = 0)]
    pub hot_payer_pct: u32,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Number of DFSPs.
    #[arg(long, default_value_t = 100)]
    pub dfsps: u32,
    /// Data directory (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Transfers in flight (closed loop).
    #[arg(long, default_value_t = 768)]
    pub concurrency: usize,
    /// Net Debit Cap of each DFSP in minor units (default: large enough never to bind).
    #[arg(long, default_value_t = 1_000_000_000_000)]
    pub ndc: i64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
    /// Offered load in transfers per second over all clients (default: as fast as the
    /// closed loop goes). Each client paces itself to its share.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Close the open settlement window every this many seconds of the measured run, and
    /// report how long each close took and the transfer latency during closes.
    #[arg(long)]
    pub close_window_every: Option<u64>,
    /// With --close-window-every: also settle each closed window through every state
    /// (create, PS_TRANSFERS_RECORDED, _RESERVED, _COMMITTED, SETTLED) and time it.
    #[arg(long)]
    pub settle: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    ops_per_sec: f64,
    transfers_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    prepare_p99_us: u64,
    fulfil_p99_us: u64,
    fsyncs: u64,
    fsyncs_per_sec: f64,
    /// fdatasync calls over the whole process (provisioning, warm-up, shutdown included).
    fsyncs_total: u64,
    /// Group commits over the whole process, summed over partitions.
    batches_total: u64,
    batches: u64,
    mean_batch_size: f64,
    mean_flush_latency_us: f64,
    /// Per sync round, mean time spent making sled durable (only rounds after a registry
    /// or epoch write, and the trimmer's) and in the WAL's fdatasync.
    mean_sled_flush_us: f64,
    mean_fdatasync_us: f64,
    false_rejections: u64,
    refusals: u64,
    other_errors: u64,
    transfers: u64,
    measured_seconds: f64,
    /// Operations (prepare or fulfil) that overlapped no window close, and their p99.
    ops_outside_close: u64,
    p99_us_outside_close: u64,
    /// Operations in flight while a window closed (started or ended during it).
    ops_during_close: u64,
    p99_us_during_close: u64,
    closes: Vec<CloseReport>,
    config: EngineArgs,
}

/// One window close (and its settlement, with --settle).
#[derive(Debug, Clone, Serialize)]
struct CloseReport {
    window: u64,
    /// Committed transfers the window held.
    transfers: u64,
    close_ms: f64,
    settle_ms: Option<f64>,
    settled_accounts: usize,
}

/// The result a client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Reserved,
    Committed,
    Refused(u16),
    Aborted(u16),
}

type Waiters = Vec<Mutex<HashMap<TransferId, oneshot::Sender<Outcome>>>>;

struct Shared {
    hub: Hub,
    waiters: Waiters,
    measuring: AtomicBool,
    stop: AtomicBool,
    fsps: Vec<FspId>,
    currency: Currency,
    hot_payer_pct: u32,
    ndc: i64,
    /// Per DFSP, all monotone: amounts of every prepare it submitted as payer, ...
    submitted: Vec<AtomicI64>,
    /// ... amounts of those refused or aborted (known released), ...
    released: Vec<AtomicI64>,
    /// ... and committed amounts it received as payee.
    credits: Vec<AtomicI64>,
    false_rejections: AtomicU64,
    refusals: AtomicU64,
    other_errors: AtomicU64,
    transfers: AtomicU64,
    next_id: AtomicU64,
    /// Seconds between two transfers of one client (`--rate`), or 0.
    client_interval_s: f64,
    /// Closes started and closes finished: an operation overlapped a close when a close
    /// was running when it started, or one started before it ended.
    closes_started: AtomicU64,
    closes_finished: AtomicU64,
}

pub fn run(args: EngineArgs) -> anyhow::Result<()> {
    if args.dfsps < 2 {
        bail!("--dfsps must be at least 2");
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        bail!("--concurrency must be 1..={CONCURRENCY_MAX}");
    }
    if args.hot_payer_pct > 100 {
        bail!("--hot-payer-pct must be 0..=100");
    }
    // One worker per core (the default); WORKERS overrides it for experiments.
    let workers = std::env::var("WORKERS").ok().and_then(|v| v.parse().ok());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: EngineArgs) -> anyhow::Result<()> {
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempdir_in_target()?;
            temp.clone()
        }
    };
    let limits = Limits::default();
    let (hub, mut events) = Hub::open(HubConfig {
        data_dir: data_dir.clone(),
        partitions: args.partitions,
        limits,
    })
    .context("opening the engine")?;
    let currency = Currency::new("USD").context("currency")?;
    let fsps: Vec<FspId> = (0..args.dfsps)
        .map(|i| FspId::new(&format!("benchfsp{i}")).context("fsp name"))
        .collect::<anyhow::Result<_>>()?;
    let now = now_ms();
    for (i, fsp) in fsps.iter().enumerate() {
        let account = AccountKey::new(*fsp, currency);
        hub.admin(now, Admin::CreateAccount { account })
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        hub.admin(
            now,
            Admin::InitialPositionAndLimits {
                account,
                position: 0,
                ndc: args.ndc,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let funds_id =
            TransferId::parse(&format!("00000000-0000-4000-8000-{:012x}", i)).context("id")?;
        hub.admin(
            now,
            Admin::FundsIn {
                account,
                amount: args.ndc,
                funds_id,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let shared = Arc::new(Shared {
        hub: hub.clone(),
        waiters: (0..WAITER_SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        currency,
        hot_payer_pct: args.hot_payer_pct,
        ndc: args.ndc,
        submitted: fsps.iter().map(|_| AtomicI64::new(0)).collect(),
        released: fsps.iter().map(|_| AtomicI64::new(0)).collect(),
        credits: fsps.iter().map(|_| AtomicI64::new(0)).collect(),
        fsps,
        false_rejections: AtomicU64::new(0),
        refusals: AtomicU64::new(0),
        other_errors: AtomicU64::new(0),
        transfers: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        client_interval_s: match args.rate {
            Some(0) => bail!("--rate must be at least 1"),
            Some(rate) => args.concurrency as f64 / rate as f64,
            None => 0.0,
        },
        closes_started: AtomicU64::new(0),
        closes_finished: AtomicU64::new(0),
    });

    // Route results to the clients waiting for them.
    let router = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(delivery) = events.recv().await {
                let event = &*delivery.event;
                let outcome = match event {
                    Event::Reserved { .. } => Outcome::Reserved,
                    Event::Committed { .. } => Outcome::Committed,
                    Event::PrepareRefused { code, .. } => Outcome::Refused(code.code()),
                    Event::Aborted { code, .. } => Outcome::Aborted(code.code()),
                    Event::RequestRefused { code, .. } => Outcome::Refused(code.code()),
                    _ => continue,
                };
                if let Some(id) = event.transfer_id() {
                    let waiter = lock(&shared.waiters[shard(&id)]).remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(outcome);
                    }
                }
            }
        })
    };

    let mut clients = Vec::with_capacity(args.concurrency);
    for client in 0..args.concurrency {
        let shared = shared.clone();
        clients.push(tokio::spawn(async move {
            client_loop(shared, client as u64).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let before = hub.metrics();
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let run_for = Duration::from_secs(args.seconds);
    let closes = match args.close_window_every {
        Some(0) => bail!("--close-window-every must be at least 1 second"),
        Some(every) => close_windows(&shared, started, run_for, every, args.settle).await?,
        None => {
            tokio::time::sleep(run_for).await;
            Vec::new()
        }
    };
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let after = hub.metrics();
    shared.stop.store(true, Ordering::SeqCst);

    let mut all = new_histogram()?;
    let mut prepare = new_histogram()?;
    let mut fulfil = new_histogram()?;
    let mut outside = new_histogram()?;
    let mut during = new_histogram()?;
    for client in clients {
        let hists = client.await.context("client task")?;
        prepare.add(&hists.prepare)?;
        fulfil.add(&hists.fulfil)?;
        outside.add(&hists.outside_close)?;
        during.add(&hists.during_close)?;
    }
    all.add(&prepare)?;
    all.add(&fulfil)?;
    hub.shutdown().await.context("engine shutdown")?;
    router.abort();
    let end = hub.metrics();

    let syncs = (after.fsyncs - before.fsyncs).max(1);
    let per_sync = |us: u64| us as f64 / syncs as f64;
    let ops = all.len();
    let batches = after.batches - before.batches;
    let report = Report {
        ops_per_sec: ops as f64 / elapsed,
        transfers_per_sec: fulfil.len() as f64 / elapsed,
        p50_us: all.value_at_quantile(0.50),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        prepare_p99_us: prepare.value_at_quantile(0.99),
        fulfil_p99_us: fulfil.value_at_quantile(0.99),
        fsyncs: after.fsyncs - before.fsyncs,
        fsyncs_per_sec: (after.fsyncs - before.fsyncs) as f64 / elapsed,
        fsyncs_total: end.fsyncs,
        batches_total: end.batches,
        batches,
        mean_batch_size: if batches == 0 {
            0.0
        } else {
            (after.commands - before.commands) as f64 / batches as f64
        },
        mean_flush_latency_us: if batches == 0 {
            0.0
        } else {
            (after.flush_latency_us_total - before.flush_latency_us_total) as f64 / batches as f64
        },
        mean_sled_flush_us: per_sync(after.sled_flush_us_total - before.sled_flush_us_total),
        mean_fdatasync_us: per_sync(after.fdatasync_us_total - before.fdatasync_us_total),
        false_rejections: shared.false_rejections.load(Ordering::Relaxed),
        refusals: shared.refusals.load(Ordering::Relaxed),
        other_errors: shared.other_errors.load(Ordering::Relaxed),
        transfers: shared.transfers.load(Ordering::Relaxed),
        measured_seconds: elapsed,
        ops_outside_close: outside.len(),
        p99_us_outside_close: outside.value_at_quantile(0.99),
        ops_during_close: during.len(),
        p99_us_during_close: during.value_at_quantile(0.99),
        closes,
        config: args.clone(),
    };
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

fn tempdir_in_target() -> anyhow::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("engine-bench-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn shard(id: &TransferId) -> usize {
    (id.route_hash() >> 32) as usize % WAITER_SHARDS
}

/// A small deterministic PRNG per client (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Submits a command and waits for the durable result of its transfer (the event).
async fn wait_for(shared: &Shared, id: TransferId, command: Command) -> Option<Outcome> {
    let (tx, rx) = oneshot::channel();
    lock(&shared.waiters[shard(&id)]).insert(id, tx);
    let partition = shared.hub.partition_of(&id);
    if shared.hub.enqueue(partition, command).is_err() {
        lock(&shared.waiters[shard(&id)]).remove(&id);
        return None;
    }
    rx.await.ok()
}

/// One client's latencies: per operation, and split by whether a window close overlapped.
struct ClientHistograms {
    prepare: Histogram<u64>,
    fulfil: Histogram<u64>,
    outside_close: Histogram<u64>,
    during_close: Histogram<u64>,
}

impl ClientHistograms {
    fn new() -> ClientHistograms {
        let new = || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds");
        ClientHistograms {
            prepare: new(),
            fulfil: new(),
            outside_close: new(),
            during_close: new(),
        }
    }

    /// Records one operation that started when `closes` was (started, finished).
    fn record(&mut self, shared: &Shared, fulfil: bool, started: Instant, closes: (u64, u64)) {
        let us = (started.elapsed().as_micros() as u64).max(1);
        let hist = if fulfil {
            &mut self.fulfil
        } else {
            &mut self.prepare
        };
        let _ = hist.record(us);
        let overlapped =
            closes.0 != closes.1 || shared.closes_started.load(Ordering::SeqCst) != closes.0;
        let split = if overlapped {
            &mut self.during_close
        } else {
            &mut self.outside_close
        };
        let _ = split.record(us);
    }
}

fn close_counts(shared: &Shared) -> (u64, u64) {
    // Finished first: a close that finishes between the two loads counts as overlapping.
    let finished = shared.closes_finished.load(Ordering::SeqCst);
    (shared.closes_started.load(Ordering::SeqCst), finished)
}

/// Closes the open settlement window every `every_s` seconds until `run_for` has passed
/// since `started`, settling each closed window through every state when `settle`.
async fn close_windows(
    shared: &Shared,
    started: Instant,
    run_for: Duration,
    every_s: u64,
    settle: bool,
) -> anyhow::Result<Vec<CloseReport>> {
    use engine::settlement::{AccountUpdate, SettlementState};
    let hub = &shared.hub;
    let mut reports = Vec::new();
    let mut next = started + Duration::from_secs(every_s);
    while next <= started + run_for {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(every_s);
        let window = hub
            .settlement_windows(now_ms())
            .await
            .map_err(|e| anyhow::anyhow!("listing windows: {e}"))?
            .into_iter()
            .find(|w| w.state == engine::settlement::WindowState::Open)
            .context("an open window")?
            .id;
        shared.closes_started.fetch_add(1, Ordering::SeqCst);
        let close_started = Instant::now();
        let closed = hub.close_window(now_ms(), window, "loadgen").await;
        let close_ms = close_started.elapsed().as_secs_f64() * 1e3;
        shared.closes_finished.fetch_add(1, Ordering::SeqCst);
        let closed = closed.map_err(|e| anyhow::anyhow!("closing window {window}: {e}"))?;
        let mut report = CloseReport {
            window,
            transfers: closed.nets.transfers,
            close_ms,
            settle_ms: None,
            settled_accounts: 0,
        };
        if settle && closed.nets.transfers > 0 {
            let settle_started = Instant::now();
            let settlement = hub
                .create_settlement(now_ms(), "DEFERREDNET", "loadgen", &[window])
                .await
                .map_err(|e| anyhow::anyhow!("creating a settlement: {e}"))?;
            for state in [
                SettlementState::PsTransfersRecorded,
                SettlementState::PsTransfersReserved,
                SettlementState::PsTransfersCommitted,
                SettlementState::Settled,
            ] {
                let updates: Vec<AccountUpdate> = settlement
                    .accounts
                    .keys()
                    .map(|account| AccountUpdate {
                        account: *account,
                        state,
                        reason: "loadgen".into(),
                        external_reference: None,
                    })
                    .collect();
                hub.update_settlement(now_ms(), settlement.id, &updates, "loadgen")
                    .await
                    .map_err(|e| anyhow::anyhow!("settlement to {}: {e}", state.as_str()))?;
            }
            report.settle_ms = Some(settle_started.elapsed().as_secs_f64() * 1e3);
            report.settled_accounts = settlement.accounts.len();
        }
        eprintln!(
            "window {} closed: {} transfers, close {:.1} ms, settle {}",
            report.window,
            report.transfers,
            report.close_ms,
            report
                .settle_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms"))
        );
        reports.push(report);
    }
    let end = started + run_for;
    tokio::time::sleep_until(end.into()).await;
    Ok(reports)
}

async fn client_loop(shared: Arc<Shared>, client: u64) -> ClientHistograms {
    let mut hists = ClientHistograms::new();
    let paced_from = Instant::now();
    let mut sent: u64 = 0;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client + 1).wrapping_mul(0x1000_0000_01b3));
    let fulfilment: [u8; 32] = Sha256::digest(client.to_be_bytes()).into();
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    let n = shared.fsps.len() as u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.client_interval_s > 0.0 {
            // Open-loop pacing: this client's k-th transfer starts k intervals in.
            let due = paced_from + Duration::from_secs_f64(sent as f64 * shared.client_interval_s);
            tokio::time::sleep_until(due.into()).await;
        }
        sent += 1;
        let payer = if rng.below(100) < u64::from(shared.hot_payer_pct) {
            0
        } else {
            rng.below(n)
        } as usize;
        let mut payee = rng.below(n) as usize;
        if payee == payer {
            payee = (payee + 1) % n as usize;
        }
        let amount = 1 + rng.below(10_000) as i64;
        let seq = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            seq >> 32,
            (seq >> 16) & 0xffff,
            client & 0xfff,
            seq & 0xfff,
            rng.next() & 0xffff_ffff_ffff
        );
        let Some(transfer_id) = TransferId::parse(&id) else {
            continue;
        };
        let mut body_hash = [0u8; 16];
        body_hash[..8].copy_from_slice(&seq.to_be_bytes());
        let now = now_ms();
        let prepare = Prepare {
            transfer_id,
            payer: shared.fsps[payer],
            payee: shared.fsps[payee],
            currency: shared.currency,
            amount,
            condition,
            expiration_ms: now + 60_000,
            body_hash,
            payload: Vec::new(),
        };
        // What is certainly applied before the engine decides this prepare: releases and
        // credits already reported (their effects reached the home before their events
        // were published, and this prepare is submitted after).
        let released_before = shared.released[payer].load(Ordering::SeqCst);
        let credits_before = shared.credits[payer].load(Ordering::SeqCst);
        shared.submitted[payer].fetch_add(amount, Ordering::SeqCst);
        let closes = close_counts(&shared);
        let started = Instant::now();
        let outcome = wait_for(
            &shared,
            transfer_id,
            Command::Prepare {
                now_ms: now,
                prepare,
            },
        )
        .await;
        let measuring = shared.measuring.load(Ordering::Relaxed);
        if measuring {
            hists.record(&shared, false, started, closes);
        }
        match outcome {
            Some(Outcome::Reserved) => {}
            Some(Outcome::Refused(code)) if code == 4001 || code == 4200 => {
                // An upper bound of what the payer could have used when the engine decided:
                // everything submitted so far (this one included), minus only the releases
                // and credits known before this prepare was submitted. If even that fits
                // the limit, the refusal was certainly false.
                let used_max = shared.submitted[payer].load(Ordering::SeqCst)
                    - released_before
                    - credits_before;
                shared.released[payer].fetch_add(amount, Ordering::SeqCst);
                shared.refusals.fetch_add(1, Ordering::Relaxed);
                if used_max <= shared.ndc {
                    shared.false_rejections.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            _ => {
                shared.released[payer].fetch_add(amount, Ordering::SeqCst);
                shared.other_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        let mut final_hash = body_hash;
        final_hash[15] = 1;
        let fulfil = Fulfil {
            transfer_id,
            source: shared.fsps[payee],
            fulfilment,
            completed_ms: now_ms(),
            notify_payee: false,
            body_hash: final_hash,
            payload: Vec::new(),
        };
        let closes = close_counts(&shared);
        let started = Instant::now();
        let outcome = wait_for(
            &shared,
            transfer_id,
            Command::Fulfil {
                now_ms: now_ms(),
                fulfil,
            },
        )
        .await;
        let measuring = shared.measuring.load(Ordering::Relaxed);
        if measuring {
            hists.record(&shared, true, started, closes);
        }
        match outcome {
            Some(Outcome::Committed) => {
                shared.credits[payee].fetch_add(amount, Ordering::SeqCst);
                if measuring {
                    shared.transfers.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                shared.released[payer].fetch_add(amount, Ordering::SeqCst);
                shared.other_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    hists
}
