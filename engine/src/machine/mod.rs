//! The pure partition state machine: `apply(state, batch) -> (state', events, messages)`.
//!
//! Nothing in this module reads a clock, draws a random number or touches IO; hub time
//! arrives inside commands. Applying the same batches to the same state gives the same
//! state, byte for byte (see `snapshot_bytes`), and the same outputs.
//!
//! A broken ledger invariant (negative headroom, reserved not matching open transfers,
//! arithmetic overflow) panics: a wrong balance is worse than a stopped partition.
//!
//! This file holds the types, `apply_batch` and the plumbing every step shares (the
//! exactly-once filter for peer messages, numbered sends, the dispatch of a peer message).
//! The steps themselves live in one file per seam:
//!
//! - `account.rs`: an account as one partition sees it (slice, and bank at the home);
//! - `transfers.rs`: prepare, fulfil, reject, abort, expiry;
//! - `headroom.rs`: the peer protocol that moves headroom between slices and the bank;
//! - `admin.rs`: operator commands (accounts, limits, funds movements);
//! - `settlement.rs`: settlement windows' nets, settlement steps, the hub's accounts;
//! - `snapshot.rs`: the deterministic snapshot, `from_snapshot`, `check` and `audit`.

pub mod account;
mod admin;
mod headroom;
mod ledger;
pub mod settlement;
mod snapshot;
mod transfers;

pub use snapshot::SnapshotError;

use crate::command::{Command, Event, FinishedTransfer, PeerMessage, TimestampMs};
use crate::ids::{AccountKey, FspId, TransferId};
use crate::limits::Limits;
use account::{AccountEntry, HomeRequest, Money, OpenTransfer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// One command plus what the runtime looked up for it outside the pure core: the archived
/// record of its transfer when the transfer is no longer in memory.
#[derive(Debug, Clone)]
pub struct Input {
    pub command: Command,
    pub prior: Option<FinishedTransfer>,
}

impl Input {
    pub fn new(command: Command) -> Input {
        Input {
            command,
            prior: None,
        }
    }
}

/// A message for another partition, numbered per destination from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub to: u32,
    pub seq: u64,
    pub message: PeerMessage,
}

/// A refusal decided by a home at this step, for the false-rejection check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub account: AccountKey,
    pub amount: i64,
    /// The bank when the refusal was decided.
    pub bank: Money,
}

/// Test-only fault injection: the deterministic simulation (`engine/tests/sim.rs`) switches
/// one on to show that its invariant checks catch the bug. Always `None` in the hub; not
/// part of the snapshot, so a restored state starts without a fault.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// The home grants a borrow even when its bank cannot cover it (limit check skipped).
    SkipLimitCheck,
    /// A redelivered grant is applied again (the exactly-once filter skipped for grants).
    DoubleApplyGrant,
    /// A commit is counted in the open settlement window and in the one before.
    CountCommitTwice,
    /// A commit writes no ledger entry for the payee's credit.
    LedgerDropsCredit,
}

/// Everything one batch produced. Released only after the batch is durable.
#[derive(Debug, Default)]
pub struct Output {
    pub events: Vec<Event>,
    pub messages: Vec<Outgoing>,
    pub finished: Vec<FinishedTransfer>,
    pub denials: Vec<Denial>,
    /// Every reservation made, for the simulation's limit check.
    pub reservations: Vec<(AccountKey, i64)>,
    /// The position ledger's entries of the batch (`crate::ledger`), in order.
    pub ledger: Vec<crate::ledger::Entry>,
}

/// Per-sender duplicate filter for peer messages: everything at or below `watermark` and
/// everything in `above` has been applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    pub watermark: u64,
    pub above: BTreeSet<u64>,
}

/// Participant-wide flags known on every partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantFlags {
    pub active: bool,
}

/// The state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: u32,
    pub partitions: u32,
    /// Batches applied so far; the next batch gets `batch_seq + 1`.
    pub batch_seq: u64,
    pub participants: BTreeMap<FspId, ParticipantFlags>,
    pub accounts: BTreeMap<AccountKey, AccountEntry>,
    pub transfers: HashMap<TransferId, OpenTransfer>,
    pub expiry: BTreeSet<(TimestampMs, TransferId)>,
    pub parked_count: usize,
    pub inbound: BTreeMap<u32, Inbound>,
    /// Last sequence number sent to each partition.
    pub outbound_seq: Vec<u64>,
    /// Settlement windows' nets, settlement steps and the hub's accounts.
    pub settlement: settlement::SettlementBook,
    /// Currency accounts switched off (`Admin::SetAccountActive`): their transfers are
    /// refused, as an inactive participant's are.
    pub inactive_accounts: BTreeSet<AccountKey>,
    /// The newest hub time of a command applied: the time of ledger entries made by
    /// commands without one (peer messages).
    pub clock_ms: TimestampMs,
    limits: Limits,
    // Scratch for the batch in progress; empty between batches.
    finished_in_batch: HashMap<TransferId, FinishedTransfer>,
    self_queue: VecDeque<PeerMessage>,
    /// Test-only fault injection (see [`Fault`]).
    #[doc(hidden)]
    pub fault: Fault,
}

