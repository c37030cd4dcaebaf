//! Shared run state: the clock, the table of transfers in flight, loadgen's own ledger and
//! the measurements.

use crate::limits::{
    HISTOGRAM_SIGFIG, INFLIGHT_SHARDS, LATENCY_US_MAX, SERIES_SECONDS_MAX, VIOLATION_SAMPLES,
};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Locks a mutex, recovering the data if a panicking thread poisoned it (every update here
/// is a plain counter or histogram write, so the data is still consistent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Monotonic microseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
    pub fn instant_at(&self, us: u64) -> Instant {
        self.base + std::time::Duration::from_micros(us)
    }
}

/// How a transfer ended, as the payer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// A final error callback (`PUT /transfers/{id}/error`) or an ABORTED state, with the
    /// FSPIOP error code (or `ABORTED`).
    Rejected(String),
    /// The hub refused the prepare synchronously (`http_<status>` or the errorCode it sent).
    Refused(String),
}

/// A transfer loadgen has sent and not yet seen finish.
#[derive(Debug)]
pub struct InFlight {
    pub payer: u32,
    pub payee: u32,
    pub currency: u16,
    pub amount: i64,
    pub condition: String,
    /// Scheduled send time (open loop) or actual send time (closed loop).
    pub sched_us: u64,
    pub sent_us: u64,
    pub forwarded_us: Option<u64>,
    pub fulfil_sent_us: Option<u64>,
    /// Sent after the warm-up: its latencies count.
    pub measured: bool,
    /// The payer's released amounts and received credits known when the prepare was sent
    /// (for the false-rejection bound).
    pub released_at_send: i64,
    pub credits_at_send: i64,
    pub done: Option<oneshot::Sender<Outcome>>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Transfers in flight by transfer id (UUID as u128), sharded to keep lock hold times short.
pub struct InFlightTable {
    shards: Vec<Mutex<HashMap<u128, InFlight>>>,
}

impl Default for InFlightTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses a transfer id into the table key.
pub fn transfer_key(id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.as_u128())
}

impl InFlightTable {
    pub fn new() -> Self {
        InFlightTable {
            shards: (0..INFLIGHT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, InFlight>> {
        // UUIDv4 low bits are random.
        &self.shards[(key as usize) % INFLIGHT_SHARDS]
    }
    pub fn insert(&self, key: u128, t: InFlight) {
        lock(self.shard(key)).insert(key, t);
    }
    pub fn remove(&self, key: u128) -> Option<InFlight> {
        lock(self.shard(key)).remove(&key)
    }
    pub fn with<R>(&self, key: u128, f: impl FnOnce(&mut InFlight) -> R) -> Option<R> {
        lock(self.shard(key)).get_mut(&key).map(f)
    }
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sums of unfinished amounts per (payer account) and per (payee account).
    pub fn unfinished(&self, ncur: usize) -> (HashMap<usize, i64>, HashMap<usize, i64>) {
        let mut as_payer = HashMap::new();
        let mut as_payee = HashMap::new();
        for s in &self.shards {
            for t in lock(s).values() {
                let c = t.currency as usize;
                *as_payer.entry(t.payer as usize * ncur + c).or_insert(0) += t.amount;
                *as_payee.entry(t.payee as usize * ncur + c).or_insert(0) += t.amount;
            }
        }
        (as_payer, as_payee)
    }
}

/// One participant account (DFSP × currency) in loadgen's ledger. Amounts in internal units.
#[derive(Debug, Default)]
pub struct Account {
    /// Position reported by the hub before the load (the audit compares deltas from it).
    pub baseline: AtomicI64,
    /// Lowest of NDC and liquidity cover as loadgen knows it (`i64::MAX`: unknown).
    pub limit: AtomicI64,
    /// Sum of all prepares sent as payer.
    pub debits_sent: AtomicI64,
    /// Sum of prepares as payer that ended without commit (seen by loadgen).
    pub released: AtomicI64,
    /// Committed as payer / as payee (seen by loadgen).
    pub debit_committed: AtomicI64,
    pub credit_committed: AtomicI64,
}

/// loadgen's own ledger of what it sent and what the hub told it.
pub struct Ledger {
    pub ncur: usize,
    pub accounts: Vec<Account>,
}

impl Ledger {
    pub fn new(dfsps: u32, ncur: usize) -> Self {
        let accounts = (0..dfsps as usize * ncur)
            .map(|_| Account {
                limit: AtomicI64::new(i64::MAX),
                ..Account::default()
            })
            .collect();
        Ledger { ncur, accounts }
    }
    pub fn idx(&self, dfsp: u32, cur: u16) -> usize {
        dfsp as usize * self.ncur + cur as usize
    }
    pub fn account(&self, dfsp: u32, cur: u16) -> &Account {
        &self.accounts[self.idx(dfsp, cur)]
    }
    /// Records a prepare about to be sent; returns the snapshot (released, credits).
    pub fn on_send(&self, payer: u32, cur: u16, amount: i64) -> (i64, i64) {
        let a = self.account(payer, cur);
        let snap = (
            a.released.load(Ordering::Acquire),
            a.credit_committed.load(Ordering::Acquire),
        );
        a.debits_sent.fetch_add(amount, Ordering::AcqRel);
        snap
    }
    pub fn on_commit(&self, payer: u32, payee: u32, cur: u16, amount: i64) {
        self.account(payer, cur)
            .debit_committed
            .fetch_add(amount, Ordering::AcqRel);
        self.account(payee, cur)
            .credit_committed
            .fetch_add(amount, Ordering::AcqRel);
    }
    pub fn on_release(&self, payer: u32, cur: u16, amount: i64) {
        self.account(payer, cur)
            .released
            .fetch_add(amount, Ordering::AcqRel);
    }

    /// Whether a limit refusal (4001/4200) of `t` is certainly false: even counting every
    /// prepare of the payer sent up to now (other than this one) as reserved or committed,
    /// and only the releases and credits the payer had seen before sending it, the payer
    /// still had room for the amount. Conservative: never flags a refusal the hub may have
    /// been right to make.
    pub fn is_false_rejection(&self, t: &InFlight) -> bool {
        let a = self.account(t.payer, t.currency);
        let limit = a.limit.load(Ordering::Acquire);
        if limit == i64::MAX {
            return false;
        }
        let used_upper = a.baseline.load(Ordering::Acquire)
            + (a.debits_sent.load(Ordering::Acquire) - t.amount)
            - t.released_at_send
            - t.credits_at_send;
        limit - used_upper >= t.amount
    }

    /// Position the hub should report now, from committed transfers seen by loadgen.
    pub fn expected_position(&self, i: usize) -> i64 {
        let a = &self.accounts[i];
        a.baseline.load(Ordering::Acquire) + a.debit_committed.load(Ordering::Acquire)
            - a.credit_committed.load(Ordering::Acquire)
    }
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig)
        .expect("histogram bounds and precision are constants")
}

/// A latency histogram in microseconds with fixed bounds; values outside saturate.
pub struct LatencyHist(Mutex<Histogram<u64>>);

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist(Mutex::new(new_hist(HISTOGRAM_SIGFIG)))
    }
}

