//! Settlement on one partition: the open window's nets, the hub's own accounts, and the
//! settlement steps applied at an account's home.
//!
//! # Windows without a stop
//!
//! Every committed transfer belongs to the settlement window open *on its partition* when it
//! committed (DESIGN §8). A commit adds its amount to the payer's net and takes it from the
//! payee's, in the open window of this partition only: two map updates, no scan. Closing a
//! window is a command (`Admin::CloseWindow`) that every partition applies at a position of
//! its own log; from that position on, commits count in the next window. So a close never
//! pauses a transfer and needs no lock: it is one more command in each log. The hub reads
//! the closed window's nets from every partition once each has acknowledged the close
//! (acknowledged means durable, so the nets can no longer change) and sums them.
//!
//! Positive net: the account's position rose in the window (a net sender, it owes); negative:
//! a net receiver. A closed window's nets sum to zero per currency on every partition, since
//! each commit adds and takes the same amount in one currency.
//!
//! Closed windows' nets stay here for [`CLOSED_WINDOWS_KEPT_MAX`] closes (the hub reads them
//! right after the close, and again after a crash that interrupted it); older ones are folded
//! into `dropped`, so that at every step, per account and summed over partitions,
//! `Σ slice.position == Σ dropped + Σ window nets` (checked by the simulation).
//!
//! # Settling
//!
//! A settlement moves each account's net out of its position and its liquidity cover, in
//! central-settlement's steps, each an `Admin::Settle` at the account's home, in the order
//! of the account's other admin changes:
//!
//! * `Reserve`: a net receiver's position rises back by its net. That lowers headroom, so it
//!   waits for a recall round like any decrease; it is never refused (a settlement may leave
//!   an account above its limit, as in Mojaloop). Senders: nothing moves yet.
//! * `Commit`: a net sender's position falls by its net and its cover falls by the same
//!   amount; a receiver's cover rises by its net. Neither lowers headroom.
//! * `Abort` (before commit): a receiver's reserved rise is undone.
//!
//! Every step is recorded per (settlement, account): the same step again changes nothing
//! (a resumed settlement re-sends steps), a step with another net or out of order is refused.
//!
//! # The hub's accounts (double entry)
//!
//! Each partition keeps, per currency, the hub's side of what its homes moved:
//! `multilateral` (HUB_MULTILATERAL_SETTLEMENT) takes the opposite of every settlement change
//! of a position, `settlement` the opposite of every settlement change of a cover, and
//! `reconciliation` (HUB_RECONCILIATION) the opposite of every funds in and funds out. Summed
//! over partitions, per currency and at every step:
//! `Σ positions + Σ multilateral == Σ initial positions` and
//! `Σ liquidity + Σ settlement + Σ reconciliation == 0`. A settled settlement leaves
//! `multilateral` and `settlement` where they were before it: its nets sum to zero.

use super::account::{Bank, Decrease, Money};
use super::admin::{admin_done, Change};
use super::{checked_add, checked_sub, Output, PartitionState};
use crate::command::ErrorCode;
use crate::ids::{AccountKey, Currency};
use crate::limits::CLOSED_WINDOWS_KEPT_MAX;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settlement windows are numbered from 1, in the order they open.
pub type WindowId = u64;
/// Settlements are numbered by the hub, from 1.
pub type SettlementId = u64;

/// One window's figures on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowNets {
    /// Net of each account: committed amounts paid minus amounts received.
    pub nets: BTreeMap<AccountKey, Money>,
    /// Transfers committed in the window here.
    pub transfers: u64,
    /// Sum of the committed amounts, per currency.
    pub amounts: BTreeMap<Currency, Money>,
}

impl WindowNets {
    fn add_commit(&mut self, payer: AccountKey, payee: AccountKey, amount: Money) {
        let net = self.nets.entry(payer).or_default();
        *net = checked_add(*net, amount);
        let net = self.nets.entry(payee).or_default();
        *net = checked_sub(*net, amount);
        self.transfers += 1;
        let sum = self.amounts.entry(payer.currency).or_default();
        *sum = checked_add(*sum, amount);
    }

    /// Adds another partition's (or window's) figures to these.
    pub fn merge(&mut self, other: &WindowNets) {
        for (account, net) in &other.nets {
            let sum = self.nets.entry(*account).or_default();
            *sum = checked_add(*sum, *net);
        }
        self.transfers += other.transfers;
        for (currency, amount) in &other.amounts {
            let sum = self.amounts.entry(*currency).or_default();
            *sum = checked_add(*sum, *amount);
        }
    }
}

