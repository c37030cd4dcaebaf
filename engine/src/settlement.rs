//! The hub's settlement book: settlement windows and settlements, with central-settlement's
//! states, as the operator sees them. Pure: no IO, no clock (times come in as arguments);
//! the runtime (`runtime::settlement`) stores each record and drives the partitions.
//!
//! The money moves in the partitions (`machine::settlement`): closing a window and each
//! settlement step are commands through their logs. The book records what the operator
//! decided and what the partitions acknowledged, in the pattern *intent, then observed*:
//!
//! * a close is first recorded as intent (`WindowRecord::closing`), then sent to every
//!   partition, then recorded as done with the window's nets and the next window opened;
//! * a settlement's state change is first recorded as a plan (`SettlementRecord::pending`:
//!   the account states decided), then each account's step is applied at its home, then
//!   the plan becomes the account states.
//!
//! Every step at a partition is idempotent, so after a crash the runtime completes whatever
//! intent it finds, before anything else: nothing is lost or done twice.
//!
//! States and transitions are central-settlement's. A window is OPEN, then CLOSED, then
//! PENDING_SETTLEMENT while a settlement holds it, then SETTLED (or ABORTED with its
//! settlement, after which it can be settled again). Each account of a settlement moves
//! PENDING_SETTLEMENT → PS_TRANSFERS_RECORDED → PS_TRANSFERS_RESERVED →
//! PS_TRANSFERS_COMMITTED → SETTLED one state at a time; the settlement's state is the
//! least advanced of its accounts' (SETTLING while some but not all are SETTLED). A
//! settlement can be ABORTED until one of its accounts is PS_TRANSFERS_COMMITTED.

use crate::command::ErrorCode;
use crate::ids::AccountKey;
use crate::limits::{SETTLEMENT_ACCOUNTS_MAX, SETTLEMENT_BOOK_ENTRIES_MAX};
use crate::machine::settlement::{SettleStep, SettlementId, WindowId, WindowNets};
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WindowState {
    Open,
    Closed,
    PendingSettlement,
    Settled,
    Aborted,
}

impl WindowState {
    pub const ALL: [WindowState; 5] = [
        WindowState::Open,
        WindowState::Closed,
        WindowState::PendingSettlement,
        WindowState::Settled,
        WindowState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Open => "OPEN",
            WindowState::Closed => "CLOSED",
            WindowState::PendingSettlement => "PENDING_SETTLEMENT",
            WindowState::Settled => "SETTLED",
            WindowState::Aborted => "ABORTED",
        }
    }

    pub fn parse(text: &str) -> Option<WindowState> {
        WindowState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A settlement's state, and the state of each of its accounts (never SETTLING).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SettlementState {
    PendingSettlement,
    PsTransfersRecorded,
    PsTransfersReserved,
    PsTransfersCommitted,
    Settling,
    Settled,
    Aborted,
}

impl SettlementState {
    pub const ALL: [SettlementState; 7] = [
        SettlementState::PendingSettlement,
        SettlementState::PsTransfersRecorded,
        SettlementState::PsTransfersReserved,
        SettlementState::PsTransfersCommitted,
        SettlementState::Settling,
        SettlementState::Settled,
        SettlementState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SettlementState::PendingSettlement => "PENDING_SETTLEMENT",
            SettlementState::PsTransfersRecorded => "PS_TRANSFERS_RECORDED",
            SettlementState::PsTransfersReserved => "PS_TRANSFERS_RESERVED",
            SettlementState::PsTransfersCommitted => "PS_TRANSFERS_COMMITTED",
            SettlementState::Settling => "SETTLING",
            SettlementState::Settled => "SETTLED",
            SettlementState::Aborted => "ABORTED",
        }
    }

    pub fn parse(text: &str) -> Option<SettlementState> {
        SettlementState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// The one state an account may move to from this one (besides ABORTED).
    fn next_for_account(self) -> Option<SettlementState> {
        match self {
            SettlementState::PendingSettlement => Some(SettlementState::PsTransfersRecorded),
            SettlementState::PsTransfersRecorded => Some(SettlementState::PsTransfersReserved),
            SettlementState::PsTransfersReserved => Some(SettlementState::PsTransfersCommitted),
            SettlementState::PsTransfersCommitted => Some(SettlementState::Settled),
            SettlementState::Settling | SettlementState::Settled | SettlementState::Aborted => None,
        }
    }
}

/// The money step at the account's home that moving an account into `to` takes.
pub fn step_into(to: SettlementState) -> Option<SettleStep> {
    match to {
        SettlementState::PsTransfersReserved => Some(SettleStep::Reserve),
        SettlementState::PsTransfersCommitted => Some(SettleStep::Commit),
        SettlementState::Aborted => Some(SettleStep::Abort),
        _ => None,
    }
}

