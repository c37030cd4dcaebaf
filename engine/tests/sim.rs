//! Seeded deterministic simulation of a multi-partition hub (DESIGN §10, item 2).
//!
//! It drives the **production partition core** (`engine::runtime::Core`, the very code the
//! tokio actor runs: staging, the durability wait, release, confirmations, the outbox,
//! snapshots, recovery) over a **simulated disk** (`sim_disk`, behind the `Storage`
//! trait), and every source of nondeterminism (scheduling, message delay and order,
//! crashes, power losses, disk faults, the workload) is drawn from small seeded PRNGs, so a
//! seed replays the very same run forever.
//!
//! What is simulated:
//! * 1 to 3 **nodes**, each with one disk, a syncer and an archiver, holding together 4 to
//!   8 partitions. A sync round (`flush`) makes every staged batch of the node durable
//!   with one `sync`; then each core releases its batches in order (a failed sync stops
//!   them: the node restarts). Up to `STAGED_MAX` batches wait for a sync per partition;
//! * per partition, a **command log**: client commands stay across crashes (a client
//!   resends what it was not answered for), peer messages not durably applied are lost
//!   with their node (their senders re-send what is unconfirmed);
//! * the disk's faults: failed syncs and writes (sticky until the node restarts), torn
//!   writes at a power loss, a corrupted byte of an old record (recovery must refuse it);
//! * **whole-node crashes** (every core of the node dropped and recovered from its disk,
//!   with a new owner epoch, as `Hub::open` does), half of them after a **power loss**
//!   (the disk loses what no completed sync covered);
//! * the event consumer takes released events from each core's outbox and acknowledges
//!   them, some late: a restart publishes unacknowledged ones again, and a result
//!   published again must be identical to the first publication.
//!
//! Released peer messages travel in a shared in-flight set, are delivered after a random
//! delay in random order (so reordered), and are sometimes delivered twice: the machine must
//! apply each `(from, seq)` once.
//!
//! The workload: 4 to 8 partitions; six DFSPs in USD and three in XOF, created on every
//! partition, with limits and funds at their homes; two hot payers that send most
//! prepares; fulfils, rejects, wrong fulfilments, duplicate and modified resends; ticks of
//! a simulated clock; NDC changes up and down, funds in, two-phase funds out; crashes.
//!
//! The invariants of DESIGN §5, checked with a global view of all live states:
//!
//! 1. after every step, per account, `bank + Σ slice headroom + headroom in flight ==
//!    limit − position − reserved`, where in flight counts each (from, to, seq) once;
//!    after every batch, headroom is handed out only from the bank (the home never lets a
//!    grant take it below zero), and a reservation made from a slice's own headroom keeps
//!    `position + reserved <= limit` (`check_ledgers`, `check_batch`);
//! 2. after every step and at quiescence, the positions of each currency sum to the initial
//!    positions (`check_ledgers`);
//! 3. each transfer is RESERVED at most once and ends in exactly one final state, judged on
//!    released events only (`advance`, `finish`);
//! 4. after a crash or power loss every batch released before it is still the state of
//!    record (`restart`), and the restored partition holds exactly what was released (plus
//!    its recovered outbox): transfers, positions, reservations, limits
//!    (`check_after_crash`); a result published again after a restart is the same result;
//! 5. zero false rejections: when a home refuses, the bank plus the free headroom of every
//!    slice is short of the amount (`check_batch`).
//!
//! At quiescence nothing is in flight, no prepare is still parked and no recall round is
//! open (`check_quiescent`). A panic of the machine (its own audit) is a failure too.
//!
//! The test fails with the seed and the command that replays it:
//!
//! * `SIM_SEEDS=<n>` runs seeds `1..=n` (default 20, sized for a debug build in CI);
//! * `SIM_SEED=<s>` replays seed `s` alone;
//! * `SIM_STEPS=<k>` sets the steps of workload per seed (default 10000);
//! * `SIM_TRACE=1` prints every action and batch (use with `SIM_SEED`);
//! * `SIM_FAULT=skip-limit-check|double-apply-grant` (machine bugs),
//!   `confirm-at-stage|recovery-drops-outbox|ignore-sync-error` (core bugs) or `lying-sync`
//!   (the disk's sync says Ok without making anything durable) switches an injected bug on,
//!   to watch the checks catch it (the fault tests at the end do this on their own).

use engine::command::{
    Admin, BodyHash, Command, ErrorCode, Event, FinishedTransfer, Fulfil, PeerMessage, Prepare,
    Reject, TimestampMs, TransferState,
};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::machine::account::{BankMode, Money};
use engine::machine::{home_of, Fault, Inbound, Outgoing, PartitionState};
use engine::runtime::{Core, CoreFault, Released};
use engine::storage::Storage;
use engine::EngineError;
use sha2::{Digest, Sha256};
use sim_disk::{DiskFaults, SimDisk};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

mod sim_disk;
mod sim_settlement;

use engine::machine::settlement::SettleStep;
use sim_settlement::{Send, Settling};

// ----- a PRNG whose output never changes --------------------------------------------------

/// splitmix64 (Steele, Lea, Flood 2014): a few lines, good enough statistics, and, unlike a
/// library generator, guaranteed to give the same numbers for a seed in every future build.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant for n this small).
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "empty range");
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }
}

// ----- configuration ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Config {
    /// Workload steps; the run then drains to quiescence and expires what is left.
    steps: u64,
    /// A bug switched on in every partition (see `engine::machine::Fault`).
    fault: Fault,
    /// A bug switched on in every partition's core (see `engine::runtime::CoreFault`).
    core_fault: CoreFault,
    /// The injected disk bug: `sync` says Ok without making anything durable.
    lying_disk: bool,
    /// The disks' injected (legitimate) faults.
    disk_faults: DiskFaults,
}

/// The disk faults of a normal run: now and then a failed sync or write, and most power
/// losses tear the last write they keep.
const SIM_DISK_FAULTS: DiskFaults = DiskFaults {
    sync_fail_ppm: 1_500,
    write_fail_ppm: 400,
    torn_write_ppm: 500_000,
};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

fn default_config() -> Config {
    // `SIM_FAULT` switches a bug on in the main test too, to watch a failure with
    // `SIM_TRACE=1` (the fault tests below run without it).
    let fault = match std::env::var("SIM_FAULT").as_deref() {
        Err(_) | Ok("") | Ok("none") => Fault::None,
        Ok("skip-limit-check") => Fault::SkipLimitCheck,
        Ok("double-apply-grant") => Fault::DoubleApplyGrant,
        Ok("count-commit-twice") => Fault::CountCommitTwice,
        Ok("ledger-drops-credit") => Fault::LedgerDropsCredit,
        Ok("confirm-at-stage" | "recovery-drops-outbox" | "ignore-sync-error" | "lying-sync") => {
            Fault::None
        }
        Ok(other) => panic!(
            "SIM_FAULT={other}: use skip-limit-check, double-apply-grant, count-commit-twice, \
             ledger-drops-credit, confirm-at-stage, \
             recovery-drops-outbox, ignore-sync-error or lying-sync"
        ),
    };
    let mut config = Config {
        steps: env_u64("SIM_STEPS").unwrap_or(10_000),
        fault,
        core_fault: CoreFault::None,
        lying_disk: false,
        disk_faults: SIM_DISK_FAULTS,
    };
    match std::env::var("SIM_FAULT").as_deref() {
        Ok("confirm-at-stage") => config.core_fault = CoreFault::ConfirmAtStage,
        Ok("recovery-drops-outbox") => config.core_fault = CoreFault::RecoveryDropsOutbox,
        Ok("ignore-sync-error") => config.core_fault = CoreFault::IgnoreSyncError,
        Ok("lying-sync") => config.lying_disk = true,
        _ => {}
    }
    config
}

/// The engine limits of the simulation: the defaults, with a short idle return so that
/// slices give headroom back within a run.
fn sim_limits() -> Limits {
    Limits {
        idle_return_ms: 300,
        // Often, so that recoveries start from snapshots and the WAL gets trimmed.
        snapshot_every_batches: 16,
        ..Limits::default()
    }
}

// ----- what the simulation does, step by step ---------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    // The world (DFSPs and the operator) appends commands to logs.
    Prepare,
    Fulfil,
    Reject,
    BadFulfil,
    DuplicatePrepare,
    ModifiedPrepare,
    DuplicateFulfil,
    Tick,
    SetNdc,
    FundsIn,
    FundsOutReserve,
    FundsOutFinish,
    CloseWindow,
    Settle,
    // The engine and the network.
    Apply,
    Flush,
    Release,
    Deliver,
    Crash,
}

/// Relative weights of the actions.
const ACTIONS: &[(Action, usize)] = &[
    (Action::Prepare, 24),
    (Action::Fulfil, 18),
    (Action::Reject, 2),
    (Action::BadFulfil, 1),
    (Action::DuplicatePrepare, 2),
    (Action::ModifiedPrepare, 1),
    (Action::DuplicateFulfil, 2),
    (Action::Tick, 6),
    (Action::SetNdc, 1),
    (Action::FundsIn, 2),
    (Action::FundsOutReserve, 1),
    (Action::FundsOutFinish, 1),
    (Action::CloseWindow, 1),
    (Action::Settle, 2),
    (Action::Apply, 36),
    (Action::Flush, 14),
    (Action::Release, 4),
    (Action::Deliver, 30),
    (Action::Crash, 1),
];

// ----- simulated nodes and partitions --------------------------------------------------------

/// Batches a partition may have staged ahead of its sync (the runtime keeps two; more here
/// so that a sync round covers several, and a crash finds several unsynced).
const STAGED_MAX: usize = 4;

/// One partition: the production core, and the commands waiting for it.
struct Part {
    node: usize,
    core: Core,
    /// Commands for this partition in arrival order. Client commands after the durable
    /// point stay across a crash (a client resends what it was not answered for); peer
    /// messages after it are lost with the node (their senders re-send what is
    /// unconfirmed).
    log: Vec<Command>,
    /// Log entries before this offset are staged in the core.
    applied: usize,
    /// Log offset after each batch, by batch number (0: before any).
    ends: BTreeMap<u64, usize>,
    /// The admin results of staged batches not yet released, by batch: told to the
    /// operator at release (or, if recovery replays their batch, at recovery).
    staged_admin: BTreeMap<u64, Vec<Event>>,
    /// The newest batch released (told): it must survive any crash.
    released_upto: u64,
    /// Events handed to the consumer and not acknowledged yet (re-published on a crash).
    unacked: Vec<u64>,
}

impl Part {
    fn state(&self) -> &PartitionState {
        self.core.state()
    }
}

/// What the archiver of a node is given for one released batch: (partition, batch,
/// finished transfers, position ledger entries).
type ArchiveJob = (
    usize,
    u64,
    Vec<FinishedTransfer>,
    Arc<Vec<engine::ledger::Entry>>,
);

/// A simulated node: one disk, several partitions, one syncer, one archiver.
struct Node {
    disk: Arc<SimDisk>,
    parts: Vec<usize>,
    /// Finished transfers released and not yet archived: (partition, batch, records).
    archive_queue: Vec<ArchiveJob>,
}

