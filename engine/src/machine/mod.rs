//! The pure partition state machine: `apply(state, batch) -> (state', events, messages)`.
//!
//! Nothing in this module reads a clock, draws a random number or touches IO; hub time
//! arrives inside commands. Applying the same batches to the same state gives the same
//! state, byte for byte (see `snapshot_bytes`), and the same outputs.
//!
//! A broken ledger invariant (negative headroom, reserved not matching open transfers,
//! arithmetic overflow) panics: a wrong balance is worse than a stopped partition.

pub mod account;

use crate::command::{
    Admin, BodyHash, Command, ErrorCode, Event, FinishedTransfer, Fulfil, Parties, PeerMessage,
    Prepare, Reject, TimestampMs, TransferState,
};
use crate::ids::{AccountKey, FspId, TransferId};
use crate::limits::Limits;
use account::{
    AccountEntry, Bank, BankMode, Decrease, FundsRecord, HomeRequest, Money, OpenTransfer, Parked,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    limits: Limits,
    // Scratch for the batch in progress; empty between batches.
    finished_in_batch: HashMap<TransferId, FinishedTransfer>,
    self_queue: VecDeque<PeerMessage>,
    /// Test-only fault injection (see [`Fault`]).
    #[doc(hidden)]
    pub fault: Fault,
}

/// The serialised form: maps sorted, so equal states give equal bytes.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    partition: u32,
    partitions: u32,
    batch_seq: u64,
    participants: Vec<(FspId, ParticipantFlags)>,
    accounts: Vec<(AccountKey, AccountEntry)>,
    transfers: Vec<(TransferId, OpenTransfer)>,
    inbound: Vec<(u32, Inbound)>,
    outbound_seq: Vec<u64>,
}

const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("snapshot of partition state cannot be decoded: {0}")]
pub struct SnapshotError(String);

