//! An account as one partition sees it: its slice (the local virtual position) and, on the
//! account's home partition only, its bank (unallocated headroom, limits, admin history).
//!
//! Headroom bookkeeping (DESIGN §5). For every account, at every step:
//!
//! ```text
//! bank + Σ slice.headroom + headroom in flight  ==  limit − position − reserved
//! ```
//!
//! where `position = bank.base_position + Σ slice.position` and `reserved = Σ slice.reserved`.
//! A slice reserves only from its own `headroom`, so no reservation can push the account
//! past its limit while the bank is not negative (and the bank goes negative only while
//! every slice is centralised, holding nothing).

use crate::command::{Admin, BodyHash, Prepare, TimestampMs};
use crate::ids::TransferId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Balances are `i128`: a sum of `i64` amounts cannot overflow it in any realistic history,
/// and checked arithmetic still guards every step.
pub type Money = i128;

/// The local virtual position of one account on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Free headroom this partition may spend for the account, never negative.
    pub headroom: Money,
    /// Committed net debit of transfers living on this partition.
    pub position: Money,
    /// Sum of this partition's RESERVED transfers where the account pays.
    pub reserved: Money,
    /// While centralised the slice keeps no free headroom: every credit, release and
    /// spare grant goes straight back to the bank, and each prepare borrows exactly.
    pub centralised: bool,
    /// Highest recall round seen from the home.
    pub round_seen: u64,
    /// Prepares waiting for headroom, in arrival order (bounded per partition).
    pub parked: VecDeque<Parked>,
    /// Hub time of the last reservation, for the idle return.
    pub last_used_ms: TimestampMs,
    /// Amount reserved since the last borrow: the size of the next chunk.
    pub recent_demand: Money,
}

/// A prepare that waits for headroom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub prepare: Prepare,
    /// A borrow for this prepare is outstanding at the home.
    pub borrow_sent: bool,
}

/// What the home is doing about an account's headroom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankMode {
    /// Slices hold allowances; borrows are granted in chunks.
    Distributed,
    /// A recall round is out: waiting for every partition's answer; requests queue.
    Recalling {
        round: u64,
        waiting_for: BTreeSet<u32>,
    },
    /// Every slice holds nothing: the bank is all the free headroom there is, so the home
    /// can grant exactly or refuse without a false rejection.
    Centralised,
}

/// A request the home must hold back while a recall round is out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeRequest {
    Borrow {
        from: u32,
        transfer_id: TransferId,
        amount: i64,
        extra: i64,
        /// The bank's round count when the borrow arrived. It may be refused only after a
        /// recall round that started later has completed: every return sent before the
        /// borrow arrived has then reached the bank (each sender's messages arrive in
        /// order), so no headroom is still travelling towards it.
        since_round: u64,
    },
    /// An admin change that lowers headroom: applied once all headroom is gathered.
    Decrease { request_id: u64, change: Decrease },
    /// A later admin change of the account, waiting behind an earlier one so that the
    /// changes apply and are acknowledged in arrival order; evaluated when its turn comes.
    Admin { request_id: u64, admin: Admin },
}

impl HomeRequest {
    /// An admin change (as opposed to a borrow).
    pub fn is_admin(&self) -> bool {
        match self {
            HomeRequest::Borrow { .. } => false,
            HomeRequest::Decrease { .. } | HomeRequest::Admin { .. } => true,
        }
    }
}

/// Admin changes that lower an account's headroom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decrease {
    SetNdc {
        ndc: i64,
    },
    InitialPositionAndLimits {
        position: i64,
        ndc: i64,
    },
    FundsOutReserve {
        amount: i64,
        funds_id: TransferId,
    },
    /// A net receiver's position rises back by `-net` (`machine::settlement`); never refused.
    SettleReserve {
        settlement: crate::machine::settlement::SettlementId,
        net: i64,
    },
}

/// Record of an admin funds movement, for idempotency and the two-phase funds out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FundsRecord {
    In { amount: i64 },
    OutReserved { amount: i64 },
    OutCommitted { amount: i64 },
    OutAborted { amount: i64 },
}

/// The home partition's part of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bank {
    /// Unallocated headroom. Negative only when the account is over its limit.
    pub bank: Money,
    pub ndc: Money,
    /// Funds deposited (settlement balance, positive), before pending funds out.
    pub liquidity: Money,
    /// Liquidity set aside by two-phase funds out not yet committed or aborted.
    pub funds_out_reserved: Money,
    /// Position not attributable to any slice (the initial position).
    pub base_position: Money,
    /// `initialPositionAndLimits` has been applied (allowed once).
    pub limits_set: bool,
    pub mode: BankMode,
    /// Recall rounds started so far.
    pub round: u64,
    pub queue: VecDeque<HomeRequest>,
    pub funds: BTreeMap<TransferId, FundsRecord>,
}

impl Bank {
    pub fn new() -> Bank {
        Bank {
            bank: 0,
            ndc: 0,
            liquidity: 0,
            funds_out_reserved: 0,
            base_position: 0,
            limits_set: false,
            mode: BankMode::Distributed,
            round: 0,
            queue: VecDeque::new(),
            funds: BTreeMap::new(),
        }
    }

    /// Liquidity cover available to back positions.
    pub fn cover(&self) -> Money {
        self.liquidity - self.funds_out_reserved
    }

    /// `min(NDC, liquidity cover)`.
    pub fn limit(&self) -> Money {
        self.ndc.min(self.cover())
    }
}

impl Default for Bank {
    fn default() -> Bank {
        Bank::new()
    }
}

/// One account's entry on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEntry {
    pub slice: Slice,
    /// Present on the home partition only.
    pub bank: Option<Bank>,
}

/// An open transfer on its partition. Costs at most `OPEN_TRANSFER_BYTES_MAX` of memory
/// including its map slot and its expiry index entry (see ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTransfer {
    pub parties: crate::command::Parties,
    #[serde(with = "serde_bytes")]
    pub condition: [u8; 32],
    pub expiration_ms: TimestampMs,
    #[serde(with = "serde_bytes")]
    pub prepare_hash: BodyHash,
    /// False while the prepare is parked waiting for headroom.
    pub reserved: bool,
}

/// Upper bound of the memory one open transfer costs: its record and key in the hash map
/// (about 220 bytes, plus one control byte, at most 8/7 of that at the map's maximum
/// load), and its expiry index entry (48 bytes, counted twice for half-full B-tree
/// leaves). Checked against `size_of` in a unit test.
pub const OPEN_TRANSFER_BYTES_MAX: usize = 384;

/// Parked prepares also hold their payload; they are bounded by `parked_prepares_max`.
#[allow(dead_code)]
pub(crate) fn money(amount: i64) -> Money {
    Money::from(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_transfer_size_is_bounded() {
        let record = std::mem::size_of::<OpenTransfer>() + std::mem::size_of::<TransferId>();
        let expiry = std::mem::size_of::<(TimestampMs, TransferId)>();
        // hashbrown: key + value + 1 control byte per slot at <= 87.5% load; B-tree leaf
        // entries are at least half full.
        let estimate = record * 8 / 7 + 1 + expiry * 2;
        assert!(
            estimate <= OPEN_TRANSFER_BYTES_MAX,
            "{estimate} > {OPEN_TRANSFER_BYTES_MAX}"
        );
    }
}