/// The hub's own balances on one partition, for one currency (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubBalances {
    pub multilateral: Money,
    pub settlement: Money,
    pub reconciliation: Money,
}

/// A step of a settlement, for one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleStep {
    Reserve,
    Commit,
    Abort,
}

/// How far a settlement went for one account at its home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepRecord {
    Reserved { net: i64 },
    Committed { net: i64 },
    Aborted { net: i64 },
}

/// Settlement state of one partition (part of its snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementBook {
    /// The window commits count in now.
    pub open_window: WindowId,
    /// The open window and the last closed ones.
    pub windows: BTreeMap<WindowId, WindowNets>,
    /// Nets of windows no longer kept, summed per account.
    pub dropped: BTreeMap<AccountKey, Money>,
    /// The hub's balances per currency.
    pub hub: BTreeMap<Currency, HubBalances>,
    /// Settlement steps applied at this home.
    pub steps: BTreeMap<(SettlementId, AccountKey), StepRecord>,
}

impl Default for SettlementBook {
    fn default() -> SettlementBook {
        SettlementBook {
            open_window: 1,
            windows: BTreeMap::new(),
            dropped: BTreeMap::new(),
            hub: BTreeMap::new(),
            steps: BTreeMap::new(),
        }
    }
}

/// Why a window cannot be closed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowNotOpen {
    pub open: WindowId,
}

impl SettlementBook {
    /// Counts a commit in the open window (and, with the test fault, in the one before).
    pub(super) fn record_commit(
        &mut self,
        payer: AccountKey,
        payee: AccountKey,
        amount: Money,
        count_twice: bool,
    ) {
        let open = self.open_window;
        self.windows
            .entry(open)
            .or_default()
            .add_commit(payer, payee, amount);
        if count_twice && open > 1 {
            self.windows
                .entry(open - 1)
                .or_default()
                .add_commit(payer, payee, amount);
        }
    }

    /// Closes `window` if it is the open one; `Ok` also when it was closed before (a
    /// resent close), `Err` when it has not opened yet here.
    pub(super) fn close(&mut self, window: WindowId) -> Result<(), WindowNotOpen> {
        if window < self.open_window {
            return Ok(());
        }
        if window > self.open_window {
            return Err(WindowNotOpen {
                open: self.open_window,
            });
        }
        // Every kept closed window has an entry, empty or not: a closed window without one
        // was dropped.
        self.windows.entry(window).or_default();
        self.open_window += 1;
        while self.windows.range(..self.open_window).count() > CLOSED_WINDOWS_KEPT_MAX {
            let Some((_, oldest)) = self.windows.pop_first() else {
                break;
            };
            for (account, net) in oldest.nets {
                let sum = self.dropped.entry(account).or_default();
                *sum = checked_add(*sum, net);
            }
        }
        Ok(())
    }

    /// A closed window's figures, if still kept (`None` when it is open or was dropped).
    pub fn closed_window(&self, window: WindowId) -> Option<WindowNets> {
        if window >= self.open_window {
            return None;
        }
        self.windows.get(&window).cloned()
    }

    pub(super) fn hub_mut(&mut self, currency: Currency) -> &mut HubBalances {
        self.hub.entry(currency).or_default()
    }
}

/// `Ok` on success; `Err((code, message))` for a refusal.
type StepResult = Result<(), (ErrorCode, String)>;

fn out_of_order(step: SettleStep, seen: Option<StepRecord>) -> (ErrorCode, String) {
    (
        ErrorCode::Validation,
        format!("settlement step {step:?} does not follow {seen:?}"),
    )
}

/// Moves `delta` of headroom into the bank: what an account change frees (or takes).
fn adjust_bank(bank: &mut Bank, delta: Money) {
    bank.bank = checked_add(bank.bank, delta);
}

/// A net receiver's position rises back by its net (the `Reserve` step), once all its
/// headroom is gathered or at once when the account is centralised. Re-validated when it
/// waited: the same step may have been applied meanwhile.
pub(super) fn apply_reserve(
    book: &mut SettlementBook,
    bank: &mut Bank,
    account: AccountKey,
    settlement: SettlementId,
    net: i64,
) -> StepResult {
    match book.steps.get(&(settlement, account)).copied() {
        None => {}
        Some(StepRecord::Reserved { net: seen }) if seen == net => return Ok(()),
        seen => return Err(out_of_order(SettleStep::Reserve, seen)),
    }
    assert!(net < 0, "only a net receiver's reserve waits for headroom");
    let rise = -Money::from(net);
    bank.base_position = checked_add(bank.base_position, rise);
    adjust_bank(bank, -rise);
    let hub = book.hub_mut(account.currency);
    hub.multilateral = checked_sub(hub.multilateral, rise);
    book.steps
        .insert((settlement, account), StepRecord::Reserved { net });
    Ok(())
}