/// `Ok` on success; `Err((code, message))` for an admin refusal.
type AdminResult = Result<(), (ErrorCode, String)>;

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

    // ----- peer message plumbing -------------------------------------------------------

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

    // ----- transfers ---------------------------------------------------------------------

    fn account_usable(&self, account: &AccountKey) -> bool {
        self.accounts.contains_key(account)
            && self
                .participants
                .get(&account.fsp)
                .is_some_and(|flags| flags.active)
    }

    /// The archived record of a transfer, if the runtime found one that is still inside
    /// the retention window and was finished by an earlier batch.
    fn finished_record(
        &self,
        transfer_id: &TransferId,
        prior: Option<FinishedTransfer>,
        now_ms: TimestampMs,
    ) -> Option<FinishedTransfer> {
        if let Some(record) = self.finished_in_batch.get(transfer_id) {
            return Some(record.clone());
        }
        prior.filter(|record| {
            record.parties.transfer_id == *transfer_id
                && record.finished_batch < self.batch_seq
                && record.finished_ms.saturating_add(self.limits.retention_ms) > now_ms
        })
    }

    fn prepare(
        &mut self,
        now_ms: TimestampMs,
        prepare: Prepare,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = prepare.transfer_id;
        let parties = Parties {
            transfer_id,
            payer: prepare.payer,
            payee: prepare.payee,
            currency: prepare.currency,
            amount: prepare.amount,
        };
        // Duplicates first: an identical resend must not be refused for other reasons.
        if let Some(open) = self.transfers.get(&transfer_id) {
            if open.prepare_hash != prepare.body_hash {
                out.events.push(Event::RequestRefused {
                    transfer_id,
                    to: prepare.payer,
                    code: ErrorCode::ModifiedRequest,
                });
            } else if open.reserved {
                out.events.push(Event::StateResent {
                    parties: open.parties,
                    to: prepare.payer,
                    state: TransferState::Reserved,
                    fulfilment: None,
                    completed_ms: None,
                });
            }
            // Same body, still waiting for headroom: in progress, ignored.
            return;
        }
        if let Some(record) = self.finished_record(&transfer_id, prior, now_ms) {
            if record.prepare_hash != prepare.body_hash {
                out.events.push(Event::RequestRefused {
                    transfer_id,
                    to: prepare.payer,
                    code: ErrorCode::ModifiedRequest,
                });
            } else {
                out.events.push(state_resent(&record, prepare.payer));
            }
            return;
        }
        let refuse = |code: ErrorCode, out: &mut Output, prepare: Prepare| {
            out.events.push(Event::PrepareRefused {
                parties,
                code,
                payload: prepare.payload,
            });
        };
        let payer = AccountKey::new(prepare.payer, prepare.currency);
        let payee = AccountKey::new(prepare.payee, prepare.currency);
        if prepare.payer == prepare.payee
            || prepare.amount <= 0
            || prepare.expiration_ms <= now_ms
            || prepare.payload.len() > self.limits.payload_bytes_max
            || !self.account_usable(&payer)
            || !self.account_usable(&payee)
        {
            return refuse(ErrorCode::Validation, out, prepare);
        }
        if self.transfers.len() >= self.limits.open_transfers_max {
            return refuse(ErrorCode::ServiceUnavailable, out, prepare);
        }
        let entry = self
            .accounts
            .get_mut(&payer)
            .expect("payer account checked above");
        let slice = &mut entry.slice;
        let fits = slice.parked.is_empty() && slice.headroom >= Money::from(prepare.amount);
        if !fits && self.parked_count >= self.limits.parked_prepares_max {
            return refuse(ErrorCode::ServiceUnavailable, out, prepare);
        }
        self.transfers.insert(
            transfer_id,
            OpenTransfer {
                parties,
                condition: prepare.condition,
                expiration_ms: prepare.expiration_ms,
                prepare_hash: prepare.body_hash,
                reserved: false,
            },
        );
        self.expiry.insert((prepare.expiration_ms, transfer_id));
        if fits {
            self.reserve(now_ms, prepare, out);
        } else {
            self.parked_count += 1;
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.parked.push_back(Parked {
                prepare,
                borrow_sent: false,
            });
            self.request_borrows(payer, out);
        }
    }

    /// Reserves a prepare from its payer's slice. The caller checked the headroom.
    fn reserve(&mut self, now_ms: TimestampMs, prepare: Prepare, out: &mut Output) {
        let payer = AccountKey::new(prepare.payer, prepare.currency);
        let amount = Money::from(prepare.amount);
        let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
        assert!(slice.headroom >= amount, "reserve beyond slice headroom");
        slice.headroom = checked_sub(slice.headroom, amount);
        slice.reserved = checked_add(slice.reserved, amount);
        slice.last_used_ms = now_ms;
        slice.recent_demand = checked_add(slice.recent_demand, amount);
        let open = self
            .transfers
            .get_mut(&prepare.transfer_id)
            .expect("open transfer");
        assert!(
            !open.reserved,
            "transfer {} reserved twice",
            prepare.transfer_id
        );
        open.reserved = true;
        out.reservations.push((payer, prepare.amount));
        out.events.push(Event::Reserved {
            parties: open.parties,
            expiration_ms: prepare.expiration_ms,
            payload: prepare.payload,
        });
    }

    /// Sends the borrows the payer's parked prepares need: one per parked prepare while
    /// centralised, one at a time (with a demand-sized chunk) while distributed.
    fn request_borrows(&mut self, account: AccountKey, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        let mut borrows = Vec::new();
        if slice.centralised {
            for parked in slice.parked.iter_mut().filter(|p| !p.borrow_sent) {
                parked.borrow_sent = true;
                borrows.push((parked.prepare.transfer_id, parked.prepare.amount, 0));
            }
        } else if !slice.parked.iter().any(|p| p.borrow_sent) {
            if let Some(first) = slice.parked.front_mut() {
                first.borrow_sent = true;
                let first_id = first.prepare.transfer_id;
                let first_amount = first.prepare.amount;
                let rest: i64 = slice.parked.iter().skip(1).map(|p| p.prepare.amount).sum();
                let demand = i64::try_from(slice.recent_demand).unwrap_or(i64::MAX);
                let extra = rest.saturating_add(demand).saturating_add(first_amount);
                slice.recent_demand = 0;
                borrows.push((first_id, first_amount, extra));
            }
        }
        for (transfer_id, amount, extra) in borrows {
            self.send(
                home,
                PeerMessage::Borrow {
                    account,
                    transfer_id,
                    amount,
                    extra,
                },
                out,
            );
        }
    }

    /// Serves parked prepares in order while headroom lasts (distributed slices), then
    /// settles the slice.
    fn serve_parked(&mut self, now_ms: TimestampMs, account: AccountKey, out: &mut Output) {
        loop {
            let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
            if slice.centralised {
                // Each parked prepare has its own exact borrow out at the home; serving one
                // from a local credit would leave its grant travelling unused while the
                // home refuses others (a false rejection). Credits go back via `settle`.
                break;
            }
            let Some(front) = slice.parked.front() else {
                break;
            };
            if slice.headroom < Money::from(front.prepare.amount) {
                break;
            }
            let parked = slice.parked.pop_front().expect("front exists");
            self.parked_count -= 1;
            self.reserve(now_ms, parked.prepare, out);
        }
        self.request_borrows(account, out);
    }

    /// A centralised slice keeps no free headroom between steps: give it back.
    fn settle(&mut self, account: AccountKey, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        if slice.centralised && slice.headroom > 0 {
            let amount = slice.headroom;
            slice.headroom = 0;
            self.send_return(home, account, amount, None, out);
        }
    }

    fn send_return(
        &mut self,
        home: u32,
        account: AccountKey,
        amount: Money,
        round: Option<u64>,
        out: &mut Output,
    ) {
        let amount = i64::try_from(amount).expect("returned headroom fits in i64");
        self.send(
            home,
            PeerMessage::Return {
                account,
                amount,
                round,
            },
            out,
        );
    }

    fn fulfil(
        &mut self,
        now_ms: TimestampMs,
        fulfil: Fulfil,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = fulfil.transfer_id;
        let Some(open) = self.transfers.get(&transfer_id) else {
            return self.late_final(
                transfer_id,
                fulfil.source,
                fulfil.body_hash,
                prior,
                now_ms,
                out,
            );
        };
        let open = open.clone();
        if fulfil.source != open.parties.payee || !open.reserved {
            out.events.push(Event::RequestRefused {
                transfer_id,
                to: fulfil.source,
                code: ErrorCode::Validation,
            });
            return;
        }
        if now_ms >= open.expiration_ms {
            // Too late: the transfer times out now rather than at the next tick.
            out.events.push(Event::RequestRefused {
                transfer_id,
                to: fulfil.source,
                code: ErrorCode::TransferExpired,
            });
            self.abort(
                now_ms,
                transfer_id,
                ErrorCode::TransferExpired,
                true,
                None,
                Vec::new(),
                out,
            );
            return;
        }
        let digest: [u8; 32] = Sha256::digest(fulfil.fulfilment).into();
        if digest != open.condition {
            self.abort(
                now_ms,
                transfer_id,
                ErrorCode::Validation,
                true,
                Some(fulfil.body_hash),
                fulfil.payload,
                out,
            );
            return;
        }
        let parties = open.parties;
        let amount = Money::from(parties.amount);
        let payer = AccountKey::new(parties.payer, parties.currency);
        let payee = AccountKey::new(parties.payee, parties.currency);
        {
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.reserved = checked_sub(slice.reserved, amount);
            assert!(slice.reserved >= 0, "payer reserved went negative");
            slice.position = checked_add(slice.position, amount);
        }
        {
            // The payee's credit raises its headroom on this very partition.
            let slice = &mut self.accounts.get_mut(&payee).expect("payee account").slice;
            slice.position = checked_sub(slice.position, amount);
            slice.headroom = checked_add(slice.headroom, amount);
        }
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties,
            state: TransferState::Committed,
            fulfilment: Some(fulfil.fulfilment),
            completed_ms: Some(fulfil.completed_ms),
            error_code: None,
            prepare_hash: open.prepare_hash,
            final_hash: Some(fulfil.body_hash),
            finished_ms: now_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::Committed {
            parties,
            fulfilment: fulfil.fulfilment,
            completed_ms: fulfil.completed_ms,
            notify_payee: fulfil.notify_payee,
            payload: fulfil.payload,
        });
        self.serve_parked(now_ms, payee, out);
        self.settle(payee, out);
    }

    fn reject(
        &mut self,
        now_ms: TimestampMs,
        reject: Reject,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = reject.transfer_id;
        let Some(open) = self.transfers.get(&transfer_id) else {
            return self.late_final(
                transfer_id,
                reject.source,
                reject.body_hash,
                prior,
                now_ms,
                out,
            );
        };
        if reject.source != open.parties.payee || !open.reserved {
            out.events.push(Event::RequestRefused {
                transfer_id,
                to: reject.source,
                code: ErrorCode::Validation,
            });
            return;
        }
        if now_ms >= open.expiration_ms {
            out.events.push(Event::RequestRefused {
                transfer_id,
                to: reject.source,
                code: ErrorCode::TransferExpired,
            });
            self.abort(
                now_ms,
                transfer_id,
                ErrorCode::TransferExpired,
                true,
                None,
                Vec::new(),
                out,
            );
            return;
        }
        let code = ErrorCode::Payee(reject.error_code);
        self.abort(
            now_ms,
            transfer_id,
            code,
            false,
            Some(reject.body_hash),
            reject.payload,
            out,
        );
    }

    /// A fulfil or reject for a transfer that is not open here.
    fn late_final(
        &mut self,
        transfer_id: TransferId,
        source: FspId,
        body_hash: BodyHash,
        prior: Option<FinishedTransfer>,
        now_ms: TimestampMs,
        out: &mut Output,
    ) {
        let code = match self.finished_record(&transfer_id, prior, now_ms) {
            None => ErrorCode::TransferNotFound,
            Some(record) if record.final_hash == Some(body_hash) => {
                out.events.push(state_resent(&record, source));
                return;
            }
            Some(record)
                if record.final_hash.is_none()
                    && record.error_code == Some(ErrorCode::TransferExpired) =>
            {
                ErrorCode::TransferExpired
            }
            // Refused at prepare (never reserved): there is nothing to fulfil or reject.
            Some(record) if record.final_hash.is_none() => ErrorCode::Validation,
            Some(_) => ErrorCode::ModifiedRequest,
        };
        out.events.push(Event::RequestRefused {
            transfer_id,
            to: source,
            code,
        });
    }

    /// Releases a reservation and finishes the transfer as ABORTED.
    #[allow(clippy::too_many_arguments)]
    fn abort(
        &mut self,
        now_ms: TimestampMs,
        transfer_id: TransferId,
        code: ErrorCode,
        notify_payee: bool,
        final_hash: Option<BodyHash>,
        payload: Vec<u8>,
        out: &mut Output,
    ) {
        let open = self
            .transfers
            .get(&transfer_id)
            .expect("open transfer")
            .clone();
        assert!(open.reserved, "abort of a transfer that was never reserved");
        let parties = open.parties;
        let payer = AccountKey::new(parties.payer, parties.currency);
        let amount = Money::from(parties.amount);
        {
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.reserved = checked_sub(slice.reserved, amount);
            assert!(slice.reserved >= 0, "payer reserved went negative");
            slice.headroom = checked_add(slice.headroom, amount);
        }
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties,
            state: TransferState::Aborted,
            fulfilment: None,
            completed_ms: None,
            error_code: Some(code),
            prepare_hash: open.prepare_hash,
            final_hash,
            finished_ms: now_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::Aborted {
            parties,
            code,
            notify_payee,
            payload,
        });
        self.serve_parked(now_ms, payer, out);
        self.settle(payer, out);
    }

    fn close(&mut self, transfer_id: TransferId, expiration_ms: TimestampMs) {
        self.transfers.remove(&transfer_id);
        self.expiry.remove(&(expiration_ms, transfer_id));
    }

    fn finish(&mut self, record: FinishedTransfer, out: &mut Output) {
        self.finished_in_batch
            .insert(record.parties.transfer_id, record.clone());
        out.finished.push(record);
    }

    /// Refuses a parked prepare and forgets it.
    ///
    /// The refusal is the transfer's final state (ABORTED with `code`): it is recorded like
    /// any finished transfer, so a resend of the same prepare gets the same answer instead
    /// of being treated as new. `finished_ms` is the hub time of the refusal, or, when the
    /// deciding message carries no time, the transfer's expiration (which only lengthens
    /// its retention a little).
    fn refuse_parked(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        finished_ms: TimestampMs,
        out: &mut Output,
    ) -> bool {
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        let Some(index) = slice
            .parked
            .iter()
            .position(|p| p.prepare.transfer_id == transfer_id)
        else {
            return false;
        };
        let parked = slice.parked.remove(index).expect("index in range");
        self.parked_count -= 1;
        let open = self
            .transfers
            .get(&transfer_id)
            .expect("parked transfer is open")
            .clone();
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties: open.parties,
            state: TransferState::Aborted,
            fulfilment: None,
            completed_ms: None,
            error_code: Some(code),
            prepare_hash: open.prepare_hash,
            final_hash: None,
            finished_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::PrepareRefused {
            parties: open.parties,
            code,
            payload: parked.prepare.payload,
        });
        true
    }

    fn tick(&mut self, now_ms: TimestampMs, out: &mut Output) {
        // Expire everything due, oldest first.
        while let Some(&(expiration_ms, transfer_id)) = self.expiry.first() {
            if expiration_ms > now_ms {
                break;
            }
            let open = self
                .transfers
                .get(&transfer_id)
                .expect("expiry index matches open transfers")
                .clone();
            if open.reserved {
                self.abort(
                    now_ms,
                    transfer_id,
                    ErrorCode::TransferExpired,
                    true,
                    None,
                    Vec::new(),
                    out,
                );
            } else {
                let payer = AccountKey::new(open.parties.payer, open.parties.currency);
                let refused =
                    self.refuse_parked(payer, transfer_id, ErrorCode::TransferExpired, now_ms, out);
                assert!(
                    refused,
                    "unreserved open transfer {transfer_id} is not parked"
                );
            }
        }
        // Idle distributed slices give their headroom back to the bank.
        let idle_ms = self.limits.idle_return_ms;
        let idle: Vec<AccountKey> = self
            .accounts
            .iter()
            .filter(|(_, e)| {
                let s = &e.slice;
                !s.centralised
                    && s.headroom > 0
                    && s.parked.is_empty()
                    && s.last_used_ms.saturating_add(idle_ms) <= now_ms
            })
            .map(|(k, _)| *k)
            .collect();
        for account in idle {
            let home = self.home_of(&account);
            if home == self.partition {
                continue; // the home's own slice may keep working capital
            }
            let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
            let amount = slice.headroom;
            slice.headroom = 0;
            slice.recent_demand = 0;
            self.send_return(home, account, amount, None, out);
        }
    }

    // ----- slice side of the headroom protocol ------------------------------------------

    fn slice_grant(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        amount: i64,
        distributed: bool,
        round: u64,
        out: &mut Output,
    ) {
        assert!(amount >= 0, "negative grant");
        let slice = &mut self.accounts.entry(account).or_default().slice;
        slice.headroom = checked_add(slice.headroom, Money::from(amount));
        if distributed && round >= slice.round_seen {
            slice.centralised = false;
        }
        let centralised = slice.centralised;
        let mut granted = None;
        if let Some(index) = slice
            .parked
            .iter()
            .position(|p| p.prepare.transfer_id == transfer_id)
        {
            slice.parked[index].borrow_sent = false;
            granted = Some(index);
        }
        let now_ms = slice.last_used_ms;
        if centralised {
            // Exactly this prepare, if it still waits; everything else goes back.
            if let Some(index) = granted {
                let fits = slice.headroom >= Money::from(slice.parked[index].prepare.amount);
                if fits {
                    let parked = slice.parked.remove(index).expect("index in range");
                    self.parked_count -= 1;
                    self.reserve(now_ms, parked.prepare, out);
                }
            }
            self.request_borrows(account, out);
            self.settle(account, out);
        } else {
            self.serve_parked(now_ms, account, out);
        }
    }

    fn slice_deny(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        out: &mut Output,
    ) {
        if !self.accounts.contains_key(&account) {
            return;
        }
        // A grant may have served it already: then the deny is moot.
        let slice = &self.accounts[&account].slice;
        let waiting = slice
            .parked
            .iter()
            .any(|p| p.prepare.transfer_id == transfer_id && p.borrow_sent);
        if waiting {
            let expiration_ms = self
                .transfers
                .get(&transfer_id)
                .map(|t| t.expiration_ms)
                .unwrap_or(0);
            self.refuse_parked(account, transfer_id, code, expiration_ms, out);
        }
        let now_ms = self.accounts[&account].slice.last_used_ms;
        self.serve_parked(now_ms, account, out);
        self.settle(account, out);
    }

    fn slice_recall(&mut self, account: AccountKey, round: u64, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.entry(account).or_default().slice;
        if round > slice.round_seen {
            slice.round_seen = round;
        }
        slice.centralised = true;
        let amount = slice.headroom;
        slice.headroom = 0;
        slice.recent_demand = 0;
        self.send_return(home, account, amount, Some(round), out);
        self.request_borrows(account, out);
    }

    // ----- home side of the headroom protocol -------------------------------------------

    // Peer messages are input like any other: no message may panic a partition, since the
    // runtime re-sends an unconfirmed message after every restart and a message that
    // panics would keep its receiver down for good. In particular an account may be
    // unknown where a message lands: creation reaches the partitions one by one, so a
    // slice can exist (and hold headroom, from a payee credit) before its home has a bank.
    // Every home-side handler therefore looks the bank up with `bank_mut` and answers or
    // refuses when there is none, never moving headroom out of existence:
    //
    // - a borrow is denied (3100), so its parked prepare is refused;
    // - a return (idle, settle, or a recall answer) creates the bank, exactly as
    //   `Admin::CreateAccount` would at the home, and adds the amount: the headroom is
    //   kept, and the creation, when it arrives, keeps the bank it finds;
    // - a message that reached a partition which is not the account's home (only possible
    //   if sender and receiver disagree about the routing) is refused (borrow) or passed
    //   on to the home (return), so headroom never rests where no bank can count it.

    /// The bank of an account, if this partition holds one for it.
    fn bank_mut(&mut self, account: &AccountKey) -> Option<&mut Bank> {
        self.accounts.get_mut(account).and_then(|e| e.bank.as_mut())
    }

    /// Refuses a borrow: the slice refuses the parked prepare it was for.
    fn deny(
        &mut self,
        to: u32,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        out: &mut Output,
    ) {
        self.send(
            to,
            PeerMessage::Deny {
                account,
                transfer_id,
                code,
            },
            out,
        );
    }

    fn home_borrow(&mut self, account: AccountKey, request: HomeRequest, out: &mut Output) {
        let HomeRequest::Borrow {
            from,
            transfer_id,
            amount,
            extra,
            ..
        } = request
        else {
            unreachable!("only borrows arrive here")
        };
        let is_home = self.home_of(&account) == self.partition;
        let Some(bank) = self.bank_mut(&account).filter(|_| is_home) else {
            // Not (yet) created at its home, or not the home at all: refuse the prepare.
            self.deny(from, account, transfer_id, ErrorCode::Validation, out);
            return;
        };
        match bank.mode {
            BankMode::Recalling { .. } => bank.queue.push_back(request),
            BankMode::Centralised => self.home_decide(account, request, out),
            BankMode::Distributed => {
                let amount_m = Money::from(amount);
                if bank.bank >= amount_m {
                    // Grant the amount plus at most half of what would remain, so one slice
                    // cannot drain the bank for everyone else.
                    let spare = (bank.bank - amount_m) / 2;
                    let grant = amount_m + Money::from(extra).min(spare);
                    bank.bank = checked_sub(bank.bank, grant);
                    let round = bank.round;
                    let grant = i64::try_from(grant).expect("grant fits in i64");
                    self.send(
                        from,
                        PeerMessage::Grant {
                            account,
                            transfer_id,
                            amount: grant,
                            distributed: true,
                            round,
                        },
                        out,
                    );
                } else {
                    bank.queue.push_back(request);
                    self.start_recall(account, out);
                }
            }
        }
    }

    fn start_recall(&mut self, account: AccountKey, out: &mut Output) {
        let partitions = self.partitions;
        let Some(bank) = self.bank_mut(&account) else {
            return; // no bank, nothing to gather it into
        };
        bank.round += 1;
        let round = bank.round;
        bank.mode = BankMode::Recalling {
            round,
            waiting_for: (0..partitions).collect(),
        };
        for to in 0..partitions {
            self.send(to, PeerMessage::Recall { account, round }, out);
        }
    }

    fn home_return(
        &mut self,
        from: u32,
        account: AccountKey,
        amount: i64,
        round: Option<u64>,
        out: &mut Output,
    ) {
        assert!(amount >= 0, "negative return");
        let home = self.home_of(&account);
        if home != self.partition {
            // Misrouted: pass the headroom on to the home as a plain return (a recall
            // answer counts only from the partition that was asked).
            self.send_return(home, account, Money::from(amount), None, out);
            return;
        }
        // The home may not have the bank yet (see above): create it as the creation would.
        let bank = self
            .accounts
            .entry(account)
            .or_default()
            .bank
            .get_or_insert_with(Bank::new);
        bank.bank = checked_add(bank.bank, Money::from(amount));
        let mut complete = false;
        if let (
            BankMode::Recalling {
                round: current,
                waiting_for,
            },
            Some(answer),
        ) = (&mut bank.mode, round)
        {
            if answer == *current {
                waiting_for.remove(&from);
                complete = waiting_for.is_empty();
            }
        }
        if complete {
            bank.mode = BankMode::Centralised;
            let queue = std::mem::take(&mut bank.queue);
            for request in queue {
                // A decision may have started another round: the rest wait for it.
                if let Some(bank) = self.bank_mut(&account) {
                    if matches!(bank.mode, BankMode::Recalling { .. }) {
                        bank.queue.push_back(request);
                        continue;
                    }
                }
                self.home_decide(account, request, out);
            }
        }
        self.maybe_decentralise(account);
    }

    /// Decides a request while centralised: the bank is all the free headroom there is.
    fn home_decide(&mut self, account: AccountKey, request: HomeRequest, out: &mut Output) {
        match request {
            HomeRequest::Borrow {
                from,
                transfer_id,
                amount,
                extra,
                since_round,
            } => {
                let skip_limit_check = self.fault == Fault::SkipLimitCheck;
                let Some(bank) = self.bank_mut(&account) else {
                    self.deny(from, account, transfer_id, ErrorCode::Validation, out);
                    return;
                };
                let amount_m = Money::from(amount);
                if bank.bank < amount_m && !skip_limit_check && bank.round <= since_round {
                    // Not yet proven short: gather once more before refusing.
                    bank.queue.push_back(HomeRequest::Borrow {
                        from,
                        transfer_id,
                        amount,
                        extra,
                        since_round,
                    });
                    if !matches!(bank.mode, BankMode::Recalling { .. }) {
                        self.start_recall(account, out);
                    }
                    return;
                }
                if bank.bank >= amount_m || skip_limit_check {
                    bank.bank = checked_sub(bank.bank, amount_m);
                    let round = bank.round;
                    self.send(
                        from,
                        PeerMessage::Grant {
                            account,
                            transfer_id,
                            amount,
                            distributed: false,
                            round,
                        },
                        out,
                    );
                } else {
                    // Liquidity is checked first, as central-ledger does.
                    let used = bank.limit() - bank.bank;
                    let code = if bank.cover() - used < amount_m {
                        ErrorCode::PayerLiquidity
                    } else {
                        ErrorCode::PayerLimit
                    };
                    out.denials.push(Denial {
                        account,
                        amount,
                        bank: bank.bank,
                    });
                    self.send(
                        from,
                        PeerMessage::Deny {
                            account,
                            transfer_id,
                            code,
                        },
                        out,
                    );
                }
            }
            HomeRequest::Decrease { request_id, change } => {
                let result = self.apply_decrease(account, change);
                out.events.push(admin_done(request_id, result));
            }
            // Its turn has come: evaluated now, and it may itself wait for a round.
            HomeRequest::Admin { request_id, admin } => self.admin_now(request_id, admin, out),
        }
        self.maybe_decentralise(account);
    }

    fn maybe_decentralise(&mut self, account: AccountKey) {
        let pct = self.limits.centralise_exit_pct;
        let Some(bank) = self.bank_mut(&account) else {
            return;
        };
        if bank.mode == BankMode::Centralised && bank.queue.is_empty() {
            let threshold = (bank.limit() * Money::from(pct) / 100).max(1);
            if bank.bank >= threshold {
                bank.mode = BankMode::Distributed;
            }
        }
    }

    // ----- admin -----------------------------------------------------------------------

    fn admin(&mut self, _now_ms: TimestampMs, request_id: u64, admin: Admin, out: &mut Output) {
        match admin {
            Admin::CreateAccount { account } => {
                let is_home = self.home_of(&account) == self.partition;
                let entry = self.accounts.entry(account).or_default();
                if is_home && entry.bank.is_none() {
                    entry.bank = Some(Bank::new());
                }
                self.participants
                    .entry(account.fsp)
                    .or_insert(ParticipantFlags { active: true });
                if is_home {
                    out.events.push(admin_done(request_id, Ok(())));
                }
            }
            Admin::SetActive { fsp, active } => {
                self.participants.entry(fsp).or_default().active = active;
                if self.partition == 0 {
                    out.events.push(admin_done(request_id, Ok(())));
                }
            }
            other => self.home_admin(request_id, other, out),
        }
    }

    /// An account's admin change whose turn has come (see `home_admin`), evaluated against
    /// the bank as it is now.
    fn admin_now(&mut self, request_id: u64, admin: Admin, out: &mut Output) {
        match admin {
            Admin::CreateAccount { .. } | Admin::SetActive { .. } => out.events.push(admin_done(
                request_id,
                Err(admin_err("not a change of one account")),
            )),
            Admin::InitialPositionAndLimits {
                account,
                position,
                ndc,
            } => self.admin_change(request_id, account, out, |bank| {
                if bank.limits_set {
                    return Err(admin_err("initial position and limits are already set"));
                }
                check_non_negative(ndc, "limit")?;
                let delta =
                    Money::from(ndc).min(bank.cover()) - bank.limit() - Money::from(position);
                Ok(Change::Headroom(
                    delta,
                    Decrease::InitialPositionAndLimits { position, ndc },
                ))
            }),
            Admin::SetNdc { account, ndc } => self.admin_change(request_id, account, out, |bank| {
                if !bank.limits_set {
                    return Err(admin_err("set the initial position and limits first"));
                }
                check_non_negative(ndc, "limit")?;
                let delta = Money::from(ndc).min(bank.cover()) - bank.limit();
                Ok(Change::Headroom(delta, Decrease::SetNdc { ndc }))
            }),
            Admin::FundsIn {
                account,
                amount,
                funds_id,
            } => self.admin_change(request_id, account, out, |bank| {
                check_positive(amount)?;
                match bank.funds.get(&funds_id) {
                    Some(FundsRecord::In { amount: seen }) if *seen == amount => {
                        return Ok(Change::Nothing)
                    }
                    Some(_) => {
                        return Err((
                            ErrorCode::ModifiedRequest,
                            "funds transfer id already used".into(),
                        ))
                    }
                    None => {}
                }
                let before = bank.limit();
                bank.liquidity = checked_add(bank.liquidity, Money::from(amount));
                bank.bank = checked_add(bank.bank, bank.limit() - before);
                bank.funds.insert(funds_id, FundsRecord::In { amount });
                Ok(Change::Nothing)
            }),
            Admin::FundsOutReserve {
                account,
                amount,
                funds_id,
            } => self.admin_change(request_id, account, out, |bank| {
                check_positive(amount)?;
                if let Some(seen) = funds_out_seen(bank, funds_id, amount) {
                    return seen.map(|()| Change::Nothing);
                }
                if bank.cover() < Money::from(amount) {
                    return Err((
                        ErrorCode::PayerLiquidity,
                        "insufficient settlement funds".into(),
                    ));
                }
                let delta = (bank.cover() - Money::from(amount)).min(bank.ndc) - bank.limit();
                Ok(Change::Headroom(
                    delta,
                    Decrease::FundsOutReserve { amount, funds_id },
                ))
            }),
            Admin::FundsOutCommit { account, funds_id } => {
                self.admin_change(request_id, account, out, |bank| {
                    match bank.funds.get(&funds_id).copied() {
                        Some(FundsRecord::OutReserved { amount }) => {
                            // The cover was already set aside: the limit does not change.
                            bank.funds_out_reserved =
                                checked_sub(bank.funds_out_reserved, Money::from(amount));
                            bank.liquidity = checked_sub(bank.liquidity, Money::from(amount));
                            bank.funds
                                .insert(funds_id, FundsRecord::OutCommitted { amount });
                            Ok(Change::Nothing)
                        }
                        Some(FundsRecord::OutCommitted { .. }) => Ok(Change::Nothing),
                        Some(_) => Err(admin_err("funds out is not reserved")),
                        None => Err((ErrorCode::TransferNotFound, "unknown funds out".into())),
                    }
                })
            }
            Admin::FundsOutAbort { account, funds_id } => {
                self.admin_change(request_id, account, out, |bank| {
                    match bank.funds.get(&funds_id).copied() {
                        Some(FundsRecord::OutReserved { amount }) => {
                            let before = bank.limit();
                            bank.funds_out_reserved =
                                checked_sub(bank.funds_out_reserved, Money::from(amount));
                            bank.bank = checked_add(bank.bank, bank.limit() - before);
                            bank.funds
                                .insert(funds_id, FundsRecord::OutAborted { amount });
                            Ok(Change::Nothing)
                        }
                        Some(FundsRecord::OutAborted { .. }) => Ok(Change::Nothing),
                        Some(_) => Err(admin_err("funds out is not reserved")),
                        None => Err((ErrorCode::TransferNotFound, "unknown funds out".into())),
                    }
                })
            }
        }
    }

    /// Takes an admin change of one account at its home, in arrival order.
    ///
    /// Every admin change of an account applies, and is acknowledged, in the order the
    /// commands arrived. A decrease may have to wait for a recall round (`admin_change`);
    /// while any admin change of the account waits in the bank queue, later ones queue
    /// behind it (as `HomeRequest::Admin`), even increases that could apply at once:
    /// otherwise an increase acknowledged meanwhile would be undone when the older decrease
    /// lands. A queued change is evaluated only when its turn comes, since the world may
    /// have moved (the decrease before it changed the limit, a funds id got used).
    fn home_admin(&mut self, request_id: u64, admin: Admin, out: &mut Output) {
        let Some(account) = admin_account(&admin) else {
            return self.admin_now(request_id, admin, out);
        };
        assert_eq!(
            self.home_of(&account),
            self.partition,
            "admin command routed to a non-home partition"
        );
        if let Some(bank) = self.bank_mut(&account) {
            if bank.queue.iter().any(HomeRequest::is_admin) {
                bank.queue
                    .push_back(HomeRequest::Admin { request_id, admin });
                return;
            }
        }
        self.admin_now(request_id, admin, out);
    }

    /// Runs an admin change at the account's home. Increases apply at once; a decrease
    /// first gathers all headroom (a recall round) so that no slice can spend headroom the
    /// new limit no longer has.
    fn admin_change(
        &mut self,
        request_id: u64,
        account: AccountKey,
        out: &mut Output,
        change: impl FnOnce(&mut Bank) -> Result<Change, (ErrorCode, String)>,
    ) {
        let Some(bank) = self.bank_mut(&account) else {
            out.events.push(admin_done(
                request_id,
                Err((ErrorCode::Validation, "unknown account".into())),
            ));
            return;
        };
        match change(bank) {
            Err(error) => out.events.push(admin_done(request_id, Err(error))),
            Ok(Change::Nothing) => {
                out.events.push(admin_done(request_id, Ok(())));
                self.maybe_decentralise(account);
            }
            Ok(Change::Headroom(delta, decrease)) => {
                if delta >= 0 || bank.mode == BankMode::Centralised {
                    let result = self.apply_decrease(account, decrease);
                    out.events.push(admin_done(request_id, result));
                    self.maybe_decentralise(account);
                } else {
                    let recalling = matches!(bank.mode, BankMode::Recalling { .. });
                    bank.queue.push_back(HomeRequest::Decrease {
                        request_id,
                        change: decrease,
                    });
                    if !recalling {
                        self.start_recall(account, out);
                    }
                }
            }
        }
    }

    /// Applies a limit or position change to the bank (re-validating: the world may have
    /// moved while it waited for a recall round).
    fn apply_decrease(&mut self, account: AccountKey, change: Decrease) -> AdminResult {
        let Some(bank) = self.bank_mut(&account) else {
            return Err((ErrorCode::Validation, "unknown account".into()));
        };
        let before = bank.limit();
        match change {
            Decrease::SetNdc { ndc } => {
                bank.ndc = Money::from(ndc);
                bank.bank = checked_add(bank.bank, bank.limit() - before);
            }
            Decrease::InitialPositionAndLimits { position, ndc } => {
                if bank.limits_set {
                    return Err(admin_err("initial position and limits are already set"));
                }
                bank.limits_set = true;
                bank.ndc = Money::from(ndc);
                bank.base_position = checked_add(bank.base_position, Money::from(position));
                bank.bank = checked_add(bank.bank, bank.limit() - before - Money::from(position));
            }
            Decrease::FundsOutReserve { amount, funds_id } => {
                // Checked again: another request with this id may have been applied while
                // this one waited for its recall round.
                if let Some(seen) = funds_out_seen(bank, funds_id, amount) {
                    return seen;
                }
                if bank.cover() < Money::from(amount) {
                    return Err((
                        ErrorCode::PayerLiquidity,
                        "insufficient settlement funds".into(),
                    ));
                }
                bank.funds_out_reserved = checked_add(bank.funds_out_reserved, Money::from(amount));
                bank.bank = checked_add(bank.bank, bank.limit() - before);
                bank.funds
                    .insert(funds_id, FundsRecord::OutReserved { amount });
            }
        }
        Ok(())
    }

    // ----- snapshots and audit ---------------------------------------------------------

    /// Deterministic bytes of the whole state (maps sorted).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        assert!(
            self.self_queue.is_empty() && self.finished_in_batch.is_empty(),
            "snapshot mid-batch"
        );
        let mut transfers: Vec<(TransferId, OpenTransfer)> = self
            .transfers
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        transfers.sort_by_key(|entry| entry.0);
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            partition: self.partition,
            partitions: self.partitions,
            batch_seq: self.batch_seq,
            participants: self.participants.iter().map(|(k, v)| (*k, *v)).collect(),
            accounts: self.accounts.iter().map(|(k, v)| (*k, v.clone())).collect(),
            transfers,
            inbound: self.inbound.iter().map(|(k, v)| (*k, v.clone())).collect(),
            outbound_seq: self.outbound_seq.clone(),
        };
        crate::codec::encode_record(crate::codec::RecordKind::PartitionState, &snapshot)
            .expect("in-memory state serialises")
    }

    pub fn from_snapshot(bytes: &[u8], limits: Limits) -> Result<PartitionState, SnapshotError> {
        let snapshot: Snapshot =
            crate::codec::decode_record(crate::codec::RecordKind::PartitionState, bytes)
                .map_err(|e| SnapshotError(e.to_string()))?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError(format!(
                "unknown snapshot version {}",
                snapshot.version
            )));
        }
        if snapshot.partition >= snapshot.partitions
            || snapshot.outbound_seq.len() != snapshot.partitions as usize
        {
            return Err(SnapshotError("partition numbers out of range".into()));
        }
        let mut state = PartitionState::new(snapshot.partition, snapshot.partitions, limits);
        state.batch_seq = snapshot.batch_seq;
        state.participants = snapshot.participants.into_iter().collect();
        state.accounts = snapshot.accounts.into_iter().collect();
        state.transfers = snapshot.transfers.into_iter().collect();
        state.expiry = state
            .transfers
            .iter()
            .map(|(id, t)| (t.expiration_ms, *id))
            .collect();
        state.parked_count = state.accounts.values().map(|e| e.slice.parked.len()).sum();
        state.inbound = snapshot.inbound.into_iter().collect();
        state.outbound_seq = snapshot.outbound_seq;
        // Bytes can decode and still hold a broken ledger: refuse them with the reason.
        state
            .check()
            .map_err(|broken| SnapshotError(format!("inconsistent state: {broken}")))?;
        Ok(state)
    }

    /// Checks the local ledger invariants; the first broken one is returned as an error
    /// naming the account or transfer. `from_snapshot` uses it to refuse bytes that decode
    /// but hold an inconsistent state (a stopped partition with a reason, not a panic at
    /// open); `audit` asserts it.
    pub fn check(&self) -> Result<(), String> {
        let mut reserved: BTreeMap<AccountKey, Money> = BTreeMap::new();
        let mut parked = 0usize;
        for (id, open) in &self.transfers {
            if open.parties.transfer_id != *id {
                return Err(format!(
                    "transfer {} keyed under the wrong id {id}",
                    open.parties.transfer_id
                ));
            }
            if !self.expiry.contains(&(open.expiration_ms, *id)) {
                return Err(format!("transfer {id} missing from the expiry index"));
            }
            if open.reserved {
                let payer = AccountKey::new(open.parties.payer, open.parties.currency);
                let sum = reserved.entry(payer).or_default();
                *sum = sum
                    .checked_add(Money::from(open.parties.amount))
                    .ok_or_else(|| format!("{payer:?}: reserved overflows at transfer {id}"))?;
            } else {
                parked += 1;
            }
        }
        if self.expiry.len() != self.transfers.len() {
            return Err(format!(
                "expiry index out of step: {} entries for {} open transfers",
                self.expiry.len(),
                self.transfers.len()
            ));
        }
        if parked != self.parked_count {
            return Err(format!(
                "parked count out of step: {parked} open transfers wait for headroom, count {}",
                self.parked_count
            ));
        }
        let mut parked_in_slices = 0usize;
        for (key, entry) in &self.accounts {
            let slice = &entry.slice;
            if slice.headroom < 0 {
                return Err(format!(
                    "{key:?}: negative slice headroom {}",
                    slice.headroom
                ));
            }
            let expected = reserved.get(key).copied().unwrap_or(0);
            if slice.reserved != expected {
                return Err(format!(
                    "{key:?}: reserved {} out of step with its open transfers ({expected})",
                    slice.reserved
                ));
            }
            if slice.centralised && slice.headroom != 0 {
                return Err(format!(
                    "{key:?}: centralised slice keeps headroom {}",
                    slice.headroom
                ));
            }
            if entry.bank.is_some() && self.home_of(key) != self.partition {
                return Err(format!(
                    "{key:?}: bank on partition {}, which is not its home",
                    self.partition
                ));
            }
            // A parked prepare is an open transfer of this payer still waiting: a grant or
            // a deny for it relies on finding it so.
            for waiting in &slice.parked {
                let id = waiting.prepare.transfer_id;
                let open = self.transfers.get(&id).is_some_and(|t| {
                    !t.reserved && AccountKey::new(t.parties.payer, t.parties.currency) == *key
                });
                if !open {
                    return Err(format!(
                        "{key:?}: parked prepare {id} is not an open transfer waiting for headroom"
                    ));
                }
            }
            parked_in_slices += slice.parked.len();
        }
        if parked_in_slices != self.parked_count {
            return Err(format!(
                "parked count out of step: {parked_in_slices} prepares parked in slices, count {}",
                self.parked_count
            ));
        }
        Ok(())
    }

    /// Asserts the local ledger invariants (`check`): the hot-path debug assertion, which
    /// panics on the first broken one.
    pub fn audit(&self) {
        if let Err(broken) = self.check() {
            panic!("partition {}: {broken}", self.partition);
        }
    }
}