/// A released peer message on its way to its destination's log.
struct InTransit {
    from: u32,
    message: Outgoing,
    ready_at_step: u64,
}

// ----- what the world was told ---------------------------------------------------------------

/// The latest released state of a transfer, as its DFSPs know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Refused(ErrorCode),
    Reserved,
    Committed,
    Aborted,
}

/// Invariants 3 and 4 on one released event: a transfer is reserved at most once, reaches
/// one final state, and nothing a DFSP was told is ever contradicted or lost.
fn advance(told: Told, event: &Event) -> Result<Told, String> {
    let unexpected = || {
        Err(format!(
            "{} released while the transfer was {told:?}",
            name(event)
        ))
    };
    match event {
        Event::Reserved { .. } => match told {
            Told::Nothing => Ok(Told::Reserved),
            _ => unexpected(),
        },
        Event::PrepareRefused { code, .. } => match told {
            Told::Nothing => Ok(Told::Refused(*code)),
            _ => unexpected(),
        },
        Event::Committed { .. } => match told {
            Told::Reserved => Ok(Told::Committed),
            _ => unexpected(),
        },
        Event::Aborted { .. } => match told {
            Told::Reserved => Ok(Told::Aborted),
            _ => unexpected(),
        },
        Event::StateResent { state, .. } => {
            let expected = match told {
                Told::Reserved => TransferState::Reserved,
                Told::Committed => TransferState::Committed,
                Told::Aborted => TransferState::Aborted,
                Told::Nothing | Told::Refused(_) => return unexpected(),
            };
            if *state == expected {
                Ok(told)
            } else {
                Err(format!(
                    "state {state:?} re-sent for a transfer told {told:?}"
                ))
            }
        }
        Event::RequestRefused { code, .. } => {
            let acknowledged = matches!(told, Told::Reserved | Told::Committed | Told::Aborted);
            if *code == ErrorCode::TransferNotFound && acknowledged {
                Err(format!(
                    "3208 (not found) for a transfer told {told:?}: it was lost"
                ))
            } else {
                Ok(told)
            }
        }
        Event::AdminDone { .. } => Ok(told),
    }
}

fn name(event: &Event) -> &'static str {
    match event {
        Event::Reserved { .. } => "RESERVED",
        Event::PrepareRefused { .. } => "prepare refusal",
        Event::Committed { .. } => "COMMITTED",
        Event::Aborted { .. } => "ABORTED",
        Event::RequestRefused { .. } => "request refusal",
        Event::StateResent { .. } => "state re-sent",
        Event::AdminDone { .. } => "admin result",
    }
}

/// One transfer of the workload.
struct Tx {
    partition: u32,
    payer: AccountKey,
    payee: AccountKey,
    amount: i64,
    expiration_ms: TimestampMs,
    fulfilment: [u8; 32],
    /// The prepare as sent, for duplicates.
    prepare: Prepare,
    /// The fulfil or reject as sent, for duplicates.
    final_request: Option<Command>,
    told: Told,
}

/// Admin requests, by request id, to interpret their results.
#[derive(Debug, Clone, Copy)]
enum AdminOp {
    Create,
    Limits {
        account: AccountKey,
        position: i64,
        ndc: i64,
    },
    SetNdc {
        account: AccountKey,
        ndc: i64,
    },
    FundsIn {
        account: AccountKey,
        amount: i64,
    },
    OutReserve {
        account: AccountKey,
        amount: i64,
        funds_id: TransferId,
    },
    OutCommit {
        account: AccountKey,
        amount: i64,
        funds_id: TransferId,
    },
    OutAbort {
        account: AccountKey,
        amount: i64,
        funds_id: TransferId,
    },
    /// The close of `window` on one partition.
    CloseWindow {
        window: u64,
        partition: u32,
    },
    Settle {
        account: AccountKey,
        step: SettleStep,
        net: i64,
    },
}

impl AdminOp {
    /// Requests that may lower an account's headroom (they wait for a recall round).
    fn decreases(&self) -> Option<AccountKey> {
        match *self {
            AdminOp::Limits { account, .. }
            | AdminOp::SetNdc { account, .. }
            | AdminOp::OutReserve { account, .. } => Some(account),
            AdminOp::Settle {
                account,
                step: SettleStep::Reserve,
                net,
            } if net < 0 => Some(account),
            _ => None,
        }
    }
}

/// The limits of an account as implied by the admin results the operator was told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BankRef {
    ndc: Money,
    liquidity: Money,
    out_reserved: Money,
    base_position: Money,
}

impl BankRef {
    fn of(bank: &engine::machine::account::Bank) -> BankRef {
        BankRef {
            ndc: bank.ndc,
            liquidity: bank.liquidity,
            out_reserved: bank.funds_out_reserved,
            base_position: bank.base_position,
        }
    }

    /// `min(NDC, liquidity cover)`, as the machine computes it.
    fn limit(&self) -> Money {
        self.ndc.min(self.liquidity - self.out_reserved)
    }

    fn apply(&mut self, op: &AdminOp) {
        match *op {
            AdminOp::Create => {}
            AdminOp::Limits { position, ndc, .. } => {
                self.ndc = Money::from(ndc);
                self.base_position += Money::from(position);
            }
            AdminOp::SetNdc { ndc, .. } => self.ndc = Money::from(ndc),
            AdminOp::FundsIn { amount, .. } => self.liquidity += Money::from(amount),
            AdminOp::OutReserve { amount, .. } => self.out_reserved += Money::from(amount),
            AdminOp::OutCommit { amount, .. } => {
                self.out_reserved -= Money::from(amount);
                self.liquidity -= Money::from(amount);
            }
            AdminOp::OutAbort { amount, .. } => self.out_reserved -= Money::from(amount),
            AdminOp::CloseWindow { .. } => {}
            // What `machine::settlement` documents: a receiver's position rises back at the
            // reserve (undone by an abort); at the commit a sender's position and cover fall
            // by its net and a receiver's cover rises by it.
            AdminOp::Settle { step, net, .. } => {
                let net = Money::from(net);
                match step {
                    SettleStep::Reserve if net < 0 => self.base_position -= net,
                    SettleStep::Abort if net < 0 => self.base_position += net,
                    SettleStep::Reserve | SettleStep::Abort => {}
                    SettleStep::Commit => {
                        self.liquidity -= net;
                        if net > 0 {
                            self.base_position -= net;
                        }
                    }
                }
            }
        }
    }
}

/// What a run did, to show that the interesting paths were taken.
#[derive(Debug, Default, Clone)]
struct Stats {
    steps: u64,
    prepares: u64,
    reserved: u64,
    committed: u64,
    aborted: u64,
    expired: u64,
    refused_4001: u64,
    refused_4200: u64,
    refused_other: u64,
    modified_3106: u64,
    state_resent: u64,
    denials: u64,
    slice_reservations_checked: u64,
    recalls: u64,
    exact_grants: u64,
    chunk_grants: u64,
    returns: u64,
    deliveries: u64,
    duplicate_deliveries: u64,
    crashes: u64,
    crashes_with_outbox: u64,
    restarts: u64,
    power_losses: u64,
    storage_stops: u64,
    corruptions_caught: u64,
    snapshots: u64,
    trims: u64,
    resent: u64,
    dropped_in_transit: u64,
    republished: u64,
    sync_failures: u64,
    write_failures: u64,
    torn_writes: u64,
    torn_tails_cut: u64,
    frames_lost: u64,
    admin_ok: u64,
    admin_refused: u64,
    negative_bank: u64,
    windows_closed: u64,
    settlements_committed: u64,
    settlements_aborted: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.prepares += o.prepares;
        self.reserved += o.reserved;
        self.committed += o.committed;
        self.aborted += o.aborted;
        self.expired += o.expired;
        self.refused_4001 += o.refused_4001;
        self.refused_4200 += o.refused_4200;
        self.refused_other += o.refused_other;
        self.modified_3106 += o.modified_3106;
        self.state_resent += o.state_resent;
        self.denials += o.denials;
        self.slice_reservations_checked += o.slice_reservations_checked;
        self.recalls += o.recalls;
        self.exact_grants += o.exact_grants;
        self.chunk_grants += o.chunk_grants;
        self.returns += o.returns;
        self.deliveries += o.deliveries;
        self.duplicate_deliveries += o.duplicate_deliveries;
        self.crashes += o.crashes;
        self.crashes_with_outbox += o.crashes_with_outbox;
        self.restarts += o.restarts;
        self.power_losses += o.power_losses;
        self.storage_stops += o.storage_stops;
        self.corruptions_caught += o.corruptions_caught;
        self.snapshots += o.snapshots;
        self.trims += o.trims;
        self.resent += o.resent;
        self.dropped_in_transit += o.dropped_in_transit;
        self.republished += o.republished;
        self.sync_failures += o.sync_failures;
        self.write_failures += o.write_failures;
        self.torn_writes += o.torn_writes;
        self.torn_tails_cut += o.torn_tails_cut;
        self.frames_lost += o.frames_lost;
        self.admin_ok += o.admin_ok;
        self.admin_refused += o.admin_refused;
        self.negative_bank += o.negative_bank;
        self.windows_closed += o.windows_closed;
        self.settlements_committed += o.settlements_committed;
        self.settlements_aborted += o.settlements_aborted;
    }
}

/// A failed run: enough to replay it.
#[derive(Debug)]
struct Failure {
    seed: u64,
    config: Config,
    step: u64,
    what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fault = match self.config.fault {
            Fault::SkipLimitCheck => "SIM_FAULT=skip-limit-check ",
            Fault::DoubleApplyGrant => "SIM_FAULT=double-apply-grant ",
            Fault::CountCommitTwice => "SIM_FAULT=count-commit-twice ",
            Fault::LedgerDropsCredit => "SIM_FAULT=ledger-drops-credit ",
            Fault::None if self.config.lying_disk => "SIM_FAULT=lying-sync ",
            Fault::None => match self.config.core_fault {
                CoreFault::ConfirmAtStage => "SIM_FAULT=confirm-at-stage ",
                CoreFault::RecoveryDropsOutbox => "SIM_FAULT=recovery-drops-outbox ",
                CoreFault::IgnoreSyncError => "SIM_FAULT=ignore-sync-error ",
                CoreFault::None => "",
            },
        };
        write!(
            f,
            "simulation seed {} failed at step {}: {}\n  replay: {fault}SIM_SEED={} \
             SIM_STEPS={} cargo test --release -p engine --test sim simulation \
             (add SIM_TRACE=1 to see every step)",
            self.seed, self.step, self.what, self.seed, self.config.steps
        )
    }
}

// ----- the simulation -----------------------------------------------------------------------

