//! Writes the position ledger's entries (`crate::ledger`) into a batch's output, at the
//! places that change a balance: the slice's lines in `transfers.rs` call
//! [`PartitionState::ledger_slice`]; the home's admin and settlement changes are seen as a
//! difference of the account's base position and cover around the change
//! ([`PartitionState::ledger_home`]), so no branch of `admin.rs` can move money without
//! an entry.

use super::{Output, PartitionState};
use crate::command::Admin;
use crate::ids::AccountKey;
use crate::ledger::{Cause, Entry, EntryId, EntryKind};
use crate::machine::account::{Decrease, Money};
use crate::machine::settlement::SettleStep;

/// What an account's home holds of its balances: (base position, cover).
pub(super) type HomeBalances = (Money, Money);

impl PartitionState {
    fn next_entry_id(&self, out: &Output) -> EntryId {
        EntryId {
            partition: self.partition,
            batch_seq: self.batch_seq,
            index: u32::try_from(out.ledger.len()).expect("ledger entries of one batch fit u32"),
        }
    }

    /// A change of the account's slice on this partition, after it was made.
    pub(super) fn ledger_slice(
        &self,
        account: AccountKey,
        kind: EntryKind,
        cause: Cause,
        position_change: i64,
        reserved_change: i64,
        out: &mut Output,
    ) {
        let slice = &self
            .accounts
            .get(&account)
            .expect("account of a slice change")
            .slice;
        let entry = Entry {
            id: self.next_entry_id(out),
            account,
            at_ms: self.clock_ms,
            window: self.settlement.open_window,
            kind,
            cause,
            position_change,
            reserved_change,
            cover_change: 0,
            position_after: slice.position,
            reserved_after: slice.reserved,
            cover_after: 0,
        };
        out.ledger.push(entry);
    }

    pub(super) fn home_balances(&self, account: &AccountKey) -> Option<HomeBalances> {
        let bank = self.accounts.get(account)?.bank.as_ref()?;
        Some((bank.base_position, bank.cover()))
    }

    /// The entry of a home change, if `before` differs from the balances now.
    pub(super) fn ledger_home(
        &self,
        account: AccountKey,
        before: HomeBalances,
        kind: EntryKind,
        cause: Cause,
        out: &mut Output,
    ) {
        let Some((position, cover)) = self.home_balances(&account) else {
            return;
        };
        if (position, cover) == before {
            return;
        }
        let change = |after: Money, before: Money| {
            i64::try_from(after - before).expect("one admin change moves at most an i64")
        };
        let entry = Entry {
            id: self.next_entry_id(out),
            account,
            at_ms: self.clock_ms,
            window: self.settlement.open_window,
            kind,
            cause,
            position_change: change(position, before.0),
            reserved_change: 0,
            cover_change: change(cover, before.1),
            position_after: position,
            reserved_after: 0,
            cover_after: cover,
        };
        out.ledger.push(entry);
    }
}

/// The entry kind and cause of an admin change of one account, if it can move money.
pub(super) fn admin_entry(admin: &Admin, request_id: u64) -> Option<(EntryKind, Cause)> {
    Some(match admin {
        Admin::InitialPositionAndLimits { .. } => {
            (EntryKind::InitialPosition, Cause::Admin(request_id))
        }
        Admin::FundsIn { funds_id, .. } => (EntryKind::FundsIn, Cause::Funds(*funds_id)),
        Admin::FundsOutReserve { funds_id, .. } => {
            (EntryKind::FundsOutReserve, Cause::Funds(*funds_id))
        }
        Admin::FundsOutCommit { funds_id, .. } => {
            (EntryKind::FundsOutCommit, Cause::Funds(*funds_id))
        }
        Admin::FundsOutAbort { funds_id, .. } => {
            (EntryKind::FundsOutAbort, Cause::Funds(*funds_id))
        }
        Admin::Settle {
            settlement, step, ..
        } => (
            match step {
                SettleStep::Reserve => EntryKind::SettlementReserve,
                SettleStep::Commit => EntryKind::SettlementCommit,
                SettleStep::Abort => EntryKind::SettlementAbort,
            },
            Cause::Settlement(*settlement),
        ),
        Admin::SetNdc { .. }
        | Admin::CreateAccount { .. }
        | Admin::SetActive { .. }
        | Admin::SetAccountActive { .. }
        | Admin::CloseWindow { .. } => return None,
    })
}

/// The entry kind and cause of a decrease applied after its recall round.
pub(super) fn decrease_entry(change: &Decrease, request_id: u64) -> Option<(EntryKind, Cause)> {
    Some(match change {
        // A limit moves no balance.
        Decrease::SetNdc { .. } => return None,
        Decrease::InitialPositionAndLimits { .. } => {
            (EntryKind::InitialPosition, Cause::Admin(request_id))
        }
        Decrease::FundsOutReserve { funds_id, .. } => {
            (EntryKind::FundsOutReserve, Cause::Funds(*funds_id))
        }
        Decrease::SettleReserve { settlement, .. } => {
            (EntryKind::SettlementReserve, Cause::Settlement(*settlement))
        }
    })
}