enum Change {
    Nothing,
    /// The change moves headroom by `delta`; when negative it waits for a recall round.
    Headroom(Money, Decrease),
}

/// The account an admin change is about; `None` for the participant-wide ones.
fn admin_account(admin: &Admin) -> Option<AccountKey> {
    match admin {
        Admin::CreateAccount { .. } | Admin::SetActive { .. } => None,
        Admin::InitialPositionAndLimits { account, .. }
        | Admin::SetNdc { account, .. }
        | Admin::FundsIn { account, .. }
        | Admin::FundsOutReserve { account, .. }
        | Admin::FundsOutCommit { account, .. }
        | Admin::FundsOutAbort { account, .. } => Some(*account),
    }
}

fn admin_err(message: &str) -> (ErrorCode, String) {
    (ErrorCode::Validation, message.to_string())
}

fn check_non_negative(value: i64, what: &str) -> Result<(), (ErrorCode, String)> {
    if value < 0 {
        return Err((
            ErrorCode::Validation,
            format!("{what} must not be negative"),
        ));
    }
    Ok(())
}

fn check_positive(amount: i64) -> Result<(), (ErrorCode, String)> {
    if amount <= 0 {
        return Err((
            ErrorCode::Validation,
            "amount must be greater than zero".into(),
        ));
    }
    Ok(())
}

