//! The position ledger: one entry for every change of an account's position, reserved
//! amount or liquidity cover, with what caused it and the values it left behind.
//!
//! Where entries come from. The state machine writes them into its batch output
//! (`machine::Output::ledger`) at the very lines that change a balance: a reservation, a
//! commit (the payer's position rises, the payee's falls), a release (abort, reject,
//! expiry), and at the account's home every admin or settlement change that moves its
//! base position or cover (initial position, funds in and out, settlement reserve,
//! commit and abort). So an entry exists exactly when a balance changed, and replaying
//! the same log writes the same entries.
//!
//! Where they go. The runtime hands a durable batch's entries to the archiver with its
//! finished transfers; the store (`storage::ledger`) keeps them per account and time and
//! drops them after the configured retention (`Limits::ledger_retention_ms`). Until the
//! archiver has synced them the partition keeps them in memory, and a snapshot records
//! them (`SnapshotRecord::unledgered`), so a crash loses none. Recovery writes the
//! entries of the batches it replays again: an entry is known by its [`EntryId`], and
//! readers drop repeats of an id.
//!
//! What an entry's values mean. An account's balances are spread over partitions
//! (DESIGN §5: `position = base position at the home + Σ partition slices`), and no
//! single partition knows the sum at a given instant. So an entry carries the change
//! (`*_change`) and the value on the partition that made it (`*_after`): the slice's
//! position and reserved amount for transfer entries, the home's base position and the
//! account's cover for admin and settlement entries. The invariant an auditor checks:
//! the sum of an account's position changes since it was created is its position, the
//! sum of reserved changes its reserved amount and the sum of cover changes its cover.

use crate::command::TimestampMs;
use crate::ids::{AccountKey, TransferId};
use crate::machine::account::Money;
use serde::{Deserialize, Serialize};

/// What changed a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntryKind {
    /// A prepare reserved its amount from the payer.
    Reserve,
    /// A fulfil committed: the payer's reservation became position.
    Commit,
    /// A fulfil committed: the payee's position fell by the amount.
    Credit,
    /// An abort, reject or expiry released the payer's reservation.
    Release,
    /// The initial position set with the limits.
    InitialPosition,
    FundsIn,
    FundsOutReserve,
    FundsOutCommit,
    FundsOutAbort,
    /// A settlement's reserve step (a net receiver's position rises back).
    SettlementReserve,
    /// A settlement's commit step (a sender's position and cover fall, a receiver's
    /// cover rises).
    SettlementCommit,
    /// A settlement's abort step (a reserved rise undone).
    SettlementAbort,
}

impl EntryKind {
    /// The name used in the admin API and the statement.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Reserve => "RESERVE",
            EntryKind::Commit => "COMMIT",
            EntryKind::Credit => "CREDIT",
            EntryKind::Release => "RELEASE",
            EntryKind::InitialPosition => "INITIAL_POSITION",
            EntryKind::FundsIn => "FUNDS_IN",
            EntryKind::FundsOutReserve => "FUNDS_OUT_RESERVE",
            EntryKind::FundsOutCommit => "FUNDS_OUT_COMMIT",
            EntryKind::FundsOutAbort => "FUNDS_OUT_ABORT",
            EntryKind::SettlementReserve => "SETTLEMENT_RESERVE",
            EntryKind::SettlementCommit => "SETTLEMENT_COMMIT",
            EntryKind::SettlementAbort => "SETTLEMENT_ABORT",
        }
    }
}

/// The transfer, funds movement, settlement or admin request behind an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Cause {
    Transfer(TransferId),
    /// A funds in or funds out, by its transferId.
    Funds(TransferId),
    Settlement(u64),
    /// An admin request without an id of its own (the initial position), by the
    /// request's number.
    Admin(u64),
}

/// Where an entry was made: unique over the hub, and the same when recovery writes the
/// entry again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId {
    pub partition: u32,
    pub batch_seq: u64,
    /// The entry's place among its batch's entries.
    pub index: u32,
}

/// One change of one account's balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    pub account: AccountKey,
    /// Hub time of the command that made the change.
    pub at_ms: TimestampMs,
    /// The settlement window open on the partition when the change was made.
    pub window: u64,
    pub kind: EntryKind,
    pub cause: Cause,
    pub position_change: i64,
    pub reserved_change: i64,
    pub cover_change: i64,
    /// The partition's value after the change (see the module docs).
    pub position_after: Money,
    pub reserved_after: Money,
    pub cover_after: Money,
}

impl Entry {
    /// Whether the entry was made at the account's home (an admin or settlement change:
    /// its `cover_after` is the account's cover), not by a transfer on a slice.
    pub fn cause_is_home(&self) -> bool {
        !matches!(self.cause, Cause::Transfer(_))
    }
}

/// The sums of a list of entries' changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub position: Money,
    pub reserved: Money,
    pub cover: Money,
}

impl Totals {
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Totals {
        let mut totals = Totals::default();
        for entry in entries {
            totals.add(entry);
        }
        totals
    }

    pub fn add(&mut self, entry: &Entry) {
        self.entries += 1;
        self.position = checked(
            self.position
                .checked_add(Money::from(entry.position_change)),
        );
        self.reserved = checked(
            self.reserved
                .checked_add(Money::from(entry.reserved_change)),
        );
        self.cover = checked(self.cover.checked_add(Money::from(entry.cover_change)));
    }
}

fn checked(sum: Option<Money>) -> Money {
    sum.expect("ledger totals overflow i128")
}

/// Orders entries for reading (time, then where they were made) and drops repeats of
/// an id (recovery may have written an entry twice).
pub fn sort_dedup(entries: &mut Vec<Entry>) {
    entries.sort_by_key(|e| (e.at_ms, e.id));
    entries.dedup_by_key(|e| e.id);
}