struct Sim {
    rng: Rng,
    config: Config,
    limits: Limits,
    partitions: u32,
    /// Steps taken (workload and drain); reported on failure.
    step: u64,
    now_ms: TimestampMs,
    parts: Vec<Part>,
    nodes: Vec<Node>,
    /// `confirmed[to][from]`: partition `to` has durably applied `from`'s messages up to
    /// this number (published by `to` at its releases).
    confirmed: Vec<Vec<u64>>,
    /// Every event published, by (partition, event number): a republication after a
    /// restart must be identical.
    observed: HashMap<(u32, u64), Arc<Event>>,
    transit: Vec<InTransit>,
    /// Every peer message generated, by (from, to, seq), until its destination has applied
    /// it durably: the in-flight headroom of invariant 1 is computed from it.
    sent: BTreeMap<(u32, u32, u64), PeerMessage>,
    accounts: Vec<AccountKey>,
    /// Indices into `accounts` of the payers that send most prepares.
    hot: Vec<usize>,
    /// Sum of initial positions per currency (invariant 2).
    initial: BTreeMap<Currency, Money>,
    transfers: Vec<Tx>,
    by_id: HashMap<TransferId, usize>,
    /// Transfers told RESERVED whose payee has not answered yet.
    awaiting_payee: Vec<usize>,
    /// Transfers told RESERVED at some point (duplicate prepares target these).
    acknowledged: Vec<usize>,
    /// Transfers whose fulfil or reject was sent (duplicate fulfils target these).
    answered: Vec<usize>,
    admin_ops: HashMap<u64, AdminOp>,
    next_request_id: u64,
    next_transfer: u64,
    banks: BTreeMap<AccountKey, BankRef>,
    /// Funds-out reservations told successful and not yet committed or aborted.
    funds_outs: Vec<(AccountKey, TransferId, i64)>,
    /// The operator's settlement windows and settlements.
    settling: Settling,
    stats: Stats,
    /// `SIM_TRACE=1`: print every action and batch (use with `SIM_SEED`).
    trace: bool,
}

const START_MS: TimestampMs = 1_700_000_000_000;

impl Sim {
    fn new(seed: u64, config: Config) -> Sim {
        let mut rng = Rng::new(seed);
        let partitions = rng.range(4, 8) as u32;
        let limits = sim_limits();
        let node_count = rng.range(1, 3) as usize;
        let mut nodes: Vec<Node> = (0..node_count)
            .map(|n| {
                let disk = Arc::new(SimDisk::new(
                    seed.wrapping_mul(31).wrapping_add(n as u64),
                    config.disk_faults,
                ));
                disk.set_lying_sync(config.lying_disk);
                Node {
                    disk,
                    parts: Vec::new(),
                    archive_queue: Vec::new(),
                }
            })
            .collect();
        let parts = (0..partitions)
            .map(|p| {
                let node = p as usize % node_count;
                nodes[node].parts.push(p as usize);
                let disk = &nodes[node].disk;
                let epoch = disk.next_epoch(p).expect("simulated epoch");
                let mut core =
                    Core::recover(&**disk, p, partitions, epoch, &limits, config.core_fault)
                        .expect("an empty disk recovers");
                core.state_mut().fault = config.fault;
                core.set_fault(config.core_fault);
                Part {
                    node,
                    core,
                    log: Vec::new(),
                    applied: 0,
                    ends: BTreeMap::from([(0, 0)]),
                    staged_admin: BTreeMap::new(),
                    released_upto: 0,
                    unacked: Vec::new(),
                }
            })
            .collect();
        for node in &nodes {
            // An injected failure of this first sync: the hub fails to open; again.
            let opened = (0..100).any(|_| {
                let synced = node.disk.sync().is_ok();
                node.disk.reopen();
                synced
            });
            assert!(opened, "a simulated disk never synced");
        }
        // Six DFSPs in USD, the first three also in XOF.
        let mut accounts = Vec::new();
        for (currency, count) in [("USD", 6), ("XOF", 3)] {
            for n in 1..=count {
                accounts.push(AccountKey::new(
                    FspId::new(&format!("dfsp{n}")).expect("fsp id"),
                    Currency::new(currency).expect("currency"),
                ));
            }
        }
        let hot = vec![rng.below(6), 6 + rng.below(3)];
        Sim {
            rng,
            config,
            limits,
            partitions,
            step: 0,
            now_ms: START_MS,
            parts,
            nodes,
            confirmed: vec![vec![0; partitions as usize]; partitions as usize],
            observed: HashMap::new(),
            transit: Vec::new(),
            sent: BTreeMap::new(),
            accounts,
            hot,
            initial: BTreeMap::new(),
            transfers: Vec::new(),
            by_id: HashMap::new(),
            awaiting_payee: Vec::new(),
            acknowledged: Vec::new(),
            answered: Vec::new(),
            admin_ops: HashMap::new(),
            next_request_id: 1,
            next_transfer: 1,
            banks: BTreeMap::new(),
            funds_outs: Vec::new(),
            settling: Settling::new(),
            stats: Stats::default(),
            trace: env_u64("SIM_TRACE").is_some_and(|t| t != 0),
        }
    }

    /// The whole run: setup, random workload, drain, expire everything, final audit.
    fn run(&mut self) -> Result<Stats, String> {
        self.setup()?;
        for _ in 0..self.config.steps {
            self.step += 1;
            self.now_ms += self.rng.range(0, 2);
            let action = self.pick_action();
            if self.trace {
                eprintln!("step {} at {}: {action:?}", self.step, self.now_ms);
            }
            self.act(action)?;
            self.check_ledgers()?;
        }
        self.finish()?;
        self.stats.steps = self.step;
        self.stats.windows_closed = self.settling.windows_closed;
        self.stats.settlements_committed = self.settling.settlements_committed;
        self.stats.settlements_aborted = self.settling.settlements_aborted;
        for node in &self.nodes {
            let disk = node.disk.stats();
            self.stats.sync_failures += disk.sync_failures;
            self.stats.write_failures += disk.write_failures;
            self.stats.torn_writes += disk.torn_writes;
            self.stats.torn_tails_cut += disk.torn_tails_cut;
            self.stats.frames_lost += disk.frames_lost;
        }
        Ok(self.stats.clone())
    }