/// Idempotency of a funds-out reserve, as for transfers: `None` when the funds id is new;
/// `Some(Ok)` when it was used by a reserve of the same amount (whatever became of it
/// since: a resend changes nothing); `Some(Err(3106))` when it was used with another body
/// (another amount, or a funds-in).
fn funds_out_seen(bank: &Bank, funds_id: TransferId, amount: i64) -> Option<AdminResult> {
    let seen = match bank.funds.get(&funds_id)? {
        FundsRecord::In { .. } => None,
        FundsRecord::OutReserved { amount: seen }
        | FundsRecord::OutCommitted { amount: seen }
        | FundsRecord::OutAborted { amount: seen } => Some(*seen),
    };
    if seen == Some(amount) {
        return Some(Ok(()));
    }
    Some(Err((
        ErrorCode::ModifiedRequest,
        "funds transfer id already used".into(),
    )))
}

fn admin_done(request_id: u64, result: AdminResult) -> Event {
    match result {
        Ok(()) => Event::AdminDone {
            request_id,
            code: None,
            message: String::new(),
        },
        Err((code, message)) => Event::AdminDone {
            request_id,
            code: Some(code),
            message,
        },
    }
}

fn state_resent(record: &FinishedTransfer, to: FspId) -> Event {
    Event::StateResent {
        parties: record.parties,
        to,
        state: record.state,
        fulfilment: record.fulfilment,
        completed_ms: record.completed_ms,
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