/// How a settlement model settles (central-ledger's `settlementModel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementModel {
    pub name: String,
    /// GROSS or NET.
    pub granularity: String,
    /// BILATERAL or MULTILATERAL.
    pub interchange: String,
    /// IMMEDIATE or DEFERRED.
    pub delay: String,
    pub currency: Option<String>,
    pub require_liquidity_check: bool,
    pub auto_position_reset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub id: WindowId,
    pub state: WindowState,
    pub reason: String,
    pub created_ms: i64,
    pub changed_ms: i64,
    /// The close is decided and not yet acknowledged by every partition.
    pub closing: bool,
    /// The window's nets summed over partitions (empty while open).
    pub nets: WindowNets,
    /// The settlement holding (or that settled) the window.
    pub settlement: Option<SettlementId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementAccount {
    /// Positive: a net sender (it pays at the settlement bank).
    pub net: i64,
    pub state: SettlementState,
    pub reason: String,
    pub external_reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: SettlementState,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    pub id: SettlementId,
    pub model: String,
    pub reason: String,
    pub state: SettlementState,
    pub windows: Vec<WindowId>,
    pub accounts: BTreeMap<AccountKey, SettlementAccount>,
    pub created_ms: i64,
    pub changed_ms: i64,
    /// A state change decided and not yet applied at every account's home: the target
    /// state of each account it moves, with the reason.
    pub pending: Option<Pending>,
    pub history: Vec<StateChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub accounts: Vec<(AccountKey, SettlementState)>,
    pub reason: String,
    pub external_reference: Option<String>,
}

/// One account's requested state in a settlement update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUpdate {
    pub account: AccountKey,
    pub state: SettlementState,
    pub reason: String,
    pub external_reference: Option<String>,
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::refused(ErrorCode::Validation, message)
}

fn not_found(message: impl Into<String>) -> EngineError {
    EngineError::NotFound(message.into())
}

/// Windows and settlements, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    pub windows: BTreeMap<WindowId, WindowRecord>,
    pub settlements: BTreeMap<SettlementId, SettlementRecord>,
}

impl Book {
    fn open_window(&mut self, id: WindowId, now_ms: i64) {
        self.windows.insert(
            id,
            WindowRecord {
                id,
                state: WindowState::Open,
                reason: String::new(),
                created_ms: now_ms,
                changed_ms: now_ms,
                closing: false,
                nets: WindowNets::default(),
                settlement: None,
            },
        );
    }

    /// Opens the window after the newest when none is open (a new book, or a crash
    /// between storing a closed window and its successor); returns it to store.
    pub fn ensure_open(&mut self, now_ms: i64) -> Option<WindowRecord> {
        if self.windows.values().any(|w| w.state == WindowState::Open) {
            return None;
        }
        let id = self.windows.keys().next_back().map_or(1, |last| last + 1);
        self.open_window(id, now_ms);
        Some(self.windows[&id].clone())
    }

    pub fn window(&self, id: WindowId) -> Result<&WindowRecord, EngineError> {
        self.windows
            .get(&id)
            .ok_or_else(|| not_found(format!("settlement window {id} not found")))
    }

    fn window_mut(&mut self, id: WindowId) -> Result<&mut WindowRecord, EngineError> {
        self.windows
            .get_mut(&id)
            .ok_or_else(|| not_found(format!("settlement window {id} not found")))
    }

    fn settlement_mut(&mut self, id: SettlementId) -> Result<&mut SettlementRecord, EngineError> {
        self.settlements
            .get_mut(&id)
            .ok_or_else(|| not_found(format!("settlement {id} not found")))
    }

    pub fn settlement(&self, id: SettlementId) -> Result<&SettlementRecord, EngineError> {
        self.settlements
            .get(&id)
            .ok_or_else(|| not_found(format!("settlement {id} not found")))
    }

    /// Decides to close window `id` (the open one): returns the record to store.
    pub fn begin_close(
        &mut self,
        id: WindowId,
        reason: &str,
        now_ms: i64,
    ) -> Result<WindowRecord, EngineError> {
        let window = self.window_mut(id)?;
        if window.state != WindowState::Open {
            return Err(invalid(format!(
                "settlement window {id} is {}, only the open window can be closed",
                window.state.as_str()
            )));
        }
        if !window.closing {
            window.closing = true;
            window.reason = reason.to_string();
            window.changed_ms = now_ms;
        }
        Ok(window.clone())
    }

    /// Every partition closed window `id`: it is CLOSED with `nets`, the next one opens.
    /// Returns both records to store.
    pub fn finish_close(
        &mut self,
        id: WindowId,
        nets: WindowNets,
        now_ms: i64,
    ) -> Result<[WindowRecord; 2], EngineError> {
        let window = self.window_mut(id)?;
        assert!(window.closing && window.state == WindowState::Open);
        window.closing = false;
        window.state = WindowState::Closed;
        window.nets = nets;
        window.changed_ms = now_ms;
        let closed = window.clone();
        self.open_window(id + 1, now_ms);
        let next = self.windows[&(id + 1)].clone();
        self.forget_oldest();
        Ok([closed, next])
    }