impl LatencyHist {
    pub fn record(&self, us: u64) {
        lock(&self.0).saturating_record(us.clamp(1, LATENCY_US_MAX));
    }
    pub fn snapshot(&self) -> Histogram<u64> {
        lock(&self.0).clone()
    }
}

/// One second of the run (counted from the end of the warm-up).
pub struct SecondBucket {
    pub sent: u64,
    pub committed: u64,
    pub errors: u64,
    /// End-to-end latency of transfers committed in this second (2 significant figures).
    pub e2e: Option<Histogram<u64>>,
    /// Transfers scheduled in this second that have finished, and the end-to-end latency
    /// of those that committed (for judging ramp steps by what was offered in them).
    pub done_by_sched: u64,
    pub e2e_by_sched: Option<Histogram<u64>>,
}

/// A copy of one second of the time series.
pub struct SecondSnapshot {
    pub second: usize,
    pub sent: u64,
    pub committed: u64,
    pub errors: u64,
    pub e2e: Option<Histogram<u64>>,
}

/// Counters, by name.
#[derive(Default, Debug)]
pub struct Counters {
    pub sent: AtomicU64,
    /// Open loop: transfers scheduled in the window that could not be sent before it ended
    /// (all slots busy with transfers the hub had not finished).
    pub unsent: AtomicU64,
    pub accepted: AtomicU64,
    pub committed: AtomicU64,
    pub completed: AtomicU64,
    pub refused: AtomicU64,
    pub transport_errors: AtomicU64,
    pub forwarded: AtomicU64,
    pub fulfils_sent: AtomicU64,
    pub rejects_sent: AtomicU64,
    pub no_answers: AtomicU64,
    pub answers_dropped: AtomicU64,
    pub answer_not_accepted: AtomicU64,
    pub payee_notices: AtomicU64,
    pub late_or_unknown_callbacks: AtomicU64,
    pub invalid_fulfilments: AtomicU64,
    pub false_rejections: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Protocol violations seen by the simulators: count and a few examples per kind.
#[derive(Default)]
pub struct Violations(Mutex<BTreeMap<String, (u64, Vec<String>)>>);

impl Violations {
    pub fn record(&self, kind: &str, example: impl FnOnce() -> String) {
        let mut m = lock(&self.0);
        let e = m.entry(kind.to_string()).or_insert((0, Vec::new()));
        e.0 += 1;
        if e.1.len() < VIOLATION_SAMPLES {
            e.1.push(example());
        }
    }
    pub fn snapshot(&self) -> BTreeMap<String, (u64, Vec<String>)> {
        lock(&self.0).clone()
    }
    pub fn total(&self) -> u64 {
        lock(&self.0).values().map(|v| v.0).sum()
    }
}

/// All measurements of a run.
pub struct Stats {
    /// Prepare sent (scheduled) → 202 received.
    pub accepted: LatencyHist,
    /// Prepare sent → forwarded prepare received by the payee.
    pub forward: LatencyHist,
    /// Payee's fulfil sent → payer's final callback received.
    pub fulfil_to_final: LatencyHist,
    /// Scheduled send → payer's final callback (committed transfers).
    pub e2e: LatencyHist,
    pub counters: Counters,
    /// Final errors by code (all transfers, warm-up included).
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub violations: Violations,
    series: Mutex<Vec<SecondBucket>>,
    /// Microseconds (run clock) at which measuring starts (end of warm-up).
    pub measure_start_us: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            accepted: LatencyHist::default(),
            forward: LatencyHist::default(),
            fulfil_to_final: LatencyHist::default(),
            e2e: LatencyHist::default(),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            violations: Violations::default(),
            series: Mutex::new(Vec::new()),
            measure_start_us: AtomicU64::new(0),
        }
    }

    fn with_second(&self, at_us: u64, f: impl FnOnce(&mut SecondBucket)) {
        let start = self.measure_start_us.load(Ordering::Relaxed);
        if at_us < start {
            return;
        }
        let sec = ((at_us - start) / 1_000_000) as usize;
        if sec >= SERIES_SECONDS_MAX {
            return;
        }
        let mut s = lock(&self.series);
        while s.len() <= sec {
            s.push(SecondBucket {
                sent: 0,
                committed: 0,
                errors: 0,
                e2e: None,
                done_by_sched: 0,
                e2e_by_sched: None,
            });
        }
        f(&mut s[sec]);
    }

    pub fn record_sent(&self, sched_us: u64) {
        self.with_second(sched_us, |b| b.sent += 1);
    }

    pub fn record_error(&self, code: &str, at_us: u64, measured: bool) {
        *lock(&self.errors).entry(code.to_string()).or_insert(0) += 1;
        if measured {
            self.with_second(at_us, |b| b.errors += 1);
        }
    }

    pub fn record_committed(&self, at_us: u64, e2e_us: u64) {
        self.e2e.record(e2e_us);
        self.with_second(at_us, |b| {
            b.committed += 1;
            b.e2e
                .get_or_insert_with(|| new_hist(2))
                .saturating_record(e2e_us.clamp(1, LATENCY_US_MAX));
        });
    }

    /// Books a finished transfer under the second it was scheduled in.
    pub fn record_done_by_sched(&self, sched_us: u64, e2e_us: Option<u64>) {
        self.with_second(sched_us, |b| {
            b.done_by_sched += 1;
            if let Some(us) = e2e_us {
                b.e2e_by_sched
                    .get_or_insert_with(|| new_hist(2))
                    .saturating_record(us.clamp(1, LATENCY_US_MAX));
            }
        });
    }

    /// Over transfers scheduled in seconds `from..to`: how many finished, and the merged
    /// end-to-end histogram of those that committed.
    pub fn window_by_sched(&self, from: usize, to: usize) -> (u64, Histogram<u64>) {
        let s = lock(&self.series);
        let mut h = new_hist(2);
        let mut done = 0;
        for b in s.iter().take(to).skip(from) {
            done += b.done_by_sched;
            if let Some(x) = &b.e2e_by_sched {
                let _ = h.add(x);
            }
        }
        (done, h)
    }

    /// A copy of the time series.
    pub fn series(&self) -> Vec<SecondSnapshot> {
        lock(&self.series)
            .iter()
            .enumerate()
            .map(|(i, b)| SecondSnapshot {
                second: i,
                sent: b.sent,
                committed: b.committed,
                errors: b.errors,
                e2e: b.e2e.clone(),
            })
            .collect()
    }

    /// Committed count and e2e p99 (µs) of one second, if it exists.
    pub fn second(&self, sec: usize) -> Option<(u64, u64, u64)> {
        let s = lock(&self.series);
        s.get(sec).map(|b| {
            (
                b.committed,
                b.errors,
                b.e2e.as_ref().map_or(0, |h| h.value_at_quantile(0.99)),
            )
        })
    }

    /// Merged e2e histogram and counts over seconds `from..to`.
    pub fn window(&self, from: usize, to: usize) -> (u64, u64, Histogram<u64>) {
        let s = lock(&self.series);
        let mut h = new_hist(2);
        let (mut committed, mut errors) = (0, 0);
        for b in s.iter().take(to).skip(from) {
            committed += b.committed;
            errors += b.errors;
            if let Some(x) = &b.e2e {
                let _ = h.add(x);
            }
        }
        (committed, errors, h)
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }
}