    fn pick_action(&mut self) -> Action {
        let total: usize = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.below(total);
        for (action, weight) in ACTIONS {
            if roll < *weight {
                return *action;
            }
            roll -= weight;
        }
        unreachable!("weights cover the roll")
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::Prepare => self.prepare(),
            Action::Fulfil => self.answer(Answer::Fulfil),
            Action::Reject => self.answer(Answer::Reject),
            Action::BadFulfil => self.answer(Answer::BadFulfil),
            Action::DuplicatePrepare => self.duplicate_prepare(false),
            Action::ModifiedPrepare => self.duplicate_prepare(true),
            Action::DuplicateFulfil => self.duplicate_final(),
            Action::Tick => self.tick(),
            Action::SetNdc => {
                let account = self.admin_account();
                let ndc = self.rng.range(0, 9_000);
                self.admin(AdminOp::SetNdc { account, ndc });
            }
            Action::FundsIn => {
                let account = self.admin_account();
                let amount = self.rng.range(500, 4_000);
                self.admin(AdminOp::FundsIn { account, amount });
            }
            Action::FundsOutReserve => {
                let account = self.admin_account();
                let amount = self.rng.range(100, 3_000);
                let funds_id = self.new_id();
                self.admin(AdminOp::OutReserve {
                    account,
                    amount,
                    funds_id,
                });
            }
            Action::FundsOutFinish => {
                if !self.funds_outs.is_empty() {
                    let index = self.rng.below(self.funds_outs.len());
                    let (account, funds_id, amount) = self.funds_outs.swap_remove(index);
                    let op = if self.rng.chance(50) {
                        AdminOp::OutCommit {
                            account,
                            amount,
                            funds_id,
                        }
                    } else {
                        AdminOp::OutAbort {
                            account,
                            amount,
                            funds_id,
                        }
                    };
                    self.admin(op);
                }
            }
            Action::CloseWindow => {
                let send = self.settling.close();
                self.send_settlement(send);
            }
            Action::Settle => {
                let commit = self.rng.chance(75);
                let send = self.settling.advance(commit);
                self.send_settlement(send);
            }
            Action::Apply => {
                let ready: Vec<usize> = (0..self.parts.len())
                    .filter(|&p| self.parts[p].applied < self.parts[p].log.len())
                    .collect();
                if !ready.is_empty() {
                    let p = ready[self.rng.below(ready.len())];
                    // A full pipeline waits for its sync first, as the actor does.
                    if self.parts[p].core.staged_len() >= STAGED_MAX {
                        let node = self.parts[p].node;
                        self.flush(node)?;
                    }
                    let size = self.rng.range(1, 12) as usize;
                    self.apply(p, size)?;
                }
            }
            Action::Flush => {
                let node = self.rng.below(self.nodes.len());
                self.flush(node)?;
                if self.rng.chance(50) {
                    self.archive(node)?;
                }
            }
            Action::Release => {
                let p = self.rng.below(self.parts.len());
                self.release(p)?;
            }
            Action::Deliver => {
                // A few messages whose delay is over, in random order.
                for _ in 0..self.rng.range(1, 6) {
                    let ready: Vec<usize> = (0..self.transit.len())
                        .filter(|&i| self.transit[i].ready_at_step <= self.step)
                        .collect();
                    if ready.is_empty() {
                        break;
                    }
                    let index = ready[self.rng.below(ready.len())];
                    self.deliver(index, true);
                }
            }
            // Half as often as the weights allow: a whole node restarts, and each restart
            // re-sends every unconfirmed message.
            Action::Crash if self.rng.chance(50) => {}
            Action::Crash => {
                let node = self.rng.below(self.nodes.len());
                let power_loss = self.rng.chance(50);
                self.crash(node, power_loss)?;
            }
        }
        Ok(())
    }

    // ----- the world: DFSPs and the operator ----------------------------------------------

    fn new_id(&mut self) -> TransferId {
        let counter = self.next_transfer;
        self.next_transfer += 1;
        let r = self.rng.next();
        let text = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            r >> 32,
            (r >> 16) & 0xffff,
            (r >> 4) & 0xfff,
            r & 0xfff,
            counter
        );
        TransferId::parse(&text).expect("generated UUID is valid")
    }

    fn transfer_partition(&self, id: &TransferId) -> u32 {
        let count = sharding::PartitionCount::new(self.partitions).expect("partition count");
        sharding::transfer_partition(id.as_str(), count)
    }

    fn home(&self, account: &AccountKey) -> u32 {
        home_of(account, self.partitions)
    }

    fn append(&mut self, partition: u32, command: Command) {
        self.parts[partition as usize].log.push(command);
    }

    fn admin_account(&mut self) -> AccountKey {
        // Mostly the hot payers: their limits are the ones that bind.
        let index = if self.rng.chance(60) {
            self.hot[self.rng.below(self.hot.len())]
        } else {
            self.rng.below(self.accounts.len())
        };
        self.accounts[index]
    }

    /// Appends what the settlement driver asks for to the partitions' logs.
    fn send_settlement(&mut self, send: Send) {
        match send {
            Send::Nothing => {}
            Send::Close { window } => {
                for partition in 0..self.partitions {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    self.admin_ops
                        .insert(request_id, AdminOp::CloseWindow { window, partition });
                    let command = Command::Admin {
                        now_ms: self.now_ms,
                        request_id,
                        admin: Admin::CloseWindow { window },
                    };
                    self.append(partition, command);
                }
            }
            Send::Steps {
                settlement,
                step,
                nets,
            } => {
                for (account, net) in nets {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    self.admin_ops
                        .insert(request_id, AdminOp::Settle { account, step, net });
                    if let Some(current) = &mut self.settling.current {
                        current.waiting.insert(request_id);
                    }
                    let command = Command::Admin {
                        now_ms: self.now_ms,
                        request_id,
                        admin: Admin::Settle {
                            account,
                            settlement,
                            step,
                            net,
                        },
                    };
                    let home = self.home(&account);
                    self.append(home, command);
                }
            }
        }
    }

    /// Sends an admin request to the account's home, remembering it by request id.
    fn admin(&mut self, op: AdminOp) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.admin_ops.insert(request_id, op);
        let (account, admin) = match op {
            AdminOp::Create => unreachable!("accounts are created in setup"),
            AdminOp::CloseWindow { .. } | AdminOp::Settle { .. } => {
                unreachable!("settlement requests are sent by send_settlement")
            }
            AdminOp::Limits {
                account,
                position,
                ndc,
            } => (
                account,
                Admin::InitialPositionAndLimits {
                    account,
                    position,
                    ndc,
                },
            ),
            AdminOp::SetNdc { account, ndc } => (account, Admin::SetNdc { account, ndc }),
            AdminOp::FundsIn { account, amount } => {
                let funds_id = self.new_id();
                (
                    account,
                    Admin::FundsIn {
                        account,
                        amount,
                        funds_id,
                    },
                )
            }
            AdminOp::OutReserve {
                account,
                amount,
                funds_id,
            } => (
                account,
                Admin::FundsOutReserve {
                    account,
                    amount,
                    funds_id,
                },
            ),
            AdminOp::OutCommit {
                account, funds_id, ..
            } => (account, Admin::FundsOutCommit { account, funds_id }),
            AdminOp::OutAbort {
                account, funds_id, ..
            } => (account, Admin::FundsOutAbort { account, funds_id }),
        };
        let command = Command::Admin {
            now_ms: self.now_ms,
            request_id,
            admin,
        };
        let home = self.home(&account);
        self.append(home, command);
    }

    /// Accounts on every partition, limits and funds at home, then quiescence.
    fn setup(&mut self) -> Result<(), String> {
        for account in self.accounts.clone() {
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            self.admin_ops.insert(request_id, AdminOp::Create);
            for p in 0..self.partitions {
                self.append(
                    p,
                    Command::Admin {
                        now_ms: self.now_ms,
                        request_id,
                        admin: Admin::CreateAccount { account },
                    },
                );
            }
        }
        let mut initial: BTreeMap<Currency, Money> = BTreeMap::new();
        for index in 0..self.accounts.len() {
            let account = self.accounts[index];
            let hot = self.hot.contains(&index);
            let position = self.rng.range(0, 500);
            let ndc = if hot {
                self.rng.range(1_500, 6_000)
            } else {
                self.rng.range(3_000, 9_000)
            };
            let funds = if hot {
                self.rng.range(1_000, 6_000)
            } else {
                self.rng.range(3_000, 9_000)
            };
            *initial.entry(account.currency).or_default() += Money::from(position);
            self.admin(AdminOp::Limits {
                account,
                position,
                ndc,
            });
            self.admin(AdminOp::FundsIn {
                account,
                amount: funds,
            });
        }
        self.drain()?;
        // From now on the positions of each currency must sum to the initial ones.
        self.initial = initial;
        self.check_ledgers()
    }

    fn prepare(&mut self) {
        let payer_index = if self.rng.chance(60) {
            self.hot[self.rng.below(self.hot.len())]
        } else {
            self.rng.below(self.accounts.len())
        };
        let payer = self.accounts[payer_index];
        let payees: Vec<AccountKey> = self
            .accounts
            .iter()
            .filter(|a| a.currency == payer.currency && a.fsp != payer.fsp)
            .copied()
            .collect();
        let payee = payees[self.rng.below(payees.len())];
        let amount = if self.rng.chance(10) {
            self.rng.range(100, 600)
        } else {
            self.rng.range(1, 120)
        };
        let transfer_id = self.new_id();
        let fulfilment: [u8; 32] = self.rng.bytes();
        let prepare = Prepare {
            transfer_id,
            payer: payer.fsp,
            payee: payee.fsp,
            currency: payer.currency,
            amount,
            condition: Sha256::digest(fulfilment).into(),
            expiration_ms: self.now_ms + self.rng.range(100, 2_500),
            body_hash: self.rng.bytes(),
            payload: Vec::new(),
        };
        let partition = self.transfer_partition(&transfer_id);
        self.by_id.insert(transfer_id, self.transfers.len());
        self.transfers.push(Tx {
            partition,
            payer,
            payee,
            amount,
            expiration_ms: prepare.expiration_ms,
            fulfilment,
            prepare: prepare.clone(),
            final_request: None,
            told: Told::Nothing,
        });
        self.stats.prepares += 1;
        let now_ms = self.now_ms;
        self.append(partition, Command::Prepare { now_ms, prepare });
    }

    /// The payee answers a transfer it was told about.
    fn answer(&mut self, answer: Answer) {
        // Pick a transfer still waiting for its payee (entries go stale lazily).
        while !self.awaiting_payee.is_empty() {
            let slot = self.rng.below(self.awaiting_payee.len());
            let index = self.awaiting_payee.swap_remove(slot);
            let tx = &self.transfers[index];
            if tx.told != Told::Reserved || tx.final_request.is_some() {
                continue;
            }
            let transfer_id = tx.prepare.transfer_id;
            let source = tx.payee.fsp;
            let body_hash: BodyHash = self.rng.bytes();
            let command = match answer {
                Answer::Fulfil | Answer::BadFulfil => {
                    let fulfilment = if answer == Answer::Fulfil {
                        tx.fulfilment
                    } else {
                        self.rng.bytes()
                    };
                    Command::Fulfil {
                        now_ms: self.now_ms,
                        fulfil: Fulfil {
                            transfer_id,
                            source,
                            fulfilment,
                            completed_ms: self.now_ms,
                            notify_payee: self.rng.chance(30),
                            body_hash,
                            payload: Vec::new(),
                        },
                    }
                }
                Answer::Reject => Command::Reject {
                    now_ms: self.now_ms,
                    reject: Reject {
                        transfer_id,
                        source,
                        error_code: 5100 + self.rng.range(0, 5) as u16,
                        body_hash,
                        payload: Vec::new(),
                    },
                },
            };
            let partition = self.transfers[index].partition;
            self.transfers[index].final_request = Some(command.clone());
            self.answered.push(index);
            self.append(partition, command);
            return;
        }
    }

    /// A DFSP resends a prepare it was answered for (same body), or reuses its id for a
    /// different one (which must get 3106).
    fn duplicate_prepare(&mut self, modified: bool) {
        if self.acknowledged.is_empty() {
            return;
        }
        let index = self.acknowledged[self.rng.below(self.acknowledged.len())];
        let mut prepare = self.transfers[index].prepare.clone();
        if modified {
            prepare.body_hash = self.rng.bytes();
            prepare.amount += 1;
        }
        let partition = self.transfers[index].partition;
        let now_ms = self.now_ms;
        self.append(partition, Command::Prepare { now_ms, prepare });
    }

    /// A payee resends its fulfil or reject.
    fn duplicate_final(&mut self) {
        if self.answered.is_empty() {
            return;
        }
        let index = self.answered[self.rng.below(self.answered.len())];
        let tx = &self.transfers[index];
        let mut command = tx
            .final_request
            .clone()
            .expect("answered transfers have one");
        // The resend carries the hub time it arrives at.
        match &mut command {
            Command::Fulfil { now_ms, .. } | Command::Reject { now_ms, .. } => {
                *now_ms = self.now_ms;
            }
            _ => unreachable!("final requests are fulfils or rejects"),
        }
        let partition = tx.partition;
        self.append(partition, command);
    }

    fn tick(&mut self) {
        let command = Command::Tick {
            now_ms: self.now_ms,
        };
        if self.rng.chance(30) {
            for p in 0..self.partitions {
                self.append(p, command.clone());
            }
        } else {
            let p = self.rng.below(self.partitions as usize) as u32;
            self.append(p, command);
        }
    }

    // ----- the engine and the network -------------------------------------------------------

    /// Stages up to `size` log entries of partition `p` as one batch in its core and
    /// writes its WAL frame to the node's disk.
    fn apply(&mut self, p: usize, size: usize) -> Result<(), String> {
        let part = &mut self.parts[p];
        if part.core.staged_len() >= STAGED_MAX {
            return Ok(());
        }
        let end = (part.applied + size).min(part.log.len());
        if end == part.applied {
            return Ok(());
        }
        let commands: Vec<Command> = part.log[part.applied..end].to_vec();
        part.applied = end;
        let node = part.node;
        let disk = self.nodes[node].disk.clone();
        let banks_before = self.home_banks(p);
        // The runtime looks finished transfers up in its archive.
        let mut lookup = |id: &TransferId, _now_ms: Option<TimestampMs>| disk.finished(id);
        let staged = self.parts[p]
            .core
            .stage(commands.clone(), &mut lookup)
            .map_err(|e| format!("partition {p} could not stage a batch: {e}"))?;
        let batch_seq = staged.batch_seq;
        let body = staged.body.to_vec();
        let confirm_now = staged.confirm_now;
        self.parts[p].ends.insert(batch_seq, end);
        let part = &self.parts[p];
        let (_, output) = part.core.newest_staged().expect("just staged");
        // Replaying the log after a crash must regenerate the very same messages.
        let mut new_sent = Vec::new();
        for message in &output.messages {
            let key = (p as u32, message.to, message.seq);
            match self.sent.get(&key) {
                Some(earlier) if *earlier != message.message => {
                    return Err(format!(
                        "partition {p} generated message seq {} to {} twice with different \
                         content: {earlier:?} then {:?} (a released message was lost, or \
                         replay is not deterministic)",
                        message.seq, message.to, message.message
                    ));
                }
                Some(_) => {}
                None => new_sent.push((key, message.message.clone())),
            }
            match &message.message {
                PeerMessage::Recall { .. } => self.stats.recalls += 1,
                PeerMessage::Grant { distributed, .. } => {
                    if *distributed {
                        self.stats.chunk_grants += 1;
                    } else {
                        self.stats.exact_grants += 1;
                    }
                }
                PeerMessage::Return { .. } => self.stats.returns += 1,
                _ => {}
            }
        }
        if self.trace {
            eprintln!("  partition {p} stages batch {batch_seq}: {commands:#?}\n  -> {output:#?}");
        }
        // The machine's own audit of the partition's ledger (it panics when broken).
        part.state().audit();
        self.stats.denials += output.denials.len() as u64;
        self.stats.slice_reservations_checked +=
            self.check_batch(p, &commands, &banks_before, output)?;
        let admin: Vec<Event> = output
            .events
            .iter()
            .filter(|e| matches!(e, Event::AdminDone { .. }))
            .cloned()
            .collect();
        self.sent.extend(new_sent);
        if !admin.is_empty() {
            self.parts[p].staged_admin.insert(batch_seq, admin);
        }
        if !confirm_now.is_empty() {
            self.confirm(p, &confirm_now);
        }
        if let Err(e) = self.nodes[node]
            .disk
            .append_encoded(p as u32, batch_seq, &body)
        {
            self.stats.storage_stops += 1;
            if self.trace {
                eprintln!("  partition {p}: {e}: node {node} stops and restarts");
            }
            return self.restart(node, false);
        }
        Ok(())
    }

    /// Partition `p` has durably applied its senders' messages up to these watermarks:
    /// published for the senders, who drop what is confirmed from their unconfirmed sets
    /// at their next release.
    fn confirm(&mut self, p: usize, confirms: &[(u32, u64)]) {
        for &(from, watermark) in confirms {
            self.confirmed[p][from as usize] = watermark;
        }
        // A message this partition has durably applied can never be in flight again.
        let confirmed = &self.confirmed[p];
        self.sent
            .retain(|&(from, to, seq), _| to != p as u32 || seq > confirmed[from as usize]);
    }

    /// One sync round of node `node` (the syncer): one `sync` covering every staged
    /// batch of every partition of the node, then each releases its batches in order.
    fn flush(&mut self, node: usize) -> Result<(), String> {
        let synced = self.nodes[node].disk.sync().map_err(|e| e.to_string());
        if self.trace {
            eprintln!("  node {node} syncs: {synced:?}");
        }
        for p in self.nodes[node].parts.clone() {
            while self.parts[p].core.staged_len() > 0 {
                let result = synced.clone().map_err(EngineError::Storage);
                let released = match self.parts[p].core.release_oldest(result) {
                    Ok(released) => released,
                    Err(e) => {
                        // As the actor does: the partition stops; the operator restarts
                        // the node, which recovers from what really is on its disk.
                        self.stats.storage_stops += 1;
                        if self.trace {
                            eprintln!("  partition {p} stops: {e}: node {node} restarts");
                        }
                        return self.restart(node, false);
                    }
                };
                self.on_released(p, released)?;
            }
            if self.parts[p].core.snapshot_due() {
                let snapshot = self.parts[p].core.snapshot();
                self.stats.snapshots += 1;
                let disk = self.nodes[node].disk.clone();
                let mut written = disk.write_snapshot(p as u32, &snapshot);
                // The trimmer: makes the snapshot durable, then drops the WAL before it.
                if written.is_ok() && self.rng.chance(60) {
                    written = disk.truncate_batches(p as u32, snapshot.batch_seq);
                    self.stats.trims += 1;
                }
                if let Err(e) = written {
                    self.stats.storage_stops += 1;
                    if self.trace {
                        eprintln!("  partition {p} snapshot: {e}: node {node} restarts");
                    }
                    return self.restart(node, false);
                }
            }
        }
        Ok(())
    }

    /// What the core released for a durable batch goes out: confirmations, messages (on
    /// the network), finished transfers (to the archiver), admin results (told).
    fn on_released(&mut self, p: usize, released: Released) -> Result<(), String> {
        let part = &mut self.parts[p];
        assert!(released.batch_seq > part.released_upto, "released in order");
        part.released_upto = released.batch_seq;
        part.staged_admin.remove(&released.batch_seq);
        self.confirm(p, &released.confirmations);
        let confirmed = &self.confirmed;
        let me = p;
        self.parts[p]
            .core
            .prune_unconfirmed(&|to| confirmed[to as usize][me]);
        for message in released.messages {
            let ready_at_step = self.step + self.rng.below(20) as u64;
            self.transit.push(InTransit {
                from: p as u32,
                message,
                ready_at_step,
            });
        }
        if !released.finished.is_empty() || !released.ledger.is_empty() {
            let node = self.parts[p].node;
            self.nodes[node].archive_queue.push((
                p,
                released.batch_seq,
                released.finished,
                released.ledger,
            ));
        }
        for event in &released.admin_done {
            self.observe(event)?;
        }
        Ok(())
    }

    /// The archiver of node `node`: writes what was released, makes it durable, then
    /// lets the partitions drop it from their caches.
    fn archive(&mut self, node: usize) -> Result<(), String> {
        if self.nodes[node].archive_queue.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::take(&mut self.nodes[node].archive_queue);
        let disk = self.nodes[node].disk.clone();
        let mut written = Ok(());
        for (_, _, records, ledger) in &jobs {
            written = written
                .and_then(|()| disk.archive(records))
                .and_then(|()| disk.ledger_add(ledger));
        }
        if let Err(e) = written.and_then(|()| disk.sync_archive()) {
            self.stats.storage_stops += 1;
            if self.trace {
                eprintln!("  node {node} archiver: {e}: node restarts");
            }
            return self.restart(node, false);
        }
        for (p, batch_seq, _, _) in jobs {
            self.parts[p].core.trim_finished_cache(batch_seq);
        }
        Ok(())
    }

    /// The event consumer of partition `p`: takes every released event; acknowledges
    /// some at once, the rest at its next turn (a crash before that publishes them again).
    fn release(&mut self, p: usize) -> Result<(), String> {
        for seq in std::mem::take(&mut self.parts[p].unacked) {
            self.parts[p].core.ack_event(seq);
        }
        while let Some((seq, event)) = self.parts[p].core.next_event() {
            self.parts[p].core.event_dispatched(seq);
            match self.observed.get(&(p as u32, seq)) {
                // At least once: a result published again after a restart must be the
                // very result published before it.
                Some(earlier) if **earlier != *event => {
                    return Err(format!(
                        "partition {p} published event {seq} as {earlier:?} and, after a \
                         restart, as {event:?}: a released result was lost"
                    ));
                }
                Some(_) => self.stats.republished += 1,
                None => {
                    self.observe(&event)?;
                    self.observed.insert((p as u32, seq), event);
                }
            }
            if self.rng.chance(70) {
                self.parts[p].core.ack_event(seq);
            } else {
                self.parts[p].unacked.push(seq);
            }
        }
        Ok(())
    }

    /// Appends a message in flight to its destination's log; sometimes it is delivered
    /// again later (a redelivery the destination must ignore).
    fn deliver(&mut self, index: usize, may_duplicate: bool) {
        let InTransit { from, message, .. } = self.transit.swap_remove(index);
        self.stats.deliveries += 1;
        if may_duplicate && self.rng.chance(5) {
            self.stats.duplicate_deliveries += 1;
            self.transit.push(InTransit {
                from,
                message: message.clone(),
                ready_at_step: self.step + self.rng.below(60) as u64,
            });
        }
        let Outgoing { to, seq, message } = message;
        self.append(to, Command::Peer { from, seq, message });
    }

    /// A whole-node crash (all its partitions), with or without a power loss first;
    /// sometimes a byte of an old record rots before the restart.
    fn crash(&mut self, node: usize, power_loss: bool) -> Result<(), String> {
        self.stats.crashes += 1;
        if self.nodes[node]
            .parts
            .iter()
            .any(|&p| self.parts[p].core.events_pending() > 0)
        {
            self.stats.crashes_with_outbox += 1;
        }
        self.restart(node, power_loss)
    }

    /// Drops every core of the node and recovers them from its disk, as `Hub::open` does
    /// (a new owner epoch per partition, `Core::recover`, one sync), then re-sends what
    /// is unconfirmed, both ways.
    fn restart(&mut self, node: usize, power_loss: bool) -> Result<(), String> {
        self.stats.restarts += 1;
        let disk = self.nodes[node].disk.clone();
        if power_loss {
            self.stats.power_losses += 1;
            disk.power_loss();
        } else {
            disk.reopen();
        }
        if self.trace {
            eprintln!("  node {node} restarts (power loss: {power_loss})");
        }
        self.nodes[node].archive_queue.clear();
        let parts = self.nodes[node].parts.clone();
        let mut corrupted = if self.rng.chance(10) {
            disk.corrupt_old_record()
        } else {
            None
        };
        let mut cores = Vec::new();
        for attempt in 0.. {
            if attempt == 20 {
                return Err(format!("node {node} did not come back after 20 attempts"));
            }
            cores.clear();
            let mut refused = None;
            for &p in &parts {
                let epoch = disk
                    .next_epoch(p as u32)
                    .map_err(|e| format!("epoch of partition {p}: {e}"))?;
                match Core::recover(
                    &*disk,
                    p as u32,
                    self.partitions,
                    epoch,
                    &self.limits,
                    self.config.core_fault,
                ) {
                    Ok(core) => cores.push(core),
                    Err(e) => {
                        refused = Some((p, e));
                        break;
                    }
                }
            }
            match (refused, corrupted) {
                (None, None) => {}
                (None, Some(q)) => {
                    return Err(format!(
                        "partition {q} recovered over a corrupted synced record: the damage \
                         was accepted silently"
                    ))
                }
                (Some((p, EngineError::Corrupt { partition, .. })), Some(q))
                    if p as u32 == q && partition == q =>
                {
                    // Refused, as it must be. An operator repairs the record; restart.
                    self.stats.corruptions_caught += 1;
                    disk.repair();
                    corrupted = None;
                    disk.reopen();
                    continue;
                }
                (Some((p, e)), _) => {
                    return Err(format!("partition {p} could not recover: {e}"));
                }
            }
            if disk.sync().is_err() {
                // A fault in the first sync: the node fails to open; try again.
                disk.reopen();
                continue;
            }
            break;
        }
        for (&p, mut core) in parts.iter().zip(cores) {
            core.state_mut().fault = self.config.fault;
            core.set_fault(self.config.core_fault);
            let recovered = core.state().batch_seq;
            let part = &mut self.parts[p];
            if recovered < part.released_upto {
                return Err(format!(
                    "partition {p} released batch {} before the restart but recovered only \
                     to batch {recovered}: a released result is no longer the state of record",
                    part.released_upto
                ));
            }
            // Batches that recovery replayed without their release: their admin results
            // are now the state of record (the operator learns them on its retry).
            let replayed: Vec<Event> = part
                .staged_admin
                .range(..=recovered)
                .flat_map(|(_, events)| events.iter().cloned())
                .collect();
            part.staged_admin.clear();
            part.released_upto = recovered;
            let offset = *part
                .ends
                .get(&recovered)
                .ok_or_else(|| format!("partition {p}: no log offset for batch {recovered}"))?;
            part.ends.retain(|batch, _| *batch <= recovered);
            // Client commands not durably applied are sent again; peer messages are lost.
            let lost: Vec<Command> = part.log.split_off(offset);
            part.log.extend(
                lost.into_iter()
                    .filter(|c| !matches!(c, Command::Peer { .. })),
            );
            part.applied = offset;
            part.unacked.clear();
            let outbound = core.state().outbound_seq.clone();
            part.core = core;
            // Messages of batches the node lost were never released: forget them.
            self.sent
                .retain(|&(from, to, seq), _| from != p as u32 || seq <= outbound[to as usize]);
            for event in &replayed {
                self.observe(event)?;
            }
        }
        // The network drops what was on its way from or to the node (its lanes died with
        // it); what is unconfirmed is re-sent: the restarted node's own messages, and
        // everybody else's to the restarted node.
        let dropped_before = self.transit.len();
        let on_node = |p: u32| parts.contains(&(p as usize));
        self.transit
            .retain(|t| !on_node(t.from) && !on_node(t.message.to));
        self.stats.dropped_in_transit += (dropped_before - self.transit.len()) as u64;
        let mut resend = Vec::new();
        for (q, part) in self.parts.iter().enumerate() {
            for message in part.core.unconfirmed().values() {
                if part.node == node || parts.contains(&(message.to as usize)) {
                    resend.push((q as u32, message.clone()));
                }
            }
        }
        self.stats.resent += resend.len() as u64;
        for (from, message) in resend {
            let ready_at_step = self.step + self.rng.below(20) as u64;
            self.transit.push(InTransit {
                from,
                message,
                ready_at_step,
            });
        }
        for &p in &parts {
            self.check_after_crash(p)?;
        }
        Ok(())
    }

    /// Applies one released event to what the world knows.
    fn observe(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::AdminDone {
                request_id, code, ..
            } => {
                let op = *self
                    .admin_ops
                    .get(request_id)
                    .ok_or_else(|| format!("result for unknown admin request {request_id}"))?;
                match (op, code) {
                    (AdminOp::CloseWindow { window, partition }, None) => {
                        let parts: Vec<&PartitionState> =
                            self.parts.iter().map(Part::state).collect();
                        self.settling
                            .close_acknowledged(window, partition, &parts)?;
                    }
                    (AdminOp::Settle { .. }, None) => self.settling.step_done(*request_id),
                    (AdminOp::CloseWindow { .. } | AdminOp::Settle { .. }, Some(code)) => {
                        // The driver sends only the open window and steps in order.
                        return Err(format!("settlement request {op:?} refused with {code:?}"));
                    }
                    _ => {}
                }
                if code.is_none() {
                    self.stats.admin_ok += 1;
                    if let Some(account) = admin_account_of(&op) {
                        self.banks.entry(account).or_default().apply(&op);
                    }
                    if let AdminOp::OutReserve {
                        account,
                        amount,
                        funds_id,
                    } = op
                    {
                        self.funds_outs.push((account, funds_id, amount));
                    }
                } else {
                    self.stats.admin_refused += 1;
                }
                return Ok(());
            }
            Event::PrepareRefused { code, .. } => match code {
                ErrorCode::PayerLiquidity => self.stats.refused_4001 += 1,
                ErrorCode::PayerLimit => self.stats.refused_4200 += 1,
                _ => self.stats.refused_other += 1,
            },
            Event::Reserved { .. } => self.stats.reserved += 1,
            Event::Committed { .. } => self.stats.committed += 1,
            Event::Aborted { code, .. } => {
                self.stats.aborted += 1;
                if *code == ErrorCode::TransferExpired {
                    self.stats.expired += 1;
                }
            }
            Event::StateResent { .. } => self.stats.state_resent += 1,
            Event::RequestRefused { code, .. } => {
                if *code == ErrorCode::ModifiedRequest {
                    self.stats.modified_3106 += 1;
                }
            }
        }
        let id = event
            .transfer_id()
            .expect("transfer events name their transfer");
        let index = *self
            .by_id
            .get(&id)
            .ok_or_else(|| format!("event about a transfer nobody sent: {id}"))?;
        let tx = &mut self.transfers[index];
        if let Event::Reserved { parties, .. } = event {
            if parties.amount != tx.amount || parties.payer != tx.payer.fsp {
                return Err(format!("{id}: RESERVED with other parties {parties:?}"));
            }
        }
        let told = advance(tx.told, event).map_err(|e| format!("transfer {id}: {e}"))?;
        if told == Told::Reserved && tx.told == Told::Nothing {
            self.awaiting_payee.push(index);
            self.acknowledged.push(index);
        }
        tx.told = told;
        Ok(())
    }

    // ----- invariants -------------------------------------------------------------------------

    /// The accounts homed at partition `p`: bank, limits and the home's own slice headroom.
    fn home_banks(&self, p: usize) -> BTreeMap<AccountKey, HomeBefore> {
        self.parts[p]
            .state()
            .accounts
            .iter()
            .filter_map(|(key, entry)| {
                let bank = entry.bank.as_ref()?;
                let before = HomeBefore {
                    bank: bank.bank,
                    limits: BankRef::of(bank),
                    own_slice_headroom: entry.slice.headroom,
                };
                Some((*key, before))
            })
            .collect()
    }

    fn created(&self, account: &AccountKey) -> bool {
        let home = self.home(account) as usize;
        self.parts[home]
            .state()
            .accounts
            .get(account)
            .is_some_and(|entry| entry.bank.is_some())
    }

    /// An account seen from everywhere: its home bank and the sum of its slices.
    fn totals(&self, account: &AccountKey) -> Result<Totals, String> {
        let home = self.home(account) as usize;
        let bank = self.parts[home]
            .state()
            .accounts
            .get(account)
            .and_then(|entry| entry.bank.as_ref())
            .ok_or_else(|| format!("{account:?} has no bank at its home {home}"))?;
        let mut totals = Totals {
            bank: bank.bank,
            limit: bank.limit(),
            position: bank.base_position,
            reserved: 0,
            headroom: 0,
        };
        for part in &self.parts {
            if let Some(entry) = part.state().accounts.get(account) {
                totals.position += entry.slice.position;
                totals.reserved += entry.slice.reserved;
                totals.headroom += entry.slice.headroom;
            }
        }
        Ok(totals)
    }

    /// Headroom travelling in messages, per account: generated by a sender's live state and
    /// not yet applied by its destination's live state. Each (from, to, seq) counts once,
    /// however many copies of it are on the way.
    fn in_flight(&self) -> BTreeMap<AccountKey, Money> {
        let mut in_flight = BTreeMap::new();
        for (&(from, to, seq), message) in &self.sent {
            let generated = seq <= self.parts[from as usize].state().outbound_seq[to as usize];
            let applied = accepted(&self.parts[to as usize].state().inbound, from, seq);
            if generated && !applied {
                if let Some((account, amount)) = headroom_carried(message) {
                    *in_flight.entry(account).or_default() += Money::from(amount);
                }
            }
        }
        in_flight
    }

    /// After every step: invariant 1 (headroom bookkeeping) for every account and
    /// invariant 2 (money is conserved) for every currency.
    fn check_ledgers(&mut self) -> Result<(), String> {
        let in_flight = self.in_flight();
        let mut positions: BTreeMap<Currency, Money> = BTreeMap::new();
        for account in &self.accounts {
            if !self.created(account) {
                continue; // setup has not reached its home yet
            }
            let t = self.totals(account)?;
            let travelling = in_flight.get(account).copied().unwrap_or(0);
            if t.bank + t.headroom + travelling != t.limit - t.position - t.reserved {
                return Err(format!(
                    "invariant 1 broken for {account:?}: bank {} + slice headroom {} + in \
                     flight {travelling} != limit {} - position {} - reserved {}",
                    t.bank, t.headroom, t.limit, t.position, t.reserved
                ));
            }
            if t.bank < 0 {
                self.stats.negative_bank += 1;
            }
            *positions.entry(account.currency).or_default() += t.position;
        }
        let parts: Vec<&PartitionState> = self.parts.iter().map(Part::state).collect();
        // Settlement moves positions against the hub's multilateral account.
        let multilateral = sim_settlement::multilateral(&parts);
        for (currency, initial) in &self.initial {
            let now = positions.get(currency).copied().unwrap_or(0)
                + multilateral.get(currency).copied().unwrap_or(0);
            if now != *initial {
                return Err(format!(
                    "invariant 2 broken for {currency:?}: positions and the hub's multilateral \
                     account sum to {now}, initial positions to {initial}"
                ));
            }
        }
        let liquidity: BTreeMap<AccountKey, Money> = self
            .accounts
            .iter()
            .filter(|account| self.created(account))
            .map(|account| {
                let home = &self.parts[self.home(account) as usize];
                let bank = home.state().accounts[account].bank.as_ref();
                (*account, bank.map_or(0, |b| b.liquidity))
            })
            .collect();
        sim_settlement::cover_accounting(&parts, &liquidity)?;
        sim_settlement::window_accounting(&parts)?;
        self.settling.closed_windows_unchanged(&parts)?;
        Ok(())
    }

    /// After each batch: the limit is never exceeded by a decision taken in this batch, and
    /// no refusal is false.
    fn check_batch(
        &self,
        p: usize,
        commands: &[Command],
        banks_before: &BTreeMap<AccountKey, HomeBefore>,
        output: &engine::machine::Output,
    ) -> Result<u64, String> {
        let mut slice_reservations_checked = 0;
        // Limit changes applied in this batch, per account.
        let decreased: Vec<AccountKey> = output
            .events
            .iter()
            .filter_map(|event| match event {
                Event::AdminDone {
                    request_id,
                    code: None,
                    ..
                } => self.admin_ops.get(request_id).and_then(AdminOp::decreases),
                _ => None,
            })
            .collect();
        // (1a) at the home: headroom is handed out only from the bank, and a grant never
        // exceeds it, so a grant leaves the bank at zero or more. Only a limit decrease may
        // take the bank below zero. Within a batch the order of grants and admin changes is
        // not visible, but this bound holds whatever the order:
        //     bank after >= min(bank before, 0) + (sum of the admin changes that lowered it)
        for (account, home_before) in banks_before {
            let before = home_before.bank;
            let after = self.parts[p].state().accounts[account]
                .bank
                .as_ref()
                .expect("still the home")
                .bank;
            let mut limits = home_before.limits;
            let mut lowered: Money = 0;
            for event in &output.events {
                let Event::AdminDone {
                    request_id,
                    code: None,
                    ..
                } = event
                else {
                    continue;
                };
                let op = &self.admin_ops[request_id];
                if admin_account_of(op) != Some(*account) {
                    continue;
                }
                let headroom_before = limits.limit() - limits.base_position;
                limits.apply(op);
                let change = limits.limit() - limits.base_position - headroom_before;
                lowered += change.min(0);
            }
            let floor = before.min(0) + lowered;
            if after < floor {
                return Err(format!(
                    "invariant 1 broken: home {p} took the bank of {account:?} from {before} \
                     to {after}, below {floor} (limit decreases in the batch: {lowered}): it \
                     handed out headroom the account does not have"
                ));
            }
        }
        // (1a) at a slice: a reservation from the slice's own headroom keeps position +
        // reserved within the limit. A reservation paid by a grant was decided by the home
        // when it granted (checked above), possibly before a limit decrease that the home
        // applied later: so skip batches that applied a grant (at a slice) or a decrease (at
        // the home, where grants to its own slice are applied in the same step).
        let granted: Vec<AccountKey> = commands
            .iter()
            .filter_map(|command| match command {
                Command::Peer {
                    message: PeerMessage::Grant { account, .. },
                    ..
                } => Some(*account),
                _ => None,
            })
            .collect();
        for (account, _) in &output.reservations {
            if granted.contains(account) || decreased.contains(account) {
                continue;
            }
            let t = self.totals(account)?;
            if t.position + t.reserved > t.limit {
                return Err(format!(
                    "invariant 1 broken: partition {p} reserved for {account:?} from its \
                     slice and took position {} + reserved {} past the limit {}",
                    t.position, t.reserved, t.limit
                ));
            }
            slice_reservations_checked += 1;
        }
        // (5) zero false rejections: when a home refuses, the bank plus the free headroom
        // of every slice must be short of the amount. The other partitions did not move
        // during this batch: their live state is the state at the decision. The home's own
        // slice may have moved later in the batch (the home can leave centralised mode and
        // grant to it), so its headroom is taken from before the batch; a denial needs a
        // finished recall round, which this slice answered in an earlier batch.
        for denial in &output.denials {
            let slices: Money = self
                .parts
                .iter()
                .enumerate()
                .filter_map(|(q, part)| {
                    let entry = part.state().accounts.get(&denial.account)?;
                    Some(if q == p {
                        banks_before[&denial.account].own_slice_headroom
                    } else {
                        entry.slice.headroom
                    })
                })
                .sum();
            if denial.bank + slices >= Money::from(denial.amount) {
                let holders: Vec<String> = self
                    .parts
                    .iter()
                    .enumerate()
                    .filter_map(|(q, part)| {
                        let slice = &part.state().accounts.get(&denial.account)?.slice;
                        (slice.headroom > 0).then(|| {
                            format!(
                                "partition {q}: headroom {}, centralised {}, round seen {}",
                                slice.headroom, slice.centralised, slice.round_seen
                            )
                        })
                    })
                    .collect();
                return Err(format!(
                    "false rejection: home {p} refused {} for {:?} while bank {} + free \
                     slice headroom {slices} covered it ({})",
                    denial.amount,
                    denial.account,
                    denial.bank,
                    holders.join("; ")
                ));
            }
        }
        Ok(slice_reservations_checked)
    }

    /// Invariant 4 right after a crash: the restored partition holds exactly what was
    /// released plus what is durable and about to be released (its outbox).
    fn check_after_crash(&self, p: usize) -> Result<(), String> {
        let part = &self.parts[p];
        // What the world was told about this partition's transfers, overlaid with the
        // outbox.
        let mut told: HashMap<TransferId, Told> = HashMap::new();
        for tx in self.transfers.iter().filter(|tx| tx.partition == p as u32) {
            told.insert(tx.prepare.transfer_id, tx.told);
        }
        // Admin results never wait in the outbox (they are told at release, or at the
        // recovery that replays their batch).
        let banks = &self.banks;
        for (seq, event) in part.core.pending_events() {
            if self.observed.contains_key(&(p as u32, seq)) {
                continue;
            }
            if let Some(id) = event.transfer_id() {
                let state = told.entry(id).or_insert(Told::Nothing);
                *state = advance(*state, &event).map_err(|e| format!("outbox {id}: {e}"))?;
            }
        }
        let disk = &self.nodes[part.node].disk;
        // Positions and reservations implied by those results, per account.
        let mut implied: BTreeMap<AccountKey, (Money, Money)> = BTreeMap::new();
        for (id, state) in &told {
            let tx = &self.transfers[self.by_id[id]];
            let amount = Money::from(tx.amount);
            match state {
                Told::Committed => {
                    implied.entry(tx.payer).or_default().0 += amount;
                    implied.entry(tx.payee).or_default().0 -= amount;
                }
                Told::Reserved => implied.entry(tx.payer).or_default().1 += amount,
                _ => {}
            }
            let open = part.state().transfers.get(id);
            let archived = disk
                .finished(id)
                .map_err(|e| format!("archive lookup: {e}"))?
                .map(|record| record.state);
            let ok = match state {
                Told::Reserved => open.is_some_and(|t| t.reserved),
                Told::Committed => open.is_none() && archived == Some(TransferState::Committed),
                Told::Aborted => open.is_none() && archived == Some(TransferState::Aborted),
                Told::Nothing | Told::Refused(_) => true,
            };
            if !ok {
                return Err(format!(
                    "invariant 4 broken: after partition {p} restarted, transfer {id} told \
                     {state:?} is open: {open:?}, archived as {archived:?}"
                ));
            }
        }
        for account in &self.accounts {
            let (position, reserved) = implied.get(account).copied().unwrap_or((0, 0));
            let slice = part
                .state()
                .accounts
                .get(account)
                .map(|entry| (entry.slice.position, entry.slice.reserved))
                .unwrap_or((0, 0));
            if slice != (position, reserved) {
                return Err(format!(
                    "invariant 4 broken: after partition {p} restarted, {account:?} has \
                     (position, reserved) {slice:?} but the released results imply \
                     {:?}",
                    (position, reserved)
                ));
            }
            if let Some(bank) = part
                .state()
                .accounts
                .get(account)
                .and_then(|e| e.bank.as_ref())
            {
                let expected = banks.get(account).copied().unwrap_or_default();
                let actual = BankRef::of(bank);
                if actual != expected {
                    return Err(format!(
                        "invariant 4 broken: after home {p} restarted, {account:?} has limits \
                         {actual:?} but the admin results released imply {expected:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Delivers, applies, flushes and releases everything until nothing moves.
    fn drain(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            if self.idle() {
                return self.check_quiescent();
            }
            for p in 0..self.parts.len() {
                self.step += 1;
                self.release(p)?;
                self.check_ledgers()?;
            }
            // (A delivery only appends to a log: no state moves, nothing to check.)
            while !self.transit.is_empty() {
                self.step += 1;
                let index = self.rng.below(self.transit.len());
                self.deliver(index, false);
            }
            for p in 0..self.parts.len() {
                while self.parts[p].applied < self.parts[p].log.len() {
                    self.step += 1;
                    if self.parts[p].core.staged_len() >= STAGED_MAX {
                        let node = self.parts[p].node;
                        self.flush(node)?;
                    } else {
                        let size = self.rng.range(1, 8) as usize;
                        self.apply(p, size)?;
                    }
                    self.check_ledgers()?;
                }
            }
            for node in 0..self.nodes.len() {
                self.step += 1;
                self.flush(node)?;
                self.archive(node)?;
                self.check_ledgers()?;
            }
            for p in 0..self.parts.len() {
                self.step += 1;
                self.release(p)?;
                self.check_ledgers()?;
            }
        }
        Err("the partitions did not reach quiescence".into())
    }

    fn idle(&self) -> bool {
        self.transit.is_empty()
            && self.parts.iter().all(|part| {
                part.applied == part.log.len()
                    && part.core.staged_len() == 0
                    && part.core.next_event().is_none()
                    && part.unacked.is_empty()
            })
    }

    /// At quiescence nothing is in flight, every parked prepare got its answer, every recall
    /// round finished: the bookkeeping of invariant 1 holds with nothing travelling.
    fn check_quiescent(&mut self) -> Result<(), String> {
        if let Some((account, amount)) = self.in_flight().into_iter().find(|(_, a)| *a != 0) {
            return Err(format!(
                "at quiescence {amount} of headroom of {account:?} is still in flight"
            ));
        }
        for (p, part) in self.parts.iter().enumerate() {
            for (account, entry) in &part.state().accounts {
                if !entry.slice.parked.is_empty() {
                    return Err(format!(
                        "at quiescence partition {p} still parks {} prepares of {account:?}",
                        entry.slice.parked.len()
                    ));
                }
                if let Some(bank) = &entry.bank {
                    if matches!(bank.mode, BankMode::Recalling { .. }) || !bank.queue.is_empty() {
                        return Err(format!(
                            "at quiescence home {p} of {account:?} is stuck in {:?} with {} \
                             queued requests",
                            bank.mode,
                            bank.queue.len()
                        ));
                    }
                }
            }
            part.state().audit();
        }
        self.check_ledgers()?;
        self.check_position_ledger()
    }

    /// The position ledger accounts for every balance: for every account, the entries on
    /// the disks and in the partitions' memory (released, not yet written) sum to its
    /// position, reserved amount and cover. Crashes in between must have lost and
    /// duplicated nothing (a repeat of an entry's id counts once, as readers count it).
    fn check_position_ledger(&self) -> Result<(), String> {
        for account in &self.accounts {
            if !self.created(account) {
                continue;
            }
            let mut entries = Vec::new();
            for node in &self.nodes {
                entries.extend(
                    node.disk
                        .ledger_range(account, i64::MIN, i64::MAX, usize::MAX - 1)
                        .map_err(|e| format!("reading the position ledger: {e}"))?,
                );
            }
            for part in &self.parts {
                entries.extend(part.core.unwritten_ledger(account, i64::MIN, i64::MAX));
            }
            engine::ledger::sort_dedup(&mut entries);
            let sums = engine::ledger::Totals::of(&entries);
            let t = self.totals(account)?;
            let home = self.home(account) as usize;
            let cover = self.parts[home]
                .state()
                .accounts
                .get(account)
                .and_then(|entry| entry.bank.as_ref())
                .map_or(0, |bank| bank.cover());
            if (sums.position, sums.reserved, sums.cover) != (t.position, t.reserved, cover) {
                return Err(format!(
                    "the position ledger of {account:?} ({} entries) sums to position {}, \
                     reserved {}, cover {}; the account has {}, {}, {}",
                    sums.entries,
                    sums.position,
                    sums.reserved,
                    sums.cover,
                    t.position,
                    t.reserved,
                    cover
                ));
            }
        }
        Ok(())
    }

    /// Drains, lets every open transfer expire, drains again, and audits the end state
    /// against everything released.
    fn finish(&mut self) -> Result<(), String> {
        self.drain()?;
        let last_expiry = self
            .transfers
            .iter()
            .map(|tx| tx.expiration_ms)
            .max()
            .unwrap_or(self.now_ms);
        self.now_ms = self.now_ms.max(last_expiry) + self.limits.idle_return_ms + 1;
        for p in 0..self.partitions {
            let now_ms = self.now_ms;
            self.append(p, Command::Tick { now_ms });
        }
        self.drain()?;
        // Invariant 3: every transfer ever reserved reached exactly one final state.
        let mut positions: BTreeMap<AccountKey, Money> = BTreeMap::new();
        for tx in &self.transfers {
            match tx.told {
                Told::Reserved => {
                    return Err(format!(
                        "transfer {} was reserved and never finished",
                        tx.prepare.transfer_id
                    ))
                }
                Told::Nothing => {
                    return Err(format!(
                        "transfer {} was never answered",
                        tx.prepare.transfer_id
                    ))
                }
                Told::Committed => {
                    *positions.entry(tx.payer).or_default() += Money::from(tx.amount);
                    *positions.entry(tx.payee).or_default() -= Money::from(tx.amount);
                }
                Told::Aborted | Told::Refused(_) => {}
            }
        }
        // Invariant 4: the state of record is exactly what was released.
        for account in &self.accounts {
            let t = self.totals(account)?;
            let bank = self.banks.get(account).copied().unwrap_or_default();
            let expected = bank.base_position + positions.get(account).copied().unwrap_or(0);
            if t.position != expected || t.reserved != 0 {
                return Err(format!(
                    "at the end {account:?} has position {} and reserved {}, the released \
                     results imply position {expected} and nothing reserved",
                    t.position, t.reserved
                ));
            }
            let home = &self.parts[self.home(account) as usize].state().accounts[account];
            let live = home.bank.as_ref().expect("home has the bank");
            let actual = BankRef::of(live);
            if actual != bank {
                return Err(format!(
                    "at the end {account:?} has limits {actual:?}, the admin results imply \
                     {bank:?}"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Fulfil,
    Reject,
    BadFulfil,
}

/// An account at its home before a batch.
struct HomeBefore {
    bank: Money,
    limits: BankRef,
    own_slice_headroom: Money,
}

struct Totals {
    bank: Money,
    limit: Money,
    position: Money,
    reserved: Money,
    headroom: Money,
}

/// Has `inbound` (a destination's duplicate filter) applied message `seq` from `from`?
fn accepted(inbound: &BTreeMap<u32, Inbound>, from: u32, seq: u64) -> bool {
    inbound
        .get(&from)
        .is_some_and(|i| seq <= i.watermark || i.above.contains(&seq))
}

/// The headroom a peer message carries: grants (bank → slice) and returns (slice → bank).
fn headroom_carried(message: &PeerMessage) -> Option<(AccountKey, i64)> {
    match message {
        PeerMessage::Grant {
            account, amount, ..
        }
        | PeerMessage::Return {
            account, amount, ..
        } => Some((*account, *amount)),
        PeerMessage::Borrow { .. } | PeerMessage::Deny { .. } | PeerMessage::Recall { .. } => None,
    }
}

fn admin_account_of(op: &AdminOp) -> Option<AccountKey> {
    match *op {
        AdminOp::Create | AdminOp::CloseWindow { .. } => None,
        AdminOp::Settle { account, .. }
        | AdminOp::Limits { account, .. }
        | AdminOp::SetNdc { account, .. }
        | AdminOp::FundsIn { account, .. }
        | AdminOp::OutReserve { account, .. }
        | AdminOp::OutCommit { account, .. }
        | AdminOp::OutAbort { account, .. } => Some(account),
    }
}

/// Runs one seed; an invariant failure or a panic inside the machine is a `Failure`.
fn run_seed(seed: u64, config: Config) -> Result<Stats, Failure> {
    let mut sim = Sim::new(seed, config);
    let result = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let step = sim.step;
    match result {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(what)) => Err(Failure {
            seed,
            config,
            step,
            what,
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure {
                seed,
                config,
                step,
                what: format!("the state machine panicked: {message}"),
            })
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(20);
    (1..=count).collect()
}

#[test]
fn simulation_keeps_the_invariants() {
    let config = default_config();
    let seeds = seeds();
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_seed(seed, config) {
            Ok(stats) => total.add(&stats),
            Err(failure) => failures.push(failure),
        }
    }
    eprintln!(
        "simulation: {} seeds x {} workload steps in {:.1?}: {total:?}",
        seeds.len(),
        config.steps,
        started.elapsed()
    );
    let report: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        report.join("\n")
    );
    // A simulation that never reaches the interesting paths proves nothing: over a run of
    // several seeds every one of them must have been taken.
    if seeds.len() >= 5 {
        let covered = [
            ("reservations", total.reserved),
            ("commits", total.committed),
            ("expiries", total.expired),
            ("4001 refusals", total.refused_4001),
            ("4200 refusals", total.refused_4200),
            ("3106 duplicates", total.modified_3106),
            ("re-sent states", total.state_resent),
            ("home refusals (false-rejection checks)", total.denials),
            (
                "reservations from slice headroom (limit checks)",
                total.slice_reservations_checked,
            ),
            ("recall rounds", total.recalls),
            ("exact (centralised) grants", total.exact_grants),
            ("chunk (distributed) grants", total.chunk_grants),
            ("duplicate deliveries", total.duplicate_deliveries),
            ("crashes", total.crashes),
            (
                "crashes with an unreleased outbox",
                total.crashes_with_outbox,
            ),
            ("admin refusals", total.admin_refused),
            ("power losses", total.power_losses),
            (
                "partitions stopped by a storage failure",
                total.storage_stops,
            ),
            ("failed syncs", total.sync_failures),
            ("failed writes", total.write_failures),
            ("torn tails cut at recovery", total.torn_tails_cut),
            ("corrupted records refused", total.corruptions_caught),
            ("snapshots", total.snapshots),
            ("WAL trims", total.trims),
            ("messages dropped by the network", total.dropped_in_transit),
            ("results published again after a restart", total.republished),
            ("negative banks (limit below usage)", total.negative_bank),
            ("settlement windows closed", total.windows_closed),
            ("settlements committed", total.settlements_committed),
            ("settlements aborted", total.settlements_aborted),
        ];
        for (what, count) in covered {
            assert!(count > 0, "the simulation never produced {what}: {total:?}");
        }
    }
}

/// The checks must catch a broken machine, core or disk: a seed that passes as it is
/// fails once the bug is switched on (so the failure is the bug's doing, not the
/// workload's). Returns the failures, one per seed.
fn fault_is_caught(with_bug: fn(Config) -> Config) -> Result<Vec<Failure>, String> {
    let steps = env_u64("SIM_STEPS").unwrap_or(10_000);
    let broken = with_bug(Config {
        steps,
        fault: Fault::None,
        core_fault: CoreFault::None,
        lying_disk: false,
        disk_faults: SIM_DISK_FAULTS,
    });
    // The same run (disk faults included) without the bug.
    let healthy = Config {
        fault: Fault::None,
        core_fault: CoreFault::None,
        lying_disk: false,
        ..broken
    };
    let mut caught = Vec::new();
    for seed in 1..=3 {
        if let Err(failure) = run_seed(seed, healthy) {
            return Err(format!("without a fault: {failure}"));
        }
        match run_seed(seed, broken) {
            Ok(stats) => {
                return Err(format!(
                    "seed {seed} passed with {broken:?} switched on: {stats:?}"
                ))
            }
            Err(failure) => {
                eprintln!("caught: {failure}");
                caught.push(failure);
            }
        }
    }
    Ok(caught)
}

fn assert_fault_is_caught(with_bug: fn(Config) -> Config) {
    match fault_is_caught(with_bug) {
        Ok(caught) => assert_eq!(caught.len(), 3, "every seed fails with the bug"),
        Err(why) => panic!("{why}"),
    }
}

#[test]
fn skipped_limit_check_is_caught() {
    assert_fault_is_caught(|c| Config {
        fault: Fault::SkipLimitCheck,
        ..c
    });
}

#[test]
fn grant_applied_twice_is_caught() {
    assert_fault_is_caught(|c| Config {
        fault: Fault::DoubleApplyGrant,
        ..c
    });
}

#[test]
fn commit_counted_in_two_windows_is_caught() {
    assert_fault_is_caught(|config| Config {
        fault: Fault::CountCommitTwice,
        ..config
    });
}

#[test]
fn a_commit_missing_from_the_position_ledger_is_caught() {
    assert_fault_is_caught(|config| Config {
        fault: Fault::LedgerDropsCredit,
        ..config
    });
}

#[test]
fn disk_sync_that_does_not_sync_is_caught() {
    assert_fault_is_caught(|c| Config {
        lying_disk: true,
        ..c
    });
}

#[test]
fn confirmations_published_at_stage_are_caught() {
    assert_fault_is_caught(|c| Config {
        core_fault: CoreFault::ConfirmAtStage,
        ..c
    });
}

#[test]
fn recovery_dropping_the_outbox_is_caught() {
    assert_fault_is_caught(|c| Config {
        core_fault: CoreFault::RecoveryDropsOutbox,
        ..c
    });
}

#[test]
fn ignored_sync_error_is_caught() {
    // Syncs fail more often here (1 in 50), so that every seed meets a few.
    assert_fault_is_caught(|c| Config {
        core_fault: CoreFault::IgnoreSyncError,
        disk_faults: DiskFaults {
            sync_fail_ppm: 20_000,
            ..c.disk_faults
        },
        ..c
    });
}

// ----- the simulated disk itself ---------------------------------------------------------------

/// A one-command WAL record of partition 0, encoded as the core writes it.
fn disk_record(batch_seq: u64) -> Vec<u8> {
    let command = Command::Tick {
        now_ms: START_MS + batch_seq as i64,
    };
    let prior = None;
    engine::storage::encode_batch(&engine::storage::WalRecordRef {
        batch_seq,
        epoch: 1,
        inputs: vec![(&command, &prior)],
    })
    .expect("encodes")
}

fn disk_batches(disk: &SimDisk) -> Result<Vec<u64>, EngineError> {
    Ok(disk
        .batches_after(0, 0)?
        .iter()
        .map(|r| r.batch_seq)
        .collect())
}

#[test]
fn simulated_power_loss_keeps_exactly_the_synced_frames_and_cuts_a_torn_tail() {
    // Every power loss tears the last frame it keeps, if it keeps one.
    let faults = DiskFaults {
        torn_write_ppm: 1_000_000,
        ..DiskFaults::NONE
    };
    let mut kept_unsynced = 0;
    for seed in 1..=20 {
        let disk = SimDisk::new(seed, faults);
        for batch in 1..=3 {
            disk.append_encoded(0, batch, &disk_record(batch))
                .expect("append");
        }
        disk.sync().expect("sync");
        for batch in 4..=6 {
            disk.append_encoded(0, batch, &disk_record(batch))
                .expect("append");
        }
        disk.power_loss();
        let batches = disk_batches(&disk).expect("a torn tail is cut, not refused");
        // The synced prefix survives whole; of the tail, what survived minus the torn
        // frame.
        assert_eq!(batches[..3], [1, 2, 3], "seed {seed}");
        assert!(
            batches.len() <= 5,
            "seed {seed}: the torn frame was accepted"
        );
        assert!(
            batches.iter().copied().eq(1..=batches.len() as u64),
            "seed {seed}"
        );
        kept_unsynced += batches.len() - 3;
        assert!(disk.stats().torn_writes <= 1);
    }
    assert!(
        kept_unsynced > 0,
        "some unsynced frames survive a power loss"
    );
}

#[test]
fn simulated_corruption_of_a_synced_record_is_refused_and_a_failed_sync_is_sticky() {
    let disk = SimDisk::new(7, DiskFaults::NONE);
    for batch in 1..=4 {
        disk.append_encoded(0, batch, &disk_record(batch))
            .expect("append");
    }
    disk.sync().expect("sync");
    assert_eq!(disk.corrupt_old_record(), Some(0));
    match disk_batches(&disk) {
        Err(EngineError::Corrupt { partition: 0, .. }) => {}
        other => panic!("a corrupted synced record must be refused, got {other:?}"),
    }
    disk.repair();
    assert_eq!(disk_batches(&disk).expect("repaired"), vec![1, 2, 3, 4]);

    // A failing sync refuses every later sync and append until the disk is reopened,
    // and what it did not make durable is gone.
    let failing = SimDisk::new(
        9,
        DiskFaults {
            sync_fail_ppm: 1_000_000,
            ..DiskFaults::NONE
        },
    );
    failing
        .append_encoded(0, 1, &disk_record(1))
        .expect("append");
    assert!(failing.sync().is_err());
    assert!(failing.failed().is_some());
    assert!(failing.append_encoded(0, 2, &disk_record(2)).is_err());
    failing.reopen();
    assert_eq!(disk_batches(&failing).expect("readable"), Vec::<u64>::new());
}