    /// A new settlement of closed (or aborted) windows, PENDING_SETTLEMENT, with each
    /// account's net summed over the windows. Returns it and the windows to store.
    pub fn create_settlement(
        &mut self,
        model: &str,
        reason: &str,
        window_ids: &[WindowId],
        now_ms: i64,
    ) -> Result<(SettlementRecord, Vec<WindowRecord>), EngineError> {
        if window_ids.is_empty() {
            return Err(invalid("settlementWindows must name at least one window"));
        }
        let mut ids = window_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != window_ids.len() {
            return Err(invalid("settlementWindows names a window twice"));
        }
        let mut nets = WindowNets::default();
        for id in &ids {
            let window = self.window(*id)?;
            if !matches!(window.state, WindowState::Closed | WindowState::Aborted) {
                return Err(invalid(format!(
                    "settlement window {id} is {}; only CLOSED or ABORTED windows can be settled",
                    window.state.as_str()
                )));
            }
            nets.merge(&window.nets);
        }
        if nets.nets.is_empty() {
            return Err(invalid(
                "the settlement windows hold no committed transfers",
            ));
        }
        if nets.nets.len() > SETTLEMENT_ACCOUNTS_MAX {
            return Err(EngineError::Overflow(format!(
                "a settlement covers at most {SETTLEMENT_ACCOUNTS_MAX} accounts"
            )));
        }
        let mut accounts = BTreeMap::new();
        for (account, net) in nets.nets {
            let net = i64::try_from(net)
                .map_err(|_| EngineError::Overflow(format!("net of {account:?} overflows")))?;
            accounts.insert(
                account,
                SettlementAccount {
                    net,
                    state: SettlementState::PendingSettlement,
                    reason: reason.to_string(),
                    external_reference: None,
                },
            );
        }
        let id = self
            .settlements
            .keys()
            .next_back()
            .map_or(1, |last| last + 1);
        let record = SettlementRecord {
            id,
            model: model.to_string(),
            reason: reason.to_string(),
            state: SettlementState::PendingSettlement,
            windows: ids.clone(),
            accounts,
            created_ms: now_ms,
            changed_ms: now_ms,
            pending: None,
            history: vec![StateChange {
                state: SettlementState::PendingSettlement,
                reason: reason.to_string(),
                at_ms: now_ms,
            }],
        };
        self.settlements.insert(id, record.clone());
        let mut windows = Vec::with_capacity(ids.len());
        for window_id in ids {
            let window = self.windows.get_mut(&window_id).expect("checked above");
            window.state = WindowState::PendingSettlement;
            window.settlement = Some(id);
            window.changed_ms = now_ms;
            windows.push(window.clone());
        }
        self.forget_oldest();
        Ok((record, windows))
    }

    /// Decides a state change of some accounts of settlement `id`; `Ok(None)` when it
    /// changes nothing. The plan is kept as the settlement's `pending` intent.
    pub fn plan_update(
        &mut self,
        id: SettlementId,
        updates: &[AccountUpdate],
        reason: &str,
    ) -> Result<Option<SettlementRecord>, EngineError> {
        let record = self.settlement_mut(id)?;
        if record.pending.is_some() {
            return Err(EngineError::refused(
                ErrorCode::ServiceUnavailable,
                format!("settlement {id} is still applying its last change"),
            ));
        }
        let resent = updates.iter().all(|u| {
            record
                .accounts
                .get(&u.account)
                .is_some_and(|a| a.state == u.state)
        });
        if resent {
            return Ok(None); // every account is already there: a resent update
        }
        if matches!(
            record.state,
            SettlementState::Settled | SettlementState::Aborted
        ) {
            return Err(invalid(format!(
                "settlement {id} is {} and cannot change",
                record.state.as_str()
            )));
        }
        let mut plan = Vec::new();
        for update in updates {
            let account = record.accounts.get(&update.account).ok_or_else(|| {
                invalid(format!(
                    "participant {} has no {} account in settlement {id}",
                    update.account.fsp, update.account.currency
                ))
            })?;
            if update.state == account.state {
                continue; // already there: a resent update
            }
            if account.state.next_for_account() != Some(update.state) {
                return Err(invalid(format!(
                    "participant {} {}: {} cannot follow {}",
                    update.account.fsp,
                    update.account.currency,
                    update.state.as_str(),
                    account.state.as_str()
                )));
            }
            plan.push((update.account, update.state));
        }
        if plan.is_empty() {
            return Ok(None);
        }
        record.pending = Some(Pending {
            accounts: plan,
            reason: reason.to_string(),
            external_reference: updates.iter().find_map(|u| u.external_reference.clone()),
        });
        Ok(Some(record.clone()))
    }