impl PartitionState {
    pub fn new(partition: u32, partitions: u32, limits: Limits) -> PartitionState {
        assert!(
            partition < partitions,
            "partition {partition} out of {partitions}"
        );
        PartitionState {
            partition,
            partitions,
            batch_seq: 0,
            participants: BTreeMap::new(),
            accounts: BTreeMap::new(),
            transfers: HashMap::new(),
            expiry: BTreeSet::new(),
            parked_count: 0,
            inbound: BTreeMap::new(),
            outbound_seq: vec![0; partitions as usize],
            settlement: settlement::SettlementBook::default(),
            inactive_accounts: BTreeSet::new(),
            clock_ms: 0,
            limits,
            finished_in_batch: HashMap::new(),
            self_queue: VecDeque::new(),
            fault: Fault::None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The home partition of an account.
    pub fn home_of(&self, account: &AccountKey) -> u32 {
        home_of(account, self.partitions)
    }

    pub fn is_open(&self, transfer_id: &TransferId) -> bool {
        self.transfers.contains_key(transfer_id)
    }

    /// Applies one batch. Outputs must not be released before the batch is durable.
    pub fn apply_batch(&mut self, batch: Vec<Input>) -> Output {
        self.batch_seq += 1;
        let mut out = Output::default();
        for input in batch {
            self.apply_one(input, &mut out);
            self.drain_self_queue(&mut out);
        }
        self.finished_in_batch.clear();
        out
    }

    fn apply_one(&mut self, input: Input, out: &mut Output) {
        let Input { command, prior } = input;
        if let Some(now_ms) = command.now_ms() {
            self.clock_ms = self.clock_ms.max(now_ms);
        }
        match command {
            Command::Prepare { now_ms, prepare } => self.prepare(now_ms, prepare, prior, out),
            Command::Fulfil { now_ms, fulfil } => self.fulfil(now_ms, fulfil, prior, out),
            Command::Reject { now_ms, reject } => self.reject(now_ms, reject, prior, out),
            Command::Tick { now_ms } => self.tick(now_ms, out),
            Command::Admin {
                now_ms,
                request_id,
                admin,
            } => self.admin(now_ms, request_id, admin, out),
            Command::Peer { from, seq, message } => {
                let fresh = self.accept_peer(from, seq);
                let replayed_grant = self.fault == Fault::DoubleApplyGrant
                    && matches!(message, PeerMessage::Grant { .. });
                if fresh || replayed_grant {
                    self.peer(from, message, out);
                }
            }
        }
    }

    /// Exactly-once filter: true the first time (`from`, `seq`) is seen.
    fn accept_peer(&mut self, from: u32, seq: u64) -> bool {
        assert!(seq > 0, "peer sequence numbers start at 1");
        let window_max = self.limits.peer_reorder_window_max;
        let inbound = self.inbound.entry(from).or_default();
        if seq <= inbound.watermark || inbound.above.contains(&seq) {
            return false;
        }
        inbound.above.insert(seq);
        while inbound.above.remove(&(inbound.watermark + 1)) {
            inbound.watermark += 1;
        }
        assert!(
            inbound.above.len() <= window_max,
            "partition {}: peer {from} reordered beyond {window_max} messages",
            self.partition
        );
        true
    }

    fn send(&mut self, to: u32, message: PeerMessage, out: &mut Output) {
        if to == self.partition {
            // Messages to ourselves are applied in the same step: no log round trip.
            self.self_queue.push_back(message);
            return;
        }
        let slot = &mut self.outbound_seq[to as usize];
        *slot += 1;
        out.messages.push(Outgoing {
            to,
            seq: *slot,
            message,
        });
    }

    fn drain_self_queue(&mut self, out: &mut Output) {
        while let Some(message) = self.self_queue.pop_front() {
            self.peer(self.partition, message, out);
        }
    }

    fn peer(&mut self, from: u32, message: PeerMessage, out: &mut Output) {
        match message {
            PeerMessage::Borrow {
                account,
                transfer_id,
                amount,
                extra,
            } => {
                let since_round = self
                    .accounts
                    .get(&account)
                    .and_then(|e| e.bank.as_ref())
                    .map_or(0, |b| b.round);
                self.home_borrow(
                    account,
                    HomeRequest::Borrow {
                        from,
                        transfer_id,
                        amount,
                        extra,
                        since_round,
                    },
                    out,
                )
            }
            PeerMessage::Grant {
                account,
                transfer_id,
                amount,
                distributed,
                round,
            } => self.slice_grant(account, transfer_id, amount, distributed, round, out),
            PeerMessage::Deny {
                account,
                transfer_id,
                code,
            } => self.slice_deny(account, transfer_id, code, out),
            PeerMessage::Return {
                account,
                amount,
                round,
            } => self.home_return(from, account, amount, round, out),
            PeerMessage::Recall { account, round } => self.slice_recall(account, round, out),
        }
    }
}

/// The home partition of an account (DESIGN §4).
pub fn home_of(account: &AccountKey, partitions: u32) -> u32 {
    let count =
        sharding::PartitionCount::new(partitions).expect("partition count validated at start");
    sharding::home_partition(account.fsp.as_str(), account.currency.as_str(), count)
}

fn checked_add(a: Money, b: Money) -> Money {
    a.checked_add(b).expect("ledger arithmetic overflow")
}

fn checked_sub(a: Money, b: Money) -> Money {
    a.checked_sub(b).expect("ledger arithmetic overflow")
}

#[cfg(test)]
mod tests;