/// The `Commit` step: a sender's position and cover fall by its net, a receiver's cover
/// rises by its net. Headroom does not fall: cover falls by at most what the position does.
fn apply_commit(book: &mut SettlementBook, bank: &mut Bank, account: AccountKey, net: i64) {
    let net = Money::from(net);
    let before = bank.limit() - bank.base_position;
    bank.liquidity = checked_sub(bank.liquidity, net);
    let hub = book.hub_mut(account.currency);
    hub.settlement = checked_add(hub.settlement, net);
    if net > 0 {
        bank.base_position = checked_sub(bank.base_position, net);
        hub.multilateral = checked_add(hub.multilateral, net);
    }
    let delta = (bank.limit() - bank.base_position) - before;
    assert!(
        delta >= 0,
        "a settlement commit lowered headroom by {delta}"
    );
    adjust_bank(bank, delta);
}

/// The `Abort` step after a `Reserve`: a receiver's reserved rise is undone.
fn apply_abort(book: &mut SettlementBook, bank: &mut Bank, account: AccountKey, net: i64) {
    if net < 0 {
        let rise = -Money::from(net);
        bank.base_position = checked_sub(bank.base_position, rise);
        adjust_bank(bank, rise);
        let hub = book.hub_mut(account.currency);
        hub.multilateral = checked_add(hub.multilateral, rise);
    }
}

impl PartitionState {
    /// One settlement step of one account at its home, when its turn among the account's
    /// admin changes has come (`home_admin`).
    pub(super) fn settle_step(
        &mut self,
        request_id: u64,
        account: AccountKey,
        settlement: SettlementId,
        step: SettleStep,
        net: i64,
        out: &mut Output,
    ) {
        let Some(bank) = self
            .accounts
            .get_mut(&account)
            .and_then(|e| e.bank.as_mut())
        else {
            out.events.push(admin_done(
                request_id,
                Err((ErrorCode::Validation, "unknown account".into())),
            ));
            return;
        };
        let key = (settlement, account);
        let seen = self.settlement.steps.get(&key).copied();
        let same = |record: Option<StepRecord>| match record {
            Some(StepRecord::Reserved { net: n })
            | Some(StepRecord::Committed { net: n })
            | Some(StepRecord::Aborted { net: n }) => n == net,
            None => true,
        };
        if !same(seen) {
            out.events.push(admin_done(
                request_id,
                Err((
                    ErrorCode::ModifiedRequest,
                    format!("settlement {settlement} has another net for this account"),
                )),
            ));
            return;
        }
        let result: StepResult = match (step, seen) {
            (SettleStep::Reserve, None) if net < 0 => {
                // Lowers headroom: a decrease like any other, applied at once when the
                // account is centralised, else after a recall round (`apply_reserve`).
                let lowered = Money::from(net);
                self.admin_change(request_id, account, out, |_| {
                    Ok(Change::Headroom(
                        lowered,
                        Decrease::SettleReserve { settlement, net },
                    ))
                });
                return;
            }
            (SettleStep::Reserve, None) => {
                self.settlement
                    .steps
                    .insert(key, StepRecord::Reserved { net });
                Ok(())
            }
            (SettleStep::Reserve, Some(StepRecord::Reserved { .. }))
            | (SettleStep::Commit, Some(StepRecord::Committed { .. }))
            | (SettleStep::Abort, Some(StepRecord::Aborted { .. })) => Ok(()),
            (SettleStep::Commit, Some(StepRecord::Reserved { .. })) => {
                apply_commit(&mut self.settlement, bank, account, net);
                self.settlement
                    .steps
                    .insert(key, StepRecord::Committed { net });
                Ok(())
            }
            (SettleStep::Abort, Some(StepRecord::Reserved { .. })) => {
                apply_abort(&mut self.settlement, bank, account, net);
                self.settlement
                    .steps
                    .insert(key, StepRecord::Aborted { net });
                Ok(())
            }
            (SettleStep::Abort, None) => {
                self.settlement
                    .steps
                    .insert(key, StepRecord::Aborted { net });
                Ok(())
            }
            (step, seen) => Err(out_of_order(step, seen)),
        };
        out.events.push(admin_done(request_id, result));
        self.maybe_decentralise(account);
    }
}
