//! The deterministic snapshot of a partition state, and the check of its invariants.
//!
//! `snapshot_bytes` writes every map sorted, so equal states give equal bytes: that is how
//! replay is tested to be deterministic. `from_snapshot` refuses bytes that do not decode,
//! and also bytes that decode but hold a state breaking a ledger invariant (`check`): a
//! stored state is input, and a bad one must stop its partition with a reason, not panic
//! the hub at open. `audit` asserts the same checks on the hot path in debug builds.

use super::account::{AccountEntry, Money, OpenTransfer};
use super::settlement::SettlementBook;
use super::{Inbound, ParticipantFlags, PartitionState};
use crate::ids::{AccountKey, FspId, TransferId};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    settlement: SettlementBook,
    inactive_accounts: Vec<AccountKey>,
    clock_ms: i64,
}

/// Format version 2 of the partition state, from before the position ledger's clock:
/// read and converted (the clock at 0 until the next command sets it), never written.
#[derive(Deserialize)]
struct SnapshotV2 {
    version: u32,
    partition: u32,
    partitions: u32,
    batch_seq: u64,
    participants: Vec<(FspId, ParticipantFlags)>,
    accounts: Vec<(AccountKey, AccountEntry)>,
    transfers: Vec<(TransferId, OpenTransfer)>,
    inbound: Vec<(u32, Inbound)>,
    outbound_seq: Vec<u64>,
    settlement: SettlementBook,
    inactive_accounts: Vec<AccountKey>,
}

impl SnapshotV2 {
    fn upgrade(self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            partition: self.partition,
            partitions: self.partitions,
            batch_seq: self.batch_seq,
            participants: self.participants,
            accounts: self.accounts,
            transfers: self.transfers,
            inbound: self.inbound,
            outbound_seq: self.outbound_seq,
            settlement: self.settlement,
            inactive_accounts: self.inactive_accounts,
            clock_ms: 0,
        }
    }
}

/// Format version 1 of the partition state, from before settlement: read and converted
/// (an empty settlement book, window 1 open), never written.
#[derive(Deserialize)]
struct SnapshotV1 {
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

impl SnapshotV1 {
    fn upgrade(self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            partition: self.partition,
            partitions: self.partitions,
            batch_seq: self.batch_seq,
            participants: self.participants,
            accounts: self.accounts,
            transfers: self.transfers,
            inbound: self.inbound,
            outbound_seq: self.outbound_seq,
            settlement: SettlementBook::default(),
            inactive_accounts: Vec::new(),
            clock_ms: 0,
        }
    }
}

/// The body's own version field, the same as the envelope's (redundant, see
/// `engine::codec`).
const SNAPSHOT_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("snapshot of partition state cannot be decoded: {0}")]
pub struct SnapshotError(String);

impl PartitionState {
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
            settlement: self.settlement.clone(),
            inactive_accounts: self.inactive_accounts.iter().copied().collect(),
            clock_ms: self.clock_ms,
        };
        crate::codec::encode_record(crate::codec::RecordKind::PartitionState, &snapshot)
            .expect("in-memory state serialises")
    }

    pub fn from_snapshot(bytes: &[u8], limits: Limits) -> Result<PartitionState, SnapshotError> {
        use crate::codec::{decode_body, open_record, RecordKind};
        let kind = RecordKind::PartitionState;
        let error = |e: crate::codec::CodecError| SnapshotError(e.to_string());
        let (version, body) = open_record(kind, bytes).map_err(error)?;
        let snapshot: Snapshot = match version {
            1 => {
                let old: SnapshotV1 = decode_body(kind, version, body).map_err(error)?;
                if old.version != 1 {
                    return Err(SnapshotError(format!(
                        "format 1 snapshot says version {}",
                        old.version
                    )));
                }
                old.upgrade()
            }
            2 => {
                let old: SnapshotV2 = decode_body(kind, version, body).map_err(error)?;
                if old.version != 2 {
                    return Err(SnapshotError(format!(
                        "format 2 snapshot says version {}",
                        old.version
                    )));
                }
                old.upgrade()
            }
            _ => decode_body(kind, version, body).map_err(error)?,
        };
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError(format!(
                "unknown snapshot version {}",
                snapshot.version
            )));
        }
        // The routing serves only `1..=PARTITIONS_MAX` partitions (`home_of` relies on it).
        if sharding::PartitionCount::new(snapshot.partitions).is_none()
            || snapshot.partition >= snapshot.partitions
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
        state.settlement = snapshot.settlement;
        state.inactive_accounts = snapshot.inactive_accounts.into_iter().collect();
        state.clock_ms = snapshot.clock_ms;
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
