//! The context shared by the load loops and the DFSP simulators.

use crate::http::HttpClient;
use crate::limits::SIM_PENDING_ANSWERS_MAX;
use crate::state::{inc, Clock, InFlight, InFlightTable, Ledger, Outcome, Stats};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// How payee simulators answer forwarded prepares.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimConfig {
    /// Percent of prepares the payee rejects (`PUT /transfers/{id}/error`, 5104).
    pub reject_pct: f64,
    /// Percent of prepares the payee never answers (the hub must time them out).
    pub no_answer_pct: f64,
    /// Answer delay, uniform in `[min, max]` milliseconds.
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Name the hub uses as FSPIOP-Source on messages it makes.
    pub hub_name: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            reject_pct: 0.0,
            no_answer_pct: 0.0,
            delay_min_ms: 0,
            delay_max_ms: 0,
            hub_name: "Hub".into(),
        }
    }
}

/// Everything a simulator or a load loop needs.
pub struct Ctx {
    pub clock: Clock,
    pub table: InFlightTable,
    pub ledger: Ledger,
    pub stats: Stats,
    /// DFSP names by index, and the reverse.
    pub names: Vec<String>,
    pub index: HashMap<String, u32>,
    pub currencies: Vec<String>,
    pub client: HttpClient,
    /// Base URL of the hub's FSPIOP API.
    pub hub_fspiop: String,
    pub sim: SimConfig,
    /// The payees' secret from which fulfilments are derived.
    pub secret: [u8; 32],
    /// Bounds payee answers waiting or in flight.
    pub answers: Arc<Semaphore>,
}

impl Ctx {
    pub fn new(
        names: Vec<String>,
        currencies: Vec<String>,
        hub_fspiop: String,
        sim: SimConfig,
        secret: [u8; 32],
    ) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let ledger = Ledger::new(names.len() as u32, currencies.len());
        Ctx {
            clock: Clock::new(),
            table: InFlightTable::new(),
            ledger,
            stats: Stats::new(),
            names,
            index,
            currencies,
            client: HttpClient::new(),
            hub_fspiop,
            sim,
            secret,
            answers: Arc::new(Semaphore::new(SIM_PENDING_ANSWERS_MAX)),
        }
    }

    /// Books the end of a transfer (already removed from the table): ledger, counters,
    /// latencies, the false-rejection check, and wakes the client waiting for it.
    pub fn finish(&self, mut t: InFlight, outcome: Outcome) {
        let now = self.clock.now_us();
        let c = &self.stats.counters;
        inc(&c.completed);
        match &outcome {
            Outcome::Committed => {
                inc(&c.committed);
                self.ledger
                    .on_commit(t.payer, t.payee, t.currency, t.amount);
                if t.measured {
                    let e2e = now.saturating_sub(t.sched_us);
                    self.stats.record_committed(now, e2e);
                    self.stats.record_done_by_sched(t.sched_us, Some(e2e));
                    if let Some(f) = t.fulfil_sent_us {
                        self.stats.fulfil_to_final.record(now.saturating_sub(f));
                    }
                }
            }
            Outcome::Rejected(code) | Outcome::Refused(code) => {
                if matches!(outcome, Outcome::Refused(_)) {
                    inc(&c.refused);
                }
                if (code == "4001" || code == "4200") && self.ledger.is_false_rejection(&t) {
                    inc(&c.false_rejections);
                    let a = self.ledger.account(t.payer, t.currency);
                    let limit = a.limit.load(Ordering::Relaxed);
                    self.stats.violations.record("false_rejection", || {
                        format!(
                            "{code} to {} for {} {}: limit {}, loadgen's upper bound of used {}",
                            self.names[t.payer as usize],
                            crate::fspiop::format_amount(t.amount),
                            self.currencies[t.currency as usize],
                            crate::fspiop::format_amount(limit),
                            crate::fspiop::format_amount(
                                a.baseline.load(Ordering::Relaxed)
                                    + a.debits_sent.load(Ordering::Relaxed)
                                    - t.amount
                                    - t.released_at_send
                                    - t.credits_at_send
                            ),
                        )
                    });
                }
                self.ledger.on_release(t.payer, t.currency, t.amount);
                self.stats.record_error(code, now, t.measured);
                if t.measured {
                    self.stats.record_done_by_sched(t.sched_us, None);
                }
            }
        }
        if let Some(tx) = t.done.take() {
            let _ = tx.send(outcome);
        }
        drop(t.permit.take());
    }
}