    /// Decides to abort settlement `id`: every account goes to ABORTED. Refused once an
    /// account is PS_TRANSFERS_COMMITTED (its money has moved).
    pub fn plan_abort(
        &mut self,
        id: SettlementId,
        reason: &str,
    ) -> Result<Option<SettlementRecord>, EngineError> {
        let record = self.settlement_mut(id)?;
        if record.pending.is_some() {
            return Err(EngineError::refused(
                ErrorCode::ServiceUnavailable,
                format!("settlement {id} is still applying its last change"),
            ));
        }
        if record.state == SettlementState::Aborted {
            return Ok(None);
        }
        if let Some((account, _)) = record
            .accounts
            .iter()
            .find(|(_, a)| a.state >= SettlementState::PsTransfersCommitted)
        {
            return Err(invalid(format!(
                "settlement {id} cannot be aborted: participant {} {} is already {}",
                account.fsp,
                account.currency,
                record.accounts[account].state.as_str()
            )));
        }
        record.pending = Some(Pending {
            accounts: record
                .accounts
                .keys()
                .map(|a| (*a, SettlementState::Aborted))
                .collect(),
            reason: reason.to_string(),
            external_reference: None,
        });
        Ok(Some(record.clone()))
    }

    /// Every home applied the pending plan of settlement `id`: the accounts take their new
    /// states and the settlement and its windows follow. Returns the records to store.
    pub fn finish_update(
        &mut self,
        id: SettlementId,
        now_ms: i64,
    ) -> Result<(SettlementRecord, Vec<WindowRecord>), EngineError> {
        let record = self.settlement_mut(id)?;
        let Some(pending) = record.pending.take() else {
            return Ok((record.clone(), Vec::new()));
        };
        for (account, state) in &pending.accounts {
            let entry = record
                .accounts
                .get_mut(account)
                .expect("planned accounts exist");
            entry.state = *state;
            entry.reason = pending.reason.clone();
            if pending.external_reference.is_some() {
                entry.external_reference = pending.external_reference.clone();
            }
        }
        let states: Vec<SettlementState> = record.accounts.values().map(|a| a.state).collect();
        let before = record.state;
        record.state = if states.iter().all(|s| *s == SettlementState::Aborted) {
            SettlementState::Aborted
        } else if states.iter().all(|s| *s == SettlementState::Settled) {
            SettlementState::Settled
        } else if states.contains(&SettlementState::Settled) {
            SettlementState::Settling
        } else {
            *states.iter().min().expect("not empty")
        };
        record.changed_ms = now_ms;
        if record.state != before {
            record.history.push(StateChange {
                state: record.state,
                reason: pending.reason.clone(),
                at_ms: now_ms,
            });
        }
        let record = record.clone();
        let window_state = match record.state {
            SettlementState::Settled => Some(WindowState::Settled),
            SettlementState::Aborted => Some(WindowState::Aborted),
            _ => None,
        };
        let mut windows = Vec::new();
        if let Some(state) = window_state {
            for window_id in &record.windows {
                if let Some(window) = self.windows.get_mut(window_id) {
                    window.state = state;
                    window.changed_ms = now_ms;
                    windows.push(window.clone());
                }
            }
        }
        Ok((record, windows))
    }

    /// Keeps the book within `SETTLEMENT_BOOK_ENTRIES_MAX` windows and settlements: the
    /// oldest finished ones (SETTLED windows, SETTLED or ABORTED settlements) are dropped
    /// from memory (their stored records stay until the runtime deletes them).
    fn forget_oldest(&mut self) {
        while self.windows.len() > SETTLEMENT_BOOK_ENTRIES_MAX {
            let Some(id) = self
                .windows
                .values()
                .find(|w| w.state == WindowState::Settled)
                .map(|w| w.id)
            else {
                break;
            };
            self.windows.remove(&id);
        }
        while self.settlements.len() > SETTLEMENT_BOOK_ENTRIES_MAX {
            let Some(id) = self
                .settlements
                .values()
                .find(|s| matches!(s.state, SettlementState::Settled | SettlementState::Aborted))
                .map(|s| s.id)
            else {
                break;
            };
            self.settlements.remove(&id);
        }
    }

    /// Settlements with a decided change not yet applied everywhere, and a window whose
    /// close is decided: what a restart must finish first.
    pub fn unfinished(&self) -> (Option<WindowId>, Vec<SettlementId>) {
        let closing = self.windows.values().find(|w| w.closing).map(|w| w.id);
        let pending = self
            .settlements
            .values()
            .filter(|s| s.pending.is_some())
            .map(|s| s.id)
            .collect();
        (closing, pending)
    }
}
